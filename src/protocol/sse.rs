//! Server-Sent Events (the HTML standard's `text/event-stream`), sans-IO:
//! which requests ask for a stream, the response head, and the exact bytes
//! of each event.
//!
//! Owns: the event encoding (an `id:` line, an `event:` line, `data:`
//! lines, a blank line), splitting a text payload into `data:` lines so
//! that a spec-following parser (a browser's `EventSource`) rebuilds it
//! exactly, base64 for binary payloads, the stream's first bytes and its
//! keep-alive comment, the names of the events the server sends of its own,
//! and reading a position back from `Last-Event-ID`.
//! Must never: decide who gets which event, touch a socket or a clock, or
//! emit an event that a parser could split differently from how it was
//! meant (a field value never holds a CR or LF).
//!
//! A text payload is split at every line break the parser recognises
//! (`\r\n`, `\n` and a lone `\r`), each piece going out as `data: <piece>`.
//! The parser joins the pieces with `\n` and drops the one `\n` after the
//! last, so the payload comes back with every line break as `\n` (which is
//! all a parser can give back) and a trailing line break survives as an
//! empty last piece. The space after `data:` is always written, so a piece
//! that starts with a space keeps it (the parser drops exactly one).

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::http::{self, RequestHead};
use crate::hub::{Epoch, Position};

/// The reconnection delay the stream asks a client to use, in milliseconds
/// (the `retry:` field of its first bytes).
pub(crate) const RETRY_MS: u32 = 2000;

/// The media type of an event stream.
pub(crate) const CONTENT_TYPE: &str = "text/event-stream";

/// The query parameter that asks for a stream without an `Accept` header.
pub(crate) const STREAM_PARAM: &str = "sse";

/// The query parameter that names the position to resume from on a first
/// request (`Last-Event-ID` wins when both are given).
pub(crate) const LAST_EVENT_ID_PARAM: &str = "last_event_id";

/// The header a browser's `EventSource` sends when it reconnects.
pub(crate) const LAST_EVENT_ID_HEADER: &str = "Last-Event-ID";

/// The cookie an event stream's token may travel in (when the route's
/// `[auth.<name>]` table names no cookie of its own).
pub(crate) const TOKEN_COOKIE: &str = "wshub_token";

/// The event a binary payload travels as (its data base64).
pub(crate) const EVENT_BINARY: &str = "binary";
/// Where a channel stands, sent on a fresh stream of a route with history.
pub(crate) const EVENT_POSITION: &str = "position";
/// A resume that cannot be served; live events follow.
pub(crate) const EVENT_NOT_RECOVERED: &str = "not-recovered";
/// The stream's token expired: the stream ends.
pub(crate) const EVENT_EXPIRED: &str = "expired";
/// The server shuts down: the stream ends.
pub(crate) const EVENT_SHUTDOWN: &str = "shutdown";
/// The data of [`EVENT_SHUTDOWN`].
pub(crate) const SHUTDOWN_DATA: &str = "restart";

/// A comment: nothing for the client, bytes for every proxy and NAT on the
/// way (sent every `ping_interval`).
pub(crate) const KEEP_ALIVE: &[u8] = b":\n\n";

/// The bytes [`write_event`] adds to a payload besides its `data:` lines,
/// at most (the `id:` and `event:` lines and the blank line).
pub(crate) const MAX_OVERHEAD: usize = 64;

/// Whether a request that is not a WebSocket upgrade asks for an event
/// stream: a `GET` that accepts `text/event-stream` or says `sse=1`.
pub(crate) fn wants_stream(head: &RequestHead) -> bool {
    if head.method != "GET" || head.header("Upgrade").is_some() {
        return false;
    }
    let accepts = head.header_values("Accept").any(|value| {
        value.split(|&b| b == b',').any(|range| {
            let media = range.split(|&b| b == b';').next().unwrap_or_default();
            http::trim_ows(media).eq_ignore_ascii_case(CONTENT_TYPE.as_bytes())
        })
    });
    accepts
        || head.query.as_deref().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == STREAM_PARAM && v == "1")
        })
}

/// Why a stream's resume position was refused (the reason goes into the 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResumeError {
    #[error(
        "malformed event id: use <epoch>:<offset>, the epoch 16 lowercase hex digits and the offset a decimal number"
    )]
    Malformed,
    #[error("Last-Event-ID given twice")]
    Twice,
}

