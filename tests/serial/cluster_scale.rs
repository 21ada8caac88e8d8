//! A cluster node at scale: 19,000 subscribers over 1,000 channels on a
//! node running as its own process (so the test process and the node each
//! hold one side of the sockets, within the 20,000 open files a process may
//! have), subscribed in Redis in batches, fed by a second node, and
//! unsubscribed again when they leave.

use std::time::{Duration, Instant};

use wshub::config::{ClusterConfig, Config, RedisUrl, RouteConfig, RouteKind};

use crate::support::client::RawClient;
use crate::support::daemon::Daemon;
use crate::support::data::eventually;
use crate::support::http::metric;
use crate::support::load::{connect_from, ensure_nofile, source_address};
use crate::support::redis::Redis;
use crate::support::server::{TestServer, test_config};
use crate::support::tempdir::TempDir;

const SUBSCRIBERS: usize = 19_000;
const CHANNELS: usize = 1_000;
/// Source addresses 127.0.0.2 ..= 127.0.0.11.
const SOURCE_ADDRESSES: usize = 10;
/// Bound on every wait of the test.
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn a_node_with_19000_subscribers_over_1000_channels() {
    let _alone = crate::alone();
    ensure_nofile(SUBSCRIBERS as u64 + 512);
    let redis = Redis::start();
    let dir = TempDir::new("cluster-scale");
    let config = dir.write(
        "wshub.toml",
        &format!(
            "[cluster]\nredis_url = \"{}\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
             [[route]]\npath = \"/live\"\nkind = \"broadcast\"\n",
            redis.url()
        ),
    );
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let healthy = || RawClient::connect(addr).get("/healthz").status == 200;
    assert!(eventually(BOUND, healthy), "the node never reached redis");

    let start = Instant::now();
    let mut subscribers: Vec<RawClient> = (0..SUBSCRIBERS)
        .map(|i| {
            let stream = connect_from(source_address(i, SOURCE_ADDRESSES), addr)
                .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
            let mut client = RawClient::from_stream(stream);
            client.handshake(&format!("/live/ch{}", i % CHANNELS));
            client
        })
        .collect();
    let series = "wshub_cluster_channels_subscribed";
    assert!(eventually(BOUND, || metric(addr, series) == CHANNELS as u64));
    eprintln!(
        "{SUBSCRIBERS} subscribers on {CHANNELS} channels in {:?}",
        start.elapsed()
    );
    assert_eq!(redis.numsub("wshub:ch0"), 1);
    assert_eq!(redis.numsub("wshub:ch999"), 1);

    // A second node publishes one message per channel.
    let mut publisher_config: Config = test_config();
    publisher_config
        .routes
        .push(RouteConfig::new("/live", RouteKind::Broadcast));
    publisher_config.cluster = Some(ClusterConfig {
        redis_url: RedisUrl::parse(&redis.url()).unwrap(),
        ..ClusterConfig::default()
    });
    let publisher = TestServer::with_config(publisher_config);
    let publisher_healthy = || RawClient::connect(publisher.addr).get("/healthz").status == 200;
    assert!(eventually(BOUND, publisher_healthy));
    let mut http = RawClient::connect(publisher.addr);
    let start = Instant::now();
    for ch in 0..CHANNELS {
        let body = format!("m{ch}");
        let nodes = http.publish_ok(&format!("ch{ch}"), Some("text/plain"), body.as_bytes());
        assert_eq!(nodes, 1, "one node is subscribed to ch{ch}");
    }
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        assert_eq!(subscriber.expect_text(), format!("m{}", i % CHANNELS));
    }
    eprintln!(
        "{CHANNELS} publishes through redis reached {SUBSCRIBERS} subscribers in {:?}",
        start.elapsed()
    );

    subscribers.clear();
    assert!(eventually(BOUND, || metric(addr, series) == 0));
    assert_eq!(redis.numsub("wshub:ch0"), 0);
    assert_eq!(redis.numsub("wshub:ch999"), 0);
    daemon.assert_running();
}
