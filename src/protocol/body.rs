//! HTTP/1.1 request bodies, sans-IO: how a request frames its body
//! (RFC 9112 §6) and an incremental reader for a `Content-Length` or
//! `chunked` body (RFC 9112 §7.1).
//!
//! Owns: the framing rules against request smuggling (`Transfer-Encoding`
//! with `Content-Length`, codings other than a final `chunked`), decoding
//! chunks from reads split anywhere, the body size limit applied as chunk
//! sizes arrive, and the bounds on chunk-size lines and trailer sections.
//! Must never: buffer data past the limit, hold a buffer once a body is
//! complete, copy a chunk-size line or trailer section that arrives whole in
//! one read, or decide anything about what the body is for.

use super::http::{self, MAX_HEAD_LEN, MAX_HEADERS, RequestHead};

/// The only transfer coding understood (RFC 9112 §7).
const CHUNKED: &[u8] = b"chunked";
/// Longest chunk-size line accepted, chunk extensions and CRLF included.
/// Extensions are ignored, so a line this long is already generous.
pub(crate) const MAX_CHUNK_LINE_LEN: usize = 1024;
/// What ends a chunk's data, and every line of the chunked coding.
const CRLF: &[u8] = b"\r\n";
/// What ends a non-empty trailer section.
const BLANK_LINE: &[u8] = b"\r\n\r\n";

/// How a request says its body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(usize),
    /// The chunked transfer coding: the length is learnt as chunks arrive.
    Chunked,
}

/// Why a body (or its framing) is refused, with the status to answer.
/// Every one of them leaves the connection unusable for another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than the limit")]
    TooLarge,
    #[error("trailer section larger than {MAX_HEAD_LEN} bytes")]
    TrailersTooLarge,
    #[error("more than {MAX_HEADERS} trailer fields")]
    TooManyTrailers,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
}

impl BodyError {
    /// 413 over the limit, 431 for trailers over the head limits, 501 for a
    /// transfer coding we do not implement, 400 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::TrailersTooLarge | BodyError::TooManyTrailers => 431,
            BodyError::Malformed(_) => 400,
            BodyError::Unsupported(_) => 501,
        }
    }

    /// A short reason for the answer's body.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge => "body larger than the limit",
            BodyError::TrailersTooLarge => "trailer section larger than the request head limit",
            BodyError::TooManyTrailers => "more trailer fields than a request head may have",
            BodyError::Malformed(reason) | BodyError::Unsupported(reason) => reason,
        }
    }
}

/// The framing of a request's body (RFC 9112 §6.1–§6.3). Anything that two
/// parsers could read differently is refused rather than guessed at.
pub(crate) fn framing(head: &RequestHead) -> Result<Framing, BodyError> {
    if head.header_count("Transfer-Encoding") > 0 {
        return transfer_coding(head);
    }
    let mut length = None;
    for value in head.header_values("Content-Length") {
        let value = http::trim_ows(value);
        let parsed = std::str::from_utf8(value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok());
        match (parsed, length) {
            (None, _) => return Err(BodyError::Malformed("invalid Content-Length")),
            (Some(n), Some(previous)) if n != previous => {
                return Err(BodyError::Malformed("conflicting Content-Length values"));
            }
            (Some(n), _) => length = Some(n),
        }
    }
    Ok(length.map_or(Framing::None, Framing::Length))
}

