//! permessage-deflate on the send side, plus the loop's shared codec state.
//!
//! Owns: the one [`Compressor`] of an event loop (its inflater is a
//! [`crate::protocol::message::Inflater`], owned by the loop next to it),
//! turning an outgoing message into the frame a connection should get, and
//! the per-publish cache that compresses a broadcast once per server window
//! size among its recipients.
//! Must never: keep anything per connection (a connection stores only its
//! negotiated [`Params`]), or send a compressed frame that is not smaller
//! than the plain one.

use std::rc::Rc;

use crate::protocol::deflate::{self, Compressor, DeflateConfig, Params, WindowBits};
use crate::protocol::frame::{self, OpCode};

/// Distinct server window sizes: 9..=15 bits.
const WINDOWS: usize = (WindowBits::MAX.get() - WindowBits::MIN.get() + 1) as usize;
/// The compression scratch buffer keeps at most this capacity between
/// messages.
const KEEP_SCRATCH_CAPACITY: usize = 64 * 1024;

/// Compression state shared by every connection of one event loop; reset
/// per message, so it never depends on which connection used it last.
#[derive(Debug)]
pub(super) struct Codec {
    compressor: Compressor,
    scratch: Vec<u8>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            compressor: Compressor::new(DeflateConfig::default().level),
            scratch: Vec::new(),
        }
    }
}

impl Codec {
    /// Writes `payload` as one final frame into `out`: compressed (RSV1 set)
    /// when the connection negotiated deflate, the route compresses, the
    /// message is at least the route's minimum size and compression makes
    /// it smaller; plain otherwise.
    pub(super) fn write_message(
        &mut self,
        params: Option<Params>,
        config: Option<DeflateConfig>,
        opcode: OpCode,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        if let (Some(params), Some(config)) = (params, config)
            && let Some(compressed) = self.compress(params.server_window(), config, payload)
        {
            frame::write_frame(out, true, deflate::RSV_COMPRESSED, opcode, compressed);
        } else {
            frame::write_frame(out, true, 0, opcode, payload);
        }
        self.trim();
    }

    /// The compressed payload, or `None` when not worth sending compressed
    /// (too short for the route, no smaller, or the backend failed).
    fn compress(
        &mut self,
        window: WindowBits,
        config: DeflateConfig,
        payload: &[u8],
    ) -> Option<&[u8]> {
        if !config.should_compress(payload.len()) {
            return None;
        }
        self.compressor.set_level(config.level);
        self.scratch.clear();
        self.compressor
            .compress(window, payload, &mut self.scratch)
            .ok()?;
        (self.scratch.len() < payload.len()).then_some(self.scratch.as_slice())
    }

    fn trim(&mut self) {
        if self.scratch.capacity() > KEEP_SCRATCH_CAPACITY {
            self.scratch = Vec::new();
        }
    }
}

/// A data message to deliver to many connections: the plain frame, encoded
/// once, and where its payload starts (to compress it for those that
/// negotiated deflate).
#[derive(Debug)]
pub(super) struct Broadcast {
    pub frame: Rc<[u8]>,
    opcode: OpCode,
    header_len: usize,
}

impl Broadcast {
    pub(super) fn new(opcode: OpCode, payload: &[u8]) -> Broadcast {
        let mut buf = Vec::with_capacity(payload.len() + frame::MAX_HEADER_LEN);
        frame::write_frame(&mut buf, true, 0, opcode, payload);
        let header_len = buf.len() - payload.len();
        Broadcast {
            frame: Rc::from(buf),
            opcode,
            header_len,
        }
    }

    pub(super) fn opcode(&self) -> OpCode {
        self.opcode
    }

    pub(super) fn payload(&self) -> &[u8] {
        self.frame.get(self.header_len..).unwrap_or_default()
    }
}

