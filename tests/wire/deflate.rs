//! permessage-deflate (RFC 7692) end to end: negotiation headers, compressed
//! echo (whole, fragmented, split at every byte), the RSV1 rules, bounded
//! inflation, broadcast sharing, and an independent client (Python's
//! `websockets`).

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use wshub::config::{ClientMessages, Compression as RouteCompression, Config};

use crate::support::client::{
    ECHO_PATH, RawClient, assert_switching_protocols, client_frame, code, encode_frame, fresh_key,
    next_mask, op, upgrade_request_with,
};
use crate::support::data::{binary_payload, eventually};
use crate::support::python::run_websockets_client;
use crate::support::server::{LIVE_PATH, TestServer, broadcast_config};

const RSV1: u8 = 0b100;
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Raw DEFLATE of `data` as one permessage-deflate message: sync flush,
/// trailer stripped (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == data.len() && out.capacity() - out.len() >= 64 {
            break;
        }
    }
    assert!(out.ends_with(&TRAILER), "sync flush ends with the trailer");
    out.truncate(out.len() - TRAILER.len());
    out
}

/// Inflates a permessage-deflate payload (appending the trailer).
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TRAILER);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        let consumed = d.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let status = d
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .expect("server sent valid DEFLATE data");
        if d.total_in() as usize == input.len() && out.capacity() > out.len() {
            break;
        }
        assert_ne!(status, Status::StreamEnd, "no final block expected");
    }
    out
}

fn compressed_config() -> Config {
    let mut config = broadcast_config(ClientMessages::Ignore, false);
    for route in &mut config.routes {
        route.compression = RouteCompression::On;
    }
    config
}

fn upgrade_with(path: &str, host: &str, key: &str, extensions: Option<&str>) -> String {
    let offer = extensions
        .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
        .unwrap_or_default();
    upgrade_request_with(path, host, key, &offer)
}

/// Opens `path` offering `offer`; returns the client and the answered
/// `Sec-WebSocket-Extensions` value.
fn open_with(server: &TestServer, path: &str, offer: Option<&str>) -> (RawClient, Option<String>) {
    let mut client = RawClient::connect(server.addr);
    let key = fresh_key();
    client.send(upgrade_with(path, &server.addr.to_string(), &key, offer).as_bytes());
    let response = client.read_http_response();
    assert_switching_protocols(&response, &key);
    let ext = response
        .header("Sec-WebSocket-Extensions")
        .map(str::to_owned);
    (client, ext)
}

fn open_deflate(server: &TestServer, path: &str) -> RawClient {
    let (client, ext) = open_with(server, path, Some(OFFER));
    assert_eq!(
        ext.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    client
}

fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, RSV1, opcode, Some(next_mask()), payload)
}

/// Reads one message frame, inflating it if RSV1 is set; returns the
/// payload and whether it came compressed.
fn read_message(client: &mut RawClient, opcode: u8) -> (Vec<u8>, bool) {
    let frame = client.read_frame();
    assert!(frame.fin && !frame.masked, "{frame:?}");
    assert_eq!(frame.opcode, opcode, "{frame:?}");
    assert!(frame.rsv == 0 || frame.rsv == RSV1, "{frame:?}");
    if frame.rsv == RSV1 {
        (inflate(&frame.payload), true)
    } else {
        (frame.payload, false)
    }
}

fn sample_text() -> String {
    (0..40)
        .map(|i| format!("{{\"seq\":{i},\"sym\":\"ÄBC\",\"px\":{}}} ", 1000 + i * 7))
        .collect()
}

