//! Recovery across nodes: a client that was on one node comes back on
//! another with its position and gets exactly what it missed (read from
//! Redis, joined with the node's own live feed), then live messages; every
//! case it cannot is told explicitly, a paused Redis within a stated bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wshub::config::Config;

use super::support::client::{RawClient, assert_switching_protocols, fresh_key, upgrade_request};
use super::support::data::eventually;
use super::support::http::metric;
use super::support::positions::{At, json, message, publish_text};
use super::support::redis::Redis;
use super::support::server::{LIVE_PATH, TestServer};
use super::{COMMAND_TIMEOUT, SLACK, alone, node_config, wait_healthy, wait_numsub};

/// The bus's margin for a reply after `command_timeout` (`REPLY_MARGIN_MS`).
const REPLY_MARGIN: Duration = Duration::from_millis(250);

/// A node whose `/live` route keeps `size` messages per channel and
/// replays at most `max_replay`.
fn node(redis: &Redis, size: usize, max_replay: usize) -> TestServer {
    node_with(redis, size, max_replay, |_| {})
}

fn node_with(
    redis: &Redis,
    size: usize,
    max_replay: usize,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    let mut config: Config = node_config(redis);
    adjust(&mut config);
    for route in &mut config.routes {
        if route.path == LIVE_PATH {
            route.history_size = size;
            route.max_replay = max_replay;
        }
    }
    let node = TestServer::with_config(config);
    wait_healthy(&node, Duration::from_secs(5));
    node
}

/// The path that subscribes to `channel` with metadata, recovering from
/// `at`.
fn recovering(at: &At, channel: &str) -> String {
    format!("{LIVE_PATH}/{channel}?meta=1&{}", at.query(channel))
}

/// Publishes a text message; its position from the answer.
fn publish(publisher: &mut RawClient, channel: &str, body: &str) -> At {
    publish_text(publisher, channel, body).expect("a position")
}

/// Redis, two nodes keeping 1,000 messages (and replaying as many), and a
/// publisher connected to node `a`.
struct Pair {
    redis: Redis,
    a: TestServer,
    b: TestServer,
    via_a: RawClient,
}

impl Pair {
    fn start() -> Pair {
        let redis = Redis::start();
        let a = node(&redis, 1_000, 1_000);
        let b = node(&redis, 1_000, 1_000);
        let via_a = RawClient::connect(a.addr);
        Pair { redis, a, b, via_a }
    }
}

/// A metadata client on `channel` at `node` that has seen message `upto`
/// (published through `publisher` with bodies `m1`, `m2`, ...): its last
/// position.
fn follow(node: &TestServer, redis: &Redis, publisher: &mut RawClient, upto: u64) -> At {
    let mut client = RawClient::open(node.addr, &format!("{LIVE_PATH}/feed?meta=1"));
    let subscribed = json(&mut client);
    assert_eq!(subscribed["subscribed"], true);
    wait_numsub(redis, "feed", 1);
    let mut last = At::of(&subscribed);
    for i in 1..=upto {
        let at = publish(publisher, "feed", &format!("m{i}"));
        // Told Redis's position as it subscribed: the messages follow it.
        assert_eq!((&at.epoch, at.offset), (&last.epoch, last.offset + 1));
        let (got, text) = message(&mut client);
        assert_eq!((&got, text), (&at, format!("m{i}")));
        last = got;
    }
    last
}

/// Reads a recovery answer that must say recovered with `replayed`
/// messages, then those messages: offsets after `from`, bodies `m<offset>`.
fn expect_replay(client: &mut RawClient, from: &At, replayed: u64) {
    let answer = json(client);
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(At::of(&answer), *from);
    assert_eq!(answer["replayed"], replayed, "{answer}");
    for offset in from.offset + 1..=from.offset + replayed {
        let (got, text) = message(client);
        assert_eq!(got.epoch, from.epoch);
        assert_eq!((got.offset, text), (offset, format!("m{offset}")));
    }
}

/// Reads a recovery answer that must say recovered, then every message
/// after `from` up to offset `last`, in order, whether replayed or live
/// (a node may not have delivered the newest ones yet when it answers).
fn expect_through(client: &mut RawClient, from: &At, last: u64) {
    let answer = json(client);
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(At::of(&answer), *from);
    for offset in from.offset + 1..=last {
        let (got, text) = message(client);
        assert_eq!(got.epoch, from.epoch);
        assert_eq!((got.offset, text), (offset, format!("m{offset}")));
    }
}

