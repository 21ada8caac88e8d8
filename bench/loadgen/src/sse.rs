//! Server-Sent Events on the client side (the HTML standard's
//! `text/event-stream`): the request that opens a stream on a broadcast
//! route's channel URL, the check of the `200` that answers it, and an
//! incremental parser that turns the stream into messages.
//!
//! Owns: those byte-level rules, so scenarios see an event stream's
//! messages exactly as they see WebSocket ones: a text event (no `event:`
//! line, or `event: message`) as a text message of its `data:` lines joined
//! with `\n`, an `event: binary` as a binary message of its base64 data
//! decoded. Comments (keep-alives, the stream's opening line), `retry:` and
//! `id:` lines and the server's own named events (`position`,
//! `not-recovered`) are no messages; `expired` and `shutdown` end the
//! stream and fail the connection.
//! Must never: allocate per event (an event of one `data:` line is handed
//! on from the read buffer; joining several lines or decoding base64 uses
//! one buffer per thread), or hand on an event before its blank line has
//! arrived.
//!
//! The parser keeps no state between reads: [`parse_events`] consumes the
//! input up to the end of the last complete event and leaves the rest, a
//! partial event, for the caller to carry into the next read (as the
//! WebSocket path carries a partial frame). Lines end at `\r\n`, `\n` or a
//! lone `\r`, as the standard says; a `\r` that ends the input counts as a
//! line end, which can only split a `\r\n` between an event's blank line and
//! an empty line after it, and an empty line with no data dispatches
//! nothing.

use std::cell::RefCell;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Fail, Result};
use crate::http::ResponseHead;
use crate::meta;
use crate::target::Target;
use crate::wire;

/// The media type of an event stream.
const CONTENT_TYPE: &str = "text/event-stream";
/// The query parameter that asks for a stream (besides the `Accept` header
/// the request also sends).
const STREAM_PARAM: &str = "sse=1";
/// What an event adds to its data besides the `data:` line itself, at
/// most: an `id:` line, an `event:` line, the blank line, and room for
/// comments and the stream's opening lines in the same read.
const EVENT_OVERHEAD: usize = 256;

thread_local! {
    /// Where the data of an event of several `data:` lines is joined, or a
    /// binary event's base64 decoded; reused by every connection.
    static DATA: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The longest event that carries a payload of `max_payload` bytes (binary,
/// in base64, is the longest): how much a connection may have to carry
/// from one read to the next.
pub fn max_event_len(max_payload: usize) -> usize {
    base64::encoded_len(max_payload, true)
        .unwrap_or(usize::MAX)
        .max(max_payload)
        .saturating_add("data: \n".len() + EVENT_OVERHEAD)
}

/// The channel URL of `target` asking for a stream.
pub fn stream_target(target: &Target) -> Target {
    meta::with_query(target, STREAM_PARAM)
}

/// The request that opens a stream on `path` (which already asks for one,
/// see [`stream_target`]).
pub fn request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {CONTENT_TYPE}\r\n\
         Cache-Control: no-cache\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the response head at the start of `buf`: `200`, an event stream,
/// delimited by the connection's end (no length, no chunks). Returns the
/// head's length once it is complete.
pub fn check_response(buf: &[u8], path: &str) -> Result<Option<usize>> {
    let head = match ResponseHead::parse(buf) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Fail::run(format!(
                "event stream on {path}: malformed HTTP response: {e}"
            )));
        }
    };
    if head.code != 200 {
        let body = String::from_utf8_lossy(&buf[head.len..]);
        let body = body.trim();
        return Err(Fail::run(format!(
            "event stream on {path}: server answered {} {}{}{}",
            head.code,
            head.reason,
            if body.is_empty() { "" } else { ": " },
            body.chars().take(200).collect::<String>()
        )));
    }
    let media = head
        .header("content-type")
        .and_then(|v| v.split(|&b| b == b';').next())
        .map(|v| v.trim_ascii());
    if !media.is_some_and(|m| m.eq_ignore_ascii_case(CONTENT_TYPE.as_bytes())) {
        return Err(Fail::run(format!(
            "event stream on {path}: Content-Type is {}, not {CONTENT_TYPE}",
            head.header("content-type")
                .map_or("missing".into(), String::from_utf8_lossy)
        )));
    }
    for framing in ["content-length", "transfer-encoding"] {
        if head.header(framing).is_some() {
            return Err(Fail::run(format!(
                "event stream on {path}: the response has {framing}; loadgen expects a stream \
                 delimited by the connection's end"
            )));
        }
    }
    Ok(Some(head.len))
}

/// The next line of `buf` from `at`: its bytes and where the line after it
/// starts; `None` if no line end has arrived yet.
fn next_line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
    let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
        2
    } else {
        1
    };
    Some((&rest[..end], at + end + skip))
}

