//! The closing handshake (RFC 6455 §5.5.1, §7): the server answers a valid
//! close frame with its own and then closes TCP, refuses malformed close
//! frames with the right code, and sends nothing after its close frame.

use crate::support::client::{
    RawClient, client_close, client_frame, close_payload, code, encode_frame, op,
};
use crate::support::server::TestServer;

fn open(server: &TestServer) -> RawClient {
    server.client()
}

#[test]
fn close_1000_with_reason_is_answered_with_1000_then_tcp_close() {
    let server = TestServer::start();
    let mut client = open(&server);
    client.send_close(1000, b"bye");
    let reply = client.expect_close(code::NORMAL);
    assert!(reply.payload.len() <= 125);
}

#[test]
fn empty_close_is_answered_with_1000() {
    let server = TestServer::start();
    let mut client = open(&server);
    client.send_frame(true, op::CLOSE, b"");
    client.expect_close(code::NORMAL);
}

#[test]
fn application_and_private_codes_are_echoed() {
    let server = TestServer::start();
    for sent in [3000, 3999, 4000, 4999] {
        let mut client = open(&server);
        client.send_close(sent, b"app reason");
        client.expect_close(sent);
    }
}

#[test]
fn standard_codes_are_accepted() {
    let server = TestServer::start();
    for sent in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011] {
        let mut client = open(&server);
        client.send_close(sent, b"");
        let reply = client.read_server_frame();
        assert_eq!(reply.opcode, op::CLOSE, "code {sent}: {reply:?}");
        let replied = reply.close_code();
        assert!(
            replied == Some(sent) || replied == Some(code::NORMAL),
            "code {sent} answered with {replied:?}"
        );
        client.expect_eof();
    }
}

#[test]
fn close_frame_with_one_byte_payload_is_1002() {
    let server = TestServer::start();
    let mut client = open(&server);
    client.send(&client_frame(true, op::CLOSE, &[0x03]));
    client.expect_close(code::PROTOCOL_ERROR);
}

#[test]
fn close_codes_not_allowed_on_the_wire_are_1002() {
    let server = TestServer::start();
    for bad in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut client = open(&server);
        client.send_close(bad, b"");
        let reply = client.read_server_frame();
        assert_eq!(reply.opcode, op::CLOSE, "code {bad}: {reply:?}");
        assert_eq!(
            reply.close_code(),
            Some(code::PROTOCOL_ERROR),
            "close code {bad} must be refused"
        );
        client.expect_eof();
    }
}

#[test]
fn close_reason_with_invalid_utf8_is_1007() {
    let server = TestServer::start();
    for reason in [&b"\xFF"[..], b"bye \xC3", b"\xED\xA0\x80"] {
        let mut client = open(&server);
        client.send_close(1000, reason);
        client.expect_close(code::INVALID_PAYLOAD);
    }
}

#[test]
fn close_reason_of_123_bytes_of_utf8_is_accepted() {
    let server = TestServer::start();
    let mut client = open(&server);
    // 41 three-byte characters: 123 bytes, the most a close frame can carry.
    let reason = "€".repeat(41);
    client.send(&client_frame(
        true,
        op::CLOSE,
        &close_payload(4001, reason.as_bytes()),
    ));
    client.expect_close(4001);
}

#[test]
fn nothing_is_sent_after_the_close_reply() {
    let server = TestServer::start();
    let mut client = open(&server);
    let mut bytes = client_close(1000, b"done");
    bytes.extend(client_frame(true, op::TEXT, b"too late"));
    bytes.extend(client_frame(true, op::PING, b"too late"));
    client.send(&bytes);
    // expect_close also asserts that EOF follows with no further bytes.
    client.expect_close(code::NORMAL);
}

#[test]
fn messages_before_the_close_are_echoed_first() {
    let server = TestServer::start();
    let mut client = open(&server);
    let mut bytes = client_frame(true, op::TEXT, b"last words");
    bytes.extend(client_close(1000, b""));
    client.send(&bytes);
    assert_eq!(client.expect_text(), "last words");
    client.expect_close(code::NORMAL);
}

#[test]
fn close_in_the_middle_of_a_fragmented_message_is_answered() {
    let server = TestServer::start();
    let mut client = open(&server);
    let mut bytes = client_frame(false, op::TEXT, b"never ");
    bytes.extend(client_close(1001, b"going away"));
    client.send(&bytes);
    let reply = client.read_server_frame();
    assert_eq!(reply.opcode, op::CLOSE, "{reply:?}");
    assert!(
        matches!(reply.close_code(), Some(1000 | 1001)),
        "reply {reply:?}"
    );
    client.expect_eof();
}

#[test]
fn server_close_after_protocol_error_completes_when_client_replies() {
    let server = TestServer::start();
    let mut client = open(&server);
    client.send(&encode_frame(true, 0, op::TEXT, None, b"unmasked"));
    let frame = client.read_server_frame();
    assert_eq!(frame.close_code(), Some(code::PROTOCOL_ERROR));
    // Replying with our close is allowed and must not provoke anything more.
    client.send_close(code::PROTOCOL_ERROR, b"");
    client.expect_eof();
}

#[test]
fn client_tcp_close_without_close_frame_frees_the_connection() {
    let server = TestServer::with(|c| c.max_connections = 1);
    let client = open(&server);
    client.shutdown_write();
    let mut client = client;
    client.expect_eof();
    drop(client);
    // The one slot is free again.
    let mut next = open(&server);
    next.send_text("again");
    assert_eq!(next.expect_text(), "again");
}
