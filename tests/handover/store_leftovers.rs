//! What a start finds in the file descriptor store besides a usable state:
//! connections stored without one (a restart whose state never reached the
//! store, after its connections did). The store keeps its own copy of each
//! socket until told to drop it, so the new process must empty the store of
//! them as well as close its own copies: otherwise their clients wait for
//! ever, and every later start is handed them again.

use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use wshub::daemon::fdstore::CONN_NAME;

use crate::support::fdstore::Manager;
use crate::support::tempdir::TempDir;
use crate::systemd::{WAIT, start, stop, unit_config};

/// Pushes `fd` to the manager's store under `name`, as a process does.
fn store(manager: &Manager, name: &str, fd: BorrowedFd<'_>) {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(manager.notify_socket()).unwrap();
    let text = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &socket,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

#[test]
fn connections_stored_without_a_state_are_closed_and_leave_the_store() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-fdstore-leftovers");
    let config = unit_config(&dir);
    let manager = Manager::new(64);
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(elsewhere.local_addr().unwrap()).unwrap();
    let (server_side, _) = elsewhere.accept().unwrap();
    store(&manager, CONN_NAME, server_side.as_fd());
    manager.wait_stored(CONN_NAME, 1, WAIT);
    drop(server_side);

    let mut daemon = start(&manager, &config, &[], 1);
    manager.wait_stored(CONN_NAME, 0, Duration::from_secs(10));
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the client sees the end");
    stop(&mut daemon, &manager, 1);
    manager.flush();
}
