//! Many concurrent clients, each pipelining thousands of small messages:
//! every echo arrives, intact and in order, within a generous bound.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::client::{RawClient, client_frame, code, op};
use crate::support::server::TestServer;

const CLIENTS: usize = 100;
const MESSAGES: usize = 10_000;
/// Messages per write on the sending side.
const BATCH: usize = 100;
/// Bound on the whole test, checked at the end and enforced on the way by
/// socket timeouts.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// Message `seq` of client `client`: 16 to 32 bytes, unique per client and
/// sequence number, so a lost, duplicated, reordered or crossed message is
/// caught.
fn message(client: usize, seq: usize) -> String {
    let mut text = format!("c{client:03}:m{seq:05}:");
    let target = 16 + (client * 7 + seq * 13) % 17;
    let filler = b'a' + (seq % 26) as u8;
    while text.len() < target {
        text.push(filler as char);
    }
    text
}

/// One client: handshake, a writer thread pipelining all messages in
/// batches, and this thread checking every echo as it arrives.
fn run_client(addr: std::net::SocketAddr, id: usize, deadline: Instant) {
    let mut client = RawClient::open(addr, "/echo");
    client.set_read_timeout(TEST_BOUND);
    let mut writer = client.stream.try_clone().unwrap();
    writer.set_write_timeout(Some(TEST_BOUND)).unwrap();
    let sender = std::thread::spawn(move || {
        let mut bytes = Vec::with_capacity(BATCH * 40);
        for first in (0..MESSAGES).step_by(BATCH) {
            bytes.clear();
            for seq in first..first + BATCH {
                bytes.extend(client_frame(true, op::TEXT, message(id, seq).as_bytes()));
            }
            writer.write_all(&bytes).expect("pipelined write");
        }
    });
    for seq in 0..MESSAGES {
        let frame = client.read_server_frame();
        assert_eq!(
            frame.opcode,
            op::TEXT,
            "client {id} message {seq}: {frame:?}"
        );
        let expected = message(id, seq);
        assert!(
            frame.payload == expected.as_bytes(),
            "client {id} message {seq}: got {:?}, want {expected:?}",
            String::from_utf8_lossy(&frame.payload)
        );
        if seq % 1000 == 0 {
            assert!(
                Instant::now() < deadline,
                "client {id} past the deadline at {seq}"
            );
        }
    }
    sender.join().expect("writer thread");
    client.send_close(code::NORMAL, b"done");
    client.expect_close(code::NORMAL);
}

#[test]
fn hundred_clients_each_get_ten_thousand_pipelined_echoes_in_order() {
    let server = TestServer::start();
    let addr = server.addr;
    let start = Instant::now();
    let deadline = start + TEST_BOUND;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            std::thread::Builder::new()
                .name(format!("client-{id}"))
                .spawn(move || run_client(addr, id, deadline))
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (id, handle) in clients.into_iter().enumerate() {
        if handle.join().is_err() {
            failures.push(id);
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "{CLIENTS} clients x {MESSAGES} messages echoed in {elapsed:?} ({:.0} messages/s)",
        (CLIENTS * MESSAGES) as f64 / elapsed.as_secs_f64()
    );
    assert!(failures.is_empty(), "clients failed: {failures:?}");
    assert!(elapsed < TEST_BOUND, "took {elapsed:?}");
}

#[test]
fn message_format_is_unique_and_within_16_to_32_bytes() {
    let mut seen = std::collections::HashSet::new();
    for client in [0, 1, 99] {
        for seq in 0..MESSAGES {
            let m = message(client, seq);
            assert!((16..=32).contains(&m.len()), "{m:?}");
            assert!(seen.insert(m));
        }
    }
}
