//! The opening handshake (RFC 6455 §4) and the plain HTTP answers around it:
//! health check, routing errors, and every reason to refuse an upgrade.

use std::time::Duration;

use crate::support::client::{
    HttpResponse, RFC_ACCEPT, RFC_KEY, RawClient, assert_switching_protocols, client_frame,
    fresh_key, op, upgrade_request,
};
use crate::support::server::TestServer;

/// Sends `request` on a fresh connection and returns the response, after
/// checking that the server then closed the connection.
fn exchange(server: &TestServer, request: &str) -> HttpResponse {
    let mut client = RawClient::connect(server.addr);
    client.send(request.as_bytes());
    let response = client.read_http_response();
    client.expect_eof();
    response
}

/// Every refusal: the status, a short plain-text body whose length matches
/// `Content-Length`, and `Connection: close`.
fn assert_error_response(response: &HttpResponse, status: u16) {
    assert_eq!(response.status, status, "{response:?}");
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    assert!(
        !response.body.is_empty() && response.body.len() < 512,
        "body should be a short explanation: {:?}",
        response.body_text()
    );
    assert!(
        response
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "{response:?}"
    );
}

/// A valid upgrade request with the header lines in `lines` (each without CRLF).
fn request_with(request_line: &str, lines: &[&str]) -> String {
    let mut out = format!("{request_line}\r\n");
    for line in lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

const HOST: &str = "Host: localhost";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn health_check_answers_200_ok_and_keeps_http_1_1_connections_alive() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    // HTTP/1.1 keeps the connection: two checks in a row on one socket.
    for _ in 0..2 {
        client.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let response = client.read_http_response();
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, b"ok\n");
        assert_eq!(response.header("Content-Length"), Some("3"));
        assert_eq!(response.header("Connection"), None);
    }
}

#[test]
fn health_check_with_connection_close_answers_200_ok_and_closes() {
    let server = TestServer::start();
    let response = exchange(
        &server,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"ok\n");
}

#[test]
fn unknown_path_is_404() {
    let server = TestServer::start();
    let response = exchange(&server, &upgrade_request("/nope", "localhost", RFC_KEY));
    assert_error_response(&response, 404);
}

