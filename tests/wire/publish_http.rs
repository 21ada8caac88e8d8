//! The HTTP publish API on real sockets: answers, text or binary frames,
//! refusals that deliver nothing, bearer-token access, and HTTP/1.1
//! keep-alive with pipelining, dribbled bodies and `Expect: 100-continue`.

use std::time::Duration;

use wshub::config::{ClientMessages, Config};

use crate::support::client::{
    HttpResponse, RawClient, assert_switching_protocols, fresh_key, op, upgrade_request,
};
use crate::support::data::{binary_payload, text_payload};
use crate::support::http::{
    assert_published, get_request, publish_request, publish_request_with, published_json,
    without_position,
};
use crate::support::server::{TestServer, broadcast_config};

/// `max_message_size` of the servers here, so 413 is cheap to provoke.
const MAX_MESSAGE: usize = 64 * 1024;

fn config() -> Config {
    let mut config = broadcast_config(ClientMessages::Ignore, false);
    config.max_message_size = MAX_MESSAGE as u64;
    config.max_frame_size = MAX_MESSAGE as u64;
    config
}

fn server() -> TestServer {
    TestServer::with_config(config())
}

fn token_server() -> TestServer {
    let mut config = config();
    config.publish_token = Some("tok".into());
    TestServer::with_config(config)
}

fn subscribe(server: &TestServer, channel: &str) -> RawClient {
    RawClient::open(server.addr, &format!("/live/{channel}"))
}

/// Sends `request` on a fresh connection and expects a refusal with
/// `status` after which the server closes the connection.
fn refused(server: &TestServer, request: &[u8], status: u16) -> HttpResponse {
    let mut client = RawClient::connect(server.addr);
    client.send(request);
    let response = client.read_http_response();
    let shown = String::from_utf8_lossy(&request[..request.len().min(120)]);
    assert_eq!(response.status, status, "{shown:?}: {response:?}");
    assert!(
        !response.body.is_empty(),
        "{shown:?}: refusal without a reason"
    );
    assert_eq!(
        response.header("Connection"),
        Some("close"),
        "{shown:?}: {response:?}"
    );
    client.expect_eof();
    response
}

#[test]
fn publish_answers_json_with_the_recipient_count() {
    let server = server();
    let mut a = subscribe(&server, "news");
    let mut b = subscribe(&server, "news");
    let mut http = RawClient::connect(server.addr);

    let response = http.publish("news", Some("text/plain"), b"hello");
    assert_eq!(response.status, 200);
    assert_eq!(
        without_position(response.body_text()),
        published_json("news", 2)
    );
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.header("Connection"), None, "keep-alive expected");
    assert_eq!(a.expect_text(), "hello");
    assert_eq!(b.expect_text(), "hello");

    // Nobody listens on this one; still a success.
    let response = http.publish("empty-room", Some("text/plain"), b"anyone?");
    assert_eq!(response.body_text(), published_json("empty-room", 0));
    a.expect_silence(Duration::from_millis(100));
}

#[test]
fn content_type_selects_text_or_binary_frames() {
    let server = server();
    let mut sub = subscribe(&server, "ct");
    let mut http = RawClient::connect(server.addr);
    let unicode = text_payload(500);
    let cases: &[(Option<&str>, u8)] = &[
        (Some("text/plain"), op::TEXT),
        (Some("text/html; charset=utf-8"), op::TEXT),
        (Some("TEXT/Plain"), op::TEXT),
        (Some("application/json"), op::TEXT),
        (Some("Application/JSON ; charset=utf-8"), op::TEXT),
        (None, op::BINARY),
        (Some("application/octet-stream"), op::BINARY),
        (Some("image/png"), op::BINARY),
        (Some("application/jsonx"), op::BINARY),
    ];
    for (content_type, opcode) in cases {
        assert_eq!(http.publish_ok("ct", *content_type, unicode.as_bytes()), 1);
        let frame = sub.read_server_frame();
        assert_eq!(frame.opcode, *opcode, "{content_type:?}");
        assert!(
            frame.payload == unicode.as_bytes(),
            "{content_type:?}: payload"
        );
    }
    // Binary bodies go through untouched, whatever their bytes.
    let data = binary_payload(MAX_MESSAGE, 9);
    assert_eq!(http.publish_ok("ct", None, &data), 1);
    assert_eq!(sub.expect_message(op::BINARY), data);
    // So does an empty body.
    assert_eq!(http.publish_ok("ct", None, b""), 1);
    assert_eq!(sub.expect_message(op::BINARY), b"");
    assert_eq!(http.publish_ok("ct", Some("text/plain"), b""), 1);
    assert_eq!(sub.expect_text(), "");
}

