//! Several `wshub` processes on one port (`reuse_port = true`, SO_REUSEPORT),
//! run as real daemons on loopback: both start, the kernel hands clients to
//! both, the survivor of a killed one takes every new client, and without
//! the option the second process refuses to start. Also how a reload and
//! `--check-config` treat the setting.
//!
//! Each daemon has a second listener of its own (port 0, not shared), so the
//! test can read that one process's `/metrics`: a request to the shared port
//! could reach either.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::support::client::{ECHO_PATH, RawClient};
use crate::support::daemon::{BIN, Daemon};
use crate::support::http::{metric, wait_for_metric};
use crate::support::tempdir::TempDir;

/// Clients connected to the shared port while both processes run: enough
/// that each process gets some (all on one would happen with probability
/// 2^-199 were the spread fair; the kernel hashes the client's port).
const CLIENTS: usize = 200;
/// Clients connected after one process is killed.
const LATE_CLIENTS: usize = 50;
/// Open echo connections of one process.
const ECHO_OPEN: &str = "wshub_websocket_connections{route=\"/echo\"}";
/// How long a process may take to show a connection in its gauges.
const SETTLE: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address")
}

/// A config with a listener on `shared` (with `reuse_port` as given), a
/// private listener on a port of its own, and an echo route.
fn config(shared: SocketAddr, reuse_port: bool) -> String {
    format!(
        "[[listener]]\naddress = \"{shared}\"\nreuse_port = {reuse_port}\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"{ECHO_PATH}\"\nkind = \"echo\"\n"
    )
}

/// A daemon with its private address (for its own `/metrics`).
struct Node {
    daemon: Daemon,
    private: SocketAddr,
}

impl Node {
    /// Starts a daemon on `config` and waits until both listeners are up.
    fn start(dir: &TempDir, name: &str, shared: SocketAddr) -> Node {
        let path = dir.write(name, &config(shared, true));
        let mut daemon = Daemon::start(&path, &[]);
        let first = daemon.listening_address();
        let second = daemon.listening_address();
        let (public, private) = if first == shared {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(public, shared, "{}", daemon.log_text());
        Node { daemon, private }
    }

    /// Open echo connections held by this process alone.
    fn open(&self) -> u64 {
        metric(self.private, ECHO_OPEN)
    }
}

fn assert_echoes(client: &mut RawClient, text: &str) {
    client.send_text(text);
    assert_eq!(client.expect_text(), text);
}

#[test]
fn two_processes_share_a_port_and_the_survivor_takes_every_new_client() {
    let dir = TempDir::new("reuse-port");
    let shared = free_port();
    let mut a = Node::start(&dir, "a.toml", shared);
    let mut b = Node::start(&dir, "b.toml", shared);

    // A client cannot choose its process: connect many, each completing its
    // handshake, and keep them open.
    let mut clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| RawClient::open(shared, ECHO_PATH))
        .collect();
    let (on_a, on_b) = (a.open(), b.open());
    assert_eq!(
        on_a + on_b,
        CLIENTS as u64,
        "every client is held by one of the two processes"
    );
    assert!(
        on_a > 0 && on_b > 0,
        "the kernel gave every client to one process: {on_a} on a, {on_b} on b"
    );
    for (i, client) in clients.iter_mut().enumerate().step_by(37) {
        assert_echoes(client, &format!("client {i}"));
    }

    // Kill one outright: its clients are cut, the other process's stay.
    a.daemon.signal(Signal::KILL);
    a.daemon.wait_exit(SETTLE);
    assert_eq!(b.open(), on_b, "the survivor lost clients");
    b.daemon.assert_running();

    // Every new client now goes to the survivor, and all of them get in.
    let mut late: Vec<RawClient> = (0..LATE_CLIENTS)
        .map(|_| RawClient::open(shared, ECHO_PATH))
        .collect();
    for (i, client) in late.iter_mut().enumerate() {
        assert_echoes(client, &format!("late {i}"));
    }
    let want = on_b + LATE_CLIENTS as u64;
    assert_eq!(wait_for_metric(b.private, ECHO_OPEN, want, SETTLE), want);
}

#[test]
fn without_reuse_port_a_second_process_cannot_start() {
    let dir = TempDir::new("reuse-port-off");
    // Neither has it; then only the first; then only the second.
    for (first, second) in [(false, false), (true, false), (false, true)] {
        let shared = free_port();
        let path = dir.write("first.toml", &config(shared, first));
        let mut running = Daemon::start(&path, &[]);
        running.listening_address();
        let path = dir.write("second.toml", &config(shared, second));
        let mut refused = Daemon::start(&path, &[]);
        let status = refused.wait_exit(SETTLE);
        let log = refused.log_text();
        assert_eq!(status.code(), Some(1), "{first}/{second}: {log}");
        assert!(
            log.contains(&format!("cannot listen on {shared}"))
                && log.contains("Address already in use")
                && log.contains("reuse_port = true"),
            "{first}/{second}: {log}"
        );
        // The first one is untouched.
        running.assert_running();
        assert_echoes(&mut RawClient::open(shared, ECHO_PATH), "first");
    }
}

#[test]
fn reuse_port_passes_check_config_and_a_change_needs_a_restart() {
    let dir = TempDir::new("reuse-port-reload");
    let shared = free_port();
    let on = dir.write("on.toml", &config(shared, true));
    let status = Command::new(BIN)
        .arg("--check-config")
        .arg(&on)
        .output()
        .expect("run --check-config");
    assert!(status.status.success(), "{status:?}");
    let port_zero = dir.write(
        "zero.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\nreuse_port = true\n",
    );
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(&port_zero)
        .output()
        .expect("run --check-config");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reuse_port") && stderr.contains("fixed port"),
        "{stderr}"
    );

    // A running daemon without it: turning it on is reported, not applied.
    let path = dir.write("wshub.toml", &config(shared, false));
    let mut daemon = Daemon::start(&path, &[]);
    daemon.listening_address();
    let mut client = RawClient::open(shared, ECHO_PATH);
    dir.write("wshub.toml", &config(shared, true));
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("restart wshub to apply them");
    assert!(
        line.contains(&format!("in the file: {shared} (reuse_port)")),
        "{line}"
    );
    daemon.wait_for_log("reload done");
    assert_echoes(&mut client, "same socket");
    // Still the socket without SO_REUSEPORT: a second process is refused.
    let mut second = Daemon::start(&on, &[]);
    assert_eq!(
        second.wait_exit(SETTLE).code(),
        Some(1),
        "{}",
        second.log_text()
    );
}