#[test]
fn wrong_method_on_route_is_405_with_allow_get() {
    let server = TestServer::start();
    let request = request_with(
        "POST /echo HTTP/1.1",
        &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
    );
    let response = exchange(&server, &request);
    assert_error_response(&response, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
}

#[test]
fn http_1_0_upgrade_is_400() {
    let server = TestServer::start();
    let request = request_with(
        "GET /echo HTTP/1.0",
        &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
    );
    assert_error_response(&exchange(&server, &request), 400);
}

#[test]
fn missing_host_is_400() {
    let server = TestServer::start();
    let request = request_with("GET /echo HTTP/1.1", &[UPGRADE, CONNECTION, KEY, VERSION]);
    assert_error_response(&exchange(&server, &request), 400);
}

#[test]
fn plain_get_without_upgrade_is_426_naming_websocket_and_version() {
    let server = TestServer::start();
    let response = exchange(&server, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_error_response(&response, 426);
    assert!(
        response
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
    assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
}

#[test]
fn connection_header_without_upgrade_token_is_400() {
    let server = TestServer::start();
    for connection in ["Connection: keep-alive", "Connection: close"] {
        let request = request_with(
            "GET /echo HTTP/1.1",
            &[HOST, UPGRADE, connection, KEY, VERSION],
        );
        assert_error_response(&exchange(&server, &request), 400);
    }
    // No Connection header at all.
    let request = request_with("GET /echo HTTP/1.1", &[HOST, UPGRADE, KEY, VERSION]);
    assert_error_response(&exchange(&server, &request), 400);
}

#[test]
fn websocket_version_8_is_426_advertising_13() {
    let server = TestServer::start();
    let request = request_with(
        "GET /echo HTTP/1.1",
        &[HOST, UPGRADE, CONNECTION, KEY, "Sec-WebSocket-Version: 8"],
    );
    let response = exchange(&server, &request);
    assert_error_response(&response, 426);
    assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
}

#[test]
fn key_that_is_not_base64_of_16_bytes_is_400() {
    let server = TestServer::start();
    let bad_keys = [
        "Sec-WebSocket-Key: not base64!!",
        // base64 of 15 and 17 bytes.
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA",
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=",
        "Sec-WebSocket-Key: ",
    ];
    for key in bad_keys {
        let request = request_with(
            "GET /echo HTTP/1.1",
            &[HOST, UPGRADE, CONNECTION, key, VERSION],
        );
        let response = exchange(&server, &request);
        assert_error_response(&response, 400);
    }
    // No key at all.
    let request = request_with("GET /echo HTTP/1.1", &[HOST, UPGRADE, CONNECTION, VERSION]);
    assert_error_response(&exchange(&server, &request), 400);
}

/// A request whose head is exactly `total` bytes long, padded through one
/// extra header.
fn request_of_length(total: usize) -> String {
    let base = request_with(
        "GET /echo HTTP/1.1",
        &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
    );
    let overhead = base.len() + "X-Pad: \r\n".len();
    let pad = "p".repeat(total - overhead);
    let request = request_with(
        "GET /echo HTTP/1.1",
        &[
            HOST,
            UPGRADE,
            CONNECTION,
            KEY,
            VERSION,
            &format!("X-Pad: {pad}"),
        ],
    );
    assert_eq!(request.len(), total);
    request
}

#[test]
fn head_of_exactly_8_kib_is_accepted() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    client.send(request_of_length(8 * 1024).as_bytes());
    let response = client.read_http_response();
    assert_switching_protocols(&response, RFC_KEY);
}

#[test]
fn head_over_8_kib_is_431() {
    let server = TestServer::start();
    let response = exchange(&server, &request_of_length(8 * 1024 + 1));
    assert_error_response(&response, 431);
    let response = exchange(&server, &request_of_length(16 * 1024));
    assert_error_response(&response, 431);
}

/// A valid request carrying `count` header fields in total.
fn request_with_header_count(count: usize) -> String {
    let mut lines: Vec<String> = [HOST, UPGRADE, CONNECTION, KEY, VERSION]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for i in lines.len()..count {
        lines.push(format!("X-Extra-{i}: {i}"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    request_with("GET /echo HTTP/1.1", &refs)
}

#[test]
fn sixty_four_headers_are_accepted() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    client.send(request_with_header_count(64).as_bytes());
    assert_switching_protocols(&client.read_http_response(), RFC_KEY);
}

#[test]
fn sixty_five_headers_are_431() {
    let server = TestServer::start();
    let request = request_with_header_count(65);
    assert!(request.len() < 8 * 1024, "must fail on count, not size");
    assert_error_response(&exchange(&server, &request), 431);
}

#[test]
fn rfc_sample_key_gets_rfc_sample_accept() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    client.send(upgrade_request("/echo", "server.example.com", RFC_KEY).as_bytes());
    let response = client.read_http_response();
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
    assert_switching_protocols(&response, RFC_KEY);
    // The upgraded connection works.
    client.send_text("hello");
    assert_eq!(client.expect_text(), "hello");
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let server = TestServer::start();
    let key = fresh_key();
    let request = format!(
        "GET /echo HTTP/1.1\r\n\
         hOsT: localhost\r\n\
         UPGRADE: WebSocket\r\n\
         connection: upgrade\r\n\
         SEC-WEBSOCKET-KEY: {key}\r\n\
         sec-websocket-version: 13\r\n\r\n"
    );
    let mut client = RawClient::connect(server.addr);
    client.send(request.as_bytes());
    assert_switching_protocols(&client.read_http_response(), &key);
    client.send_binary(&[1, 2, 3]);
    assert_eq!(client.expect_message(op::BINARY), [1, 2, 3]);
}

#[test]
fn connection_keep_alive_upgrade_list_is_accepted() {
    let server = TestServer::start();
    let key = fresh_key();
    let request = format!(
        "GET /echo HTTP/1.1\r\n\
         Host: localhost\r\n\
         Upgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut client = RawClient::connect(server.addr);
    client.send(request.as_bytes());
    assert_switching_protocols(&client.read_http_response(), &key);
}

#[test]
fn request_sent_one_byte_per_write_completes() {
    let server = TestServer::start();
    let key = fresh_key();
    let mut client = RawClient::connect(server.addr);
    let request = upgrade_request("/echo", "localhost", &key);
    client.send_bytewise(request.as_bytes(), Duration::from_millis(1));
    assert_switching_protocols(&client.read_http_response(), &key);
    // A frame sent the same way is assembled too.
    client.send_bytewise(
        &client_frame(true, op::TEXT, b"drip"),
        Duration::from_millis(1),
    );
    assert_eq!(client.expect_text(), "drip");
}

#[test]
fn frames_in_the_same_write_as_the_request_are_not_lost() {
    let server = TestServer::start();
    let key = fresh_key();
    let mut client = RawClient::connect(server.addr);
    let mut bytes = upgrade_request("/echo", "localhost", &key).into_bytes();
    bytes.extend(client_frame(true, op::TEXT, b"first"));
    bytes.extend(client_frame(true, op::BINARY, b"second"));
    bytes.extend(client_frame(true, op::PING, b"third"));
    client.send(&bytes);
    assert_switching_protocols(&client.read_http_response(), &key);
    assert_eq!(client.expect_text(), "first");
    assert_eq!(client.expect_message(op::BINARY), b"second");
    assert_eq!(client.expect_message(op::PONG), b"third");
}

#[test]
fn frame_starting_in_the_request_write_is_completed_later() {
    // The end of the head and the start of a frame arrive in one write, the
    // rest of the frame later: the server must keep the partial frame.
    let server = TestServer::start();
    let key = fresh_key();
    let mut client = RawClient::connect(server.addr);
    let frame = client_frame(true, op::TEXT, b"split across writes");
    let mut first = upgrade_request("/echo", "localhost", &key).into_bytes();
    first.extend_from_slice(&frame[..5]);
    client.send(&first);
    assert_switching_protocols(&client.read_http_response(), &key);
    std::thread::sleep(Duration::from_millis(50));
    client.send(&frame[5..]);
    assert_eq!(client.expect_text(), "split across writes");
}
