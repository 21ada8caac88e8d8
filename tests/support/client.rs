//! The raw client side of the wire: the frame codec (any frame, valid or
//! not, masked or not), opening handshake requests and their check, and a
//! blocking client over `std::net::TcpStream` with readers for HTTP
//! responses and server frames.
//!
//! Every socket gets read and write timeouts, so no test can hang: a missing
//! answer turns into a panic naming what was awaited. Nothing here knows how
//! the server under test was started.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::Socket;

use super::data::XorShift;

/// Default bound for any single blocking socket operation in a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The sample key and accept value from RFC 6455 §1.3.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The route the default config serves.
pub const ECHO_PATH: &str = "/echo";

/// Frame opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close codes the tests expect from the server.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// A fresh, non-zero masking key per frame, so that tests never depend on
/// one particular key.
pub fn next_mask() -> [u8; 4] {
    // Each call scrambles the next step of a shared counter with the one
    // generator: keys vary from frame to frame, whatever the thread.
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let seed = COUNTER.fetch_add(0x6D2B_79F5, Ordering::Relaxed);
    let [a, b, c, d, ..] = XorShift::new(seed).next_u64().to_be_bytes();
    if [a, b, c, d] == [0; 4] {
        [1, 2, 3, 4]
    } else {
        [a, b, c, d]
    }
}

/// XORs `data` with `mask`, as if `data` started at `offset` in the payload.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// A frame header with minimally encoded length. `rsv` holds RSV1..3 in its
/// low three bits (RSV1 = 0b100); `opcode` may be any 4-bit value.
pub fn frame_header(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
    assert!(rsv < 8 && opcode < 16);
    let mut out = Vec::with_capacity(14);
    out.push(((fin as u8) << 7) | (rsv << 4) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    out
}

/// A complete frame; the payload is masked when `mask` is given.
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = frame_header(fin, rsv, opcode, mask, payload.len() as u64);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask, 0);
    }
    out
}

/// A valid client frame: masked, no RSV bits.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, 0, opcode, Some(next_mask()), payload)
}

/// A close frame payload: the code then the reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A masked close frame from the client.
pub fn client_close(code: u16, reason: &[u8]) -> Vec<u8> {
    client_frame(true, op::CLOSE, &close_payload(code, reason))
}

/// An opening handshake request for `path` with `key`, `Host` set to `host`.
pub fn upgrade_request(path: &str, host: &str, key: &str) -> String {
    upgrade_request_with(path, host, key, "")
}

/// Like [`upgrade_request`], with further raw header lines (each ending in
/// CRLF) before the blank line.
pub fn upgrade_request_with(path: &str, host: &str, key: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         {extra_headers}\r\n"
    )
}

/// A random-looking, valid `Sec-WebSocket-Key` (base64 of 16 bytes).
pub fn fresh_key() -> String {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    for chunk in nonce.chunks_mut(4) {
        chunk.copy_from_slice(&next_mask());
    }
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// `Sec-WebSocket-Accept` for `key`, computed independently of the server
/// (SHA-1 from `sha1_smol`, base64 from `base64`).
fn expected_accept(key: &str) -> String {
    use base64::Engine as _;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is UTF-8")
    }
}

/// One frame as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if its payload carries one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, op::CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason of a close frame.
    pub fn close_reason(&self) -> &str {
        assert_eq!(self.opcode, op::CLOSE, "not a close frame: {self:?}");
        std::str::from_utf8(self.payload.get(2..).unwrap_or_default())
            .expect("close reason is UTF-8")
    }
}

/// A blocking client speaking raw bytes, with its own receive buffer so that
/// bytes read past an HTTP head or a frame are kept for the next read.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already consumed.
    pos: usize,
}

