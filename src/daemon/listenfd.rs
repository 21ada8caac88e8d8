//! Descriptors inherited from the service manager (the `sd_listen_fds(3)`
//! protocol): `LISTEN_FDS` descriptors starting at 3, meant for the process
//! whose id is `LISTEN_PID`, named by `LISTEN_FDNAMES` (colon-separated).
//! They come from socket activation or from the fd store a previous
//! process filled on a handover ([`crate::daemon::fdstore`]).
//!
//! Owns: reading those variables, and sorting the descriptors by name:
//! [`STATE_NAME`] is the handover state (a memfd, at most one),
//! [`CONN_NAME`] a handed connection (a connected TCP socket), any other
//! name a listening TCP socket. Listeners and connections become owned
//! sockets through the `listenfd` crate; the state memfd, and the handover
//! channel of [`crate::handover::wire`], through [`adopt`]. No unsafe code.
//! Must never: bind or accept, take descriptors meant for another process
//! (`LISTEN_PID` must be ours; a missing one does not count), or leave a
//! descriptor it could not use silently open as if all was well.
//!
//! Call [`take`] at start, before any thread is spawned: taking the sockets
//! removes `LISTEN_FDS` and `LISTEN_PID` from the environment, so no child
//! takes them (`LISTEN_FDNAMES` stays, meaningless without the others).

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use listenfd::ListenFd;
use rustix::net::{AddressFamily, SocketType};

use crate::daemon::fdstore::{CONN_NAME, LISTEN_NAME, STATE_NAME};

/// What the service manager passed; all empty when nothing was.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Listening TCP sockets, non-blocking, in the order passed.
    pub listeners: Vec<TcpListener>,
    /// Some of them come from socket activation (a socket unit keeps them
    /// across restarts), not from the fd store ([`LISTEN_NAME`]).
    pub socket_activated: bool,
    /// The handover state memfd (read it with
    /// [`crate::handover::wire::read_memfd`]).
    pub state: Option<OwnedFd>,
    /// Handed connections: connected TCP stream sockets, in the order
    /// passed (still blocking: the server sets them up).
    pub conns: Vec<OwnedFd>,
}

impl Inherited {
    /// True when nothing at all was inherited.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.state.is_none() && self.conns.is_empty()
    }
}

/// Takes ownership of the descriptor numbered `raw`, which this process
/// inherited and nothing else owns: returns a close-on-exec copy and
/// closes `raw`. Both steps are safe calls (`pidfd_getfd(2)` on this very
/// process, Linux 5.6 or later, and `nix`'s `close`), so the crate stays
/// free of unsafe code. Fails when `raw` is not open.
pub fn adopt(raw: RawFd) -> std::io::Result<OwnedFd> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    let fd = pidfd_getfd(&me, raw, PidfdGetfdFlags::empty())?;
    nix::unistd::close(raw)?;
    Ok(fd)
}

