//! HTTP/1.1 request heads read incrementally, and plain responses.
//!
//! Owns: finding the end of a head in linear time over any number of reads,
//! parsing it with `httparse`, header-list helpers, and response encoding.
//! Must never: know about WebSocket rules or routes, or hold a buffer once a
//! head is complete.

use std::io::Write as _;

/// Largest request head accepted (request line + headers + blank line).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// The blank line that ends a head.
const HEAD_TERMINATOR: &[u8] = b"\r\n\r\n";
/// How far a resumed search must step back so a terminator split across two
/// reads is still found.
const SEARCH_OVERLAP: usize = HEAD_TERMINATOR.len() - 1;

/// A parsed request head, owning its data so it can outlive the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path of the request-target (absolute-form is reduced to its path).
    pub path: String,
    /// The query string after `?`, without the `?`.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// The first value of a header field, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    /// How many fields carry this case-insensitive name.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
    /// Every value of a header field, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request head was refused, with the status to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_LEN} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// 431 for the size limits, 400 for malformed requests.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

/// Accumulates a request head across reads. Searching for the blank line
/// resumes where the last search stopped, so a head dribbled one byte per
/// read costs linear time, and `httparse` runs once per head.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
    /// Where the next search for the terminator starts in `buf`: no
    /// terminator begins before this offset.
    scanned: usize,
}

impl HeadReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers the next input. Returns `Ok(Some((head, used)))` once a head is
    /// complete, where `used` is how many bytes of `input` belong to it (the
    /// rest follows the head); `Ok(None)` when more is needed (the input has
    /// been stored). A head that arrives whole in one call is parsed straight
    /// from `input` without copying.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        if self.buf.is_empty() {
            return self.feed_unbuffered(input);
        }
        let held = self.buf.len();
        // Bytes past the limit can never belong to an acceptable head, so
        // they are not copied; one extra byte is enough to prove the overflow.
        let room = (MAX_HEAD_LEN + 1).saturating_sub(held);
        let take = input.len().min(room);
        self.buf.extend_from_slice(&input[..take]);
        match find_terminator(&self.buf, self.scanned) {
            Some(end) if end <= MAX_HEAD_LEN => {
                let buf = std::mem::take(&mut self.buf);
                self.scanned = 0;
                let head = parse_head(&buf[..end])?;
                // The buffer held no terminator before this input, so the
                // head ends inside it.
                Ok(Some((head, end - held)))
            }
            Some(_) => Err(self.fail(HeadError::TooLarge)),
            None if self.buf.len() > MAX_HEAD_LEN => Err(self.fail(HeadError::TooLarge)),
            None => {
                self.scanned = self.buf.len().saturating_sub(SEARCH_OVERLAP);
                Ok(None)
            }
        }
    }

    /// The bytes of an incomplete head held so far (feeding them to a fresh
    /// reader rebuilds this one).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held for an incomplete head.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    fn feed_unbuffered(&mut self, input: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        // A terminator ending past the limit means the head is too large, so
        // the search never needs to look further than the limit.
        let window = &input[..input.len().min(MAX_HEAD_LEN)];
        if let Some(end) = find_terminator(window, 0) {
            return Ok(Some((parse_head(&input[..end])?, end)));
        }
        if input.len() > MAX_HEAD_LEN {
            return Err(HeadError::TooLarge);
        }
        self.buf.extend_from_slice(input);
        self.scanned = input.len().saturating_sub(SEARCH_OVERLAP);
        Ok(None)
    }

    /// Drops whatever was held; the connection is about to be refused.
    fn fail(&mut self, error: HeadError) -> HeadError {
        self.buf = Vec::new();
        self.scanned = 0;
        error
    }
}

/// The offset just past the first terminator at or after `from`.
fn find_terminator(buf: &[u8], from: usize) -> Option<usize> {
    #[cfg(test)]
    SCANNED_BYTES.with(|n| n.set(n.get() + buf.len().saturating_sub(from)));

    buf.get(from..)?
        .windows(HEAD_TERMINATOR.len())
        .position(|w| w == HEAD_TERMINATOR)
        .map(|at| from + at + HEAD_TERMINATOR.len())
}

