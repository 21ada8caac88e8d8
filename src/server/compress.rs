//! permessage-deflate on the send side, the loop's shared codec state, and
//! the frames of one broadcast message in every format a recipient may need.
//!
//! Owns: the one [`Compressor`] of an event loop (its inflater is a
//! [`crate::protocol::message::Inflater`], owned by the loop next to it),
//! turning an outgoing message into the frame a connection should get, and
//! the per-message cache that encodes a broadcast once per format (plain,
//! with metadata, or as a Server-Sent Event with or without its id) and
//! compresses it once per format and server window size among its
//! recipients (event streams are never compressed); and a broadcast's
//! state as a handover carries a message kept in history.
//! Must never: keep anything per connection (a connection stores only its
//! negotiated [`Params`] and its format), or send a compressed
//! frame that is not smaller than the plain one.

use std::cell::OnceCell;
use std::rc::Rc;

use crate::hub::Position;
use crate::hub::meta::{self, Kind};
use crate::protocol::deflate::{self, Compressor, DeflateConfig, Params, WindowBits};
use crate::protocol::frame::{self, OpCode};
use crate::protocol::sse;

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
/// once, where its payload starts (to compress it for those that negotiated
/// deflate, or wrap it for those that asked for metadata), and its kind.
/// Cloning shares the frame.
#[derive(Clone, Debug)]
pub(super) struct Broadcast {
    pub frame: Rc<[u8]>,
    opcode: OpCode,
    kind: Kind,
    header_len: u8,
}

impl Broadcast {
    pub(super) fn new(opcode: OpCode, payload: &[u8]) -> Broadcast {
        let mut buf = Vec::with_capacity(payload.len() + frame::MAX_HEADER_LEN);
        frame::write_frame(&mut buf, true, 0, opcode, payload);
        let header_len = u8::try_from(buf.len() - payload.len()).unwrap_or(u8::MAX);
        Broadcast {
            frame: Rc::from(buf),
            opcode,
            kind: match opcode {
                OpCode::Binary => Kind::Binary,
                _ => Kind::Text,
            },
            header_len,
        }
    }

    /// A text message published as JSON: metadata clients get the value
    /// itself, not a string holding it, when it parses (checked once here);
    /// otherwise it is plain text.
    pub(super) fn json(payload: &[u8]) -> Broadcast {
        let mut message = Broadcast::new(OpCode::Text, payload);
        if meta::is_json(payload) {
            message.kind = Kind::Json;
        }
        message
    }

    pub(super) fn opcode(&self) -> OpCode {
        self.opcode
    }

    pub(super) fn payload(&self) -> &[u8] {
        self.frame
            .get(usize::from(self.header_len)..)
            .unwrap_or_default()
    }
}

/// A [`Broadcast`] as a handover carries it (a message kept in history):
/// enough to rebuild it exactly; its frames are made again on demand.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct MessageState {
    /// A text message (else binary).
    text: bool,
    /// Text published as JSON that parsed: metadata clients get the value
    /// itself.
    json: bool,
    payload: Vec<u8>,
}

#[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
impl Broadcast {
    pub(super) fn export(&self) -> MessageState {
        MessageState {
            text: self.opcode == OpCode::Text,
            json: self.kind == Kind::Json,
            payload: self.payload().to_vec(),
        }
    }

    /// The message `state` describes, checked as when it was published:
    /// text is UTF-8, and only text that parses as JSON is marked JSON.
    pub(super) fn import(state: MessageState) -> Result<Broadcast, String> {
        let MessageState {
            text,
            json,
            payload,
        } = state;
        if text && std::str::from_utf8(&payload).is_err() {
            return Err("message state: text that is not UTF-8".into());
        }
        if json && !(text && meta::is_json(&payload)) {
            return Err("message state: marked JSON but is not JSON text".into());
        }
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        let mut message = Broadcast::new(opcode, &payload);
        if json {
            message.kind = Kind::Json;
        }
        Ok(message)
    }
}

/// How a recipient wants messages: as published, wrapped with their
/// channel and position (see [`crate::hub::meta`]), or as an event of a
/// Server-Sent Events stream (see [`crate::protocol::sse`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum Format<'a> {
    Plain,
    Meta {
        channel: &'a str,
        position: Option<Position>,
    },
    /// An event, with `id:` when `id` is given (the message's position, on
    /// a route that keeps history).
    Sse {
        id: Option<Position>,
    },
}

/// Formats a message can be sent in.
const FORMATS: usize = 2;

/// A message as an event, without and with its `id:` line.
type Events = [OnceCell<Rc<[u8]>>; 2];

/// Compressed frames of one message: per format, per window size.
type Compressed = [[OnceCell<Rc<[u8]>>; WINDOWS]; FORMATS];

