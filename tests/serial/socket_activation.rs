//! Socket activation: when the service manager passes listening sockets
//! (`LISTEN_FDS`/`LISTEN_PID`), the daemon serves on them instead of
//! binding its `[[listener]]` addresses.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
use rustix::process::Signal;

use crate::support::client::RawClient;
use crate::support::daemon::{BIN, Daemon, NotifySocket, config_with, require_tool};
use crate::support::load::free_port;
use crate::support::tempdir::TempDir;

const WAIT: Duration = Duration::from_secs(10);

/// Serialises the spawns in this file: one test clears close-on-exec on a
/// socket for a moment, and no other test's child may inherit it then.
static SPAWN: Mutex<()> = Mutex::new(());

/// A config whose own listener must stay unused: socket activation wins.
fn config(dir: &TempDir) -> std::path::PathBuf {
    dir.write("wshub.toml", &config_with("shutdown_timeout = \"3s\""))
}

fn echo_once(addr: SocketAddr, text: &str) {
    let mut client = RawClient::open(addr, "/echo");
    client.send_text(text);
    assert_eq!(client.expect_text(), text);
    client.send_close(1000, b"");
    assert_eq!(client.read_server_frame().close_code(), Some(1000));
}

#[test]
fn serves_on_the_socket_from_systemd_socket_activate() {
    let _alone = crate::alone();
    let tool = require_tool("systemd-socket-activate");
    let dir = TempDir::new("activate");
    let config = config(&dir);
    let mut notify = NotifySocket::bind(&dir);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // systemd-socket-activate listens, and on the first connection execs
    // wshub in its own process with the socket as fd 3, LISTEN_FDS=1 and
    // LISTEN_PID set to that process.
    let mut command = Command::new(tool);
    command
        .arg(format!("--listen={addr}"))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.env_value()))
        .arg("--setenv=RUST_LOG=info")
        .arg(BIN)
        .arg("--config")
        .arg(&config);
    let mut daemon = {
        let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        Daemon::spawn(command, &[])
    };
    daemon.wait_for_log(&format!("Listening on {addr}"));

    // This connection is what starts the daemon; it is served once ready.
    let mut first = RawClient::open(addr, "/echo");
    notify.expect("READY=1", WAIT);
    daemon.wait_for_log("serving on 1 socket(s) passed by the service manager");
    let listening = daemon.listening_address();
    assert_eq!(
        listening, addr,
        "serves on the passed socket, not [[listener]]"
    );
    first.send_text("activated");
    assert_eq!(first.expect_text(), "activated");
    echo_once(addr, "second client");

    daemon.signal(Signal::TERM);
    assert_eq!(first.read_server_frame().close_code(), Some(1001));
    first.send_close(1001, b"");
    first.expect_eof();
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn serves_on_an_inherited_fd_3_with_listen_pid() {
    let _alone = crate::alone();
    // The test's own harness: a listening socket moved to fd 3 by bash,
    // which sets LISTEN_PID to its own pid and then execs wshub in place.
    let bash = require_tool("bash");
    let dir = TempDir::new("inherit");
    let config = config(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let script = if fd == 3 {
        "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\"".to_owned()
    } else {
        format!("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\" 3<&{fd} {fd}<&-")
    };
    let mut command = Command::new(bash);
    command
        .arg("-c")
        .arg(script)
        .arg("wshub")
        .arg(BIN)
        .arg("--config")
        .arg(&config);
    let mut daemon = {
        let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let flags = fcntl_getfd(&listener).unwrap();
        fcntl_setfd(&listener, flags - FdFlags::CLOEXEC).unwrap();
        let daemon = Daemon::spawn(command, &[]);
        fcntl_setfd(&listener, flags).unwrap();
        daemon
    };
    // The daemon holds its own copy now.
    drop(listener);
    daemon.wait_for_log("serving on 1 socket(s) passed by the service manager");
    assert_eq!(daemon.listening_address(), addr);
    echo_once(addr, "inherited");

    // Reloading a changed [[listener]] only notes that it is not used.
    dir.write(
        "wshub.toml",
        &config_with("shutdown_timeout = \"3s\"\nmax_connections = 9")
            .replace("127.0.0.1:0", "127.0.0.1:1"),
    );
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("the listening sockets come from the service manager");
    daemon.wait_for_log("reload: max_connections: 100000 -> 9");
    echo_once(addr, "after reload");

    daemon.signal(Signal::TERM);
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn sockets_meant_for_another_process_are_ignored() {
    let _alone = crate::alone();
    let dir = TempDir::new("other-pid");
    let config = config(&dir);
    let mut daemon = {
        let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        Daemon::start(&config, &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")])
    };
    daemon.wait_for_log("ignoring LISTEN_FDS: the sockets are meant for process 1");
    // It binds its [[listener]] instead.
    let addr = daemon.listening_address();
    assert_ne!(addr.port(), 0);
    echo_once(addr, "bound itself");
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_tcp_socket_is_an_error() {
    let _alone = crate::alone();
    let bash = require_tool("bash");
    let dir = TempDir::new("bad-fd");
    let config = config(&dir);
    // fd 3 is a regular file here.
    let mut command = Command::new(bash);
    command
        .arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\" 3<\"$0\"")
        .arg(&config)
        .arg(BIN)
        .arg("--config")
        .arg(&config);
    let mut daemon = {
        let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        Daemon::spawn(command, &[])
    };
    let status = daemon.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("inherited socket 3 cannot be used"), "{log}");
}