#[test]
fn negotiation_answers_with_the_parameters_in_force() {
    let server = TestServer::with_config(compressed_config());
    let base = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let cases: [(Option<&str>, Option<String>); 6] = [
        (None, None),
        (Some("permessage-deflate"), Some(base.to_owned())),
        (Some(OFFER), Some(base.to_owned())),
        (
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"),
            Some(format!(
                "{base}; server_max_window_bits=10; client_max_window_bits=12"
            )),
        ),
        // 8 is declined; the next offer is the first acceptable one.
        (
            Some("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
            Some(base.to_owned()),
        ),
        (
            Some("x-webkit-deflate-frame, permessage-deflate; bogus"),
            None,
        ),
    ];
    for (offer, want) in cases {
        let (mut client, got) = open_with(&server, ECHO_PATH, offer);
        assert_eq!(got, want, "offer {offer:?}");
        client.send_text("still works");
        assert_eq!(client.expect_text(), "still works");
    }
    // A route with compression off declines every offer.
    let plain = TestServer::start();
    let (_client, got) = open_with(&plain, ECHO_PATH, Some(OFFER));
    assert_eq!(got, None);
}

#[test]
fn echo_round_trips_compressed_messages() {
    let server = TestServer::with_config(compressed_config());
    let mut client = open_deflate(&server, ECHO_PATH);
    let text = sample_text();
    let packed = deflate(text.as_bytes());
    assert!(packed.len() < text.len() / 2);

    // Whole.
    client.send(&compressed_frame(true, op::TEXT, &packed));
    let (echo, compressed) = read_message(&mut client, op::TEXT);
    assert!(compressed, "a large echo is sent compressed");
    assert_eq!(echo, text.as_bytes());

    // Three fragments, RSV1 on the first only, a ping in between.
    let third = packed.len() / 3;
    client.send(&compressed_frame(false, op::TEXT, &packed[..third]));
    client.send(&client_frame(
        false,
        op::CONTINUATION,
        &packed[third..2 * third],
    ));
    client.send(&client_frame(true, op::PING, b"mid"));
    client.send(&client_frame(true, op::CONTINUATION, &packed[2 * third..]));
    let pong = client.read_server_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (op::PONG, &b"mid"[..])
    );
    let (echo, _) = read_message(&mut client, op::TEXT);
    assert_eq!(echo, text.as_bytes());

    // Binary, and an uncompressed message on the same connection.
    let binary = binary_payload(5000, 3).repeat(4);
    client.send(&compressed_frame(true, op::BINARY, &deflate(&binary)));
    assert_eq!(read_message(&mut client, op::BINARY).0, binary);
    client.send_text("short and plain");
    let (echo, compressed) = read_message(&mut client, op::TEXT);
    assert_eq!(echo, b"short and plain");
    assert!(!compressed, "below compression_min_size the echo is plain");
}

#[test]
fn fragmented_compressed_message_split_at_every_byte() {
    let server = TestServer::with_config(compressed_config());
    let mut client = open_deflate(&server, ECHO_PATH);
    let text = "split me at every byte, then put me together again. ".repeat(6);
    let packed = deflate(text.as_bytes());
    let half = packed.len() / 2;
    let mut stream = compressed_frame(false, op::TEXT, &packed[..half]);
    stream.extend(client_frame(
        false,
        op::CONTINUATION,
        &packed[half..half + 1],
    ));
    stream.extend(client_frame(true, op::CONTINUATION, &packed[half + 1..]));
    for cut in 0..=stream.len() {
        client.send(&stream[..cut]);
        // Let the first part arrive on its own.
        std::thread::sleep(Duration::from_millis(1));
        client.send(&stream[cut..]);
        let (echo, compressed) = read_message(&mut client, op::TEXT);
        assert!(compressed);
        assert_eq!(echo, text.as_bytes(), "split at {cut}");
    }
}

#[test]
fn rsv1_misuse_fails_with_1002() {
    let server = TestServer::with_config(compressed_config());
    let packed = deflate(b"abcabcabcabc");

    let mut client = open_deflate(&server, ECHO_PATH);
    client.send(&compressed_frame(false, op::TEXT, &packed[..2]));
    client.expect_failure_after(
        &compressed_frame(true, op::CONTINUATION, &packed[2..]),
        code::PROTOCOL_ERROR,
    );

    let mut client = open_deflate(&server, ECHO_PATH);
    client.expect_failure_after(&compressed_frame(true, op::PING, b""), code::PROTOCOL_ERROR);

    // Offered nothing: RSV1 is not ours to use.
    let (mut client, ext) = open_with(&server, ECHO_PATH, None);
    assert_eq!(ext, None);
    client.expect_failure_after(
        &compressed_frame(true, op::TEXT, &packed),
        code::PROTOCOL_ERROR,
    );

    // Compression off on the route.
    let plain = TestServer::start();
    let (mut client, _) = open_with(&plain, ECHO_PATH, Some(OFFER));
    client.expect_failure_after(
        &compressed_frame(true, op::TEXT, &packed),
        code::PROTOCOL_ERROR,
    );
}

#[test]
fn corrupt_data_and_bad_utf8_fail_with_1007() {
    let server = TestServer::with_config(compressed_config());
    let mut client = open_deflate(&server, ECHO_PATH);
    client.expect_failure_after(
        &compressed_frame(true, op::BINARY, &[0xff, 0xfe, 0xfd, 0xfc, 0x00]),
        code::INVALID_PAYLOAD,
    );

    let mut client = open_deflate(&server, ECHO_PATH);
    let mut bad = b"valid so far ".repeat(20);
    bad.extend_from_slice(&[0xc3, 0x28]);
    client.expect_failure_after(
        &compressed_frame(true, op::TEXT, &deflate(&bad)),
        code::INVALID_PAYLOAD,
    );
}

