//! Handshake policies on real sockets: Origin allow-lists, subprotocol
//! selection, and the per-address connection limit.

use std::time::Duration;

use wshub::config::RouteConfig;

use crate::support::client::{ECHO_PATH, RawClient, fresh_key, upgrade_request_with};
use crate::support::server::TestServer;

/// An upgrade request on `/echo` with extra header lines.
fn upgrade_with(extra: &str) -> String {
    upgrade_request_with(ECHO_PATH, "localhost", &fresh_key(), extra)
}

#[test]
fn listed_origin_and_no_origin_pass_others_get_403() {
    let server = TestServer::with(|c| {
        c.allowed_origins = vec!["https://app.example".to_owned()];
    });
    for (origin, status) in [
        ("Origin: https://app.example\r\n", 101),
        ("Origin: HTTPS://App.Example\r\n", 101),
        ("", 101),
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://app.example:444\r\n", 403),
        ("Origin: null\r\n", 403),
    ] {
        let mut client = RawClient::connect(server.addr);
        client.send(upgrade_with(origin).as_bytes());
        let response = client.read_http_response();
        assert_eq!(response.status, status, "{origin:?}");
        if status == 403 {
            assert!(!response.body.is_empty(), "a refusal says why");
            client.expect_eof();
        } else {
            client.send_text("still echoes");
            assert_eq!(client.expect_text(), "still echoes");
        }
    }
}

#[test]
fn every_origin_passes_when_the_list_is_empty() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    client.send(upgrade_with("Origin: https://anywhere.example\r\n").as_bytes());
    assert_eq!(client.read_http_response().status, 101);
}

fn chat_server(required: bool) -> TestServer {
    TestServer::with(|c| {
        let mut route = RouteConfig::new("/echo", wshub::config::RouteKind::Echo);
        route.subprotocols = vec!["chat.v2".to_owned(), "chat.v1".to_owned()];
        route.require_subprotocol = required;
        c.routes = vec![route];
    })
}

#[test]
fn server_answers_with_the_clients_first_supported_subprotocol() {
    let server = chat_server(false);
    let cases = [
        (
            "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n",
            Some("chat.v1"),
        ),
        (
            "Sec-WebSocket-Protocol: other\r\nSec-WebSocket-Protocol: chat.v2\r\n",
            Some("chat.v2"),
        ),
        ("Sec-WebSocket-Protocol: other\r\n", None),
        ("", None),
    ];
    for (offer, chosen) in cases {
        let mut client = RawClient::connect(server.addr);
        client.send(upgrade_with(offer).as_bytes());
        let response = client.read_http_response();
        assert_eq!(response.status, 101, "{offer:?}");
        assert_eq!(
            response.header("Sec-WebSocket-Protocol"),
            chosen,
            "{offer:?}"
        );
    }
}

#[test]
fn required_subprotocol_refuses_clients_offering_none() {
    let server = chat_server(true);
    let mut client = RawClient::connect(server.addr);
    client.send(upgrade_with("Sec-WebSocket-Protocol: other\r\n").as_bytes());
    let response = client.read_http_response();
    assert_eq!(response.status, 400);
    assert!(response.body_text().contains("chat.v2"), "{response:?}");
    client.expect_eof();

    let mut client = RawClient::connect(server.addr);
    client.send(upgrade_with("").as_bytes());
    assert_eq!(client.read_http_response().status, 400);

    let mut client = RawClient::connect(server.addr);
    client.send(upgrade_with("Sec-WebSocket-Protocol: chat.v2\r\n").as_bytes());
    let response = client.read_http_response();
    assert_eq!(response.status, 101);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), Some("chat.v2"));
}

#[test]
fn connections_beyond_the_per_address_limit_get_429_until_one_closes() {
    let server = TestServer::with(|c| c.max_connections_per_ip = 3);
    let mut held: Vec<RawClient> = (0..3).map(|_| server.client()).collect();
    let mut extra = RawClient::connect(server.addr);
    let response = extra.read_http_response();
    assert_eq!(response.status, 429);
    assert!(response.header("Retry-After").is_some());
    extra.expect_eof();

    // Giving one back makes room for exactly one more.
    drop(held.pop());
    let mut admitted = None;
    for _ in 0..50 {
        let mut client = RawClient::connect(server.addr);
        client.send(upgrade_with("").as_bytes());
        client.set_read_timeout(Duration::from_secs(5));
        let response = client.read_http_response();
        if response.status == 101 {
            admitted = Some(client);
            break;
        }
        assert_eq!(response.status, 429);
        // The server has not seen the close yet.
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut admitted = admitted.expect("a slot frees up once a connection closes");
    admitted.send_text("in");
    assert_eq!(admitted.expect_text(), "in");
    for client in &mut held {
        client.send_text("old ones stay");
        assert_eq!(client.expect_text(), "old ones stay");
    }
}
