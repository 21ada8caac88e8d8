//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Owns: the few bytes of a code point split across chunks.
//! Must never: buffer message data or accept anything `std::str::from_utf8`
//! would reject once the message is whole.

/// The bytes fed so far are not a prefix of any valid UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

/// Streaming validator that fails on the first byte that cannot start or
/// continue a valid sequence (overlong forms, surrogates, > U+10FFFF).
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 3],
    pending_len: u8,
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }
    /// Validates the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        todo!("{chunk:?} {:?} {}", self.pending, self.pending_len)
    }
    /// The stream ended: an incomplete trailing sequence is an error. Resets the validator.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        todo!()
    }
}