#[test]
fn refused_publishes_deliver_nothing() {
    let server = server();
    let mut sub = subscribe(&server, "news");
    let too_long = "n".repeat(129);

    // 404: not under the publish prefix.
    refused(
        &server,
        b"POST /nothing/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbad",
        404,
    );
    refused(
        &server,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbad",
        404,
    );
    refused(
        &server,
        b"POST /publisher/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbad",
        404,
    );
    // 405: publishing takes POST.
    let response = refused(&server, &get_request("/publish/news"), 405);
    assert_eq!(response.header("Allow"), Some("POST"));
    let response = refused(
        &server,
        b"PUT /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbad",
        405,
    );
    assert_eq!(response.header("Allow"), Some("POST"));
    // 411: neither a length nor a chunked body.
    refused(
        &server,
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\n\r\n",
        411,
    );
    // 501: a transfer coding other than chunked before the final chunked.
    refused(
        &server,
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          3\r\nbad\r\n0\r\n\r\n",
        501,
    );
    // 413: over max_message_size, refused before the body is sent.
    refused(
        &server,
        format!(
            "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_MESSAGE + 1
        )
        .as_bytes(),
        413,
    );
    // A client that asks first gets the refusal instead of 100 Continue.
    refused(
        &server,
        format!(
            "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            MAX_MESSAGE + 1
        )
        .as_bytes(),
        413,
    );
    // 400: bad channel names, ambiguous framing.
    for path in [
        "/publish/bad%20name",
        "/publish/a/b",
        "/publish/",
        &format!("/publish/{too_long}"),
    ] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbad");
        let response = refused(&server, request.as_bytes(), 400);
        assert!(
            response.body_text().contains("invalid channel name"),
            "{path}: {response:?}"
        );
    }
    refused(
        &server,
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\n\r\nbad",
        400,
    );
    refused(
        &server,
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nbad",
        400,
    );
    // 417: an expectation other than 100-continue.
    refused(
        &server,
        b"POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: magic\r\n\r\nbad",
        417,
    );

    // 400 for a text body that is not UTF-8; the connection stays usable.
    let mut http = RawClient::connect(server.addr);
    let response = http.publish("news", Some("text/plain"), b"bad \xff\xfe text");
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.body_text().contains("UTF-8"), "{response:?}");
    assert_eq!(response.header("Connection"), None, "{response:?}");
    // The same bytes as binary are fine.
    assert_eq!(http.publish_ok("news", None, b"first \xff\xfe good"), 1);

    // Nothing refused reached the subscriber: the good publish comes first.
    assert_eq!(sub.expect_message(op::BINARY), b"first \xff\xfe good");
    sub.expect_silence(Duration::from_millis(100));
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_publishes_total"), 1);
    assert_eq!(metrics.value("wshub_deliveries_total"), 1);
}

#[test]
fn body_of_exactly_max_message_size_is_published() {
    let server = server();
    let mut sub = subscribe(&server, "big");
    let mut http = RawClient::connect(server.addr);
    let data = binary_payload(MAX_MESSAGE, 1);
    assert_eq!(http.publish_ok("big", None, &data), 1);
    assert_eq!(sub.expect_message(op::BINARY), data);
}

