//! `reuse_port = true` under socket activation: the socket comes from the
//! service manager with its options, so the setting cannot apply; the
//! daemon serves on the socket all the same and says what to do instead.
//! Here because, like `socket_activation`, it runs wshub under
//! `systemd-socket-activate`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::support::client::RawClient;
use crate::support::daemon::{BIN, Daemon, require_tool};
use crate::support::load::free_port;
use crate::support::tempdir::TempDir;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn reuse_port_on_a_passed_socket_is_reported_with_what_to_set_instead() {
    let _alone = crate::alone();
    let tool = require_tool("systemd-socket-activate");
    let dir = TempDir::new("activate-reuse-port");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "wshub.toml",
        &format!(
            "[[listener]]\naddress = \"{addr}\"\nreuse_port = true\n\n\
             [[route]]\npath = \"/echo\"\nkind = \"echo\"\n"
        ),
    );
    // systemd-socket-activate binds without SO_REUSEPORT and execs wshub on
    // the first connection.
    let mut command = Command::new(tool);
    command
        .arg(format!("--listen={addr}"))
        .arg("--setenv=RUST_LOG=info")
        .arg(BIN)
        .arg("--config")
        .arg(&config);
    let mut daemon = Daemon::spawn(command, &[]);
    daemon.wait_for_log(&format!("Listening on {addr}"));

    let mut client = RawClient::open(addr, "/echo");
    let line = daemon.wait_for_log("reuse_port = true does not apply");
    assert!(
        line.contains("WARN") && line.contains(&addr.to_string()) && line.contains("ReusePort=yes"),
        "{line}"
    );
    client.send_text("served anyway");
    assert_eq!(client.expect_text(), "served anyway");

    daemon.signal(Signal::TERM);
    assert_eq!(client.read_server_frame().close_code(), Some(1001));
    client.send_close(1001, b"");
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.log_text());
}
