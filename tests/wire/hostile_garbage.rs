//! Garbage instead of a WebSocket client: each case gets an HTTP error
//! response or a quiet close (never a hang, never a crash), and afterwards
//! the server holds no connection for it and still serves a fresh echo
//! client.
//!
//! What the server does today, case by case (asserted below):
//! - 16 KiB of random bytes: `431`, as no blank line ends a head within
//!   `MAX_HEAD_LEN` (8 KiB);
//! - random bytes ending in a blank line: `400`, the request line is invalid;
//! - a few random bytes and then silence: a quiet close at `handshake_timeout`;
//! - the HTTP/2 preface `PRI * HTTP/2.0`: `400` (httparse refuses the version);
//! - a TLS ClientHello on the plain listener: it holds no CRLFCRLF, so the
//!   server waits for the rest of a head and closes quietly at
//!   `handshake_timeout` (a `400` would be accepted too);
//! - half a request, then EOF: a quiet close at once;
//! - half a frame, then RST: the connection is dropped at once;
//! - random bytes after a handshake: a close frame (1002, 1007 or 1009).

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::support::client::{RawClient, client_frame, code, op, reset};
use crate::support::data::XorShift;
use crate::support::http::{metric, wait_for_metric};
use crate::support::server::TestServer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Past the handshake timeout, how long a quiet close may take.
const MARGIN: Duration = Duration::from_secs(2);
/// Longest request head the server reads (`http::MAX_HEAD_LEN`).
const MAX_HEAD_LEN: usize = 8 * 1024;

fn server() -> TestServer {
    TestServer::with(|config| config.handshake_timeout = HANDSHAKE_TIMEOUT)
}

/// What the server did with a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// An HTTP response with this status, then EOF.
    Status(u16),
    /// EOF (or a reset) without a byte.
    QuietClose,
}

/// Sends `bytes` (ignoring a refused write: the server may close first),
/// optionally half-closes, then reads until the server closes.
fn send_garbage(server: &TestServer, bytes: &[u8], then_eof: bool) -> (Verdict, Duration) {
    let mut client = RawClient::connect(server.addr);
    let start = Instant::now();
    let _ = client.stream.write_all(bytes);
    if then_eof {
        let _ = client.stream.shutdown(Shutdown::Write);
    }
    client.set_read_timeout(HANDSHAKE_TIMEOUT + MARGIN);
    let answer = client.read_to_eof();
    let elapsed = start.elapsed();
    if answer.is_empty() {
        return (Verdict::QuietClose, elapsed);
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    assert!(text.contains("\r\n\r\n"), "incomplete response: {text:?}");
    (Verdict::Status(status), elapsed)
}

/// The server holds nothing for earlier cases (the metrics request's own
/// connection is the one counted) and still echoes.
fn assert_still_serving(server: &TestServer, case: &str) {
    let held = wait_for_metric(server.addr, "wshub_connections", 1, MARGIN);
    assert_eq!(held, 1, "{case}: connections still held");
    let mut client = server.client();
    client.send_text(case);
    assert_eq!(client.expect_text(), case);
    client.send_close(code::NORMAL, b"");
    client.expect_close(code::NORMAL);
}

fn report(case: &str, verdict: &Verdict, elapsed: Duration) {
    eprintln!("{case}: {verdict:?} after {elapsed:?}");
}

#[test]
fn random_bytes_larger_than_a_head_get_431() {
    let server = server();
    let garbage = XorShift::new(1).bytes(16 * 1024);
    assert!(
        !garbage[..MAX_HEAD_LEN].windows(4).any(|w| w == b"\r\n\r\n"),
        "seed must not contain a head terminator"
    );
    let (verdict, elapsed) = send_garbage(&server, &garbage, false);
    report("16 KiB of random bytes", &verdict, elapsed);
    assert_eq!(verdict, Verdict::Status(431));
    assert_still_serving(&server, "after random bytes");
}

#[test]
fn random_bytes_ending_in_a_blank_line_get_400() {
    let server = server();
    let mut garbage = XorShift::new(2).bytes(200);
    garbage.extend_from_slice(b"\r\n\r\n");
    let (verdict, elapsed) = send_garbage(&server, &garbage, false);
    report("random bytes + CRLFCRLF", &verdict, elapsed);
    assert_eq!(verdict, Verdict::Status(400));
    assert_still_serving(&server, "after a random head");
}

#[test]
fn a_few_random_bytes_then_silence_time_out_quietly() {
    let server = server();
    let garbage = XorShift::new(3).bytes(100);
    let (verdict, elapsed) = send_garbage(&server, &garbage, false);
    report("100 random bytes, then silence", &verdict, elapsed);
    assert_eq!(verdict, Verdict::QuietClose);
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "closed after {elapsed:?}, before the handshake timeout"
    );
    assert_still_serving(&server, "after a silent client");
}

