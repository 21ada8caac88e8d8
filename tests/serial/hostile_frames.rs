//! Size limits under pressure, against the real binary with
//! `max_message_size = max_frame_size = 4096`: 200 clients each assemble a
//! message of exactly the limit from 4096 one-byte frames (all 200 partly
//! assembled at once) and get it back whole; one byte more, or a frame
//! announcing 2^63 − 1 bytes, closes with 1009; a length with the top bit
//! set (2^63) closes with 1002. The daemon's resident memory stays bounded
//! throughout.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use crate::support::client::{RawClient, client_frame, code, frame_header, next_mask, op};
use crate::support::daemon::{Daemon, config_with};
use crate::support::tempdir::TempDir;

const LIMIT: usize = 4096;
const CLIENTS: usize = 200;
/// Allowed growth of the daemon's VmRSS over the whole test.
const MAX_GROWTH_KIB: u64 = 64 * 1024;
const SETTINGS: &str = "max_message_size = 4096\nmax_frame_size = 4096";

/// `len` one-byte frames forming one binary message (final only if `fin`).
fn one_byte_frames(payload: &[u8], fin: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() * 7);
    for (i, byte) in payload.iter().enumerate() {
        let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
        let last = fin && i + 1 == payload.len();
        out.extend(client_frame(last, opcode, std::slice::from_ref(byte)));
    }
    out
}

fn payload_for(client: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ client.wrapping_mul(7)) as u8)
        .collect()
}

/// A binary frame header announcing `len` bytes, followed by just one.
fn announcing(len: u64) -> Vec<u8> {
    let mut frame = frame_header(true, 0, op::BINARY, Some(next_mask()), len);
    frame.push(b'x');
    frame
}

/// Sends `bytes` and expects a close frame with `code`, then EOF.
fn expect_failure(addr: SocketAddr, bytes: &[u8], code: u16, what: &str) {
    let mut client = RawClient::open(addr, "/echo");
    let _ = client.stream.write_all(bytes);
    let close = client.expect_close(code);
    eprintln!(
        "{what}: close {:?} {:?}",
        close.close_code(),
        close.close_reason()
    );
}

#[test]
fn size_limits_hold_under_many_clients_with_bounded_memory() {
    let _alone = crate::alone();
    let dir = TempDir::new("frames");
    let mut daemon = Daemon::start(&dir.write("wshub.toml", &config_with(SETTINGS)), &[]);
    let addr = daemon.listening_address();
    // Warm up the allocator and the loop with one ordinary echo.
    {
        let mut client = RawClient::open(addr, "/echo");
        client.send_binary(&payload_for(0, LIMIT));
        assert_eq!(client.expect_message(op::BINARY), payload_for(0, LIMIT));
    }
    let rss_before = daemon.rss_kib();
    let start = Instant::now();

    // Every client has all but its last frame in before any message completes.
    let mut clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| RawClient::open(addr, "/echo"))
        .collect();
    let messages: Vec<Vec<u8>> = (0..CLIENTS).map(|c| payload_for(c, LIMIT)).collect();
    for (client, message) in clients.iter_mut().zip(&messages) {
        client.send(&one_byte_frames(&message[..LIMIT - 1], false));
    }
    let rss_partial = daemon.rss_kib();
    for (client, message) in clients.iter_mut().zip(&messages) {
        client.send(&client_frame(true, op::CONTINUATION, &message[LIMIT - 1..]));
    }
    for (i, (client, message)) in clients.iter_mut().zip(&messages).enumerate() {
        let echoed = client.expect_message(op::BINARY);
        assert!(echoed == *message, "client {i}: echo differs");
    }
    let echoed_in = start.elapsed();
    for client in &mut clients {
        client.send_close(code::NORMAL, b"");
        client.expect_close(code::NORMAL);
    }
    drop(clients);
    eprintln!(
        "{CLIENTS} clients x {LIMIT} one-byte frames echoed whole in {echoed_in:?}; \
         VmRSS {rss_before} KiB before, {rss_partial} KiB with {CLIENTS} partial messages"
    );

    // One byte over the limit, in one-byte frames and in one frame.
    let over = payload_for(1, LIMIT + 1);
    expect_failure(
        addr,
        &one_byte_frames(&over, true),
        code::MESSAGE_TOO_BIG,
        "4097 one-byte frames",
    );
    expect_failure(
        addr,
        &client_frame(true, op::BINARY, &over),
        code::MESSAGE_TOO_BIG,
        "one 4097-byte frame",
    );

    // Absurd announced lengths: the header alone decides, nothing is reserved.
    let huge = announcing((1 << 63) - 1);
    let top_bit = announcing(1 << 63);
    let mut held: Vec<RawClient> = (0..CLIENTS)
        .map(|_| RawClient::open(addr, "/echo"))
        .collect();
    for client in &mut held {
        client.send(&huge);
    }
    for client in &mut held {
        client.expect_close(code::MESSAGE_TOO_BIG);
    }
    drop(held);
    expect_failure(addr, &huge, code::MESSAGE_TOO_BIG, "length 2^63 - 1");
    expect_failure(addr, &top_bit, code::PROTOCOL_ERROR, "length 2^63");

    daemon.assert_running();
    let rss_after = daemon.rss_kib();
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!("VmRSS {rss_before} KiB before, {rss_after} KiB after: +{growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "VmRSS grew by {growth} KiB (from {rss_before} to {rss_after})"
    );
}
