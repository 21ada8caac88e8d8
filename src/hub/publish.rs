//! The HTTP publish API, sans-IO: `POST <prefix>/<channel>` with the message
//! as the body, and the access rule it shares with `/metrics`.
//!
//! Owns: deciding from a request head whether a publish may proceed (access,
//! channel name, body framing, size, content type), collecting its body
//! (`Content-Length` or chunked) within `max_message_size`, and the JSON
//! answer.
//! Must never: read sockets, deliver anything, or buffer a body past
//! `max_message_size`.

use std::io::Write as _;

use subtle::ConstantTimeEq;

use super::names::is_valid_channel_name;
use super::position::Position;
use crate::protocol::body::{self, BodyError, BodyReader, Framing};
use crate::protocol::http::{self, RequestHead};

/// A request the API refuses: the status, a short reason for the body, and
/// whether the connection must close (a body we will not read may follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub close: bool,
}

impl Refusal {
    const fn new(status: u16, reason: &'static str) -> Refusal {
        Refusal {
            status,
            reason,
            close: true,
        }
    }

    /// Appends the error response, with the headers its status calls for.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let headers: &[(&str, &str)] = match self.status {
            401 => &[("WWW-Authenticate", "Bearer")],
            405 => &[("Allow", "POST")],
            _ => &[],
        };
        let mut body = String::with_capacity(self.reason.len() + 1);
        body.push_str(self.reason);
        body.push('\n');
        http::write_response(self.status, headers, body.as_bytes(), self.close, out);
    }
}

impl From<BodyError> for Refusal {
    fn from(error: BodyError) -> Refusal {
        match error {
            BodyError::TooLarge => TOO_LARGE,
            _ => Refusal::new(error.status(), error.reason()),
        }
    }
}

/// A body over `max_message_size`, announced or arriving in chunks.
const TOO_LARGE: Refusal = Refusal::new(413, "message larger than max_message_size");

/// A publish that may proceed once its body has arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub channel: String,
    /// Deliver as a text frame (the body must then be UTF-8).
    pub text: bool,
    /// Published as `application/json`: metadata clients get the value
    /// itself when the body parses.
    pub json: bool,
    /// The announced `Content-Length`; 0 for a chunked body.
    pub body_len: usize,
    /// The body comes in the chunked coding, its length learnt as it arrives.
    pub chunked: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
    pub keep_alive: bool,
}

/// Who may publish and read metrics.
#[derive(Clone, Copy, Debug)]
pub enum Access<'a> {
    /// `Authorization: Bearer <token>` is required.
    Token(&'a str),
    /// No token configured: only peers on a loopback address.
    LoopbackOnly { peer_is_loopback: bool },
}

/// The refusal of a signed token (JWT) on the publish API: 401
/// "unauthorized" or 403 "forbidden", and nothing more.
pub fn token_refusal(status: u16) -> Refusal {
    match status {
        403 => Refusal::new(403, "forbidden"),
        _ => Refusal::new(401, "unauthorized"),
    }
}

