//! `loadgen idle`: server memory per idle connection, fresh and after a few
//! broadcasts, and one fan-out.
//!
//! Reads the server's VmRSS once it is steady (a runtime such as Node.js
//! still grows for a moment after it starts listening), opens N
//! connections (every handshake completed), waits `--settle` seconds for the server's memory to settle,
//! reads VmRSS again and reports (after − before) / N. Then, unless
//! `--no-publish`, publishes one message over HTTP and reports the time
//! until the last of the N subscribers has it. After that come
//! `--after-broadcasts` messages of `--after-size` bytes, one at a time,
//! each received by every subscriber, and once the server's RSS is steady
//! again (read every [`RSS_EVERY`] until [`STEADY_READINGS`] readings in a
//! row lie within [`STEADY_BYTES`], for at most [`STEADY_LIMIT`]) the
//! figure per connection is taken again: what buffers a server keeps on
//! connections that once had traffic. The dial also gives the handshake
//! rate and the server's CPU time per handshake (what a route's token
//! verification, or TLS, costs shows there).
//!
//! With `--sse` the connections are event streams (Server-Sent Events) on
//! the same channel: the same figures for stream subscribers, whose
//! messages (binary) arrive as base64 `event: binary` events, decoded and
//! checked like WebSocket ones.
//!
//! Must never: publish the next message before every subscriber has the
//! last, or wait unbounded (every wait has its own limit and the run's
//! deadline).

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::cli::IdleOpts;
use crate::conn::{self, POLL_CAP, Sizing, WsConn};
use crate::error::{Deadline, Fail, Result};
use crate::http::{self, HttpPublisher};
use crate::stats::{self, Json, Rng};
use crate::wire;

const EVENTS: usize = 1024;
/// Longest wait for one published message to reach everybody.
const FANOUT_LIMIT: Duration = Duration::from_secs(30);
/// Time between RSS readings while waiting for it to be steady.
const RSS_EVERY: Duration = Duration::from_millis(250);
/// Readings in a row that must agree for the RSS to count as steady.
const STEADY_READINGS: usize = 4;
/// How far apart (highest − lowest) those readings may be: a page or two
/// of allocator noise, under 7 bytes per connection at 10,000.
const STEADY_BYTES: u64 = 64 * 1024;
/// Longest wait for a steady RSS; the last reading is reported then, marked
/// not steady.
const STEADY_LIMIT: Duration = Duration::from_secs(10);

/// Sequence number (payload bytes 8..16) of the timed fan-out message; the
/// broadcasts after it count on from here.
const FANOUT_SEQ: u64 = 1;

/// The open connections and what reading them needs.
struct Subscribers {
    poll: Poll,
    events: Events,
    conns: Vec<WsConn>,
    scratch: Vec<u8>,
    max_payload: usize,
    /// Last sequence number each connection received (0: none yet).
    last_seq: Vec<u64>,
    /// Messages that arrived while none was expected.
    unexpected: u64,
}

/// A published message that every subscriber must receive.
struct Expected<'a> {
    seq: u64,
    pattern: &'a [u8],
}

/// RSS readings watched until the last few agree.
#[derive(Debug, Default)]
struct RssWatch {
    recent: [u64; STEADY_READINGS],
    seen: usize,
}

impl RssWatch {
    /// Adds a reading; true once the last [`STEADY_READINGS`] lie within
    /// [`STEADY_BYTES`] of each other.
    fn push(&mut self, rss: u64) -> bool {
        self.recent[self.seen % STEADY_READINGS] = rss;
        self.seen += 1;
        if self.seen < STEADY_READINGS {
            return false;
        }
        let (lo, hi) = self
            .recent
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        hi - lo <= STEADY_BYTES
    }
}

/// What the broadcasts after the fan-out came to.
struct After {
    rss: u64,
    per_conn: f64,
    /// From the last broadcast's last receipt to the steady reading.
    wait_s: f64,
    steady: bool,
}

