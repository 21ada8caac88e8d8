//! wshub: a WebSocket server daemon that holds many mostly idle clients on one
//! event loop and pushes messages to them.
//!
//! The crate is split in two halves that never mix:
//! - [`protocol`]: sans-IO state machines over byte slices (HTTP head, opening
//!   handshake, frame codec, message assembly, close rules). No sockets, no clock.
//! - [`server`]: the single-threaded mio event loop that moves bytes between
//!   sockets and those machines, plus the [`timer`] wheel that drives its timeouts.
//!
//! `bus` is the sans-IO Redis bus of a cluster node (`[cluster]`); the
//! server's loop drives its sockets.
//!
//! [`daemon`] holds what running as a systemd service needs from the process
//! (notifications, inherited sockets, limits, journal logging); the loop
//! decides when it is used.
#![forbid(unsafe_code)]
// The public API is what the binary, the tests and the fuzz targets use;
// everything else is crate-private, so the compiler reports dead code.
#![warn(unreachable_pub)]

mod auth;
mod bus;
pub mod config;
pub mod daemon;
pub mod handover;
mod history;
mod hub;
mod metrics;
mod page;
mod protocol;
mod route;
pub mod server;
#[cfg(test)]
mod testing;
mod timer;

/// The close code of an open connection whose signed token expired.
pub use auth::CLOSE_TOKEN_EXPIRED;
/// Whether a channel name is valid (`wshub publish` checks before sending).
pub use hub::names::is_valid_channel_name;

/// The sans-IO parsers the fuzz targets and their regression tests drive.
/// Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::fuzz_token;
    pub use crate::bus::Envelope;
    pub use crate::config::RedisUrl;
    pub use crate::hub::names::parse_subscription;
    pub use crate::hub::position::{Epoch, Position};
    pub use crate::hub::publish;
    pub use crate::protocol::{handshake, http, message};
    pub use crate::route::{Routes, Target};
}