impl RawClient {
    /// A TCP connection with read/write timeouts and `TCP_NODELAY`.
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::from_stream(connect_tcp(addr))
    }

    /// A client over a stream connected elsewhere (with its timeouts set).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Connects and completes the opening handshake on `path`, checking the
    /// `101` response and its accept value.
    pub fn open(addr: SocketAddr, path: &str) -> RawClient {
        let mut client = RawClient::connect(addr);
        client.handshake(path);
        client
    }

    /// Completes the opening handshake on `path` with a fresh key.
    pub fn handshake(&mut self, path: &str) {
        let key = fresh_key();
        let host = self.stream.peer_addr().expect("a connected stream");
        self.send(upgrade_request(path, &host.to_string(), &key).as_bytes());
        let response = self.read_http_response();
        assert_switching_protocols(&response, &key);
    }

    /// Overrides the read timeout (for tests that wait on server timers).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
        self.stream.flush().unwrap();
    }

    /// Writes `bytes` with one `write` call per byte.
    pub fn send_bytewise(&mut self, bytes: &[u8], pause: Duration) {
        for byte in bytes {
            self.stream
                .write_all(std::slice::from_ref(byte))
                .expect("write to server");
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    }

    /// Sends one valid (masked) frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send(&client_frame(fin, opcode, payload));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, op::TEXT, text.as_bytes());
    }

    pub fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(true, op::BINARY, data);
    }

    pub fn send_close(&mut self, code: u16, reason: &[u8]) {
        self.send(&client_close(code, reason));
    }

    /// Half-closes our side: the server sees EOF.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        out
    }

    /// Reads more bytes into the buffer; panics on EOF, errors or timeout,
    /// naming `what` was awaited.
    fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed while waiting for {what} ({} bytes buffered: {:?})",
                    self.buffered().len(),
                    String::from_utf8_lossy(&self.buffered()[..self.buffered().len().min(200)])
                ),
                Ok(n) => {
                    // Drop consumed bytes so the buffer never outgrows what
                    // is still unread.
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.extend_from_slice(&chunk[..n]);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("timed out waiting for {what}")
                }
                Err(e) => panic!("read failed while waiting for {what}: {e}"),
            }
        }
    }

    /// Makes sure at least `n` unconsumed bytes are buffered.
    fn need(&mut self, n: usize, what: &str) {
        while self.buffered().len() < n {
            self.fill(what);
        }
    }

    /// Reads one HTTP response: head up to the blank line, then a body of
    /// `Content-Length` bytes (none if the header is absent).
    pub fn read_http_response(&mut self) -> HttpResponse {
        let head_end = loop {
            if let Some(at) = find(self.buffered(), b"\r\n\r\n") {
                break at + 4;
            }
            assert!(self.buffered().len() < 64 * 1024, "response head too long");
            self.fill("an HTTP response head");
        };
        let head = String::from_utf8(self.consume(head_end)).expect("response head is UTF-8");
        let mut lines = head.trim_end_matches("\r\n").split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "bad status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.to_owned(), value.trim().to_owned())
            })
            .collect();
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = response.header("Content-Length") {
            let len: usize = len.parse().expect("numeric Content-Length");
            self.need(len, "an HTTP response body");
            response.body = self.consume(len);
        }
        response
    }

    /// Reads one frame from the server.
    pub fn read_frame(&mut self) -> Frame {
        self.need(2, "a frame header");
        let b0 = self.buffered()[0];
        let b1 = self.buffered()[1];
        let masked = b1 & 0x80 != 0;
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                self.need(4, "a frame header");
                let b = self.buffered();
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                self.need(10, "a frame header");
                let b = self.buffered();
                (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10)
            }
            n => (u64::from(n), 2),
        };
        let mut mask = None;
        if masked {
            self.need(header_len + 4, "a frame header");
            let b = self.buffered();
            mask = Some([
                b[header_len],
                b[header_len + 1],
                b[header_len + 2],
                b[header_len + 3],
            ]);
            header_len += 4;
        }
        let len = usize::try_from(len).expect("frame length fits usize");
        assert!(len <= 64 * 1024 * 1024, "implausible frame length {len}");
        self.need(header_len + len, "a frame payload");
        self.consume(header_len);
        let mut payload = self.consume(len);
        if let Some(mask) = mask {
            apply_mask(&mut payload, mask, 0);
        }
        Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            masked,
            payload,
        }
    }

    /// Reads one frame, asserting that it is a well-formed server frame:
    /// unmasked, final, no RSV bits.
    pub fn read_server_frame(&mut self) -> Frame {
        let frame = self.read_frame();
        assert!(!frame.masked, "server frames must not be masked: {frame:?}");
        assert_eq!(frame.rsv, 0, "server set RSV bits: {frame:?}");
        assert!(frame.fin, "server fragmented a frame: {frame:?}");
        frame
    }

    /// Reads one data message sent as a single frame and checks its opcode.
    pub fn expect_message(&mut self, opcode: u8) -> Vec<u8> {
        let frame = self.read_server_frame();
        assert_eq!(
            frame.opcode,
            opcode,
            "unexpected frame (payload {:?})",
            String::from_utf8_lossy(&frame.payload[..frame.payload.len().min(200)])
        );
        frame.payload
    }

    pub fn expect_text(&mut self) -> String {
        String::from_utf8(self.expect_message(op::TEXT)).expect("echoed text is UTF-8")
    }

    /// Reads a close frame with `code`, then asserts that the server closed
    /// the TCP connection without sending anything more.
    pub fn expect_close(&mut self, code: u16) -> Frame {
        let frame = self.read_server_frame();
        assert_eq!(frame.opcode, op::CLOSE, "expected a close frame: {frame:?}");
        assert_eq!(
            frame.close_code(),
            Some(code),
            "close code (reason {:?})",
            String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
        );
        self.expect_eof();
        frame
    }

    /// Asserts the server closes the connection without sending any more
    /// bytes. A reset counts as closed too.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buffered().is_empty(),
            "unexpected bytes before EOF: {:?}",
            self.buffered()
        );
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => panic!(
                    "expected EOF, got {n} more bytes: {:?}",
                    String::from_utf8_lossy(&chunk[..n.min(200)])
                ),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("timed out waiting for the server to close the connection")
                }
                Err(e) => panic!("read failed while waiting for EOF: {e}"),
            }
        }
    }

    /// Reads whatever arrives until EOF (or reset), returning it.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = self.buffered().to_vec();
        self.buf.clear();
        self.pos = 0;
        out.extend(read_until_closed(&mut self.stream));
        out
    }

    /// Asserts nothing arrives (and the connection stays open) for `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        assert!(
            self.buffered().is_empty(),
            "unexpected buffered bytes: {:?}",
            self.buffered()
        );
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let result = self.stream.read(&mut byte);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match result {
            Ok(0) => panic!("server closed the connection"),
            Ok(_) => panic!("unexpected byte from server: {:#04x}", byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Sends a raw (possibly malformed) frame and expects the server to fail
    /// the connection with `code` and close TCP.
    pub fn expect_failure_after(&mut self, bytes: &[u8], code: u16) -> Frame {
        self.send(bytes);
        self.expect_close(code)
    }
}

/// Checks a `101` answer to a handshake sent with `key`.
pub fn assert_switching_protocols(response: &HttpResponse, key: &str) {
    assert_eq!(response.status, 101, "handshake refused: {response:?}");
    assert!(
        response
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "Upgrade header: {response:?}"
    );
    assert!(
        response.header("Connection").is_some_and(|v| v
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))),
        "Connection header: {response:?}"
    );
    assert_eq!(
        response.header("Sec-WebSocket-Accept"),
        Some(expected_accept(key).as_str()),
        "accept value: {response:?}"
    );
    assert!(response.body.is_empty());
}

