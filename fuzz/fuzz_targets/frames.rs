//! Client bytes after the handshake, through `message::Receiver` (with an
//! `Inflater` for some parameter choices, as on a connection that negotiated
//! permessage-deflate), with small limits. The reference run feeds the payload in one call and never pauses;
//! the run under test feeds it in chunks and pauses after some events,
//! re-feeding the rest as the server does with input it held back.
//!
//! Invariants: no panic; each call consumes at most what it was given, and
//! makes progress unless a close frame ended the stream; both runs see the
//! same events and end the same way (same error, or same bytes consumed);
//! `buffered_bytes()` stays within the message limit plus a control frame;
//! text is valid UTF-8, data (inflated or not) within the message limit,
//! control payloads at
//! most 125 bytes, close codes allowed on the wire; errors are sticky and
//! release every buffer; nothing is read or buffered after a close frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::fuzzing::message::{Event, Flow, Inflater, Limits, ProtocolError, Receiver};
use wshub_fuzz::Input;

/// `max_message_size` choices: edges of the 7-bit and 16-bit length forms
/// and one past `MAX_RESERVE_AHEAD` (64 KiB) in `message.rs`.
const MESSAGE_SIZES: [u64; 8] = [0, 1, 3, 16, 125, 126, 1000, 70_000];
/// RSV1: the permessage-deflate bit.
const RSV_COMPRESSED: u8 = 0b100;
/// RSV bits allowed, and whether compressed messages are inflated (as on a
/// connection that negotiated permessage-deflate). RSV1 allowed without an
/// inflater must fail such messages.
const RSV_CHOICES: [(u8, bool); 4] = [
    (0, false),
    (RSV_COMPRESSED, true),
    (RSV_COMPRESSED, false),
    (0b111, true),
];
/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// What `buffered_bytes` may count for a control frame split across reads:
/// its payload buffer and length byte.
const CONTROL_BUFFER: usize = MAX_CONTROL + 1;
/// Slack for the smallest allocation a byte vector makes (8 bytes).
const MIN_ALLOCATION: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was consumed; the stream may go on.
    Consumed(usize),
    /// A close frame ended the stream after this many bytes.
    Closed(usize),
    Failed(ProtocolError),
}

struct Setup {
    limits: Limits,
    rsv: u8,
    inflate: bool,
    /// Bit `i % 8` set: pause after event `i`.
    pauses: u8,
}

impl Setup {
    fn from_params(params: [u8; 2]) -> Setup {
        let message = MESSAGE_SIZES[usize::from(params[0] & 0x07)];
        let frame = match (params[0] >> 3) & 0x07 {
            0 => message,
            1 => message / 2,
            2 => 0,
            3 => 1,
            4 => 125,
            5 => 126,
            6 => 65_535,
            _ => 65_536,
        }
        .min(message);
        let (rsv, inflate) = RSV_CHOICES[usize::from(params[0] >> 6)];
        Setup {
            limits: Limits {
                max_frame_size: frame,
                max_message_size: message,
            },
            rsv,
            inflate,
            pauses: params[1],
        }
    }
}

fn own(event: &Event<'_>, limits: &Limits) -> Owned {
    let max_message = usize::try_from(limits.max_message_size).unwrap_or(usize::MAX);
    match *event {
        Event::Text(data) => {
            assert!(std::str::from_utf8(data).is_ok(), "text is not UTF-8");
            assert!(data.len() <= max_message, "text of {} bytes", data.len());
            Owned::Text(data.to_vec())
        }
        Event::Binary(data) => {
            assert!(data.len() <= max_message, "binary of {} bytes", data.len());
            Owned::Binary(data.to_vec())
        }
        Event::Ping(data) => {
            assert!(data.len() <= MAX_CONTROL);
            Owned::Ping(data.to_vec())
        }
        Event::Pong(data) => {
            assert!(data.len() <= MAX_CONTROL);
            Owned::Pong(data.to_vec())
        }
        Event::Close(status) => Owned::Close(status.map(|(code, reason)| {
            assert!(code.is_allowed_on_wire(), "close code {}", code.0);
            assert!(reason.len() <= MAX_CONTROL - 2);
            (code.0, reason.to_owned())
        })),
    }
}

