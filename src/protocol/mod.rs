//! Sans-IO WebSocket and HTTP/1.1 protocol machines.
//!
//! Everything here works on byte slices handed in by the caller and returns
//! results or events; nothing here may own a socket, read a clock, log at info
//! level, or allocate per received message when it can borrow instead.

pub(crate) mod body;
pub(crate) mod close;
pub(crate) mod deflate;
pub(crate) mod frame;
pub mod handshake;
pub mod http;
pub mod message;
pub(crate) mod sse;
pub(crate) mod utf8;
