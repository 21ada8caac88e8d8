//! Timers and admission: keep-alive pings and the pong deadline, the
//! handshake deadline, the idle timeout, and the connection limit.

use std::time::{Duration, Instant};

use crate::support::client::{RawClient, client_frame, code, fresh_key, op, upgrade_request};
use crate::support::server::TestServer;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ping_server() -> TestServer {
    TestServer::with(|c| {
        c.ping_interval = ms(200);
        c.pong_timeout = ms(200);
    })
}

#[test]
fn silent_client_receives_a_ping_within_a_second() {
    let server = ping_server();
    let mut client = server.client();
    let opened = Instant::now();
    client.set_read_timeout(ms(1000));
    let frame = client.read_server_frame();
    assert_eq!(frame.opcode, op::PING, "{frame:?}");
    assert!(frame.payload.len() <= 125);
    let elapsed = opened.elapsed();
    assert!(elapsed >= ms(150), "ping came too early: {elapsed:?}");
}

#[test]
fn unanswered_ping_gets_the_connection_dropped() {
    let server = ping_server();
    let mut client = server.client();
    let opened = Instant::now();
    client.set_read_timeout(ms(1500));
    let frame = client.read_server_frame();
    assert_eq!(frame.opcode, op::PING, "{frame:?}");
    // Whatever else the server sends (a close frame is fine), it must close
    // TCP within the bound.
    let rest = client.read_to_eof();
    let elapsed = opened.elapsed();
    assert!(
        elapsed < ms(1500),
        "connection still open {elapsed:?} after the handshake"
    );
    assert!(
        elapsed >= ms(350),
        "dropped before ping interval + pong timeout: {elapsed:?}"
    );
    if !rest.is_empty() {
        // Only a close frame may precede the TCP close.
        assert_eq!(rest[0] & 0x0F, op::CLOSE, "unexpected bytes {rest:?}");
    }
}

#[test]
fn client_answering_pings_stays_connected_over_several_intervals() {
    let server = ping_server();
    let mut client = server.client();
    client.set_read_timeout(ms(1000));
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < ms(1400) {
        let frame = client.read_server_frame();
        assert_eq!(frame.opcode, op::PING, "{frame:?}");
        client.send(&client_frame(true, op::PONG, &frame.payload));
        pings += 1;
    }
    assert!(pings >= 3, "only {pings} pings in {:?}", start.elapsed());
    client.send_text("still alive");
    // A ping may arrive before the echo.
    loop {
        let frame = client.read_server_frame();
        match frame.opcode {
            op::PING => client.send(&client_frame(true, op::PONG, &frame.payload)),
            op::TEXT => {
                assert_eq!(frame.payload, b"still alive");
                break;
            }
            other => panic!("unexpected opcode {other:#x}: {frame:?}"),
        }
    }
}

#[test]
fn incomplete_handshake_is_dropped_after_handshake_timeout() {
    let server = TestServer::with(|c| c.handshake_timeout = ms(300));
    let mut client = RawClient::connect(server.addr);
    let request = upgrade_request("/echo", "localhost", &fresh_key());
    client.send(&request.as_bytes()[..request.len() / 2]);
    let start = Instant::now();
    client.set_read_timeout(ms(1500));
    client.expect_eof();
    let elapsed = start.elapsed();
    assert!(elapsed >= ms(250), "dropped too early: {elapsed:?}");
    assert!(elapsed < ms(1500), "dropped too late: {elapsed:?}");
}

#[test]
fn connection_sending_nothing_is_dropped_after_handshake_timeout() {
    let server = TestServer::with(|c| c.handshake_timeout = ms(300));
    let mut client = RawClient::connect(server.addr);
    let start = Instant::now();
    client.set_read_timeout(ms(1500));
    client.expect_eof();
    assert!(start.elapsed() < ms(1500));
}

#[test]
fn completed_handshake_is_not_subject_to_handshake_timeout() {
    let server = TestServer::with(|c| c.handshake_timeout = ms(200));
    let mut client = server.client();
    client.expect_silence(ms(600));
    client.send_text("later");
    assert_eq!(client.expect_text(), "later");
}

fn idle_server() -> TestServer {
    TestServer::with(|c| {
        c.ping_interval = Duration::ZERO;
        c.idle_timeout = ms(400);
    })
}

#[test]
fn idle_client_gets_close_1000_after_idle_timeout() {
    let server = idle_server();
    let mut client = server.client();
    let start = Instant::now();
    client.set_read_timeout(ms(2000));
    let frame = client.read_server_frame();
    let elapsed = start.elapsed();
    assert_eq!(frame.opcode, op::CLOSE, "{frame:?}");
    assert_eq!(frame.close_code(), Some(code::NORMAL));
    assert!(elapsed >= ms(350), "closed too early: {elapsed:?}");
    assert!(elapsed < ms(1500), "closed too late: {elapsed:?}");
    // Completing the handshake ends the connection.
    client.send_close(code::NORMAL, b"");
    client.expect_eof();
}

#[test]
fn traffic_resets_the_idle_timeout() {
    let server = idle_server();
    let mut client = server.client();
    let start = Instant::now();
    while start.elapsed() < ms(1200) {
        std::thread::sleep(ms(100));
        client.send_text("tick");
        assert_eq!(client.expect_text(), "tick");
    }
    // Then silence: the close comes.
    client.set_read_timeout(ms(2000));
    let frame = client.read_server_frame();
    assert_eq!(frame.close_code(), Some(code::NORMAL));
}

#[test]
fn no_pings_are_sent_when_ping_interval_is_zero() {
    let server = TestServer::with(|c| {
        c.ping_interval = Duration::ZERO;
        c.idle_timeout = Duration::ZERO;
    });
    let mut client = server.client();
    client.expect_silence(ms(800));
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