/// What was passed, sorted by name; all empty when the process was not
/// started with `LISTEN_FDS`. Fails when an unnamed (or otherwise named)
/// descriptor is not a listening TCP socket — serving on some of the
/// configured sockets but not all would hide a broken unit. A state that
/// cannot be used (not a memfd, or two of them) is dropped with a warning,
/// and so is a connection that is not a connected TCP socket (it is
/// closed).
pub fn take() -> Result<Inherited, String> {
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Inherited::default());
    };
    let count = count
        .to_str()
        .and_then(|c| c.parse::<usize>().ok())
        .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a number"))?;
    match std::env::var("LISTEN_PID") {
        Ok(pid) if pid.parse::<u32>().ok() == Some(std::process::id()) => {}
        Ok(pid) => {
            log::warn!(
                "ignoring LISTEN_FDS: the sockets are meant for process {pid}, not this one ({})",
                std::process::id()
            );
            return Ok(Inherited::default());
        }
        Err(_) => {
            log::warn!("ignoring LISTEN_FDS: LISTEN_PID is not set");
            return Ok(Inherited::default());
        }
    }
    if count == 0 {
        return Ok(Inherited::default());
    }
    let names = names(std::env::var("LISTEN_FDNAMES").ok().as_deref(), count)?;
    let mut fds = ListenFd::from_env();
    let mut inherited = Inherited::default();
    let mut unusable_state = false;
    for (index, name) in names.iter().enumerate() {
        let fd = index + 3;
        match name.as_str() {
            STATE_NAME => {
                // A state that cannot be used never stops the start: its
                // connections are then closed, the listeners served.
                let state = match fds.take_raw_fd(index) {
                    Ok(Some(raw)) => {
                        adopt(raw).map_err(|e| format!("inherited state {fd} cannot be taken: {e}"))
                    }
                    Ok(None) => Err(format!("inherited state {fd} is missing")),
                    Err(e) => Err(format!("inherited state {fd}: {e}")),
                };
                if let Err(why) = state.and_then(|state| sort_state(&mut inherited, fd, state)) {
                    log::warn!("{why}; no stored state is used");
                    unusable_state = true;
                }
            }
            CONN_NAME => {
                let conn = fds.take_custom::<OwnedFd>(
                    index,
                    nix::libc::AF_INET,
                    nix::libc::SOCK_STREAM,
                    "tcp socket",
                );
                match conn {
                    Ok(Some(conn)) => sort_conn(&mut inherited, fd, conn),
                    Ok(None) => log::warn!("inherited connection {fd} is missing"),
                    Err(e) => {
                        log::warn!("closing inherited connection {fd}: {e}");
                        // Left in place by the failed take: close it.
                        if let Ok(Some(raw)) = fds.take_raw_fd(index) {
                            let _ = nix::unistd::close(raw);
                        }
                    }
                }
            }
            _ => {
                let listener = match fds.take_tcp_listener(index) {
                    Ok(Some(listener)) => listener,
                    Ok(None) => return Err(format!("inherited socket {fd} is missing")),
                    Err(e) => {
                        return Err(format!(
                            "inherited socket {fd} cannot be used: {e} (wshub serves TCP only: use ListenStream= with an IP address and port)"
                        ));
                    }
                };
                sort_listener(&mut inherited, fd, listener)?;
                inherited.socket_activated |= name != LISTEN_NAME;
            }
        }
    }
    if unusable_state {
        // Which of two states goes with the connections cannot be told.
        inherited.state = None;
    }
    Ok(inherited)
}

/// The name of each of `count` descriptors: `LISTEN_FDNAMES` split at
/// colons; "unknown" for each when it is unset, as `sd_listen_fds_with_names`
/// does. A list of another length is refused.
fn names(value: Option<&str>, count: usize) -> Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(vec!["unknown".to_owned(); count]);
    };
    let names: Vec<String> = value.split(':').map(str::to_owned).collect();
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} descriptor(s), LISTEN_FDS passes {count}",
            names.len()
        ));
    }
    Ok(names)
}

/// Keeps `state` unless one was passed already.
fn sort_state(inherited: &mut Inherited, fd: usize, state: OwnedFd) -> Result<(), String> {
    if inherited.state.is_some() {
        return Err(format!(
            "inherited descriptor {fd} is a second {STATE_NAME:?}: the fd store holds two states"
        ));
    }
    match rustix::fs::fstat(&state) {
        Ok(stat) if rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file() => {}
        Ok(_) => return Err(format!("inherited state {fd} is not a memfd")),
        Err(e) => return Err(format!("inherited state {fd}: {e}")),
    }
    inherited.state = Some(state);
    Ok(())
}

/// Keeps `conn` when it is a connected TCP stream socket; closes it with a
/// warning otherwise (one client lost, the rest served).
fn sort_conn(inherited: &mut Inherited, fd: usize, conn: OwnedFd) {
    match check_conn(conn.as_fd()) {
        Ok(()) => inherited.conns.push(conn),
        Err(why) => log::warn!("closing inherited connection {fd}: {why}"),
    }
}