/// The frames of one message, made lazily and then shared: the first
/// recipient that needs a format (or a format compressed with window `w`)
/// makes it, every later one shares that very frame. Each cell is filled at
/// most once, so a reference to the cache suffices (it may sit in history
/// behind an `Rc`, where a mass replay reuses what live delivery made).
#[derive(Debug, Default)]
pub(super) struct FrameCache {
    /// The metadata frame, uncompressed, and its header length. Each
    /// message belongs to one channel, so one suffices.
    meta: OnceCell<(Rc<[u8]>, u8)>,
    /// Allocated for the first recipient that negotiated deflate;
    /// `Some(uncompressed frame)` where compressing did not pay off.
    compressed: OnceCell<Box<Compressed>>,
    /// The event-stream forms, without and with the `id:` line; allocated
    /// for the first event-stream recipient only (8 bytes otherwise).
    sse: OnceCell<Box<Events>>,
}

impl FrameCache {
    /// The frame to queue for a recipient that wants `format`, with
    /// `params` on a route whose compression settings are `config` (`None`:
    /// off).
    ///
    /// The cache is keyed by format and window only: if subscribers of one
    /// channel come from routes with different `compression_level`s, the
    /// first recipient's level is used for everyone with that window (any
    /// level inflates the same). `compression_min_size` is applied per
    /// route.
    pub(super) fn frame_for(
        &self,
        message: &Broadcast,
        format: Format<'_>,
        params: Option<Params>,
        config: Option<DeflateConfig>,
        codec: &mut Codec,
    ) -> Rc<[u8]> {
        let (plain, header_len, index) = match format {
            Format::Sse { id } => return self.event(message, id),
            Format::Plain => (&message.frame, message.header_len, 0),
            Format::Meta { channel, position } => {
                let (frame, header_len) = self.meta.get_or_init(|| {
                    let payload = message.payload();
                    let mut body = Vec::with_capacity(payload.len() + meta::MAX_OVERHEAD);
                    meta::write_message(channel, position, message.kind, payload, &mut body);
                    let mut buf = Vec::with_capacity(body.len() + frame::MAX_HEADER_LEN);
                    frame::write_frame(&mut buf, true, 0, message.opcode, &body);
                    let header_len = u8::try_from(buf.len() - body.len()).unwrap_or(u8::MAX);
                    (Rc::from(buf), header_len)
                });
                (frame, *header_len, 1)
            }
        };
        let (Some(params), Some(config)) = (params, config) else {
            return Rc::clone(plain);
        };
        let payload = plain.get(usize::from(header_len)..).unwrap_or_default();
        if !config.should_compress(payload.len()) {
            return Rc::clone(plain);
        }
        let window = params.server_window();
        let w = usize::from(window.get() - WindowBits::MIN.get()).min(WINDOWS - 1);
        let cells = self.compressed.get_or_init(Box::default);
        let frame = cells[index][w].get_or_init(|| {
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
                None => Rc::clone(plain),
            };
            codec.trim();
            frame
        });
        Rc::clone(frame)
    }

    /// The message as one Server-Sent Event (a text payload as `data:`
    /// lines, a binary one base64 in a `binary` event), with its `id` line
    /// when given; made once per form, then shared.
    fn event(&self, message: &Broadcast, id: Option<Position>) -> Rc<[u8]> {
        let cells = self.sse.get_or_init(Box::default);
        let cell = &cells[usize::from(id.is_some())];
        Rc::clone(cell.get_or_init(|| {
            let payload = message.payload();
            let data = match message.kind {
                Kind::Binary => sse::Data::Binary(payload),
                Kind::Text | Kind::Json => sse::Data::Text(payload),
            };
            let mut buf = Vec::with_capacity(sse::max_event_len(data));
            sse::write_event(id, None, data, &mut buf);
            Rc::from(buf)
        }))
    }
}

/// One message of one channel as delivered and as kept in history: the
/// message, its position there (`None` only for a cluster delivery that
/// carries none) and its frames, made once for every recipient and every
/// replay.
#[derive(Debug)]
pub(super) struct Delivery {
    pub message: Broadcast,
    pub position: Option<Position>,
    pub frames: FrameCache,
}