/// Checks the request against the access rule.
pub fn authorize(head: &RequestHead, access: Access<'_>) -> Result<(), Refusal> {
    match access {
        Access::Token(token) => {
            let offered = head
                .header("Authorization")
                .and_then(|v| strip_prefix_ignore_case(http::trim_ows(v), b"Bearer "))
                .map(http::trim_ows);
            // Compare in constant time so response timing reveals nothing
            // about how much of a guessed token was right.
            match offered {
                Some(offered) if bool::from(offered.ct_eq(token.as_bytes())) => Ok(()),
                _ => Err(Refusal::new(401, "a valid bearer token is required")),
            }
        }
        Access::LoopbackOnly {
            peer_is_loopback: true,
        } => Ok(()),
        Access::LoopbackOnly { .. } => Err(Refusal::new(
            403,
            "publishing is only allowed from loopback unless publish_token is set",
        )),
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

/// Does a client intend to keep the connection open after this request?
pub fn keep_alive(head: &RequestHead) -> bool {
    let close = head
        .header_values("Connection")
        .any(|v| http::has_token(v, "close"));
    head.minor_version >= 1 && !close
}

/// How the request frames its body, or why that framing is refused.
pub fn framing(head: &RequestHead) -> Result<Framing, Refusal> {
    Ok(body::framing(head)?)
}

/// The body length a request announces in advance: `Ok(0)` when it has
/// none. For requests that take no body; a chunked one is refused with 411.
pub fn body_length(head: &RequestHead) -> Result<usize, Refusal> {
    match framing(head)? {
        Framing::None => Ok(0),
        Framing::Length(n) => Ok(n),
        Framing::Chunked => Err(Refusal::new(
            411,
            "this request takes no body or a Content-Length one",
        )),
    }
}

/// Validates a request to `<prefix>/<channel>`; `channel` is the path after
/// the prefix and its slash.
pub fn check_publish(
    head: &RequestHead,
    channel: &str,
    max_message_size: u64,
) -> Result<Publish, Refusal> {
    if head.method != "POST" {
        return Err(Refusal::new(405, "publish with POST"));
    }
    if !is_valid_channel_name(channel) {
        return Err(Refusal::new(
            400,
            "invalid channel name: 1 to 128 characters of A-Z a-z 0-9 _ . : @ -",
        ));
    }
    let (body_len, chunked) = match framing(head)? {
        Framing::None => {
            return Err(Refusal::new(
                411,
                "a publish needs a Content-Length or a chunked body",
            ));
        }
        Framing::Length(n) => (n, false),
        // Its size is checked chunk by chunk as it arrives.
        Framing::Chunked => (0, true),
    };
    if u64::try_from(body_len).map_or(true, |n| n > max_message_size) {
        return Err(TOO_LARGE);
    }
    let expect = head.header("Expect");
    let expect_continue = match expect {
        None => false,
        Some(v) if http::trim_ows(v).eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(Refusal::new(417, "only Expect: 100-continue is supported")),
    };
    Ok(Publish {
        channel: channel.to_owned(),
        text: is_text(head.header("Content-Type")),
        json: is_json(head.header("Content-Type")),
        body_len,
        chunked,
        expect_continue: expect_continue && head.minor_version >= 1,
        keep_alive: keep_alive(head),
    })
}

/// Room reserved up front for a body: its announced length, up to this.
/// A chunked body (or a larger one) grows its buffer as data arrives.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// A publish whose body is still arriving: it collects the data within
/// `max_message_size`, stops exactly at the body's end, and refuses a body
/// that breaks the framing rules or the limit.
#[derive(Debug)]
pub struct PublishBody {
    pub publish: Publish,
    pub data: Vec<u8>,
    reader: BodyReader,
}

impl PublishBody {
    pub fn new(publish: Publish, max_message_size: u64) -> PublishBody {
        let reader = if publish.chunked {
            BodyReader::chunked(max_message_size)
        } else {
            BodyReader::fixed(publish.body_len)
        };
        PublishBody {
            data: Vec::with_capacity(publish.body_len.min(INITIAL_BODY_CAPACITY)),
            publish,
            reader,
        }
    }

    /// Offers the next input; returns how many bytes of it belong to the
    /// body (what follows is the next request). A refusal is final and
    /// closes the connection.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Refusal> {
        Ok(self.reader.feed(input, &mut self.data)?)
    }

    /// The whole body has arrived: the publish can go out.
    pub fn is_complete(&self) -> bool {
        self.reader.is_complete()
    }
}

/// The media type of a `Content-Type` value, parameters and spaces left out.
fn media_type(content_type: Option<&[u8]>) -> &[u8] {
    let value = content_type.unwrap_or_default();
    let media = value.split(|&b| b == b';').next().unwrap_or_default();
    http::trim_ows(media)
}

/// `text/*` and JSON travel as text frames; everything else as binary.
fn is_text(content_type: Option<&[u8]>) -> bool {
    let media = media_type(content_type);
    let starts_text = media
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"text/"));
    starts_text || is_json(content_type)
}

/// `application/json`.
fn is_json(content_type: Option<&[u8]>) -> bool {
    media_type(content_type).eq_ignore_ascii_case(b"application/json")
}

/// The body a text publish carried was not UTF-8.
pub const NOT_UTF8: Refusal = Refusal {
    status: 400,
    reason: "a text message must be valid UTF-8",
    close: false,
};

