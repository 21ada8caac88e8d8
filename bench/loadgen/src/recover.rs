//! `loadgen recover`: what history costs and how a mass reconnect with
//! positions goes.
//!
//! 1. One plain subscriber keeps the channel alive; the server's VmRSS is
//!    read, `--history` messages are published (pipelined HTTP), VmRSS is
//!    read again: (after − before) / messages is the memory per history
//!    message (the route's `history_size` must hold them all).
//! 2. A metadata connection learns the channel's position.
//! 3. `--clients` connections dial at once (at most `--dialing` handshakes
//!    in flight) with `recover=<channel>:<epoch>:<newest − missed>`; each
//!    must be told `recovered` with `replayed` = `--missed`, then get that
//!    many messages with consecutive offsets. Reported: the time from the
//!    first dial to the last client's last message, and the server's CPU.

use std::time::Instant;

use mio::{Events, Poll, Token};

use crate::cli::RecoverOpts;
use crate::conn::{self, POLL_CAP, Sizing, SourceAddrs, WsConn};
use crate::error::{Deadline, Fail, Result};
use crate::http::{self, HttpPublisher};
use crate::meta;
use crate::stats::{self, CpuMeter, Json, Rng};
use crate::wire;

const EVENTS: usize = 1024;
/// Publishes outstanding at once while filling the history.
const WINDOW: usize = 64;

/// One reconnecting client's progress.
#[derive(Clone, Copy, Default)]
struct Progress {
    answered: bool,
    /// Offset of the last message received.
    offset: u64,
    received: usize,
}

