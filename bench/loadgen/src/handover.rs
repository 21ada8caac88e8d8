//! `loadgen handover`: idle subscribers, an echo probe and a steady
//! publisher through a handover that the run starts itself, by sending
//! SIGUSR2 to the server (`--server-pid`).
//!
//! The N subscribers are dialed first, then the echo probe (back-to-back
//! round trips from then on), then one message is published to all (the
//! warm-up). At time zero the signal goes out; from then on a message is
//! posted every `--every` (the next only once the last one's answer came),
//! for `--after` seconds. Every subscriber checks that the messages come
//! in order, none missing and none twice, and that its connection is never
//! closed; it notes its longest pause between two messages. Reported:
//! - the message the handover held up: the one whose publish-to-last-
//!   receipt time was longest; that time, and the time from the signal to
//!   its last receipt (the new process's start is part of it: the old one
//!   serves on until the new one is ready to take over),
//! - the longest pause any subscriber saw (messages were due every
//!   `--every` all along, so this is how long nobody served it),
//! - the echo probe's longest round trip (and count).
//!
//! How long the handover took on the server's side is in its log
//! ("handover: handed over N connection(s) ... in X ms"); bench/handover.sh
//! reads it from there.
//!
//! Must never: signal any process but the one given, post a message before
//! the last one's answer, or wait past the run's deadline.

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use rustix::process::{Pid, Signal, kill_process};

use crate::cli::HandoverOpts;
use crate::conn::{self, DialPlan, POLL_CAP, Sizing, SourceAddrs, WsConn};
use crate::error::{Deadline, Fail, Result};
use crate::http::{self, HttpPublisher};
use crate::probe::EchoProbe;
use crate::stats::{Json, Rng};
use crate::wire;

const EVENTS: usize = 1024;
/// Every message: its sequence number (little-endian), then a fixed byte.
const SIZE: usize = 16;
const FILL: u8 = 0x5a;
/// The echo probe's message size.
const ECHO_SIZE: usize = 64;
/// How long the last messages may take to reach everyone once posting
/// stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// One subscriber's view of the run.
#[derive(Clone, Copy)]
struct Sub {
    /// The last sequence number received (0: none).
    last: u64,
    /// When the last message came.
    at: Option<Instant>,
    /// Its longest pause between two messages since the signal.
    pause: Duration,
}