/// The frames of one publish, compressed lazily: the first recipient that
/// needs window `w` compresses it, every later one with the same window
/// shares that very frame.
#[derive(Debug, Default)]
pub(super) struct FrameCache {
    /// Indexed by window bits - 9; `Some(plain frame)` when compressing did
    /// not pay off for that window.
    frames: [Option<Rc<[u8]>>; WINDOWS],
}

impl FrameCache {
    /// The frame to queue for a recipient with `params` on a route whose
    /// compression settings are `config` (`None`: off).
    ///
    /// The cache is keyed by window only: if subscribers of one channel
    /// come from routes with different `compression_level`s, the first
    /// recipient's level is used for everyone with that window (any level
    /// inflates the same). `compression_min_size` is applied per route.
    pub(super) fn frame_for(
        &mut self,
        message: &Broadcast,
        params: Option<Params>,
        config: Option<DeflateConfig>,
        codec: &mut Codec,
    ) -> Rc<[u8]> {
        let (Some(params), Some(config)) = (params, config) else {
            return Rc::clone(&message.frame);
        };
        let payload = message.payload();
        if !config.should_compress(payload.len()) {
            return Rc::clone(&message.frame);
        }
        let window = params.server_window();
        let index = usize::from(window.get() - WindowBits::MIN.get()).min(WINDOWS - 1);
        let slot = &mut self.frames[index];
        if let Some(frame) = slot {
            return Rc::clone(frame);
        }
        let frame = match codec.compress(window, config, payload) {
            Some(compressed) => {
                let mut buf = Vec::with_capacity(compressed.len() + frame::MAX_HEADER_LEN);
                frame::write_frame(
                    &mut buf,
                    true,
                    deflate::RSV_COMPRESSED,
                    message.opcode,
                    compressed,
                );
                Rc::from(buf)
            }
            None => Rc::clone(&message.frame),
        };
        codec.trim();
        *slot = Some(Rc::clone(&frame));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(offer: &[u8]) -> Option<Params> {
        deflate::negotiate([offer])
    }

    #[test]
    fn broadcast_is_compressed_once_per_window() {
        let mut codec = Codec::default();
        let message = Broadcast::new(
            OpCode::Text,
            &b"{\"price\": 42, \"sym\": \"ABC\"} ".repeat(40),
        );
        let config = Some(DeflateConfig::default());
        let mut cache = FrameCache::default();
        let full = params(b"permessage-deflate");
        let small = params(b"permessage-deflate; server_max_window_bits=10");
        let a = cache.frame_for(&message, full, config, &mut codec);
        let b = cache.frame_for(&message, full, config, &mut codec);
        let c = cache.frame_for(&message, small, config, &mut codec);
        let plain = cache.frame_for(&message, None, config, &mut codec);
        let off = cache.frame_for(&message, full, None, &mut codec);
        assert!(Rc::ptr_eq(&a, &b));
        assert!(!Rc::ptr_eq(&a, &c));
        assert!(Rc::ptr_eq(&plain, &message.frame));
        assert!(Rc::ptr_eq(&off, &message.frame));
        assert!(a.len() < plain.len());
        assert_eq!(a[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    }

    #[test]
    fn short_or_incompressible_messages_go_plain() {
        let mut codec = Codec::default();
        let full = params(b"permessage-deflate");
        let config = Some(DeflateConfig {
            level: 6,
            min_size: 16,
        });
        let mut out = Vec::new();
        codec.write_message(full, config, OpCode::Binary, b"short", &mut out);
        assert_eq!(out, [0x82, 5, b's', b'h', b'o', b'r', b't']);
        // 64 bytes with no repeats: DEFLATE cannot shrink them.
        let noise: Vec<u8> = (0..64u32).map(|i| (i * 97 % 251) as u8).collect();
        out.clear();
        codec.write_message(full, config, OpCode::Binary, &noise, &mut out);
        assert_eq!(out[0], 0x82);
        let text = b"abcabcabc".repeat(10);
        out.clear();
        codec.write_message(full, config, OpCode::Text, &text, &mut out);
        assert_eq!(out[0], 0xc1);
        assert!(out.len() < text.len());
    }
}