/// The position a stream resumes from: the `Last-Event-ID` header (an
/// empty one counts as absent, as a browser never sends it empty), else
/// the `last_event_id` query parameter; `None` for a fresh stream.
pub(crate) fn resume_position(head: &RequestHead) -> Result<Option<Position>, ResumeError> {
    if head.header_count(LAST_EVENT_ID_HEADER) > 1 {
        return Err(ResumeError::Twice);
    }
    if let Some(value) = head.header(LAST_EVENT_ID_HEADER) {
        let value = http::trim_ows(value);
        if !value.is_empty() {
            let text = std::str::from_utf8(value).map_err(|_| ResumeError::Malformed)?;
            return parse_event_id(text).map(Some).ok_or(ResumeError::Malformed);
        }
    }
    let query = head.query.as_deref().unwrap_or_default();
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == LAST_EVENT_ID_PARAM {
            if found.is_some() {
                return Err(ResumeError::Twice);
            }
            found = Some(parse_event_id(&value).ok_or(ResumeError::Malformed)?);
        }
    }
    Ok(found)
}

/// `<epoch>:<offset>` as [`write_event`] writes it, and nothing else.
pub(crate) fn parse_event_id(text: &str) -> Option<Position> {
    let (epoch, offset) = text.split_once(':')?;
    let digits = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
    Some(Position {
        epoch: Epoch::parse(epoch)?,
        offset: digits.then(|| offset.parse().ok()).flatten()?,
    })
}

/// The `200` that opens a stream: close-delimited (no length, no chunks;
/// the connection is not reused), never cached or buffered by a proxy,
/// with the CORS headers for `cors_origin` (an allowed `Origin`, echoed),
/// then the reconnection delay and a comment.
pub(crate) fn write_response_head(cors_origin: Option<&[u8]>, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n"
    );
    if let Some(origin) = cors_origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(origin);
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
    }
    let _ = write!(out, "\r\nretry: {RETRY_MS}\n: wshub event stream\n\n");
}

/// An event's data: text split into lines, or binary as base64.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Data<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// How long [`write_event`]'s output is, at most: the data lines exactly
/// (one pass over a text payload, to size a buffer once) plus room for the
/// `id:` and `event:` lines.
pub(crate) fn max_event_len(data: Data<'_>) -> usize {
    const LINE: usize = "data: \n".len();
    let data = match data {
        Data::Text(text) => lines(text).map(|piece| piece.len() + LINE).sum(),
        Data::Binary(bytes) => base64::encoded_len(bytes.len(), true)
            .unwrap_or(usize::MAX)
            .saturating_add(LINE),
    };
    data.saturating_add(MAX_OVERHEAD)
}

