//! The HTTP side of the server as the tests speak it: publish requests and
//! their JSON answer, plain `GET`s on a keep-alive connection, and the
//! `/metrics` page read series by series.
//!
//! Requests go through `RawClient`; nothing here opens a socket of its own
//! except `metric`, which asks on a fresh connection.

use std::net::SocketAddr;
use std::time::Duration;

use super::client::{HttpResponse, RawClient};
use super::data::eventually;

/// A `POST /publish/<channel>` request with a `Content-Length` body and, if
/// given, a `Content-Type` and further raw header lines (each ending in CRLF).
pub fn publish_request_with(
    channel: &str,
    content_type: Option<&str>,
    extra_headers: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "POST /publish/{channel} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(extra_headers);
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// A plain publish request (no extra headers).
pub fn publish_request(channel: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    publish_request_with(channel, content_type, "", body)
}

/// A `GET` request for `path` on a keep-alive connection.
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The JSON body of a successful publish.
pub fn published_json(channel: &str, recipients: usize) -> String {
    format!("{{\"channel\":\"{channel}\",\"recipients\":{recipients}}}\n")
}

/// A publish answer with its position (`,"epoch":"…","offset":N`, present
/// whenever the channel exists) left out, checked to be well formed.
pub fn without_position(body: &str) -> String {
    let Some((head, rest)) = body.split_once(",\"epoch\":\"") else {
        return body.to_owned();
    };
    let (epoch, rest) = rest
        .split_once("\",\"offset\":")
        .expect("an offset after the epoch");
    assert!(
        epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "{body:?}"
    );
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    assert!(digits > 0, "{body:?}");
    format!("{head}{}", &rest[digits..])
}

/// Asserts a `200` publish answer and returns its recipient count. The
/// answer may carry the message's position (`"epoch":"…","offset":N`), which
/// it does whenever the channel exists.
pub fn assert_published(response: &HttpResponse, channel: &str) -> usize {
    assert_eq!(response.status, 200, "publish failed: {response:?}");
    assert!(
        response
            .header("Content-Type")
            .is_some_and(|v| v.starts_with("application/json")),
        "publish answer content type: {response:?}"
    );
    let body = response.body_text();
    let prefix = format!("{{\"channel\":\"{channel}\",\"recipients\":");
    let body = without_position(body);
    let count = body
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_suffix("}\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected publish answer body {body:?}"));
    assert_eq!(body, published_json(channel, count));
    count
}

impl RawClient {
    /// Sends one publish on this (keep-alive) HTTP connection and returns
    /// the answer.
    pub fn publish(
        &mut self,
        channel: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        self.send(&publish_request(channel, content_type, body));
        self.read_http_response()
    }

    /// Publishes and asserts success, returning the recipient count.
    pub fn publish_ok(&mut self, channel: &str, content_type: Option<&str>, body: &[u8]) -> usize {
        let response = self.publish(channel, content_type, body);
        assert_published(&response, channel)
    }

    /// Sends `GET path` on this (keep-alive) HTTP connection.
    pub fn get(&mut self, path: &str) -> HttpResponse {
        self.send(&get_request(path));
        self.read_http_response()
    }

    /// Fetches `/metrics` on this connection and returns the text.
    pub fn metrics(&mut self) -> MetricsText {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "metrics refused: {response:?}");
        MetricsText(response.body_text().to_owned())
    }
}

/// A `/metrics` page.
#[derive(Clone, Debug)]
pub struct MetricsText(pub String);

impl MetricsText {
    /// The value of one series, named exactly as it appears before the
    /// value, labels included (`wshub_channels`,
    /// `wshub_websocket_connections{route="/live"}`).
    pub fn get(&self, series: &str) -> Option<u64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("non-integer sample {line:?}")),
            )
        })
    }

    /// Like `get`, but the series must be present.
    pub fn value(&self, series: &str) -> u64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series:?} in metrics:\n{}", self.0))
    }
}

/// One series from `GET /metrics` on `addr`, asked on a connection of its
/// own (from 127.0.0.1, which may read it without a token) that the server
/// closes after answering. That connection counts in `wshub_connections`.
pub fn metric(addr: SocketAddr, series: &str) -> u64 {
    let mut client = RawClient::connect(addr);
    client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let response = client.read_http_response();
    assert_eq!(response.status, 200, "metrics refused: {response:?}");
    client.expect_eof();
    MetricsText(response.body_text().to_owned()).value(series)
}

/// Polls `metric` until it equals `want` or `within` passes; returns the
/// last value seen.
pub fn wait_for_metric(addr: SocketAddr, series: &str, want: u64, within: Duration) -> u64 {
    // `eventually` asks at least once.
    let mut value = 0;
    eventually(within, || {
        value = metric(addr, series);
        value == want
    });
    value
}