/// Checks one message: the one after `last`, and well-formed.
fn check(opcode: u8, payload: &[u8], last: u64) -> Result<u64> {
    if opcode != wire::OP_BINARY || payload.len() != SIZE || payload[8..].iter().any(|&b| b != FILL)
    {
        return Err(Fail::run(
            "received message differs from the ones published",
        ));
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    if seq != last + 1 {
        return Err(Fail::run(format!(
            "expected message {} next, got message {seq}",
            last + 1
        )));
    }
    Ok(seq)
}

/// Everything the run reads in its one loop.
struct Run {
    poll: Poll,
    events: Events,
    subs: Vec<Sub>,
    conns: Vec<WsConn>,
    publisher: HttpPublisher,
    probe: EchoProbe,
    scratch: Vec<u8>,
    /// When the signal went out (pauses count from then).
    signal: Option<Instant>,
    clock: Instant,
    rng: Rng,
    /// Fewest recipients a publish answer reported.
    fewest: Option<u64>,
    /// Each message's post and last receipt, by sequence number.
    messages: Vec<Timing>,
}

/// When a message was posted and when its last subscriber got it.
#[derive(Clone, Copy, Default)]
struct Timing {
    posted: Option<Instant>,
    last: Option<Instant>,
}

impl Run {
    fn pub_token(&self) -> Token {
        Token(self.conns.len())
    }

    fn probe_token(&self) -> Token {
        Token(self.conns.len() + 1)
    }

    /// One poll and everything it reports.
    fn turn(&mut self, timeout: Duration) -> Result<()> {
        conn::poll_once(&mut self.poll, &mut self.events, timeout)?;
        let (pub_token, probe_token) = (self.pub_token(), self.probe_token());
        let Run {
            events,
            subs,
            conns,
            publisher,
            probe,
            scratch,
            signal,
            clock,
            rng,
            fewest,
            messages,
            ..
        } = self;
        for event in events.iter() {
            let hung_up = event.is_read_closed() || event.is_error();
            if event.token() == pub_token {
                publisher
                    .read(|r| {
                        if let Some(r) = r {
                            *fewest = Some(fewest.map_or(r, |f| f.min(r)));
                        }
                    })
                    .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
                publisher.flush()?;
                continue;
            }
            if event.token() == probe_token {
                probe
                    .pump(scratch, hung_up, *clock, rng)
                    .map_err(|e| Fail::run(format!("echo probe: {}", e.message)))?;
                continue;
            }
            let i = event.token().0;
            let (Some(conn), Some(sub)) = (conns.get_mut(i), subs.get_mut(i)) else {
                continue;
            };
            conn.read(scratch, SIZE, hung_up, |_, opcode, payload| {
                sub.last = check(opcode, payload, sub.last)?;
                let now = Instant::now();
                if let (Some(since), Some(signal)) = (sub.at, *signal) {
                    let pause = now.duration_since(since.max(signal));
                    sub.pause = sub.pause.max(pause);
                }
                sub.at = Some(now);
                if let Some(m) = messages.get_mut(sub.last as usize) {
                    m.last = Some(m.last.map_or(now, |t| t.max(now)));
                }
                Ok(())
            })
            .map_err(|e| Fail::run(format!("subscriber {i}: {}", e.message)))?;
            conn.flush()?;
        }
        Ok(())
    }

    /// Posts message `seq` (the next one: 1, 2, …).
    fn post(&mut self, seq: u64) -> Result<()> {
        if self.messages.len() <= seq as usize {
            self.messages.resize(seq as usize + 1, Timing::default());
        }
        self.messages[seq as usize].posted = Some(Instant::now());
        let fill = [FILL; SIZE - 8];
        self.publisher.post(&[&seq.to_le_bytes(), &fill]);
        self.publisher.flush()
    }

    /// Turns until every subscriber has message `seq` and its answer came.
    fn wait_all(&mut self, seq: u64, limit: Duration, deadline: &Deadline) -> Result<()> {
        let give_up = Instant::now() + limit;
        loop {
            let have = self.subs.iter().filter(|s| s.last >= seq).count();
            if have == self.subs.len() && self.publisher.in_flight == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let doing = format!(
                "waiting for message {seq} ({have} of {} have it)",
                self.subs.len()
            );
            deadline.check(now, &doing)?;
            if now >= give_up {
                return Err(Fail::run(format!(
                    "{doing}: gave up after {} s",
                    limit.as_secs()
                )));
            }
            self.turn(deadline.poll_timeout(now, POLL_CAP))?;
        }
    }
}

pub fn run(opts: &HandoverOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    let n = opts.conns;
    let pid = opts
        .common
        .server_pids
        .first()
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(Pid::from_raw)
        .ok_or_else(|| Fail::usage("handover needs --server-pid: the process to signal"))?;
    conn::raise_fd_limit(n + 2)?;
    let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
    let mut events = Events::with_capacity(EVENTS);
    let mut rng = Rng::seeded();
    let dial = &opts.common.dial;
    let mut sources = SourceAddrs::new(dial.url.addr, dial.source_base, dial.per_source);
    let sizing = Sizing {
        max_payload: SIZE,
        out_capacity: 0,
        deflate: false,
        sse: false,
    };
    let dial_start = Instant::now();
    let plan = DialPlan {
        target: &dial.url,
        count: n,
        token_base: 0,
        sizing,
        max_dialing: dial.max_dialing,
    };
    let conns = conn::dial_all(
        &mut poll,
        &mut events,
        &plan,
        &mut sources,
        &mut rng,
        &deadline,
    )?;
    let dial_time = dial_start.elapsed();
    let publisher = HttpPublisher::connect(
        &opts.publish_url,
        SIZE,
        http::BINARY,
        1,
        poll.registry(),
        Token(n),
    )?;
    let probe_plan = DialPlan {
        target: &opts.echo_url,
        count: 1,
        token_base: n + 1,
        sizing: Sizing {
            max_payload: ECHO_SIZE,
            out_capacity: ECHO_SIZE + wire::MAX_CLIENT_HEADER,
            deflate: false,
            sse: false,
        },
        max_dialing: 1,
    };
    let probe = conn::dial_all(
        &mut poll,
        &mut events,
        &probe_plan,
        &mut sources,
        &mut rng,
        &deadline,
    )
    .map_err(|e| Fail::run(format!("echo probe: {}", e.message)))?
    .into_iter()
    .next()
    .ok_or_else(|| Fail::run("echo probe: not dialed"))?;
    let mut run = Run {
        poll,
        events,
        subs: vec![
            Sub {
                last: 0,
                at: None,
                pause: Duration::ZERO,
            };
            n
        ],
        conns,
        publisher,
        probe: EchoProbe::new(probe, ECHO_SIZE),
        // Room for the probe's echoes too: far above both frame sizes.
        scratch: sizing.scratch(),
        signal: None,
        clock: Instant::now(),
        rng,
        fewest: None,
        messages: Vec::with_capacity(
            (opts.after.as_secs_f64() / opts.every.as_secs_f64()) as usize + 2,
        ),
    };
    // Nothing was sent to the subscribers yet, so no event that dialing
    // dropped hid a message: the warm-up's own events bring them in.
    let clock = run.clock;
    run.probe
        .start(clock.elapsed().as_nanos() as u64, &mut run.rng)?;
    let warm = Instant::now();
    run.post(1)?;
    run.wait_all(1, DRAIN_LIMIT, &deadline)?;
    let warm_ms = warm.elapsed().as_secs_f64() * 1e3;
    let rtt_before_ms = run.probe.hist.max() as f64 / 1e6;

    let signal = Instant::now();
    run.signal = Some(signal);
    kill_process(pid, Signal::USR2)
        .map_err(|e| Fail::run(format!("sending SIGUSR2 to {}: {e}", pid.as_raw_nonzero())))?;
    let mut seq = 1;
    let mut next_post = signal;
    loop {
        let now = Instant::now();
        deadline.check(
            now,
            &format!("publishing through the handover (message {seq})"),
        )?;
        let posting = now.duration_since(signal) < opts.after;
        if !posting {
            break;
        }
        if now >= next_post && run.publisher.in_flight == 0 {
            seq += 1;
            run.post(seq)?;
            next_post = now + opts.every;
        }
        let wait = next_post.saturating_duration_since(now).min(POLL_CAP);
        run.turn(deadline.poll_timeout(now, wait.max(Duration::from_millis(1))))?;
    }
    run.wait_all(seq, DRAIN_LIMIT, &deadline)?;
    run.probe.stop();
    let posted = seq - 1;

    let longest = run.subs.iter().map(|s| s.pause).max().unwrap_or_default();
    // The message the handover held up: the slowest to reach everyone of
    // those posted after the signal.
    let held = run
        .messages
        .iter()
        .skip(2)
        .filter_map(|m| Some((m.posted?, m.last?)))
        .max_by_key(|(posted, last)| last.duration_since(*posted));
    let (held_ms, signal_to_held_ms) = held.map_or((0.0, 0.0), |(posted, last)| {
        (
            last.duration_since(posted).as_secs_f64() * 1e3,
            last.duration_since(signal).as_secs_f64() * 1e3,
        )
    });
    // The probe's histogram holds nanoseconds.
    let echo_max_ms = run.probe.hist.max() as f64 / 1e6;
    let echo_count = run.probe.hist.count();
    let pause_ms = longest.as_secs_f64() * 1e3;
    println!(
        "handover: {n} subscribers on {} (connect: {:.2} s; warm-up fan-out {warm_ms:.1} ms)",
        dial.url.path,
        dial_time.as_secs_f64()
    );
    println!(
        "  publishing: {posted} messages after SIGUSR2, one every {:.0} ms for {:.1} s, \
         every one received once and in order by all; fewest recipients reported: {}",
        opts.every.as_secs_f64() * 1e3,
        opts.after.as_secs_f64(),
        run.fewest.map_or("none".to_owned(), |f| f.to_string())
    );
    println!(
        "  the message the handover held up: {held_ms:.1} ms from its publish to its last \
         receipt, which came {signal_to_held_ms:.1} ms after SIGUSR2"
    );
    println!("  longest pause a subscriber saw: {pause_ms:.1} ms");
    println!(
        "  echo probe: {echo_count} round trips, longest {echo_max_ms:.2} ms \
         (before the signal: {rtt_before_ms:.2} ms)"
    );
    let json = Json::new()
        .str("scenario", "handover")
        .int("conns", n as u64)
        .num("connect_s", dial_time.as_secs_f64(), 3)
        .int("messages", posted)
        .num("every_ms", opts.every.as_secs_f64() * 1e3, 1)
        .num("pause_ms", pause_ms, 2)
        .num("held_ms", held_ms, 2)
        .num("signal_to_held_ms", signal_to_held_ms, 2)
        .num("echo_max_ms", echo_max_ms, 2)
        .int("echo_round_trips", echo_count)
        .opt_num("fewest_recipients", run.fewest.map(|f| f as f64), 0)
        .str("status", "ok");
    println!("{}", json.finish());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Vec<u8> {
        let mut p = vec![FILL; SIZE];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p
    }

    #[test]
    fn messages_must_come_in_order_once_each() {
        assert_eq!(check(wire::OP_BINARY, &message(1), 0).ok(), Some(1));
        assert_eq!(check(wire::OP_BINARY, &message(8), 7).ok(), Some(8));
        assert!(check(wire::OP_BINARY, &message(7), 7).is_err(), "twice");
        assert!(
            check(wire::OP_BINARY, &message(9), 7).is_err(),
            "one missing"
        );
        assert!(check(wire::OP_TEXT, &message(8), 7).is_err());
        assert!(check(wire::OP_BINARY, &message(8)[..15], 7).is_err());
        let mut bad = message(8);
        bad[12] ^= 1;
        assert!(check(wire::OP_BINARY, &bad, 7).is_err());
    }
}