/// Feeds `payload` in the chunks `bounds` describes, pausing where `setup`
/// says (never, when `pause` is false).
fn run(payload: &[u8], bounds: &[usize], setup: &Setup, pause: bool) -> (Vec<Owned>, End) {
    let limits = setup.limits;
    let max_message = usize::try_from(limits.max_message_size).unwrap_or(usize::MAX);
    let mut bytes = payload.to_vec();
    let mut rx = Receiver::new();
    rx.set_allowed_rsv(setup.rsv);
    let mut inflater = Inflater::new();
    let mut events = Vec::new();
    for window in bounds.windows(2) {
        let (mut at, end) = (window[0], window[1]);
        while at < end {
            let chunk = &mut bytes[at..end];
            let len = chunk.len();
            let mut paused = false;
            let inflater = setup.inflate.then_some(&mut inflater);
            let result = rx.feed_inflating(chunk, &limits, inflater, |event| {
                events.push(own(&event, &limits));
                if pause && setup.pauses & (1 << (events.len() % 8)) != 0 {
                    paused = true;
                    Flow::Pause
                } else {
                    Flow::Continue
                }
            });
            let used_so_far = at + result.unwrap_or(0);
            let control = if inside_control_payload(payload, used_so_far) {
                CONTROL_BUFFER
            } else {
                0
            };
            assert!(
                rx.buffered_bytes() <= max_message + control + MIN_ALLOCATION,
                "holds {} bytes with max_message_size {} at offset {used_so_far}",
                rx.buffered_bytes(),
                limits.max_message_size
            );
            let used = match result {
                Ok(used) => used,
                Err(error) => {
                    check_failed(&mut rx, &limits, error);
                    return (events, End::Failed(error));
                }
            };
            assert!(used <= len, "consumed {used} of {len}");
            at += used;
            if rx.is_closed() {
                assert!(matches!(events.last(), Some(Owned::Close(_))));
                check_closed(&mut rx, &limits);
                return (events, End::Closed(at));
            }
            assert!(
                used == len || paused,
                "stopped at {used} of {len} without a pause"
            );
            assert!(used > 0, "no progress on {len} bytes");
        }
    }
    (events, End::Consumed(payload.len()))
}

/// Whether offset `at` of the client's byte stream lies inside the payload
/// of a control frame, where the receiver may hold part of that payload.
/// Walks the frame headers independently of the receiver.
fn inside_control_payload(stream: &[u8], at: usize) -> bool {
    let mut pos = 0usize;
    while pos < at {
        let Some(&[b0, b1]) = stream.get(pos..pos + 2) else {
            return false;
        };
        let (len, extended) = match b1 & 0x7F {
            126 => match stream.get(pos + 2..pos + 4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 2),
                _ => return false,
            },
            127 => match stream.get(pos + 2..pos + 10) {
                Some(bytes) => (u64::from_be_bytes(bytes.try_into().unwrap_or_default()), 8),
                None => return false,
            },
            short => (u64::from(short), 0),
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let start = pos + 2 + extended + mask;
        if at <= start {
            return false;
        }
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        if at < end {
            return b0 & 0x08 != 0;
        }
        pos = end;
    }
    false
}

/// An error is reported again by every later call, and nothing is held.
fn check_failed(rx: &mut Receiver, limits: &Limits, error: ProtocolError) {
    assert_eq!(rx.buffered_bytes(), 0, "buffer kept after {error}");
    let mut more = *b"\x82\x80\x01\x02\x03\x04";
    let again = rx.feed(&mut more, limits, |event| {
        panic!("event after an error: {event:?}")
    });
    assert_eq!(again, Err(error));
}

/// After a close frame nothing is read, delivered or held.
fn check_closed(rx: &mut Receiver, limits: &Limits) {
    assert_eq!(rx.buffered_bytes(), 0, "buffer kept after a close frame");
    let mut more = *b"\x82\x80\x01\x02\x03\x04";
    let again = rx.feed(&mut more, limits, |event| {
        panic!("event after close: {event:?}")
    });
    assert_eq!(again, Ok(0));
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::<2>::parse(data) else {
        return;
    };
    let setup = Setup::from_params(input.params);
    let split = run(input.payload, &input.bounds, &setup, true);
    let whole = run(input.payload, &input.whole(), &setup, false);
    assert_eq!(
        split, whole,
        "split at {:?} with pauses {:#010b}",
        input.bounds, setup.pauses
    );
});
