//! Ten thousand idle subscribers and publishers at 1,000 messages a second
//! through two handovers: every subscriber gets every message of its
//! channel exactly once and in order, none sees a close or the end of its
//! stream, the old process exits 0, and the new one serves new connections
//! (and hands over again in its turn). An echo client measures its longest
//! pause meanwhile. The subscribers are spread over [`CHANNELS`] channels
//! of ten, which the publishers take in turn (each its own share): a
//! thousand messages a second to all ten thousand at once would be ten
//! million deliveries a second, more than any server does on two cores.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use rustix::process::Signal;

use crate::common::{LIVE, Publisher, start};
use crate::support::client::{ECHO_PATH, RawClient, op, split_frames};
use crate::support::handover::upgrade;
use crate::support::load::{connect_from, ensure_nofile, source_address};
use crate::support::tempdir::TempDir;

const SUBSCRIBERS: usize = 10_000;
/// Source addresses 127.0.0.2 ..= 127.0.0.9.
const SOURCE_ADDRESSES: usize = 8;
/// Threads that open the subscribers, then read them.
const THREADS: usize = 4;
/// Channels `through-0` .. ; subscriber `n` follows channel `n % CHANNELS`.
const CHANNELS: usize = 1_000;
/// Publishers, each on a keep-alive connection of its own; publisher `p`
/// publishes to the channels `c` with `c % PUBLISHERS == p`, in rounds:
/// message `m<r>` of round `r` to each of them.
const PUBLISHERS: usize = 2;
/// The pace of all publishers together: 1,000 messages a second.
const PUBLISH_EVERY: Duration = Duration::from_millis(1);
/// The rate they must reach overall, the moments the handovers hold every
/// publish up included.
const MIN_RATE: f64 = 900.0;
/// Bounds the run whatever the pace.
const MAX_MESSAGES: u64 = 20_000;
/// Publishing goes on this long before, between and after the handovers.
const STRETCH: Duration = Duration::from_millis(700);
/// How long the readers may take to see the last message once it is out.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// The longest pause the echo client may see: generous, the handover of
/// ten thousand connections in a debug build on a shared machine.
const ECHO_PAUSE_BOUND: Duration = Duration::from_secs(20);

fn channel(n: usize) -> String {
    format!("through-{}", n % CHANNELS)
}

/// The sequence number in a message `m<seq>`.
fn seq_of(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix('m')?
        .parse()
        .ok()
}

/// Subscribers read by one thread on a poller of its own: raw bytes split
/// into frames, each message checked against the next number expected.
struct Readers {
    poll: Poll,
    streams: Vec<mio::net::TcpStream>,
    pending: Vec<Vec<u8>>,
    /// The number each subscriber expects next.
    next: Vec<u64>,
    /// The publisher of each subscriber's channel.
    publisher: Vec<usize>,
    /// What went wrong on each subscriber, first fault only.
    faults: Vec<Option<String>>,
}