#[test]
fn a_client_recovers_on_another_node_what_was_published_through_it_then_live() {
    let _alone = alone();
    let Pair {
        redis,
        a,
        b,
        mut via_a,
    } = Pair::start();
    let mut via_b = RawClient::connect(b.addr);
    let seen = follow(&a, &redis, &mut via_a, 10);
    assert_eq!(seen.offset, 10);
    for i in 11..=110 {
        assert_eq!(publish(&mut via_b, "feed", &format!("m{i}")).offset, i);
    }

    // Node B has nobody on the channel: the read from Redis serves it.
    let mut client = RawClient::open(b.addr, &recovering(&seen, "feed"));
    expect_replay(&mut client, &seen, 100);
    assert_eq!(publish(&mut via_a, "feed", "m111").offset, 111);
    assert_eq!(message(&mut client).0.offset, 111);
    client.expect_silence(Duration::from_millis(200));
    assert_eq!(metric(b.addr, "wshub_cluster_recovery_reads_total"), 1);
    assert_eq!(metric(b.addr, "wshub_recovered_messages_total"), 100);

    // Node B now has a subscriber and its log from 111 on: a client from
    // 5 needs Redis for 6..111 (the read's top is 111).
    let at = |offset| At {
        epoch: seen.epoch.clone(),
        offset,
    };
    let mut early = RawClient::open(b.addr, &recovering(&at(5), "feed"));
    expect_replay(&mut early, &at(5), 106);
    assert_eq!(metric(b.addr, "wshub_cluster_recovery_reads_total"), 2);
    // A client from 110 is served by B's log alone.
    let mut late = RawClient::open(b.addr, &recovering(&at(110), "feed"));
    expect_replay(&mut late, &at(110), 1);
    assert_eq!(metric(b.addr, "wshub_cluster_recovery_reads_total"), 2);
    assert_eq!(publish(&mut via_b, "feed", "m112").offset, 112);
    for c in [&mut client, &mut early, &mut late] {
        assert_eq!(message(c), (at(112), "m112".to_owned()));
    }
}

/// A metadata client subscribing without a position on a node that has
/// nothing of the channel yet is told Redis's position, from which it can
/// recover anywhere.
#[test]
fn a_subscriber_on_a_fresh_node_is_told_the_cluster_position() {
    let _alone = alone();
    let Pair {
        redis,
        a,
        b,
        mut via_a,
    } = Pair::start();
    let seen = follow(&a, &redis, &mut via_a, 3);
    let mut client = RawClient::open(b.addr, &format!("{LIVE_PATH}/feed?meta=1"));
    let told = json(&mut client);
    assert_eq!(told["subscribed"], true, "{told}");
    assert_eq!(At::of(&told), seen);
    drop(client);
    for i in 4..=5 {
        publish(&mut via_a, "feed", &format!("m{i}"));
    }
    for n in [&a, &b] {
        let mut client = RawClient::open(n.addr, &recovering(&seen, "feed"));
        expect_through(&mut client, &seen, 5);
    }
}