#[cfg(test)]
thread_local! {
    /// How many times `httparse` ran on this thread, to prove it runs once
    /// per head however the head is split.
    static PARSE_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Bytes handed to the terminator search on this thread, to prove the
    /// search stays linear in the head length.
    static SCANNED_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses a head known to end with the terminator.
fn parse_head(head: &[u8]) -> Result<RequestHead, HeadError> {
    #[cfg(test)]
    PARSE_CALLS.with(|calls| calls.set(calls.get() + 1));

    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        // The terminator is present, so asking for more means the head is
        // broken (for instance only blank lines).
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed("incomplete request head"));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(parse_error_reason(e))),
    };
    // httparse also ends a head at a bare-LF blank line; bytes between that
    // and our terminator would otherwise be silently dropped.
    if parsed != head.len() {
        return Err(HeadError::Malformed("request head must end with CRLF CRLF"));
    }
    let method = req.method.ok_or(HeadError::Malformed("missing method"))?;
    let target = req
        .path
        .ok_or(HeadError::Malformed("missing request target"))?;
    let minor_version = req
        .version
        .ok_or(HeadError::Malformed("missing HTTP version"))?;
    let (path, query) = split_target(target)?;
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        minor_version,
        headers,
    })
}

fn parse_error_reason(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Splits a request-target into path and query, reducing absolute-form to
/// its path. Only origin-form and absolute-form name a resource we serve.
fn split_target(target: &str) -> Result<(&str, Option<&str>), HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid request target");
    const ROOT: &str = "/";

    let rest = match strip_scheme_and_authority(target) {
        Some(rest) => rest,
        None if target.starts_with('/') => target,
        None => return Err(INVALID),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Ok((ROOT, query));
    }
    if !path.starts_with('/') {
        return Err(INVALID);
    }
    Ok((path, query))
}

/// For an absolute-form target (`scheme://authority/path?query`), what
/// follows the authority; `None` when the target is not absolute-form.
fn strip_scheme_and_authority(target: &str) -> Option<&str> {
    const SCHEME_END: &str = "://";

    let (scheme, after) = target.split_once(SCHEME_END)?;
    let mut chars = scheme.bytes();
    let first_is_alpha = chars.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_valid = chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !first_is_alpha || !rest_valid {
        return None;
    }
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    Some(&after[authority_end..])
}

/// Optional whitespace around list elements (RFC 9110 §5.6.3).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Trims optional whitespace from both ends.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |last| last + 1);
    &value[start..end]
}

/// The non-empty, trimmed elements of a comma-separated header value.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Is `bytes` a non-empty HTTP token (RFC 9110 §5.6.2)? The grammar of
/// method names, subprotocols and extension names and parameters.
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// A byte allowed in an HTTP token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    list_elements(value).any(|element| element.eq_ignore_ascii_case(token.as_bytes()))
}

