//! A cluster node hands over while another node publishes through Redis:
//! the node stops reading its Redis subscription for the exchange, and the
//! new process subscribes afresh. What was published in between must not
//! be lost: the new process continues each channel's feed where the old
//! one left it and reads the gap from Redis's stream, so a metadata
//! subscriber sees every offset once, in order, through the handover.
//!
//! The new process's command link is held back at a relay in front of
//! Redis, so its subscription link delivers live messages first, as it
//! may by chance on a busy machine: the gap read must wait for the command
//! link rather than give the gap up.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::{RawClient, op};
use crate::support::daemon::Daemon;
use crate::support::handover::upgrade;
use crate::support::http::metric;
use crate::support::redis::Redis;
use crate::support::tempdir::TempDir;

const CHANNEL: &str = "feed";
/// Messages published at most, by several publishers at once (so that
/// some fall into the moments neither process reads Redis). They publish
/// until told to stop, which comes well before this.
const MESSAGES: u64 = 16_000;
const PUBLISHERS: u64 = 8;
/// Each publisher's pause between publishes: the stream goes on through
/// the whole handover, at no more than 4,000 messages a second, so the new
/// process holds far fewer than its 4,096 per channel while its command
/// link is held back.
const PUBLISH_PAUSE: Duration = Duration::from_millis(2);
/// How long the subscriber may wait for any one message.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the new process's command link waits at the relay before
/// Redis sees its login: well within `connect_timeout` (2 s) and
/// `command_timeout` (1 s) plus the reply margin, long enough for live
/// messages to come first.
const COMMAND_LINK_DELAY: Duration = Duration::from_millis(200);

/// A loopback TCP relay in front of Redis. Once `slow` is set, a new
/// connection whose first bytes do not SUBSCRIBE (a command link) has them
/// held for [`COMMAND_LINK_DELAY`].
struct Relay {
    addr: SocketAddr,
    slow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(redis: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("nonblocking relay");
        let addr = listener.local_addr().expect("relay address");
        let slow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = std::thread::spawn({
            let (slow, stop) = (Arc::clone(&slow), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => relay(client, redis, slow.load(Ordering::SeqCst)),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        Relay {
            addr,
            slow,
            stop,
            accepting: Some(accepting),
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

/// Relays one connection both ways until either side closes.
fn relay(client: TcpStream, redis: SocketAddr, slow: bool) {
    let Ok(upstream) = TcpStream::connect(redis) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut from_redis)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let (mut to_client, mut to_redis) = (client, upstream);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_redis, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut first = vec![0u8; 64 * 1024];
        let n = from_client.read(&mut first).unwrap_or(0);
        let first = &first[..n];
        if slow && !first.windows(9).any(|w| w == b"SUBSCRIBE") {
            std::thread::sleep(COMMAND_LINK_DELAY);
        }
        if n > 0 && to_redis.write_all(first).is_ok() {
            let _ = std::io::copy(&mut from_client, &mut to_redis);
        }
        let _ = to_redis.shutdown(Shutdown::Write);
    });
}

fn node(dir: &TempDir, redis_url: &str, name: &str) -> Daemon {
    let extra = format!("[cluster]\nredis_url = \"{redis_url}\"\nnode_name = \"{name}\"\n");
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
    let relay = Relay::start(redis.addr);
    let dir_a = TempDir::new("ho-cluster-a");
    let dir_b = TempDir::new("ho-cluster-b");
    let mut a = node(&dir_a, &relay.url(), "a");
    let mut b = node(&dir_b, &redis.url(), "b");
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
                    std::thread::sleep(PUBLISH_PAUSE);
                }
                offsets
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    relay.slow.store(true, Ordering::SeqCst);
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
    // The new process filled its gap from Redis's stream (what was
    // published while neither process read) and gave nothing up.
    assert_eq!(metric(addr_a, "wshub_cluster_messages_lost_total"), 0);
    assert!(metric(addr_a, "wshub_cluster_gap_reads_total") >= 1);
    assert!(metric(addr_a, "wshub_cluster_messages_filled_total") >= 1);

    let mut successor = handover.successor;
    successor.signal(rustix::process::Signal::TERM);
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
    b.signal(rustix::process::Signal::TERM);
    assert!(b.wait_exit(Duration::from_secs(30)).success());
}
