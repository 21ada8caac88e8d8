//! `loadgen broadcast`: fan-out throughput and latency to many subscribers.
//!
//! N read-only subscribers join one channel. Warm-up messages are published
//! (every 200 ms) until every subscriber has received one, which proves all
//! N subscriptions are live. Then M messages are published, at most W not
//! yet "done", where done means the LAST subscriber has received it.
//!
//! Payload layout (binary): bytes 0..8 sequence number (little-endian; bit
//! 63 marks warm-up messages), 8..16 send time in nanoseconds since the run
//! started, then a fixed byte pattern that every receipt is checked against.
//! With `--payload text` the message is text throughout, published as text:
//! the same two numbers as 16 lowercase hex digits each, then printable
//! ASCII (see [`Head`]).
//!
//! With `--sse` the subscribers read the channel's event stream (Server-Sent
//! Events) instead of a WebSocket, on the same poller; their events are
//! checked exactly as frames are (`--payload text` makes them text events,
//! other payloads arrive as base64 `event: binary`). The publisher stays
//! HTTP or WebSocket.
//!
//! Each subscriber tracks the next sequence number it expects. A number
//! beyond it opens a gap (tentative losses); one below it fills a gap
//! (counted as reordered) or, with no gap open, is a duplicate. Whatever
//! gaps remain at the end, plus messages a subscriber never got to, are
//! losses. Any loss, duplicate or reordering fails the run (exit 1).
//!
//! With `--url` given several times (the nodes of a cluster), subscribers
//! are spread evenly over the servers (each gets N / servers of them),
//! and the publisher talks to the first. Besides publish to LAST receipt,
//! publish to FIRST receipt is recorded per message: at a small subscriber
//! count it shows what a hop between servers (a cluster bus) adds.
//!
//! Publisher `http`: `POST /publish/<channel>` pipelined on one keep-alive
//! connection, at most W requests outstanding. Publisher `ws`: one more
//! WebSocket client on the channel whose messages the server relays to the
//! others (it must not receive its own).
//!
//! With `--echo-url`, one more client on the server's echo route does
//! back-to-back round trips from the first measured publish until every
//! message is done (see [`crate::probe`]): its worst round trip is how long
//! the fan-out kept the server from answering anyone else. Loadgen reads
//! the probe before each batch of events and again after every
//! [`PROBE_EVERY`] subscriber events, not only when its own readiness comes
//! up (behind thousands of subscribers'), so its own reading of the
//! deliveries adds little to the round trips it reports.

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::cli::{BroadcastOpts, Payload, PublisherKind};
use crate::conn::{self, DialPlan, POLL_CAP, Sizing, SourceAddrs, WsConn};
use crate::error::{Deadline, Fail, Result};
use crate::http::{self, HttpPublisher};
use crate::meta;
use crate::probe::EchoProbe;
use crate::report::{self, Figures};
use crate::stats::{Histogram, Json, Rng};
use crate::target::Target;
use crate::wire;

const EVENTS: usize = 1024;
/// Marks warm-up messages, which are not measured.
const WARM: u64 = 1 << 63;
const WARM_EVERY: Duration = Duration::from_millis(200);
/// How long to keep listening after the last message is done, so late
/// duplicates are still seen.
const DRAIN: Duration = Duration::from_millis(200);
/// Subscriber events handled between two reads of the echo probe: a few
/// hundred microseconds of loadgen's work at most.
const PROBE_EVERY: usize = 128;

/// How a message's head (sequence number, send time) is written: 16 bytes
/// little-endian, or, in a text message, 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    Binary,
    Text,
}

impl Head {
    /// Longest head: two numbers of 16 hex digits.
    const MAX: usize = 32;

    fn len(self) -> usize {
        match self {
            Head::Binary => 16,
            Head::Text => Head::MAX,
        }
    }

    /// The opcode a message with this head travels as.
    fn opcode(self) -> u8 {
        match self {
            Head::Binary => wire::OP_BINARY,
            Head::Text => wire::OP_TEXT,
        }
    }

    /// The head of a message; its first [`Head::len`] bytes are used.
    fn write(self, seq: u64, sent: u64) -> [u8; Head::MAX] {
        let mut head = [0u8; Head::MAX];
        match self {
            Head::Binary => {
                head[..8].copy_from_slice(&seq.to_le_bytes());
                head[8..16].copy_from_slice(&sent.to_le_bytes());
            }
            Head::Text => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for (k, value) in [seq, sent].into_iter().enumerate() {
                    for (i, digit) in head[16 * k..16 * (k + 1)].iter_mut().enumerate() {
                        *digit = HEX[(value >> (60 - 4 * i) & 0xf) as usize];
                    }
                }
            }
        }
        head
    }

    /// Sequence number and send time from a message's head; `None` if a
    /// text head is not hex digits.
    fn read(self, payload: &[u8]) -> Option<(u64, u64)> {
        match self {
            Head::Binary => Some((read_u64(payload.get(..8)?), read_u64(payload.get(8..16)?))),
            Head::Text => {
                let hex = |digits: &[u8]| {
                    let text = std::str::from_utf8(digits).ok()?;
                    match text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        true => u64::from_str_radix(text, 16).ok(),
                        false => None,
                    }
                };
                Some((hex(payload.get(..16)?)?, hex(payload.get(16..32)?)?))
            }
        }
    }
}