/// The standard reason phrase for the statuses wshub sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends a complete response to `out`: status line, `extra_headers`,
/// `Content-Length`, a `text/plain` content type unless one is given,
/// `Connection: close` when `close` is set, and the body.
pub fn write_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    const DEFAULT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

    // Writing into a Vec cannot fail, so the io::Result carries nothing.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !extra_headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("Content-Type"))
    {
        let _ = write!(out, "Content-Type: {DEFAULT_CONTENT_TYPE}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE_HEAD: &[u8] =
        b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n";
    /// A masked text frame a client may send right behind its request.
    const TRAILING: &[u8] = b"\x81\x85\x01\x02\x03\x04hello";

    fn reset_counters() {
        PARSE_CALLS.with(|n| n.set(0));
        SCANNED_BYTES.with(|n| n.set(0));
    }

    fn parse_calls() -> usize {
        PARSE_CALLS.with(|n| n.get())
    }

    fn scanned_bytes() -> usize {
        SCANNED_BYTES.with(|n| n.get())
    }

    fn parse_whole(input: &[u8]) -> Result<RequestHead, HeadError> {
        match HeadReader::new().feed(input) {
            Ok(Some((head, used))) => {
                assert_eq!(used, input.len(), "whole head should be consumed");
                Ok(head)
            }
            Ok(None) => panic!("head incomplete: {:?}", String::from_utf8_lossy(input)),
            Err(e) => Err(e),
        }
    }

    /// A syntactically valid head of exactly `len` bytes, terminator included.
    fn head_of_len(len: usize) -> Vec<u8> {
        let prefix = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ";
        let suffix = b"\r\n\r\n";
        let mut head = prefix.to_vec();
        head.resize(len - suffix.len(), b'p');
        head.extend_from_slice(suffix);
        assert_eq!(head.len(), len);
        head
    }

    /// A head with `count` header fields, Host included.
    fn head_with_headers(count: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..count {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    #[test]
    fn parses_a_simple_head() {
        let head = parse_whole(SIMPLE_HEAD).unwrap();
        assert_eq!(
            head,
            RequestHead {
                method: "GET".into(),
                path: "/chat".into(),
                query: Some("room=1".into()),
                minor_version: 1,
                headers: vec![
                    ("Host".into(), b"example.com".to_vec()),
                    ("Upgrade".into(), b"websocket".to_vec()),
                ],
            }
        );
    }

    #[test]
    fn http_1_0_reports_minor_version_zero() {
        let head = parse_whole(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(head.minor_version, 0);
        assert!(head.headers.is_empty());
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_ordered() {
        let head = parse_whole(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\nconnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.header("CONNECTION"), Some(&b"keep-alive"[..]));
        assert_eq!(head.header_count("connection"), 2);
        assert_eq!(head.header_count("Origin"), 0);
        assert_eq!(head.header("origin"), None);
        let values: Vec<&[u8]> = head.header_values("Connection").collect();
        assert_eq!(values, [&b"keep-alive"[..], &b"Upgrade"[..]]);
    }

    #[test]
    fn every_split_point_gives_the_same_head_and_leaves_trailing_bytes() {
        let expected = parse_whole(SIMPLE_HEAD).unwrap();
        let mut input = SIMPLE_HEAD.to_vec();
        input.extend_from_slice(TRAILING);
        let head_len = SIMPLE_HEAD.len();

        for split in 0..=input.len() {
            reset_counters();
            let mut reader = HeadReader::new();
            let (first, second) = input.split_at(split);
            let (head, used, consumed_before) = match reader.feed(first).unwrap() {
                Some((head, used)) => (head, used, 0),
                None => {
                    assert!(split < head_len, "split {split}: head was complete");
                    let (head, used) = reader.feed(second).unwrap().expect("complete");
                    (head, used, split)
                }
            };
            assert_eq!(head, expected, "split {split}");
            assert_eq!(consumed_before + used, head_len, "split {split}");
            assert_eq!(parse_calls(), 1, "split {split}");
            assert_eq!(reader.buffered_bytes(), 0, "split {split}");
        }
    }

    #[test]
    fn every_pair_of_split_points_gives_the_same_head() {
        let expected = parse_whole(SIMPLE_HEAD).unwrap();
        let mut input = SIMPLE_HEAD.to_vec();
        input.extend_from_slice(TRAILING);

        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut reader = HeadReader::new();
                let mut offset = 0;
                let mut done = None;
                for chunk in [&input[..a], &input[a..b], &input[b..]] {
                    if let Some((head, used)) = reader.feed(chunk).unwrap() {
                        done = Some((head, offset + used));
                        break;
                    }
                    offset += chunk.len();
                }
                let (head, end) = done.expect("complete");
                assert_eq!(head, expected, "splits {a},{b}");
                assert_eq!(end, SIMPLE_HEAD.len(), "splits {a},{b}");
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_is_linear_and_parses_once() {
        const LEN: usize = 8000;
        let input = head_of_len(LEN);
        reset_counters();
        let mut reader = HeadReader::new();
        let (last, rest) = input.split_last().unwrap();
        for byte in rest {
            assert_eq!(reader.feed(std::slice::from_ref(byte)), Ok(None));
        }
        let (head, used) = reader.feed(&[*last]).unwrap().expect("complete");
        assert_eq!(used, 1);
        assert_eq!(head.path, "/");
        assert_eq!(parse_calls(), 1);
        // Each byte is searched at most once plus the overlap on every call.
        assert!(
            scanned_bytes() <= LEN * (SEARCH_OVERLAP + 1),
            "scanned {} bytes",
            scanned_bytes()
        );
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn head_of_exactly_the_limit_is_accepted() {
        let input = head_of_len(MAX_HEAD_LEN);
        assert!(parse_whole(&input).is_ok());

        let mut reader = HeadReader::new();
        for byte in &input[..input.len() - 1] {
            assert_eq!(reader.feed(std::slice::from_ref(byte)), Ok(None));
        }
        let (_, used) = reader.feed(&input[input.len() - 1..]).unwrap().unwrap();
        assert_eq!(used, 1);

        let mut reader = HeadReader::new();
        let mut with_trailing = input.clone();
        with_trailing.extend_from_slice(TRAILING);
        assert_eq!(reader.feed(&with_trailing[..100]), Ok(None));
        let (_, used) = reader.feed(&with_trailing[100..]).unwrap().unwrap();
        assert_eq!(used, MAX_HEAD_LEN - 100);
    }

    #[test]
    fn head_one_byte_over_the_limit_is_too_large() {
        let input = head_of_len(MAX_HEAD_LEN + 1);
        assert_eq!(HeadReader::new().feed(&input), Err(HeadError::TooLarge));

        let mut reader = HeadReader::new();
        assert_eq!(reader.feed(&input[..10]), Ok(None));
        assert_eq!(reader.feed(&input[10..]), Err(HeadError::TooLarge));
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn oversized_head_is_refused_before_its_terminator_arrives() {
        let unterminated = vec![b'a'; MAX_HEAD_LEN + 1];

        assert_eq!(
            HeadReader::new().feed(&unterminated),
            Err(HeadError::TooLarge)
        );

        let mut reader = HeadReader::new();
        for byte in &unterminated[..MAX_HEAD_LEN] {
            assert_eq!(reader.feed(std::slice::from_ref(byte)), Ok(None));
        }
        assert_eq!(reader.feed(b"a"), Err(HeadError::TooLarge));
        assert_eq!(reader.buffered_bytes(), 0);

        // A huge read is not copied whole just to be refused.
        let mut reader = HeadReader::new();
        assert_eq!(reader.feed(b"GET / HTTP/1.1\r\n"), Ok(None));
        let flood = vec![b'a'; 10 * MAX_HEAD_LEN];
        assert_eq!(reader.feed(&flood), Err(HeadError::TooLarge));
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn sixty_four_headers_pass_and_sixty_five_do_not() {
        let head = parse_whole(&head_with_headers(MAX_HEADERS)).unwrap();
        assert_eq!(head.headers.len(), MAX_HEADERS);

        let err = parse_whole(&head_with_headers(MAX_HEADERS + 1)).unwrap_err();
        assert_eq!(err, HeadError::TooManyHeaders);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn error_statuses() {
        assert_eq!(HeadError::TooLarge.status(), 431);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        assert_eq!(HeadError::Malformed("x").status(), 400);
    }

    #[test]
    fn malformed_heads_are_refused_with_400() {
        let cases: &[(&[u8], &str)] = &[
            (b"\r\n\r\n", "incomplete request head"),
            (b"GET /\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/2.0\r\n\r\n", "invalid HTTP version"),
            (b"GET / HTTX/1.1\r\n\r\n", "invalid HTTP version"),
            (b"G@T / HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET  / HTTP/1.1\r\n\r\n", "invalid request line"),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "invalid header name"),
            (
                b"GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n",
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                "invalid header name",
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                "invalid header value",
            ),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "invalid header value"),
            (
                b"GET / HTTP/1.1\nHost: a\n\nsmuggled\r\n\r\n",
                "request head must end with CRLF CRLF",
            ),
            (b"GET * HTTP/1.1\r\n\r\n", "invalid request target"),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
                "invalid request target",
            ),
            (b"GET chat HTTP/1.1\r\n\r\n", "invalid request target"),
            (b"GET ?q HTTP/1.1\r\n\r\n", "invalid request target"),
            (
                b"GET 1http://h/x HTTP/1.1\r\n\r\n",
                "invalid request target",
            ),
        ];
        for &(input, reason) in cases {
            let err = parse_whole(input).unwrap_err();
            assert_eq!(
                err,
                HeadError::Malformed(reason),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn request_targets_split_into_path_and_query() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/chat", "/chat", None),
            ("/chat?room=1&x", "/chat", Some("room=1&x")),
            ("/?", "/", Some("")),
            ("/a?b?c", "/a", Some("b?c")),
            ("http://example.com/chat?x=1", "/chat", Some("x=1")),
            ("HTTP://Example.com/a/b", "/a/b", None),
            ("ws://example.com", "/", None),
            ("wss://example.com:443?q", "/", Some("q")),
            ("https://user@example.com:8443/x/", "/x/", None),
        ];
        for &(target, path, query) in cases {
            let input = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let head = parse_whole(input.as_bytes()).unwrap();
            assert_eq!(head.path, path, "{target}");
            assert_eq!(head.query.as_deref(), query, "{target}");
        }
    }

    #[test]
    fn reader_can_be_reused_after_a_head() {
        let mut reader = HeadReader::new();
        assert_eq!(reader.feed(&SIMPLE_HEAD[..5]), Ok(None));
        assert!(reader.feed(&SIMPLE_HEAD[5..]).unwrap().is_some());
        let (head, used) = reader.feed(SIMPLE_HEAD).unwrap().unwrap();
        assert_eq!(used, SIMPLE_HEAD.len());
        assert_eq!(head.path, "/chat");
    }

    #[test]
    fn empty_input_needs_more() {
        let mut reader = HeadReader::new();
        assert_eq!(reader.feed(b""), Ok(None));
        assert_eq!(
            reader.feed(SIMPLE_HEAD).unwrap().unwrap().1,
            SIMPLE_HEAD.len()
        );
    }

    #[test]
    fn token_lists() {
        let cases: &[(&[u8], &str, bool)] = &[
            (b"Upgrade", "upgrade", true),
            (b"upgrade", "Upgrade", true),
            (b"keep-alive, Upgrade", "upgrade", true),
            (b"keep-alive,upgrade ", "upgrade", true),
            (b"\tUpgrade\t,keep-alive", "upgrade", true),
            (b",, Upgrade ,", "upgrade", true),
            (b"upgrade-foo", "upgrade", false),
            (b"keep-alive, upgrades", "upgrade", false),
            (b"up grade", "upgrade", false),
            (b"", "upgrade", false),
            (b" , ,", "upgrade", false),
        ];
        for &(value, token, expected) in cases {
            assert_eq!(
                has_token(value, token),
                expected,
                "{:?} has {token}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn reason_phrases() {
        let cases = [
            (101, "Switching Protocols"),
            (200, "OK"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
            (418, "Unknown"),
            (0, "Unknown"),
        ];
        for (status, phrase) in cases {
            assert_eq!(reason_phrase(status), phrase, "{status}");
        }
    }

    #[test]
    fn response_with_default_content_type_and_close() {
        let mut out = b"prefix|".to_vec();
        write_response(404, &[("X-A", "1")], b"not here\n", true, &mut out);
        assert_eq!(
            out,
            b"prefix|HTTP/1.1 404 Not Found\r\n\
              X-A: 1\r\n\
              Content-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 9\r\n\
              Connection: close\r\n\
              \r\n\
              not here\n"
        );
    }

    #[test]
    fn response_keeps_a_given_content_type_and_connection() {
        let mut out = Vec::new();
        write_response(
            200,
            &[("content-type", "application/json")],
            b"{}",
            false,
            &mut out,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\n\
              content-type: application/json\r\n\
              Content-Length: 2\r\n\
              \r\n\
              {}"
        );
    }

    #[test]
    fn response_with_empty_body() {
        let mut out = Vec::new();
        write_response(204, &[], b"", false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\n\
              Content-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 0\r\n\
              \r\n"
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes, split anywhere, either complete a head with the
            /// same result as one whole read, or fail the same way; nothing
            /// panics and `used` never exceeds the read it refers to.
            #[test]
            fn chunked_reads_agree_with_one_read(
                body in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'/'), any::<u8>()],
                    0..200,
                ),
                prefix in any::<bool>(),
                split in any::<prop::sample::Index>(),
            ) {
                let mut input = if prefix { b"GET /x HTTP/1.1\r\n".to_vec() } else { Vec::new() };
                input.extend_from_slice(&body);
                let whole = HeadReader::new().feed(&input);
                let at = split.index(input.len() + 1);
                let mut reader = HeadReader::new();
                let chunked = match reader.feed(&input[..at]) {
                    Ok(None) => reader
                        .feed(&input[at..])
                        .map(|done| done.map(|(head, used)| (head, at + used))),
                    other => other,
                };
                if let Ok(Some((_, used))) = &whole {
                    prop_assert!(*used <= input.len());
                }
                prop_assert_eq!(whole, chunked);
            }
        }
    }
}
