//! The service manager's path, with the manager played by
//! `support::fdstore` (`FileDescriptorStoreMax=` as `$FDSTORE`): SIGTERM
//! pushes the listener, the state and every connection to the store and
//! exits; the next start gets them back and serves on. A store too small
//! for every connection: the ones that do not fit get the ordinary 1012
//! close. A new binary that does not understand the state: 1012 for all,
//! and the listener serves on.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;
use wshub::daemon::fdstore::{CONN_NAME, LISTEN_NAME, STATE_NAME};

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::{ECHO_PATH, RawClient};
use crate::support::daemon::{BIN, Daemon};
use crate::support::fdstore::Manager;
use crate::support::handover::STATE_VERSION_ENV;
use crate::support::tempdir::TempDir;

pub(crate) const WAIT: Duration = Duration::from_secs(30);
const SUBSCRIBERS: usize = 200;
const SERVICE_RESTART: u16 = 1012;
const CHANNEL: &str = "unit";

/// Starts wshub as the manager starts the service: with what the store
/// holds as `LISTEN_FDS`, `env` added; waits for its `READY=1` (the
/// `ready`-th in all).
pub(crate) fn start(
    manager: &Manager,
    config: &Path,
    env: &[(&str, &str)],
    ready: usize,
) -> Daemon {
    let args = [OsStr::new("--config"), config.as_os_str()];
    let (command, handoff) = manager.launch(Path::new(BIN), &args, env);
    let daemon = Daemon::spawn(command, &[]);
    handoff.hand_over();
    manager.wait_ready(ready, WAIT);
    daemon
}

/// A config for the unit: the handover on (the default), closes after a
/// SIGTERM that hands nothing over answered quickly.
pub(crate) fn unit_config(dir: &TempDir) -> std::path::PathBuf {
    write_config(dir, &config("", "", ""))
}

fn subscribe(addr: SocketAddr, n: usize) -> Vec<RawClient> {
    (0..n)
        .map(|_| RawClient::open(addr, &format!("{LIVE}/{CHANNEL}")))
        .collect()
}

/// SIGTERM, and the process's exit (0); then waits until the manager has
/// read its `STOPPING=1` (the `stopping`-th in all), sent after everything
/// it stored: the notifications are read by the manager's own thread.
pub(crate) fn stop(daemon: &mut Daemon, manager: &Manager, stopping: usize) {
    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    manager.wait_stopping(stopping, WAIT);
}

#[test]
fn a_restart_through_the_fd_store_keeps_every_subscriber() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-fdstore");
    let config = unit_config(&dir);
    let manager = Manager::new(4096);
    let mut first = start(&manager, &config, &[], 1);
    let addr = first.listening_address();
    let mut subscribers = subscribe(addr, SUBSCRIBERS);
    let mut echo = RawClient::open(addr, ECHO_PATH);
    let mut publisher = Publisher::new(addr);
    assert_eq!(
        publisher.publish_count(CHANNEL, "before"),
        SUBSCRIBERS as u64
    );
    for s in &mut subscribers {
        assert_eq!(s.expect_text(), "before");
    }

    stop(&mut first, &manager, 1);
    assert_eq!(
        manager.stored_count(LISTEN_NAME),
        1,
        "{:?}",
        manager.messages()
    );
    assert_eq!(
        manager.stored_count(STATE_NAME),
        1,
        "{:?}",
        manager.messages()
    );
    // The subscribers, the echo client and the publisher's keep-alive
    // connection.
    manager.wait_stored(CONN_NAME, SUBSCRIBERS + 2, WAIT);

    let mut second = start(&manager, &config, &[], 2);
    assert_eq!(
        publisher.publish_count(CHANNEL, "after"),
        SUBSCRIBERS as u64
    );
    for (i, s) in subscribers.iter_mut().enumerate() {
        assert_eq!(s.expect_text(), "after", "subscriber {i}");
    }
    echo.send_text("still here");
    assert_eq!(echo.expect_text(), "still here");
    // Once serving, the new process takes the state and the connections
    // out of the store (the listener stays).
    manager.wait_stored(STATE_NAME, 0, WAIT);
    manager.wait_stored(CONN_NAME, 0, WAIT);
    let mut newcomer = RawClient::open(addr, ECHO_PATH);
    newcomer.send_text("new");
    assert_eq!(newcomer.expect_text(), "new");
    drop(newcomer);

    stop(&mut second, &manager, 2);
    manager.flush();
}

#[test]
fn connections_that_do_not_fit_the_store_get_1012() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-fdstore-small");
    let config = unit_config(&dir);
    // The listener, the state and 20 connections.
    let room = 20;
    let manager = Manager::new(2 + room);
    let mut first = start(&manager, &config, &[], 1);
    let addr = first.listening_address();
    let mut subscribers = subscribe(addr, 50);

    // The old process closes what does not fit the ordinary way (its
    // shutdown_timeout bounds the wait for the close replies), then exits.
    stop(&mut first, &manager, 1);
    let mut kept = Vec::new();
    let mut closed = 0;
    for mut s in subscribers.drain(..) {
        // By now a subscriber either has its close frame or nothing.
        s.stream.set_nonblocking(true).unwrap();
        let waiting = s.stream.peek(&mut [0u8; 1]).is_ok();
        s.stream.set_nonblocking(false).unwrap();
        if waiting {
            let frame = s.read_server_frame();
            assert_eq!(frame.close_code(), Some(SERVICE_RESTART), "{frame:?}");
            closed += 1;
        } else {
            kept.push(s);
        }
    }
    manager.wait_stored(CONN_NAME, kept.len(), WAIT);
    let stored = manager.stored_count(CONN_NAME);
    eprintln!(
        "store of {}: {stored} connections kept, {closed} closed with 1012",
        2 + room
    );
    assert_eq!(stored, kept.len());
    assert_eq!(stored + closed, 50);
    assert_eq!(stored, room, "every place in the store is used");

    let mut second = start(&manager, &config, &[], 2);
    let mut publisher = Publisher::new(addr);
    assert_eq!(publisher.publish_count(CHANNEL, "kept"), kept.len() as u64);
    for s in &mut kept {
        s.set_read_timeout(Duration::from_secs(5));
        assert_eq!(s.expect_text(), "kept");
    }
    stop(&mut second, &manager, 2);
    manager.flush();
}

#[test]
fn a_state_version_mismatch_through_the_store_closes_with_1012_and_serves_on() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-fdstore-version");
    let config = unit_config(&dir);
    let manager = Manager::new(4096);
    let mut first = start(&manager, &config, &[], 1);
    let addr = first.listening_address();
    let mut subscribers = subscribe(addr, 20);
    stop(&mut first, &manager, 1);
    assert_eq!(
        manager.stored_count(CONN_NAME),
        20,
        "{:?}",
        manager.messages()
    );

    let mut second = start(&manager, &config, &[(STATE_VERSION_ENV, "4294967295")], 2);
    for (i, s) in subscribers.iter_mut().enumerate() {
        let frame = s.read_server_frame();
        assert_eq!(
            frame.close_code(),
            Some(SERVICE_RESTART),
            "subscriber {i}: {frame:?}"
        );
        s.send_close(SERVICE_RESTART, b"");
    }
    let mut back = subscribe(addr, 20);
    let mut publisher = Publisher::new(addr);
    assert_eq!(publisher.publish_count(CHANNEL, "back"), 20);
    for s in &mut back {
        assert_eq!(s.expect_text(), "back");
    }
    stop(&mut second, &manager, 2);
    manager.flush();
}