/// Clients that drop their connection every few messages and come back on
/// the other node with their position, while a publisher alternates
/// between the nodes without pausing: each sees every offset from its
/// first to the last exactly once, in order. Node B's own log is kept
/// short (`history_max_bytes`), so many of its recoveries join Redis's
/// entries with its live feed.
#[test]
fn no_gap_and_no_duplicate_while_clients_hop_between_nodes_under_publishing() {
    const CLIENTS: usize = 6;
    const MESSAGES: u64 = 1_500;
    let _alone = alone();
    let redis = Redis::start();
    let a = node(&redis, MESSAGES as usize, MESSAGES as usize);
    let b = node_with(&redis, MESSAGES as usize, MESSAGES as usize, |c| {
        c.history_max_bytes = 16;
    });
    let addrs = [a.addr, b.addr];
    let mut via_a = RawClient::connect(a.addr);
    let start = follow(&a, &redis, &mut via_a, 1);
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut publishers = addrs.map(RawClient::connect);
            for i in 2..=MESSAGES {
                let at = publish(&mut publishers[i as usize % 2], "feed", &format!("m{i}"));
                assert_eq!(at.offset, i);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let hops: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let start = start.clone();
                s.spawn(move || {
                    let mut at = start;
                    let mut hops = 0u64;
                    loop {
                        let addr = addrs[(c + hops as usize) % 2];
                        let mut client = RawClient::open(addr, &recovering(&at, "feed"));
                        let answer = json(&mut client);
                        assert_eq!(answer["recovered"], true, "client {c}: {answer}");
                        assert_eq!(At::of(&answer), at);
                        let replayed = answer["replayed"].as_u64().expect("a count");
                        let take = replayed + 1 + (c as u64 + hops) % 5;
                        for _ in 0..take {
                            if at.offset == MESSAGES {
                                return hops;
                            }
                            let (got, text) = message(&mut client);
                            assert_eq!(got.epoch, at.epoch);
                            assert_eq!(got.offset, at.offset + 1, "client {c}: a gap or a repeat");
                            assert_eq!(text, format!("m{}", got.offset));
                            at = got;
                        }
                        hops += 1;
                        // Away long enough to miss more than B's own log.
                        drop(client);
                        std::thread::sleep(Duration::from_millis(2 + c as u64));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("client"))
            .collect()
    });
    publisher.join().expect("publisher");
    assert!(done.load(Ordering::SeqCst));
    let asked = metric(b.addr, "wshub_cluster_recovery_requests_total");
    let reads = metric(b.addr, "wshub_cluster_recovery_reads_total");
    eprintln!(
        "hops per client {hops:?}; node B asked Redis for {asked} recoveries in {reads} reads"
    );
    assert!(hops.iter().all(|&h| h >= 3), "{hops:?}");
    assert!(asked >= 10, "recoveries on B need Redis: {asked}");
}

#[test]
fn too_many_evicted_and_a_new_epoch_are_told_across_nodes() {
    let _alone = alone();
    let mut redis = Redis::start();
    let a = node(&redis, 1_000, 1_000);
    let b = node(&redis, 1_000, 10);
    let mut via_a = RawClient::connect(a.addr);
    let seen = follow(&a, &redis, &mut via_a, 1);
    for i in 2..=21 {
        publish(&mut via_a, "feed", &format!("m{i}"));
    }
    let at = |offset| At {
        epoch: seen.epoch.clone(),
        offset,
    };
    let refused = |path: &str, reason: &str| {
        let mut client = RawClient::open(b.addr, path);
        let answer = json(&mut client);
        assert_eq!(answer["recovered"], false, "{answer}");
        assert_eq!(answer["reason"], reason, "{answer}");
        (client, At::of(&answer))
    };

    // B replays at most 10; 20 were missed.
    let (_too_many, current) = refused(&recovering(&at(1), "feed"), "too_many");
    assert_eq!(current, at(21));
    // The stream keeps only the last 5 (as if trimmed by history_size).
    assert_eq!(
        redis
            .try_command(&["XTRIM", "wshub:history:feed", "MAXLEN", "5"])
            .as_deref(),
        Some(":16")
    );
    let (_evicted, current) = refused(&recovering(&at(15), "feed"), "evicted");
    assert_eq!(current, at(21));

    // Redis restarted without its data: a new epoch.
    redis.kill();
    redis.restart();
    for n in [&a, &b] {
        wait_healthy(n, Duration::from_secs(5));
    }
    wait_numsub(&redis, "feed", 2);
    let fresh = publish(&mut via_a, "feed", "fresh");
    assert_ne!(fresh.epoch, seen.epoch);
    assert_eq!(fresh.offset, 1);
    let (_epoch, current) = refused(&recovering(&at(21), "feed"), "epoch");
    assert_eq!(current, fresh);
}

/// A recovery asked while Redis is paused is answered `unavailable` within
/// `command_timeout` plus the reply margin; after SIGCONT the client
/// carries on live.
#[test]
fn a_recovery_during_a_paused_redis_is_unavailable_in_bounded_time_then_live() {
    let _alone = alone();
    let Pair {
        redis,
        a,
        b,
        mut via_a,
    } = Pair::start();
    let seen = follow(&a, &redis, &mut via_a, 3);

    redis.pause();
    let started = Instant::now();
    let mut client = RawClient::open(b.addr, &recovering(&seen, "feed"));
    let answer = json(&mut client);
    let took = started.elapsed();
    redis.resume();
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["reason"], "unavailable", "{answer}");
    let bound = COMMAND_TIMEOUT + REPLY_MARGIN + SLACK;
    eprintln!("unavailable after {took:?} (bound {bound:?})");
    assert!(took <= bound, "{took:?} > {bound:?}");

    for n in [&a, &b] {
        wait_healthy(n, Duration::from_secs(5));
    }
    wait_numsub(&redis, "feed", 2);
    let live = publish(&mut via_a, "feed", "m4");
    assert_eq!(live.offset, 4);
    assert_eq!(message(&mut client), (live, "m4".to_owned()));
    assert!(metric(b.addr, "wshub_cluster_recoveries_unavailable_total") >= 1);
    assert_eq!(metric(b.addr, "wshub_cluster_recoveries_held"), 0);
}

