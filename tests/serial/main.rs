//! The tests that must not share their process, or the machine, with other
//! tests: measurements of latency, CPU time and memory under attack, bursts
//! of thousands of sockets from several loopback source addresses, and a
//! test that clears close-on-exec on a descriptor so a child inherits it.
//! Every test here holds `alone()` first, so they run one at a time; cargo
//! runs this binary after or before the others, never beside them. Their
//! sockets therefore never add up past the open-files limit either.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Helpers shared with `tests/wire`. That binary uses every helper of the
/// shared files and reports unused ones; this one uses a part of each, so
/// it only allows dead code in those. `load` is used here alone and is
/// checked here.
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
    pub mod http;
    pub mod load;
    #[allow(dead_code)]
    pub mod positions;
    #[allow(dead_code)]
    pub mod redis;
    #[allow(dead_code)]
    pub mod server;
    #[allow(dead_code)]
    pub mod tempdir;
}

mod cluster_scale;
mod fdstore_harness;
mod history_storm;
mod hostile;
mod hostile_burst;
mod hostile_churn;
mod hostile_emfile;
mod hostile_frames;
mod reuse_port_activation;
mod socket_activation;

/// Held for the whole of each test in this binary: one test at a time.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}
