//! A restart is also how listener changes apply (a reload cannot change a
//! listening socket): through a handover, a `[[listener]]` still in the
//! config keeps its socket (and the clients waiting in its queue), a new
//! one is bound, and one gone from the config is closed, while every open
//! connection carries on whatever listener it came through.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::RawClient;
use crate::support::daemon::Daemon;
use crate::support::handover::{upgrade, wait_for_nth};
use crate::support::tempdir::TempDir;

const CHANNEL: &str = "moves";
/// A second loopback address for the listener that comes and goes.
const OTHER: &str = "127.0.0.3:0";
const WAIT: Duration = Duration::from_secs(30);

fn listening_on(daemon: &Daemon, host: &str, nth: usize) -> SocketAddr {
    let line = wait_for_nth(daemon, &format!("listening on ws://{host}:"), nth, WAIT);
    daemon.listening_address_from(&line)
}

#[test]
fn listener_changes_apply_through_a_handover_and_connections_stay() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-listeners");
    let path = write_config(&dir, &config("", "", ""));
    let mut daemon = Daemon::start(&path, &[]);
    let first = daemon.listening_address();
    let mut subscriber = RawClient::open(first, &format!("{LIVE}/{CHANNEL}"));

    // A second listener is added: it is bound by the new process, the first
    // one's socket is kept.
    let extra = format!("[[listener]]\naddress = \"{OTHER}\"\n");
    write_config(&dir, &config("", &extra, ""));
    let handover = upgrade(&daemon, daemon.pid());
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(0));
    assert_eq!(listening_on(&daemon, "127.0.0.1", 2), first, "kept");
    let other = listening_on(&daemon, "127.0.0.3", 1);
    let mut publisher = Publisher::new(other);
    assert_eq!(publisher.publish_count(CHANNEL, "through the new one"), 1);
    assert_eq!(subscriber.expect_text(), "through the new one");

    // The first listener is removed: closed by the next process, while the
    // connection made through it carries on.
    let only_other = config("", "", "").replace("127.0.0.1:0", OTHER);
    write_config(&dir, &only_other);
    let mut successor = handover.successor;
    let second = upgrade(&daemon, successor.pid);
    assert_eq!(successor.wait_exit(WAIT), Some(0));
    assert_eq!(listening_on(&daemon, "127.0.0.3", 2), other, "kept");
    assert!(
        TcpStream::connect_timeout(&first, Duration::from_secs(2)).is_err(),
        "{first} still accepts"
    );
    let mut publisher = Publisher::new(other);
    assert_eq!(publisher.publish_count(CHANNEL, "after"), 1);
    assert_eq!(subscriber.expect_text(), "after");

    let mut last = second.successor;
    last.signal(rustix::process::Signal::TERM);
    assert_eq!(last.wait_exit(WAIT), Some(0));
}
