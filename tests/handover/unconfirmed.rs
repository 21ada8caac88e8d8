//! A new process touches no socket before the old one confirms: until
//! then the old one may still serve on. Here the confirmation never comes
//! (a relay between the two, standing in for any failure at that point,
//! passes the hello and the state but not the new process's answer), and
//! the new config lacks a route one client is on: the new process must not
//! have sent that client its close frame, since the old one serves it on.
//! Once the old one does confirm, the client gets it (1012).

use std::path::Path;

use rustix::process::Signal;

use crate::common::config;
use crate::support::client::RawClient;
use crate::support::daemon::{BIN, Daemon};
use crate::support::handover::{BinaryCopy, FAILED, HANDOVER_TIMEOUT, upgrade, wait_for_nth};
use crate::support::tempdir::TempDir;

/// Started in place of the new binary: starts the real one on its own
/// channel and relays the exchange with the old process (header, payload,
/// descriptor chunks: the framing of `handover::wire`), up to the new
/// process's answer, which it keeps; then it hangs up on both.
const RELAY: &str = r#"
import os, socket, struct, subprocess, sys
binary, config = sys.argv[1], sys.argv[2]
old = socket.socket(fileno=int(os.environ["WSHUB_HANDOVER_FD"]))
ours, theirs = socket.socketpair()
theirs.set_inheritable(True)
env = dict(os.environ, WSHUB_HANDOVER_FD=str(theirs.fileno()))
child = subprocess.Popen([binary, "--config", config], env=env, pass_fds=[theirs.fileno()])
theirs.close()

def read_exact(s, n):
    data, fds = b"", []
    while len(data) < n:
        more, got, _, _ = socket.recv_fds(s, n - len(data), 253)
        if not more:
            sys.exit("relay: the channel closed early")
        data, fds = data + more, fds + got
    return data, fds

def relay(src, dst):
    header, _ = read_exact(src, 20)
    length, count = struct.unpack("<QI", header[8:20])
    payload = read_exact(src, length)[0] if length else b""
    dst.sendall(header + payload)
    passed = 0
    while passed < count:
        marker, fds = read_exact(src, 1)
        socket.send_fds(dst, [marker], fds)
        for fd in fds:
            os.close(fd)
        passed += len(fds)

relay(ours, old)
relay(old, ours)
read_exact(ours, 20)
old.close()
ours.close()
child.wait()
"#;

#[test]
fn the_new_process_writes_nothing_before_the_old_one_confirms() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-unconfirmed");
    let binary = BinaryCopy::new();
    let gone_route = "\n[[route]]\npath = \"/gone\"\nkind = \"echo\"\n";
    let first = dir.write("first.toml", &(config("", "", "") + gone_route));
    let second = dir.write("second.toml", &config("", "", ""));
    let command = binary.command(&[Path::new("--config"), &first]);
    let mut daemon = Daemon::spawn(command, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/gone");
    client.send_text("before");
    assert_eq!(client.expect_text(), "before");

    let relay = dir.write("relay.py", RELAY);
    binary.replace_with_script(&format!(
        "exec python3 {} {BIN} {}",
        relay.display(),
        second.display()
    ));
    daemon.signal(Signal::USR2);
    let failed = wait_for_nth(&daemon, FAILED, 1, HANDOVER_TIMEOUT);
    eprintln!("{failed}");
    binary.restore();

    // The old process serves on, and the client's stream is untouched.
    client.send_text("after");
    assert_eq!(client.expect_text(), "after", "log:\n{}", daemon.log_text());

    // The real binary on the second config: it takes over, and the client
    // of the route it lacks gets the ordinary close.
    binary.replace_with_script(&format!("exec {BIN} --config {}", second.display()));
    let mut handover = upgrade(&daemon, daemon.pid());
    binary.restore();
    let frame = client.read_server_frame();
    assert_eq!(frame.close_code(), Some(1012), "{frame:?}");
    handover.successor.signal(Signal::INT);
    handover.successor.wait_exit(HANDOVER_TIMEOUT);
}
