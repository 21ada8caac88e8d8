//! A cluster node hands over while another node publishes through Redis:
//! the node stops reading its Redis subscription for the exchange, and the
//! new process subscribes afresh. What was published in between must not
//! be lost: the new process continues each channel's feed where the old
//! one left it and reads the gap from Redis's stream, so a metadata
//! subscriber sees every offset once, in order, through the handover.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::{RawClient, op};
use crate::support::daemon::Daemon;
use crate::support::handover::upgrade;
use crate::support::redis::Redis;
use crate::support::tempdir::TempDir;

const CHANNEL: &str = "feed";
/// Messages published at most, by several publishers at once (so that
/// some fall into the moments neither process reads Redis).
const MESSAGES: u64 = 2_000;
const PUBLISHERS: u64 = 8;
/// How long the subscriber may wait for any one message.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn node(dir: &TempDir, redis: &Redis, name: &str) -> Daemon {
    let extra = format!(
        "[cluster]\nredis_url = \"{}\"\nnode_name = \"{name}\"\n",
        redis.url()
    );
    // `[cluster]` is a table: the top-level settings come first.
    let text = config("", "", "history_size = 1000\nhistory_ttl = \"60s\"");
    let path = write_config(dir, &format!("{text}\n{extra}"));
    Daemon::start(&path, &[])
}

/// The offset of a metadata frame (`{"channel":…,"offset":N,…}`); `None`
/// for the subscription notice, which has no message.
fn offset_of(payload: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("text")?;
    value["offset"].as_u64()
}

#[test]
fn a_cluster_node_loses_nothing_published_during_its_handover() {
    let _alone = crate::alone();
    let redis = Redis::start();
    let dir_a = TempDir::new("ho-cluster-a");
    let dir_b = TempDir::new("ho-cluster-b");
    let mut a = node(&dir_a, &redis, "a");
    let mut b = node(&dir_b, &redis, "b");
    let addr_a = a.listening_address();
    let addr_b = b.listening_address();

    let mut subscriber = RawClient::open(addr_a, &format!("{LIVE}/{CHANNEL}?meta=1"));
    subscriber.set_read_timeout(READ_TIMEOUT);
    // Publishing starts once node a is subscribed in Redis.
    let key = format!("wshub:{CHANNEL}");
    let deadline = Instant::now() + READ_TIMEOUT;
    while redis.numsub(&key) == 0 {
        assert!(
            Instant::now() < deadline,
            "node a never subscribed to {key}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The node tells a metadata subscriber where the channel stands (it
    // asks Redis); messages count from there.
    let notice = subscriber.read_frame();
    assert_eq!(notice.opcode, op::TEXT, "{notice:?}");
    assert_eq!(offset_of(&notice.payload), None, "{notice:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut publisher = Publisher::new(addr_b);
                let mut offsets = Vec::new();
                for i in 0..MESSAGES / PUBLISHERS {
                    let answer = publisher.publish(CHANNEL, &format!("p{p}m{i}"));
                    offsets.push(answer["offset"].as_u64().expect("an offset"));
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                offsets
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let handover = upgrade(&a, a.pid());
    assert_eq!(handover.connections_taken(), 1, "{}", handover.taken);
    assert_eq!(a.wait_exit(Duration::from_secs(30)).code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let mut published: Vec<u64> = publishers
        .into_iter()
        .flat_map(|p| p.join().expect("a publisher"))
        .collect();
    published.sort_unstable();

    let first = published[0];
    let last = *published.last().expect("published");
    assert_eq!(
        published,
        (first..=last).collect::<Vec<_>>(),
        "Redis gave consecutive offsets"
    );
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let frame = subscriber.read_frame();
        assert_eq!(frame.opcode, op::TEXT, "{frame:?}");
        if let Some(offset) = offset_of(&frame.payload) {
            seen.push(offset);
        }
    }
    assert_eq!(
        seen,
        (first..=last).collect::<Vec<_>>(),
        "every offset once, in order, through the handover"
    );

    let mut successor = handover.successor;
    successor.signal(rustix::process::Signal::TERM);
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
    b.signal(rustix::process::Signal::TERM);
    assert!(b.wait_exit(Duration::from_secs(30)).success());
}
