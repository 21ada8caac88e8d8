//! Handing every connection to a new process on restart, tested on the
//! real `wshub` binary: the direct path (SIGUSR2: the new process is the
//! old one's child and the two talk over an inherited Unix socket) and the
//! service manager's path (the file descriptor store).
//!
//! Tests here hold `alone()` first, so they run one at a time: some hold
//! ten thousand sockets, and each measures pauses that a neighbour would
//! stretch. This binary also makes itself a child subreaper (see
//! `support::handover`), which is process-wide: no other binary may.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Helpers shared with `tests/wire` and `tests/serial`; this binary uses a
/// part of most of them, so it only allows dead code in those.
#[path = "../support"]
mod support {
    #[allow(dead_code)]
    pub mod client;
    #[allow(dead_code)]
    pub mod daemon;
    #[allow(dead_code)]
    pub mod data;
    #[allow(dead_code)]
    pub mod fdstore;
    #[allow(dead_code)]
    pub mod handover;
    #[allow(dead_code)]
    pub mod http;
    #[allow(dead_code)]
    pub mod load;
    #[allow(dead_code)]
    pub mod positions;
    #[allow(dead_code)]
    pub mod redis;
    #[allow(dead_code)]
    pub mod server;
    #[allow(dead_code)]
    pub mod tempdir;
    #[allow(dead_code)]
    pub mod tls;
}

mod chat;
mod cluster;
mod common;
mod echo_pause;
mod failures;
mod listeners;
mod mixed;
mod store_leftovers;
mod subscribers;
mod systemd;
mod unconfirmed;

/// Held for the whole of each test in this binary: one test at a time. It
/// also makes sure this process adopts what the daemons' handovers start.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    let guard = ALONE.lock().unwrap_or_else(PoisonError::into_inner);
    support::handover::adopt_orphans();
    guard
}