/// The framing of a request that carries `Transfer-Encoding`.
fn transfer_coding(head: &RequestHead) -> Result<Framing, BodyError> {
    if head.header_count("Content-Length") > 0 {
        // Both framings at once is the classic request-smuggling shape.
        return Err(BodyError::Malformed(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    if head.minor_version == 0 {
        // RFC 9112 §6.1: the framing of such a message is faulty.
        return Err(BodyError::Malformed(
            "Transfer-Encoding is not allowed in an HTTP/1.0 request",
        ));
    }
    // Several fields form one list, in order (RFC 9110 §5.3).
    let mut last = None;
    let mut earlier = 0usize;
    let mut earlier_chunked = false;
    for coding in head
        .header_values("Transfer-Encoding")
        .flat_map(http::list_elements)
    {
        if let Some(previous) = last.replace(coding) {
            earlier += 1;
            earlier_chunked |= is_chunked(previous);
        }
    }
    match last {
        None => Err(BodyError::Malformed("empty Transfer-Encoding")),
        // RFC 9112 §6.3: without a final chunked the length is unknowable.
        Some(last) if !is_chunked(last) => Err(BodyError::Malformed(
            "Transfer-Encoding must end with chunked",
        )),
        Some(_) if earlier_chunked => Err(BodyError::Malformed("chunked applied more than once")),
        Some(_) if earlier > 0 => Err(BodyError::Unsupported(
            "only the chunked transfer coding is supported",
        )),
        Some(_) => Ok(Framing::Chunked),
    }
}

fn is_chunked(coding: &[u8]) -> bool {
    coding.eq_ignore_ascii_case(CHUNKED)
}

/// Reads one request body from successive reads and appends its data to the
/// caller's buffer; it stops exactly at the body's end, so whatever follows
/// (a pipelined request) is left to the caller.
#[derive(Debug)]
pub(crate) struct BodyReader {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Length { left: usize },
    Chunked(Chunked),
}

impl BodyReader {
    /// A body of exactly `length` bytes (the caller checked it against its limit).
    pub(crate) fn fixed(length: usize) -> BodyReader {
        BodyReader {
            kind: Kind::Length { left: length },
        }
    }

    /// A chunked body whose data may add up to at most `limit` bytes.
    pub(crate) fn chunked(limit: u64) -> BodyReader {
        BodyReader {
            kind: Kind::Chunked(Chunked {
                state: State::SizeLine,
                received: 0,
                limit,
                held: Vec::new(),
            }),
        }
    }

    /// Offers the next input; body data is appended to `data`. Returns how
    /// many bytes of `input` belong to the body: all of it until the body is
    /// complete, then up to its end. Errors are final.
    pub(crate) fn feed(&mut self, input: &[u8], data: &mut Vec<u8>) -> Result<usize, BodyError> {
        match &mut self.kind {
            Kind::Length { left } => {
                let take = input.len().min(*left);
                data.extend_from_slice(&input[..take]);
                *left -= take;
                Ok(take)
            }
            Kind::Chunked(chunked) => chunked.feed(input, data),
        }
    }

    /// The whole body, terminating chunk and trailers included, has arrived.
    pub(crate) fn is_complete(&self) -> bool {
        match &self.kind {
            Kind::Length { left } => *left == 0,
            Kind::Chunked(chunked) => chunked.state == State::Done,
        }
    }

    #[cfg(test)]
    /// Bytes held for a chunk-size line or trailer section split across reads.
    pub(crate) fn buffered_bytes(&self) -> usize {
        match &self.kind {
            Kind::Length { .. } => 0,
            Kind::Chunked(chunked) => chunked.held.capacity(),
        }
    }
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading `chunk-size [chunk-ext] CRLF`.
    SizeLine,
    /// This many data bytes of the current chunk are still to come.
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data; `cr` once its CR has arrived.
    DataEnd {
        cr: bool,
    },
    /// The trailer section after the last (zero-size) chunk.
    Trailers,
    Done,
    Failed(BodyError),
}

#[derive(Debug)]
struct Chunked {
    state: State,
    /// Data bytes so far.
    received: u64,
    limit: u64,
    /// A chunk-size line or trailer section split across reads; empty (no
    /// allocation) when each arrives whole.
    held: Vec<u8>,
}

impl Chunked {
    fn feed(&mut self, input: &[u8], data: &mut Vec<u8>) -> Result<usize, BodyError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let step = match self.state {
                State::Done => return Ok(used),
                State::Failed(error) => return Err(error),
                _ if rest.is_empty() => return Ok(used),
                State::SizeLine => self.size_line(rest),
                State::Data { left } => {
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    data.extend_from_slice(&rest[..take]);
                    // `take` is at most `left`, so neither can overflow.
                    self.received += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data { left }
                    };
                    Ok(take)
                }
                State::DataEnd { cr } => match (cr, rest[0]) {
                    (false, b'\r') => {
                        self.state = State::DataEnd { cr: true };
                        Ok(1)
                    }
                    (true, b'\n') => {
                        self.state = State::SizeLine;
                        Ok(1)
                    }
                    _ => Err(BodyError::Malformed("chunk data must end with CRLF")),
                },
                State::Trailers => self.trailers(rest),
            };
            match step {
                Ok(n) => used += n,
                Err(error) => {
                    self.state = State::Failed(error);
                    self.held = Vec::new();
                    return Err(error);
                }
            }
        }
    }

    /// Consumes (part of) a chunk-size line. The line is parsed once, when
    /// its LF has arrived, so a line dribbled byte by byte costs linear time.
    fn size_line(&mut self, rest: &[u8]) -> Result<usize, BodyError> {
        let lf = rest.iter().position(|&b| b == b'\n');
        let take = lf.map_or(rest.len(), |at| at + 1);
        if self.held.len() + take > MAX_CHUNK_LINE_LEN {
            return Err(BodyError::Malformed("chunk size line too long"));
        }
        if lf.is_none() {
            self.held.extend_from_slice(rest);
            return Ok(take);
        }
        let size = if self.held.is_empty() {
            parse_size_line(&rest[..take])?
        } else {
            self.held.extend_from_slice(&rest[..take]);
            let size = parse_size_line(&self.held)?;
            self.held.clear();
            size
        };
        if size == 0 {
            self.state = State::Trailers;
            return Ok(take);
        }
        // Refuse as soon as the announced chunk would overflow the limit,
        // before any of its data is buffered.
        if self
            .received
            .checked_add(size)
            .is_none_or(|n| n > self.limit)
        {
            return Err(BodyError::TooLarge);
        }
        self.state = State::Data { left: size };
        Ok(take)
    }

    /// Consumes (part of) the trailer section, which ends with an empty
    /// line. Trailers are checked against the request head limits and then
    /// discarded.
    fn trailers(&mut self, rest: &[u8]) -> Result<usize, BodyError> {
        if self.held.is_empty() && rest.starts_with(CRLF) {
            // No trailers: the usual case, with nothing to copy.
            self.finish();
            return Ok(CRLF.len());
        }
        for (at, &b) in rest.iter().enumerate() {
            if self.held.len() >= MAX_HEAD_LEN {
                return Err(BodyError::TrailersTooLarge);
            }
            self.held.push(b);
            if b != b'\n' {
                continue;
            }
            if !self.held.ends_with(CRLF) {
                return Err(BodyError::Malformed("trailer lines must end with CRLF"));
            }
            if self.held == CRLF || self.held.ends_with(BLANK_LINE) {
                check_trailers(&self.held)?;
                self.finish();
                return Ok(at + 1);
            }
        }
        Ok(rest.len())
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.held = Vec::new();
    }
}

