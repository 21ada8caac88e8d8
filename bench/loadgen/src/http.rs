//! The HTTP publisher: `POST /publish/<channel>` over one keep-alive
//! HTTP/1.1 connection, with requests pipelined.
//!
//! Pipelining on a single connection (rather than spreading requests over
//! several) keeps publishes in one ordered stream, so subscribers can check
//! that messages arrive in publish order. Every body has the same length,
//! so the request head is formatted once and copied per request.

use std::io::{self, Read, Write};
use std::net::TcpStream as StdStream;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::error::{Context, Fail, Result};
use crate::target::Target;

/// The content type of a binary message: the server sends it on as binary.
pub const BINARY: &str = "application/octet-stream";
/// The content type of a text message (its body must be UTF-8): the server
/// sends it on as text.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Room for responses read at once; a response must fit entirely.
const IN_BUF: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpPublisher {
    stream: TcpStream,
    path: String,
    head: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Box<[u8]>,
    filled: usize,
    /// Requests sent whose response has not arrived.
    pub in_flight: usize,
}

impl HttpPublisher {
    /// Connects to `target` and prepares requests with `body_len`-byte
    /// bodies of `content_type` ([`BINARY`] or [`TEXT`]). `window` sizes
    /// the output buffer.
    pub fn connect(
        target: &Target,
        body_len: usize,
        content_type: &str,
        window: usize,
        registry: &Registry,
        token: Token,
    ) -> Result<HttpPublisher> {
        let std = StdStream::connect_timeout(&target.addr, CONNECT_TIMEOUT)
            .context(|| format!("connecting the publisher to {}", target.addr))?;
        std.set_nodelay(true).context(|| "TCP_NODELAY".to_owned())?;
        std.set_nonblocking(true)
            .context(|| "set_nonblocking".to_owned())?;
        let mut stream = TcpStream::from_std(std);
        registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .context(|| "register publisher".to_owned())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {body_len}\r\n\r\n",
            target.path, target.host
        )
        .into_bytes();
        let out = Vec::with_capacity(window * (head.len() + body_len));
        Ok(HttpPublisher {
            stream,
            path: target.path.clone(),
            head,
            out,
            out_pos: 0,
            inbuf: vec![0; IN_BUF].into_boxed_slice(),
            filled: 0,
            in_flight: 0,
        })
    }

    /// Queues one request whose body is the concatenation of `parts`.
    pub fn post(&mut self, parts: &[&[u8]]) {
        self.out.extend_from_slice(&self.head);
        for part in parts {
            self.out.extend_from_slice(part);
        }
        self.in_flight += 1;
    }

    pub fn flush(&mut self) -> Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(Fail::run("publish connection accepts no more data")),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.out.drain(..self.out_pos);
                    self.out_pos = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::run(format!("publish write failed: {e}"))),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// Reads responses; calls `on_response(recipients)` for each `200`
    /// (recipients as reported in the JSON body, if present). Any other
    /// status is an error that quotes the server's answer.
    pub fn read(&mut self, mut on_response: impl FnMut(Option<u64>)) -> Result<()> {
        loop {
            if self.filled == self.inbuf.len() {
                return Err(Fail::run("publish response larger than 64 KiB"));
            }
            let n = match self.stream.read(&mut self.inbuf[self.filled..]) {
                Ok(0) => {
                    return Err(Fail::run(format!(
                        "server closed the publish connection ({} responses outstanding; \
                         keep-alive must stay open)",
                        self.in_flight
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::run(format!("publish read failed: {e}"))),
            };
            self.filled += n;
            let mut pos = 0;
            while let Some((len, recipients)) =
                parse_response(&self.inbuf[pos..self.filled], &self.path)?
            {
                pos += len;
                self.in_flight = self.in_flight.saturating_sub(1);
                on_response(recipients);
            }
            self.inbuf.copy_within(pos..self.filled, 0);
            self.filled -= pos;
        }
    }
}

/// Most header lines read from a response head.
const MAX_HEADERS: usize = 32;

/// A complete response head, parsed with httparse: loadgen's one response
/// parser, for publish answers and WebSocket handshakes alike. It borrows
/// the buffer and allocates nothing.
pub struct ResponseHead<'b> {
    pub code: u16,
    pub reason: &'b str,
    /// Bytes the head takes at the start of the buffer.
    pub len: usize,
    headers: [httparse::Header<'b>; MAX_HEADERS],
    count: usize,
}

impl<'b> ResponseHead<'b> {
    /// Parses the head at the start of `buf`; `None` until it is complete.
    pub fn parse(buf: &'b [u8]) -> std::result::Result<Option<ResponseHead<'b>>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return Ok(None),
        };
        let code = response.code.unwrap_or(0);
        let reason = response.reason.unwrap_or("");
        let count = response.headers.len();
        Ok(Some(ResponseHead {
            code,
            reason,
            len,
            headers,
            count,
        }))
    }

    /// The header lines, in order.
    pub fn headers(&self) -> &[httparse::Header<'b>] {
        &self.headers[..self.count]
    }

    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Parses one complete response at the start of `buf`: its total length and
/// the `recipients` figure. `None` if it is not all there yet.
fn parse_response(buf: &[u8], path: &str) -> Result<Option<(usize, Option<u64>)>> {
    let head = match ResponseHead::parse(buf) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Fail::run(format!(
                "POST {path}: malformed HTTP response: {e}"
            )));
        }
    };
    if head.header("transfer-encoding").is_some() {
        return Err(Fail::run(format!(
            "POST {path}: chunked responses are not supported; send Content-Length"
        )));
    }
    let body_len = head
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            Fail::run(format!(
                "POST {path}: response has no Content-Length (needed for keep-alive)"
            ))
        })?;
    let end = head.len + body_len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[head.len..end];
    if head.code != 200 {
        return Err(Fail::run(format!(
            "POST {path}: server answered {} {}: {}",
            head.code,
            head.reason,
            String::from_utf8_lossy(body).trim()
        )));
    }
    Ok(Some((end, recipients(body))))
}

/// The number after `"recipients":` in a JSON body.
fn recipients(body: &[u8]) -> Option<u64> {
    let key = b"\"recipients\"";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = std::str::from_utf8(&body[at..]).ok()?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_responses() {
        let body = r#"{"channel":"bench","recipients":17}"#;
        let one = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let two = format!("{one}{one}");
        let (len, r) = parse_response(two.as_bytes(), "/p").unwrap().unwrap();
        assert_eq!(len, one.len());
        assert_eq!(r, Some(17));
        assert_eq!(
            parse_response(&one.as_bytes()[..one.len() - 1], "/p").unwrap(),
            None
        );
    }

    #[test]
    fn errors_quote_the_server() {
        let r = "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nno channel";
        let err = parse_response(r.as_bytes(), "/publish/x").unwrap_err();
        assert!(err.message.contains("404"), "{}", err.message);
        assert!(err.message.contains("no channel"), "{}", err.message);
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_response(chunked.as_bytes(), "/p").is_err());
    }

    #[test]
    fn finds_recipients() {
        assert_eq!(recipients(br#"{"recipients": 5 }"#), Some(5));
        assert_eq!(
            recipients(br#"{"channel":"a","recipients":19000}"#),
            Some(19000)
        );
        assert_eq!(recipients(br#"{"channel":"a"}"#), None);
    }
}
