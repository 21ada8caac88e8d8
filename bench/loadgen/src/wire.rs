//! WebSocket bytes on the wire, client side: the opening handshake, masked
//! frame encoding and unmasked frame decoding (RFC 6455).
//!
//! Encoding writes header and masked payload straight into the caller's
//! output buffer in one pass, so sending a message costs no allocation and
//! no separate masking pass.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::{Fail, Result};
use crate::http::ResponseHead;

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest client frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_CLIENT_HEADER: usize = 14;
/// Largest server frame header: 2 + 8 (length), never masked.
pub const MAX_SERVER_HEADER: usize = 10;

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The permessage-deflate offer (RFC 7692) sent with `--deflate`: no
/// context takeover either way, so every message inflates on its own.
const DEFLATE_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
const DEFLATE_TOKEN: &str = "permessage-deflate";
/// RSV1: the frame starts a compressed message.
const RSV1: u8 = 0x40;
/// RSV2 and RSV3: never used.
const RSV23: u8 = 0x30;
/// The sync-flush trailer a sender strips from each compressed message.
const DEFLATE_TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflates permessage-deflate messages, one at a time, no context kept.
pub struct Inflater {
    stream: flate2::Decompress,
    input: Vec<u8>,
    pub out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            stream: flate2::Decompress::new(false),
            input: Vec::new(),
            out: Vec::new(),
        }
    }
}

impl Inflater {
    /// Inflates one message payload into `self.out`; fails past `limit`
    /// bytes or on data that is not DEFLATE.
    pub fn inflate(&mut self, payload: &[u8], limit: usize) -> Result<&[u8]> {
        self.stream.reset(false);
        self.input.clear();
        self.input.extend_from_slice(payload);
        self.input.extend_from_slice(&DEFLATE_TRAILER);
        self.out.clear();
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(self.out.capacity().max(4096));
            }
            let consumed = self.stream.total_in() as usize;
            let room = self.out.capacity() - self.out.len();
            let before = self.out.len();
            self.stream
                .decompress_vec(
                    &self.input[consumed..],
                    &mut self.out,
                    flate2::FlushDecompress::Sync,
                )
                .map_err(|e| Fail::run(format!("server sent corrupt DEFLATE data: {e}")))?;
            if self.out.len() > limit {
                return Err(Fail::run(format!(
                    "compressed message inflates past {limit} bytes"
                )));
            }
            let done = self.stream.total_in() as usize == self.input.len();
            if done && self.out.len() - before < room {
                return Ok(&self.out);
            }
        }
    }
}

