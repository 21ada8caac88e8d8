//! Signals sent to the real `wshub` binary: SIGTERM/SIGINT drain every
//! connection and exit 0, SIGHUP reloads the config file without dropping
//! connections.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::client::{RawClient, fresh_key, op, upgrade_request};
use crate::support::daemon::{Daemon, config_with};
use crate::support::tempdir::TempDir;

/// Echoes one message on `client`, proving the connection still works.
fn assert_echoes(client: &mut RawClient, text: &str) {
    client.send_text(text);
    assert_eq!(client.expect_text(), text);
}

#[test]
fn sigterm_closes_200_clients_with_1001_and_exits_0() {
    const CLIENTS: usize = 200;
    let timeout = Duration::from_secs(5);
    let dir = TempDir::new("sigterm");
    let config = dir.write("wshub.toml", &config_with("shutdown_timeout = \"5s\""));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| RawClient::open(addr, "/echo"))
        .collect();
    assert_echoes(&mut clients[0], "before the signal");
    // A client still in the HTTP phase is turned away too.
    let mut http_client = RawClient::connect(addr);

    let start = Instant::now();
    daemon.signal(Signal::TERM);
    for (i, client) in clients.iter_mut().enumerate() {
        let frame = client.read_server_frame();
        assert_eq!(frame.opcode, op::CLOSE, "client {i}: {frame:?}");
        assert_eq!(frame.close_code(), Some(1001), "client {i}");
        assert_eq!(frame.close_reason(), "going away", "client {i}");
        if i == 0 {
            // Nothing new is answered once the close is sent.
            client.send_text("after the close");
        }
        client.send_close(1001, b"");
    }
    // The listener is closed before the first close frame goes out.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "a new connection was accepted during shutdown"
    );
    for client in &mut clients {
        client.expect_eof();
    }
    http_client.expect_eof();
    drop(http_client);
    let status = daemon.wait_exit(timeout);
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    assert!(
        elapsed < timeout,
        "took {elapsed:?}, shutdown_timeout is {timeout:?}"
    );
    let log = daemon.log_text();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("every connection is closed"), "{log}");
}

#[test]
fn sigint_drains_like_sigterm() {
    let dir = TempDir::new("sigint");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/echo");
    daemon.signal(Signal::INT);
    let frame = client.read_server_frame();
    assert_eq!(frame.close_code(), Some(1001));
    client.send_close(1001, b"");
    client.expect_eof();
    assert_eq!(daemon.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn clients_that_never_answer_are_dropped_at_shutdown_timeout() {
    let timeout = Duration::from_millis(1500);
    let dir = TempDir::new("timeout");
    let config = dir.write(
        "wshub.toml",
        &config_with("shutdown_timeout = \"1500ms\"\nclose_timeout = \"1m\""),
    );
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut clients: Vec<RawClient> = (0..5).map(|_| RawClient::open(addr, "/echo")).collect();
    let start = Instant::now();
    daemon.signal(Signal::TERM);
    for client in &mut clients {
        assert_eq!(client.read_server_frame().close_code(), Some(1001));
    }
    // No client answers: the daemon waits out shutdown_timeout, then exits 0.
    let status = daemon.wait_exit(timeout + Duration::from_secs(3));
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "{elapsed:?}"
    );
    daemon.wait_for_log("shutdown_timeout (1s 500ms) reached with 5 connections still open");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let dir = TempDir::new("second");
    let config = dir.write("wshub.toml", &config_with("shutdown_timeout = \"60s\""));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut clients: Vec<RawClient> = (0..3).map(|_| RawClient::open(addr, "/echo")).collect();
    daemon.signal(Signal::TERM);
    for client in &mut clients {
        // Read the close but never answer it.
        assert_eq!(client.read_server_frame().close_code(), Some(1001));
    }
    let start = Instant::now();
    daemon.signal(Signal::TERM);
    let status = daemon.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(3));
    daemon.wait_for_log("SIGTERM again: exiting now with 3 connections still open");
}

#[test]
fn shutdown_spread_paces_the_closes_and_1012_can_be_sent() {
    const CLIENTS: usize = 20;
    let spread = Duration::from_secs(2);
    let dir = TempDir::new("spread");
    let config = dir.write(
        "wshub.toml",
        &config_with(
            "shutdown_timeout = \"6s\"\nshutdown_spread = \"2s\"\nshutdown_close_code = 1012",
        ),
    );
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| RawClient::open(addr, "/echo"))
        .collect();
    let start = Instant::now();
    daemon.signal(Signal::TERM);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                client.set_read_timeout(Duration::from_secs(10));
                let frame = client.read_server_frame();
                let at = Instant::now();
                assert_eq!(frame.opcode, op::CLOSE);
                assert_eq!(frame.close_code(), Some(1012));
                assert_eq!(frame.close_reason(), "service restart");
                client.send_close(1012, b"");
                client.expect_eof();
                at
            })
        })
        .collect();
    let mut arrivals: Vec<Duration> = readers
        .into_iter()
        .map(|r| r.join().expect("client thread").duration_since(start))
        .collect();
    arrivals.sort();
    let first = arrivals[0];
    let last = arrivals[CLIENTS - 1];
    // Close i of n goes out at spread * i / n: the first at once, the last
    // at 1.9 s.
    assert!(first < Duration::from_millis(500), "{arrivals:?}");
    assert!(
        last - first >= spread * 3 / 4 && last <= spread + Duration::from_millis(500),
        "closes were not spread over {spread:?}: {arrivals:?}"
    );
    // Not all in one burst: some arrive in each half of the window.
    let early = arrivals.iter().filter(|a| **a < spread / 2).count();
    assert!(early > 0 && early < CLIENTS, "{arrivals:?}");
    assert_eq!(daemon.wait_exit(Duration::from_secs(6)).code(), Some(0));
    daemon.wait_for_log("closing 20 websockets with 1012 (service restart) spread over 2s");
}

