//! The receive side of an open WebSocket connection: frames in, whole
//! messages and control frames out (RFC 6455 §5.4–5.6).
//!
//! Owns: frame-sequence rules (fragmentation, control frames in between),
//! size limits checked from the header, UTF-8 checked as bytes arrive, and the
//! buffer of a message still being received.
//! Must never: hold a buffer while no message or control frame is partially
//! received (idle connections cost nothing), allocate for a message that
//! arrives whole in one input slice (it is handed out borrowed), or know
//! anything about sockets or replies.

use super::close::CloseCode;
use super::frame::HeaderDecoder;
use super::utf8::Utf8Validator;

/// Size limits, passed on every call so a config reload applies at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of a single frame (inclusive).
    pub max_frame_size: u64,
    /// Largest message, summed over its fragments (inclusive).
    pub max_message_size: u64,
}

/// What the peer sent, handed out as soon as it is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message; the bytes are valid UTF-8.
    Text(&'a [u8]),
    /// A whole binary message.
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame: `None` when it carried no status code.
    Close(Option<(CloseCode, &'a str)>),
}

/// Whether the caller wants more events from the current input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop after this event; `feed` returns the bytes consumed so far.
    Pause,
}

/// A violation that fails the connection with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close {})", code.0)]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: &'static str,
}

/// Incremental frame reader and message assembler for one connection.
#[derive(Debug, Default)]
pub struct Receiver {
    header: HeaderDecoder,
    utf8: Utf8Validator,
    message: Vec<u8>,
}

impl Receiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// RSV bits a negotiated extension may set on data frames (0 = none).
    pub fn set_allowed_rsv(&mut self, rsv: u8) {
        todo!("{rsv}")
    }

    /// Feeds wire bytes (still masked; they are unmasked in place) and calls
    /// `on_event` for each complete message or control frame.
    ///
    /// Returns the bytes consumed: all of `input`, unless `on_event` returned
    /// [`Flow::Pause`] or a close frame arrived — then it stops right after
    /// that frame and the caller owns the rest. After a close frame every
    /// further call consumes nothing and yields nothing.
    pub fn feed<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        mut on_event: F,
    ) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        let _ = (&self.header, &self.utf8, &self.message, input, limits, &mut on_event);
        todo!()
    }

    /// Heap bytes held for partial messages or control frames.
    pub fn buffered_bytes(&self) -> usize {
        todo!()
    }

    /// True when a close frame has been received.
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}
