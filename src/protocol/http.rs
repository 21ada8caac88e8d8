//! HTTP/1.1 request heads read incrementally, and plain responses.
//!
//! Owns: finding the end of a head in linear time over any number of reads,
//! parsing it with `httparse`, header-list helpers, and response encoding.
//! Must never: know about WebSocket rules or routes, or hold a buffer once a
//! head is complete.

/// Largest request head accepted (request line + headers + blank line).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;

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
        todo!("{name}")
    }
    /// How many fields carry this case-insensitive name.
    pub fn header_count(&self, name: &str) -> usize {
        todo!("{name}")
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
        todo!()
    }
}

/// Accumulates a request head across reads. Searching for the blank line
/// resumes where the last search stopped, so a head dribbled one byte per
/// read costs linear time, and `httparse` runs once per head.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
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
        todo!("{input:?} {:?} {}", self.buf, self.scanned)
    }

    /// Bytes held for an incomplete head.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    todo!("{value:?} {token}")
}

/// The standard reason phrase for the statuses wshub sends.
pub fn reason_phrase(status: u16) -> &'static str {
    todo!("{status}")
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
    todo!("{status} {extra_headers:?} {body:?} {close} {out:?}")
}
