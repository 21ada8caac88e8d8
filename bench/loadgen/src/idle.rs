//! `loadgen idle`: server memory per idle connection, then one fan-out.
//!
//! Reads the server's VmRSS, opens N connections (every handshake
//! completed), waits `--settle` seconds for the server's memory to settle,
//! reads VmRSS again and reports (after − before) / N. Then, unless
//! `--no-publish`, publishes one message over HTTP and reports the time
//! until the last of the N subscribers has it. The dial also gives the
//! handshake rate and the server's CPU time per handshake (what a route's
//! token verification costs shows there).

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::cli::IdleOpts;
use crate::conn::{self, POLL_CAP, Sizing};
use crate::error::{Deadline, Fail, Result};
use crate::http::HttpPublisher;
use crate::stats::{self, Json, Rng};
use crate::wire;

const EVENTS: usize = 1024;
/// Longest wait for the one published message to reach everybody.
const FANOUT_LIMIT: Duration = Duration::from_secs(30);

pub fn run(opts: &IdleOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    let n = opts.conns;
    let pid = opts
        .common
        .server_pids
        .first()
        .ok_or_else(|| Fail::usage("idle needs --server-pid"))?;
    conn::raise_fd_limit(n + 1)?;
    let rss =
        || stats::rss_bytes(pid).map_err(|e| Fail::run(format!("reading /proc/{pid}/status: {e}")));
    let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
    let mut events = Events::with_capacity(EVENTS);
    let mut rng = Rng::seeded();
    let sizing = Sizing {
        max_payload: opts.size,
        out_capacity: 0,
        deflate: opts.deflate,
    };
    let mut scratch = sizing.scratch();

    let before = rss()?;
    let cpu = stats::CpuMeter::start(pid)
        .map_err(|e| Fail::run(format!("reading /proc/{pid}/stat: {e}")))?;
    let dial_start = Instant::now();
    let mut conns = conn::dial_scenario(
        &mut poll,
        &mut events,
        &opts.common.dial,
        n,
        sizing,
        &mut rng,
        &deadline,
    )?;
    let dial_time = dial_start.elapsed();
    let dial_cpu_us = cpu
        .used_us()
        .map_err(|e| Fail::run(format!("reading /proc/{pid}/stat: {e}")))?;
    let handshakes_per_s = n as f64 / dial_time.as_secs_f64().max(1e-9);
    let cpu_per_handshake_us = dial_cpu_us / n as f64;

    // Let the server finish whatever follows the handshakes (and the kernel
    // its socket buffers) before reading its memory again. Messages are not
    // expected now; any that arrive are counted, not failed on.
    let mut unexpected = 0u64;
    let pattern: Box<[u8]> = (0..opts.size)
        .map(|j| (j.wrapping_mul(7) ^ 0x5a) as u8)
        .collect();
    let mut received = vec![false; n];
    let mut got = 0usize;
    let settle_until = Instant::now() + opts.settle;
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.read(&mut scratch, opts.size, false, |_, _, _| {
            unexpected += 1;
            Ok(())
        })
        .map_err(|e| Fail::run(format!("connection {i}: {}", e.message)))?;
    }
    loop {
        let now = Instant::now();
        deadline.check(now, "letting the server settle")?;
        if now >= settle_until {
            break;
        }
        let timeout = deadline.poll_timeout(now, (settle_until - now).min(POLL_CAP));
        conn::poll_once(&mut poll, &mut events, timeout)?;
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            let hung_up = event.is_read_closed() || event.is_error();
            conn.read(&mut scratch, opts.size, hung_up, |_, _, _| {
                unexpected += 1;
                Ok(())
            })
            .map_err(|e| Fail::run(format!("connection {i} while idle: {}", e.message)))?;
            conn.flush()?;
        }
    }
    let after = rss()?;
    let per_conn = (after as f64 - before as f64) / n as f64;

    let mut fanout: Option<(f64, Option<u64>)> = None;
    if let Some(url) = &opts.publish_url {
        let mut publisher = HttpPublisher::connect(url, opts.size, 1, poll.registry(), Token(n))?;
        let mut recipients = None;
        let start = Instant::now();
        let mut head = [0u8; 16];
        head[8..].copy_from_slice(&1u64.to_le_bytes());
        publisher.post(&[&head, &pattern[16..]]);
        publisher.flush()?;
        let give_up = start + FANOUT_LIMIT;
        let mut last = start;
        while got < n {
            let now = Instant::now();
            deadline.check(now, &format!("fanning out ({got} of {n} received)"))?;
            if now >= give_up {
                return Err(Fail::run(format!(
                    "only {got} of {n} subscribers received the published message within {} s",
                    FANOUT_LIMIT.as_secs()
                )));
            }
            conn::poll_once(&mut poll, &mut events, deadline.poll_timeout(now, POLL_CAP))?;
            for event in events.iter() {
                let i = event.token().0;
                let hung_up = event.is_read_closed() || event.is_error();
                if i == n {
                    publisher
                        .read(|r| recipients = r)
                        .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
                    publisher.flush()?;
                    continue;
                }
                let Some(conn) = conns.get_mut(i) else {
                    continue;
                };
                let seen = &mut received[i];
                let mut fresh = false;
                conn.read(&mut scratch, opts.size, hung_up, |_, op, p| {
                    check_message(op, p, &pattern)?;
                    if *seen {
                        return Err(Fail::run("received the published message twice"));
                    }
                    *seen = true;
                    fresh = true;
                    Ok(())
                })
                .map_err(|e| Fail::run(format!("connection {i}: {}", e.message)))?;
                if fresh {
                    got += 1;
                    last = Instant::now();
                }
                conn.flush()?;
            }
        }
        // The response may trail the last delivery; it is only a detail here.
        let wait_response = Instant::now() + Duration::from_millis(500);
        while publisher.in_flight > 0 && Instant::now() < wait_response {
            conn::poll_once(&mut poll, &mut events, Duration::from_millis(50))?;
            if events.iter().any(|e| e.token() == Token(n)) {
                publisher
                    .read(|r| recipients = r)
                    .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
            }
        }
        fanout = Some((last.duration_since(start).as_secs_f64() * 1e3, recipients));
    }
    drop(conns);

    println!(
        "idle: {n} connections to {}{} (connect: {:.2} s, settle: {:.1} s)",
        opts.common.dial.url.path,
        if opts.deflate {
            ", permessage-deflate negotiated"
        } else {
            ""
        },
        dial_time.as_secs_f64(),
        opts.settle.as_secs_f64()
    );
    println!(
        "  server RSS:  {:.1} MiB before, {:.1} MiB after = {per_conn:.0} bytes per connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "  handshakes:  {handshakes_per_s:.0}/s while dialing, server CPU {cpu_per_handshake_us:.1} us each"
    );
    if unexpected > 0 {
        println!("  note:        {unexpected} messages arrived while idle");
    }
    match fanout {
        Some((ms, recipients)) => println!(
            "  fan-out:     one {} B message reached all {n} in {ms:.2} ms (server reported {} \
             recipients)",
            opts.size,
            recipients.map_or("no".to_owned(), |r| r.to_string())
        ),
        None => println!("  fan-out:     skipped (--no-publish)"),
    }
    let json = Json::new()
        .str("scenario", "idle")
        .str(
            "url",
            &format!(
                "ws://{}{}",
                opts.common.dial.url.host, opts.common.dial.url.path
            ),
        )
        .int("conns", n as u64)
        .str("deflate", if opts.deflate { "negotiated" } else { "off" })
        .num("connect_s", dial_time.as_secs_f64(), 3)
        .num("handshakes_per_s", handshakes_per_s, 0)
        .num("server_cpu_us_per_handshake", cpu_per_handshake_us, 2)
        .int("rss_before", before)
        .int("rss_after", after)
        .num("bytes_per_conn", per_conn, 1)
        .opt_num("fanout_ms", fanout.map(|f| f.0), 3)
        .opt_num("recipients", fanout.and_then(|f| f.1).map(|r| r as f64), 0)
        .int("unexpected_messages", unexpected)
        .str("status", "ok");
    println!("{}", json.finish());
    Ok(())
}

fn check_message(opcode: u8, payload: &[u8], pattern: &[u8]) -> Result<()> {
    if opcode != wire::OP_BINARY || payload.len() != pattern.len() || payload[16..] != pattern[16..]
    {
        return Err(Fail::run("received message differs from the one published"));
    }
    Ok(())
}
