//! `loadgen echo`: request/response throughput and latency.
//!
//! C connections each keep D messages in flight: D are sent at the start,
//! and every echo received triggers one more. Each payload starts with the
//! connection's sequence number (8 bytes, little-endian) followed by a
//! per-connection byte pattern; every echo is checked for opcode, length,
//! order and content, and any mismatch ends the run with exit status 1.
//! Send times live in a ring of D entries per connection (echoes come back
//! in order, so sequence number mod D finds the slot).
//!
//! The first `--warmup` seconds are run but not counted.

use std::time::Instant;

use mio::{Events, Poll};

use crate::cli::EchoOpts;
use crate::conn::{self, POLL_CAP, Sizing, WsConn};
use crate::error::{Deadline, Fail, Result};
use crate::report::{self, Figures};
use crate::stats::{Histogram, Json, Rng};
use crate::wire::{self, OutBuf};

const EVENTS: usize = 1024;

/// Per-connection bookkeeping, kept apart from the socket so the read
/// callback can borrow it while the connection is being read.
struct Flow {
    /// Expected payload; bytes 0..8 are replaced by the sequence number.
    pattern: Box<[u8]>,
    next_send: u64,
    next_recv: u64,
    sent_at: Box<[u64]>,
}

/// Run-wide counters touched on every echo.
struct Tally {
    hist: Histogram,
    echoes: u64,
    measuring: bool,
    /// Set once the run is over, so echoes stop triggering new sends.
    draining: bool,
    rng: Rng,
}

pub fn run(opts: &EchoOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    conn::raise_fd_limit(opts.conns)?;
    let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
    let mut events = Events::with_capacity(EVENTS);
    let mut tally = Tally {
        hist: Histogram::new(),
        echoes: 0,
        measuring: false,
        draining: false,
        rng: Rng::seeded(),
    };
    let frame = opts.size + wire::MAX_CLIENT_HEADER;
    let sizing = Sizing {
        max_payload: opts.size,
        out_capacity: opts.depth * frame,
        deflate: false,
        sse: false,
    };
    let mut scratch = sizing.scratch();
    // Fail before dialing if the pid is wrong, not after the run.
    report::check_pids(&opts.common)?;

    let dial_start = Instant::now();
    let mut conns = conn::dial_scenario(
        &mut poll,
        &mut events,
        &opts.common.dial,
        opts.conns,
        sizing,
        &mut tally.rng,
        &deadline,
    )?;
    let dial_time = dial_start.elapsed();
    let mut flows: Vec<Flow> = (0..opts.conns)
        .map(|i| Flow {
            pattern: (0..opts.size)
                .map(|j| (i.wrapping_mul(131) ^ j.wrapping_mul(7)) as u8)
                .collect(),
            next_send: 0,
            next_recv: 0,
            sent_at: vec![0; opts.depth].into_boxed_slice(),
        })
        .collect();

    let clock = Instant::now();
    for (conn, flow) in conns.iter_mut().zip(flows.iter_mut()) {
        for _ in 0..opts.depth {
            send(flow, &mut conn.out, &mut tally.rng, 0);
        }
        conn.flush()?;
    }
    let measure_from = clock + opts.warmup;
    let measure_until = measure_from + opts.seconds;
    let mut started: Option<(Instant, report::Meters)> = None;

    loop {
        let now = Instant::now();
        deadline.check(now, "running echo")?;
        if started.is_none() && now >= measure_from {
            tally.hist.clear();
            tally.echoes = 0;
            tally.measuring = true;
            started = Some((now, report::start_cpu(&opts.common)?));
        }
        if now >= measure_until {
            break;
        }
        let wake = if started.is_some() {
            measure_until
        } else {
            measure_from
        };
        let timeout = deadline.poll_timeout(now, wake.saturating_duration_since(now).min(POLL_CAP));
        conn::poll_once(&mut poll, &mut events, timeout)?;
        for event in events.iter() {
            let i = event.token().0;
            let (Some(conn), Some(flow)) = (conns.get_mut(i), flows.get_mut(i)) else {
                continue;
            };
            pump(conn, flow, event, &mut scratch, opts, &mut tally, clock)
                .map_err(|e| Fail::run(format!("connection {i}: {}", e.message)))?;
        }
    }
    let end = Instant::now();
    tally.measuring = false;
    tally.draining = true;
    let Some((start, meters)) = started else {
        return Err(Fail::run("the run ended before measuring started"));
    };
    let elapsed = end.duration_since(start).as_secs_f64();
    let used = report::stop_cpu(&meters)?;
    drop(conns);

    let echoes = tally.echoes;
    let rate = echoes as f64 / elapsed;
    let mb = rate * opts.size as f64 / 1e6;
    let h = &tally.hist;
    let figures = Figures {
        used,
        elapsed,
        work: echoes,
    };
    println!(
        "echo: {} connections x depth {}, {} B binary messages, {:.1} s measured after {:.1} s \
         warm-up (connect: {:.2} s)",
        opts.conns,
        opts.depth,
        opts.size,
        elapsed,
        opts.warmup.as_secs_f64(),
        dial_time.as_secs_f64()
    );
    println!("  echoes:      {echoes} ({rate:.0} msg/s), every one checked");
    println!("  payload:     {mb:.2} MB/s each way (echoed payload bytes received per second)");
    println!(
        "  latency:     {}",
        report::latency_line(h, &[0.5, 0.99, 0.999])
    );
    figures.print("message");
    let json = Json::new()
        .str("scenario", "echo")
        .str(
            "url",
            &format!(
                "ws://{}{}",
                opts.common.dial.url.host, opts.common.dial.url.path
            ),
        )
        .int("conns", opts.conns as u64)
        .int("depth", opts.depth as u64)
        .int("size", opts.size as u64)
        .num("seconds", elapsed, 3)
        .num("connect_s", dial_time.as_secs_f64(), 3)
        .int("messages", echoes)
        .num("msgs_per_s", rate, 1)
        .num("mb_per_s_each_way", mb, 3)
        .num("p50_us", h.quantile(0.5) as f64 / 1e3, 1)
        .num("p99_us", h.quantile(0.99) as f64 / 1e3, 1)
        .num("p999_us", h.quantile(0.999) as f64 / 1e3, 1)
        .num("max_us", h.max() as f64 / 1e3, 1)
        .num("mean_us", h.mean() as f64 / 1e3, 1);
    let json = figures.add_json(json, "message").str("status", "ok");
    println!("{}", json.finish());
    Ok(())
}

