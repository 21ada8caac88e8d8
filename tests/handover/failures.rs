//! When the new process cannot take over. A new binary that fails to start
//! (exits at once, or dies of a signal) leaves the old process serving
//! every client as if nothing happened, and says why; the real binary put
//! back then takes over. A new binary that does not understand the old
//! one's state takes the listeners only: the clients get the ordinary
//! 1012 close and come back to it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::{ECHO_PATH, RawClient};
use crate::support::daemon::{BIN, Daemon};
use crate::support::handover::{
    BinaryCopy, FAILED, HANDOVER_TIMEOUT, STARTED, STATE_VERSION_ENV, Successor, upgrade,
    wait_for_nth,
};
use crate::support::tempdir::TempDir;

const SUBSCRIBERS: usize = 50;
/// The close code of a restart (RFC 6455 §7.4.1: "service restart").
const SERVICE_RESTART: u16 = 1012;

/// The daemon started from `binary`, and its plain address.
fn start_from(binary: &BinaryCopy, dir: &TempDir) -> (Daemon, SocketAddr) {
    let config = write_config(dir, &config("", "", ""));
    let command = binary.command(&[Path::new("--config"), &config]);
    let mut daemon = Daemon::spawn(command, &[]);
    let addr = daemon.listening_address();
    (daemon, addr)
}

/// A daemon started from a copy of the binary, serving subscribers of
/// `stay`, an echo client and a publisher, all checked once.
struct Served {
    binary: BinaryCopy,
    daemon: Daemon,
    addr: SocketAddr,
    subscribers: Vec<RawClient>,
    echo: RawClient,
    publisher: Publisher,
}

impl Served {
    fn start(dir: &TempDir) -> Served {
        let binary = BinaryCopy::new();
        let (daemon, addr) = start_from(&binary, dir);
        let mut subscribers: Vec<RawClient> = (0..SUBSCRIBERS)
            .map(|_| RawClient::open(addr, &format!("{LIVE}/stay")))
            .collect();
        let mut echo = RawClient::open(addr, ECHO_PATH);
        let mut publisher = Publisher::new(addr);
        assert_served(&mut publisher, &mut subscribers, &mut echo, "before");
        Served {
            binary,
            daemon,
            addr,
            subscribers,
            echo,
            publisher,
        }
    }
}

/// Every subscriber gets a message published now, and the echo client an
/// answer: whoever serves, serves everyone.
fn assert_served(
    publisher: &mut Publisher,
    subscribers: &mut [RawClient],
    echo: &mut RawClient,
    text: &str,
) {
    assert_eq!(
        publisher.publish_count("stay", text),
        subscribers.len() as u64
    );
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        assert_eq!(subscriber.expect_text(), text, "subscriber {i}");
    }
    echo.send_text(text);
    assert_eq!(echo.expect_text(), text);
}

#[test]
fn a_new_binary_that_fails_to_start_leaves_the_old_one_serving() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-crash");
    let Served {
        binary,
        mut daemon,
        addr,
        mut subscribers,
        mut echo,
        mut publisher,
    } = Served::start(&dir);

    let crashes = [
        ("exits 1", "echo 'this binary does not start' >&2; exit 1"),
        ("dies of SIGSEGV", "kill -SEGV $$"),
    ];
    for (n, (what, script)) in crashes.iter().enumerate() {
        binary.replace_with_script(script);
        daemon.signal(Signal::USR2);
        let failed = wait_for_nth(&daemon, FAILED, n + 1, HANDOVER_TIMEOUT);
        eprintln!("a new binary that {what}: {failed}");
        let reason = failed
            .split_once(FAILED)
            .map(|(_, r)| r)
            .unwrap_or_default();
        assert!(reason.len() > "; still serving".len(), "{failed}");
        assert!(failed.ends_with("still serving"), "{failed}");
        daemon.assert_running();
        assert_served(
            &mut publisher,
            &mut subscribers,
            &mut echo,
            &format!("after {what}"),
        );
        let mut newcomer = RawClient::open(addr, ECHO_PATH);
        newcomer.send_text("new");
        assert_eq!(newcomer.expect_text(), "new");
    }

    binary.restore();
    let handover = upgrade(&daemon, daemon.pid());
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_served(&mut publisher, &mut subscribers, &mut echo, "taken over");
    let mut successor = handover.successor;
    successor.signal(Signal::TERM);
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_state_version_mismatch_falls_back_to_the_ordinary_1012_shutdown() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-version");
    let Served {
        binary,
        mut daemon,
        addr,
        mut subscribers,
        mut echo,
        mut publisher,
    } = Served::start(&dir);

    // The next binary claims a state version no build has.
    binary.replace_with_script(&format!(
        "{STATE_VERSION_ENV}=4294967295 exec '{BIN}' \"$@\""
    ));
    daemon.signal(Signal::USR2);
    let started = wait_for_nth(&daemon, STARTED, 1, HANDOVER_TIMEOUT);
    let mut successor = Successor::from_line(&started);
    for (i, client) in subscribers.iter_mut().chain([&mut echo]).enumerate() {
        let frame = client.read_server_frame();
        assert_eq!(
            frame.close_code(),
            Some(SERVICE_RESTART),
            "client {i}: {frame:?}"
        );
        client.send_close(SERVICE_RESTART, b"");
        client.expect_eof();
    }
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    eprintln!("after a version mismatch:\n{}", daemon.log_text());

    // The clients come back to the new process, on the same listener.
    assert!(successor.is_running());
    let mut subscribers: Vec<RawClient> = (0..SUBSCRIBERS)
        .map(|_| RawClient::open(addr, &format!("{LIVE}/stay")))
        .collect();
    let mut echo = RawClient::open(addr, ECHO_PATH);
    assert_served(&mut publisher, &mut subscribers, &mut echo, "back");
    successor.signal(Signal::TERM);
    for client in subscribers.iter_mut().chain([&mut echo]) {
        let frame = client.read_server_frame();
        let code = frame.close_code().expect("a close code");
        client.send_close(code, b"");
    }
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
}