#[test]
fn sighup_lowered_limit_applies_to_new_connections_while_old_ones_stay() {
    let dir = TempDir::new("limit");
    let config = dir.write("wshub.toml", &config_with("max_connections = 50"));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut old: Vec<RawClient> = (0..3).map(|_| RawClient::open(addr, "/echo")).collect();

    dir.write("wshub.toml", &config_with("max_connections = 3"));
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload: max_connections: 50 -> 3");
    daemon.wait_for_log("reload done");

    // A new connection is over the limit now.
    let mut refused = RawClient::connect(addr);
    refused.send(upgrade_request("/echo", &addr.to_string(), &fresh_key()).as_bytes());
    let response = refused.read_http_response();
    assert_eq!(response.status, 503, "{response:?}");
    // The connections made before the reload are untouched.
    for (i, client) in old.iter_mut().enumerate() {
        assert_echoes(client, &format!("still here {i}"));
    }

    // Raising it again lets new clients in.
    dir.write("wshub.toml", &config_with("max_connections = 4"));
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload: max_connections: 3 -> 4");
    daemon.wait_for_log("reload done");
    let mut new = RawClient::open(addr, "/echo");
    assert_echoes(&mut new, "new client");
    daemon.assert_running();
}

#[test]
fn sighup_changes_routes_and_log_level_without_dropping_connections() {
    let dir = TempDir::new("routes");
    let config = dir.write("wshub.toml", &config_with(""));
    // RUST_LOG unset: the config's log_level alone decides the level.
    let mut daemon = Daemon::start(&config, &[("RUST_LOG", "")]);
    let addr = daemon.listening_address();
    let mut on_echo = RawClient::open(addr, "/echo");

    dir.write(
        "wshub.toml",
        "log_level = \"debug\"\nidle_timeout = \"10m\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/chat\"\nkind = \"echo\"\n",
    );
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload: idle_timeout: 2m -> 10m");
    daemon.wait_for_log("reload: log_level: unset -> debug");
    daemon.wait_for_log("route \"/echo\" (echo) was removed");
    daemon.wait_for_log("route \"/chat\" (echo) added");
    daemon.wait_for_log("reload done: 4 changes applied, 1 connections kept");

    // The open connection on the removed route keeps working.
    assert_echoes(&mut on_echo, "route removed under me");
    // New connections see the new table.
    let mut gone = RawClient::connect(addr);
    gone.send(upgrade_request("/echo", &addr.to_string(), &fresh_key()).as_bytes());
    assert_eq!(gone.read_http_response().status, 404);
    let mut chat = RawClient::open(addr, "/chat");
    assert_echoes(&mut chat, "new route");
    // Debug logging is on now.
    daemon.wait_for_log(" from 127.0.0.1:");
    assert_echoes(&mut on_echo, "still here");
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_config_and_serves_on() {
    let dir = TempDir::new("broken");
    let config = dir.write("wshub.toml", &config_with("max_connections = 10"));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/echo");

    // A syntax error, a validation error, and a missing file.
    dir.write("wshub.toml", "max_connections = \"lots\"\n");
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("reload failed");
    assert!(
        line.contains("the running config stays in force") && line.contains("line 1"),
        "{line}"
    );
    assert_echoes(&mut client, "after a syntax error");

    dir.write(
        "wshub.toml",
        &config_with("shutdown_timeout = \"1s\"\nshutdown_spread = \"2s\""),
    );
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("reload failed");
    assert!(line.contains("shutdown_spread"), "{line}");
    assert!(line.contains("wshub.toml"), "names the file: {line}");

    std::fs::remove_file(&config).unwrap();
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("reload failed");
    assert!(line.contains("cannot read"), "{line}");

    // Still serving, old and new clients alike, with the old limit.
    assert_echoes(&mut client, "after three failed reloads");
    let mut fresh = RawClient::open(addr, "/echo");
    assert_echoes(&mut fresh, "new client");
    daemon.assert_running();

    // A valid file again: nothing had changed in between.
    dir.write("wshub.toml", &config_with("max_connections = 10"));
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload done: no changes");
}

#[test]
fn sighup_cannot_move_listeners_and_says_so() {
    let dir = TempDir::new("listeners");
    let config = dir.write("wshub.toml", &config_with(""));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/echo");

    dir.write(
        "wshub.toml",
        "max_connections = 77\n[[listener]]\naddress = \"127.0.0.1:1\"\n\
         [[route]]\npath = \"/echo\"\nkind = \"echo\"\n",
    );
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("listener addresses cannot change while running");
    assert!(
        line.contains("127.0.0.1:1") && line.contains("WARN"),
        "{line}"
    );
    // Everything else was applied.
    daemon.wait_for_log("reload: max_connections: 100000 -> 77");
    daemon.wait_for_log("reload done");
    assert_echoes(&mut client, "same listener");
    let mut fresh = RawClient::open(addr, "/echo");
    assert_echoes(&mut fresh, "still on the old address");
}