#[test]
fn publish_token_is_required_when_configured() {
    let server = token_server();
    let mut sub = subscribe(&server, "news");
    let body = b"unauthorized";
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer to\r\n",
        "Authorization: Bearer tokk\r\n",
        "Authorization: Basic tok\r\n",
        "Authorization: tok\r\n",
    ] {
        let request = publish_request_with("news", Some("text/plain"), auth, body);
        let response = refused(&server, &request, 401);
        assert_eq!(
            response.header("WWW-Authenticate"),
            Some("Bearer"),
            "{auth:?}"
        );
    }
    // Metrics sit behind the same token.
    let response = refused(&server, &get_request("/metrics"), 401);
    assert_eq!(response.header("WWW-Authenticate"), Some("Bearer"));

    let mut http = RawClient::connect(server.addr);
    let request = publish_request_with(
        "news",
        Some("text/plain"),
        "Authorization: Bearer tok\r\n",
        b"authorized",
    );
    http.send(&request);
    assert_published(&http.read_http_response(), "news");
    // The scheme is case-insensitive.
    let request = publish_request_with(
        "news",
        Some("text/plain"),
        "Authorization: bearer tok\r\n",
        b"again",
    );
    http.send(&request);
    assert_published(&http.read_http_response(), "news");
    assert_eq!(sub.expect_text(), "authorized");
    assert_eq!(sub.expect_text(), "again");
    sub.expect_silence(Duration::from_millis(100));

    http.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n");
    let response = http.read_http_response();
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .body_text()
            .contains("wshub_requests_refused_total{reason=\"unauthorized\"} 7\n"),
        "{}",
        response.body_text()
    );
    // The health check needs no token.
    assert_eq!(http.get("/healthz").status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = server();
    let mut sub = subscribe(&server, "pipe");
    let mut http = RawClient::connect(server.addr);
    let mut batch = publish_request("pipe", Some("text/plain"), b"one");
    batch.extend(publish_request("pipe", None, b"two"));
    batch.extend(get_request("/healthz"));
    http.send(&batch);

    assert_eq!(assert_published(&http.read_http_response(), "pipe"), 1);
    assert_eq!(assert_published(&http.read_http_response(), "pipe"), 1);
    let health = http.read_http_response();
    assert_eq!((health.status, health.body_text()), (200, "ok\n"));
    assert_eq!(sub.expect_text(), "one");
    assert_eq!(sub.expect_message(op::BINARY), b"two");

    // A longer pipeline, mixing channels, in one write.
    let mut other = subscribe(&server, "other");
    let mut batch = Vec::new();
    for i in 0..50usize {
        let channel = if i.is_multiple_of(5) { "other" } else { "pipe" };
        batch.extend(publish_request(
            channel,
            Some("text/plain"),
            format!("msg {i}").as_bytes(),
        ));
    }
    http.send(&batch);
    for i in 0..50usize {
        let channel = if i.is_multiple_of(5) { "other" } else { "pipe" };
        assert_eq!(assert_published(&http.read_http_response(), channel), 1);
    }
    for i in 0..50usize {
        let client = if i.is_multiple_of(5) {
            &mut other
        } else {
            &mut sub
        };
        assert_eq!(client.expect_text(), format!("msg {i}"));
    }
    // The connection is still good afterwards.
    assert_eq!(http.get("/healthz").body_text(), "ok\n");
}

