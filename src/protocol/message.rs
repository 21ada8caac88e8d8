//! The receive side of an open WebSocket connection: frames in, whole
//! messages and control frames out (RFC 6455 §5.4–5.6).
//!
//! Owns: frame-sequence rules (fragmentation, control frames in between),
//! size limits checked from the header, UTF-8 checked as bytes arrive, and the
//! buffer of a message still being received. Compressed messages
//! (permessage-deflate, RSV1 on the first frame) are buffered whole and
//! inflated by the loop's shared [`Inflater`] under `max_message_size`;
//! their UTF-8 is checked on the inflated bytes. The state between two
//! inputs can be exported and imported ([`ReceiverState`]) so a handover
//! carries a partly received frame or message to the next process.
//! Must never: hold a buffer, or any state of a frame, while no frame or
//! message is partially received (idle connections cost two words),
//! allocate for a message that arrives whole in one input slice (it is
//! handed out borrowed), or know anything about sockets or replies.

use super::close::{self, CloseCode, CloseError};
use super::deflate::{Decompressor, InflateError, RSV_COMPRESSED};
use super::frame::{
    self, FrameHeader, HeaderDecoder, HeaderError, MAX_CONTROL_PAYLOAD, OpCode, apply_mask,
};
use super::utf8::Utf8Validator;

/// How far past the bytes already received the message buffer may grow in
/// one step. The header's length is the peer's claim, not data: a client
/// announcing 16 MiB and sending one byte must not cost 16 MiB.
const MAX_RESERVE_AHEAD: u64 = 64 * 1024;
/// The shared inflate buffer keeps at most this capacity between messages;
/// a larger one (a big message just went by) is released after delivery.
const KEEP_INFLATED_CAPACITY: usize = 64 * 1024;

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

const fn protocol_error(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason,
    }
}

const ERR_RSV: ProtocolError = protocol_error("reserved bits set without a negotiated extension");
const ERR_RESERVED_OPCODE: ProtocolError = protocol_error("reserved opcode");
const ERR_LENGTH_TOP_BIT: ProtocolError = protocol_error("64-bit length with its top bit set");
const ERR_NON_MINIMAL_LENGTH: ProtocolError = protocol_error("length not minimally encoded");
const ERR_FRAGMENTED_CONTROL: ProtocolError = protocol_error("fragmented control frame");
const ERR_CONTROL_TOO_LONG: ProtocolError = protocol_error("control frame payload over 125 bytes");
const ERR_UNMASKED: ProtocolError = protocol_error("unmasked client frame");
const ERR_UNEXPECTED_CONTINUATION: ProtocolError =
    protocol_error("continuation frame without a message in progress");
const ERR_INTERLEAVED_MESSAGE: ProtocolError =
    protocol_error("new data frame inside a fragmented message");
const ERR_FRAME_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::MESSAGE_TOO_BIG,
    reason: "frame exceeds the size limit",
};
const ERR_MESSAGE_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::MESSAGE_TOO_BIG,
    reason: "message exceeds the size limit",
};
const ERR_INVALID_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "text message is not valid UTF-8",
};
const ERR_TRUNCATED_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "text message ends inside a UTF-8 sequence",
};

const ERR_NOT_NEGOTIATED: ProtocolError =
    protocol_error("compressed message without permessage-deflate");
const ERR_INFLATED_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::MESSAGE_TOO_BIG,
    reason: "inflated message exceeds the size limit",
};
const ERR_CORRUPT_DEFLATE: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "compressed message is not valid DEFLATE data",
};

fn inflate_error(err: InflateError) -> &'static ProtocolError {
    match err {
        InflateError::TooBig => &ERR_INFLATED_TOO_BIG,
        InflateError::Corrupt => &ERR_CORRUPT_DEFLATE,
    }
}

/// Inflates compressed messages (permessage-deflate, RFC 7692) for every
/// connection of an event loop: messages are inflated only once complete,
/// one at a time, so one instance serves them all and no connection keeps
/// inflate state between messages.
#[derive(Debug, Default)]
pub struct Inflater {
    decompressor: Decompressor,
    out: Vec<u8>,
}

impl Inflater {
    /// Allocates nothing until the first compressed message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inflates one whole message under `limit` (the largest inflated size
    /// allowed); the result lives until the next call.
    fn inflate(&mut self, compressed: &[u8], limit: u64) -> Result<&[u8], &'static ProtocolError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.out.clear();
        self.decompressor
            .inflate_message(compressed, &mut self.out, limit)
            .map_err(inflate_error)?;
        Ok(&self.out)
    }

    /// Gives back a buffer that a large message grew.
    fn trim(&mut self) {
        if self.out.capacity() > KEEP_INFLATED_CAPACITY {
            self.out = Vec::new();
        }
    }
}

fn header_error(err: HeaderError) -> &'static ProtocolError {
    match err {
        HeaderError::ReservedOpcode(_) => &ERR_RESERVED_OPCODE,
        HeaderError::LengthTopBit => &ERR_LENGTH_TOP_BIT,
        HeaderError::NonMinimalLength => &ERR_NON_MINIMAL_LENGTH,
    }
}

fn close_error(err: CloseError) -> &'static ProtocolError {
    match err {
        CloseError::OneByte => &ERR_CLOSE_ONE_BYTE,
        CloseError::BadCode(_) => &ERR_CLOSE_BAD_CODE,
        CloseError::BadReason => &ERR_CLOSE_BAD_REASON,
    }
}

const ERR_CLOSE_ONE_BYTE: ProtocolError = protocol_error("close payload of one byte");
const ERR_CLOSE_BAD_CODE: ProtocolError = protocol_error("close code not allowed on the wire");
const ERR_CLOSE_BAD_REASON: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "close reason is not valid UTF-8",
};

/// Where the byte stream is within the current frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Between frames, or inside a header split across reads.
    #[default]
    Header,
    /// Inside the payload of a data frame.
    Data { fin: bool },
    /// Inside the payload of a control frame.
    Control(OpCode),
    /// A close frame was delivered; nothing more is read.
    Closed,
}

/// The kind of the message being assembled from data frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Assembling {
    #[default]
    Nothing,
    Text,
    Binary,
}

/// A control frame payload split across reads (rare, so boxed to keep a
/// partial frame's state small).
#[derive(Debug)]
struct ControlBuf {
    data: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

/// Incremental frame reader and message assembler for one connection.
///
/// At a frame boundary with no message being assembled (where an idle
/// connection always is) it holds no heap memory and two words: everything
/// a frame or message in progress needs is in [`Partial`], boxed only while
/// one is incomplete at the end of an input (or the input broke a rule).
#[derive(Debug, Default)]
pub struct Receiver {
    /// The frame or message left incomplete by the last input, or the
    /// error it failed with; `None` at a frame boundary with nothing
    /// assembled.
    partial: Option<Box<Partial>>,
    /// RSV bits a negotiated extension may set on a message's first frame.
    allowed_rsv: u8,
    /// A close frame was delivered; nothing more is read.
    closed: bool,
}

/// The receiver's state inside a frame or a fragmented message. It lives on
/// the stack while an input is decoded and is boxed into the [`Receiver`]
/// only when the input ends before the frame (or message) does, or breaks
/// a rule (then it keeps the error).
#[derive(Debug, Default)]
struct Partial {
    header: HeaderDecoder,
    utf8: Utf8Validator,
    /// Payload of a message that did not arrive whole in one input slice.
    message: Vec<u8>,
    control: Option<Box<ControlBuf>>,
    /// Payload bytes of the current frame not yet received.
    remaining: u64,
    /// The current frame's key, rotated so index 0 applies to the next byte.
    mask: [u8; 4],
    phase: Phase,
    assembling: Assembling,
    /// The message being assembled had RSV1 set: its payload is DEFLATE data.
    compressed: bool,
    /// Sticky: every later call reports the same error. Kept in the boxed
    /// state (with its buffers released), as a failed connection is
    /// closing anyway.
    failed: Option<&'static ProtocolError>,
}

/// Whether the feed loop goes on after delivering an event.
enum Next {
    Continue,
    Stop,
}

impl Receiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// RSV bits a negotiated extension may set on data frames (0 = none).
    pub fn set_allowed_rsv(&mut self, rsv: u8) {
        self.allowed_rsv = rsv;
    }

    /// Feeds wire bytes (still masked; they are unmasked in place) and calls
    /// `on_event` for each complete message or control frame.
    ///
    /// Returns the bytes consumed: all of `input`, unless `on_event` returned
    /// [`Flow::Pause`] or a close frame arrived — then it stops right after
    /// that frame and the caller owns the rest. After a close frame every
    /// further call consumes nothing and yields nothing.
    ///
    /// A compressed message (RSV1, allowed only after
    /// `set_allowed_rsv(RSV_COMPRESSED)`) fails with 1002 here: use
    /// [`Receiver::feed_inflating`] for connections that negotiated
    /// permessage-deflate.
    pub fn feed<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_event: F,
    ) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        self.feed_inflating(input, limits, None, on_event)
    }

    /// [`Receiver::feed`], inflating compressed messages with `inflater`.
    ///
    /// A compressed message is buffered whole (its compressed size bounded
    /// by `max_message_size`), then inflated with `max_message_size` as a
    /// hard limit on the output, checked as it grows (1009 past it; 1007
    /// for data that is not DEFLATE). A text message's UTF-8 is checked on
    /// the inflated bytes.
    pub fn feed_inflating<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        mut inflater: Option<&mut Inflater>,
        mut on_event: F,
    ) -> Result<usize, ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        if let Some(err) = self.partial.as_ref().and_then(|partial| partial.failed) {
            return Err(*err);
        }
        if self.closed {
            return Ok(0);
        }
        // Whole frames (the common case) are decoded with a state on the
        // stack; only one left incomplete is moved to the heap.
        let mut fresh = None;
        let partial = match self.partial.as_deref_mut() {
            Some(partial) => partial,
            None => fresh.insert(Partial::default()),
        };
        let result = partial.run(
            input,
            limits,
            self.allowed_rsv,
            &mut inflater,
            &mut on_event,
        );
        let closed = partial.phase == Phase::Closed;
        let keep = match result {
            Ok(_) => !closed && !partial.at_rest(),
            Err(err) => {
                partial.failed = Some(err);
                partial.release();
                true
            }
        };
        match fresh {
            Some(partial) if keep => self.partial = Some(Box::new(partial)),
            Some(_) => {}
            None if keep => {}
            None => self.partial = None,
        }
        self.closed = closed;
        if let Some(inflater) = inflater {
            inflater.trim();
        }
        result.map_err(|err| *err)
    }

    /// Heap bytes held for the payload of a partial message or control
    /// frame (the few dozen bytes of a partial frame's state not counted).
    pub fn buffered_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |partial| {
            let control = if partial.control.is_some() {
                size_of::<ControlBuf>()
            } else {
                0
            };
            partial.message.capacity() + control
        })
    }

    /// True when a close frame has been received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A [`Receiver`]'s state between two inputs, as a handover carries it to