/// Why `conn` is not a connected TCP stream socket.
fn check_conn(conn: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    match rustix::net::sockopt::socket_type(conn) {
        Ok(SocketType::STREAM) => {}
        Ok(_) => return Err("not a stream socket".into()),
        Err(e) => return Err(format!("not a socket ({e})")),
    }
    match rustix::net::getsockname(conn) {
        Ok(addr)
            if addr.address_family() == AddressFamily::INET
                || addr.address_family() == AddressFamily::INET6 => {}
        Ok(_) => return Err("not a TCP socket".into()),
        Err(e) => return Err(e.to_string()),
    }
    match rustix::net::sockopt::socket_acceptconn(conn) {
        Ok(false) => {}
        Ok(true) => return Err("a listening socket, not a connection".into()),
        Err(e) => return Err(e.to_string()),
    }
    match rustix::net::getpeername(conn) {
        Ok(Some(_)) => Ok(()),
        Ok(None) | Err(_) => Err("not connected".into()),
    }
}

/// Keeps `listener` when it listens, made non-blocking.
fn sort_listener(
    inherited: &mut Inherited,
    fd: usize,
    listener: TcpListener,
) -> Result<(), String> {
    match rustix::net::sockopt::socket_acceptconn(&listener) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "inherited socket {fd} is not listening (Accept=yes is not supported; use Accept=no)"
            ));
        }
        Err(e) => return Err(format!("inherited socket {fd}: {e}")),
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("inherited socket {fd}: cannot make it non-blocking: {e}"))?;
    inherited.listeners.push(listener);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpStream, UdpSocket};
    use std::os::unix::net::UnixStream;

    #[test]
    fn names_follow_listen_fdnames() {
        assert_eq!(names(None, 2).unwrap(), ["unknown", "unknown"]);
        assert_eq!(
            names(Some("wshub.socket:c:wshub-state"), 3).unwrap(),
            ["wshub.socket", "c", "wshub-state"]
        );
        let e = names(Some("a:b"), 3).unwrap_err();
        assert!(
            e.contains("names 2 descriptor(s), LISTEN_FDS passes 3"),
            "{e}"
        );
    }

    #[test]
    fn connections_are_checked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut inherited = Inherited::default();
        sort_conn(&mut inherited, 3, OwnedFd::from(server));
        sort_conn(&mut inherited, 4, OwnedFd::from(client));
        assert_eq!(inherited.conns.len(), 2);

        // Closed with a warning, not an error: a listener, a UDP socket, a
        // Unix socket, an unconnected TCP socket and a file.
        assert!(
            check_conn(listener.as_fd())
                .unwrap_err()
                .contains("listening")
        );
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check_conn(udp.as_fd()).is_err());
        let (unix, _peer) = UnixStream::pair().unwrap();
        assert_eq!(check_conn(unix.as_fd()).unwrap_err(), "not a TCP socket");
        let fresh = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        assert!(check_conn(fresh.as_fd()).is_err());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(
            check_conn(file.as_fd())
                .unwrap_err()
                .starts_with("not a socket")
        );
        sort_conn(&mut inherited, 5, OwnedFd::from(udp));
        assert_eq!(inherited.conns.len(), 2);
    }

    #[test]
    fn one_state_at_most_and_a_memfd() {
        let mut inherited = Inherited::default();
        let state = crate::handover::wire::memfd("wshub-state", b"state").unwrap();
        sort_state(&mut inherited, 3, state).unwrap();
        let again = crate::handover::wire::memfd("wshub-state", b"again").unwrap();
        let e = sort_state(&mut inherited, 4, again).unwrap_err();
        assert!(e.contains("second"), "{e}");
        let mut other = Inherited::default();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = sort_state(&mut other, 3, OwnedFd::from(socket)).unwrap_err();
        assert!(e.contains("not a memfd"), "{e}");
        assert!(!inherited.is_empty() && other.is_empty());
    }

    #[test]
    fn listeners_must_listen() {
        let mut inherited = Inherited::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        sort_listener(&mut inherited, 3, listener).unwrap();
        assert_eq!(inherited.listeners.len(), 1);
        let fresh = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        let e = sort_listener(&mut inherited, 4, TcpListener::from(fresh)).unwrap_err();
        assert!(e.contains("inherited socket 4 is not listening"), "{e}");
    }

    #[test]
    fn adopt_takes_over_a_descriptor_number() {
        let (a, b) = UnixStream::pair().unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(a);
        let adopted = adopt(raw).unwrap();
        let flags = rustix::io::fcntl_getfd(&adopted).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        rustix::io::write(&adopted, b"x").unwrap();
        let mut byte = [0u8; 1];
        rustix::io::read(&b, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