/// Reads the echoes a connection has, answers each with a new message, and
/// writes.
fn pump(
    conn: &mut WsConn,
    flow: &mut Flow,
    event: &mio::event::Event,
    scratch: &mut [u8],
    opts: &EchoOpts,
    tally: &mut Tally,
    clock: Instant,
) -> Result<()> {
    let hung_up = event.is_read_closed() || event.is_error();
    if event.is_readable() || hung_up {
        let now = clock.elapsed().as_nanos() as u64;
        conn.read(scratch, opts.size, hung_up, |out, opcode, payload| {
            check_echo(flow, opcode, payload)?;
            let slot = (flow.next_recv % flow.sent_at.len() as u64) as usize;
            if tally.measuring {
                tally.hist.record(now.saturating_sub(flow.sent_at[slot]));
                tally.echoes += 1;
            }
            flow.next_recv += 1;
            if !tally.draining {
                send(flow, out, &mut tally.rng, now);
            }
            Ok(())
        })?;
    }
    conn.flush()
}

fn check_echo(flow: &Flow, opcode: u8, payload: &[u8]) -> Result<()> {
    if opcode != wire::OP_BINARY {
        return Err(Fail::run(format!(
            "sent a binary message, echo came back with opcode {opcode:#x}"
        )));
    }
    if payload.len() != flow.pattern.len() {
        return Err(Fail::run(format!(
            "echo of message {} has {} bytes, sent {}",
            flow.next_recv,
            payload.len(),
            flow.pattern.len()
        )));
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    if seq != flow.next_recv {
        return Err(Fail::run(format!(
            "echo out of order: expected message {}, got {seq}",
            flow.next_recv
        )));
    }
    if payload[8..] != flow.pattern[8..] {
        return Err(Fail::run(format!(
            "echo of message {seq} differs from what was sent"
        )));
    }
    Ok(())
}

/// Appends the flow's next message, masked, to `out`.
fn send(flow: &mut Flow, out: &mut OutBuf, rng: &mut Rng, now: u64) {
    let seq = flow.next_send;
    flow.next_send += 1;
    let slot = (seq % flow.sent_at.len() as u64) as usize;
    flow.sent_at[slot] = now;
    wire::encode_masked(
        out,
        wire::OP_BINARY,
        rng.mask(),
        &[&seq.to_le_bytes(), &flow.pattern[8..]],
    );
}
