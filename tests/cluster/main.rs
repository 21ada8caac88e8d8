//! Cluster nodes on a real Redis: each test starts its own `redis-server`
//! on a free loopback port (persistence off) and in-process nodes
//! (`TestServer`s) that share it, then kills, pauses and restarts Redis or
//! a node. The tests run one at a time (`alone()`): they measure detection
//! times and echo latency, which a crowd of parallel tests would blur.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Helpers shared with the other test binaries; this one uses a part of
/// each, so it allows dead code in those. `redis` is used here alone.
#[path = "../support"]
mod support {
    pub mod browser;
    #[allow(dead_code)]
    pub mod client;
    #[allow(dead_code)]
    pub mod daemon;
    #[allow(dead_code)]
    pub mod data;
    #[allow(dead_code)]
    pub mod http;
    #[allow(dead_code)]
    pub mod positions;
    pub mod python;
    pub mod redis;
    #[allow(dead_code)]
    pub mod server;
    #[allow(dead_code)]
    pub mod tempdir;
    #[allow(dead_code)]
    pub mod tls;
}

mod browser;
mod recovery;
mod sse;

use support::client::{RawClient, op};
use support::data::eventually;
use support::http::metric;
use support::redis::Redis;
use support::server::{LIVE_PATH, TestServer, broadcast_config};
use wshub::config::{ClientMessages, ClusterConfig, Config, RedisUrl};

/// The detection settings of every node here: a dead or paused Redis is
/// noticed within `PING_INTERVAL + PING_TIMEOUT`.
const PING_INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(400);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Slack on top of a configured bound for a loaded CI machine.
const SLACK: Duration = Duration::from_millis(700);

fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn node_config(redis: &Redis) -> Config {
    let mut config = broadcast_config(ClientMessages::Broadcast, false);
    config.cluster = Some(ClusterConfig {
        redis_url: RedisUrl::parse(&redis.url()).unwrap(),
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: RECONNECT_MAX,
        ..ClusterConfig::default()
    });
    config
}

/// A node's config file: `[cluster]` on `redis` with `extra` settings,
/// an ephemeral loopback listener and the `/live` broadcast route.
fn node_file(redis: &Redis, extra: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\n{extra}\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/live\"\nkind = \"broadcast\"\n",
        redis.url()
    )
}

/// `GET /healthz` on a connection of its own: status and body.
fn health(node: &TestServer) -> (u16, String) {
    let mut client = RawClient::connect(node.addr);
    let response = client.get("/healthz");
    (response.status, response.body_text().to_owned())
}

fn wait_healthy(node: &TestServer, within: Duration) {
    assert!(
        eventually(within, || health(node).0 == 200),
        "node never became healthy: {:?}",
        health(node)
    );
}

fn start_node(redis: &Redis) -> TestServer {
    let node = TestServer::with_config(node_config(redis));
    wait_healthy(&node, Duration::from_secs(5));
    node
}

fn subscribe(node: &TestServer, channel: &str) -> RawClient {
    RawClient::open(node.addr, &format!("{LIVE_PATH}/{channel}"))
}

/// Waits until `nodes` nodes are subscribed to `channel` in Redis.
fn wait_numsub(redis: &Redis, channel: &str, nodes: usize) {
    let key = format!("wshub:{channel}");
    assert!(
        eventually(Duration::from_secs(5), || redis.numsub(&key) == nodes),
        "{key}: {} subscribers in redis, want {nodes}",
        redis.numsub(&key)
    );
}

/// Publishes over HTTP on a fresh connection; returns status and body.
fn publish(node: &TestServer, channel: &str, body: &str) -> (u16, String) {
    let mut client = RawClient::connect(node.addr);
    let response = client.publish(channel, Some("text/plain"), body.as_bytes());
    (response.status, response.body_text().to_owned())
}

/// An echo round trip on `client`: how long it took.
fn echo_rtt(client: &mut RawClient) -> Duration {
    let start = Instant::now();
    client.send_text("ping?");
    assert_eq!(client.expect_text(), "ping?");
    start.elapsed()
}

