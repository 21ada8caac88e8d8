//! The daemon talks to its service manager: `READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `RELOADING=1` and `STOPPING=1` arrive on a `NOTIFY_SOCKET`
//! datagram socket that the test creates; logs take the journal's form
//! when stderr is the journal.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::support::client::RawClient;
use crate::support::daemon::{BIN, Daemon, NotifySocket, config_with};
use crate::support::tempdir::TempDir;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn ready_watchdog_reload_and_stopping_reach_the_notify_socket() {
    let dir = TempDir::new("notify");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut socket = NotifySocket::bind(&dir);
    let mut daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", socket.env_value()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let (_, ready) = socket.expect("READY=1", WAIT);
    assert!(
        ready.contains("STATUS=0 connections, 0 open websockets, 0 channels"),
        "{ready:?}"
    );
    // Ready means listening: a client gets in at once.
    let addr = daemon.listening_address();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect after READY=1");
    daemon.wait_for_log("service watchdog enabled: pinging every 100ms");

    // Pings at half of WATCHDOG_USEC (200 ms): three within a second.
    let (first, _) = socket.expect("WATCHDOG=1", Duration::from_secs(1));
    socket.expect("WATCHDOG=1", Duration::from_secs(1));
    let (third, _) = socket.expect("WATCHDOG=1", Duration::from_secs(1));
    let two_periods = third.duration_since(first);
    assert!(
        two_periods >= Duration::from_millis(150) && two_periods < Duration::from_millis(600),
        "two watchdog periods took {two_periods:?}"
    );

    daemon.signal(Signal::HUP);
    let (_, reloading) = socket.expect("RELOADING=1", WAIT);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    socket.expect("READY=1", WAIT);

    daemon.signal(Signal::TERM);
    let (_, stopping) = socket.expect("STOPPING=1", WAIT);
    assert!(stopping.contains("STATUS=shutting down"), "{stopping:?}");
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn status_line_follows_the_connections() {
    let dir = TempDir::new("status");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut socket = NotifySocket::bind(&dir);
    let mut daemon = Daemon::start(&config, &[("NOTIFY_SOCKET", socket.env_value())]);
    socket.expect("READY=1", WAIT);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/echo");
    // Refreshed every few seconds.
    let (_, status) = socket.expect(
        "STATUS=1 connections, 1 open websockets, 0 channels",
        Duration::from_secs(8),
    );
    assert!(!status.contains("WATCHDOG=1"), "no watchdog was asked for");
    client.send_text("still open");
    assert_eq!(client.expect_text(), "still open");
}

#[test]
fn no_watchdog_pings_when_they_are_meant_for_another_process() {
    let dir = TempDir::new("watchdog-pid");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut socket = NotifySocket::bind(&dir);
    // PID 1 is never the daemon.
    let mut daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", socket.env_value()),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    socket.expect("READY=1", WAIT);
    let later = socket.collect(Duration::from_millis(700));
    assert!(
        later.iter().all(|m| !m.contains("WATCHDOG=1")),
        "unexpected pings: {later:?}"
    );
    daemon.assert_running();
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_daemon_runs() {
    let dir = TempDir::new("no-notify");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut daemon = Daemon::start(&config, &[("WATCHDOG_USEC", "100000")]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/echo");
    client.send_text("hi");
    assert_eq!(client.expect_text(), "hi");
    assert!(
        !daemon.log_text().contains("watchdog"),
        "{}",
        daemon.log_text()
    );
    daemon.signal(Signal::TERM);
    client.read_server_frame();
    client.send_close(1001, b"");
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn journal_logs_carry_syslog_priorities_and_no_timestamps() {
    let dir = TempDir::new("journal");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config);
    let mut daemon = Daemon::spawn_journal(command, &[("RUST_LOG", "")]);
    let line = daemon.wait_for_log("listening on ws://");
    assert!(
        line.starts_with("<6>listening on ws://127.0.0.1:"),
        "{line:?}"
    );
    let addr = daemon.listening_address_from(&line);

    // A warning (listeners cannot move) and an error (broken file).
    dir.write(
        "wshub.toml",
        "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/echo\"\nkind = \"echo\"\n",
    );
    daemon.signal(Signal::HUP);
    let warning = daemon.wait_for_log("listener addresses cannot change");
    assert!(warning.starts_with("<4>"), "{warning:?}");
    dir.write("wshub.toml", "max_connections = \"lots\"\n");
    daemon.signal(Signal::HUP);
    let error = daemon.wait_for_log("reload failed");
    assert!(error.starts_with("<3>"), "{error:?}");
    // The parse error spans several lines; each keeps the error priority.
    let detail = daemon.wait_for_log("invalid type");
    assert!(detail.starts_with("<3>"), "{detail:?}");

    let mut client = RawClient::open(addr, "/echo");
    client.send_text("journal");
    assert_eq!(client.expect_text(), "journal");
    for line in daemon.log_text().lines() {
        assert!(
            line.len() > 3 && line.starts_with('<') && line.as_bytes()[2] == b'>',
            "not a journal line: {line:?}"
        );
        assert!(
            !line.contains("Z INFO") && !line.starts_with("<6>["),
            "{line:?}"
        );
    }
}

#[test]
fn a_stale_journal_stream_keeps_the_plain_format() {
    let dir = TempDir::new("stale-journal");
    let config = dir.write("wshub.toml", &config_with(""));
    // Inherited from some parent whose stderr was the journal; ours is not.
    let mut daemon = Daemon::start(&config, &[("JOURNAL_STREAM", "1:1")]);
    let line = daemon.wait_for_log("listening on ws://");
    assert!(line.starts_with('[') && line.contains("INFO"), "{line:?}");
}