/// Appends one event: `id:` when given, `event:` when named (a binary
/// payload is always `binary`), the data, and the blank line that ends it.
/// `event` must be one of this module's names (no CR or LF).
pub(crate) fn write_event(
    id: Option<Position>,
    event: Option<&str>,
    data: Data<'_>,
    out: &mut Vec<u8>,
) {
    if let Some(Position { epoch, offset }) = id {
        let _ = writeln!(out, "id: {epoch}:{offset}");
    }
    let event = match data {
        Data::Binary(_) => Some(EVENT_BINARY),
        Data::Text(_) => event,
    };
    if let Some(event) = event {
        let _ = writeln!(out, "event: {event}");
    }
    match data {
        Data::Text(text) => {
            for line in lines(text) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        Data::Binary(bytes) => {
            out.extend_from_slice(b"data: ");
            let at = out.len();
            let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
            out.resize(at.saturating_add(len), 0);
            // The slice was sized for the encoding just above.
            let written = out
                .get_mut(at..)
                .and_then(|room| STANDARD.encode_slice(bytes, room).ok())
                .unwrap_or(0);
            out.truncate(at + written);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

/// The pieces of `text` between line breaks (`\r\n`, `\n`, a lone `\r`):
/// one more than there are breaks, so `""` is one empty piece and a
/// trailing break ends with an empty one.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(at) => {
                let skip = if current[at] == b'\r' && current.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = current.get(at + skip..);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    //! The encoding checked against a reference parser written from the
    //! HTML standard's "Interpreting an event stream" section.

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::http::HeadReader;

    /// One event as a spec-following parser dispatches it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Dispatched {
        kind: String,
        data: String,
        last_event_id: String,
    }

    /// A reference parser for a whole stream (UTF-8 text), written from the
    /// standard: lines end at CRLF, LF or CR; a blank line dispatches; a
    /// line starting with `:` is a comment; `field: value` drops one space
    /// after the colon; `data` appends value and LF; `id` without NUL sets
    /// the last event id; dispatch drops one trailing LF and skips an event
    /// with an empty data buffer. Returns the events and the retry value.
    fn parse_stream(stream: &str) -> (Vec<Dispatched>, Option<u64>) {
        let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
        let mut events = Vec::new();
        let (mut data, mut kind, mut last_id, mut retry) =
            (String::new(), String::new(), String::new(), None);
        let mut lines = Vec::new();
        let mut rest = stream;
        // Only complete lines are interpreted; a stream that does not end in
        // a line break leaves its last line unprocessed.
        while let Some(at) = rest.find(['\r', '\n']) {
            lines.push(&rest[..at]);
            let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[at + skip..];
        }
        for line in lines {
            if line.is_empty() {
                if data.is_empty() {
                    kind.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                events.push(Dispatched {
                    kind: if kind.is_empty() {
                        "message".to_owned()
                    } else {
                        std::mem::take(&mut kind)
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: last_id.clone(),
                });
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => kind = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => last_id = value.to_owned(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    retry = value.parse().ok();
                }
                _ => {}
            }
        }
        (events, retry)
    }

    fn text_event(payload: &str, id: Option<Position>) -> String {
        let mut out = Vec::new();
        write_event(id, None, Data::Text(payload.as_bytes()), &mut out);
        let bound = max_event_len(Data::Text(payload.as_bytes()));
        assert!(
            out.len() <= bound && bound - out.len() <= MAX_OVERHEAD,
            "sized once"
        );
        String::from_utf8(out).unwrap()
    }

    /// What a parser can give back of a payload: line breaks as `\n`.
    fn normalised(payload: &str) -> String {
        payload.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn at(offset: u64) -> Position {
        Position {
            epoch: Epoch::new(0xabc),
            offset,
        }
    }

    #[test]
    fn text_events_have_their_exact_bytes() {
        assert_eq!(text_event("hi", None), "data: hi\n\n");
        assert_eq!(text_event("", None), "data: \n\n");
        assert_eq!(
            text_event("a\nb\r\nc\rd", Some(at(17))),
            "id: 0000000000000abc:17\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(text_event("end\n", None), "data: end\ndata: \n\n");
        assert_eq!(text_event("\r\n", None), "data: \ndata: \n\n");
        assert_eq!(text_event("\r\r", None), "data: \ndata: \ndata: \n\n");
        assert_eq!(text_event("\n\r", None), "data: \ndata: \ndata: \n\n");
        assert_eq!(text_event(" lead", None), "data:  lead\n\n");
        let mut out = Vec::new();
        write_event(None, Some(EVENT_POSITION), Data::Text(b"{}"), &mut out);
        assert_eq!(out, b"event: position\ndata: {}\n\n");
    }

    #[test]
    fn every_newline_form_and_the_edges_round_trip_through_the_parser() {
        for payload in [
            "",
            "one",
            "a\nb",
            "a\r\nb",
            "a\rb",
            "trailing\n",
            "trailing\r\n",
            "trailing\r",
            "\n",
            "\n\n",
            "\r\n\r\n",
            "\r\r\n\n\r",
            " leading space",
            "  two",
            ":not a comment",
            "data: inside",
            "ünï © 🎉\u{2028}\u{feff}",
            "{\"json\": [1, 2]}\n",
        ] {
            let (events, _) = parse_stream(&text_event(payload, Some(at(3))));
            assert_eq!(events.len(), 1, "{payload:?}");
            assert_eq!(events[0].data, normalised(payload), "{payload:?}");
            assert_eq!(events[0].kind, "message");
            assert_eq!(events[0].last_event_id, "0000000000000abc:3");
        }
    }

    #[test]
    fn binary_payloads_are_base64_events() {
        let mut out = Vec::new();
        let payload = [0u8, 255, 7, b'\n', b'\r'];
        write_event(Some(at(2)), None, Data::Binary(&payload), &mut out);
        assert!(out.len() <= max_event_len(Data::Binary(&payload)));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id: 0000000000000abc:2\nevent: binary\ndata: AP8HCg0=\n\n"
        );
        let (events, _) = parse_stream(&text);
        assert_eq!(events[0].kind, "binary");
        assert_eq!(STANDARD.decode(&events[0].data).unwrap(), payload);
        let mut out = Vec::new();
        write_event(None, None, Data::Binary(b""), &mut out);
        assert_eq!(out, b"event: binary\ndata: \n\n");
    }

    #[test]
    fn the_stream_opens_with_a_retry_and_a_comment() {
        let mut out = Vec::new();
        write_response_head(Some(b"https://app.example"), &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for line in [
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "X-Accel-Buffering: no",
            "Connection: close",
            "Access-Control-Allow-Origin: https://app.example",
            "Access-Control-Allow-Credentials: true",
            "Vary: Origin",
        ] {
            assert!(head.lines().any(|l| l == line), "{line} in {head}");
        }
        assert!(!head.contains("Content-Length") && !head.contains("Transfer-Encoding"));
        let (events, retry) = parse_stream(body);
        assert!(events.is_empty());
        assert_eq!(retry, Some(u64::from(RETRY_MS)));
        let (events, _) = parse_stream(std::str::from_utf8(KEEP_ALIVE).unwrap());
        assert!(events.is_empty());
        let mut out = Vec::new();
        write_response_head(None, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("Access-Control"));
    }

    fn head(request: &str) -> RequestHead {
        let mut reader = HeadReader::default();
        reader.feed(request.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn which_requests_ask_for_a_stream() {
        let get = |extra: &str, path: &str| {
            head(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"))
        };
        assert!(wants_stream(&get(
            "Accept: text/event-stream\r\n",
            "/live/a"
        )));
        assert!(wants_stream(&get(
            "Accept: text/html, Text/Event-Stream;q=0.9\r\n",
            "/live/a"
        )));
        assert!(wants_stream(&get("", "/live/a?x=1&sse=1")));
        assert!(!wants_stream(&get("", "/live/a?sse=0")));
        assert!(!wants_stream(&get("Accept: text/html\r\n", "/live/a")));
        assert!(!wants_stream(&get(
            "Accept: text/event-stream\r\nUpgrade: websocket\r\n",
            "/live/a"
        )));
        assert!(!wants_stream(&head(
            "POST /live/a?sse=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )));
    }

    #[test]
    fn last_event_id_parsing() {
        let p = |text: &str| parse_event_id(text);
        assert_eq!(p("0000000000000abc:17"), Some(at(17)));
        assert_eq!(p("0000000000000abc:0"), Some(at(0)));
        for bad in [
            "",
            ":",
            "0000000000000abc",
            "0000000000000abc:",
            "0000000000000abc:-1",
            "0000000000000abc:+1",
            "0000000000000abc:1:2",
            "0000000000000ABC:1",
            "abc:1",
            "0000000000000abc:18446744073709551616",
            " 0000000000000abc:1",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        let resume = |extra: &str, query: &str| {
            resume_position(&head(&format!(
                "GET /live/a{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
            )))
        };
        assert_eq!(resume("", ""), Ok(None));
        assert_eq!(
            resume("Last-Event-ID: 0000000000000abc:5\r\n", ""),
            Ok(Some(at(5)))
        );
        assert_eq!(
            resume("", "?last_event_id=0000000000000abc%3A6"),
            Ok(Some(at(6)))
        );
        assert_eq!(
            resume(
                "Last-Event-ID: 0000000000000abc:5\r\n",
                "?last_event_id=0000000000000abc:6"
            ),
            Ok(Some(at(5))),
            "the header wins"
        );
        assert_eq!(
            resume("Last-Event-ID: \r\n", "?last_event_id=0000000000000abc:6"),
            Ok(Some(at(6))),
            "an empty header is no header"
        );
        assert_eq!(
            resume("Last-Event-ID: nope\r\n", ""),
            Err(ResumeError::Malformed)
        );
        assert_eq!(
            resume("", "?last_event_id=1:2"),
            Err(ResumeError::Malformed)
        );
        assert_eq!(
            resume(
                "Last-Event-ID: 0000000000000abc:5\r\nLast-Event-ID: 0000000000000abc:5\r\n",
                ""
            ),
            Err(ResumeError::Twice)
        );
    }

    proptest! {
        #[test]
        fn any_text_payload_survives_the_parser(payload in "(?s)[\\PC\r\n \u{0}-\u{1f}]{0,64}") {
            let pos = at(9);
            let (events, _) = parse_stream(&text_event(&payload, Some(pos)));
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(&events[0].data, &normalised(&payload));
            prop_assert_eq!(&events[0].last_event_id, "0000000000000abc:9");
        }

        #[test]
        fn consecutive_events_stay_apart(a in "(?s).{0,24}", b in "(?s).{0,24}") {
            let stream = format!("{}{}", text_event(&a, None), text_event(&b, None));
            let (events, _) = parse_stream(&stream);
            prop_assert_eq!(events.len(), 2);
            prop_assert_eq!(&events[0].data, &normalised(&a));
            prop_assert_eq!(&events[1].data, &normalised(&b));
        }
    }
}