/// What one subscriber has seen.
struct Sub {
    next: u64,
    missing: u64,
    warmed: bool,
}

/// Run-wide state updated on every receipt.
struct Tally {
    size: usize,
    pattern: Box<[u8]>,
    subscribers: u32,
    /// Receipts still awaited per message.
    remaining: Vec<u32>,
    /// Publish to the last subscriber's receipt.
    hist: Histogram,
    /// Publish to the first subscriber's receipt.
    first: Histogram,
    done: u64,
    receipts: u64,
    duplicates: u64,
    reordered: u64,
    warmed: usize,
    last_progress_ns: u64,
    last_done_ns: u64,
    /// Messages arrive in the metadata format (`--meta`).
    meta: bool,
    /// How messages carry their sequence number and send time.
    head: Head,
}

impl Tally {
    fn new(size: usize, pattern: Box<[u8]>, subscribers: usize, messages: u64) -> Tally {
        Tally {
            size,
            pattern,
            subscribers: subscribers as u32,
            remaining: vec![subscribers as u32; messages as usize],
            hist: Histogram::new(),
            first: Histogram::new(),
            done: 0,
            receipts: 0,
            duplicates: 0,
            reordered: 0,
            warmed: 0,
            last_progress_ns: 0,
            last_done_ns: 0,
            meta: false,
            head: Head::Binary,
        }
    }

    fn receive(&mut self, sub: &mut Sub, opcode: u8, payload: &[u8], now: u64) -> Result<()> {
        let (opcode, payload) = match self.meta {
            false => (opcode, payload),
            // wshub's own text frames are not messages; the rest unwrapped.
            true => match meta::payload(opcode, payload) {
                Some(inner) => (opcode, inner),
                None => return Ok(()),
            },
        };
        if opcode != self.head.opcode() {
            return Err(Fail::run(format!(
                "published opcode {:#x}, received opcode {opcode:#x}",
                self.head.opcode()
            )));
        }
        if payload.len() != self.size {
            return Err(Fail::run(format!(
                "received a {}-byte message, published {} bytes",
                payload.len(),
                self.size
            )));
        }
        let head = self.head.len();
        if payload[head..] != self.pattern[head..] {
            return Err(Fail::run(
                "received message differs from what was published",
            ));
        }
        let Some((seq, sent)) = self.head.read(payload) else {
            return Err(Fail::run("received message has a malformed head"));
        };
        if seq & WARM != 0 {
            if !sub.warmed {
                sub.warmed = true;
                self.warmed += 1;
            }
            return Ok(());
        }
        let Some(left) = self.remaining.get_mut(seq as usize) else {
            return Err(Fail::run(format!("received unknown message number {seq}")));
        };
        if seq == sub.next {
            sub.next += 1;
        } else if seq > sub.next {
            sub.missing += seq - sub.next;
            sub.next = seq + 1;
        } else if sub.missing > 0 {
            sub.missing -= 1;
            self.reordered += 1;
        } else {
            self.duplicates += 1;
        }
        self.receipts += 1;
        self.last_progress_ns = now;
        if *left > 0 {
            let latency = now.saturating_sub(sent);
            if *left == self.subscribers {
                self.first.record(latency);
            }
            *left -= 1;
            if *left == 0 {
                self.done += 1;
                self.last_done_ns = now;
                self.hist.record(latency);
            }
        }
        Ok(())
    }
}

/// `size` bytes of JSON-like text (quotes, repeated keys, varying
/// numbers): what a market-data or chat feed compresses like.
fn json_pattern(size: usize) -> Box<[u8]> {
    let mut text = String::with_capacity(size + 128);
    let mut i = 0u32;
    while text.len() < size {
        text.push_str(&format!(
            "{{\"id\":{},\"sym\":\"SYM{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"side\":\"{}\"}},",
            10_000 + i * 37,
            i % 13,
            100 + i % 17,
            (i * 7) % 100,
            100 + i % 17,
            (i * 7 + 3) % 100,
            if i.is_multiple_of(2) { "buy" } else { "sell" }
        ));
        i += 1;
    }
    text.into_bytes()[..size].into()
}

/// `size` bytes of printable ASCII: the body of a text message.
fn text_pattern(size: usize) -> Box<[u8]> {
    (0..size)
        .map(|j| b'!' + ((j.wrapping_mul(7) ^ 0x5a) % 94) as u8)
        .collect()
}