#[test]
fn three_nodes_deliver_every_message_once_in_one_order() {
    let _alone = alone();
    let redis = Redis::start();
    let nodes: Vec<TestServer> = (0..3).map(|_| start_node(&redis)).collect();
    let mut news: Vec<RawClient> = Vec::new();
    let mut chat_senders: Vec<RawClient> = Vec::new();
    let mut chat_readers: Vec<RawClient> = Vec::new();
    for node in &nodes {
        news.push(subscribe(node, "news"));
        news.push(subscribe(node, "news"));
        chat_senders.push(subscribe(node, "chat"));
        chat_readers.push(subscribe(node, "chat"));
    }
    wait_numsub(&redis, "news", 3);
    wait_numsub(&redis, "chat", 3);

    // HTTP publishes from every node at once: Redis picks the order.
    const PER_NODE: usize = 20;
    std::thread::scope(|s| {
        for (n, addr) in nodes.iter().map(|node| node.addr).enumerate() {
            s.spawn(move || {
                let mut client = RawClient::connect(addr);
                for i in 0..PER_NODE {
                    let body = format!("n{n}-{i}");
                    let response = client.publish("news", Some("text/plain"), body.as_bytes());
                    assert_eq!(response.status, 200, "{}", response.body_text());
                    // Three nodes are subscribed in Redis.
                    assert_eq!(
                        response.body_text(),
                        "{\"channel\":\"news\",\"recipients\":3}\n"
                    );
                }
            });
        }
    });
    let orders: Vec<Vec<String>> = news
        .iter_mut()
        .map(|c| (0..3 * PER_NODE).map(|_| c.expect_text()).collect())
        .collect();
    for order in &orders {
        assert_eq!(order, &orders[0], "every subscriber sees one order");
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3 * PER_NODE, "each message exactly once");
        // Each node's own publishes keep their order.
        for n in 0..3 {
            let mine: Vec<&String> = order
                .iter()
                .filter(|m| m.starts_with(&format!("n{n}-")))
                .collect();
            let want: Vec<String> = (0..PER_NODE).map(|i| format!("n{n}-{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
    }

    // Chat relays from a subscriber on each node.
    const RELAYS: usize = 10;
    for i in 0..RELAYS {
        for (n, sender) in chat_senders.iter_mut().enumerate() {
            sender.send_text(&format!("c{n}-{i}"));
        }
    }
    let total = RELAYS * chat_senders.len();
    let reference: Vec<String> = (0..total).map(|_| chat_readers[0].expect_text()).collect();
    for reader in &mut chat_readers[1..] {
        let got: Vec<String> = (0..total).map(|_| reader.expect_text()).collect();
        assert_eq!(got, reference, "readers on every node agree");
    }
    for (n, sender) in chat_senders.iter_mut().enumerate() {
        let want: Vec<&String> = reference
            .iter()
            .filter(|m| !m.starts_with(&format!("c{n}-")))
            .collect();
        let got: Vec<String> = (0..want.len()).map(|_| sender.expect_text()).collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "a sender gets all but its own"
        );
    }
    for client in news
        .iter_mut()
        .chain(&mut chat_readers)
        .chain(&mut chat_senders)
    {
        client.expect_silence(Duration::from_millis(200));
    }
    assert_eq!(
        metric(nodes[0].addr, "wshub_cluster_publishes_confirmed_total"),
        PER_NODE as u64
    );
}

#[test]
fn redis_killed_then_restarted() {
    let _alone = alone();
    let mut redis = Redis::start();
    let node = start_node(&redis);
    let mut sub = subscribe(&node, "feed");
    let mut echo = node.client();
    wait_numsub(&redis, "feed", 1);
    assert_eq!(publish(&node, "feed", "before").0, 200);
    assert_eq!(sub.expect_text(), "before");

    redis.kill();
    let killed = Instant::now();
    assert!(
        eventually(PING_INTERVAL + PING_TIMEOUT + SLACK, || health(&node).0
            == 503),
        "healthz still {:?}",
        health(&node)
    );
    let detected = killed.elapsed();
    let (status, body) = health(&node);
    assert_eq!(status, 503);
    assert!(body.starts_with("degraded: redis"), "{body}");
    let (status, body) = publish(&node, "feed", "while down");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not published"), "{body}");
    for _ in 0..20 {
        assert!(echo_rtt(&mut echo) < Duration::from_millis(100));
    }
    assert_eq!(
        metric(node.addr, "wshub_cluster_link_up{link=\"subscription\"}"),
        0
    );
    sub.expect_silence(Duration::from_millis(300));

    redis.restart();
    let restarted = Instant::now();
    // Back within the longest backoff plus a connection and login.
    let bound = RECONNECT_MAX + PING_INTERVAL + SLACK;
    wait_healthy(&node, bound);
    wait_numsub(&redis, "feed", 1);
    eprintln!(
        "kill detected in {detected:?}; healthy again {:?} after restart",
        restarted.elapsed()
    );
    assert_eq!(publish(&node, "feed", "after").0, 200);
    assert_eq!(
        sub.expect_text(),
        "after",
        "the subscriber stayed and gets no duplicate"
    );
    sub.expect_silence(Duration::from_millis(300));
    assert!(metric(node.addr, "wshub_cluster_reconnects_total") >= 2);
    assert!(metric(node.addr, "wshub_cluster_publishes_refused_total") >= 1);
}

#[test]
fn redis_paused_is_detected_and_nothing_refused_is_delivered() {
    let _alone = alone();
    let redis = Redis::start();
    let node = start_node(&redis);
    let mut sub = subscribe(&node, "feed");
    let mut echo = node.client();
    wait_numsub(&redis, "feed", 1);

    redis.pause();
    let paused = Instant::now();
    // A publish sent into the paused Redis: answered 503 after the
    // command timeout, and never delivered, not even after SIGCONT.
    let (status, body) = publish(&node, "feed", "during pause");
    let answered = paused.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        answered < COMMAND_TIMEOUT + SLACK,
        "answered after {answered:?}"
    );
    let mut worst = Duration::ZERO;
    let detected = loop {
        worst = worst.max(echo_rtt(&mut echo));
        if health(&node).0 == 503 {
            break paused.elapsed();
        }
        assert!(
            paused.elapsed() < PING_INTERVAL + PING_TIMEOUT + SLACK,
            "pause not detected"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        worst < Duration::from_millis(100),
        "echo stalled {worst:?} during the pause"
    );
    // Keep Redis paused a little longer, then let it run again.
    std::thread::sleep(Duration::from_millis(300));
    redis.resume();
    wait_healthy(&node, RECONNECT_MAX + PING_INTERVAL + SLACK);
    eprintln!("pause detected in {detected:?}; 503 after {answered:?}; worst echo {worst:?}");
    assert_eq!(publish(&node, "feed", "after").0, 200);
    assert_eq!(
        sub.expect_text(),
        "after",
        "the publish answered 503 never arrives"
    );
    sub.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_killed_node_leaves_the_others_unaffected() {
    let _alone = alone();
    let redis = Redis::start();
    let a = start_node(&redis);
    let b = start_node(&redis);
    // The third node is a process of its own, killed with SIGKILL.
    let dir = support::tempdir::TempDir::new("doomed-node");
    let config = dir.write("wshub.toml", &node_file(&redis, ""));
    let mut doomed = support::daemon::Daemon::start(&config, &[]);
    let doomed_addr = doomed.listening_address();
    let mut on_a = subscribe(&a, "feed");
    let mut on_b = subscribe(&b, "feed");
    let mut on_doomed = RawClient::open(doomed_addr, "/live/feed");
    wait_numsub(&redis, "feed", 3);
    assert_eq!(publish(&a, "feed", "before").0, 200);
    for sub in [&mut on_a, &mut on_b, &mut on_doomed] {
        assert_eq!(sub.expect_text(), "before");
    }
    doomed.child.kill().expect("kill the node");
    let _ = doomed.child.wait();
    // Redis notices the dead connection (reset by the kernel).
    wait_numsub(&redis, "feed", 2);
    for i in 0..5 {
        let (status, body) = publish(&b, "feed", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(on_a.expect_text(), format!("m{i}"));
        assert_eq!(on_b.expect_text(), format!("m{i}"));
    }
    assert_eq!(health(&a).0, 200);
}

#[test]
fn ten_thousand_channels_subscribed_and_unsubscribed_in_batches() {
    let _alone = alone();
    let redis = Redis::start();
    let mut config = node_config(&redis);
    config.max_channels_per_connection = 400;
    let node = TestServer::with_config(config);
    wait_healthy(&node, Duration::from_secs(5));
    let per_connection = 400;
    let connections = 25;
    let mut clients = Vec::new();
    for c in 0..connections {
        let query: Vec<String> = (0..per_connection)
            .map(|i| format!("channel=c{}", c * per_connection + i))
            .collect();
        clients.push(RawClient::open(
            node.addr,
            &format!("{LIVE_PATH}?{}", query.join("&")),
        ));
    }
    let series = "wshub_cluster_channels_subscribed";
    assert!(eventually(Duration::from_secs(10), || metric(
        node.addr, series
    ) == 10_000));
    for probe in [0, 4_321, 9_999] {
        wait_numsub(&redis, &format!("c{probe}"), 1);
    }
    assert_eq!(publish(&node, "c9999", "last").0, 200);
    assert_eq!(clients[24].expect_message(op::TEXT), b"last");
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || metric(
        node.addr, series
    ) == 0));
    for probe in [0, 4_321, 9_999] {
        wait_numsub(&redis, &format!("c{probe}"), 0);
    }
}

#[test]
fn requests_pipelined_behind_a_publish_wait_for_its_answer() {
    let _alone = alone();
    let redis = Redis::start();
    let node = start_node(&redis);
    let mut sub = subscribe(&node, "feed");
    wait_numsub(&redis, "feed", 1);
    let mut client = RawClient::connect(node.addr);
    let mut pipelined = support::http::publish_request("feed", Some("text/plain"), b"one");
    pipelined.extend(support::http::get_request("/healthz"));
    pipelined.extend(support::http::publish_request(
        "feed",
        Some("text/plain"),
        b"two",
    ));
    client.send(&pipelined);
    let first = client.read_http_response();
    assert_eq!(
        first.body_text(),
        "{\"channel\":\"feed\",\"recipients\":1}\n"
    );
    let second = client.read_http_response();
    assert_eq!((second.status, second.body_text()), (200, "ok\n"));
    let third = client.read_http_response();
    assert_eq!(third.status, 200);
    assert_eq!(sub.expect_text(), "one");
    assert_eq!(sub.expect_text(), "two");
    // `Connection: close`: the answer comes, then the end.
    let mut closing = RawClient::connect(node.addr);
    closing.send(
        b"POST /publish/feed HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree",
    );
    let answer = closing.read_http_response();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    closing.expect_eof();
    assert_eq!(sub.expect_text(), "three");
}

/// Issue #12: a pipelining HTTP publisher keeps many publishes out at
/// Redis at once, and still gets its answers in request order.
#[test]
fn two_hundred_pipelined_publishes_arrive_everywhere_and_are_answered_in_order() {
    const COUNT: usize = 200;
    const CHANNELS: [&str; 4] = ["pipe0", "pipe1", "pipe2", "pipe3"];
    let _alone = alone();
    let redis = Redis::start();
    let first = start_node(&redis);
    let second = start_node(&redis);
    let query: Vec<String> = CHANNELS.iter().map(|c| format!("channel={c}")).collect();
    let path = format!("{LIVE_PATH}?{}", query.join("&"));
    let mut subs = [
        RawClient::open(first.addr, &path),
        RawClient::open(second.addr, &path),
    ];
    for channel in CHANNELS {
        wait_numsub(&redis, channel, 2);
    }
    let channel_of = |i: usize| CHANNELS[i % CHANNELS.len()];
    let mut pipelined = Vec::new();
    for i in 0..COUNT {
        pipelined.extend(support::http::publish_request(
            channel_of(i),
            Some("text/plain"),
            format!("m{i}").as_bytes(),
        ));
    }
    let mut publisher = RawClient::connect(first.addr);
    publisher.send(&pipelined);
    for i in 0..COUNT {
        let answer = publisher.read_http_response();
        assert_eq!(
            (answer.status, answer.body_text()),
            (
                200,
                format!("{{\"channel\":\"{}\",\"recipients\":2}}\n", channel_of(i)).as_str()
            ),
            "answer {i}"
        );
    }
    for sub in &mut subs {
        for i in 0..COUNT {
            assert_eq!(sub.expect_text(), format!("m{i}"));
        }
    }
}

#[test]
fn rediss_nodes_share_channels_with_plain_ones() {
    let _alone = alone();
    let dir = support::tempdir::TempDir::new("rediss");
    let identity = support::tls::Identity::new(b"\x01");
    let (cert, key) = identity.write_to(&dir);
    let redis = Redis::start_tls(&cert, &key);
    let plain = start_node(&redis);
    let mut tls_config = node_config(&redis);
    if let Some(cluster) = &mut tls_config.cluster {
        cluster.redis_url = RedisUrl::parse(&redis.tls_url()).unwrap();
        cluster.tls_ca_file = Some(cert.clone());
    }
    let secure = TestServer::with_config(tls_config.clone());
    wait_healthy(&secure, Duration::from_secs(5));
    let mut on_plain = subscribe(&plain, "feed");
    let mut on_secure = subscribe(&secure, "feed");
    wait_numsub(&redis, "feed", 2);
    assert_eq!(publish(&secure, "feed", "over tls").0, 200);
    assert_eq!(publish(&plain, "feed", "in the clear").0, 200);
    for sub in [&mut on_plain, &mut on_secure] {
        assert_eq!(sub.expect_text(), "over tls");
        assert_eq!(sub.expect_text(), "in the clear");
    }

    // Without the CA file the Mozilla roots do not vouch for the test
    // certificate: the node stays degraded and says why.
    if let Some(cluster) = &mut tls_config.cluster {
        cluster.tls_ca_file = None;
    }
    let untrusting = TestServer::with_config(tls_config);
    assert!(
        eventually(Duration::from_secs(3), || {
            let (status, body) = health(&untrusting);
            status == 503 && body.contains("ertificate")
        }),
        "{:?}",
        health(&untrusting)
    );
    assert_eq!(publish(&untrusting, "feed", "refused").0, 503);
}

#[test]
fn redis_killed_mid_stream_loses_no_order_and_delivers_nothing_refused() {
    let _alone = alone();
    let mut redis = Redis::start();
    let publisher_node = start_node(&redis);
    let subscriber_node = start_node(&redis);
    let mut subs = [
        subscribe(&subscriber_node, "feed"),
        subscribe(&publisher_node, "feed"),
    ];
    wait_numsub(&redis, "feed", 2);

    // One publish every 5 ms, for at most 10 s, until 40 have been
    // accepted after Redis came back.
    let addr = publisher_node.addr;
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&restarted);
    let publisher = std::thread::spawn(move || {
        let mut client = RawClient::connect(addr);
        let mut answers: Vec<(usize, u16, bool)> = Vec::new();
        let mut accepted_after = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0;
        while accepted_after < 40 && Instant::now() < deadline {
            let response = client.publish("feed", Some("text/plain"), format!("m{i}").as_bytes());
            let after = flag.load(std::sync::atomic::Ordering::SeqCst);
            if response.status == 200 && after {
                accepted_after += 1;
            }
            answers.push((i, response.status, after));
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        answers
    });
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    std::thread::sleep(Duration::from_millis(800));
    redis.restart();
    // Until a node's subscription link is back, messages published
    // elsewhere do not reach it (Redis keeps no history; the node says it
    // is degraded meanwhile). From when both are healthy, all must arrive.
    wait_healthy(&subscriber_node, RECONNECT_MAX + PING_INTERVAL + SLACK);
    wait_healthy(&publisher_node, RECONNECT_MAX + PING_INTERVAL + SLACK);
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = publisher.join().expect("publisher");
    let accepted: Vec<usize> = answers.iter().filter(|a| a.1 == 200).map(|a| a.0).collect();
    let refused = answers.iter().filter(|a| a.1 == 503).count();
    assert!(refused > 0, "the outage was seen by the publisher");
    assert_eq!(
        accepted.len() + refused,
        answers.len(),
        "only 200 and 503: {answers:?}"
    );
    // Accepted once both nodes were healthy again.
    let late: Vec<usize> = answers
        .iter()
        .filter(|a| a.1 == 200 && a.2)
        .map(|a| a.0)
        .collect();
    let last = *late.last().expect("publishes flowed again");
    for sub in &mut subs {
        let mut got = Vec::new();
        while got.last() != Some(&last) {
            assert!(
                got.len() < answers.len(),
                "more messages than publishes: {got:?}"
            );
            let text = sub.expect_text();
            got.push(
                text.trim_start_matches('m')
                    .parse::<usize>()
                    .expect("a sequence number"),
            );
        }
        sub.expect_silence(Duration::from_millis(300));
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "in order, each once: {got:?}"
        );
        for n in &got {
            assert!(accepted.contains(n), "m{n} was delivered but answered 503");
        }
        for n in &late {
            assert!(
                got.contains(n),
                "m{n}, accepted after the restart, never arrived"
            );
        }
        let lost = accepted.iter().filter(|n| !got.contains(n)).count();
        eprintln!(
            "{} publishes: {} accepted, {refused} refused; {} delivered, {lost} accepted ones lost with the killed redis",
            answers.len(),
            accepted.len(),
            got.len()
        );
    }
}

