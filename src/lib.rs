//! wshub: a WebSocket server daemon that holds many mostly idle clients on one
//! event loop and pushes messages to them.
//!
//! The crate is split in two halves that never mix:
//! - [`protocol`]: sans-IO state machines over byte slices (HTTP head, opening
//!   handshake, frame codec, message assembly, close rules). No sockets, no clock.
//! - [`server`]: the single-threaded mio event loop that moves bytes between
//!   sockets and those machines, plus the [`timer`] wheel that drives its timeouts.
//!
//! [`daemon`] holds what running as a systemd service needs from the process
//! (notifications, inherited sockets, limits, journal logging); the loop
//! decides when it is used.
#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod route;
pub mod server;
pub mod timer;
