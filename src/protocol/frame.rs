//! Frame header codec and masking (RFC 6455 §5.2–5.3).
//!
//! Owns: opcodes, the 2–14 byte header format (decoded incrementally, encoded
//! into a caller's buffer) and the XOR masking transform.
//! Must never: allocate, buffer payload bytes, or judge message-level rules
//! (fragment order, UTF-8, size limits) — that is `message`'s job.

/// Longest possible frame header: 2 bytes + 8-byte length + 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// Longest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455 §5.2 (the reserved ones are not representable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// `None` for the reserved opcodes 0x3–0x7 and 0xB–0xF.
    pub fn from_u8(bits: u8) -> Option<OpCode> {
        todo!("{bits}")
    }
    pub fn as_u8(self) -> u8 {
        todo!()
    }
    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        todo!()
    }
}

/// A decoded (or to-be-encoded) frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits: RSV1 = 0b100, RSV2 = 0b010, RSV3 = 0b001.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Header-level violations; each maps to close code 1002.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("64-bit payload length with the most significant bit set")]
    LengthTopBit,
    #[error("payload length not in its minimal encoding")]
    NonMinimalLength,
}

/// Incremental header parser: keeps at most [`MAX_HEADER_LEN`] bytes of a
/// header split across reads, so a connection between frames holds nothing else.
#[derive(Clone, Debug, Default)]
pub struct HeaderDecoder {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderDecoder {
    /// Consumes bytes of `input` until one header is complete.
    /// Returns how many bytes were consumed and the header once complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<FrameHeader>), HeaderError> {
        todo!("{input:?} {:?} {}", self.buf, self.len)
    }
    /// True when no partial header is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Writes the header for a frame into `out`, returning its length.
/// The server never masks, but the codec supports it for tests and clients.
pub fn encode_header(header: &FrameHeader, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    todo!("{header:?} {out:?}")
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the payload.
/// Works a machine word at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    todo!("{data:?} {mask:?} {offset}")
}