/// the next process ([`Receiver::export`], [`Receiver::import`]).
///
/// The UTF-8 validator's state is not carried: it is a function of the text
/// assembled so far (the bytes of an uncompressed text message are checked
/// exactly as they are buffered), so import re-derives it by validating
/// those bytes, which also rejects a state holding invalid text. A
/// compressed message's UTF-8 is checked after inflating, as always.
#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReceiverState {
    allowed_rsv: u8,
    closed: bool,
    frame: FrameState,
    message: Option<AssemblyState>,
}

/// Where the byte stream is within the current frame.
#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum FrameState {
    /// Between frames: the first bytes of a header split across inputs
    /// (none at a frame boundary).
    Header(Vec<u8>),
    /// Inside the payload of a data frame of the message being assembled;
    /// `mask` is rotated so its first byte applies to the next payload byte.
    Data {
        fin: bool,
        remaining: u64,
        mask: [u8; 4],
    },
    /// Inside the payload of a control frame, with what arrived of it.
    Control {
        kind: ControlKind,
        remaining: u64,
        mask: [u8; 4],
        received: Vec<u8>,
    },
}

#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum ControlKind {
    Ping,
    Pong,
    Close,
}

#[cfg_attr(not(test), allow(dead_code))]
impl ControlKind {
    fn of(opcode: OpCode) -> Option<ControlKind> {
        match opcode {
            OpCode::Ping => Some(ControlKind::Ping),
            OpCode::Pong => Some(ControlKind::Pong),
            OpCode::Close => Some(ControlKind::Close),
            _ => None,
        }
    }

    fn opcode(self) -> OpCode {
        match self {
            ControlKind::Ping => OpCode::Ping,
            ControlKind::Pong => OpCode::Pong,
            ControlKind::Close => OpCode::Close,
        }
    }
}

/// A fragmented message being assembled.
#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AssemblyState {
    text: bool,
    /// RSV1 was set on its first frame: `received` is DEFLATE data.
    compressed: bool,
    /// The payload received so far (unmasked).
    received: Vec<u8>,
}

#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
impl Receiver {
    /// The receiver's state between two inputs; `None` when it failed (the
    /// connection is closing and is not handed over). At a frame boundary
    /// with nothing assembled (an idle connection) it is a few bytes.
    pub(crate) fn export(&self) -> Option<ReceiverState> {
        let mut state = ReceiverState {
            allowed_rsv: self.allowed_rsv,
            closed: self.closed,
            frame: FrameState::Header(Vec::new()),
            message: None,
        };
        let Some(partial) = self.partial.as_deref() else {
            return Some(state);
        };
        if partial.failed.is_some() {
            return None;
        }
        state.frame = match partial.phase {
            // A closed receiver keeps no partial state; `closed` says it all.
            Phase::Header | Phase::Closed => FrameState::Header(partial.header.pending().to_vec()),
            Phase::Data { fin } => FrameState::Data {
                fin,
                remaining: partial.remaining,
                mask: partial.mask,
            },
            Phase::Control(opcode) => FrameState::Control {
                kind: ControlKind::of(opcode)?,
                remaining: partial.remaining,
                mask: partial.mask,
                received: partial
                    .control
                    .as_ref()
                    .and_then(|c| c.data.get(..usize::from(c.len)))
                    .unwrap_or_default()
                    .to_vec(),
            },
        };
        state.message = match partial.assembling {
            Assembling::Nothing => None,
            kind => Some(AssemblyState {
                text: kind == Assembling::Text,
                compressed: partial.compressed,
                received: partial.message.clone(),
            }),
        };
        Some(state)
    }

    /// Rebuilds a receiver from an exported state, checking it against
    /// `limits` (the route's, in this process) and the frame rules: a state
    /// this receiver could not have reached under them is refused, with what
    /// is wrong. Allocates only what the state itself holds.
    pub(crate) fn import(state: ReceiverState, limits: &Limits) -> Result<Receiver, String> {
        let ReceiverState {
            allowed_rsv,
            closed,
            frame,
            message,
        } = state;
        let partial = restore_partial(allowed_rsv, frame, message, limits)
            .map_err(|why| format!("receiver state: {why}"))?;
        if closed && !partial.at_rest() {
            return Err("receiver state: closed with a frame or message in progress".into());
        }
        Ok(Receiver {
            partial: (!partial.at_rest()).then(|| Box::new(partial)),
            allowed_rsv,
            closed,
        })
    }
}

/// The [`Partial`] an exported state describes, every part checked.
#[cfg_attr(not(test), allow(dead_code))]
fn restore_partial(
    allowed_rsv: u8,
    frame: FrameState,
    message: Option<AssemblyState>,
    limits: &Limits,
) -> Result<Partial, &'static str> {
    if allowed_rsv & !frame::RSV_BITS != 0 {
        return Err("allowed RSV bits outside the RSV field");
    }
    let mut partial = Partial::default();
    if let Some(message) = message {
        if message.compressed && allowed_rsv & RSV_COMPRESSED == 0 {
            return Err("compressed message without permessage-deflate");
        }
        if message.received.len() as u64 > limits.max_message_size {
            return Err("message longer than max_message_size");
        }
        if message.text && !message.compressed {
            partial
                .utf8
                .feed(&message.received)
                .map_err(|_| "assembled text is not valid UTF-8")?;
        }
        partial.assembling = if message.text {
            Assembling::Text
        } else {
            Assembling::Binary
        };
        partial.compressed = message.compressed;
        partial.message = message.received;
    }
    match frame {
        FrameState::Header(bytes) => {
            let Some(&first) = bytes.first() else {
                return Ok(partial);
            };
            check_rsv(first, allowed_rsv).map_err(|err| err.reason)?;
            let (used, header) = partial
                .header
                .feed(&bytes)
                .map_err(|err| header_error(err).reason)?;
            if header.is_some() || used != bytes.len() {
                return Err("partial header holds a whole header");
            }
        }
        FrameState::Data {
            fin,
            remaining,
            mask,
        } => {
            if partial.assembling == Assembling::Nothing {
                return Err("data frame without a message being assembled");
            }
            if remaining == 0 {
                return Err("data frame with no payload left");
            }
            if remaining > limits.max_frame_size {
                return Err("frame longer than max_frame_size");
            }
            let so_far = partial.message.len() as u64;
            if so_far.saturating_add(remaining) > limits.max_message_size {
                return Err("message longer than max_message_size");
            }
            partial.phase = Phase::Data { fin };
            partial.remaining = remaining;
            partial.mask = mask;
        }
        FrameState::Control {
            kind,
            remaining,
            mask,
            received,
        } => {
            if remaining == 0 {
                return Err("control frame with no payload left");
            }
            let total = (received.len() as u64).saturating_add(remaining);
            if total > MAX_CONTROL_PAYLOAD as u64 {
                return Err("control frame payload over 125 bytes");
            }
            if !received.is_empty() {
                let mut buf = Box::new(ControlBuf {
                    data: [0; MAX_CONTROL_PAYLOAD],
                    len: 0,
                });
                let slot = buf
                    .data
                    .get_mut(..received.len())
                    .ok_or("control frame payload over 125 bytes")?;
                slot.copy_from_slice(&received);
                buf.len = u8::try_from(received.len())
                    .map_err(|_| "control frame payload over 125 bytes")?;
                partial.control = Some(buf);
            }
            partial.phase = Phase::Control(kind.opcode());
            partial.remaining = remaining;
            partial.mask = mask;
        }
    }
    Ok(partial)
}

impl Partial {
    /// At a frame boundary with nothing assembled or buffered: the state
    /// [`Partial::default`] makes, so it need not be kept.
    fn at_rest(&self) -> bool {
        self.phase == Phase::Header
            && self.header.is_empty()
            && self.assembling == Assembling::Nothing
            && self.message.capacity() == 0
            && self.control.is_none()
    }

    fn release(&mut self) {
        self.message = Vec::new();
        self.control = None;
    }

    fn run<F>(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        allowed_rsv: u8,
        inflater: &mut Option<&mut Inflater>,
        on_event: &mut F,
    ) -> Result<usize, &'static ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        let mut pos = 0;
        loop {
            // Invariant: `pos <= input.len()`; every step advances it by at
            // most the bytes left.
            let next = match self.phase {
                Phase::Header => {
                    let rest = &input[pos..];
                    let Some(&first) = rest.first() else {
                        return Ok(pos);
                    };
                    if self.header.is_empty() {
                        // RSV bits are judged before anything else in the header.
                        check_rsv(first, allowed_rsv)?;
                    }
                    let (used, header) = self.header.feed(rest).map_err(header_error)?;
                    pos += used;
                    match header {
                        Some(header) => self.start_frame(&header, limits)?,
                        None => return Ok(pos),
                    }
                    Next::Continue
                }
                Phase::Data { fin } => {
                    let inflater = inflater.as_deref_mut();
                    self.data_payload(input, &mut pos, fin, limits, inflater, on_event)?
                }
                Phase::Control(opcode) => {
                    self.control_payload(input, &mut pos, opcode, on_event)?
                }
                Phase::Closed => Next::Stop,
            };
            if let Next::Stop = next {
                return Ok(pos);
            }
        }
    }
}

