//! The WebSocket opening handshake, server side (RFC 6455 §4.2).
//!
//! Owns: validating an upgrade request head and writing the 101 response or
//! the HTTP error that refuses it.
//! Must never: route, read sockets, or accept a request the RFC says to refuse.

use super::http::RequestHead;

/// The GUID appended to the client's key (§1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The only protocol version defined by RFC 6455.
pub const WEBSOCKET_VERSION: &str = "13";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` value.
pub fn accept_key(key: &[u8]) -> String {
    todo!("{key:?}")
}

/// A valid upgrade request, reduced to what the server needs to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub protocols: Vec<String>,
    /// The `Origin` header, if any (browsers always send it).
    pub origin: Option<String>,
    /// Raw `Sec-WebSocket-Extensions` values, for extension negotiation.
    pub extensions: Vec<Vec<u8>>,
}

/// A refused handshake: the status and a short plain-text reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

impl Rejection {
    /// Appends the HTTP error response (with `Connection: close`; plus
    /// `Allow: GET` for 405 and `Upgrade`/`Sec-WebSocket-Version` for 426).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        todo!("{out:?}")
    }
}

/// Checks every §4.2.1 requirement, in a fixed order.
pub fn validate(head: &RequestHead) -> Result<Upgrade, Rejection> {
    todo!("{head:?}")
}

/// Appends the `101 Switching Protocols` response.
pub fn write_accept(
    upgrade: &Upgrade,
    protocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    todo!("{upgrade:?} {protocol:?} {extensions:?} {out:?}")
}