impl Delivery {
    pub(super) fn new(message: Broadcast, position: Option<Position>) -> Delivery {
        Delivery {
            message,
            position,
            frames: FrameCache::default(),
        }
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
        let cache = FrameCache::default();
        let full = params(b"permessage-deflate");
        let small = params(b"permessage-deflate; server_max_window_bits=10");
        let p = Format::Plain;
        let a = cache.frame_for(&message, p, full, config, &mut codec);
        let b = cache.frame_for(&message, p, full, config, &mut codec);
        let c = cache.frame_for(&message, p, small, config, &mut codec);
        let plain = cache.frame_for(&message, p, None, config, &mut codec);
        let off = cache.frame_for(&message, p, full, None, &mut codec);
        assert!(Rc::ptr_eq(&a, &b));
        assert!(!Rc::ptr_eq(&a, &c));
        assert!(Rc::ptr_eq(&plain, &message.frame));
        assert!(Rc::ptr_eq(&off, &message.frame));
        assert!(a.len() < plain.len());
        assert_eq!(a[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    }

    #[test]
    fn the_metadata_format_is_encoded_once_and_compressed_once_per_window() {
        let mut codec = Codec::default();
        let message = Broadcast::json(b"{\"price\": 42, \"sym\": \"ABC\"}");
        let position = Some(Position {
            epoch: crate::hub::Epoch::new(1),
            offset: 7,
        });
        let m = Format::Meta {
            channel: "ticks",
            position,
        };
        let cache = FrameCache::default();
        let a = cache.frame_for(&message, m, None, None, &mut codec);
        let b = cache.frame_for(&message, m, None, None, &mut codec);
        assert!(Rc::ptr_eq(&a, &b));
        let plain = cache.frame_for(&message, Format::Plain, None, None, &mut codec);
        assert!(Rc::ptr_eq(&plain, &message.frame));
        assert_eq!(a[0], 0x81, "a text frame");
        let body = std::str::from_utf8(&a[2..]).unwrap();
        assert_eq!(
            body,
            r#"{"channel":"ticks","epoch":"0000000000000001","offset":7,"json":{"price": 42, "sym": "ABC"}}"#
        );
        // Compressed metadata frames are their own, once per window.
        let config = Some(DeflateConfig {
            level: 6,
            min_size: 0,
        });
        let long = Broadcast::new(OpCode::Binary, &b"abcabcabc".repeat(50));
        let cache = FrameCache::default();
        let full = params(b"permessage-deflate");
        let x = cache.frame_for(&long, m, full, config, &mut codec);
        let y = cache.frame_for(&long, m, full, config, &mut codec);
        let z = cache.frame_for(&long, Format::Plain, full, config, &mut codec);
        assert!(Rc::ptr_eq(&x, &y));
        assert!(!Rc::ptr_eq(&x, &z));
        assert_eq!(x[0], 0x80 | 0x40 | 0x2, "FIN, RSV1, binary");
    }

    #[test]
    fn each_event_form_is_encoded_once_and_never_compressed() {
        let mut codec = Codec::default();
        let config = Some(DeflateConfig {
            level: 6,
            min_size: 0,
        });
        let full = params(b"permessage-deflate");
        let position = Some(Position {
            epoch: crate::hub::Epoch::new(1),
            offset: 7,
        });
        let message = Broadcast::json(b"{\"a\":\n1}");
        let cache = FrameCache::default();
        let with_id = Format::Sse { id: position };
        let a = cache.frame_for(&message, with_id, None, None, &mut codec);
        let b = cache.frame_for(&message, with_id, full, config, &mut codec);
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(&*a, b"id: 0000000000000001:7\ndata: {\"a\":\ndata: 1}\n\n");
        let bare = cache.frame_for(&message, Format::Sse { id: None }, None, None, &mut codec);
        assert_eq!(&*bare, b"data: {\"a\":\ndata: 1}\n\n");
        let binary = Broadcast::new(OpCode::Binary, &[0xff, 0]);
        let cache = FrameCache::default();
        let event = cache.frame_for(&binary, Format::Sse { id: None }, None, None, &mut codec);
        assert_eq!(&*event, b"event: binary\ndata: /wA=\n\n");
    }

    /// Every field that makes a broadcast what it is.
    fn parts(m: &Broadcast) -> (Vec<u8>, OpCode, Kind, u8) {
        (m.frame.to_vec(), m.opcode, m.kind, m.header_len)
    }

    #[test]
    fn a_broadcast_is_rebuilt_exactly_from_its_state() {
        let long = vec![0xAB; 70_000];
        for message in [
            Broadcast::new(OpCode::Text, "héllo".as_bytes()),
            Broadcast::new(OpCode::Binary, &[0xff, 0, 1]),
            Broadcast::new(OpCode::Binary, &long),
            Broadcast::new(OpCode::Text, b""),
            Broadcast::json(b"{\"a\": [1, 2]}"),
            Broadcast::json(b"not json"),
        ] {
            let bytes = postcard::to_allocvec(&message.export()).unwrap();
            let state: MessageState = postcard::from_bytes(&bytes).unwrap();
            let back = Broadcast::import(state).unwrap();
            assert_eq!(parts(&back), parts(&message));
        }
    }

    #[test]
    fn a_message_state_that_could_not_be_published_is_refused() {
        let state = |text, json, payload: &[u8]| MessageState {
            text,
            json,
            payload: payload.to_vec(),
        };
        for bad in [
            state(true, false, b"\xff"),
            state(true, true, b"{broken"),
            state(false, true, b"[1]"),
        ] {
            assert!(Broadcast::import(bad).is_err());
        }
    }

    #[test]
    fn invalid_json_travels_as_text() {
        let m = Broadcast::json(b"{not json");
        assert_eq!(m.kind, Kind::Text);
        assert_eq!(Broadcast::json(b"[1]").kind, Kind::Json);
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
