//! Sans-IO WebSocket and HTTP/1.1 protocol machines.
//!
//! Everything here works on byte slices handed in by the caller and returns
//! results or events; nothing here may own a socket, read a clock, log at info
//! level, or allocate per received message when it can borrow instead.

pub mod body;
pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod message;
pub mod utf8;