impl Readers {
    /// `streams` are subscribers `first`, `first + 1`, …
    fn new(streams: Vec<TcpStream>, first: usize) -> Readers {
        let poll = Poll::new().expect("a poller");
        let streams: Vec<mio::net::TcpStream> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                stream.set_nonblocking(true).unwrap();
                let mut stream = mio::net::TcpStream::from_std(stream);
                poll.registry()
                    .register(&mut stream, Token(i), Interest::READABLE)
                    .expect("register a subscriber");
                stream
            })
            .collect();
        let n = streams.len();
        Readers {
            poll,
            streams,
            pending: vec![Vec::new(); n],
            next: vec![1; n],
            publisher: (first..first + n)
                .map(|s| (s % CHANNELS) % PUBLISHERS)
                .collect(),
            faults: vec![None; n],
        }
    }

    /// Reads subscriber `i` until the socket is drained (edge-triggered).
    fn drain(&mut self, i: usize, chunk: &mut [u8]) {
        while self.faults[i].is_none() {
            match self.streams[i].read(chunk) {
                Ok(0) => self.faults[i] = Some("the connection was closed (EOF)".into()),
                Ok(n) => {
                    self.pending[i].extend_from_slice(&chunk[..n]);
                    self.frames(i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.faults[i] = Some(format!("read failed: {e}")),
            }
        }
    }

    fn frames(&mut self, i: usize) {
        let (frames, rest) = split_frames(&self.pending[i]);
        let used = self.pending[i].len() - rest;
        self.pending[i].drain(..used);
        for frame in frames {
            if self.faults[i].is_some() {
                return;
            }
            match (frame.opcode, seq_of(&frame.payload)) {
                (op::TEXT, Some(seq)) if seq == self.next[i] => self.next[i] += 1,
                (op::TEXT, Some(seq)) => {
                    self.faults[i] = Some(format!("got m{seq}, expected m{}", self.next[i]));
                }
                (op::CLOSE, _) => {
                    self.faults[i] = Some(format!(
                        "close frame {:?} {:?}",
                        frame.close_code(),
                        frame.close_reason()
                    ));
                }
                _ => self.faults[i] = Some(format!("unexpected frame {frame:?}")),
            }
        }
    }

    /// True once every subscriber has the last round of its channel's
    /// publisher, or has failed.
    fn done(&self, last: &[u64]) -> bool {
        (0..self.streams.len())
            .all(|i| self.faults[i].is_some() || self.next[i] > last[self.publisher[i]])
    }

    /// Reads until every subscriber has message `last` (once `last`, 0
    /// until known, is set), or `DRAIN_LIMIT` after that.
    fn run(mut self, last: &[AtomicU64; PUBLISHERS]) -> Readers {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut events = Events::with_capacity(1024);
        let mut known: Option<(Vec<u64>, Instant)> = None;
        loop {
            self.poll
                .poll(&mut events, Some(Duration::from_millis(50)))
                .or_else(|e| {
                    if e.kind() == ErrorKind::Interrupted {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .expect("poll the subscribers");
            for event in events.iter() {
                self.drain(event.token().0, &mut chunk);
            }
            if known.is_none() {
                let values: Vec<u64> = last.iter().map(|l| l.load(Ordering::SeqCst)).collect();
                if values.iter().all(|&v| v != 0) {
                    known = Some((values, Instant::now()));
                }
            }
            let Some((values, since)) = &known else {
                continue;
            };
            if self.done(values) {
                // A last look: anything more is a duplicate or worse.
                std::thread::sleep(Duration::from_millis(200));
                for i in 0..self.streams.len() {
                    self.drain(i, &mut chunk);
                }
                return self;
            }
            if since.elapsed() > DRAIN_LIMIT {
                for i in 0..self.streams.len() {
                    let value = values[self.publisher[i]];
                    if self.faults[i].is_none() && self.next[i] <= value {
                        self.faults[i] =
                            Some(format!("stuck before m{} (last is m{value})", self.next[i]));
                    }
                }
                return self;
            }
        }
    }
}

/// The echo client's round trips until `stop`: the longest one and how
/// many there were.
fn echo_probe(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (Duration, usize) {
    let mut client = RawClient::open(addr, ECHO_PATH);
    client.set_read_timeout(Duration::from_secs(60));
    let mut longest = Duration::ZERO;
    let mut count = 0;
    while !stop.load(Ordering::SeqCst) {
        let begin = Instant::now();
        client.send_text("ping");
        assert_eq!(client.expect_text(), "ping");
        longest = longest.max(begin.elapsed());
        count += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    (longest, count)
}

struct Published {
    /// The last round: every channel of this publisher got `m1` ..= `m<last>`.
    last: u64,
    /// Messages published.
    messages: u64,
    elapsed: Duration,
    fewest_recipients: u64,
    retries: Vec<String>,
}

/// Publisher `p`: whole rounds over its channels, paced to its share of
/// the rate, until `stop` (or [`MAX_MESSAGES`] in all); `count` counts the
/// messages of all publishers.
fn publish_until(
    addr: std::net::SocketAddr,
    p: usize,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Published {
    let mut publisher = Publisher::new(addr);
    let channels: Vec<String> = (p..CHANNELS).step_by(PUBLISHERS).map(channel).collect();
    let every = PUBLISH_EVERY * PUBLISHERS as u32;
    let begin = Instant::now();
    let mut fewest = u64::MAX;
    let mut round = 0;
    let mut messages = 0u32;
    while !stop.load(Ordering::SeqCst) && count.load(Ordering::SeqCst) < MAX_MESSAGES {
        round += 1;
        for name in &channels {
            messages += 1;
            let due = begin + every * messages;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            fewest = fewest.min(publisher.publish_count(name, &format!("m{round}")));
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
    Published {
        last: round,
        messages: u64::from(messages),
        elapsed: begin.elapsed(),
        fewest_recipients: fewest,
        retries: publisher.retries,
    }
}

/// Waits until the publisher has had `n` more messages answered.
fn wait_published(count: &AtomicU64, n: u64) {
    let target = count.load(Ordering::SeqCst) + n;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the publisher is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ten_thousand_subscribers_get_every_message_once_through_two_handovers() {
    let _alone = crate::alone();
    ensure_nofile(SUBSCRIBERS as u64 + 512);
    let dir = TempDir::new("ho-subscribers");
    let (mut daemon, addr) = start(&dir, "");
    let per_thread = SUBSCRIBERS / THREADS;
    let groups: Vec<Vec<TcpStream>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let n = t * per_thread + i;
                            let stream = connect_from(source_address(n, SOURCE_ADDRESSES), addr)
                                .unwrap_or_else(|e| panic!("subscriber {n}: connect: {e}"));
                            let mut client = RawClient::from_stream(stream);
                            client.handshake(&format!("{LIVE}/{}", channel(n)));
                            client.stream
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let last: Arc<[AtomicU64; PUBLISHERS]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    let readers: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, streams)| {
            let last = Arc::clone(&last);
            std::thread::spawn(move || Readers::new(streams, t * per_thread).run(&last))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || publish_until(addr, p, &stop, &count))
        })
        .collect();
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || echo_probe(addr, stop))
    };

    wait_published(&count, 1);
    std::thread::sleep(STRETCH);
    let mut first = upgrade(&daemon, daemon.pid());
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    wait_published(&count, 1);
    std::thread::sleep(STRETCH);

    // The new process serves new connections.
    let mut fresh = RawClient::open(addr, &format!("{LIVE}/{}", channel(0)));
    let frame = fresh.read_server_frame();
    assert!(seq_of(&frame.payload).is_some(), "{frame:?}");
    let mut echo_client = RawClient::open(addr, ECHO_PATH);
    echo_client.send_text("new process");
    assert_eq!(echo_client.expect_text(), "new process");
    drop((fresh, echo_client));

    let second = upgrade(&daemon, first.successor.pid);
    assert_eq!(
        first.successor.wait_exit(Duration::from_secs(30)),
        Some(0),
        "log:\n{}",
        daemon.log_text()
    );
    wait_published(&count, 1);
    std::thread::sleep(STRETCH);

    stop.store(true, Ordering::SeqCst);
    let published: Vec<Published> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    let (longest_echo, echoes) = echo.join().expect("echo client");
    for (slot, p) in last.iter().zip(&published) {
        slot.store(p.last, Ordering::SeqCst);
    }
    let messages: u64 = published.iter().map(|p| p.messages).sum();
    let elapsed = published
        .iter()
        .map(|p| p.elapsed)
        .max()
        .unwrap_or_default();
    let rate = messages as f64 / elapsed.as_secs_f64();
    let retries: Vec<&String> = published.iter().flat_map(|p| &p.retries).collect();
    let fewest = published
        .iter()
        .map(|p| p.fewest_recipients)
        .min()
        .unwrap_or(0);
    let mut faults = Vec::new();
    for reader in readers {
        let reader = reader.join().expect("reader");
        faults.extend(
            reader
                .faults
                .into_iter()
                .enumerate()
                .filter_map(|(i, f)| f.map(|f| (i, f))),
        );
    }
    eprintln!(
        "{SUBSCRIBERS} subscribers, {} messages in {:?} ({:.0}/s), retries {:?}; \
         first handover: {} / {} ({:?} from the signal to the new process's line); \
         second: {} / {} ({:?}); echo: {echoes} round trips, longest {longest_echo:?}",
        messages,
        elapsed,
        rate,
        retries,
        first.handed,
        first.taken,
        first.elapsed,
        second.handed,
        second.taken,
        second.elapsed,
    );
    assert!(
        faults.is_empty(),
        "{} subscribers failed; the first: {:?}",
        faults.len(),
        &faults[..faults.len().min(10)]
    );
    assert!(
        fewest >= (SUBSCRIBERS / CHANNELS) as u64,
        "a publish reached only {fewest} subscribers"
    );
    assert!(
        rate >= MIN_RATE,
        "the publishers reached {rate:.0} messages/s only"
    );
    assert!(
        first.connections_taken() > SUBSCRIBERS as u64,
        "{}",
        first.taken
    );
    assert!(
        second.connections_taken() > SUBSCRIBERS as u64,
        "{}",
        second.taken
    );
    assert!(
        longest_echo <= ECHO_PAUSE_BOUND,
        "the echo client paused {longest_echo:?}"
    );
    let mut last_successor = second.successor;
    last_successor.signal(Signal::TERM);
    assert_eq!(last_successor.wait_exit(Duration::from_secs(30)), Some(0));
}