/// A line's field name and value (one space after the colon dropped), or
/// `None` for a comment.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first() == Some(&b':') {
        return None;
    }
    Some(match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[][..]),
    })
}

/// Hands every complete event at the start of `buf` that is a message to
/// `on_message(opcode, payload)` (see the module docs) and returns the
/// bytes used: up to the blank line of the last complete event. Fails on a
/// message over `max_payload` bytes, on bad base64, on an event that ends
/// the stream, and when what is left (one partial event) is longer than
/// any event of `max_payload` could be.
pub fn parse_events(
    buf: &[u8],
    max_payload: usize,
    mut on_message: impl FnMut(u8, &[u8]) -> Result<()>,
) -> Result<usize> {
    let mut used = 0;
    let mut at = 0;
    // The event being read: its type, its first data value, its data lines.
    let mut kind: &[u8] = b"";
    let mut first: &[u8] = b"";
    let mut lines = 0usize;
    while let Some((line, next)) = next_line(buf, at) {
        if line.is_empty() {
            if lines > 0 {
                dispatch(
                    &buf[used..at],
                    kind,
                    first,
                    lines,
                    max_payload,
                    &mut on_message,
                )?;
            }
            (kind, first, lines) = (b"", b"", 0);
            used = next;
        } else if let Some((name, value)) = field(line) {
            match name {
                b"event" => kind = value,
                b"data" => {
                    if lines == 0 {
                        first = value;
                    }
                    lines += 1;
                }
                // id, retry and unknown fields carry nothing loadgen checks.
                _ => {}
            }
        }
        at = next;
    }
    let left = buf.len() - used;
    if left > max_event_len(max_payload) {
        return Err(Fail::run(format!(
            "event stream: {left} bytes without the blank line that ends an event \
             (a message of at most {max_payload} bytes was expected)"
        )));
    }
    Ok(used)
}