/// Subscribers of `n` that server `k` of `servers` gets: as many as
/// dealing them out in turn would give it.
fn share(n: usize, servers: usize, k: usize) -> usize {
    n / servers + usize::from(k < n % servers)
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

enum Publisher {
    Http(HttpPublisher),
    Ws(WsConn),
}

impl Publisher {
    fn can_send(&self, window: usize) -> bool {
        match self {
            Publisher::Http(h) => h.in_flight < window,
            Publisher::Ws(_) => true,
        }
    }

    fn publish(&mut self, head: Head, seq: u64, now: u64, pattern: &[u8], rng: &mut Rng) {
        let bytes = head.write(seq, now);
        let parts: [&[u8]; 2] = [&bytes[..head.len()], &pattern[head.len()..]];
        match self {
            Publisher::Http(h) => h.post(&parts),
            Publisher::Ws(c) => wire::encode_masked(&mut c.out, head.opcode(), rng.mask(), &parts),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Publisher::Http(h) => h.flush(),
            Publisher::Ws(c) => c.flush(),
        }
    }
}

/// Publisher-side observations.
#[derive(Default)]
struct PubStats {
    recipients_min: Option<u64>,
    recipients_max: Option<u64>,
    own_messages: u64,
}

/// The whole run's state: the poller, every connection, and what they have
/// seen. One poll step touches all of it.
struct Fanout {
    poll: Poll,
    events: Events,
    rng: Rng,
    subs_io: Vec<WsConn>,
    subs: Vec<Sub>,
    publisher: Publisher,
    pub_token: usize,
    pub_stats: PubStats,
    /// The `--echo-url` client, on token `pub_token + 1`.
    probe: Option<EchoProbe>,
    tally: Tally,
    scratch: Vec<u8>,
    size: usize,
    /// Time zero of the run's nanosecond timestamps.
    clock: Instant,
}

/// How long setting up took.
struct Setup {
    dial_time: Duration,
    warm_time: Duration,
    warm_sent: u64,
}

/// What the subscribers saw, for the summary, the checks and the JSON line.
struct Outcome {
    tally: Tally,
    pub_stats: PubStats,
    losses: u64,
    compressed: u64,
    elapsed: f64,
    /// The echo probe's round trips, if there was one.
    echo: Option<Histogram>,
    /// The probe's last echo never came.
    probe_lost: bool,
}

/// What the measured phase came to.
struct Measured {
    used: report::Used,
    elapsed: f64,
    stalled: bool,
    /// The probe's last echo did not come back in time.
    probe_lost: bool,
}

pub fn run(opts: &BroadcastOpts) -> Result<()> {
    let deadline = Deadline::after(opts.common.timeout);
    conn::raise_fd_limit(opts.subscribers + 2)?;
    report::check_pids(&opts.common)?;
    let dial_start = Instant::now();
    let mut fanout = Fanout::connect(opts, &deadline)?;
    let dial_time = dial_start.elapsed();
    fanout.sweep()?;
    let warm_start = Instant::now();
    let warm_sent = fanout.warm_up(opts, &deadline)?;
    let setup = Setup {
        dial_time,
        warm_time: warm_start.elapsed(),
        warm_sent,
    };
    let measured = fanout.measure(opts, &deadline)?;
    fanout.drain()?;
    fanout.report(opts, &setup, measured)
}

impl Fanout {
    /// Dials every subscriber (an even share on each server), then the
    /// publisher.
    fn connect(opts: &BroadcastOpts, deadline: &Deadline) -> Result<Fanout> {
        let n = opts.subscribers;
        let head = match opts.payload {
            Payload::Text => Head::Text,
            Payload::Pattern | Payload::Json => Head::Binary,
        };
        let dial = &opts.common.dial;
        let mut poll = Poll::new().map_err(|e| Fail::run(format!("epoll: {e}")))?;
        let mut events = Events::with_capacity(EVENTS);
        let mut rng = Rng::seeded();
        let sizing = Sizing {
            max_payload: opts.size + if opts.meta { meta::ROOM } else { 0 },
            out_capacity: 0,
            deflate: opts.deflate,
            sse: opts.sse,
        };
        let mut sources = SourceAddrs::new(dial.url.addr, dial.source_base, dial.per_source);
        let meta_urls: Vec<Target> = match opts.meta {
            true => std::iter::once(&dial.url)
                .chain(&dial.more_urls)
                .map(meta::with_meta)
                .collect(),
            false => Vec::new(),
        };
        let servers: Vec<&Target> = match opts.meta {
            true => meta_urls.iter().collect(),
            false => std::iter::once(&dial.url).chain(&dial.more_urls).collect(),
        };
        let mut subs_io = Vec::with_capacity(n);
        for (k, target) in servers.iter().enumerate() {
            let plan = DialPlan {
                target,
                count: share(n, servers.len(), k),
                token_base: subs_io.len(),
                sizing,
                max_dialing: dial.max_dialing,
            };
            if plan.count == 0 {
                continue;
            }
            let some = conn::dial_all(
                &mut poll,
                &mut events,
                &plan,
                &mut sources,
                &mut rng,
                deadline,
            )?;
            subs_io.extend(some);
        }
        let pub_token = n;
        let publisher = match opts.publisher {
            PublisherKind::Http => Publisher::Http(HttpPublisher::connect(
                &opts.publish_url,
                opts.size,
                match head {
                    Head::Binary => http::BINARY,
                    Head::Text => http::TEXT,
                },
                opts.window,
                poll.registry(),
                Token(pub_token),
            )?),
            PublisherKind::Ws => {
                let plan = DialPlan {
                    target: &dial.url,
                    count: 1,
                    token_base: pub_token,
                    sizing: Sizing {
                        max_payload: opts.size,
                        out_capacity: opts.window * (opts.size + wire::MAX_CLIENT_HEADER),
                        deflate: opts.deflate,
                        sse: false,
                    },
                    max_dialing: 1,
                };
                let one = dial_one(
                    (&mut poll, &mut events),
                    &plan,
                    &mut sources,
                    &mut rng,
                    deadline,
                    "publisher",
                )?;
                Publisher::Ws(one)
            }
        };
        let probe = match &opts.echo_url {
            Some(target) => {
                let plan = DialPlan {
                    target,
                    count: 1,
                    token_base: pub_token + 1,
                    sizing: Sizing {
                        max_payload: opts.echo_size,
                        out_capacity: opts.echo_size + wire::MAX_CLIENT_HEADER,
                        deflate: false,
                        sse: false,
                    },
                    max_dialing: 1,
                };
                let one = dial_one(
                    (&mut poll, &mut events),
                    &plan,
                    &mut sources,
                    &mut rng,
                    deadline,
                    "echo probe",
                )?;
                Some(EchoProbe::new(one, opts.echo_size))
            }
            None => None,
        };
        let subs = (0..n)
            .map(|_| Sub {
                next: 0,
                missing: 0,
                warmed: false,
            })
            .collect();
        let pattern = match opts.payload {
            Payload::Json => json_pattern(opts.size),
            Payload::Text => text_pattern(opts.size),
            Payload::Pattern => (0..opts.size)
                .map(|j| (j.wrapping_mul(7) ^ 0x5a) as u8)
                .collect(),
        };
        Ok(Fanout {
            poll,
            events,
            rng,
            subs_io,
            subs,
            publisher,
            pub_token,
            pub_stats: PubStats::default(),
            probe,
            tally: Tally {
                meta: opts.meta,
                head,
                ..Tally::new(opts.size, pattern, n, opts.messages)
            },
            scratch: Sizing {
                max_payload: sizing.max_payload.max(opts.echo_size),
                ..sizing
            }
            .scratch(),
            size: sizing.max_payload,
            clock: Instant::now(),
        })
    }

    /// Nanoseconds since the run's clock started.
    fn ns(&self, t: Instant) -> u64 {
        t.duration_since(self.clock).as_nanos() as u64
    }

    /// Events for subscribers may have been dropped while the publisher
    /// dialed; one read each makes sure nothing is left unseen.
    fn sweep(&mut self) -> Result<()> {
        let Fanout {
            subs_io,
            subs,
            tally,
            scratch,
            size,
            ..
        } = self;
        for (i, (conn, sub)) in subs_io.iter_mut().zip(subs.iter_mut()).enumerate() {
            conn.read(scratch, *size, false, |_, op, p| {
                tally.receive(sub, op, p, 0)
            })
            .map_err(|e| Fail::run(format!("subscriber {i}: {}", e.message)))?;
        }
        Ok(())
    }

    /// Publishes warm-up messages until every subscriber has seen one;
    /// returns how many were sent.
    fn warm_up(&mut self, opts: &BroadcastOpts, deadline: &Deadline) -> Result<u64> {
        let n = opts.subscribers;
        let mut warm_sent = 0u64;
        let mut last_warm: Option<Instant> = None;
        while self.tally.warmed < n {
            let now = Instant::now();
            deadline.check(
                now,
                &format!(
                    "waiting for all subscribers ({} of {n} confirmed)",
                    self.tally.warmed
                ),
            )?;
            if last_warm.is_none_or(|t| now - t >= WARM_EVERY)
                && self.publisher.can_send(opts.window)
            {
                self.publish(WARM | warm_sent, now);
                warm_sent += 1;
                last_warm = Some(now);
            }
            self.publisher.flush()?;
            self.step(deadline.poll_timeout(now, POLL_CAP))?;
        }
        Ok(warm_sent)
    }

    /// Publishes the measured messages, at most a window of them not yet
    /// done, until all are done or nothing arrives for `--stall`.
    fn measure(&mut self, opts: &BroadcastOpts, deadline: &Deadline) -> Result<Measured> {
        let start = Instant::now();
        let meters = report::start_cpu(&opts.common)?;
        self.tally.last_progress_ns = self.ns(start);
        if let Some(probe) = &mut self.probe {
            let now = start.duration_since(self.clock).as_nanos() as u64;
            probe
                .start(now, &mut self.rng)
                .map_err(|e| Fail::run(format!("echo probe: {}", e.message)))?;
        }
        let mut sent = 0u64;
        let mut stalled = false;
        loop {
            let now = Instant::now();
            deadline.check(
                now,
                &format!(
                    "broadcasting ({} of {} messages done)",
                    self.tally.done, opts.messages
                ),
            )?;
            while sent < opts.messages
                && sent - self.tally.done < opts.window as u64
                && self.publisher.can_send(opts.window)
            {
                self.publish(sent, Instant::now());
                sent += 1;
            }
            self.publisher.flush()?;
            if self.tally.done == opts.messages {
                break;
            }
            if self.ns(now).saturating_sub(self.tally.last_progress_ns)
                > opts.stall.as_nanos() as u64
            {
                stalled = true;
                break;
            }
            self.step(deadline.poll_timeout(now, POLL_CAP))?;
        }
        let used = report::stop_cpu(&meters)?;
        let end_ns = if stalled {
            self.ns(Instant::now())
        } else {
            self.tally.last_done_ns
        };
        let probe_lost = self.finish_probe(opts, deadline)?;
        Ok(Measured {
            used,
            elapsed: (end_ns.saturating_sub(self.ns(start))) as f64 / 1e9,
            stalled,
            probe_lost,
        })
    }

    /// Stops the echo probe and waits (at most `--stall`) for its last
    /// echo, whose round trip counts too; true if it never came.
    fn finish_probe(&mut self, opts: &BroadcastOpts, deadline: &Deadline) -> Result<bool> {
        let Some(probe) = &mut self.probe else {
            return Ok(false);
        };
        probe.stop();
        let give_up = Instant::now() + opts.stall;
        loop {
            if !self.probe.as_ref().is_some_and(EchoProbe::in_flight) {
                return Ok(false);
            }
            let now = Instant::now();
            deadline.check(now, "waiting for the echo probe's last echo")?;
            if now >= give_up {
                return Ok(true);
            }
            self.step(deadline.poll_timeout(now, (give_up - now).min(POLL_CAP)))?;
        }
    }

    /// Keeps listening a little, so late duplicates show up.
    fn drain(&mut self) -> Result<()> {
        let drain_until = Instant::now() + DRAIN;
        loop {
            let now = Instant::now();
            if now >= drain_until {
                return Ok(());
            }
            self.step(drain_until - now)?;
        }
    }

    fn publish(&mut self, seq: u64, at: Instant) {
        let now = self.ns(at);
        self.publisher.publish(
            self.tally.head,
            seq,
            now,
            &self.tally.pattern,
            &mut self.rng,
        );
    }

    /// One poll and the handling of its events, with the echo probe read
    /// first and every [`PROBE_EVERY`] events.
    fn step(&mut self, timeout: Duration) -> Result<()> {
        conn::poll_once(&mut self.poll, &mut self.events, timeout)?;
        let Fanout {
            events,
            rng,
            subs_io,
            subs,
            publisher,
            pub_token,
            pub_stats,
            probe,
            tally,
            scratch,
            size,
            clock,
            ..
        } = self;
        let probe_token = *pub_token + 1;
        // `own`: the probe's own event (read it whatever it awaits, and
        // report a hang-up); otherwise only an awaited echo is looked for.
        let mut pump_probe =
            |probe: &mut Option<EchoProbe>, scratch: &mut [u8], own, hung_up| match probe {
                Some(p) if own || p.in_flight() => p
                    .pump(scratch, hung_up, *clock, rng)
                    .map_err(|e| Fail::run(format!("echo probe: {}", e.message))),
                _ => Ok(()),
            };
        pump_probe(probe, scratch, false, false)?;
        for (k, event) in events.iter().enumerate() {
            let i = event.token().0;
            let hung_up = event.is_read_closed() || event.is_error();
            if i == probe_token {
                pump_probe(probe, scratch, true, hung_up)?;
                continue;
            }
            if k % PROBE_EVERY == PROBE_EVERY - 1 {
                pump_probe(probe, scratch, false, false)?;
            }
            if i == *pub_token {
                publisher_event(publisher, pub_stats, event, hung_up, scratch, *size)
                    .map_err(|e| Fail::run(format!("publisher: {}", e.message)))?;
                continue;
            }
            let (Some(conn), Some(sub)) = (subs_io.get_mut(i), subs.get_mut(i)) else {
                continue;
            };
            if event.is_readable() || hung_up {
                let now = clock.elapsed().as_nanos() as u64;
                conn.read(scratch, *size, hung_up, |_, op, p| {
                    tally.receive(sub, op, p, now)
                })
                .map_err(|e| Fail::run(format!("subscriber {i}: {}", e.message)))?;
            }
            // Only pongs are ever written here.
            if conn.wants_flush() {
                conn.flush()?;
            }
        }
        Ok(())
    }

    /// Closes every connection, prints the summary and the JSON line, and
    /// fails the run on any loss, duplicate, reordering or stall.
    fn report(self, opts: &BroadcastOpts, setup: &Setup, measured: Measured) -> Result<()> {
        let Fanout {
            subs_io,
            subs,
            publisher,
            pub_stats,
            probe,
            tally,
            ..
        } = self;
        drop(subs_io);
        drop(publisher);
        let echo = probe.map(|p| p.hist);
        let losses: u64 = subs
            .iter()
            .map(|s| s.missing + opts.messages.saturating_sub(s.next))
            .sum();
        let elapsed = measured.elapsed;
        let stalled = measured.stalled;
        let figures = Figures {
            used: measured.used,
            elapsed,
            work: tally.receipts,
        };
        let outcome = Outcome {
            tally,
            pub_stats,
            losses,
            compressed: conn::compressed_received(),
            elapsed,
            echo,
            probe_lost: measured.probe_lost,
        };
        print_summary(opts, setup, &outcome);
        figures.print("delivery");
        let problems = problems(opts, stalled, &outcome);
        let json = figures.add_json(summary_json(opts, setup, &outcome), "delivery");
        if problems.is_empty() {
            println!("{}", json.str("status", "ok").finish());
            Ok(())
        } else {
            let message = problems.join("; ");
            println!(
                "{}",
                json.str("status", "failed").str("error", &message).finish()
            );
            Err(Fail::run(message))
        }
    }
}

/// The human summary, before the CPU figures.
fn print_summary(opts: &BroadcastOpts, setup: &Setup, outcome: &Outcome) {
    let &Outcome {
        ref tally,
        ref pub_stats,
        losses,
        compressed,
        elapsed,
        ref echo,
        ..
    } = outcome;
    let n = opts.subscribers;
    let deliveries = tally.receipts;
    let rate = deliveries as f64 / elapsed;
    let publisher_name = match opts.publisher {
        PublisherKind::Http => "http (pipelined on one keep-alive connection)",
        PublisherKind::Ws => "ws (relayed by the server, sender excluded)",
    };
    println!(
        "broadcast: {n} subscribers{}, {} messages of {} B{}, window {}, publisher {publisher_name}",
        if opts.sse {
            " on event streams (Server-Sent Events)"
        } else {
            ""
        },
        opts.messages,
        opts.size,
        if opts.payload == Payload::Text {
            " of text"
        } else {
            ""
        },
        opts.window
    );
    let servers = 1 + opts.common.dial.more_urls.len();
    if servers > 1 {
        println!(
            "  servers:     {servers}, subscribers spread evenly, publishing to the first \
             (--publish-url aside)"
        );
    }
    println!(
        "  setup:       connect {:.2} s, all subscribers confirmed after {:.2} s ({} \
         warm-up messages)",
        setup.dial_time.as_secs_f64(),
        setup.warm_time.as_secs_f64(),
        setup.warm_sent
    );
    println!(
        "  deliveries:  {deliveries} in {elapsed:.3} s = {rate:.0} deliveries/s ({:.0} messages/s)",
        tally.done as f64 / elapsed
    );
    println!(
        "  latency:     publish to last receipt: {}",
        report::latency_line(&tally.hist, &[0.5, 0.99])
    );
    println!(
        "               publish to first receipt: {}",
        report::latency_line(&tally.first, &[0.5, 0.99])
    );
    if let Some(h) = echo {
        println!(
            "  echo probe:  {} B round trips, one in flight, during the run: {}",
            opts.echo_size,
            report::latency_line(h, &[0.5, 0.99])
        );
    }
    println!(
        "  checks:      losses {losses}, duplicates {}, reordered {}",
        tally.duplicates, tally.reordered
    );
    if opts.deflate {
        println!(
            "  deflate:     {compressed} messages (warm-up included) arrived compressed (RSV1) \
             and were inflated; {} measured receipts",
            tally.receipts
        );
    }
    if let (Some(lo), Some(hi)) = (pub_stats.recipients_min, pub_stats.recipients_max) {
        let note = if lo == n as u64 && hi == n as u64 {
            ""
        } else {
            " (not the subscriber count: a cluster node counts the nodes it reached)"
        };
        println!("  recipients:  server reported {lo}..{hi}{note}");
    }
}

/// Everything that fails the run.
fn problems(opts: &BroadcastOpts, stalled: bool, outcome: &Outcome) -> Vec<String> {
    let &Outcome {
        ref tally,
        ref pub_stats,
        losses,
        compressed,
        probe_lost,
        ..
    } = outcome;
    let mut problems = Vec::new();
    if probe_lost {
        problems.push(format!(
            "echo probe: no echo within {:.1} s after the last message was done",
            opts.stall.as_secs_f64()
        ));
    }
    if stalled {
        problems.push(format!(
            "stalled: nothing arrived for {:.1} s with {} of {} messages done",
            opts.stall.as_secs_f64(),
            tally.done,
            opts.messages
        ));
    }
    if losses + tally.duplicates + tally.reordered > 0 {
        problems.push(format!(
            "{losses} lost, {} duplicated, {} reordered deliveries",
            tally.duplicates, tally.reordered
        ));
    }
    if opts.deflate && compressed == 0 {
        problems.push(
            "--deflate: no message arrived compressed (is --size below compression_min_size?)"
                .to_owned(),
        );
    }
    if pub_stats.own_messages > 0 {
        problems.push(format!(
            "the ws publisher received {} of its own messages (the sender must be excluded)",
            pub_stats.own_messages
        ));
    }
    problems
}

/// The JSON line's scenario fields (the CPU figures and status follow).
fn summary_json(opts: &BroadcastOpts, setup: &Setup, outcome: &Outcome) -> Json {
    let &Outcome {
        ref tally,
        ref pub_stats,
        losses,
        compressed,
        elapsed,
        ref echo,
        ..
    } = outcome;
    let url = &opts.common.dial.url;
    let echo_us = |f: fn(&Histogram) -> u64| echo.as_ref().map(|h| f(h) as f64 / 1e3);
    let deliveries = tally.receipts;
    let h = &tally.hist;
    Json::new()
        .str("scenario", "broadcast")
        .str("url", &format!("ws://{}{}", url.host, url.path))
        .str(
            "publisher",
            match opts.publisher {
                PublisherKind::Http => "http",
                PublisherKind::Ws => "ws",
            },
        )
        .int("servers", 1 + opts.common.dial.more_urls.len() as u64)
        .int("subscribers", opts.subscribers as u64)
        .int("messages", opts.messages)
        .int("window", opts.window as u64)
        .int("size", opts.size as u64)
        .str("deflate", if opts.deflate { "on" } else { "off" })
        .str(
            "payload",
            match opts.payload {
                Payload::Pattern => "pattern",
                Payload::Json => "json",
                Payload::Text => "text",
            },
        )
        .str("transport", if opts.sse { "sse" } else { "websocket" })
        .str("meta", if opts.meta { "on" } else { "off" })
        .int("compressed_receipts", compressed)
        .num("connect_s", setup.dial_time.as_secs_f64(), 3)
        .num("warmup_s", setup.warm_time.as_secs_f64(), 3)
        .num("seconds", elapsed, 3)
        .int("deliveries", deliveries)
        .num("deliveries_per_s", deliveries as f64 / elapsed, 1)
        .num("msgs_per_s", tally.done as f64 / elapsed, 1)
        .num("p50_us", h.quantile(0.5) as f64 / 1e3, 1)
        .num("p99_us", h.quantile(0.99) as f64 / 1e3, 1)
        .num("max_us", h.max() as f64 / 1e3, 1)
        .num("first_p50_us", tally.first.quantile(0.5) as f64 / 1e3, 1)
        .num("first_p99_us", tally.first.quantile(0.99) as f64 / 1e3, 1)
        .int("losses", losses)
        .int("duplicates", tally.duplicates)
        .int("reordered", tally.reordered)
        .opt_num(
            "recipients_min",
            pub_stats.recipients_min.map(|v| v as f64),
            0,
        )
        .opt_num(
            "recipients_max",
            pub_stats.recipients_max.map(|v| v as f64),
            0,
        )
        .opt_num(
            "echo_round_trips",
            echo.as_ref().map(|h| h.count() as f64),
            0,
        )
        .opt_num("echo_p50_us", echo_us(|h| h.quantile(0.5)), 1)
        .opt_num("echo_p99_us", echo_us(|h| h.quantile(0.99)), 1)
        .opt_num("echo_max_us", echo_us(Histogram::max), 1)
}

fn publisher_event(
    publisher: &mut Publisher,
    stats: &mut PubStats,
    event: &mio::event::Event,
    hung_up: bool,
    scratch: &mut [u8],
    size: usize,
) -> Result<()> {
    match publisher {
        Publisher::Http(h) => {
            if event.is_readable() || hung_up {
                h.read(|recipients| {
                    if let Some(r) = recipients {
                        stats.recipients_min = Some(stats.recipients_min.map_or(r, |m| m.min(r)));
                        stats.recipients_max = Some(stats.recipients_max.map_or(r, |m| m.max(r)));
                    }
                })?;
            }
            h.flush()
        }
        Publisher::Ws(c) => {
            if event.is_readable() || hung_up {
                c.read(scratch, size, hung_up, |_, _, _| {
                    stats.own_messages += 1;
                    Ok(())
                })?;
            }
            c.flush()
        }
    }
}

/// Dials the one connection `plan` describes (a publisher, the echo probe);
/// `what` names it in errors.
fn dial_one(
    (poll, events): (&mut Poll, &mut Events),
    plan: &DialPlan<'_>,
    sources: &mut SourceAddrs,
    rng: &mut Rng,
    deadline: &Deadline,
    what: &str,
) -> Result<WsConn> {
    conn::dial_all(poll, events, plan, sources, rng, deadline)
        .map_err(|e| Fail::run(format!("{what}: {}", e.message)))?
        .into_iter()
        .next()
        .ok_or_else(|| Fail::run(format!("{what}: not dialed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(subscribers: usize, messages: u64) -> Tally {
        Tally::new(
            24,
            (0..24).map(|j| j as u8).collect(),
            subscribers,
            messages,
        )
    }

    fn payload(t: &Tally, seq: u64, sent: u64) -> Vec<u8> {
        let mut p = t.pattern.to_vec();
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p[8..16].copy_from_slice(&sent.to_le_bytes());
        p
    }

    fn sub() -> Sub {
        Sub {
            next: 0,
            missing: 0,
            warmed: false,
        }
    }

    #[test]
    fn classifies_order_problems() {
        let mut t = tally(1, 6);
        let mut s = sub();
        for seq in [0, 2, 1, 3, 3, 5] {
            let p = payload(&t, seq, 0);
            t.receive(&mut s, wire::OP_BINARY, &p, 10).unwrap();
        }
        // 2 before 1: one gap, filled late; 3 twice; 4 never came.
        assert_eq!(t.reordered, 1);
        assert_eq!(t.duplicates, 1);
        assert_eq!(s.missing, 1);
        assert_eq!(s.next, 6);
        assert_eq!(
            t.done, 5,
            "each received message is done for one subscriber"
        );
    }

    #[test]
    fn message_is_done_when_the_last_subscriber_has_it() {
        let mut t = tally(2, 1);
        let (mut a, mut b) = (sub(), sub());
        let p = payload(&t, 0, 1_000);
        t.receive(&mut a, wire::OP_BINARY, &p, 5_000).unwrap();
        assert_eq!(t.done, 0);
        t.receive(&mut b, wire::OP_BINARY, &p, 9_000).unwrap();
        assert_eq!(t.done, 1);
        assert_eq!(t.hist.max(), 8_000, "publish to last receipt");
        assert_eq!(t.first.max(), 4_000, "publish to first receipt");
        assert_eq!(t.first.count(), 1);
        assert_eq!(t.last_done_ns, 9_000);
    }

    #[test]
    fn subscribers_are_dealt_out_evenly() {
        assert_eq!((0..3).map(|k| share(18_000, 3, k)).sum::<usize>(), 18_000);
        assert_eq!([share(7, 3, 0), share(7, 3, 1), share(7, 3, 2)], [3, 2, 2]);
        assert_eq!(share(1, 2, 1), 0);
    }

    #[test]
    fn warm_up_counts_each_subscriber_once_and_is_not_measured() {
        let mut t = tally(1, 1);
        let mut s = sub();
        let p = payload(&t, WARM | 3, 0);
        t.receive(&mut s, wire::OP_BINARY, &p, 1).unwrap();
        t.receive(&mut s, wire::OP_BINARY, &p, 2).unwrap();
        assert_eq!(t.warmed, 1);
        assert_eq!(t.receipts, 0);
    }

    #[test]
    fn text_heads_round_trip_and_are_checked() {
        let head = Head::Text.write(WARM | 0x1234, 987_654_321);
        assert_eq!(&head[..16], b"8000000000001234");
        assert_eq!(Head::Text.read(&head), Some((WARM | 0x1234, 987_654_321)));
        let mut bad = head;
        bad[3] = b'g';
        assert_eq!(Head::Text.read(&bad), None);
        bad[3] = b'+';
        assert_eq!(Head::Text.read(&bad), None, "from_str_radix takes a sign");
        let binary = Head::Binary.write(7, 9);
        assert_eq!(Head::Binary.read(&binary[..16]), Some((7, 9)));

        let pattern = text_pattern(64);
        assert!(pattern.iter().all(|b| b.is_ascii_graphic()));
        let mut t = Tally {
            head: Head::Text,
            ..Tally::new(64, pattern.clone(), 1, 2)
        };
        let mut s = sub();
        let mut message = pattern.to_vec();
        message[..32].copy_from_slice(&Head::Text.write(0, 100));
        t.receive(&mut s, wire::OP_TEXT, &message, 150).unwrap();
        assert_eq!((t.done, t.hist.max()), (1, 50));
        assert!(t.receive(&mut s, wire::OP_BINARY, &message, 150).is_err());
        message[40] ^= 1;
        assert!(t.receive(&mut s, wire::OP_TEXT, &message, 150).is_err());
    }

    #[test]
    fn rejects_foreign_messages() {
        let mut t = tally(1, 2);
        let mut s = sub();
        let good = payload(&t, 0, 0);
        assert!(t.receive(&mut s, wire::OP_TEXT, &good, 0).is_err());
        assert!(t.receive(&mut s, wire::OP_BINARY, &good[..20], 0).is_err());
        let mut corrupt = good.clone();
        corrupt[20] ^= 1;
        assert!(t.receive(&mut s, wire::OP_BINARY, &corrupt, 0).is_err());
        let unknown = payload(&t, 7, 0);
        assert!(t.receive(&mut s, wire::OP_BINARY, &unknown, 0).is_err());
    }
}