#[test]
fn request_and_body_delivered_one_byte_per_write() {
    let server = server();
    let mut sub = subscribe(&server, "slow");
    let mut http = RawClient::connect(server.addr);
    let body = text_payload(300);
    let request = publish_request("slow", Some("text/plain; charset=utf-8"), body.as_bytes());
    http.send_bytewise(&request, Duration::ZERO);
    assert_eq!(assert_published(&http.read_http_response(), "slow"), 1);
    assert_eq!(sub.expect_text(), body);

    // Head whole, body in 1-byte writes with pauses, so the server sees
    // many separate reads.
    let body = binary_payload(200, 5);
    let request = publish_request("slow", None, &body);
    let split = request.len() - body.len();
    http.send(&request[..split]);
    http.send_bytewise(&request[split..], Duration::from_micros(500));
    assert_eq!(assert_published(&http.read_http_response(), "slow"), 1);
    assert_eq!(sub.expect_message(op::BINARY), body);

    // A large body in uneven chunks.
    let body = binary_payload(MAX_MESSAGE, 77);
    let request = publish_request("slow", None, &body);
    for chunk in request.chunks(997) {
        http.send(chunk);
    }
    assert_eq!(assert_published(&http.read_http_response(), "slow"), 1);
    assert_eq!(sub.expect_message(op::BINARY), body);
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = server();
    let mut sub = subscribe(&server, "ask");
    let mut http = RawClient::connect(server.addr);
    let body = b"after continue";
    let request = publish_request_with("ask", Some("text/plain"), "Expect: 100-continue\r\n", body);
    let split = request.len() - body.len();
    http.send(&request[..split]);

    let interim = http.read_http_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.headers.is_empty(), "{interim:?}");
    sub.expect_silence(Duration::from_millis(100));

    http.send(&request[split..]);
    assert_eq!(assert_published(&http.read_http_response(), "ask"), 1);
    assert_eq!(sub.expect_text(), "after continue");

    // The connection stays usable, and a client that sends the body without
    // waiting still gets the interim answer first.
    http.send(&request);
    assert_eq!(http.read_http_response().status, 100);
    assert_eq!(assert_published(&http.read_http_response(), "ask"), 1);
    assert_eq!(sub.expect_text(), "after continue");
    // An empty body needs no 100 Continue.
    let request = publish_request_with("ask", None, "Expect: 100-continue\r\n", b"");
    http.send(&request);
    let response = http.read_http_response();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(sub.expect_message(op::BINARY), b"");
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_after_the_answer() {
    let server = server();
    let mut sub = subscribe(&server, "last");
    let mut http = RawClient::connect(server.addr);
    let request = publish_request_with("last", Some("text/plain"), "Connection: close\r\n", b"a");
    http.send(&request);
    let response = http.read_http_response();
    assert_published(&response, "last");
    assert_eq!(response.header("Connection"), Some("close"));
    http.expect_eof();
    assert_eq!(sub.expect_text(), "a");

    let mut old = RawClient::connect(server.addr);
    old.send(
        b"POST /publish/last HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nb",
    );
    let response = old.read_http_response();
    assert_published(&response, "last");
    assert_eq!(response.header("Connection"), Some("close"));
    old.expect_eof();
    assert_eq!(sub.expect_text(), "b");
}

