//! The service manager's file descriptor store, the daemon's side: under
//! systemd, a handover pushes its listeners, the state memfd and every
//! handed connection to the store before the process exits; the next
//! process gets them back through `LISTEN_FDS`/`LISTEN_FDNAMES`
//! ([`crate::daemon::listenfd`]) and removes what it consumed.
//!
//! What holds (sd_notify(3), systemd's FILE_DESCRIPTOR_STORE document):
//! - The manager accepts `FDSTORE=1` only when the unit sets
//!   `FileDescriptorStoreMax=` above zero; systemd 254 and later tell the
//!   service that size in `$FDSTORE` ([`capacity`]). Descriptors beyond it
//!   are refused (closed by the manager, with a log line), so the caller
//!   must count before pushing.
//! - The manager keeps a duplicate; ours stay open and usable. Several
//!   notifications add up; one carries at most 253 (`SCM_MAX_FD`), we send
//!   [`FDS_PER_NOTIFY`].
//! - `FDNAME=` names the descriptors of one notification (up to 255
//!   printable characters, no `:`), and is how `LISTEN_FDNAMES` names them
//!   on the next start, after any socket-activation descriptors.
//!   `FDSTOREREMOVE=1` with `FDNAME=` drops every stored descriptor of that
//!   name.
//! - The manager polls stored descriptors and drops one that reports
//!   `POLLHUP`/`POLLERR` unless `FDPOLL=0` came with it. We always send
//!   `FDPOLL=0`: the state lists every connection, and the next process
//!   should find each one and see for itself that a client left.
//! - `LISTEN_FDNAMES` is one environment string, capped by Linux at 128 KiB
//!   (`MAX_ARG_STRLEN`): a store whose names do not fit makes the next
//!   `execve` fail, so the names are short and [`conn_room`] counts.
//! - The store survives a restart of the service (`systemctl restart`, a
//!   crash with `Restart=`), and is flushed (every descriptor closed) when
//!   the unit stops for good, unless `FileDescriptorStorePreserve=yes`.
//!
//! Owns: the store's names, its size, and the notifications that fill and
//! empty it (through the `sd-notify` crate).
//! Must never: decide what to store (the server does), or pretend to store
//! anything when no manager listens (`NOTIFY_SOCKET` unset is an error
//! here, not a silent success).

use std::io;
use std::os::fd::BorrowedFd;

use sd_notify::NotifyState;

/// The name of the memfd holding the handover state.
pub const STATE_NAME: &str = "wshub-state";
/// The name of every handed connection: one letter, because each stored
/// descriptor adds its name and a colon to `LISTEN_FDNAMES`, one
/// environment string that Linux caps ([`MAX_FDNAMES_LEN`]): at two bytes
/// a connection the next start can be passed about 65,000 of them; a name
/// like "wshub-conn" would stop at about 11,900 (`execve` fails with
/// `E2BIG` and the service does not start at all).
pub const CONN_NAME: &str = "c";
/// The name of listeners the process bound itself (socket-activation ones
/// are kept by the manager anyway and are not pushed).
pub const LISTEN_NAME: &str = "wshub-listen";

/// Descriptors per notification, below Linux's `SCM_MAX_FD` (253).
pub const FDS_PER_NOTIFY: usize = 250;

/// `FDNAME=`'s limit.
const MAX_NAME_LEN: usize = 255;

/// The longest `LISTEN_FDNAMES` value a process can be started with:
/// Linux's `MAX_ARG_STRLEN` (32 pages of 4 KiB) for the whole
/// `LISTEN_FDNAMES=...` string with its terminating zero.
pub const MAX_FDNAMES_LEN: usize = 32 * 4096 - "LISTEN_FDNAMES=".len() - 1;

/// How many connections ([`CONN_NAME`]) a handover may push so that the
/// next start gets them all: what the store's `capacity` leaves beside
/// those of `others` it holds too ([`LISTEN_NAME`], [`STATE_NAME`]), and
/// what still fits in `LISTEN_FDNAMES` ([`MAX_FDNAMES_LEN`]) beside all of
/// `others`, the names of every other descriptor the next start is passed
/// (socket-activation listeners, kept by their socket unit, included).
/// Connections beyond it get the ordinary shutdown.
pub fn conn_room(capacity: usize, others: &[&str]) -> usize {
    let stored = others
        .iter()
        .filter(|&&name| name == LISTEN_NAME || name == STATE_NAME)
        .count();
    let by_count = capacity.saturating_sub(stored);
    // Every name but the first is preceded by a colon.
    let used: usize = others.iter().map(|name| name.len() + 1).sum();
    let by_names = (MAX_FDNAMES_LEN + 1).saturating_sub(used) / (CONN_NAME.len() + 1);
    by_count.min(by_names)
}

