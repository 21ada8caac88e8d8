//! Timers and admission over real sockets: a few end-to-end checks that the
//! loop arms and fires connection deadlines (pings, pong, handshake and idle
//! timeouts), with generous upper bounds only, and the connection limit.
//! The exact timing of every deadline is unit-tested on a virtual clock in
//! `src/server/conn.rs`.

use std::time::{Duration, Instant};

use crate::support::client::{RawClient, code, op};
use crate::support::server::TestServer;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Far above every deadline these tests configure: only a loop that never
/// fires the deadline misses it.
const BOUND: Duration = Duration::from_secs(5);

fn ping_server() -> TestServer {
    TestServer::with(|c| {
        c.ping_interval = ms(200);
        c.pong_timeout = ms(200);
    })
}

#[test]
fn silent_client_receives_a_ping() {
    let server = ping_server();
    let mut client = server.client();
    client.set_read_timeout(BOUND);
    let frame = client.read_server_frame();
    assert_eq!(frame.opcode, op::PING, "{frame:?}");
    assert!(frame.payload.len() <= 125);
}

#[test]
fn unanswered_ping_gets_the_connection_dropped() {
    let server = ping_server();
    let mut client = server.client();
    let opened = Instant::now();
    client.set_read_timeout(BOUND);
    let frame = client.read_server_frame();
    assert_eq!(frame.opcode, op::PING, "{frame:?}");
    // Whatever else the server sends (a close frame is fine), it must close TCP.
    let rest = client.read_to_eof();
    let elapsed = opened.elapsed();
    assert!(
        elapsed < BOUND,
        "connection still open {elapsed:?} after the handshake"
    );
    if !rest.is_empty() {
        // Only a close frame may precede the TCP close.
        assert_eq!(rest[0] & 0x0F, op::CLOSE, "unexpected bytes {rest:?}");
    }
}

#[test]
fn connection_sending_nothing_is_dropped_after_handshake_timeout() {
    let server = TestServer::with(|c| c.handshake_timeout = ms(300));
    let mut client = RawClient::connect(server.addr);
    let start = Instant::now();
    client.set_read_timeout(BOUND);
    client.expect_eof();
    assert!(start.elapsed() < BOUND);
    // The drop is counted as a refusal for timeout.
    let mut http = RawClient::connect(server.addr);
    let metrics = http.metrics();
    assert_eq!(
        metrics.value("wshub_requests_refused_total{reason=\"timeout\"}"),
        1
    );
}

#[test]
fn idle_client_gets_close_1000_after_idle_timeout() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::ZERO;
        c.idle_timeout = ms(400);
    });
    let mut client = server.client();
    let start = Instant::now();
    client.set_read_timeout(BOUND);
    let frame = client.read_server_frame();
    assert!(start.elapsed() < BOUND);
    assert_eq!(frame.opcode, op::CLOSE, "{frame:?}");
    assert_eq!(frame.close_code(), Some(code::NORMAL));
    // Completing the handshake ends the connection.
    client.send_close(code::NORMAL, b"");
    client.expect_eof();
}

#[test]
fn connection_over_max_connections_gets_503_with_retry_after() {
    let server = TestServer::with(|c| c.max_connections = 2);
    let mut first = server.client();
    let mut second = server.client();
    let mut third = RawClient::connect(server.addr);
    let response = third.read_http_response();
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        response
            .header("Retry-After")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{response:?}"
    );
    assert!(!response.body.is_empty());
    third.expect_eof();
    // The admitted connections are unaffected.
    first.send_text("one");
    second.send_text("two");
    assert_eq!(first.expect_text(), "one");
    assert_eq!(second.expect_text(), "two");
}

#[test]
fn closed_connection_frees_its_slot() {
    let server = TestServer::with(|c| c.max_connections = 2);
    let mut first = server.client();
    let _second = server.client();
    first.send_close(code::NORMAL, b"");
    first.expect_close(code::NORMAL);
    drop(first);
    let mut third = server.client();
    third.send_text("admitted");
    assert_eq!(third.expect_text(), "admitted");
}

#[test]
fn handshaking_connections_count_toward_max_connections() {
    let server = TestServer::with(|c| c.max_connections = 1);
    // Connected but no request yet.
    let _pending = RawClient::connect(server.addr);
    std::thread::sleep(ms(100));
    let mut refused = RawClient::connect(server.addr);
    assert_eq!(refused.read_http_response().status, 503);
    refused.expect_eof();
}