pub fn run(opts: &RecoverOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    let pid = opts
        .common
        .server_pids
        .first()
        .ok_or_else(|| Fail::usage("recover needs --server-pid"))?;
    conn::raise_fd_limit(opts.clients + 3)?;
    let rss =
        || stats::rss_bytes(pid).map_err(|e| Fail::run(format!("reading /proc/{pid}/status: {e}")));
    let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
    let mut events = Events::with_capacity(EVENTS);
    let mut rng = Rng::seeded();
    let sizing = Sizing {
        max_payload: opts.size + meta::ROOM,
        out_capacity: 0,
        deflate: false,
        sse: false,
    };
    let mut scratch = sizing.scratch();
    let dial = &opts.common.dial;
    let mut sources = SourceAddrs::new(dial.url.addr, dial.source_base, dial.per_source);
    let mut dial_one = |poll: &mut Poll, events: &mut Events, target, token| {
        let plan = conn::DialPlan {
            target,
            count: 1,
            token_base: token,
            sizing,
            max_dialing: 1,
        };
        conn::dial_all(poll, events, &plan, &mut sources, &mut rng, &deadline)
            .map(|mut one| one.remove(0))
    };

    // 1. Fill the history and measure it.
    let keeper_token = opts.clients;
    let mut keeper = dial_one(&mut poll, &mut events, &dial.url, keeper_token)?;
    let before = rss()?;
    let pub_token = opts.clients + 1;
    let mut publisher = HttpPublisher::connect(
        &opts.publish_url,
        opts.size,
        http::BINARY,
        WINDOW,
        poll.registry(),
        Token(pub_token),
    )?;
    let body: Vec<u8> = (0..opts.size).map(|j| (j * 7) as u8).collect();
    let (mut sent, mut answered) = (0usize, 0usize);
    let fill_start = Instant::now();
    while answered < opts.history {
        while sent < opts.history && publisher.in_flight < WINDOW {
            publisher.post(&[&body]);
            sent += 1;
        }
        publisher.flush()?;
        let now = Instant::now();
        deadline.check(now, &format!("filling the history ({answered} published)"))?;
        conn::poll_once(&mut poll, &mut events, deadline.poll_timeout(now, POLL_CAP))?;
        for event in events.iter() {
            let hung_up = event.is_read_closed() || event.is_error();
            if event.token() == Token(pub_token) {
                publisher
                    .read(|_| answered += 1)
                    .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
            } else if event.token() == Token(keeper_token) {
                keeper.read(&mut scratch, sizing.max_payload, hung_up, |_, _, _| Ok(()))?;
            }
        }
    }
    let fill_time = fill_start.elapsed();
    let after = rss()?;
    let per_message = (after as f64 - before as f64) / opts.history as f64;

    // 2. Where the channel stands.
    let probe_url = meta::with_meta(&dial.url);
    let probe_token = opts.clients + 2;
    let mut probe = dial_one(&mut poll, &mut events, &probe_url, probe_token)?;
    let mut position: Option<(String, u64)> = None;
    while position.is_none() {
        let now = Instant::now();
        deadline.check(now, "reading the channel's position")?;
        probe.read(&mut scratch, sizing.max_payload, false, |_, op, p| {
            if op == wire::OP_TEXT
                && let (Some(e), Some(o)) = (meta::field(p, "epoch"), meta::field(p, "offset"))
            {
                position = Some((e.to_owned(), o.parse().unwrap_or(0)));
            }
            Ok(())
        })?;
        if position.is_none() {
            conn::poll_once(&mut poll, &mut events, deadline.poll_timeout(now, POLL_CAP))?;
        }
    }
    let Some((epoch, newest)) = position else {
        return Err(Fail::run("no position"));
    };
    if newest < opts.history as u64 {
        return Err(Fail::run(format!(
            "the channel is at offset {newest} after {} publishes: is history_size large enough?",
            opts.history
        )));
    }
    let from = newest - opts.missed as u64;
    let channel = dial.url.path.rsplit('/').next().unwrap_or_default();
    let recover_url = meta::with_query(&dial.url, &format!("recover={channel}:{epoch}:{from}"));

    // 3. The storm.
    let n = opts.clients;
    let cpu = CpuMeter::start(pid).map_err(|e| Fail::run(format!("server CPU: {e}")))?;
    let storm_start = Instant::now();
    let plan = conn::DialPlan {
        target: &recover_url,
        count: n,
        token_base: 0,
        sizing,
        max_dialing: dial.max_dialing,
    };
    let mut clients = conn::dial_all(
        &mut poll,
        &mut events,
        &plan,
        &mut sources,
        &mut Rng::seeded(),
        &deadline,
    )?;
    let dial_time = storm_start.elapsed();
    let mut progress = vec![Progress::default(); n];
    let mut done = 0usize;
    let missed = opts.missed;
    let mut read = |i: usize, c: &mut WsConn, hung_up: bool, scratch: &mut [u8]| -> Result<bool> {
        let p = &mut progress[i];
        let was_done = p.answered && p.received == missed;
        c.read(scratch, sizing.max_payload, hung_up, |_, op, m| {
            if !p.answered {
                let ok = op == wire::OP_TEXT
                    && meta::field(m, "recovered") == Some("true")
                    && meta::field(m, "replayed") == Some(&missed.to_string());
                if !ok {
                    return Err(Fail::run(format!(
                        "expected a recovery of {missed} messages, got {}",
                        String::from_utf8_lossy(m)
                    )));
                }
                p.answered = true;
                p.offset = from;
                return Ok(());
            }
            let inner = meta::payload(op, m).ok_or_else(|| Fail::run("not a message"))?;
            let header = &m[2..m.len() - inner.len()];
            let offset: u64 = meta::field(header, "offset")
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| Fail::run("no offset"))?;
            if offset != p.offset + 1 || inner.len() != opts.size {
                return Err(Fail::run(format!(
                    "expected offset {} ({} B), got {offset} ({} B)",
                    p.offset + 1,
                    opts.size,
                    inner.len()
                )));
            }
            p.offset = offset;
            p.received += 1;
            Ok(())
        })
        .map_err(|e| Fail::run(format!("client {i}: {}", e.message)))?;
        Ok(!was_done && p.answered && p.received == missed)
    };
    // Data that came with or right after a handshake raised no event seen here.
    for (i, c) in clients.iter_mut().enumerate() {
        if read(i, c, false, &mut scratch)? {
            done += 1;
        }
    }
    while done < n {
        let now = Instant::now();
        deadline.check(now, &format!("recovering ({done} of {n} done)"))?;
        conn::poll_once(&mut poll, &mut events, deadline.poll_timeout(now, POLL_CAP))?;
        for event in events.iter() {
            let i = event.token().0;
            let Some(c) = clients.get_mut(i) else {
                continue;
            };
            let hung_up = event.is_read_closed() || event.is_error();
            if read(i, c, hung_up, &mut scratch)? {
                done += 1;
            }
        }
    }
    let storm = storm_start.elapsed();
    let cpu_us = cpu
        .used_us()
        .map_err(|e| Fail::run(format!("server CPU: {e}")))?;
    drop((clients, keeper, probe, publisher));

    let storm_s = storm.as_secs_f64();
    println!(
        "recover: {} history messages of {} B on {} (published in {:.2} s)",
        opts.history,
        opts.size,
        dial.url.path,
        fill_time.as_secs_f64()
    );
    println!(
        "  server RSS:  {:.1} MiB before, {:.1} MiB after = {per_message:.0} bytes per message",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "  storm:       {n} clients reconnected and recovered {missed} messages each in \
         {storm_s:.2} s (dialing {:.2} s), server CPU {:.2} s",
        dial_time.as_secs_f64(),
        cpu_us / 1e6
    );
    let json = Json::new()
        .str("scenario", "recover")
        .int("history", opts.history as u64)
        .int("size", opts.size as u64)
        .int("rss_before", before)
        .int("rss_after", after)
        .num("bytes_per_history_message", per_message, 1)
        .int("clients", n as u64)
        .int("missed", missed as u64)
        .num("storm_s", storm_s, 3)
        .num("dial_s", dial_time.as_secs_f64(), 3)
        .num("server_cpu_s", cpu_us / 1e6, 3)
        .num("recovered_msgs_per_s", (n * missed) as f64 / storm_s, 0)
        .str("status", "ok");
    println!("{}", json.finish());
    Ok(())
}
