//! The bus against a real `redis-server` (started by each test on a free
//! loopback port, persistence off): the history scripts, sequencing with
//! gap reads, and coalesced recovery reads, driven through blocking
//! loopback sockets by a small pump. No server loop: what reaches the
//! WebSocket clients is `tests/cluster`'s business.
//!
//! Every wait is bounded (`WITHIN`); the clock is the wall clock in
//! milliseconds since the driver started, as the bus expects of its caller.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use crate::config::RedisUrl;

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;
use redis_server::Redis;

/// The longest any wait here may take.
const WITHIN: Duration = Duration::from_secs(10);

/// One node's bus on two blocking sockets.
struct Node {
    bus: Bus<u32, u32>,
    addr: std::net::SocketAddr,
    links: [Option<TcpStream>; 2],
    start: Instant,
    events: Vec<Event<u32, u32>>,
    wanted: Vec<String>,
}

fn index(role: Role) -> usize {
    match role {
        Role::Commands => 0,
        Role::Subscriptions => 1,
    }
}

impl Node {
    fn start(redis: &Redis, history: Option<(usize, Duration)>, wanted: &[&str]) -> Node {
        let config = ClusterConfig {
            redis_url: RedisUrl::parse(&redis.url()).expect("url"),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(50),
            ..ClusterConfig::default()
        };
        static NODES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let seed = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bus = Bus::new(&config, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        bus.set_history(history.map(|(size, ttl)| HistoryPolicy { size, ttl }));
        let mut node = Node {
            bus,
            addr: redis.addr,
            links: [None, None],
            start: Instant::now(),
            events: Vec::new(),
            wanted: wanted.iter().map(|&w| w.to_owned()).collect(),
        };
        node.pump_until(|n| n.bus.cmd.is_up() && n.bus.sub.is_up());
        node.pump_until(|n| n.bus.subscribed.values().all(|&c| c));
        node
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn connect(&mut self, role: Role) {
        let now = self.now();
        self.bus.on_connecting(role, now);
        let stream = TcpStream::connect(self.addr).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        self.links[index(role)] = Some(stream);
        let wanted = self.wanted.clone();
        self.bus
            .on_connected(role, now, wanted.iter().map(String::as_str));
    }

    /// One turn: connect what is due, write, read, timers, reads to send.
    fn turn(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for role in [Role::Subscriptions, Role::Commands] {
            if !self.bus.link(role).is_connected() {
                self.links[index(role)] = None;
                if self.bus.due_to_connect(role, self.now()) {
                    self.connect(role);
                }
            }
        }
        for role in [Role::Subscriptions, Role::Commands] {
            let Some(stream) = self.links[index(role)].as_mut() else {
                continue;
            };
            let out = self.bus.link(role).output().to_vec();
            let mut failure = stream.write_all(&out).err().map(|e| e.to_string());
            self.bus.link_mut(role).consume(out.len());
            while failure.is_none() {
                match stream.read(&mut buf) {
                    Ok(0) => failure = Some("closed".to_owned()),
                    Ok(n) => {
                        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(0);
                        self.bus.on_input(role, &buf[..n], now, &mut self.events);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            if let Some(reason) = failure {
                let now = self.now();
                self.bus.on_closed(role, now, reason);
            }
        }
        let now = self.now();
        if self.bus.next_deadline().is_some_and(|t| t <= now) {
            self.bus.on_timer(now, &mut self.events);
        }
        let wanted = self.wanted.clone();
        for name in &wanted {
            self.bus.channel_changed(name);
        }
        self.bus
            .flush_subscriptions(|n| wanted.iter().any(|w| w == n));
        self.bus.issue_reads(now, &mut self.events);
    }

    fn pump_until(&mut self, mut done: impl FnMut(&mut Node) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < WITHIN, "not done within {WITHIN:?}");
            self.turn();
        }
    }

    /// Publishes every one of `texts` to `channel` pipelined, and waits
    /// until all are accepted.
    fn publish_all(&mut self, channel: &str, texts: impl Iterator<Item = String>) {
        let mut sent = 0;
        for text in texts {
            let mut envelope = Vec::new();
            Envelope {
                binary: false,
                origin: self.bus.node_id,
                position: None,
                exclude: None,
                payload: text.as_bytes(),
            }
            .write_unplaced(&mut envelope);
            let now = self.now();
            self.bus
                .publish(channel, &envelope, Some(7), now)
                .expect("publish sent");
            sent += 1;
        }
        let mut answered = 0;
        self.pump_until(|n| {
            n.events.retain(|e| match e {
                Event::Answer { outcome, .. } => {
                    assert!(outcome.is_ok(), "{outcome:?}");
                    answered += 1;
                    false
                }
                _ => true,
            });
            answered == sent
        });
    }

    /// Publishes `text` to `channel` and waits for its answer.
    fn publish(&mut self, channel: &str, text: &str) -> Published {
        let mut envelope = Vec::new();
        let e = Envelope {
            binary: false,
            origin: self.bus.node_id,
            position: None,
            exclude: None,
            payload: text.as_bytes(),
        };
        if self.bus.keeps_history() {
            e.write_unplaced(&mut envelope);
        } else {
            e.write(&mut envelope);
        }
        let now = self.now();
        self.bus
            .publish(channel, &envelope, Some(7), now)
            .expect("publish sent");
        let mut answer = None;
        self.pump_until(|n| {
            n.events.retain(|e| match e {
                Event::Answer { outcome, .. } => {
                    answer = Some(*outcome);
                    false
                }
                _ => true,
            });
            answer.is_some()
        });
        answer.and_then(Result::ok).expect("publish accepted")
    }

    /// The messages delivered so far on `channel`: (offset, text).
    fn take_messages(&mut self, channel: &str) -> Vec<(Option<u64>, String)> {
        let mut got = Vec::new();
        self.events.retain(|e| match e {
            Event::Message {
                channel: c,
                envelope,
            } if c == channel => {
                let e = Envelope::parse(envelope).expect("a valid envelope");
                got.push((
                    e.position.map(|p| p.offset),
                    String::from_utf8_lossy(e.payload).into_owned(),
                ));
                false
            }
            _ => true,
        });
        got
    }

    fn wait_messages(&mut self, channel: &str, count: usize) -> Vec<(Option<u64>, String)> {
        let mut got = Vec::new();
        self.pump_until(|n| {
            got.extend(n.take_messages(channel));
            got.len() >= count
        });
        got
    }

    /// Recovery outcomes so far, by requester.
    fn take_recoveries(&mut self) -> Vec<(u32, Recovery)> {
        let mut got = Vec::new();
        let events = std::mem::take(&mut self.events);
        for e in events {
            match e {
                Event::Recovered { who, outcome } => got.push((who, outcome)),
                other => self.events.push(other),
            }
        }
        got
    }

    fn recover(&mut self, channel: &str, who: u32, position: Position, max_replay: usize) {
        let now = self.now();
        let ask = Ask {
            position,
            max_replay,
        };
        self.bus.recover(channel, who, ask, now, &mut self.events);
    }

    fn recover_one(&mut self, channel: &str, position: Position, max_replay: usize) -> Recovery {
        self.recover(channel, 1, position, max_replay);
        let mut got = Vec::new();
        self.pump_until(|n| {
            got.extend(n.take_recoveries());
            !got.is_empty()
        });
        got.pop().expect("one outcome").1
    }
}

fn texts(replay: &Recovery) -> Vec<String> {
    match replay {
        Recovery::Recovered { replay, .. } => replay
            .entries()
            .iter()
            .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
            .collect(),
        Recovery::NotRecovered { reason, .. } => panic!("not recovered: {reason:?}"),
    }
}

fn first_line(redis: &Redis, args: &[&str]) -> String {
    redis.try_command(args).expect("redis answers")
}

#[test]
fn publishes_get_consecutive_positions_across_nodes_and_the_stream_is_capped_and_expires() {
    let redis = Redis::start();
    let history = Some((5, Duration::from_millis(1500)));
    let mut a = Node::start(&redis, history, &["news"]);
    let mut b = Node::start(&redis, history, &[]);
    let mut positions = Vec::new();
    for i in 0..7 {
        let node = if i % 2 == 0 { &mut a } else { &mut b };
        positions.push(
            node.publish("news", &format!("m{i}"))
                .position
                .expect("a position"),
        );
    }
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6, 7]);
    assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
    let got = a.wait_messages("news", 7);
    let want: Vec<(Option<u64>, String)> = (0..7).map(|i| (Some(i + 1), format!("m{i}"))).collect();
    assert_eq!(got, want);
    assert_eq!(first_line(&redis, &["XLEN", "wshub:history:news"]), ":5");
    let stream_ttl: i64 = first_line(&redis, &["PTTL", "wshub:history:news"])[1..]
        .parse()
        .expect("a TTL");
    assert!(stream_ttl > 0 && stream_ttl <= 1500, "{stream_ttl}");
    let meta_ttl: i64 = first_line(&redis, &["PTTL", "wshub:meta:news"])[1..]
        .parse()
        .expect("a TTL");
    assert!(meta_ttl > 86_000_000, "a day: {meta_ttl}");
    // The stream expires; the epoch and offset stay.
    let start = Instant::now();
    while first_line(&redis, &["EXISTS", "wshub:history:news"]) != ":0" {
        assert!(start.elapsed() < WITHIN);
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = a.publish("news", "after").position.expect("a position");
    assert_eq!((next.epoch, next.offset), (positions[0].epoch, 8));
    // Without history: no position, nothing kept.
    let mut plain = Node::start(&redis, None, &[]);
    assert_eq!(plain.publish("other", "x").position, None);
    assert_eq!(first_line(&redis, &["EXISTS", "wshub:history:other"]), ":0");
}

#[test]
fn a_wiped_redis_starts_a_new_epoch_and_nodes_follow_it() {
    let redis = Redis::start();
    let history = Some((100, Duration::from_secs(60)));
    let mut a = Node::start(&redis, history, &["feed"]);
    let before = a.publish("feed", "one").position.expect("a position");
    assert_eq!(first_line(&redis, &["FLUSHALL"]), "+OK");
    let after = a.publish("feed", "two").position.expect("a position");
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
    let got = a.wait_messages("feed", 2);
    assert_eq!(
        got,
        [(Some(1), "one".to_owned()), (Some(1), "two".to_owned())]
    );
}

/// An envelope as any Redis client could publish it (origin "00000000").
fn raw_envelope(epoch: Epoch, offset: u64, text: &str) -> String {
    format!("\u{2}\u{0}00000000{epoch}{offset:020}{text}")
}

#[test]
fn a_node_that_misses_messages_fills_the_gap_in_order_exactly_once() {
    let redis = Redis::start();
    let history = Some((1_000, Duration::from_secs(60)));
    let mut a = Node::start(&redis, history, &["feed"]);
    let mut b = Node::start(&redis, history, &[]);
    for i in 1..=3 {
        b.publish("feed", &format!("m{i}"));
    }
    assert_eq!(a.wait_messages("feed", 3).len(), 3);
    // Cut a's subscription link; publishing goes on meanwhile.
    assert_eq!(
        first_line(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]),
        ":1"
    );
    let mut epoch = None;
    for i in 4..=10 {
        epoch = b
            .publish("feed", &format!("m{i}"))
            .position
            .map(|p| p.epoch);
    }
    // a notices, reconnects, is confirmed, and reads what it missed.
    let got = a.wait_messages("feed", 7);
    let want: Vec<(Option<u64>, String)> = (4..=10).map(|i| (Some(i), format!("m{i}"))).collect();
    assert_eq!(got, want);
    assert_eq!(a.bus.stats.sequence.filled, 7);
    b.publish("feed", "m11");
    assert_eq!(a.wait_messages("feed", 1), [(Some(11), "m11".to_owned())]);

    // A repeated offset is dropped; a jump the stream cannot fill is
    // delivered with the loss counted, in order.
    let epoch = epoch.expect("an epoch");
    let repeat = raw_envelope(epoch, 11, "again");
    first_line(&redis, &["PUBLISH", "wshub:feed", &repeat]);
    let jump = raw_envelope(epoch, 13, "m13");
    first_line(&redis, &["PUBLISH", "wshub:feed", &jump]);
    assert_eq!(a.wait_messages("feed", 1), [(Some(13), "m13".to_owned())]);
    assert_eq!(a.bus.stats.sequence.repeats, 1);
    assert_eq!(a.bus.stats.sequence.lost, 1);
    a.turn();
    assert!(a.take_messages("feed").is_empty(), "each once");
}

#[test]
fn recovery_reads_give_exact_entries_or_say_why_not() {
    let redis = Redis::start();
    let history = Some((5, Duration::from_millis(800)));
    let mut a = Node::start(&redis, history, &["r"]);
    let mut top = None;
    for i in 1..=10 {
        top = a.publish("r", &format!("m{i}")).position;
    }
    let top = top.expect("a position");
    let at = |offset| Position {
        epoch: top.epoch,
        offset,
    };
    let got = a.recover_one("r", at(7), 100);
    assert_eq!(texts(&got), ["m8", "m9", "m10"]);
    assert!(matches!(got, Recovery::Recovered { top: t, .. } if t == top));
    assert!(texts(&a.recover_one("r", at(10), 100)).is_empty());
    let refused = |reason| Recovery::NotRecovered {
        reason,
        current: Some(top),
    };
    assert_eq!(a.recover_one("r", at(2), 100), refused(Reason::Evicted));
    assert_eq!(a.recover_one("r", at(7), 2), refused(Reason::TooMany));
    let elsewhere = Position {
        epoch: Epoch::new(top.epoch.get() ^ 1),
        offset: 7,
    };
    assert_eq!(a.recover_one("r", elsewhere, 100), refused(Reason::Epoch));
    assert_eq!(a.recover_one("r", at(11), 100), refused(Reason::Epoch));
    // Older than history_ttl: expired, while the position is still known.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(a.recover_one("r", at(8), 100), refused(Reason::Expired));
    assert!(texts(&a.recover_one("r", at(10), 100)).is_empty());
    // A channel Redis knows nothing of gets an epoch at offset 0.
    a.wanted.push("fresh".to_owned());
    a.pump_until(|n| n.bus.subscribed.get("fresh") == Some(&true));
    let Recovery::NotRecovered {
        reason: Reason::Epoch,
        current: Some(current),
    } = a.recover_one("fresh", at(3), 100)
    else {
        panic!("an unknown epoch is refused with the current position");
    };
    assert_eq!(current.offset, 0);
    assert_eq!(
        a.publish("fresh", "first").position,
        Some(Position {
            epoch: current.epoch,
            offset: 1
        })
    );
    assert_eq!(a.bus.stats.recoveries_unavailable, 0);
}

#[test]
fn five_thousand_recoveries_coalesce_into_a_few_reads() {
    const CLIENTS: u32 = 5_000;
    const PUBLISHED: u64 = 150;
    let redis = Redis::start();
    let history = Some((1_000, Duration::from_secs(60)));
    let mut a = Node::start(&redis, history, &["mass"]);
    let mut top = None;
    for i in 1..=PUBLISHED {
        top = a.publish("mass", &format!("m{i}")).position;
    }
    let top = top.expect("a position");
    a.take_messages("mass");
    let started = Instant::now();
    // In ten waves, as reconnecting clients arrive over several turns;
    // each resumes from one of 50 recent positions.
    for wave in 0..10 {
        for i in 0..CLIENTS / 10 {
            let who = wave * (CLIENTS / 10) + i;
            let offset = PUBLISHED - 100 + u64::from(who % 50);
            let position = Position {
                epoch: top.epoch,
                offset,
            };
            a.recover("mass", who, position, 1_000);
        }
        a.turn();
    }
    let mut got = Vec::new();
    a.pump_until(|n| {
        got.extend(n.take_recoveries());
        got.len() == CLIENTS as usize
    });
    let elapsed = started.elapsed();
    for (who, outcome) in &got {
        let offset = PUBLISHED - 100 + u64::from(who % 50);
        let want: Vec<String> = (offset + 1..=PUBLISHED).map(|i| format!("m{i}")).collect();
        assert_eq!(texts(outcome), want, "client {who}");
    }
    let reads = a.bus.stats.recovery_reads;
    eprintln!("{CLIENTS} recoveries served by {reads} reads in {elapsed:?}");
    assert_eq!(a.bus.stats.recovery_requests, u64::from(CLIENTS));
    assert!(reads <= 10, "{reads} reads");
}

#[test]
fn a_gap_longer_than_one_read_is_read_in_parts() {
    const MISSED: u64 = MAX_GAP_READ * 2 + 100;
    let redis = Redis::start();
    let history = Some((5_000, Duration::from_secs(60)));
    let mut a = Node::start(&redis, history, &["long"]);
    let mut b = Node::start(&redis, history, &[]);
    b.publish("long", "m1");
    assert_eq!(a.wait_messages("long", 1).len(), 1);
    assert_eq!(
        first_line(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]),
        ":1"
    );
    b.publish_all("long", (2..2 + MISSED).map(|i| format!("m{i}")));
    let got = a.wait_messages("long", usize::try_from(MISSED).expect("fits"));
    let want: Vec<(Option<u64>, String)> = (2..2 + MISSED)
        .map(|i| (Some(i), format!("m{i}")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(a.bus.stats.gap_reads, 3);
    assert_eq!(a.bus.stats.sequence.lost, 0);
}