/// One complete event (`event` is its lines, the blank line excluded) with
/// at least one `data:` line.
fn dispatch(
    event: &[u8],
    kind: &[u8],
    first: &[u8],
    lines: usize,
    max_payload: usize,
    on_message: &mut impl FnMut(u8, &[u8]) -> Result<()>,
) -> Result<()> {
    let too_long = |len: usize| {
        Fail::run(format!(
            "event stream: a {len}-byte message, over the {max_payload} bytes expected"
        ))
    };
    match kind {
        b"" | b"message" if lines == 1 => {
            if first.len() > max_payload {
                return Err(too_long(first.len()));
            }
            on_message(wire::OP_TEXT, first)
        }
        b"" | b"message" => DATA.with(|data| {
            let mut data = data.borrow_mut();
            data.clear();
            let mut at = 0;
            while let Some((line, next)) = next_line(event, at) {
                if let Some((b"data", value)) = field(line) {
                    // Each value then a `\n`; the last `\n` goes below.
                    data.extend_from_slice(value);
                    data.push(b'\n');
                }
                at = next;
            }
            data.pop();
            if data.len() > max_payload {
                return Err(too_long(data.len()));
            }
            on_message(wire::OP_TEXT, &data)
        }),
        b"binary" => DATA.with(|data| {
            let mut data = data.borrow_mut();
            data.clear();
            if lines != 1 {
                return Err(Fail::run(format!(
                    "event stream: a binary event with {lines} data lines (one expected)"
                )));
            }
            if base64::decoded_len_estimate(first.len()) > max_payload + 3 {
                return Err(too_long(base64::decoded_len_estimate(first.len())));
            }
            STANDARD.decode_vec(first, &mut data).map_err(|e| {
                Fail::run(format!("event stream: bad base64 in a binary event: {e}"))
            })?;
            if data.len() > max_payload {
                return Err(too_long(data.len()));
            }
            on_message(wire::OP_BINARY, &data)
        }),
        b"expired" | b"shutdown" => Err(Fail::run(format!(
            "server ended the event stream (event: {}, data: {})",
            String::from_utf8_lossy(kind),
            String::from_utf8_lossy(first)
        ))),
        // The server's own events (where a channel stands, a resume that
        // could not be served) are no messages.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages in `input` fed in the given pieces, carrying what each
    /// call leaves over into the next, as a connection does.
    fn feed(pieces: &[&[u8]]) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut seen = Vec::new();
        let mut carry = Vec::new();
        for piece in pieces {
            carry.extend_from_slice(piece);
            let used = parse_events(&carry, 64, |op, p| {
                seen.push((op, p.to_vec()));
                Ok(())
            })?;
            carry.drain(..used);
        }
        Ok(seen)
    }

    /// A stream as wshub writes one: opening lines, a text event with an
    /// id, a keep-alive, a text of three lines, a binary event, a position.
    const STREAM: &[u8] = b"retry: 2000\n: wshub event stream\n\n\
        id: 5ac290912b2fceab:17\ndata: hello\n\n\
        :\n\n\
        data: one\ndata:  two\ndata: \n\n\
        event: binary\ndata: AAEC/w==\n\n\
        id: 5ac290912b2fceab:18\nevent: position\ndata: {\"channel\":\"a\"}\n\n";

    fn expected() -> Vec<(u8, Vec<u8>)> {
        vec![
            (wire::OP_TEXT, b"hello".to_vec()),
            (wire::OP_TEXT, b"one\n two\n".to_vec()),
            (wire::OP_BINARY, vec![0, 1, 2, 255]),
        ]
    }

    #[test]
    fn whole_stream_gives_its_messages() {
        assert_eq!(feed(&[STREAM]).unwrap(), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(feed(&[a, b]).unwrap(), expected(), "split at {cut}");
        }
        for (i, j) in (0..STREAM.len()).flat_map(|i| (i..STREAM.len()).map(move |j| (i, j))) {
            let pieces = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
            assert_eq!(feed(&pieces).unwrap(), expected(), "split at {i} and {j}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(feed(&bytes).unwrap(), expected(), "a byte at a time");
    }

    #[test]
    fn any_line_end_works_at_any_split() {
        for end in ["\r\n", "\r", "\n"] {
            let text = format!("data: a{end}data: b{end}{end}data: c{end}{end}");
            let want = vec![
                (wire::OP_TEXT, b"a\nb".to_vec()),
                (wire::OP_TEXT, b"c".to_vec()),
            ];
            for cut in 0..=text.len() {
                let (a, b) = text.as_bytes().split_at(cut);
                assert_eq!(feed(&[a, b]).unwrap(), want, "{end:?} split at {cut}");
            }
        }
    }

    #[test]
    fn fields_follow_the_standard() {
        // No space after the colon, a field with no colon (empty data), an
        // unknown field, `event: message`, a data line that is a comment.
        let input = b"data:x\n\ndata\n\nfoo: bar\nevent: message\ndata: y\n\n:data: z\n\n";
        let want = vec![
            (wire::OP_TEXT, b"x".to_vec()),
            (wire::OP_TEXT, b"".to_vec()),
            (wire::OP_TEXT, b"y".to_vec()),
        ];
        assert_eq!(feed(&[input]).unwrap(), want);
        // An event with no data line is nothing; a partial one waits.
        assert_eq!(feed(&[b"id: 1\nevent: x\n\ndata: late"]).unwrap(), vec![]);
    }

    #[test]
    fn limits_and_endings_fail() {
        let long = format!("data: {}\n\n", "x".repeat(65));
        assert!(feed(&[long.as_bytes()]).is_err(), "over max_payload");
        let endless = "x".repeat(max_event_len(64) + 1);
        assert!(feed(&[endless.as_bytes()]).is_err(), "no event end");
        assert!(
            feed(&[b"event: binary\ndata: !!\n\n"]).is_err(),
            "bad base64"
        );
        let err = feed(&[b"event: shutdown\ndata: restart\n\n"]).unwrap_err();
        assert!(err.message.contains("restart"), "{}", err.message);
        assert!(
            feed(&[b"event: not-recovered\ndata: {}\n\n"])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn response_head_is_checked() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                   Connection: close\r\n\r\nretry: 2000\n";
        let head = ok.len() - b"retry: 2000\n".len();
        assert_eq!(check_response(ok, "/p").unwrap(), Some(head));
        assert_eq!(check_response(&ok[..20], "/p").unwrap(), None);
        let charset = b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\n\r\n";
        assert!(check_response(charset, "/p").unwrap().is_some());
        for bad in [
            &b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 3\r\n\r\nno!"[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(check_response(bad, "/p").is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let err =
            check_response(b"HTTP/1.1 400 Bad Request\r\n\r\ntwo channels", "/p").unwrap_err();
        assert!(err.message.contains("two channels"), "{}", err.message);
    }

    #[test]
    fn request_asks_for_a_stream() {
        let target = crate::target::parse_ws("ws://127.0.0.1:9/live/a").unwrap();
        let stream = stream_target(&target);
        assert_eq!(stream.path, "/live/a?sse=1");
        let req = String::from_utf8(request(&stream.host, &stream.path)).unwrap();
        assert!(req.starts_with("GET /live/a?sse=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nAccept: text/event-stream\r\n"), "{req}");
        assert!(
            req.ends_with("\r\n\r\n") && !req.contains("Upgrade"),
            "{req}"
        );
    }
}