/// The size a complete chunk-size line (ending in its first LF) announces;
/// extensions are ignored.
fn parse_size_line(line: &[u8]) -> Result<u64, BodyError> {
    const INVALID: BodyError = BodyError::Malformed("invalid chunk size");
    // httparse accepts a line without digits as size 0; the grammar needs one.
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(INVALID);
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((end, size))) if end == line.len() => Ok(size),
        // The line ends at its first LF, so anything short of complete
        // means that LF was not preceded by CR.
        Ok(_) => Err(BodyError::Malformed("chunk size line must end with CRLF")),
        Err(httparse::InvalidChunkSize) => Err(INVALID),
    }
}

/// Validates a complete trailer section with the request head's field limit.
fn check_trailers(section: &[u8]) -> Result<(), BodyError> {
    const MALFORMED: BodyError = BodyError::Malformed("malformed trailer section");
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((end, _))) if end == section.len() => Ok(()),
        Ok(_) => Err(MALFORMED),
        Err(httparse::Error::TooManyHeaders) => Err(BodyError::TooManyTrailers),
        Err(_) => Err(MALFORMED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::HeadReader;

    const LIMIT: u64 = 1000;
    /// A chunked body with an extension, an upper-case size, a trailer, and
    /// a pipelined request behind it.
    const SAMPLE: &[u8] = b"5;name=value\r\nhello\r\nA\r\n, chunked!\r\n1 ; x\r\n.\r\n\
                            0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n";
    const SAMPLE_DATA: &[u8] = b"hello, chunked!.";
    const NEXT: &[u8] = b"GET /healthz HTTP/1.1\r\n\r\n";

    fn head(text: &str) -> RequestHead {
        let raw = format!("{text}\r\n\r\n");
        match HeadReader::new().feed(raw.as_bytes()) {
            Ok(Some((head, _))) => head,
            other => panic!("bad test head {text:?}: {other:?}"),
        }
    }

    /// Feeds `chunks` in order until the body completes or fails: the data,
    /// and how many bytes of the concatenated input the body used.
    fn decode(chunks: &[&[u8]], limit: u64) -> Result<(Vec<u8>, usize), BodyError> {
        let mut reader = BodyReader::chunked(limit);
        let mut data = Vec::new();
        let mut offset = 0;
        for chunk in chunks {
            let used = reader.feed(chunk, &mut data)?;
            assert!(used <= chunk.len());
            offset += used;
            if reader.is_complete() {
                assert_eq!(reader.buffered_bytes(), 0);
                return Ok((data, offset));
            }
            assert_eq!(used, chunk.len(), "stopped early without completing");
        }
        panic!("body incomplete after {offset} bytes");
    }

    fn with_next(body: &[u8]) -> Vec<u8> {
        [body, NEXT].concat()
    }

    #[test]
    fn framing_of_request_heads() {
        let cases: &[(&str, Result<Framing, u16>)] = &[
            ("", Ok(Framing::None)),
            ("\r\nContent-Length: 0", Ok(Framing::Length(0))),
            ("\r\nContent-Length:  12 ", Ok(Framing::Length(12))),
            (
                "\r\nContent-Length: 3\r\nContent-Length: 3",
                Ok(Framing::Length(3)),
            ),
            ("\r\nContent-Length: 3\r\nContent-Length: 4", Err(400)),
            ("\r\nContent-Length: +3", Err(400)),
            ("\r\nContent-Length: 3, 3", Err(400)),
            ("\r\nTransfer-Encoding: chunked", Ok(Framing::Chunked)),
            ("\r\nTransfer-Encoding: Chunked ", Ok(Framing::Chunked)),
            ("\r\nTransfer-Encoding: ,chunked,", Ok(Framing::Chunked)),
            (
                "\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
                Err(400),
            ),
            (
                "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
                Err(400),
            ),
            ("\r\nTransfer-Encoding: gzip", Err(400)),
            ("\r\nTransfer-Encoding: chunked, gzip", Err(400)),
            ("\r\nTransfer-Encoding: chunked;q=1", Err(400)),
            ("\r\nTransfer-Encoding: identity", Err(400)),
            ("\r\nTransfer-Encoding: ", Err(400)),
            ("\r\nTransfer-Encoding: chunked, chunked", Err(400)),
            (
                "\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                Err(400),
            ),
            ("\r\nTransfer-Encoding: gzip, chunked", Err(501)),
            (
                "\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
                Err(501),
            ),
            (
                "\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
                Err(400),
            ),
        ];
        for (fields, expected) in cases {
            let h = head(&format!("POST /p/a HTTP/1.1\r\nHost: x{fields}"));
            assert_eq!(framing(&h).map_err(|e| e.status()), *expected, "{fields:?}");
        }
        let old = head("POST /p/a HTTP/1.0\r\nTransfer-Encoding: chunked");
        assert_eq!(framing(&old).map_err(|e| e.status()), Err(400));
    }

    #[test]
    fn refusals_name_their_reason() {
        let h = head("POST /p HTTP/1.1\r\nTransfer-Encoding: gzip, chunked");
        let error = framing(&h).unwrap_err();
        assert!(error.reason().contains("chunked"), "{error}");
        let h = head("POST /p HTTP/1.1\r\nTransfer-Encoding: gzip");
        assert!(
            framing(&h)
                .unwrap_err()
                .reason()
                .contains("end with chunked")
        );
    }

    #[test]
    fn sample_decodes_whole_and_stops_at_its_end() {
        let input = with_next(SAMPLE);
        let (data, used) = decode(&[&input], LIMIT).unwrap();
        assert_eq!(data, SAMPLE_DATA);
        assert_eq!(used, SAMPLE.len());
    }

    #[test]
    fn every_split_point_gives_the_same_body() {
        let input = with_next(SAMPLE);
        for split in 0..=input.len() {
            let (first, second) = input.split_at(split);
            let (data, used) = decode(&[first, second], LIMIT).unwrap();
            assert_eq!(data, SAMPLE_DATA, "split {split}");
            assert_eq!(used, SAMPLE.len(), "split {split}");
        }
    }

    #[test]
    fn every_pair_of_split_points_gives_the_same_body() {
        let input = with_next(SAMPLE);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let chunks = [&input[..a], &input[a..b], &input[b..]];
                let (data, used) = decode(&chunks, LIMIT).unwrap();
                assert_eq!((data.as_slice(), used), (SAMPLE_DATA, SAMPLE.len()));
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = with_next(SAMPLE);
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let (data, used) = decode(&chunks, LIMIT).unwrap();
        assert_eq!(data, SAMPLE_DATA);
        assert_eq!(used, SAMPLE.len());
    }

    #[test]
    fn simplest_bodies() {
        assert_eq!(decode(&[b"0\r\n\r\n"], LIMIT).unwrap(), (vec![], 5));
        assert_eq!(decode(&[b"0\r\n\r\nrest"], 0).unwrap(), (vec![], 5));
        assert_eq!(
            decode(&[b"3\r\nabc\r\n0;last\r\n\r\n"], 3).unwrap(),
            (b"abc".to_vec(), 18)
        );
        assert_eq!(decode(&[b"03\r\nabc\r\n000\r\n\r\n"], 3).unwrap().0, b"abc");
    }

    #[test]
    fn limit_applies_as_chunk_sizes_arrive() {
        // Exactly the limit passes, in one chunk or several.
        let exact = format!("{:x}\r\n{}\r\n0\r\n\r\n", LIMIT, "a".repeat(1000));
        assert_eq!(decode(&[exact.as_bytes()], LIMIT).unwrap().0.len(), 1000);
        let halves = format!("1f4\r\n{0}\r\n1f4\r\n{0}\r\n0\r\n\r\n", "b".repeat(500));
        assert_eq!(decode(&[halves.as_bytes()], LIMIT).unwrap().0.len(), 1000);

        // One byte over is refused on the size line, before its data.
        let mut reader = BodyReader::chunked(LIMIT);
        let mut data = Vec::new();
        let first = format!("1f4\r\n{}\r\n", "c".repeat(500));
        assert_eq!(reader.feed(first.as_bytes(), &mut data), Ok(first.len()));
        assert_eq!(reader.feed(b"1f5\r\n", &mut data), Err(BodyError::TooLarge));
        assert_eq!(data.len(), 500, "nothing of the oversized chunk was kept");
        // Errors are final.
        assert_eq!(
            reader.feed(b"0\r\n\r\n", &mut data),
            Err(BodyError::TooLarge)
        );
        assert!(!reader.is_complete());

        // The largest size httparse reads is no problem without a limit.
        let huge = b"fffffffffffffff\r\n";
        let mut reader = BodyReader::chunked(u64::MAX);
        assert_eq!(reader.feed(b"1\r\nx\r\n", &mut data), Ok(6));
        assert_eq!(reader.feed(huge, &mut data), Ok(huge.len()));
        assert_eq!(
            decode(&[huge], u64::MAX >> 5).unwrap_err(),
            BodyError::TooLarge
        );
        assert_eq!(
            BodyReader::chunked(0).feed(b"1\r\n", &mut data),
            Err(BodyError::TooLarge)
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_400() {
        let cases: &[(&[u8], &str)] = &[
            (b"\r\n", "invalid chunk size"),
            (b";ext\r\n", "invalid chunk size"),
            (b" 5\r\n", "invalid chunk size"),
            (b"-5\r\n", "invalid chunk size"),
            (b"0x5\r\n", "invalid chunk size"),
            (b"5 5\r\n", "invalid chunk size"),
            (b"g\r\n", "invalid chunk size"),
            (b"10000000000000000\r\n", "invalid chunk size"),
            (b"5\n", "invalid chunk size"),
            (b"5\rx\n", "invalid chunk size"),
            (b"5;a\n", "chunk size line must end with CRLF"),
            (b"3\r\nabcX", "chunk data must end with CRLF"),
            (b"3\r\nabc\rX", "chunk data must end with CRLF"),
            (b"3\r\nabc\n", "chunk data must end with CRLF"),
            (b"3\r\nabcd\r\n", "chunk data must end with CRLF"),
            (b"0\r\n\n", "trailer lines must end with CRLF"),
            (b"0\r\nX: 1\n\r\n", "trailer lines must end with CRLF"),
            (b"0\r\nX: 1\r\n\n", "trailer lines must end with CRLF"),
            (b"0\r\nX 1\r\n\r\n", "malformed trailer section"),
            (b"0\r\nX: a\rb\r\n\r\n", "malformed trailer section"),
            (b"0\r\n folded\r\n\r\n", "malformed trailer section"),
        ];
        for &(input, reason) in cases {
            let whole = decode(&[input], LIMIT).unwrap_err();
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            let split = decode(&bytewise, LIMIT).unwrap_err();
            let shown = String::from_utf8_lossy(input);
            assert_eq!(whole, BodyError::Malformed(reason), "{shown:?}");
            assert_eq!(split, whole, "{shown:?} byte by byte");
            assert_eq!(whole.status(), 400);
        }
    }

    #[test]
    fn chunk_size_lines_are_bounded() {
        let mut line = b"5;".to_vec();
        line.resize(MAX_CHUNK_LINE_LEN - 2, b'x');
        line.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&[&line], LIMIT).unwrap().0, b"hello");
        let bytewise: Vec<&[u8]> = line.chunks(1).collect();
        assert_eq!(decode(&bytewise, LIMIT).unwrap().0, b"hello");

        let mut long = b"5;".to_vec();
        long.resize(MAX_CHUNK_LINE_LEN - 1, b'x');
        long.extend_from_slice(b"\r\n");
        let error = BodyError::Malformed("chunk size line too long");
        assert_eq!(decode(&[&long], LIMIT).unwrap_err(), error);
        let mut reader = BodyReader::chunked(LIMIT);
        let mut data = Vec::new();
        for byte in &long[..MAX_CHUNK_LINE_LEN] {
            assert_eq!(reader.feed(std::slice::from_ref(byte), &mut data), Ok(1));
        }
        assert!(reader.buffered_bytes() <= 2 * MAX_CHUNK_LINE_LEN);
        assert_eq!(reader.feed(b"\n", &mut data), Err(error));
        assert_eq!(reader.buffered_bytes(), 0);
        // A flood without a line end is not copied to be refused.
        let flood = vec![b'1'; 100 * MAX_CHUNK_LINE_LEN];
        assert_eq!(decode(&[&flood], LIMIT).unwrap_err(), error);
    }

    /// A trailer section with `fields` fields of `value_len`-byte values.
    fn trailers(fields: usize, value_len: usize) -> Vec<u8> {
        let mut section = b"0\r\n".to_vec();
        for i in 0..fields {
            section
                .extend_from_slice(format!("X-{i:03}: {}\r\n", "v".repeat(value_len)).as_bytes());
        }
        section.extend_from_slice(CRLF);
        section
    }

    #[test]
    fn trailers_are_bounded_like_request_heads() {
        let ok = trailers(MAX_HEADERS, 10);
        assert_eq!(decode(&[&ok], LIMIT).unwrap(), (vec![], ok.len()));
        let bytewise: Vec<&[u8]> = ok.chunks(1).collect();
        assert_eq!(decode(&bytewise, LIMIT).unwrap(), (vec![], ok.len()));

        let too_many = trailers(MAX_HEADERS + 1, 10);
        let error = decode(&[&too_many], LIMIT).unwrap_err();
        assert_eq!(error, BodyError::TooManyTrailers);
        assert_eq!(error.status(), 431);

        // "0\r\n" plus one field line plus the final CRLF: a section of
        // exactly the limit passes, one byte more does not.
        let field_line = |len: usize| {
            let mut t = b"0\r\nX: ".to_vec();
            t.resize(len + 3 - CRLF.len() * 2, b'v');
            t.extend_from_slice(b"\r\n\r\n");
            t
        };
        let exact = field_line(MAX_HEAD_LEN);
        assert_eq!(decode(&[&exact], LIMIT).unwrap().1, exact.len());
        let over = field_line(MAX_HEAD_LEN + 1);
        let error = decode(&[&over], LIMIT).unwrap_err();
        assert_eq!(error, BodyError::TrailersTooLarge);
        assert_eq!(error.status(), 431);
        // Refused before the end arrives, holding no more than the limit.
        let mut reader = BodyReader::chunked(LIMIT);
        let mut data = Vec::new();
        let flood = vec![b'a'; 4 * MAX_HEAD_LEN];
        assert_eq!(reader.feed(b"0\r\nX: ", &mut data), Ok(6));
        assert_eq!(
            reader.feed(&flood, &mut data),
            Err(BodyError::TrailersTooLarge)
        );
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn nothing_is_held_when_lines_arrive_whole() {
        let mut reader = BodyReader::chunked(LIMIT);
        let mut data = Vec::new();
        for piece in [
            &b"5;x=1\r\n"[..],
            b"hel",
            b"lo",
            b"\r\n",
            b"2\r\nab\r\n",
            b"0\r\n",
        ] {
            assert_eq!(reader.feed(piece, &mut data), Ok(piece.len()));
            assert_eq!(reader.buffered_bytes(), 0);
        }
        assert_eq!(reader.feed(b"\r\nnext", &mut data), Ok(2));
        assert!(reader.is_complete());
        assert_eq!(data, b"helloab");
    }

    #[test]
    fn fixed_length_bodies_stop_at_their_length() {
        let mut reader = BodyReader::fixed(5);
        let mut data = Vec::new();
        assert!(!reader.is_complete());
        assert_eq!(reader.feed(b"he", &mut data), Ok(2));
        assert_eq!(reader.feed(b"lloGET", &mut data), Ok(3));
        assert!(reader.is_complete());
        assert_eq!(reader.feed(b"more", &mut data), Ok(0));
        assert_eq!(data, b"hello");
        assert!(BodyReader::fixed(0).is_complete());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Encodes `data` in chunks of the given sizes (cycled), with
        /// extensions and trailers.
        fn encode(data: &[u8], sizes: &[usize], ext: bool, trailer: bool) -> Vec<u8> {
            let mut out = Vec::new();
            let mut rest = data;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].clamp(1, rest.len());
                let (chunk, tail) = rest.split_at(n);
                let ext = if ext { ";a=b" } else { "" };
                out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(CRLF);
                rest = tail;
                i += 1;
            }
            out.extend_from_slice(b"0\r\n");
            if trailer {
                out.extend_from_slice(b"X-Trailer: yes\r\n");
            }
            out.extend_from_slice(CRLF);
            out
        }

        proptest! {
            /// Any body, chunked any way and read in any split, decodes to
            /// the same data and ends at the same offset.
            #[test]
            fn encoded_bodies_round_trip(
                data in proptest::collection::vec(any::<u8>(), 0..300),
                sizes in proptest::collection::vec(1usize..64, 1..8),
                ext in any::<bool>(),
                trailer in any::<bool>(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let body = encode(&data, &sizes, ext, trailer);
                let input = with_next(&body);
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                points.sort_unstable();
                let mut chunks = Vec::new();
                let mut start = 0;
                for p in points.into_iter().chain([input.len()]) {
                    chunks.push(&input[start..p]);
                    start = p;
                }
                let (decoded, used) = decode(&chunks, data.len() as u64).unwrap();
                prop_assert_eq!(&decoded, &data);
                prop_assert_eq!(used, body.len());
                let smaller = data.len().checked_sub(1).map(|l| l as u64);
                if let Some(limit) = smaller {
                    prop_assert_eq!(decode(&chunks, limit).unwrap_err(), BodyError::TooLarge);
                }
            }

            /// Arbitrary bytes, split anywhere, never panic; whole and split
            /// reads agree, and a completed body never claims bytes it was
            /// not given.
            #[test]
            fn arbitrary_input_agrees_with_one_read(
                input in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'1'), Just(b';'), any::<u8>()],
                    0..120,
                ),
                split in any::<prop::sample::Index>(),
            ) {
                let run = |chunks: &[&[u8]]| {
                    let mut reader = BodyReader::chunked(LIMIT);
                    let mut data = Vec::new();
                    let mut offset = 0;
                    for chunk in chunks {
                        match reader.feed(chunk, &mut data) {
                            Ok(used) => {
                                assert!(used <= chunk.len());
                                offset += used;
                                if reader.is_complete() {
                                    return Ok(Some((data, offset)));
                                }
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(None)
                };
                let at = split.index(input.len() + 1);
                let whole = run(&[&input]);
                let split = run(&[&input[..at], &input[at..]]);
                prop_assert_eq!(whole, split);
            }
        }
    }
}