/// A TCP connection to `addr` with read/write timeouts and `TCP_NODELAY`.
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the server");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads whatever arrives until EOF (or a reset) and returns it; panics if
/// the connection is still open when the read timeout passes.
pub fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "timed out waiting for the server to close the connection ({} bytes came: {:?})",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
            Err(e) => panic!("read failed while waiting for EOF: {e}"),
        }
    }
}

/// Drops `stream` with an RST instead of a FIN (`SO_LINGER` of zero).
pub fn reset(stream: TcpStream) {
    let socket = Socket::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// Byte-string search.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits raw bytes from the server into complete unmasked frames; returns
/// them and the number of trailing bytes that do not form a whole frame.
pub fn split_frames(mut bytes: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    loop {
        if bytes.len() < 2 {
            return (frames, bytes.len());
        }
        let (len, header_len) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()), 10),
            126 | 127 => return (frames, bytes.len()),
            n => (u64::from(n), 2),
        };
        assert_eq!(bytes[1] & 0x80, 0, "server frames must not be masked");
        let end = header_len + usize::try_from(len).unwrap();
        if bytes.len() < end {
            return (frames, bytes.len());
        }
        frames.push(Frame {
            fin: bytes[0] & 0x80 != 0,
            rsv: (bytes[0] >> 4) & 0x7,
            opcode: bytes[0] & 0x0F,
            masked: false,
            payload: bytes[header_len..end].to_vec(),
        });
        bytes = &bytes[end..];
    }
}
