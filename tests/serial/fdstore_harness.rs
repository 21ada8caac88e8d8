//! The fd-store manager harness (`support::fdstore`) against small fakes:
//! today's wshub socket-activated by it, Python processes that push and
//! remove descriptors, and a full store of 19,000 descriptors passed on to
//! the next start. Here because the last one holds 19,000 descriptors.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::client::RawClient;
use crate::support::daemon::{BIN, Daemon, config_with};
use crate::support::fdstore::Manager;
use crate::support::tempdir::TempDir;

const WAIT: Duration = Duration::from_secs(20);

fn echo_once(addr: SocketAddr, text: &str) {
    let mut client = RawClient::open(addr, "/echo");
    client.send_text(text);
    assert_eq!(client.expect_text(), text);
    client.send_close(1000, b"");
    assert_eq!(client.read_server_frame().close_code(), Some(1000));
}

/// Waits at most [`WAIT`] for `child` and returns what it printed; fails
/// the test when it fails.
fn output(mut child: Child) -> String {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("poll the child").is_none() {
        assert!(Instant::now() < deadline, "the child did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child
        .wait_with_output()
        .expect("collect the child's output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the child failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts `python3 -c script` through the manager, stdout captured.
fn python(manager: &Manager, script: &str) -> Child {
    let args: [&OsStr; 2] = ["-c".as_ref(), script.as_ref()];
    let (mut command, handoff) = manager.launch(Path::new("python3"), &args, &[]);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    drop(command);
    handoff.hand_over();
    child
}

#[test]
fn socket_activated_wshub_serves_across_two_starts() {
    let _alone = crate::alone();
    let dir = TempDir::new("harness");
    let config = dir.write("wshub.toml", &config_with("shutdown_timeout = \"3s\""));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut manager = Manager::new(16);
    manager.add_listener("wshub.socket", listener);
    let args: [&OsStr; 2] = ["--config".as_ref(), config.as_os_str()];

    for start in 1..=2 {
        let (command, handoff) = manager.launch(Path::new(BIN), &args, &[]);
        let mut daemon = Daemon::spawn(command, &[]);
        handoff.hand_over();
        manager.wait_ready(start, WAIT);
        daemon.wait_for_log("serving on 1 socket(s) passed by the service manager");
        assert_eq!(daemon.listening_address(), addr, "start {start}");
        echo_once(addr, &format!("start {start}"));
        daemon.signal(Signal::TERM);
        manager.wait_stopping(start, WAIT);
        assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.log_text());
    }
    // Each SIGTERM stores the state (channel positions and history, no
    // connection was open); each start takes it over and empties the store,
    // so the last stop's state is what is left.
    assert_eq!(manager.stored_names(), ["wshub-state"]);
}

/// Pushes memfds (each holding its own label) with the notifications
/// systemd's store understands, then says READY=1.
const PUSHER: &str = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
def send(text, labels=()):
    fds = []
    for label in labels:
        fd = os.memfd_create(label)
        os.write(fd, label.encode())
        fds.append(fd)
    socket.send_fds(s, [text.encode()], fds)
    for fd in fds:
        os.close(fd)
send("FDSTORE=1\nFDNAME=a\n", ["a0", "a1", "a2"])
send("FDSTORE=1\nFDNAME=b\nFDPOLL=0\n", ["b0", "b1"])
send("FDSTORE=1\n", ["s0"])
send("STATUS=not stored\n", ["x0"])
send("FDSTOREREMOVE=1\nFDNAME=a\n")
send("FDSTORE=1\nFDNAME=c\n", ["c%d" % i for i in range(8)])
send("READY=1\n")
print("store", os.environ.get("FDSTORE"), "passed", os.environ.get("LISTEN_FDS"))
"#;

/// Prints what it was passed: each descriptor's name and content.
const READER: &str = r#"
import os
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not this process"
names = os.environ["LISTEN_FDNAMES"].split(":")
assert len(names) == int(os.environ["LISTEN_FDS"])
for i, name in enumerate(names):
    print("%s=%s" % (name, os.pread(3 + i, 100, 0).decode()))
try:
    os.fstat(3 + len(names))
    print("an extra descriptor is open")
except OSError:
    pass
print("store", os.environ["FDSTORE"])
"#;

#[test]
fn store_bookkeeping_follows_the_notifications() {
    let _alone = crate::alone();
    let manager = Manager::new(8);
    let pushed = output(python(&manager, PUSHER));
    assert_eq!(pushed.trim(), "store 8 passed None");
    manager.wait_ready(1, WAIT);
    // a was removed; 2 b + 1 "stored" + 5 of the 8 c fill the 8 places.
    assert_eq!(manager.stored_names(), ["b", "stored", "c"]);
    assert_eq!(manager.stored_count("b"), 2);
    assert_eq!(manager.stored_count("stored"), 1);
    assert_eq!(manager.stored_count("c"), 5);
    assert_eq!(manager.stored_count("a"), 0);
    assert_eq!((manager.rejected(), manager.stray()), (3, 1));
    assert!(manager.poll_disabled("b"));
    assert!(!manager.poll_disabled("c"));

    let read = output(python(&manager, READER));
    let expected = "b=b0\nb=b1\nstored=s0\nc=c0\nc=c1\nc=c2\nc=c3\nc=c4\nstore 8\n";
    assert_eq!(read, expected);
    assert_eq!(manager.stored_total(), 8, "passing on keeps the store");
    manager.flush();
    assert_eq!(manager.stored_total(), 0);
}

/// Pushes one socket, a copy of it (a duplicate the store does not keep),
/// then 18,999 more sockets, 253 per notification.
const BULK_PUSHER: &str = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
socket.send_fds(s, [b"FDSTORE=1\nFDNAME=c\nFDPOLL=0\n"], [first.fileno()])
socket.send_fds(s, [b"FDSTORE=1\nFDNAME=c\nFDPOLL=0\n"], [os.dup(first.fileno())])
left = 18999
while left:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(min(left, 253))]
    socket.send_fds(s, [b"FDSTORE=1\nFDNAME=c\nFDPOLL=0\n"], [x.fileno() for x in socks])
    left -= len(socks)
    for x in socks:
        x.close()
"#;

/// Checks 19,000 descriptors, all different sockets, arrived at 3, 4, ….
const BULK_READER: &str = r#"
import os
n = int(os.environ["LISTEN_FDS"])
names = os.environ["LISTEN_FDNAMES"].split(":")
assert n == len(names) == 19000 and set(names) == {"c"}, (n, set(names))
inodes = {os.fstat(3 + i).st_ino for i in range(n)}
assert len(inodes) == n, len(inodes)
print("ok", n)
"#;

#[test]
fn a_full_store_of_19000_descriptors_is_passed_on() {
    let _alone = crate::alone();
    let manager = Manager::new(19_000);
    output(python(&manager, BULK_PUSHER));
    let bulk = 2 + 18_999usize.div_ceil(253);
    manager.wait_messages(bulk, WAIT);
    assert_eq!(manager.stored_count("c"), 19_000);
    assert_eq!(manager.duplicates(), 1);
    assert!(manager.poll_disabled("c"));
    let started = Instant::now();
    let read = output(python(&manager, BULK_READER));
    assert_eq!(read.trim(), "ok 19000");
    eprintln!(
        "19,000 descriptors passed on and checked in {:?}",
        started.elapsed()
    );
    assert_eq!(manager.rejected(), 0);
    // One more is refused and closed, as systemd does with a full store.
    let one_more = r#"
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
socket.send_fds(s, [b"FDSTORE=1\nFDNAME=extra\n"], [0])
"#;
    output(python(&manager, one_more));
    manager.wait_messages(bulk + 1, WAIT);
    assert_eq!((manager.rejected(), manager.stored_count("extra")), (1, 0));
}

/// Pushes a connected TCP socket and a UDP socket as connections, and a
/// memfd as the state, as a handover would (the UDP one is a mistake the
/// next start must survive).
const HANDOVER_PUSHER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
tcp = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
state = os.memfd_create("wshub-state")
os.write(state, b"state")
socket.send_fds(s, [b"FDSTORE=1\nFDNAME=c\nFDPOLL=0\n"], [tcp.fileno(), udp.fileno()])
socket.send_fds(s, [b"FDSTORE=1\nFDNAME=wshub-state\n"], [state])
"#;

#[test]
fn named_descriptors_are_sorted_by_the_next_start() {
    let _alone = crate::alone();
    let dir = TempDir::new("harness-names");
    let config = dir.write("wshub.toml", &config_with("shutdown_timeout = \"3s\""));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut manager = Manager::new(16);
    manager.add_listener("wshub.socket", listener);
    let port = addr.port().to_string();
    let args: [&OsStr; 3] = ["-c".as_ref(), HANDOVER_PUSHER.as_ref(), port.as_ref()];
    output(manager.start(Path::new("python3"), &args, &[]));
    manager.wait_stored("wshub-state", 1, WAIT);
    assert_eq!(manager.stored_names(), ["c", "wshub-state"]);

    // Fds 3 (the listener), 4 and 5 (the connections), 6 (the state).
    let args: [&OsStr; 2] = ["--config".as_ref(), config.as_os_str()];
    let (command, handoff) = manager.launch(Path::new(BIN), &args, &[]);
    let mut daemon = Daemon::spawn(command, &[]);
    handoff.hand_over();
    manager.wait_ready(1, WAIT);
    daemon.wait_for_log("closing inherited connection 5: fd 5 is not a valid tcp socket");
    daemon.wait_for_log("serving on 1 socket(s) passed by the service manager");
    echo_once(addr, "sorted");
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.log_text());
}