fn check_rsv(first_byte: u8, allowed_rsv: u8) -> Result<(), &'static ProtocolError> {
    let (rsv, opcode) = frame::rsv_and_opcode(first_byte);
    // An extension's bits belong to the message, so only the frame that
    // starts one may carry them.
    let allowed = match opcode {
        Some(OpCode::Text | OpCode::Binary) => allowed_rsv,
        _ => 0,
    };
    if rsv & !allowed != 0 {
        return Err(&ERR_RSV);
    }
    Ok(())
}

impl Partial {
    /// Applies every rule that the header alone decides, before any payload
    /// byte is buffered, and sets up the payload phase.
    fn start_frame(
        &mut self,
        header: &FrameHeader,
        limits: &Limits,
    ) -> Result<(), &'static ProtocolError> {
        let len = header.payload_len;
        let opcode = header.opcode;
        if opcode.is_control() {
            if !header.fin {
                return Err(&ERR_FRAGMENTED_CONTROL);
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(&ERR_CONTROL_TOO_LONG);
            }
        }
        let Some(mask) = header.mask else {
            return Err(&ERR_UNMASKED);
        };
        let assembling = match (opcode, self.assembling) {
            (OpCode::Continuation, Assembling::Nothing) => {
                return Err(&ERR_UNEXPECTED_CONTINUATION);
            }
            (OpCode::Text | OpCode::Binary, Assembling::Text | Assembling::Binary) => {
                return Err(&ERR_INTERLEAVED_MESSAGE);
            }
            (OpCode::Text, _) => Assembling::Text,
            (OpCode::Binary, _) => Assembling::Binary,
            (_, current) => current,
        };
        if !opcode.is_control() {
            if len > limits.max_frame_size {
                return Err(&ERR_FRAME_TOO_BIG);
            }
            let so_far = self.message.len() as u64;
            if so_far.saturating_add(len) > limits.max_message_size {
                return Err(&ERR_MESSAGE_TOO_BIG);
            }
        }
        self.mask = mask;
        self.remaining = len;
        if opcode.is_control() {
            self.phase = Phase::Control(opcode);
        } else {
            if self.assembling == Assembling::Nothing {
                self.utf8 = Utf8Validator::new();
                // `check_rsv` let RSV1 through only on a message's first
                // frame, and only when the extension was negotiated.
                self.compressed = header.rsv & RSV_COMPRESSED != 0;
            }
            self.assembling = assembling;
            self.phase = Phase::Data { fin: header.fin };
        }
        Ok(())
    }

    /// Payload bytes of the current frame available in `input` from `pos`.
    fn available(&self, input: &[u8], pos: usize) -> usize {
        let left = input.len().saturating_sub(pos);
        usize::try_from(self.remaining).map_or(left, |r| r.min(left))
    }

    fn data_payload<F>(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
        fin: bool,
        limits: &Limits,
        inflater: Option<&mut Inflater>,
        on_event: &mut F,
    ) -> Result<Next, &'static ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        let text = self.assembling == Assembling::Text;
        let compressed = self.compressed;
        let n = self.available(input, *pos);
        let start = *pos;
        let chunk = &mut input[start..start + n];
        let whole = n as u64 == self.remaining;

        if fin && whole && self.message.is_empty() {
            // The rest of the message is right here: hand it out borrowed.
            apply_mask(chunk, self.mask, 0);
            if text && !compressed {
                self.utf8.feed(chunk).map_err(|_| &ERR_INVALID_UTF8)?;
                self.utf8.finish().map_err(|_| &ERR_TRUNCATED_UTF8)?;
            }
            *pos += n;
            self.remaining = 0;
            self.phase = Phase::Header;
            self.assembling = Assembling::Nothing;
            self.compressed = false;
            let payload = &input[start..start + n];
            if compressed {
                return deliver_inflated(text, payload, limits, inflater, on_event);
            }
            let event = if text {
                Event::Text(payload)
            } else {
                Event::Binary(payload)
            };
            return Ok(flow_to_next(on_event(event)));
        }

        if n == 0 && !whole {
            return Ok(Next::Stop);
        }
        apply_mask(chunk, self.mask, 0);
        self.mask.rotate_left(n % 4);
        if text && !compressed {
            // Checked before buffering so bad text fails as soon as it arrives.
            self.utf8.feed(chunk).map_err(|_| &ERR_INVALID_UTF8)?;
        }
        self.remaining -= n as u64;
        *pos += n;
        let message = &mut self.message;
        grow_within(message, n, self.remaining, limits.max_message_size);
        message.extend_from_slice(chunk);
        if self.remaining > 0 {
            return Ok(Next::Stop);
        }
        self.phase = Phase::Header;
        if !fin {
            return Ok(Next::Continue);
        }
        if text && !compressed {
            self.utf8.finish().map_err(|_| &ERR_TRUNCATED_UTF8)?;
        }
        self.assembling = Assembling::Nothing;
        self.compressed = false;
        // Taking the buffer releases it once delivered.
        let message = std::mem::take(&mut self.message);
        if compressed {
            return deliver_inflated(text, &message, limits, inflater, on_event);
        }
        let event = if text {
            Event::Text(&message)
        } else {
            Event::Binary(&message)
        };
        Ok(flow_to_next(on_event(event)))
    }

    fn control_payload<F>(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
        opcode: OpCode,
        on_event: &mut F,
    ) -> Result<Next, &'static ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        let n = self.available(input, *pos);
        let start = *pos;
        let chunk = &mut input[start..start + n];
        let whole = n as u64 == self.remaining;
        apply_mask(chunk, self.mask, 0);
        *pos += n;
        self.remaining -= n as u64;

        if whole && self.control.is_none() {
            self.phase = Phase::Header;
            return self.deliver_control(opcode, &input[start..start + n], on_event);
        }
        if n == 0 {
            return Ok(Next::Stop);
        }
        self.mask.rotate_left(n % 4);
        let buf = self.control.get_or_insert_with(|| {
            Box::new(ControlBuf {
                data: [0; MAX_CONTROL_PAYLOAD],
                len: 0,
            })
        });
        let held = usize::from(buf.len);
        // `start_frame` capped the payload at MAX_CONTROL_PAYLOAD, so it fits.
        let Some(slot) = buf.data.get_mut(held..held + n) else {
            return Err(&ERR_CONTROL_TOO_LONG);
        };
        slot.copy_from_slice(chunk);
        buf.len = (held + n) as u8;
        if self.remaining > 0 {
            return Ok(Next::Stop);
        }
        self.phase = Phase::Header;
        let Some(buf) = self.control.take() else {
            return Ok(Next::Continue);
        };
        let payload = buf.data.get(..usize::from(buf.len)).unwrap_or_default();
        self.deliver_control(opcode, payload, on_event)
    }

    fn deliver_control<F>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        on_event: &mut F,
    ) -> Result<Next, &'static ProtocolError>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        match opcode {
            OpCode::Ping => Ok(flow_to_next(on_event(Event::Ping(payload)))),
            OpCode::Pong => Ok(flow_to_next(on_event(Event::Pong(payload)))),
            _ => {
                let parsed = close::parse_close_payload(payload).map_err(close_error)?;
                // Whatever follows a close frame is not ours to read.
                self.phase = Phase::Closed;
                self.release();
                on_event(Event::Close(parsed));
                Ok(Next::Stop)
            }
        }
    }
}