#[test]
fn a_reload_with_a_new_key_prefix_moves_the_subscriptions() {
    let _alone = alone();
    let redis = Redis::start();
    let dir = support::tempdir::TempDir::new("cluster-reload");
    let config = dir.write("wshub.toml", &node_file(&redis, "key_prefix = \"old:\""));
    let mut node = support::daemon::Daemon::start(&config, &[]);
    let addr = node.listening_address();
    let mut sub = RawClient::open(addr, "/live/feed");
    assert!(eventually(Duration::from_secs(5), || redis
        .numsub("old:feed")
        == 1));

    dir.write("wshub.toml", &node_file(&redis, "key_prefix = \"new:\""));
    node.signal(rustix::process::Signal::HUP);
    node.wait_for_log("cluster.key_prefix: \"old:\" -> \"new:\"");
    assert!(eventually(Duration::from_secs(5), || redis
        .numsub("new:feed")
        == 1));
    assert_eq!(redis.numsub("old:feed"), 0);
    let healthy = || RawClient::connect(addr).get("/healthz").status == 200;
    assert!(eventually(Duration::from_secs(5), healthy));
    let mut http = RawClient::connect(addr);
    http.publish_ok("feed", Some("text/plain"), b"moved");
    assert_eq!(
        sub.expect_text(),
        "moved",
        "the subscriber stayed connected"
    );
    node.assert_running();
}

