//! Listening sockets inherited from the service manager (socket
//! activation, the `sd_listen_fds(3)` protocol): `LISTEN_FDS` descriptors
//! starting at 3, meant for the process whose id is `LISTEN_PID`.
//!
//! Owns: reading those variables, and checking that each descriptor is a
//! listening TCP socket before the server gets it. The descriptors become
//! owned sockets through the `listenfd` crate, so no unsafe code is needed
//! here.
//! Must never: bind or accept, take descriptors meant for another process
//! (`LISTEN_PID` must be ours; a missing one does not count), or leave a
//! descriptor it could not use silently open as if all was well.
//!
//! Call [`take`] at start, before any thread is spawned: taking the sockets
//! removes the variables from the environment, so no child inherits them.

use std::net::TcpListener;

use listenfd::ListenFd;

/// The sockets the service manager passed, in order; empty when the process
/// was not socket-activated. Fails when a passed descriptor is not a
/// listening TCP socket: serving on some of the configured sockets but not
/// all would hide a broken unit.
pub fn take() -> Result<Vec<TcpListener>, String> {
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Vec::new());
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
            return Ok(Vec::new());
        }
        Err(_) => {
            log::warn!("ignoring LISTEN_FDS: LISTEN_PID is not set");
            return Ok(Vec::new());
        }
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut fds = ListenFd::from_env();
    let mut listeners = Vec::with_capacity(count);
    for index in 0..count {
        let fd = index + 3;
        let listener = match fds.take_tcp_listener(index) {
            Ok(Some(listener)) => listener,
            Ok(None) => return Err(format!("inherited socket {fd} is missing")),
            Err(e) => {
                return Err(format!(
                    "inherited socket {fd} cannot be used: {e} (wshub serves TCP only: use ListenStream= with an IP address and port)"
                ));
            }
        };
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
        listeners.push(listener);
    }
    Ok(listeners)
}