#[test]
fn bad_utf8_refusal_keeps_a_pipelined_connection_going() {
    let server = server();
    let mut sub = subscribe(&server, "news");
    let mut http = RawClient::connect(server.addr);
    let mut batch = publish_request("news", Some("application/json"), b"{\"a\":\"\xc3\"}");
    batch.extend(publish_request(
        "news",
        Some("application/json"),
        b"{\"a\":\"\xc3\xa9\"}",
    ));
    batch.extend(get_request("/healthz"));
    http.send(&batch);
    let response = http.read_http_response();
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(assert_published(&http.read_http_response(), "news"), 1);
    assert_eq!(http.read_http_response().body_text(), "ok\n");
    assert_eq!(sub.expect_text(), "{\"a\":\"\u{e9}\"}");
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn keep_alive_connection_can_upgrade_after_publishing() {
    let server = server();
    let mut client = RawClient::connect(server.addr);
    let key = fresh_key();
    let mut batch = get_request("/healthz");
    batch.extend(publish_request("mine", Some("text/plain"), b"before"));
    batch.extend(upgrade_request("/live/mine", &server.addr.to_string(), &key).into_bytes());
    client.send(&batch);
    assert_eq!(client.read_http_response().body_text(), "ok\n");
    assert_eq!(assert_published(&client.read_http_response(), "mine"), 0);
    assert_switching_protocols(&client.read_http_response(), &key);

    let mut http = RawClient::connect(server.addr);
    assert_eq!(http.publish_ok("mine", Some("text/plain"), b"after"), 1);
    assert_eq!(client.expect_text(), "after");
    client.expect_silence(Duration::from_millis(100));
}

/// A chunked publish request: the head, then each piece of `body` as one
/// chunk (with an extension on the first), the last chunk and `trailers`
/// (raw field lines, each ending in CRLF).
fn chunked_publish(
    channel: &str,
    content_type: Option<&str>,
    extra_headers: &str,
    pieces: &[&[u8]],
    trailers: &str,
) -> Vec<u8> {
    let mut request = chunked_head(channel, content_type, extra_headers);
    for (i, piece) in pieces.iter().enumerate() {
        let ext = if i == 0 { ";piece=first" } else { "" };
        request.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
    request
}

/// The head of a chunked publish request.
fn chunked_head(channel: &str, content_type: Option<&str>, extra_headers: &str) -> Vec<u8> {
    let content_type = content_type
        .map(|ct| format!("Content-Type: {ct}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /publish/{channel} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         {content_type}{extra_headers}\r\n"
    )
    .into_bytes()
}

#[test]
fn chunked_publish_is_delivered_to_subscribers() {
    let server = server();
    let mut sub = subscribe(&server, "chunks");
    let mut http = RawClient::connect(server.addr);

    let request = chunked_publish(
        "chunks",
        Some("text/plain"),
        "",
        &[b"hello", b", ", b"chunked world"],
        "X-Checksum: 42\r\n",
    );
    http.send(&request);
    let response = http.read_http_response();
    assert_eq!(assert_published(&response, "chunks"), 1);
    assert_eq!(response.header("Connection"), None, "keep-alive expected");
    assert_eq!(sub.expect_text(), "hello, chunked world");

    // The same request dribbled one byte per write.
    http.send_bytewise(&request, Duration::ZERO);
    assert_eq!(assert_published(&http.read_http_response(), "chunks"), 1);
    assert_eq!(sub.expect_text(), "hello, chunked world");

    // A binary body of exactly max_message_size in uneven chunks and writes,
    // and an empty chunked body.
    let data = binary_payload(MAX_MESSAGE, 3);
    let pieces: Vec<&[u8]> = data.chunks(4093).collect();
    let request = chunked_publish("chunks", None, "", &pieces, "");
    for write in request.chunks(1531) {
        http.send(write);
    }
    assert_eq!(assert_published(&http.read_http_response(), "chunks"), 1);
    assert_eq!(sub.expect_message(op::BINARY), data);
    http.send(&chunked_publish("chunks", None, "", &[], ""));
    assert_eq!(assert_published(&http.read_http_response(), "chunks"), 1);
    assert_eq!(sub.expect_message(op::BINARY), b"");
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn chunked_publish_is_not_delivered_before_its_last_chunk() {
    let server = server();
    let mut sub = subscribe(&server, "wait");
    let mut http = RawClient::connect(server.addr);
    let request = chunked_publish(
        "wait",
        Some("text/plain"),
        "",
        &[b"all or nothing"],
        "X: 1\r\n",
    );
    // Everything but the final CRLF of the trailer section.
    let (early, last) = request.split_at(request.len() - 2);
    http.send(early);
    sub.expect_silence(Duration::from_millis(150));
    http.expect_silence(Duration::from_millis(10));
    http.send(last);
    assert_eq!(assert_published(&http.read_http_response(), "wait"), 1);
    assert_eq!(sub.expect_text(), "all or nothing");
}

#[test]
fn oversized_chunked_body_is_refused_with_413_and_nothing_delivered() {
    let server = server();
    let mut sub = subscribe(&server, "big");

    // Refused as soon as the size line that crosses the limit arrives: no
    // chunk data follows it here, and none is waited for.
    let half = vec![b'a'; MAX_MESSAGE / 2];
    let mut request = chunked_head("big", None, "");
    request.extend_from_slice(format!("{:x}\r\n", half.len()).as_bytes());
    request.extend_from_slice(&half);
    request.extend_from_slice(format!("\r\n{:x}\r\n", MAX_MESSAGE / 2 + 1).as_bytes());
    let response = refused(&server, &request, 413);
    assert!(
        response.body_text().contains("max_message_size"),
        "{response:?}"
    );
    // One chunk over the limit, announced up front.
    let mut request = chunked_head("big", None, "Expect: 100-continue\r\n");
    request.extend_from_slice(format!("{:x}\r\n", MAX_MESSAGE + 1).as_bytes());
    let mut client = RawClient::connect(server.addr);
    client.send(&request);
    assert_eq!(client.read_http_response().status, 100);
    let response = client.read_http_response();
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.header("Connection"), Some("close"));
    client.expect_eof();

    sub.expect_silence(Duration::from_millis(100));
    let mut http = RawClient::connect(server.addr);
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_publishes_total"), 0);
    assert_eq!(
        metrics.value("wshub_requests_refused_total{reason=\"too_large\"}"),
        2
    );
}

#[test]
fn malformed_chunked_bodies_are_refused_and_deliver_nothing() {
    let server = server();
    let mut sub = subscribe(&server, "news");
    let head = String::from_utf8(chunked_head("news", Some("text/plain"), "")).unwrap();
    let too_many_trailers: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
    let huge_trailer = format!("X: {}\r\n", "v".repeat(9000));
    let cases: &[(String, u16, &str)] = &[
        (format!("{head}z\r\nbad\r\n0\r\n\r\n"), 400, "chunk size"),
        (format!("{head}\r\nbad\r\n0\r\n\r\n"), 400, "chunk size"),
        (format!("{head}3\r\nbadX0\r\n\r\n"), 400, "CRLF"),
        (format!("{head}3\r\nbad\n0\r\n\r\n"), 400, "CRLF"),
        (format!("{head}3\nbad\r\n0\r\n\r\n"), 400, "chunk size"),
        (
            format!("{head}3\r\nbad\r\n0\r\nX 1\r\n\r\n"),
            400,
            "trailer",
        ),
        (
            format!("{head}0\r\n{too_many_trailers}\r\n"),
            431,
            "trailer",
        ),
        (format!("{head}0\r\n{huge_trailer}\r\n"), 431, "trailer"),
        (
            "POST /publish/news HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Transfer-Encoding: gzip\r\n\r\n3\r\nbad\r\n0\r\n\r\n"
                .to_owned(),
            400,
            "chunked",
        ),
        (
            "POST /publish/news HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n\
             3\r\nbad\r\n0\r\n\r\n"
                .to_owned(),
            400,
            "chunked",
        ),
        (
            "POST /publish/news HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nbad\r\n0\r\n\r\n"
                .to_owned(),
            400,
            "HTTP/1.0",
        ),
    ];
    for (request, status, reason) in cases {
        let response = refused(&server, request.as_bytes(), *status);
        assert!(
            response.body_text().contains(reason),
            "{request:?}: {response:?}"
        );
    }
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn pipelined_requests_after_a_chunked_body_are_answered() {
    let server = server();
    let mut sub = subscribe(&server, "pipe");
    let mut http = RawClient::connect(server.addr);
    let mut batch = chunked_publish("pipe", Some("text/plain"), "", &[b"one", b"!"], "");
    batch.extend(publish_request("pipe", None, b"two"));
    batch.extend(chunked_publish(
        "pipe",
        Some("text/plain"),
        "",
        &[b"three"],
        "T: 3\r\n",
    ));
    batch.extend(get_request("/healthz"));
    http.send(&batch);
    for _ in 0..3 {
        assert_eq!(assert_published(&http.read_http_response(), "pipe"), 1);
    }
    let health = http.read_http_response();
    assert_eq!((health.status, health.body_text()), (200, "ok\n"));
    assert_eq!(sub.expect_text(), "one!");
    assert_eq!(sub.expect_message(op::BINARY), b"two");
    assert_eq!(sub.expect_text(), "three");

    // The same batch one byte per write: each request still starts right
    // after the last CRLF of the one before.
    http.send_bytewise(&batch, Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(assert_published(&http.read_http_response(), "pipe"), 1);
    }
    assert_eq!(http.read_http_response().body_text(), "ok\n");
    assert_eq!(sub.expect_text(), "one!");
    assert_eq!(sub.expect_message(op::BINARY), b"two");
    assert_eq!(sub.expect_text(), "three");
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn expect_100_continue_with_a_chunked_body() {
    let server = server();
    let mut sub = subscribe(&server, "ask");
    let mut http = RawClient::connect(server.addr);
    let head = chunked_head("ask", Some("text/plain"), "Expect: 100-continue\r\n");
    http.send(&head);
    let interim = http.read_http_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    sub.expect_silence(Duration::from_millis(100));
    http.send(b"5\r\nafter\r\n9\r\n continue\r\n0\r\n\r\n");
    assert_eq!(assert_published(&http.read_http_response(), "ask"), 1);
    assert_eq!(sub.expect_text(), "after continue");

    // A text body that is not UTF-8 is refused once complete; the
    // connection stays usable.
    let mut request = chunked_head("ask", Some("text/plain"), "");
    request.extend_from_slice(b"2\r\n\xc3\x28\r\n0\r\n\r\n");
    http.send(&request);
    let response = http.read_http_response();
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.header("Connection"), None, "{response:?}");
    assert_eq!(http.get("/healthz").body_text(), "ok\n");
    sub.expect_silence(Duration::from_millis(100));
}