/// A node whose `/live` route keeps `size` messages per channel.
fn history_node(redis: &Redis, size: usize) -> TestServer {
    let mut config = node_config(redis);
    for route in &mut config.routes {
        if route.path == LIVE_PATH {
            route.history_size = size;
        }
    }
    let node = TestServer::with_config(config);
    wait_healthy(&node, Duration::from_secs(5));
    node
}

/// The epoch and offset of a publish answer's JSON body.
fn position_of(body: &str) -> (String, u64) {
    let field = |name: &str| {
        let start = body.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
        body[start..]
            .split([',', '}'])
            .next()
            .expect("a value")
            .trim_matches('"')
            .to_owned()
    };
    (field("epoch"), field("offset").parse().expect("an offset"))
}

#[test]
fn with_history_positions_come_from_redis_and_a_cut_subscription_misses_nothing() {
    let _alone = alone();
    let redis = Redis::start();
    let a = history_node(&redis, 1_000);
    let b = history_node(&redis, 1_000);
    let mut subs = [subscribe(&a, "feed"), subscribe(&b, "feed")];
    wait_numsub(&redis, "feed", 2);

    // Offsets 1, 2, 3 across both nodes, one epoch.
    let mut positions = Vec::new();
    for (i, node) in [&a, &b, &a].into_iter().enumerate() {
        let (status, body) = publish(node, "feed", &format!("m{}", i + 1));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"recipients\":2"), "{body}");
        positions.push(position_of(&body));
    }
    let epoch = positions[0].0.clone();
    assert_eq!(epoch.len(), 16);
    assert_eq!(
        positions,
        [(epoch.clone(), 1), (epoch.clone(), 2), (epoch.clone(), 3)]
    );

    // Every node's subscription link is cut; 200 pipelined publishes go
    // on meanwhile.
    const CUT: usize = 200;
    assert_eq!(
        redis
            .try_command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .as_deref(),
        Some(":2")
    );
    let mut pipelined = Vec::new();
    for i in 4..4 + CUT {
        pipelined.extend(support::http::publish_request(
            "feed",
            Some("text/plain"),
            format!("m{i}").as_bytes(),
        ));
    }
    let mut publisher = RawClient::connect(a.addr);
    publisher.send(&pipelined);
    for i in 4..4 + CUT {
        let answer = publisher.read_http_response();
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        assert_eq!(position_of(answer.body_text()), (epoch.clone(), i as u64));
    }
    // Both subscribers get every message once, in order.
    for sub in &mut subs {
        for i in 1..4 + CUT {
            assert_eq!(sub.expect_text(), format!("m{i}"));
        }
        sub.expect_silence(Duration::from_millis(300));
    }
    let filled: u64 = [&a, &b]
        .iter()
        .map(|n| metric(n.addr, "wshub_cluster_messages_filled_total"))
        .sum();
    let reads: u64 = [&a, &b]
        .iter()
        .map(|n| metric(n.addr, "wshub_cluster_gap_reads_total"))
        .sum();
    eprintln!("{filled} messages filled from the stream in {reads} reads");
    assert!(filled > 0 && reads > 0, "the cut was bridged by the stream");
    assert_eq!(metric(b.addr, "wshub_cluster_messages_lost_total"), 0);

    // Redis loses its data: a new epoch, and the nodes follow it.
    assert_eq!(redis.try_command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let (status, body) = publish(&b, "feed", "fresh");
    assert_eq!(status, 200, "{body}");
    let (new_epoch, offset) = position_of(&body);
    assert_ne!(new_epoch, epoch);
    assert_eq!(offset, 1);
    for sub in &mut subs {
        assert_eq!(sub.expect_text(), "fresh");
    }
}