pub fn run(opts: &IdleOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    let n = opts.conns;
    let pid = opts
        .common
        .server_pids
        .first()
        .ok_or_else(|| Fail::usage("idle needs --server-pid"))?;
    conn::raise_fd_limit(n + 2)?;
    let rss =
        || stats::rss_bytes(pid).map_err(|e| Fail::run(format!("reading /proc/{pid}/status: {e}")));
    let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
    let mut events = Events::with_capacity(EVENTS);
    let mut rng = Rng::seeded();
    let sizing = Sizing {
        max_payload: opts.size.max(opts.after_size),
        out_capacity: 0,
        deflate: opts.deflate,
        sse: opts.sse,
    };

    let (before, _) = steady_rss(&rss, |until| {
        deadline.check(Instant::now(), "waiting for the server's RSS to be steady")?;
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        Ok(())
    })?;
    let cpu = stats::CpuMeter::start(pid)
        .map_err(|e| Fail::run(format!("reading /proc/{pid}/stat: {e}")))?;
    let dial_start = Instant::now();
    let conns = conn::dial_scenario(
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

    let mut subs = Subscribers {
        poll,
        events,
        conns,
        scratch: sizing.scratch(),
        max_payload: sizing.max_payload,
        last_seq: vec![0; n],
        unexpected: 0,
    };
    // Let the server finish whatever follows the handshakes (and the kernel
    // its socket buffers) before reading its memory again. Messages are not
    // expected now; any that arrive are counted, not failed on.
    subs.sweep()?;
    subs.idle_until(Instant::now() + opts.settle, &deadline)?;
    let after = rss()?;
    let per_conn = (after as f64 - before as f64) / n as f64;

    let mut fanout: Option<(f64, Option<u64>)> = None;
    let mut after_broadcasts: Option<After> = None;
    if let Some(url) = &opts.publish_url {
        let pattern = pattern(opts.size);
        let mut publisher = HttpPublisher::connect(
            url,
            opts.size,
            http::BINARY,
            1,
            subs.poll.registry(),
            Token(n),
        )?;
        let expected = Expected {
            seq: FANOUT_SEQ,
            pattern: &pattern,
        };
        let (took, recipients) = subs.broadcast(&mut publisher, n, &expected, &deadline)?;
        fanout = Some((took.as_secs_f64() * 1e3, recipients));
        drop(publisher);

        if opts.after_broadcasts > 0 {
            let pattern = self::pattern(opts.after_size);
            let mut publisher = HttpPublisher::connect(
                url,
                opts.after_size,
                http::BINARY,
                1,
                subs.poll.registry(),
                Token(n + 1),
            )?;
            for k in 0..opts.after_broadcasts as u64 {
                let expected = Expected {
                    seq: FANOUT_SEQ + 1 + k,
                    pattern: &pattern,
                };
                subs.broadcast(&mut publisher, n + 1, &expected, &deadline)?;
            }
            drop(publisher);
            let done = Instant::now();
            let (rss, steady) = steady_rss(&rss, |until| subs.idle_until(until, &deadline))?;
            after_broadcasts = Some(After {
                rss,
                per_conn: (rss as f64 - before as f64) / n as f64,
                wait_s: done.elapsed().as_secs_f64(),
                steady,
            });
        }
    }
    let unexpected = subs.unexpected;
    drop(subs);

    println!(
        "idle: {n} {} to {}{}{} (connect: {:.2} s, settle: {:.1} s)",
        if opts.sse {
            "event streams (Server-Sent Events)"
        } else {
            "connections"
        },
        opts.common.dial.url.path,
        if opts.common.dial.url.wss {
            " over TLS"
        } else {
            ""
        },
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
    if let Some(a) = &after_broadcasts {
        println!(
            "  after:       {} more messages of {} B to all: server RSS {:.1} MiB = {:.0} bytes \
             per connection ({} after {:.2} s)",
            opts.after_broadcasts,
            opts.after_size,
            a.rss as f64 / 1048576.0,
            a.per_conn,
            if a.steady { "steady" } else { "NOT steady" },
            a.wait_s
        );
    }
    let json = Json::new()
        .str("scenario", "idle")
        .str(
            "url",
            &format!(
                "{}://{}{}",
                if opts.common.dial.url.wss {
                    "wss"
                } else {
                    "ws"
                },
                opts.common.dial.url.host,
                opts.common.dial.url.path
            ),
        )
        .str("transport", if opts.sse { "sse" } else { "websocket" })
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
        .int(
            "after_broadcasts",
            after_broadcasts
                .as_ref()
                .map_or(0, |_| opts.after_broadcasts) as u64,
        )
        .opt_num(
            "rss_after_broadcasts",
            after_broadcasts.as_ref().map(|a| a.rss as f64),
            0,
        )
        .opt_num(
            "bytes_per_conn_after",
            after_broadcasts.as_ref().map(|a| a.per_conn),
            1,
        )
        .opt_num(
            "rss_steady_after_s",
            after_broadcasts.as_ref().map(|a| a.wait_s),
            2,
        )
        .str(
            "rss_steady",
            match &after_broadcasts {
                Some(a) if a.steady => "yes",
                Some(_) => "no",
                None => "n/a",
            },
        )
        .int("unexpected_messages", unexpected)
        .str("status", "ok");
    println!("{}", json.finish());
    Ok(())
}

/// Reads the server's RSS every [`RSS_EVERY`], calling `wait` between
/// readings (sleeping, or keeping connections read meanwhile), until it is
/// steady or [`STEADY_LIMIT`] has passed; returns the last reading and
/// whether it was steady.
fn steady_rss(
    rss: &impl Fn() -> Result<u64>,
    mut wait: impl FnMut(Instant) -> Result<()>,
) -> Result<(u64, bool)> {
    let give_up = Instant::now() + STEADY_LIMIT;
    let mut watch = RssWatch::default();
    loop {
        let reading = rss()?;
        if watch.push(reading) {
            return Ok((reading, true));
        }
        let now = Instant::now();
        if now >= give_up {
            return Ok((reading, false));
        }
        wait(now + RSS_EVERY)?;
    }
}

/// The payload every message of `size` bytes carries after its 16-byte head.
fn pattern(size: usize) -> Box<[u8]> {
    (0..size)
        .map(|j| (j.wrapping_mul(7) ^ 0x5a) as u8)
        .collect()
}

impl Subscribers {
    /// One read of every connection: events may have been dropped while
    /// others dialed.
    fn sweep(&mut self) -> Result<()> {
        let Subscribers {
            conns,
            scratch,
            max_payload,
            unexpected,
            ..
        } = self;
        for (i, conn) in conns.iter_mut().enumerate() {
            conn.read(scratch, *max_payload, false, |_, _, _| {
                *unexpected += 1;
                Ok(())
            })
            .map_err(|e| Fail::run(format!("connection {i}: {}", e.message)))?;
        }
        Ok(())
    }

    /// Keeps the connections read (answering pings, counting any message)
    /// until `until`.
    fn idle_until(&mut self, until: Instant, deadline: &Deadline) -> Result<()> {
        loop {
            let now = Instant::now();
            deadline.check(now, "letting the server settle")?;
            if now >= until {
                return Ok(());
            }
            let timeout = deadline.poll_timeout(now, (until - now).min(POLL_CAP));
            conn::poll_once(&mut self.poll, &mut self.events, timeout)?;
            let Subscribers {
                events,
                conns,
                scratch,
                max_payload,
                unexpected,
                ..
            } = self;
            for event in events.iter() {
                let i = event.token().0;
                let Some(conn) = conns.get_mut(i) else {
                    continue;
                };
                let hung_up = event.is_read_closed() || event.is_error();
                conn.read(scratch, *max_payload, hung_up, |_, _, _| {
                    *unexpected += 1;
                    Ok(())
                })
                .map_err(|e| Fail::run(format!("connection {i} while idle: {}", e.message)))?;
                conn.flush()?;
            }
        }
    }

    /// Publishes one message (`publisher` is registered with `pub_token`)
    /// and waits until every connection has it;
    /// returns the time from the request to the last receipt, and the
    /// recipients the server reported (if its answer came in time).
    fn broadcast(
        &mut self,
        publisher: &mut HttpPublisher,
        pub_token: usize,
        expected: &Expected<'_>,
        deadline: &Deadline,
    ) -> Result<(Duration, Option<u64>)> {
        let n = self.conns.len();
        let mut recipients = None;
        let mut head = [0u8; 16];
        head[8..].copy_from_slice(&expected.seq.to_le_bytes());
        let start = Instant::now();
        publisher.post(&[&head, &expected.pattern[16..]]);
        publisher.flush()?;
        let give_up = start + FANOUT_LIMIT;
        let mut last = start;
        let mut got = 0usize;
        while got < n {
            let now = Instant::now();
            deadline.check(
                now,
                &format!(
                    "fanning out message {} ({got} of {n} received)",
                    expected.seq
                ),
            )?;
            if now >= give_up {
                return Err(Fail::run(format!(
                    "only {got} of {n} subscribers received published message {} within {} s",
                    expected.seq,
                    FANOUT_LIMIT.as_secs()
                )));
            }
            conn::poll_once(
                &mut self.poll,
                &mut self.events,
                deadline.poll_timeout(now, POLL_CAP),
            )?;
            let Subscribers {
                events,
                conns,
                scratch,
                max_payload,
                last_seq,
                ..
            } = self;
            for event in events.iter() {
                let i = event.token().0;
                let hung_up = event.is_read_closed() || event.is_error();
                if i == pub_token {
                    publisher
                        .read(|r| recipients = r)
                        .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
                    publisher.flush()?;
                    continue;
                }
                let (Some(conn), Some(seen)) = (conns.get_mut(i), last_seq.get_mut(i)) else {
                    continue;
                };
                let before = *seen;
                conn.read(scratch, *max_payload, hung_up, |_, op, p| {
                    *seen = check_message(op, p, expected, *seen)?;
                    Ok(())
                })
                .map_err(|e| Fail::run(format!("connection {i}: {}", e.message)))?;
                if *seen != before {
                    got += 1;
                    last = Instant::now();
                }
                conn.flush()?;
            }
        }
        // The response may trail the last delivery; it is only a detail here.
        let wait_response = Instant::now() + Duration::from_millis(500);
        while publisher.in_flight > 0 && Instant::now() < wait_response {
            conn::poll_once(&mut self.poll, &mut self.events, Duration::from_millis(50))?;
            if self.events.iter().any(|e| e.token() == Token(pub_token)) {
                publisher
                    .read(|r| recipients = r)
                    .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
            }
        }
        Ok((last.duration_since(start), recipients))
    }
}

/// Checks a received message against the one expected and the last one
/// this connection saw; returns the new last sequence number.
fn check_message(opcode: u8, payload: &[u8], expected: &Expected<'_>, last: u64) -> Result<u64> {
    if opcode != wire::OP_BINARY
        || payload.len() != expected.pattern.len()
        || payload[16..] != expected.pattern[16..]
    {
        return Err(Fail::run("received message differs from the one published"));
    }
    let seq = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
    if seq != expected.seq || seq != last + 1 {
        return Err(Fail::run(format!(
            "expected message {} (last received: {last}), got message {seq}",
            expected.seq
        )));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_steady_once_the_last_readings_agree() {
        let mut w = RssWatch::default();
        let mib = 1 << 20;
        // Falling by a MiB a reading: not steady.
        assert!(!w.push(10 * mib));
        assert!(!w.push(9 * mib));
        assert!(!w.push(8 * mib));
        assert!(!w.push(8 * mib));
        assert!(
            !w.push(8 * mib),
            "the 9 MiB reading is still among the last four"
        );
        assert!(w.push(8 * mib + STEADY_BYTES));
        // One jump later breaks it again until it has aged out.
        assert!(!w.push(8 * mib + STEADY_BYTES + 1));
        let mut w = RssWatch::default();
        for _ in 0..STEADY_READINGS - 1 {
            assert!(!w.push(mib), "fewer than {STEADY_READINGS} readings");
        }
        assert!(w.push(mib));
    }

    fn message(size: usize, seq: u64) -> Vec<u8> {
        let mut p = pattern(size).to_vec();
        p[8..16].copy_from_slice(&seq.to_le_bytes());
        p
    }

    #[test]
    fn messages_are_checked_in_order_and_content() {
        let pat = pattern(64);
        let second = Expected {
            seq: 2,
            pattern: &pat,
        };
        assert_eq!(
            check_message(wire::OP_BINARY, &message(64, 2), &second, 1).ok(),
            Some(2)
        );
        // A duplicate of the last, a skipped one, a stale one.
        assert!(check_message(wire::OP_BINARY, &message(64, 1), &second, 1).is_err());
        assert!(check_message(wire::OP_BINARY, &message(64, 2), &second, 0).is_err());
        assert!(check_message(wire::OP_BINARY, &message(64, 3), &second, 2).is_err());
        // Wrong opcode, length or content.
        assert!(check_message(wire::OP_TEXT, &message(64, 2), &second, 1).is_err());
        assert!(check_message(wire::OP_BINARY, &message(16, 2), &second, 1).is_err());
        let mut bad = message(64, 2);
        bad[40] ^= 1;
        assert!(check_message(wire::OP_BINARY, &bad, &second, 1).is_err());
    }
}
