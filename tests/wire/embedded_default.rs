//! The embedded default config (what `cargo run --release` serves) does the
//! main job out of the box: subscribe on `/live/<channel>`, publish from
//! loopback without a token, exactly as the README's "Set up" shows.

use wshub::config::Config;

use crate::support::client::{RawClient, op};
use crate::support::http::{assert_published, publish_request};
use crate::support::server::TestServer;

#[test]
fn curl_data_publish_reaches_a_live_subscriber() {
    let mut config = Config::embedded();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::with_config(config);
    let mut subscriber = RawClient::open(server.addr, "/live/news");
    let mut publisher = RawClient::connect(server.addr);
    // `curl --data hi URL` sends a form content type, so the message is
    // delivered as a binary frame (the README says so).
    publisher.send(&publish_request(
        "news",
        Some("application/x-www-form-urlencoded"),
        b"hi",
    ));
    let response = publisher.read_http_response();
    assert_eq!(assert_published(&response, "news"), 1);
    assert_eq!(subscriber.expect_message(op::BINARY), b"hi");
    // With a text type it is a text frame.
    publisher.send(&publish_request("news", Some("text/plain"), b"hi"));
    let response = publisher.read_http_response();
    assert_eq!(assert_published(&response, "news"), 1);
    assert_eq!(subscriber.expect_text(), "hi");
}

fn get(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> crate::support::client::HttpResponse {
    let mut client = RawClient::connect(addr);
    client.send(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    client.read_http_response()
}

#[test]
fn the_watch_page_is_served_at_the_root_and_only_there() {
    let mut config = Config::embedded();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::with_config(config);
    let page = get(server.addr, "GET", "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("Content-Security-Policy")
            .is_some_and(|p| p.contains("default-src 'none'")),
        "a strict policy: {:?}",
        page.header("Content-Security-Policy")
    );
    assert!(page.body_text().starts_with("<!doctype html>"));
    assert!(page.body_text().contains("new WebSocket("));
    assert!(page.body_text().contains("new EventSource("));
    assert_eq!(get(server.addr, "POST", "/").status, 405);
    assert_eq!(get(server.addr, "GET", "/index.html").status, 404);
}

#[test]
fn the_watch_page_is_off_unless_turned_on() {
    let mut config = Config::embedded();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    config.page = false;
    let server = TestServer::with_config(config);
    assert_eq!(get(server.addr, "GET", "/").status, 404);
}