#[test]
fn decompression_bomb_is_closed_with_1009_before_the_memory_is_spent() {
    // 200 MiB of zeros; the server's limit is 16 MiB.
    let mut config = compressed_config();
    config.max_message_size = 16 * 1024 * 1024;
    let server = TestServer::with_config(config);
    let bomb = deflate(&vec![0; 200 << 20]);
    assert!(bomb.len() < 512 * 1024, "bomb is {} bytes", bomb.len());
    let mut client = open_deflate(&server, ECHO_PATH);
    let start = Instant::now();
    let frame = compressed_frame(true, op::BINARY, &bomb);
    // The server may close before reading it all; a reset is fine.
    let _ = client.stream.write_all(&frame);
    let close = client.read_frame();
    assert_eq!(close.opcode, op::CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(code::MESSAGE_TOO_BIG));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    // The server is still serving.
    let mut other = open_deflate(&server, ECHO_PATH);
    other.send_text("alive");
    assert_eq!(read_message(&mut other, op::TEXT).0, b"alive");
}

#[test]
fn broadcast_shares_one_compressed_frame() {
    let server = TestServer::with_config(compressed_config());
    let path = format!("{LIVE_PATH}/prices");
    let mut compressed: Vec<RawClient> = (0..50).map(|_| open_deflate(&server, &path)).collect();
    let mut plain: Vec<RawClient> = (0..50)
        .map(|_| {
            let (client, ext) = open_with(&server, &path, None);
            assert_eq!(ext, None);
            client
        })
        .collect();
    let text: String = sample_text().chars().cycle().take(10 * 1024).collect();
    let mut publisher = RawClient::connect(server.addr);
    // Subscriptions are made by the loop right after each upgrade.
    assert!(eventually(Duration::from_secs(5), || {
        publisher.publish_ok("prices", Some("text/plain"), b"warm-up") == 100
    }));
    for client in compressed.iter_mut().chain(plain.iter_mut()) {
        while client.read_frame().payload != b"warm-up" {}
    }
    assert_eq!(
        publisher.publish_ok("prices", Some("text/plain"), text.as_bytes()),
        100
    );

    let mut first: Option<Vec<u8>> = None;
    for client in &mut compressed {
        let frame = client.read_frame();
        assert_eq!((frame.rsv, frame.opcode, frame.fin), (RSV1, op::TEXT, true));
        // Re-encode exactly what came off the socket (unmasked, minimal length).
        let wire = encode_frame(true, RSV1, op::TEXT, None, &frame.payload);
        match &first {
            None => {
                assert!(frame.payload.len() < text.len() / 2);
                assert_eq!(inflate(&frame.payload), text.as_bytes());
                first = Some(wire);
            }
            Some(bytes) => assert_eq!(&wire, bytes, "identical frame bytes on every socket"),
        }
        assert_eq!(inflate(&frame.payload), text.as_bytes());
    }
    for client in &mut plain {
        assert_eq!(client.expect_text(), text);
    }
}

/// An independent implementation: Python's `websockets`, which negotiates
/// permessage-deflate by default. Fails (never skips) when it is missing:
/// `.ci/test` installs it.
#[test]
fn python_websockets_client_speaks_deflate() {
    let server = TestServer::with_config(compressed_config());
    let script = r#"
import sys
from websockets.sync.client import connect
url = sys.argv[1]
text = "compress me, " * 200
data = bytes(range(256)) * 4 + b"\x00" * 4000
with connect(url, compression="deflate", max_size=None, open_timeout=5) as ws:
    names = [e.name for e in ws.protocol.extensions]
    header = ws.response.headers.get("Sec-WebSocket-Extensions")
    assert names == ["permessage-deflate"], names
    for _ in range(3):
        ws.send(text)
        assert ws.recv(timeout=5) == text
        ws.send(data)
        assert ws.recv(timeout=5) == data
    ws.send("tiny")
    assert ws.recv(timeout=5) == "tiny"
    print("OK", header)
"#;
    let stdout = run_websockets_client(script, &[&server.url(ECHO_PATH)]);
    assert!(
        stdout.contains(
            "OK permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{stdout}"
    );
}