/// Appends the `200` answer to a publish:
/// `{"channel":"…","recipients":N}`, plus `"epoch":"…","offset":N` when the
/// message got a position. Channel names and epochs never need JSON escaping
/// (their alphabets have no quotes or backslashes).
pub fn write_published(
    channel: &str,
    recipients: usize,
    position: Option<Position>,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let mut body = Vec::with_capacity(channel.len() + 80);
    let _ = write!(
        body,
        "{{\"channel\":\"{channel}\",\"recipients\":{recipients}"
    );
    if let Some(Position { epoch, offset }) = position {
        let _ = write!(body, ",\"epoch\":\"{epoch}\",\"offset\":{offset}");
    }
    body.extend_from_slice(b"}\n");
    http::write_response(
        200,
        &[("Content-Type", "application/json")],
        &body,
        !keep_alive,
        out,
    );
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::HeadReader;

    fn head(text: &str) -> RequestHead {
        let raw = format!("{text}\r\n\r\n");
        match HeadReader::new().feed(raw.as_bytes()) {
            Ok(Some((head, _))) => head,
            other => panic!("bad test head {text:?}: {other:?}"),
        }
    }

    const MAX: u64 = 1000;

    #[test]
    fn a_plain_publish_is_accepted() {
        let h = head("POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 5");
        let p = check_publish(&h, "news", MAX).unwrap();
        assert_eq!(p.channel, "news");
        assert_eq!(p.body_len, 5);
        assert!(!p.text, "no content type means binary");
        assert!(p.keep_alive);
        assert!(!p.expect_continue);
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /publish/a HTTP/1.1\r\nHost: x", "a", 405),
            ("POST /publish/a HTTP/1.1\r\nHost: x", "a", 411),
            (
                "POST /publish/a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 1",
                "a%20b",
                400,
            ),
            (
                "POST /publish/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1",
                "",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked",
                "a",
                501,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: x1",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1001",
                "a",
                413,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999",
                "a",
                400,
            ),
            (
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: magic",
                "a",
                417,
            ),
        ];
        for (text, channel, status) in cases {
            let got = check_publish(&head(text), channel, MAX);
            assert_eq!(got.map_err(|r| r.status), Err(*status), "{text}");
        }
    }

    #[test]
    fn a_chunked_publish_is_accepted_and_collected() {
        let h = head(
            "POST /publish/news HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: text/plain\r\nExpect: 100-continue",
        );
        let p = check_publish(&h, "news", 8).unwrap();
        assert!(p.chunked && p.text && p.expect_continue && p.keep_alive);
        assert_eq!(p.body_len, 0);

        let mut body = PublishBody::new(p.clone(), 8);
        assert!(
            !body.is_complete(),
            "a chunked body is never empty up front"
        );
        assert_eq!(body.feed(b"3;x\r\nhel\r\n5\r\nlo"), Ok(15));
        assert_eq!(body.feed(b" yo\r\n0\r\n\r\nGET"), Ok(10));
        assert!(body.is_complete());
        assert_eq!(body.data, b"hello yo");

        // One byte over the limit: refused when the size line arrives.
        let mut body = PublishBody::new(p, 8);
        assert_eq!(body.feed(b"8\r\nabcdefgh\r\n"), Ok(13));
        let refusal = body.feed(b"1\r\n").unwrap_err();
        assert_eq!((refusal.status, refusal.close), (413, true));
        assert_eq!(refusal.reason, TOO_LARGE.reason);
        // Broken framing is a 400 that closes the connection.
        let mut body = PublishBody::new(check_publish(&h, "news", 8).unwrap(), 8);
        let refusal = body.feed(b"2\r\nabX").unwrap_err();
        assert_eq!((refusal.status, refusal.close), (400, true));
        assert!(refusal.reason.contains("CRLF"), "{refusal}");
    }

    #[test]
    fn a_fixed_length_body_stops_at_its_length() {
        let h = head("POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4");
        let mut body = PublishBody::new(check_publish(&h, "a", MAX).unwrap(), MAX);
        assert_eq!(body.feed(b"ab"), Ok(2));
        assert!(!body.is_complete());
        assert_eq!(body.feed(b"cdGET / HTTP/1.1"), Ok(2));
        assert!(body.is_complete());
        assert_eq!(body.data, b"abcd");
        let h = head("POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0");
        assert!(PublishBody::new(check_publish(&h, "a", MAX).unwrap(), MAX).is_complete());
    }

    #[test]
    fn body_length_is_for_requests_without_a_chunked_body() {
        let cases: &[(&str, Result<usize, u16>)] = &[
            ("", Ok(0)),
            ("\r\nContent-Length: 7", Ok(7)),
            ("\r\nTransfer-Encoding: chunked", Err(411)),
            ("\r\nTransfer-Encoding: gzip", Err(400)),
        ];
        for (fields, expected) in cases {
            let h = head(&format!("GET /healthz HTTP/1.1\r\nHost: x{fields}"));
            assert_eq!(
                body_length(&h).map_err(|r| r.status),
                *expected,
                "{fields:?}"
            );
        }
    }

    #[test]
    fn limit_is_inclusive_and_duplicate_equal_lengths_pass() {
        let h =
            head("POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nContent-Length: 1000");
        assert_eq!(check_publish(&h, "a", MAX).unwrap().body_len, 1000);
    }

    #[test]
    fn content_type_selects_text_or_binary() {
        let cases = [
            ("text/plain", true),
            ("Text/Plain; charset=utf-8", true),
            ("application/json", true),
            ("application/JSON ; charset=utf-8", true),
            ("application/octet-stream", false),
            ("application/jsonx", false),
            ("image/png", false),
        ];
        for (ct, text) in cases {
            let h = head(&format!(
                "POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Type: {ct}"
            ));
            assert_eq!(check_publish(&h, "a", MAX).unwrap().text, text, "{ct}");
        }
    }

    #[test]
    fn expect_continue_and_keep_alive() {
        let h = head(
            "POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-Continue\r\nConnection: close",
        );
        let p = check_publish(&h, "a", MAX).unwrap();
        assert!(p.expect_continue);
        assert!(!p.keep_alive);
        let h = head("POST /p/a HTTP/1.0\r\nHost: x\r\nContent-Length: 1");
        assert!(!check_publish(&h, "a", MAX).unwrap().keep_alive);
    }

    #[test]
    fn token_access_needs_the_exact_bearer_token() {
        let ok = head("POST /p/a HTTP/1.1\r\nAuthorization: Bearer s3cret");
        let lower = head("POST /p/a HTTP/1.1\r\nAuthorization: bearer s3cret");
        let wrong = head("POST /p/a HTTP/1.1\r\nAuthorization: Bearer s3cre");
        let longer = head("POST /p/a HTTP/1.1\r\nAuthorization: Bearer s3crett");
        let basic = head("POST /p/a HTTP/1.1\r\nAuthorization: Basic s3cret");
        let none = head("POST /p/a HTTP/1.1\r\nHost: x");
        let access = Access::Token("s3cret");
        assert_eq!(authorize(&ok, access), Ok(()));
        assert_eq!(authorize(&lower, access), Ok(()));
        for h in [&wrong, &longer, &basic, &none] {
            assert_eq!(authorize(h, access).map_err(|r| r.status), Err(401));
        }
        // With a token configured, loopback gives no free pass.
        assert_eq!(authorize(&none, access).map_err(|r| r.status), Err(401));
    }

    #[test]
    fn without_a_token_only_loopback_may_publish() {
        let h = head("POST /p/a HTTP/1.1\r\nHost: x");
        let local = Access::LoopbackOnly {
            peer_is_loopback: true,
        };
        let remote = Access::LoopbackOnly {
            peer_is_loopback: false,
        };
        assert_eq!(authorize(&h, local), Ok(()));
        assert_eq!(authorize(&h, remote).map_err(|r| r.status), Err(403));
    }

    #[test]
    fn published_answer_is_json() {
        let mut out = Vec::new();
        write_published("news", 3, None, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(!text.contains("Connection: close"));
        assert!(text.ends_with("\r\n\r\n{\"channel\":\"news\",\"recipients\":3}\n"));

        let mut out = Vec::new();
        let position = Position {
            epoch: super::super::position::Epoch::new(0xab),
            offset: 17,
        };
        write_published("news", 3, Some(position), false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(
            "{\"channel\":\"news\",\"recipients\":3,\"epoch\":\"00000000000000ab\",\"offset\":17}\n"
        ));
    }

    #[test]
    fn refusal_responses_name_their_requirements() {
        let mut out = Vec::new();
        Refusal::new(401, "x").write_response(&mut out);
        assert!(String::from_utf8_lossy(&out).contains("WWW-Authenticate: Bearer\r\n"));
        out.clear();
        Refusal::new(405, "x").write_response(&mut out);
        assert!(String::from_utf8_lossy(&out).contains("Allow: POST\r\n"));
    }
}