/// Clients that leave while their recovery waits for a paused Redis take
/// their holds with them: nothing is kept, and nobody is answered.
#[test]
fn closed_connections_drop_their_recoveries_in_progress() {
    let _alone = alone();
    let Pair {
        redis,
        a,
        b,
        mut via_a,
    } = Pair::start();
    let seen = follow(&a, &redis, &mut via_a, 1);
    redis.pause();
    let clients: Vec<RawClient> = (0..5)
        .map(|_| RawClient::open(b.addr, &recovering(&seen, "feed")))
        .collect();
    let held = || metric(b.addr, "wshub_cluster_recoveries_held");
    assert!(
        eventually(Duration::from_millis(200), || held() == 5),
        "{}",
        held()
    );
    drop(clients);
    assert!(
        eventually(Duration::from_millis(200), || held() == 0),
        "{}",
        held()
    );
    // Past the bus's deadline: its `unavailable` outcomes find nobody.
    std::thread::sleep(COMMAND_TIMEOUT + REPLY_MARGIN + Duration::from_millis(100));
    redis.resume();
    assert!(metric(b.addr, "wshub_cluster_recoveries_unavailable_total") >= 5);
    assert_eq!(
        metric(
            b.addr,
            "wshub_recoveries_refused_total{reason=\"unavailable\"}"
        ),
        0
    );
    assert_eq!(held(), 0);
}

/// 1,000 clients come back on a node that had nobody on the channel, all
/// at once: a handful of coalesced reads serve them, and each gets exactly
/// the 100 it missed.
#[test]
fn a_thousand_clients_recovering_at_once_are_served_by_a_few_reads() {
    const CLIENTS: usize = 1_000;
    let _alone = alone();
    let Pair {
        redis,
        a,
        b,
        mut via_a,
    } = Pair::start();
    let seen = follow(&a, &redis, &mut via_a, 1);
    for i in 2..=101 {
        publish(&mut via_a, "feed", &format!("m{i}"));
    }
    // Every upgrade request is sent before any response is read.
    let started = Instant::now();
    let path = recovering(&seen, "feed");
    let host = b.addr.to_string();
    let mut clients: Vec<(RawClient, String)> = (0..CLIENTS)
        .map(|_| {
            let mut client = RawClient::connect(b.addr);
            let key = fresh_key();
            client.send(upgrade_request(&path, &host, &key).as_bytes());
            (client, key)
        })
        .collect();
    for (client, key) in &mut clients {
        let response = client.read_http_response();
        assert_switching_protocols(&response, key);
        expect_replay(client, &seen, 100);
    }
    let mut clients: Vec<RawClient> = clients.into_iter().map(|(c, _)| c).collect();
    let took = started.elapsed();
    let reads = metric(b.addr, "wshub_cluster_recovery_reads_total");
    eprintln!("{CLIENTS} recoveries of 100 messages in {took:?}, {reads} reads from redis");
    assert_eq!(
        metric(b.addr, "wshub_cluster_recovery_requests_total"),
        CLIENTS as u64
    );
    assert!(reads <= 20, "{reads} reads");
    assert_eq!(
        metric(b.addr, "wshub_recovered_messages_total"),
        100 * CLIENTS as u64
    );
    let live = publish(&mut via_a, "feed", "m102");
    for client in &mut clients {
        assert_eq!(message(client), (live.clone(), "m102".to_owned()));
    }
}

/// A channel kept only by its history that loses it to `history_max_bytes`
/// (another channel's messages evict it) is freed, and the node drops its
/// Redis subscription, as it does when that history expires.
#[test]
fn a_channel_freed_by_eviction_leaves_redis() {
    let _alone = alone();
    let redis = Redis::start();
    // Each kept frame is a few bytes: 40 hold a handful of messages.
    let node = node_with(&redis, 100, 100, |c| c.history_max_bytes = 40);
    let mut publisher = RawClient::connect(node.addr);
    let client = RawClient::open(node.addr, &format!("{LIVE_PATH}/old?meta=1"));
    wait_numsub(&redis, "old", 1);
    publish(&mut publisher, "old", "kept");
    drop(client);
    // Kept by its history alone: still subscribed in Redis.
    assert!(eventually(Duration::from_secs(5), || {
        metric(node.addr, "wshub_subscriptions") == 0
    }));
    assert_eq!(metric(node.addr, "wshub_channels"), 1);
    assert_eq!(redis.numsub("wshub:old"), 1);
    let _new = RawClient::open(node.addr, &format!("{LIVE_PATH}/new?meta=1"));
    wait_numsub(&redis, "new", 1);
    for i in 0..20 {
        publish(&mut publisher, "new", &format!("m{i}"));
    }
    wait_numsub(&redis, "old", 0);
}