/// A connection's pending output: a fixed buffer that frames are encoded
/// into in place, so appending never zero-fills, copies twice or (within
/// the capacity planned for the run) allocates.
pub struct OutBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl OutBuf {
    pub fn with_capacity(capacity: usize) -> OutBuf {
        OutBuf {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` pending bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reserves `n` bytes at the end and returns them for the caller to
    /// fill. Moves the unsent tail to the front, or grows the buffer if
    /// even that leaves too little room (only for frames the run did not
    /// plan for, such as pongs).
    fn append(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() - self.end < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < n {
                let mut bigger = vec![0; (self.end + n).max(2 * self.buf.len())].into_boxed_slice();
                bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
                self.buf = bigger;
            }
        }
        let at = self.end;
        self.end += n;
        &mut self.buf[at..self.end]
    }
}

/// Encodes one final client frame of `opcode` whose payload is the
/// concatenation of `parts`, masked with `mask`, at the end of `out`.
pub fn encode_masked(out: &mut OutBuf, opcode: u8, mask: [u8; 4], parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let (length_code, extra) = match len {
        0..=125 => (len as u8, 0),
        126..=0xffff => (126, 2),
        _ => (127, 8),
    };
    let header = 2 + extra + 4;
    let frame = out.append(header + len);
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | length_code;
    match extra {
        2 => frame[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        8 => frame[2..10].copy_from_slice(&(len as u64).to_be_bytes()),
        _ => {}
    }
    frame[2 + extra..header].copy_from_slice(&mask);
    let mut at = header;
    for part in parts {
        mask_into(&mut frame[at..at + part.len()], part, mask, at - header);
        at += part.len();
    }
}

/// Writes `src` XORed with `mask` into `dst` (same length), where `offset`
/// is the position of `src[0]` in the payload (it picks the starting mask
/// byte). Eight bytes per step.
fn mask_into(dst: &mut [u8], src: &[u8], mask: [u8; 4], offset: usize) {
    // Little-endian byte k of the word is mask[k]; rotating right by one
    // byte starts the pattern at mask[1], and so on.
    let phase = 8 * (offset % 4) as u32;
    let m = u32::from_le_bytes(mask).rotate_right(phase).to_le_bytes();
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut out = dst.chunks_exact_mut(8);
    let mut input = src.chunks_exact(8);
    for (o, i) in (&mut out).zip(&mut input) {
        let word = u64::from_ne_bytes(i.try_into().unwrap_or_default()) ^ wide;
        o.copy_from_slice(&word.to_ne_bytes());
    }
    let tail = out.into_remainder().iter_mut().zip(input.remainder());
    for (k, (o, i)) in tail.enumerate() {
        *o = i ^ m[k % 4];
    }
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub compressed: bool,
    pub opcode: u8,
    /// Payload position relative to the buffer start.
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Decodes the server frame at the start of `buf`; `None` if it is not all
/// there yet. `max_payload` bounds what the caller has buffer room for.
pub fn decode_server(buf: &[u8], max_payload: usize) -> Result<Option<ServerFrame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & RSV23 != 0 {
        return Err(Fail::run("server frame has reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(Fail::run(
            "server frame is masked (RFC 6455 5.1 forbids it)",
        ));
    }
    let (header, len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max_payload)
        .ok_or_else(|| {
            Fail::run(format!(
                "server frame of {len} bytes is larger than any message of this run \
                 ({max_payload} bytes)"
            ))
        })?;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin: b0 & 0x80 != 0,
        compressed: b0 & RSV1 != 0,
        opcode: b0 & 0x0f,
        payload_start: header,
        payload_end: header + len,
    }))
}

/// The opening handshake request, and the accept value its answer must carry.
/// With `deflate`, it offers permessage-deflate.
pub fn handshake_request(
    host: &str,
    path: &str,
    nonce: [u8; 16],
    deflate: bool,
) -> (Vec<u8>, String) {
    let key = BASE64.encode(nonce);
    let offer = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    (request.into_bytes(), accept_for(&key))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// Checks a handshake response; returns the length of its head (bytes after
/// it are already WebSocket frames), or `None` if the head is incomplete.
/// With `deflate`, the server must have accepted permessage-deflate.
pub fn check_handshake_response(
    buf: &[u8],
    accept: &str,
    path: &str,
    deflate: bool,
) -> Result<Option<usize>> {
    let head = match ResponseHead::parse(buf) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Fail::run(format!(
                "handshake on {path}: malformed HTTP response: {e}"
            )));
        }
    };
    if head.code != 101 {
        let body = String::from_utf8_lossy(&buf[head.len..]);
        let body = body.trim();
        return Err(Fail::run(format!(
            "handshake on {path}: server answered {} {}{}{}",
            head.code,
            head.reason,
            if body.is_empty() { "" } else { ": " },
            body.chars().take(200).collect::<String>()
        )));
    }
    if head.header("sec-websocket-accept") != Some(accept.as_bytes()) {
        return Err(Fail::run(format!(
            "handshake on {path}: wrong or missing Sec-WebSocket-Accept"
        )));
    }
    if deflate {
        let accepted = head.headers().iter().any(|h| {
            h.name.eq_ignore_ascii_case("sec-websocket-extensions")
                && std::str::from_utf8(h.value)
                    .is_ok_and(|v| v.trim_start().starts_with(DEFLATE_TOKEN))
        });
        if !accepted {
            return Err(Fail::run(format!(
                "handshake on {path}: permessage-deflate was not accepted \
                 (set compression = \"on\" on the route)"
            )));
        }
    }
    Ok(Some(head.len))
}

/// A close frame's code and reason, for error messages.
pub fn describe_close(payload: &[u8]) -> String {
    match payload {
        [] => "no status code".to_owned(),
        [a, b, reason @ ..] => format!(
            "code {} {:?}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "malformed close payload".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let mask = &frame[at..at + 4];
        let payload = frame[at + 4..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect::<Vec<_>>();
        assert_eq!(payload.len(), len);
        (frame[0], payload)
    }

    #[test]
    fn masked_encoding_round_trips_at_every_length_class() {
        for len in [0, 1, 7, 8, 9, 13, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            // Split the payload unevenly to exercise mask phase carry-over.
            let split = len.min(5);
            // Starts too small, so growing is covered too.
            let mut out = OutBuf::with_capacity(16);
            encode_masked(
                &mut out,
                OP_BINARY,
                [0x12, 0x34, 0x56, 0x78],
                &[&data[..split], &data[split..]],
            );
            let (b0, payload) = unmask(out.pending());
            assert_eq!(b0, 0x80 | OP_BINARY);
            assert_eq!(payload, data, "len {len}");
        }
    }

    #[test]
    fn out_buffer_compacts_before_growing() {
        let mut out = OutBuf::with_capacity(8);
        out.append(6).copy_from_slice(b"abcdef");
        out.consume(4);
        assert_eq!(out.pending(), b"ef");
        out.append(5).copy_from_slice(b"ghijk");
        assert_eq!(out.pending(), b"efghijk");
        assert_eq!(out.buf.len(), 8, "compacting made room");
        out.append(4).copy_from_slice(b"lmno");
        assert_eq!(out.pending(), b"efghijklmno");
        out.consume(11);
        assert!(out.is_empty());
        assert_eq!((out.start, out.end), (0, 0));
    }

    #[test]
    fn decodes_server_frames() {
        let mut buf = vec![0x82, 3, b'a', b'b', b'c', 0x89];
        let f = decode_server(&buf, 100).unwrap().unwrap();
        assert_eq!(
            f,
            ServerFrame {
                fin: true,
                compressed: false,
                opcode: OP_BINARY,
                payload_start: 2,
                payload_end: 5
            }
        );
        assert_eq!(decode_server(&buf[5..], 100).unwrap(), None);
        buf = vec![0x82, 126, 0x01, 0x00];
        assert_eq!(decode_server(&buf, 1000).unwrap(), None);
        buf.resize(4 + 256, 0);
        assert_eq!(decode_server(&buf, 1000).unwrap().unwrap().payload_end, 260);
        assert!(decode_server(&buf, 100).is_err(), "too large");
        assert!(decode_server(&[0x82, 0x81, 0, 0, 0, 0, 0], 10).is_err());
        assert!(decode_server(&[0xa2, 0], 10).is_err());
        assert!(decode_server(&[0xc2, 0], 10).unwrap().unwrap().compressed);
    }

    #[test]
    fn inflates_a_compressed_message() {
        let data = b"{\"px\": 101.5, \"sym\": \"ABC\"} ".repeat(30);
        let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
        let mut packed = Vec::with_capacity(2048);
        c.compress_vec(&data, &mut packed, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(packed.ends_with(&DEFLATE_TRAILER));
        packed.truncate(packed.len() - 4);
        let mut inflater = Inflater::default();
        assert_eq!(inflater.inflate(&packed, 10_000).unwrap(), &data[..]);
        assert_eq!(inflater.inflate(&packed, 10_000).unwrap(), &data[..]);
        assert!(inflater.inflate(&packed, 100).is_err());
        assert!(inflater.inflate(&[0xff, 0xff], 100).is_err());
    }

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_response_checks() {
        let (request, accept) = handshake_request("h", "/p", [7; 16], true);
        assert!(String::from_utf8_lossy(&request).contains("permessage-deflate"));
        let mut ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        ok.extend_from_slice(&[0x82, 0x00]);
        let n = check_handshake_response(&ok, &accept, "/p", false)
            .unwrap()
            .unwrap();
        assert_eq!(&ok[n..], &[0x82, 0x00]);
        assert_eq!(
            check_handshake_response(&ok[..20], &accept, "/p", false).unwrap(),
            None
        );
        let wrong = String::from_utf8_lossy(&ok).replace(&accept, "AAAA");
        assert!(check_handshake_response(wrong.as_bytes(), &accept, "/p", false).is_err());
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope";
        let err = check_handshake_response(refused.as_bytes(), &accept, "/p", false).unwrap_err();
        assert!(err.message.contains("404"), "{}", err.message);
        assert!(err.message.contains("nope"), "{}", err.message);
        let declined = check_handshake_response(&ok, &accept, "/p", true).unwrap_err();
        assert!(declined.message.contains("permessage-deflate"));
        let agreed = String::from_utf8_lossy(&ok).replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        );
        assert!(
            check_handshake_response(agreed.as_bytes(), &accept, "/p", true)
                .unwrap()
                .is_some()
        );
    }
}