#[test]
fn without_history_a_publish_answer_has_no_position_and_redis_keeps_nothing() {
    let _alone = alone();
    let redis = Redis::start();
    let node = start_node(&redis);
    let mut sub = subscribe(&node, "plain");
    wait_numsub(&redis, "plain", 1);
    let (status, body) = publish(&node, "plain", "x");
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"channel\":\"plain\",\"recipients\":1}\n")
    );
    assert_eq!(sub.expect_text(), "x");
    assert_eq!(redis.try_command(&["DBSIZE"]).as_deref(), Some(":0"));
}

#[test]
fn redis_restarted_without_data_starts_a_new_epoch() {
    let _alone = alone();
    let mut redis = Redis::start();
    let node = history_node(&redis, 100);
    let mut sub = subscribe(&node, "feed");
    wait_numsub(&redis, "feed", 1);
    let (status, body) = publish(&node, "feed", "before");
    assert_eq!(status, 200, "{body}");
    let (epoch, offset) = position_of(&body);
    assert_eq!(offset, 1);
    assert_eq!(sub.expect_text(), "before");

    redis.kill();
    redis.restart();
    wait_healthy(&node, RECONNECT_MAX + PING_INTERVAL + SLACK);
    wait_numsub(&redis, "feed", 1);
    let (status, body) = publish(&node, "feed", "after");
    assert_eq!(status, 200, "{body}");
    let (new_epoch, offset) = position_of(&body);
    assert_ne!(new_epoch, epoch, "continuity cannot be vouched for");
    assert_eq!(offset, 1);
    assert_eq!(sub.expect_text(), "after");
    sub.expect_silence(Duration::from_millis(300));
}