#[test]
fn http2_preface_gets_400_or_a_quiet_close() {
    let server = server();
    let (verdict, elapsed) = send_garbage(&server, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false);
    report("HTTP/2 preface", &verdict, elapsed);
    assert!(
        matches!(verdict, Verdict::Status(400) | Verdict::QuietClose),
        "{verdict:?}"
    );
    assert_still_serving(&server, "after an HTTP/2 preface");
}

/// A TLS 1.3 ClientHello as a browser sends it first: SNI, versions,
/// groups, signature algorithms, a key share and ALPN.
fn tls_client_hello() -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_len16(body));
        out
    }
    let mut random = XorShift::new(0x7115);
    let mut server_name = vec![0x00];
    server_name.extend(with_len16(b"localhost"));
    let mut key_share = 0x001d_u16.to_be_bytes().to_vec();
    key_share.extend(with_len16(&random.bytes(32)));
    let extensions = [
        extension(0x0000, &with_len16(&server_name)),
        extension(0x002b, &[0x04, 0x03, 0x04, 0x03, 0x03]),
        extension(0x000a, &with_len16(&[0x00, 0x1d, 0x00, 0x17])),
        extension(0x000d, &with_len16(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01])),
        extension(0x0033, &with_len16(&key_share)),
        extension(0x0010, &with_len16(b"\x08http/1.1")),
    ]
    .concat();

    let mut hello = vec![0x03, 0x03];
    hello.extend(random.bytes(32));
    hello.push(32);
    hello.extend(random.bytes(32));
    hello.extend(with_len16(&[
        0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f,
    ]));
    hello.extend([0x01, 0x00]);
    hello.extend(with_len16(&extensions));

    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_len16(&handshake));
    record
}

#[test]
fn tls_client_hello_gets_400_or_a_quiet_close() {
    let server = server();
    let hello = tls_client_hello();
    assert_eq!(&hello[..3], &[0x16, 0x03, 0x01]);
    assert!(!hello.windows(4).any(|w| w == b"\r\n\r\n"));
    let (verdict, elapsed) = send_garbage(&server, &hello, false);
    report("TLS ClientHello", &verdict, elapsed);
    assert!(
        matches!(verdict, Verdict::Status(400) | Verdict::QuietClose),
        "{verdict:?}"
    );
    assert_still_serving(&server, "after a TLS ClientHello");
}

#[test]
fn half_a_request_then_eof_is_closed_quietly_at_once() {
    let server = server();
    let half = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs";
    let (verdict, elapsed) = send_garbage(&server, half, true);
    report("half a request, then EOF", &verdict, elapsed);
    assert_eq!(verdict, Verdict::QuietClose);
    assert!(elapsed < HANDSHAKE_TIMEOUT / 2, "took {elapsed:?}");
    assert_still_serving(&server, "after half a request");
}

#[test]
fn half_a_frame_then_reset_is_dropped() {
    let server = server();
    let mut client = server.client();
    assert_eq!(metric(server.addr, "wshub_connections"), 2);
    let frame = client_frame(true, op::BINARY, &[7u8; 100]);
    client.send(&frame[..frame.len() / 2]);
    reset(client.stream);
    let start = Instant::now();
    let held = wait_for_metric(server.addr, "wshub_connections", 1, MARGIN);
    eprintln!(
        "half a frame, then RST: dropped within {:?}",
        start.elapsed()
    );
    assert_eq!(held, 1, "the reset connection is still held");
    assert_still_serving(&server, "after a reset");
}

#[test]
fn random_bytes_after_the_handshake_fail_the_connection() {
    let server = server();
    let mut client = server.client();
    client.send(&XorShift::new(4).bytes(4096));
    // Garbage that happens to decode as data frames is echoed first.
    let close = loop {
        let frame = client.read_frame();
        if frame.opcode == op::CLOSE {
            break frame;
        }
    };
    let code = close.close_code();
    eprintln!(
        "random bytes after the handshake: close {code:?} {:?}",
        close.close_reason()
    );
    assert!(matches!(code, Some(1002 | 1007 | 1009)), "{close:?}");
    client.expect_eof();
    // The server waits for our close (or EOF) until its close timeout.
    drop(client);
    assert_still_serving(&server, "after random frames");
}