/// Inflates a complete compressed message and hands it out.
fn deliver_inflated<F>(
    text: bool,
    compressed: &[u8],
    limits: &Limits,
    inflater: Option<&mut Inflater>,
    on_event: &mut F,
) -> Result<Next, &'static ProtocolError>
where
    F: FnMut(Event<'_>) -> Flow,
{
    let Some(inflater) = inflater else {
        return Err(&ERR_NOT_NEGOTIATED);
    };
    let payload = inflater.inflate(compressed, limits.max_message_size)?;
    let event = if text {
        std::str::from_utf8(payload).map_err(|_| &ERR_INVALID_UTF8)?;
        Event::Text(payload)
    } else {
        Event::Binary(payload)
    };
    Ok(flow_to_next(on_event(event)))
}

/// Makes room for `n` more bytes of a message. Growth is geometric, so
/// appending stays amortized O(1) per byte, but never takes the capacity past
/// `limit` (the message can never be larger), nor reserves more than
/// [`MAX_RESERVE_AHEAD`] beyond what has arrived on a header's word alone.
fn grow_within(buf: &mut Vec<u8>, n: usize, remaining: u64, limit: u64) {
    let needed = buf.len().saturating_add(n);
    if needed <= buf.capacity() {
        return;
    }
    let ahead = usize::try_from(remaining.min(MAX_RESERVE_AHEAD)).unwrap_or(0);
    let cap = usize::try_from(limit).unwrap_or(usize::MAX).max(needed);
    let target = buf
        .capacity()
        .saturating_mul(2)
        .max(needed.saturating_add(ahead))
        .min(cap);
    buf.reserve_exact(target - buf.len());
}

fn flow_to_next(flow: Flow) -> Next {
    match flow {
        Flow::Continue => Next::Continue,
        Flow::Pause => Next::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{FrameHeader, MAX_HEADER_LEN, encode_header};
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x2e];
    const FIN: u8 = 0x80;
    const CONT: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const BIN: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const RSV1: u8 = 0x40;

    const BIG: Limits = Limits {
        max_frame_size: 1 << 24,
        max_message_size: 1 << 24,
    };

    /// Header bytes with an arbitrary first byte (any opcode, any RSV), masked.
    fn head(b0: u8, claimed_len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let h = FrameHeader {
            fin: false,
            rsv: 0,
            opcode: OpCode::Binary,
            mask,
            payload_len: claimed_len,
        };
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&h, &mut out);
        out[0] = b0;
        out[..n].to_vec()
    }

    /// A client frame: first byte as given, payload masked with [`KEY`].
    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = head(b0, payload.len() as u64, Some(KEY));
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], KEY, 0);
        out
    }

    fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = head(b0, payload.len() as u64, None);
        out.extend_from_slice(payload);
        out
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    /// An owned copy of an event, to compare across runs.
    #[derive(Clone, Debug, PartialEq)]
    enum Ev {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Event<'_>> for Ev {
        fn from(e: Event<'_>) -> Ev {
            match e {
                Event::Text(b) => Ev::Text(b.to_vec()),
                Event::Binary(b) => Ev::Binary(b.to_vec()),
                Event::Ping(b) => Ev::Ping(b.to_vec()),
                Event::Pong(b) => Ev::Pong(b.to_vec()),
                Event::Close(c) => Ev::Close(c.map(|(code, r)| (code.0, r.to_string()))),
            }
        }
    }

    fn text(s: &str) -> Ev {
        Ev::Text(s.as_bytes().to_vec())
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Outcome {
        events: Vec<Ev>,
        /// Bytes consumed in total, or the error.
        end: Result<usize, ProtocolError>,
    }

    /// Feeds `stream` cut at `cuts` (each piece a fresh slice, as a socket
    /// read would give), stopping at the first error or once closed.
    fn run_pieces(stream: &[u8], cuts: &[usize], limits: &Limits, rsv: u8) -> Outcome {
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(rsv);
        let mut inflater = Inflater::new();
        let mut events = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            let end = end.clamp(start, stream.len());
            let mut piece = stream[start..end].to_vec();
            let inflater = (rsv & RSV_COMPRESSED != 0).then_some(&mut inflater);
            match rx.feed_inflating(&mut piece, limits, inflater, |e| {
                events.push(Ev::from(e));
                Flow::Continue
            }) {
                Ok(n) => {
                    consumed += n;
                    if rx.is_closed() {
                        break;
                    }
                    assert_eq!(n, piece.len(), "all input consumed while open");
                }
                Err(err) => {
                    return Outcome {
                        events,
                        end: Err(err),
                    };
                }
            }
            start = end;
        }
        // Every Ok stream here ends between messages (or closed).
        assert_eq!(rx.buffered_bytes(), 0, "nothing held between messages");
        Outcome {
            events,
            end: Ok(consumed),
        }
    }

    /// Feeds `stream` up to `cut` into one receiver, carries its state
    /// through an encoded handover ([`Receiver::export`], postcard,
    /// [`Receiver::import`]) to a new one, and feeds it the rest.
    fn run_handed_over(stream: &[u8], cut: usize, limits: &Limits, rsv: u8) -> Outcome {
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(rsv);
        let mut inflater = Inflater::new();
        let mut events = Vec::new();
        let mut consumed = 0;
        let cut = cut.min(stream.len());
        for (start, end) in [(0, cut), (cut, stream.len())] {
            if start > 0 {
                let state = rx.export().expect("an open receiver exports");
                let bytes = postcard::to_allocvec(&state).expect("encodes");
                let back: ReceiverState = postcard::from_bytes(&bytes).expect("decodes");
                assert_eq!(back, state);
                rx = Receiver::import(back, limits).expect("imports what it exported");
                assert_eq!(rx.export(), Some(state), "import keeps every part");
                inflater = Inflater::new();
            }
            let mut piece = stream[start..end].to_vec();
            let inflater = (rsv & RSV_COMPRESSED != 0).then_some(&mut inflater);
            let fed = rx.feed_inflating(&mut piece, limits, inflater, |e| {
                events.push(Ev::from(e));
                Flow::Continue
            });
            match fed {
                Ok(n) => {
                    consumed += n;
                    if rx.is_closed() {
                        break;
                    }
                }
                Err(err) => {
                    assert_eq!(rx.export(), None, "a failed receiver is not handed over");
                    return Outcome {
                        events,
                        end: Err(err),
                    };
                }
            }
        }
        Outcome {
            events,
            end: Ok(consumed),
        }
    }

    /// Runs `stream` whole, split at every byte boundary and one byte at a
    /// time (sampled boundaries for long streams); all must agree.
    fn run_all_splits(stream: &[u8], limits: &Limits, rsv: u8) -> Outcome {
        let whole = run_pieces(stream, &[], limits, rsv);
        let step = if stream.len() <= 4096 {
            1
        } else {
            stream.len() / 257
        };
        for cut in (0..=stream.len()).step_by(step) {
            assert_eq!(
                run_pieces(stream, &[cut], limits, rsv),
                whole,
                "split at {cut}"
            );
        }
        // A handover encodes the message so far: fewer samples for big ones.
        let handover_step = if stream.len() <= 4096 {
            1
        } else {
            stream.len() / 17
        };
        for cut in (0..=stream.len()).step_by(handover_step) {
            assert_eq!(
                run_handed_over(stream, cut, limits, rsv),
                whole,
                "handed over at {cut}"
            );
        }
        let chop = if stream.len() <= 4096 { 1 } else { 997 };
        let cuts: Vec<usize> = (chop..stream.len()).step_by(chop).collect();
        assert_eq!(
            run_pieces(stream, &cuts, limits, rsv),
            whole,
            "chopped into {chop}-byte reads"
        );
        whole
    }

    enum End {
        /// Everything consumed.
        All,
        /// Stopped after this many bytes (a close frame).
        Upto(usize),
        Fail(u16),
    }

    struct Case {
        name: &'static str,
        stream: Vec<u8>,
        events: Vec<Ev>,
        end: End,
    }

    fn case(name: &'static str, frames: &[Vec<u8>], events: Vec<Ev>, end: End) -> Case {
        Case {
            name,
            stream: cat(frames),
            events,
            end,
        }
    }

    fn check_cases(cases: Vec<Case>, limits: &Limits, rsv: u8) {
        for c in cases {
            let got = run_all_splits(&c.stream, limits, rsv);
            assert_eq!(got.events, c.events, "{}", c.name);
            match (c.end, got.end) {
                (End::All, Ok(n)) => assert_eq!(n, c.stream.len(), "{}", c.name),
                (End::Upto(want), Ok(n)) => assert_eq!(n, want, "{}", c.name),
                (End::Fail(code), Err(err)) => assert_eq!(err.code.0, code, "{}: {err}", c.name),
                (_, other) => panic!("{}: unexpected end {other:?}", c.name),
            }
        }
    }

    #[test]
    fn framing_autobahn_1() {
        let mut cases = Vec::new();
        for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
            let t = "*".repeat(len);
            cases.push(case(
                "text of edge length",
                &[masked(FIN | TEXT, t.as_bytes())],
                vec![text(&t)],
                End::All,
            ));
            let b = vec![0xfe; len];
            cases.push(case(
                "binary of edge length",
                &[masked(FIN | BIN, &b)],
                vec![Ev::Binary(b.clone())],
                End::All,
            ));
        }
        check_cases(cases, &BIG, 0);
    }

    #[test]
    fn pings_autobahn_2() {
        let bin = [0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
        let p125 = vec![0xfe; 125];
        let mut ten = Vec::new();
        for i in 0..10u8 {
            ten.push(masked(FIN | PING, &[i]));
        }
        let cases = vec![
            case(
                "empty ping",
                &[masked(FIN | PING, b"")],
                vec![Ev::Ping(vec![])],
                End::All,
            ),
            case(
                "text ping",
                &[masked(FIN | PING, b"Hello, world!")],
                vec![Ev::Ping(b"Hello, world!".to_vec())],
                End::All,
            ),
            case(
                "binary ping",
                &[masked(FIN | PING, &bin)],
                vec![Ev::Ping(bin.to_vec())],
                End::All,
            ),
            case(
                "125-byte ping",
                &[masked(FIN | PING, &p125)],
                vec![Ev::Ping(p125.clone())],
                End::All,
            ),
            case(
                "126-byte ping",
                &[masked(FIN | PING, &[0; 126])],
                vec![],
                End::Fail(1002),
            ),
            case(
                "empty pong",
                &[masked(FIN | PONG, b"")],
                vec![Ev::Pong(vec![])],
                End::All,
            ),
            case(
                "pong with payload",
                &[masked(FIN | PONG, b"unsolicited")],
                vec![Ev::Pong(b"unsolicited".to_vec())],
                End::All,
            ),
            case(
                "pong then ping",
                &[masked(FIN | PONG, b"a"), masked(FIN | PING, b"b")],
                vec![Ev::Pong(b"a".to_vec()), Ev::Ping(b"b".to_vec())],
                End::All,
            ),
            case(
                "ten pings",
                &ten,
                (0..10).map(|i| Ev::Ping(vec![i])).collect(),
                End::All,
            ),
        ];
        check_cases(cases, &BIG, 0);
    }

    #[test]
    fn reserved_bits_autobahn_3() {
        let hello = masked(FIN | TEXT, b"Hello");
        let cases = vec![
            case(
                "text RSV=1",
                &[masked(FIN | 0x10 | TEXT, b"x")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "text then text RSV=2",
                &[hello.clone(), masked(FIN | 0x20 | TEXT, b"x")],
                vec![text("Hello")],
                End::Fail(1002),
            ),
            case(
                "text, text RSV=3, ping",
                &[
                    hello.clone(),
                    masked(FIN | 0x30 | TEXT, b"x"),
                    masked(FIN | PING, b""),
                ],
                vec![text("Hello")],
                End::Fail(1002),
            ),
            case(
                "binary RSV=4",
                &[masked(FIN | 0x40 | BIN, b"\x00")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "binary RSV=5",
                &[masked(FIN | 0x50 | BIN, b"\x00")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "ping RSV=6",
                &[masked(FIN | 0x60 | PING, b"x")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "close RSV=7",
                &[masked(FIN | 0x70 | CLOSE, b"")],
                vec![],
                End::Fail(1002),
            ),
        ];
        check_cases(cases, &BIG, 0);
    }

    /// `payload` as a permessage-deflate message payload (trailer stripped).
    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::protocol::deflate::Compressor::new(6)
            .compress(crate::protocol::deflate::WindowBits::MAX, payload, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn compressed_messages_inflate_across_every_split() {
        let text_msg = "héllo wörld, ".repeat(30);
        let packed = deflated(text_msg.as_bytes());
        let third = packed.len() / 3;
        let cases = vec![
            case(
                "whole compressed text",
                &[masked(FIN | RSV1 | TEXT, &packed)],
                vec![text(&text_msg)],
                End::All,
            ),
            case(
                "compressed text in three fragments, a ping between",
                &[
                    masked(RSV1 | TEXT, &packed[..third]),
                    masked(CONT, &packed[third..2 * third]),
                    masked(FIN | PING, b"p"),
                    masked(FIN | CONT, &packed[2 * third..]),
                ],
                vec![Ev::Ping(b"p".to_vec()), text(&text_msg)],
                End::All,
            ),
            case(
                "compressed then plain, both delivered",
                &[
                    masked(FIN | RSV1 | BIN, &deflated(&[7; 300])),
                    masked(FIN | BIN, &[7; 3]),
                ],
                vec![Ev::Binary(vec![7; 300]), Ev::Binary(vec![7; 3])],
                End::All,
            ),
            case(
                "empty compressed message",
                &[masked(FIN | RSV1 | TEXT, &deflated(b""))],
                vec![text("")],
                End::All,
            ),
            case(
                "corrupt DEFLATE data",
                &[masked(FIN | RSV1 | BIN, &[0xff, 0xff, 0xff, 0xff])],
                vec![],
                End::Fail(1007),
            ),
            case(
                "compressed invalid UTF-8",
                &[masked(FIN | RSV1 | TEXT, &deflated(b"ok \xff\xfe"))],
                vec![],
                End::Fail(1007),
            ),
            case(
                "compressed text cut inside a UTF-8 sequence",
                &[masked(
                    FIN | RSV1 | TEXT,
                    &deflated("é".as_bytes()[..1].as_ref()),
                )],
                vec![],
                End::Fail(1007),
            ),
        ];
        check_cases(cases, &BIG, RSV_COMPRESSED);
    }

    #[test]
    fn inflated_size_counts_against_the_message_limit() {
        let limits = Limits {
            max_frame_size: 1 << 20,
            max_message_size: 1000,
        };
        let exact = deflated(&[0; 1000]);
        let over = deflated(&[0; 1001]);
        check_cases(
            vec![
                case(
                    "inflates to exactly the limit",
                    &[masked(FIN | RSV1 | BIN, &exact)],
                    vec![Ev::Binary(vec![0; 1000])],
                    End::All,
                ),
                case(
                    "inflates one byte past the limit",
                    &[masked(FIN | RSV1 | BIN, &over)],
                    vec![],
                    End::Fail(1009),
                ),
            ],
            &limits,
            RSV_COMPRESSED,
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 MiB of zeros in about 64 KiB; the limit is 1 MiB.
        let bomb = deflated(&vec![0; 64 << 20]);
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let limits = Limits {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
        };
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(RSV_COMPRESSED);
        let mut inflater = Inflater::new();
        let mut stream = masked(FIN | RSV1 | BIN, &bomb);
        let err = rx
            .feed_inflating(&mut stream, &limits, Some(&mut inflater), |_| {
                panic!("no event for a bomb")
            })
            .unwrap_err();
        assert_eq!(err.code, CloseCode::MESSAGE_TOO_BIG);
        assert!(inflater.out.capacity() <= 64 * 1024, "buffer given back");
    }

    #[test]
    fn compressed_message_without_an_inflater_is_a_protocol_error() {
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(RSV_COMPRESSED);
        let mut stream = masked(FIN | RSV1 | TEXT, &deflated(b"abc"));
        let err = rx.feed(&mut stream, &BIG, |_| Flow::Continue).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
        // Without the extension negotiated, RSV1 fails at the header.
        let mut plain = Receiver::new();
        let mut stream = masked(FIN | RSV1 | TEXT, &deflated(b"abc"));
        let mut inflater = Inflater::new();
        let err = plain
            .feed_inflating(&mut stream, &BIG, Some(&mut inflater), |_| Flow::Continue)
            .unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn negotiated_rsv_only_on_the_first_data_frame() {
        let cases = vec![
            case(
                "RSV1 on a whole text frame",
                &[masked(FIN | RSV1 | TEXT, &deflated(b"abc"))],
                vec![text("abc")],
                End::All,
            ),
            case(
                "RSV1 on the first fragment",
                &[
                    masked(RSV1 | BIN, &deflated(b"abc")[..2]),
                    masked(FIN | CONT, &deflated(b"abc")[2..]),
                ],
                vec![Ev::Binary(b"abc".to_vec())],
                End::All,
            ),
            case(
                "RSV1 on a continuation",
                &[
                    masked(RSV1 | BIN, &deflated(b"abc")[..2]),
                    masked(FIN | RSV1 | CONT, &deflated(b"abc")[2..]),
                ],
                vec![],
                End::Fail(1002),
            ),
            case(
                "RSV1 on a ping",
                &[masked(FIN | RSV1 | PING, b"")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "RSV1 on a close",
                &[masked(FIN | RSV1 | CLOSE, b"")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "RSV2 not negotiated",
                &[masked(FIN | 0x20 | TEXT, b"a")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "RSV1 on a reserved opcode",
                &[masked(FIN | RSV1 | 0x3, b"")],
                vec![],
                End::Fail(1002),
            ),
        ];
        check_cases(cases, &BIG, 0b100);
    }

    #[test]
    fn opcodes_autobahn_4() {
        let hello = masked(FIN | TEXT, b"Hello");
        let ping = masked(FIN | PING, b"");
        let mut cases = Vec::new();
        for op in (0x3u8..=0x7).chain(0xB..=0xF) {
            cases.push(case(
                "reserved opcode",
                &[masked(FIN | op, b"")],
                vec![],
                End::Fail(1002),
            ));
            cases.push(case(
                "reserved opcode with payload",
                &[masked(FIN | op, b"reserved")],
                vec![],
                End::Fail(1002),
            ));
            cases.push(case(
                "text, reserved opcode, ping",
                &[hello.clone(), masked(FIN | op, b"x"), ping.clone()],
                vec![text("Hello")],
                End::Fail(1002),
            ));
        }
        check_cases(cases, &BIG, 0);
    }

    #[test]
    fn fragmentation_autobahn_5() {
        let cases = vec![
            case(
                "fragmented ping",
                &[masked(PING, b"frag"), masked(FIN | CONT, b"ment")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "fragmented pong",
                &[masked(PONG, b"frag"), masked(FIN | CONT, b"ment")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "text in two fragments",
                &[masked(TEXT, b"fragment1"), masked(FIN | CONT, b"fragment2")],
                vec![text("fragment1fragment2")],
                End::All,
            ),
            case(
                "binary in three fragments",
                &[
                    masked(BIN, b"\x01"),
                    masked(CONT, b"\x02\x03"),
                    masked(FIN | CONT, b"\x04"),
                ],
                vec![Ev::Binary(vec![1, 2, 3, 4])],
                End::All,
            ),
            case(
                "ping between fragments",
                &[
                    masked(TEXT, b"fragment1"),
                    masked(FIN | PING, b""),
                    masked(FIN | CONT, b"fragment2"),
                ],
                vec![Ev::Ping(vec![]), text("fragment1fragment2")],
                End::All,
            ),
            case(
                "pong and close between fragments",
                &[
                    masked(BIN, b"a"),
                    masked(FIN | PONG, b"p"),
                    masked(FIN | CLOSE, b""),
                    masked(FIN | CONT, b"b"),
                ],
                vec![Ev::Pong(b"p".to_vec()), Ev::Close(None)],
                End::Upto(masked(BIN, b"a").len() + masked(FIN | PONG, b"p").len() + 6),
            ),
            case(
                "continuation without start, fin",
                &[masked(FIN | CONT, b"x")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "continuation without start, no fin",
                &[masked(CONT, b"x"), masked(FIN | CONT, b"y")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "message, then stray continuations",
                &[
                    masked(TEXT, b"fragment1"),
                    masked(FIN | CONT, b"fragment2"),
                    masked(CONT, b"fragment3"),
                    masked(FIN | TEXT, b"fragment4"),
                ],
                vec![text("fragment1fragment2")],
                End::Fail(1002),
            ),
            case(
                "whole text then continuation",
                &[masked(FIN | TEXT, b"a"), masked(FIN | CONT, b"b")],
                vec![text("a")],
                End::Fail(1002),
            ),
            case(
                "text inside a fragmented text",
                &[masked(TEXT, b"a"), masked(FIN | TEXT, b"b")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "binary inside a fragmented text",
                &[masked(TEXT, b"a"), masked(BIN, b"b")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "pings between many fragments",
                &[
                    masked(TEXT, b"fragment1"),
                    masked(CONT, b"fragment2"),
                    masked(FIN | PING, b"pongme 1!"),
                    masked(CONT, b"fragment3"),
                    masked(FIN | PING, b"pongme 2!"),
                    masked(FIN | CONT, b"fragment4"),
                ],
                vec![
                    Ev::Ping(b"pongme 1!".to_vec()),
                    Ev::Ping(b"pongme 2!".to_vec()),
                    text("fragment1fragment2fragment3fragment4"),
                ],
                End::All,
            ),
            case(
                "empty fragments",
                &[
                    masked(TEXT, b""),
                    masked(CONT, b""),
                    masked(FIN | CONT, b""),
                ],
                vec![text("")],
                End::All,
            ),
            case(
                "empty fragments around data",
                &[
                    masked(BIN, b""),
                    masked(CONT, b"xy"),
                    masked(FIN | CONT, b""),
                ],
                vec![Ev::Binary(b"xy".to_vec())],
                End::All,
            ),
        ];
        check_cases(cases, &BIG, 0);
    }

    const VALID_UTF8: &[&[u8]] = &[
        b"",
        "κόσμε".as_bytes(),
        "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
        b"\x00",
        b"\x7f",
        b"\xc2\x80",
        b"\xdf\xbf",
        b"\xe0\xa0\x80",
        b"\xed\x9f\xbf",
        b"\xee\x80\x80",
        b"\xef\xbf\xbd",
        b"\xef\xbf\xbf",
        b"\xf0\x90\x80\x80",
        b"\xf4\x8f\xbf\xbf",
    ];

    const INVALID_UTF8: &[&[u8]] = &[
        b"\x80",
        b"\xbf",
        b"\xc0\x80",
        b"\xc1\xbf",
        b"\xe0\x80\x80",
        b"\xe0\x9f\xbf",
        b"\xf0\x80\x80\x80",
        b"\xf0\x8f\xbf\xbf",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\xfe",
        b"\xff",
        b"\xce",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    ];

    #[test]
    fn utf8_autobahn_6() {
        let mut cases = Vec::new();
        for &s in VALID_UTF8 {
            let ev = Ev::Text(s.to_vec());
            cases.push(case(
                "valid text",
                &[masked(FIN | TEXT, s)],
                vec![ev.clone()],
                End::All,
            ));
            for cut in 0..=s.len() {
                cases.push(case(
                    "valid text in two fragments",
                    &[masked(TEXT, &s[..cut]), masked(FIN | CONT, &s[cut..])],
                    vec![ev.clone()],
                    End::All,
                ));
            }
            let mut frames = vec![masked(TEXT, b"")];
            frames.extend(s.iter().map(|b| masked(CONT, std::slice::from_ref(b))));
            frames.push(masked(FIN | CONT, b""));
            cases.push(case(
                "valid text a byte per fragment",
                &frames,
                vec![ev],
                End::All,
            ));
        }
        for &s in INVALID_UTF8 {
            cases.push(case(
                "invalid text",
                &[masked(FIN | TEXT, s)],
                vec![],
                End::Fail(1007),
            ));
            for cut in 0..=s.len() {
                cases.push(case(
                    "invalid text across fragments",
                    &[masked(TEXT, &s[..cut]), masked(FIN | CONT, &s[cut..])],
                    vec![],
                    End::Fail(1007),
                ));
            }
            // Binary messages carry any bytes.
            cases.push(case(
                "binary is not checked",
                &[masked(FIN | BIN, s)],
                vec![Ev::Binary(s.to_vec())],
                End::All,
            ));
        }
        check_cases(cases, &BIG, 0);
    }

    #[test]
    fn utf8_fails_before_the_frame_is_complete() {
        let mut payload = vec![b'a'; 1000];
        payload[3] = 0xff;
        let frame = masked(FIN | TEXT, &payload);
        let head_len = frame.len() - payload.len();
        // Only the header and ten payload bytes have arrived.
        let mut first = frame[..head_len + 10].to_vec();
        let mut rx = Receiver::new();
        let err = rx
            .feed(&mut first, &BIG, |_| panic!("no event"))
            .unwrap_err();
        assert_eq!(err, ERR_INVALID_UTF8);

        // Same inside a fragmented message, with an overlong form split across
        // the boundary between fragments.
        let mut stream = cat(&[masked(TEXT, b"ok \xe0"), head(FIN | CONT, 1000, Some(KEY))]);
        let mut tail = vec![0x80, 0x80];
        apply_mask(&mut tail, KEY, 0);
        stream.extend_from_slice(&tail);
        let mut rx = Receiver::new();
        let err = rx
            .feed(&mut stream, &BIG, |_| panic!("no event"))
            .unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);

        let mut truncated = masked(FIN | TEXT, b"ab\xe2\x82");
        let mut rx = Receiver::new();
        let err = rx
            .feed(&mut truncated, &BIG, |_| panic!("no event"))
            .unwrap_err();
        assert_eq!(err, ERR_TRUNCATED_UTF8);
    }

    #[test]
    fn close_autobahn_7() {
        let close_empty = masked(FIN | CLOSE, b"");
        let junk = [masked(FIN | TEXT, b"after"), masked(FIN | PING, b"")].concat();
        let mut cases = vec![
            case(
                "empty close",
                std::slice::from_ref(&close_empty),
                vec![Ev::Close(None)],
                End::All,
            ),
            case(
                "nothing read after close",
                &[close_empty.clone(), junk.clone()],
                vec![Ev::Close(None)],
                End::Upto(close_empty.len()),
            ),
            case(
                "text then close",
                &[masked(FIN | TEXT, b"Hello"), close_empty.clone()],
                vec![text("Hello"), Ev::Close(None)],
                End::All,
            ),
            case(
                "close inside a fragmented message",
                &[
                    masked(TEXT, b"frag"),
                    close_empty.clone(),
                    masked(FIN | CONT, b"x"),
                ],
                vec![Ev::Close(None)],
                End::Upto(masked(TEXT, b"frag").len() + close_empty.len()),
            ),
            case(
                "one-byte close",
                &[masked(FIN | CLOSE, b"\x03")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "close with code only",
                &[masked(FIN | CLOSE, &close_payload(1000, b""))],
                vec![Ev::Close(Some((1000, String::new())))],
                End::All,
            ),
            case(
                "close with reason",
                &[masked(FIN | CLOSE, &close_payload(1000, b"Hello World!"))],
                vec![Ev::Close(Some((1000, "Hello World!".into())))],
                End::All,
            ),
            case(
                "close with 123-byte reason",
                &[masked(FIN | CLOSE, &close_payload(1000, &[b'*'; 123]))],
                vec![Ev::Close(Some((1000, "*".repeat(123))))],
                End::All,
            ),
            case(
                "close with 124-byte reason",
                &[masked(FIN | CLOSE, &close_payload(1000, &[b'*'; 124]))],
                vec![],
                End::Fail(1002),
            ),
            case(
                "close with invalid UTF-8 reason",
                &[masked(FIN | CLOSE, &close_payload(1000, INVALID_UTF8[17]))],
                vec![],
                End::Fail(1007),
            ),
            case(
                "fragmented close",
                &[masked(CLOSE, b""), masked(FIN | CONT, b"")],
                vec![],
                End::Fail(1002),
            ),
            case(
                "unmasked close",
                &[unmasked(FIN | CLOSE, b"")],
                vec![],
                End::Fail(1002),
            ),
        ];
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            cases.push(case(
                "allowed close code",
                &[masked(FIN | CLOSE, &close_payload(code, b""))],
                vec![Ev::Close(Some((code, String::new())))],
                End::All,
            ));
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            cases.push(case(
                "forbidden close code",
                &[masked(FIN | CLOSE, &close_payload(code, b""))],
                vec![],
                End::Fail(1002),
            ));
        }
        check_cases(cases, &BIG, 0);
    }

    #[test]
    fn closed_receiver_reads_nothing_more() {
        let mut stream = cat(&[
            masked(FIN | CLOSE, &close_payload(1001, b"bye")),
            masked(FIN | PING, b"late"),
        ]);
        let close_len = stream.len() - masked(FIN | PING, b"late").len();
        let mut rx = Receiver::new();
        let mut events = Vec::new();
        // Pausing changes nothing: a close always ends the read.
        let n = rx
            .feed(&mut stream, &BIG, |e| {
                events.push(Ev::from(e));
                Flow::Pause
            })
            .unwrap();
        assert_eq!(n, close_len);
        assert_eq!(events, vec![Ev::Close(Some((1001, "bye".into())))]);
        assert!(rx.is_closed());
        let mut rest = stream[n..].to_vec();
        assert_eq!(rx.feed(&mut rest, &BIG, |_| panic!("no event")), Ok(0));
        assert_eq!(rest, &stream[n..], "bytes after a close are left untouched");
        let mut more = masked(FIN | CLOSE, b"");
        assert_eq!(rx.feed(&mut more, &BIG, |_| panic!("no event")), Ok(0));
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn header_rules_apply_in_order_from_the_header_alone() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let started = masked(BIN, &[0; 100]);
        let top_bit = {
            let mut h = head(FIN | BIN, 0, None);
            h[1] = 0x7f;
            h.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 1]);
            h
        };
        let non_minimal = vec![FIN | BIN, 0xfe, 0x00, 0x05];
        let cases: Vec<(&str, Vec<u8>, ProtocolError)> = vec![
            (
                "RSV before opcode",
                head(FIN | 0x10 | 0x3, 0, None),
                ERR_RSV,
            ),
            (
                "RSV before control rules",
                head(0x20 | PING, 200, None),
                ERR_RSV,
            ),
            (
                "reserved opcode",
                head(FIN | 0xB, 500, None),
                ERR_RESERVED_OPCODE,
            ),
            ("length top bit", top_bit, ERR_LENGTH_TOP_BIT),
            ("non-minimal length", non_minimal, ERR_NON_MINIMAL_LENGTH),
            (
                "control FIN=0 first",
                head(PING, 500, None),
                ERR_FRAGMENTED_CONTROL,
            ),
            (
                "control too long",
                head(FIN | CLOSE, 126, None),
                ERR_CONTROL_TOO_LONG,
            ),
            ("unmasked", head(FIN | CONT, 1000, None), ERR_UNMASKED),
            ("unmasked text", head(FIN | TEXT, 5, None), ERR_UNMASKED),
            (
                "continuation",
                head(FIN | CONT, 1000, Some(KEY)),
                ERR_UNEXPECTED_CONTINUATION,
            ),
            (
                "interleaved",
                cat(&[started.clone(), head(FIN | TEXT, 1000, Some(KEY))]),
                ERR_INTERLEAVED_MESSAGE,
            ),
            (
                "frame size",
                head(FIN | BIN, 101, Some(KEY)),
                ERR_FRAME_TOO_BIG,
            ),
            (
                "frame size before message size",
                cat(&[started.clone(), head(FIN | CONT, 101, Some(KEY))]),
                ERR_FRAME_TOO_BIG,
            ),
            (
                "message size",
                cat(&[started.clone(), head(FIN | CONT, 51, Some(KEY))]),
                ERR_MESSAGE_TOO_BIG,
            ),
        ];
        for (name, stream, want) in cases {
            let got = run_all_splits(&stream, &limits, 0);
            assert_eq!(got.events, vec![], "{name}");
            assert_eq!(got.end, Err(want), "{name}");
        }
    }

    #[test]
    fn size_limits_are_inclusive() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let at_frame = vec![7u8; 100];
        let cases = vec![
            case(
                "frame exactly at the limit",
                &[masked(FIN | BIN, &at_frame)],
                vec![Ev::Binary(at_frame.clone())],
                End::All,
            ),
            case(
                "frame one over",
                &[masked(FIN | BIN, &[7; 101])],
                vec![],
                End::Fail(1009),
            ),
            case(
                "message exactly at the limit",
                &[masked(BIN, &at_frame), masked(FIN | CONT, &[8; 50])],
                vec![Ev::Binary([at_frame.clone(), vec![8; 50]].concat())],
                End::All,
            ),
            case(
                "message one over",
                &[masked(BIN, &at_frame), masked(FIN | CONT, &[8; 51])],
                vec![],
                End::Fail(1009),
            ),
            case(
                "control frames are not data",
                &[
                    masked(BIN, &at_frame),
                    masked(FIN | PING, &[1; 125]),
                    masked(FIN | CONT, &[8; 50]),
                ],
                vec![
                    Ev::Ping(vec![1; 125]),
                    Ev::Binary([at_frame.clone(), vec![8; 50]].concat()),
                ],
                End::All,
            ),
        ];
        check_cases(cases, &limits, 0);

        // From the header alone: no payload byte has been sent yet.
        let tight = Limits {
            max_frame_size: 1 << 20,
            max_message_size: 1000,
        };
        let mut rx = Receiver::new();
        assert_eq!(
            rx.feed(&mut head(FIN | TEXT, 1000, Some(KEY)), &tight, |_| {
                Flow::Continue
            }),
            Ok(8)
        );
        let mut rx = Receiver::new();
        let err = rx
            .feed(&mut head(FIN | TEXT, 1001, Some(KEY)), &tight, |_| {
                Flow::Continue
            })
            .unwrap_err();
        assert_eq!(err, ERR_MESSAGE_TOO_BIG);
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn limits_apply_per_call() {
        let mut rx = Receiver::new();
        let mut first = masked(FIN | BIN, &[1; 10]);
        assert!(rx.feed(&mut first, &BIG, |_| Flow::Continue).is_ok());
        let small = Limits {
            max_frame_size: 9,
            max_message_size: 9,
        };
        let mut second = masked(FIN | BIN, &[1; 10]);
        assert_eq!(
            rx.feed(&mut second, &small, |_| Flow::Continue),
            Err(ERR_FRAME_TOO_BIG)
        );
    }

    #[test]
    fn large_messages_autobahn_9() {
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut frames = Vec::new();
        let mut chunks = big.chunks(4096).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let fin = if chunks.peek().is_none() { FIN } else { 0 };
            let op = if first { BIN } else { CONT };
            frames.push(masked(fin | op, c));
            first = false;
        }
        let stream = cat(&frames);
        let got = run_all_splits(&stream, &BIG, 0);
        assert_eq!(got.events, vec![Ev::Binary(big)]);

        let t = "Ω-text-".repeat(100_000);
        let stream = masked(FIN | TEXT, t.as_bytes());
        let got = run_all_splits(&stream, &BIG, 0);
        assert_eq!(got.events, vec![text(&t)]);
    }

    #[test]
    fn whole_frames_are_borrowed_from_the_input() {
        let mut stream = cat(&[
            masked(FIN | TEXT, b"Hello"),
            masked(FIN | PING, b"p"),
            masked(FIN | BIN, &[9; 300]),
            masked(TEXT, b""),
            masked(FIN | CONT, b"tail"),
        ]);
        let range = stream.as_ptr_range();
        let mut rx = Receiver::new();
        let mut seen = 0;
        let n = rx
            .feed(&mut stream, &BIG, |e| {
                let bytes = match e {
                    Event::Text(b) | Event::Binary(b) | Event::Ping(b) | Event::Pong(b) => b,
                    Event::Close(_) => panic!("no close"),
                };
                assert!(range.contains(&bytes.as_ptr()), "event borrowed from input");
                seen += 1;
                Flow::Continue
            })
            .unwrap();
        assert_eq!(n, stream.len());
        assert_eq!(seen, 4);
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn split_payloads_are_buffered_then_released() {
        let frame = masked(FIN | BIN, &[3; 1000]);
        let mut rx = Receiver::new();
        let mut a = frame[..500].to_vec();
        assert_eq!(rx.feed(&mut a, &BIG, |_| panic!("not yet")), Ok(500));
        assert!(rx.buffered_bytes() >= 496);
        let mut got = Vec::new();
        let mut b = frame[500..].to_vec();
        rx.feed(&mut b, &BIG, |e| {
            got.push(Ev::from(e));
            Flow::Continue
        })
        .unwrap();
        assert_eq!(got, vec![Ev::Binary(vec![3; 1000])]);
        assert_eq!(rx.buffered_bytes(), 0);

        let ping = masked(FIN | PING, &[4; 100]);
        let mut a = ping[..50].to_vec();
        rx.feed(&mut a, &BIG, |_| panic!("not yet")).unwrap();
        assert!(rx.buffered_bytes() > 0);
        let mut b = ping[50..].to_vec();
        let mut got = Vec::new();
        rx.feed(&mut b, &BIG, |e| {
            got.push(Ev::from(e));
            Flow::Continue
        })
        .unwrap();
        assert_eq!(got, vec![Ev::Ping(vec![4; 100])]);
        assert_eq!(rx.buffered_bytes(), 0);

        // A header alone, or a control frame with no payload yet, holds nothing.
        let mut h = head(FIN | PING, 10, Some(KEY));
        rx.feed(&mut h, &BIG, |_| panic!("not yet")).unwrap();
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn claimed_length_does_not_drive_allocation() {
        let mut stream = head(FIN | BIN, 16 << 20, Some(KEY));
        stream.push(0xAA);
        let mut rx = Receiver::new();
        let limits = Limits {
            max_frame_size: 32 << 20,
            max_message_size: 32 << 20,
        };
        assert_eq!(
            rx.feed(&mut stream, &limits, |_| panic!("not yet")),
            Ok(stream.len())
        );
        let held = rx.buffered_bytes();
        assert!(
            held > 0 && held <= 1 + MAX_RESERVE_AHEAD as usize + 64,
            "held {held}"
        );
    }

    #[test]
    fn pause_stops_right_after_the_event() {
        let frames = [
            masked(FIN | TEXT, b"one"),
            masked(FIN | PING, b"two"),
            masked(FIN | BIN, b"three"),
        ];
        let stream = cat(&frames);
        let mut buf = stream.clone();
        let mut rx = Receiver::new();
        let mut events = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let n = rx
                .feed(&mut buf[offset..], &BIG, |e| {
                    events.push(Ev::from(e));
                    Flow::Pause
                })
                .unwrap();
            assert_eq!(
                buf[offset + n..],
                stream[offset + n..],
                "unconsumed bytes stay masked"
            );
            offset += n;
            assert!(events.len() <= 3);
        }
        assert_eq!(
            events,
            vec![
                text("one"),
                Ev::Ping(b"two".to_vec()),
                Ev::Binary(b"three".to_vec())
            ]
        );
        assert_eq!(offset, frames[0].len() + frames[1].len() + frames[2].len());
    }

    #[test]
    fn errors_are_sticky() {
        let mut rx = Receiver::new();
        let mut bad = unmasked(FIN | TEXT, b"x");
        let err = rx.feed(&mut bad, &BIG, |_| Flow::Continue).unwrap_err();
        assert_eq!(err, ERR_UNMASKED);
        let mut good = masked(FIN | TEXT, b"fine");
        assert_eq!(rx.feed(&mut good, &BIG, |_| panic!("no event")), Err(err));
        assert_eq!(rx.feed(&mut [], &BIG, |_| panic!("no event")), Err(err));
        assert!(!rx.is_closed());
        assert_eq!(rx.buffered_bytes(), 0);
    }

    /// Every connection holds a receiver, idle or not: at a frame
    /// boundary it is the boxed partial state's pointer and two flag bytes.
    #[test]
    fn receiver_stays_small() {
        let size = size_of::<Receiver>();
        println!(
            "size_of::<Receiver>() = {size}, partial state {}",
            size_of::<Partial>()
        );
        assert!(size <= 16, "Receiver is {size} bytes");
    }

    #[test]
    fn frame_state_is_held_only_while_a_frame_or_message_is_incomplete() {
        let mut rx = Receiver::new();
        let mut whole = cat(&[masked(FIN | TEXT, b"hello"), masked(FIN | PING, b"p")]);
        let mut seen = 0;
        rx.feed(&mut whole, &BIG, |_| {
            seen += 1;
            Flow::Continue
        })
        .unwrap();
        assert_eq!(seen, 2);
        assert!(rx.partial.is_none(), "whole frames leave nothing behind");

        let frame = masked(FIN | TEXT, "split é here".as_bytes());
        for cut in 1..frame.len() {
            let mut a = frame[..cut].to_vec();
            rx.feed(&mut a, &BIG, |_| panic!("not yet")).unwrap();
            assert!(rx.partial.is_some(), "cut {cut}");
            let mut b = frame[cut..].to_vec();
            let mut got = Vec::new();
            rx.feed(&mut b, &BIG, |e| {
                got.push(Ev::from(e));
                Flow::Continue
            })
            .unwrap();
            assert_eq!(got, vec![text("split é here")], "cut {cut}");
            assert!(rx.partial.is_none(), "cut {cut}");
        }

        // Between the frames of a fragmented message the state stays.
        let mut first = masked(TEXT, b"frag");
        rx.feed(&mut first, &BIG, |_| panic!("not yet")).unwrap();
        assert!(rx.partial.is_some());
        let mut last = masked(FIN | CONT, b"ment");
        let mut got = Vec::new();
        rx.feed(&mut last, &BIG, |e| {
            got.push(Ev::from(e));
            Flow::Continue
        })
        .unwrap();
        assert_eq!(got, vec![text("fragment")]);
        assert!(rx.partial.is_none());

        // A close frame ends it for good; an error releases the buffers.
        let mut part = masked(TEXT, b"x");
        rx.feed(&mut part, &BIG, |_| panic!("not yet")).unwrap();
        let mut close = masked(FIN | CLOSE, &close_payload(1000, b""));
        rx.feed(&mut close, &BIG, |_| Flow::Continue).unwrap();
        assert!(rx.is_closed() && rx.partial.is_none());
        let mut rx = Receiver::new();
        let mut part = masked(TEXT, b"x");
        rx.feed(&mut part, &BIG, |_| panic!("not yet")).unwrap();
        let mut bad = unmasked(FIN | CONT, b"y");
        assert!(rx.feed(&mut bad, &BIG, |_| Flow::Continue).is_err());
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (seed % 64) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut rx = Receiver::new();
            let _ = rx.feed(&mut bytes, &BIG, |_| Flow::Continue);
        }
    }

    fn message_strategy() -> impl Strategy<Value = (bool, Vec<u8>)> {
        prop_oneof![
            any::<String>().prop_map(|s| (true, s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|b| (false, b)),
        ]
    }

    proptest! {
        #[test]
        fn any_fragmentation_and_read_split_reassembles(
            (is_text, msg) in message_strategy(),
            frag_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
            read_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
            pings in proptest::collection::vec(any::<bool>(), 6),
            key in any::<[u8; 4]>(),
        ) {
            let mut cuts: Vec<usize> = frag_cuts.iter().map(|i| i.index(msg.len() + 1)).collect();
            cuts.sort_unstable();
            let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain([msg.len()]).collect();
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let pieces = bounds.len() - 1;
            for (i, w) in bounds.windows(2).enumerate() {
                let op = match (i, is_text) {
                    (0, true) => TEXT,
                    (0, false) => BIN,
                    _ => CONT,
                };
                let fin = if i + 1 == pieces { FIN } else { 0 };
                let mut h = head(fin | op, (w[1] - w[0]) as u64, Some(key));
                let start = h.len();
                h.extend_from_slice(&msg[w[0]..w[1]]);
                apply_mask(&mut h[start..], key, 0);
                stream.extend_from_slice(&h);
                if fin == 0 && pings[i % pings.len()] {
                    stream.extend_from_slice(&masked(FIN | PING, &[i as u8]));
                    expected.push(Ev::Ping(vec![i as u8]));
                }
            }
            expected.push(if is_text { Ev::Text(msg.clone()) } else { Ev::Binary(msg.clone()) });
            let mut reads: Vec<usize> = read_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            reads.sort_unstable();
            let got = run_pieces(&stream, &reads, &BIG, 0);
            prop_assert_eq!(got.events, expected);
            prop_assert_eq!(got.end, Ok(stream.len()));
        }
    }

    #[test]
    fn a_handover_at_every_byte_gives_the_events_of_an_unsplit_feed() {
        // Every kind of frame, in one stream under tight limits; run_all_splits
        // hands the receiver over at every byte (and checks it matches).
        let limits = Limits {
            max_frame_size: 300,
            max_message_size: 400,
        };
        let greeting = "héllo €𝄞 wörld";
        let split_text = "a€b𝄞c".as_bytes();
        let packed = deflated("compressed ünïcode, ".repeat(8).as_bytes());
        let half = packed.len() / 2;
        let frames = [
            masked(FIN | TEXT, greeting.as_bytes()),
            // Fragments that end inside a code point, pings between.
            masked(TEXT, &split_text[..2]),
            masked(FIN | PING, b"p1"),
            masked(CONT, &split_text[2..6]),
            masked(FIN | PONG, b""),
            masked(FIN | CONT, &split_text[6..]),
            // Fragmented binary at exactly the frame and message limits,
            // with a control frame of the largest size between.
            masked(BIN, &[1; 300]),
            masked(FIN | PING, &[9; 125]),
            masked(FIN | CONT, &[2; 100]),
            // Compressed, whole and in fragments.
            masked(FIN | RSV1 | TEXT, &deflated(greeting.as_bytes())),
            masked(RSV1 | BIN, &packed[..half]),
            masked(FIN | PING, b"p2"),
            masked(FIN | CONT, &packed[half..]),
            masked(FIN | CLOSE, &close_payload(1000, "bye ✓".as_bytes())),
        ];
        let mut stream = cat(&frames);
        let closed_at = stream.len();
        stream.extend_from_slice(&masked(FIN | TEXT, b"never read"));
        let events = vec![
            text(greeting),
            Ev::Ping(b"p1".to_vec()),
            Ev::Pong(vec![]),
            Ev::Text(split_text.to_vec()),
            Ev::Ping(vec![9; 125]),
            Ev::Binary([vec![1; 300], vec![2; 100]].concat()),
            text(greeting),
            Ev::Ping(b"p2".to_vec()),
            Ev::Binary("compressed ünïcode, ".repeat(8).into_bytes()),
            Ev::Close(Some((1000, "bye ✓".to_string()))),
        ];
        check_cases(
            vec![Case {
                name: "every kind of frame",
                stream,
                events,
                end: End::Upto(closed_at),
            }],
            &limits,
            RSV_COMPRESSED,
        );
    }

    #[test]
    fn an_idle_receiver_exports_a_few_bytes() {
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(RSV_COMPRESSED);
        let mut input = masked(FIN | TEXT, b"whole");
        rx.feed(&mut input, &BIG, |_| Flow::Continue).unwrap();
        let state = rx.export().unwrap();
        let bytes = postcard::to_allocvec(&state).unwrap();
        assert!(bytes.len() <= 8, "{bytes:?}");
        let back = Receiver::import(postcard::from_bytes(&bytes).unwrap(), &BIG).unwrap();
        assert!(back.partial.is_none(), "nothing boxed for an idle receiver");
        assert_eq!(back.allowed_rsv, RSV_COMPRESSED);
    }

    #[test]
    fn a_closed_receiver_is_carried_closed() {
        let mut rx = Receiver::new();
        let mut input = masked(FIN | CLOSE, b"");
        rx.feed(&mut input, &BIG, |_| Flow::Continue).unwrap();
        let back = Receiver::import(rx.export().unwrap(), &BIG).unwrap();
        assert!(back.is_closed());
    }

    fn state(frame: FrameState, message: Option<(bool, bool, &[u8])>) -> ReceiverState {
        ReceiverState {
            allowed_rsv: 0,
            closed: false,
            frame,
            message: message.map(|(text, compressed, received)| AssemblyState {
                text,
                compressed,
                received: received.to_vec(),
            }),
        }
    }

    fn data(remaining: u64) -> FrameState {
        FrameState::Data {
            fin: true,
            remaining,
            mask: KEY,
        }
    }

    fn control(kind: ControlKind, remaining: u64, received: &[u8]) -> FrameState {
        FrameState::Control {
            kind,
            remaining,
            mask: KEY,
            received: received.to_vec(),
        }
    }

    #[test]
    fn import_refuses_states_the_receiver_cannot_reach() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let header = |bytes: &[u8]| FrameState::Header(bytes.to_vec());
        let closed = ReceiverState {
            closed: true,
            ..state(header(&[0x81]), None)
        };
        let rsv_out_of_field = ReceiverState {
            allowed_rsv: 0x08,
            ..state(header(&[]), None)
        };
        let cases: Vec<(&str, ReceiverState)> = vec![
            (
                "frame over the limit",
                state(data(101), Some((false, false, b""))),
            ),
            (
                "message over the limit",
                state(data(51), Some((false, false, &[0; 100]))),
            ),
            (
                "buffer over the limit",
                state(header(&[]), Some((false, false, &[0; 151]))),
            ),
            ("data without a message", state(data(5), None)),
            (
                "data frame with nothing left",
                state(data(0), Some((false, false, b"x"))),
            ),
            (
                "control over 125",
                state(control(ControlKind::Ping, 100, &[0; 26]), None),
            ),
            (
                "control with nothing left",
                state(control(ControlKind::Close, 0, b"ab"), None),
            ),
            (
                "invalid assembled text",
                state(header(&[]), Some((true, false, b"ok \xff"))),
            ),
            (
                "compressed, not negotiated",
                state(header(&[]), Some((false, true, b"x"))),
            ),
            (
                "whole header as partial",
                state(header(&[0x81, 0x80, 1, 2, 3, 4]), None),
            ),
            (
                "header longer than a header",
                state(header(&[0x81; 20]), None),
            ),
            ("partial header with RSV", state(header(&[0xC1]), None)),
            ("closed mid frame", closed),
            ("RSV outside its field", rsv_out_of_field),
        ];
        for (name, bad) in cases {
            assert!(Receiver::import(bad, &limits).is_err(), "{name}");
        }
        // The edges themselves are fine.
        for good in [
            state(data(100), Some((false, false, &[0; 50]))),
            state(
                header(&[]),
                Some((true, false, "€".as_bytes().get(..2).unwrap())),
            ),
            state(
                control(ControlKind::Pong, 1, &[0; 124]),
                Some((false, false, b"")),
            ),
            state(header(&[0x81, 0xFE, 0]), None),
        ] {
            assert!(Receiver::import(good.clone(), &limits).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn hostile_state_bytes_never_panic() {
        let mut rng = crate::testing::XorShift(0x5eed_1234);
        let mut rx = Receiver::new();
        rx.set_allowed_rsv(RSV_COMPRESSED);
        let mut input = masked(TEXT, "κόσμε".as_bytes());
        input.extend_from_slice(&masked(FIN | PING, b"ping")[..5]);
        rx.feed(&mut input, &BIG, |_| Flow::Continue).unwrap();
        let valid = postcard::to_allocvec(&rx.export().unwrap()).unwrap();
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.index(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(bytes.len() - rng.index(2));
            let Ok(state) = postcard::from_bytes::<ReceiverState>(&bytes) else {
                continue;
            };
            if let Ok(mut rx) = Receiver::import(state, &BIG) {
                let mut inflater = Inflater::new();
                let mut rest = masked(FIN | CONT, b"tail");
                let _ = rx.feed_inflating(&mut rest, &BIG, Some(&mut inflater), |_| Flow::Continue);
            }
        }
    }
}