/// The store's size when the manager offers one: `$FDSTORE` (systemd 254
/// and later set it to `FileDescriptorStoreMax=`) while `NOTIFY_SOCKET` is
/// set; `None` otherwise, and for a size of zero.
pub fn capacity() -> Option<usize> {
    capacity_from(
        std::env::var_os("NOTIFY_SOCKET").as_deref(),
        std::env::var("FDSTORE").ok().as_deref(),
    )
}

fn capacity_from(notify: Option<&std::ffi::OsStr>, fdstore: Option<&str>) -> Option<usize> {
    notify.filter(|s| !s.is_empty())?;
    fdstore?.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

/// Pushes `fds` to the store under `name` (`FDSTORE=1`, `FDNAME=name`,
/// `FDPOLL=0`), at most [`FDS_PER_NOTIFY`] per notification. Fails when no
/// manager listens, when `name` is not a valid `FDNAME=`, or when a send
/// fails (then an unknown part was stored: the caller removes the name or
/// gives up the handover).
pub fn push(name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    check_name(name)?;
    require_manager()?;
    let states = [
        NotifyState::FdStore,
        NotifyState::FdName(name),
        NotifyState::Custom("FDPOLL=0"),
    ];
    for chunk in fds.chunks(FDS_PER_NOTIFY) {
        sd_notify::notify_with_fds(&states, chunk)?;
    }
    Ok(())
}

/// Drops every stored descriptor named `name` (`FDSTOREREMOVE=1`,
/// `FDNAME=name`).
pub fn remove(name: &str) -> io::Result<()> {
    check_name(name)?;
    require_manager()?;
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
}

fn require_manager() -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "no service manager to store descriptors with (NOTIFY_SOCKET is not set)",
        )),
    }
}

/// A name systemd accepts for `FDNAME=`.
fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid fd store name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_needs_a_manager_and_a_size() {
        let sock = Some(std::ffi::OsStr::new("/run/systemd/notify"));
        assert_eq!(capacity_from(sock, Some("20000")), Some(20_000));
        assert_eq!(capacity_from(sock, Some("0")), None);
        assert_eq!(capacity_from(sock, Some("x")), None);
        assert_eq!(capacity_from(sock, None), None);
        assert_eq!(capacity_from(None, Some("20000")), None);
        assert_eq!(capacity_from(Some("".as_ref()), Some("20000")), None);
    }

    #[test]
    fn conn_room_respects_the_store_and_the_environment() {
        assert_eq!(conn_room(100, &[STATE_NAME, LISTEN_NAME]), 98);
        assert_eq!(conn_room(1, &[STATE_NAME, LISTEN_NAME]), 0);
        assert_eq!(conn_room(19_010, &[STATE_NAME]), 19_009);
        let room = conn_room(usize::MAX, &["wshub.socket", STATE_NAME]);
        let names: Vec<&str> = ["wshub.socket", STATE_NAME]
            .into_iter()
            .chain(std::iter::repeat_n(CONN_NAME, room))
            .collect();
        let joined = names.join(":");
        assert!(joined.len() <= MAX_FDNAMES_LEN);
        assert!(joined.len() + CONN_NAME.len() + 1 > MAX_FDNAMES_LEN);
        assert!(room > 65_000, "{room}");
    }

    /// Socket-activation listeners are named in `LISTEN_FDNAMES` but kept
    /// by their socket unit, not in the store: they take none of its room.
    #[test]
    fn socket_unit_listeners_take_no_room_in_the_store() {
        assert_eq!(conn_room(100, &["wshub.socket", STATE_NAME]), 99);
        assert_eq!(
            conn_room(100, &["wshub.socket", "wshub.socket", STATE_NAME]),
            99
        );
        assert_eq!(conn_room(100, &[LISTEN_NAME, LISTEN_NAME, STATE_NAME]), 97);
    }

    #[test]
    fn names_are_checked() {
        for name in [STATE_NAME, CONN_NAME, LISTEN_NAME] {
            check_name(name).unwrap();
        }
        for bad in ["", "a:b", "a b", "é", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
