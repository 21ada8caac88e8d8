//! The permessage-deflate extension (RFC 7692), server side, sans-IO.
//!
//! Owns: parsing the client's `Sec-WebSocket-Extensions` offers and choosing
//! the parameters ([`negotiate`], [`Params`]), the response header value, and
//! compressing and inflating whole message payloads ([`Compressor`],
//! [`Decompressor`]).
//! Must never: own a socket or a clock, keep compression state for a
//! connection between messages, fail a handshake because of a bad offer (a bad
//! offer is only declined), or inflate without a hard bound on the output.
//!
//! # The one policy: no context takeover, both ways
//!
//! Every accepted offer is answered with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 §7.1.1 lets the server add both on
//! its own). Each message is then a self-contained DEFLATE stream, so:
//! - a broadcast is compressed once and the same frame payload goes to every
//!   subscriber whose [`Params::server_window`] is at least the window it was
//!   compressed with (equal windows give equal bytes: group by it);
//! - one [`Compressor`] and one [`Decompressor`] serve a whole event loop,
//!   reset per message; a connection keeps nothing between messages.
//!
//! # How the server wires it in
//!
//! Handshake:
//! ```ignore
//! let params = if config.enabled {
//!     deflate::negotiate(upgrade.extensions.iter().map(Vec::as_slice))
//! } else {
//!     None
//! };
//! let header = params.map(|p| p.response_header());
//! handshake::write_accept(&upgrade, protocol, header.as_deref(), &mut out);
//! if params.is_some() {
//!     receiver.set_allowed_rsv(deflate::RSV_COMPRESSED);
//! }
//! ```
//!
//! Sending a data message (`payload`, to connections sharing `params`):
//! ```ignore
//! if config.should_compress(payload.len()) {
//!     scratch.clear();
//!     compressor.compress(params.server_window(), payload, &mut scratch)?;
//!     // Only worth it when smaller; otherwise send it as is with RSV1 clear
//!     // (RFC 7692 §6.1 allows uncompressed messages at any time).
//!     if scratch.len() < payload.len() {
//!         frame::write_frame(&mut out, true, deflate::RSV_COMPRESSED, opcode, &scratch);
//!         return;
//!     }
//! }
//! frame::write_frame(&mut out, true, 0, opcode, payload);
//! ```
//! RSV1 goes on the first frame of a message only; control frames are never
//! compressed (RFC 7692 §6.1). On receipt, RSV1 on a continuation or control
//! frame fails the connection with 1002, which `set_allowed_rsv` alone does
//! not check.
//!
//! Receiving: a message whose first frame has RSV1 set is compressed. Frames
//! of different connections interleave on the event loop, while the shared
//! [`Decompressor`] holds one message at a time, so inflate a message only
//! once its last frame is in (the receiver already buffers partial messages):
//! ```ignore
//! let limit = usize::try_from(limits.max_message_size).unwrap_or(usize::MAX);
//! decompressor.begin();
//! decompressor.feed(compressed, &mut inflated, limit)?;
//! decompressor.finish(&mut inflated, limit)?;
//! // or in one call: decompressor.inflate_message(compressed, &mut inflated, limit)?
//! // the receiver closes with 1009 for TooBig and 1007 for Corrupt.
//! ```
//! Text messages are UTF-8-checked on the inflated bytes, not the wire bytes.
//! A caller that wants to inflate a fragmented message frame by frame instead
//! must give that connection a [`Decompressor`] of its own while the message
//! is in flight.
//!
//! # Memory (zlib-rs backend, measured)
//!
//! - [`Decompressor`]: about 47 KiB (inflate state with its 32 KiB window),
//!   allocated on first use and kept.
//! - [`Compressor`]: one DEFLATE stream per server window size in use,
//!   created lazily and kept: about 245 KiB for a 512-byte window up to
//!   371 KiB for the full 32 KiB one, whatever the level; about 1.9 MiB if
//!   clients make it use all seven sizes. Browsers do not send
//!   `server_max_window_bits`, so in practice only the 15-bit stream exists.
//! - Per connection: the copied [`Params`] (4 bytes), nothing else.
//!
//! # Backend
//!
//! `flate2` with its `zlib-rs` backend (pure Rust): the default
//! `miniz_oxide` backend cannot compress with a window below 15 bits (flate2
//! only offers `new_with_window_bits` on zlib backends), and honouring
//! `server_max_window_bits` needs exactly that.
#![forbid(unsafe_code)]

mod codec;
mod negotiate;
#[cfg(test)]
mod reference_inflate;

pub(crate) use codec::{Compressor, Decompressor, InflateError};
pub(crate) use negotiate::{Params, WindowBits, negotiate};

/// The extension token (RFC 7692 §5).
pub(crate) const EXTENSION_NAME: &str = "permessage-deflate";

/// The RSV bit that marks a compressed message (RSV1, RFC 7692 §6), in the
/// encoding of [`super::frame::FrameHeader::rsv`].
pub(crate) const RSV_COMPRESSED: u8 = 0b100;

/// Compression settings, passed in so a config reload applies at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// zlib level, 0 (stored, no compression) to [`DeflateConfig::MAX_LEVEL`]
    /// (best); above it counts as the maximum.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (RSV1 clear).
    pub min_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig::DEFAULT
    }
}

impl DeflateConfig {
    /// The defaults of a route's `compression_level` and
    /// `compression_min_size`, the only place they are defined.
    ///
    /// Level 6 is zlib's own default balance of speed and ratio; a broadcast
    /// is compressed once per publish, so its cost does not grow with the
    /// subscribers. Below 128 bytes DEFLATE rarely wins: its block header
    /// and Huffman tables eat most of what a short text saves, and the CPU
    /// is spent anyway.
    pub const DEFAULT: DeflateConfig = DeflateConfig {
        level: 6,
        min_size: 128,
    };

    /// zlib's highest level (smallest output, slowest).
    pub const MAX_LEVEL: u32 = codec::MAX_LEVEL;

    /// Is a message of `len` bytes worth compressing?
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.min_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_size_is_inclusive() {
        let config = DeflateConfig {
            level: 1,
            min_size: 10,
        };
        assert!(!config.should_compress(9));
        assert!(config.should_compress(10));
        let default = DeflateConfig::default();
        assert!(default.should_compress(default.min_size));
        assert!(!default.should_compress(default.min_size - 1));
    }

    #[test]
    fn negotiated_params_drive_a_round_trip() {
        let offers: [&[u8]; 1] = [b"permessage-deflate; server_max_window_bits=10"];
        let params = negotiate(offers).unwrap();
        let payload = b"a broadcast that every subscriber receives, ".repeat(20);
        let mut compressed = Vec::new();
        Compressor::new(DeflateConfig::DEFAULT.level)
            .compress(params.server_window(), &payload, &mut compressed)
            .unwrap();
        assert!(compressed.len() < payload.len());
        let mut inflated = Vec::new();
        Decompressor::new()
            .inflate_message(&compressed, &mut inflated, payload.len())
            .unwrap();
        assert_eq!(inflated, payload);
    }
}
