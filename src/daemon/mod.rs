//! Process-level concerns of running as a service: the service manager's
//! notifications and inherited sockets, the open-file limit, and a log
//! format for the journal.
//!
//! Owns: everything the process learns from or tells its environment beyond
//! the config file (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `LISTEN_FDS`,
//! `JOURNAL_STREAM`, `RLIMIT_NOFILE`).
//! Must never: touch connections or run its own thread or loop; the event
//! loop in [`crate::server`] decides when anything here is called.

pub mod fdstore;
pub mod listenfd;
pub mod logging;
pub mod notify;
pub mod rlimit;
