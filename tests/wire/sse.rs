//! Server-Sent Events streams on real sockets: the response head and first
//! bytes, published text, JSON and binary arriving as events byte for byte,
//! resume with `Last-Event-ID` (exactly what was missed, then live), what
//! cannot be resumed, origins and CORS, tokens in the query and in the
//! cookie, gauges by transport, reload, TLS, shutdown, a thousand streams
//! beside a thousand WebSockets, and Python's standard library reading a
//! stream as an independent client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustix::process::Signal;
use serde_json::Value;
use wshub::config::{Config, RouteConfig, RouteKind};

use crate::support::client::{RawClient, connect_tcp, op, reset};
use crate::support::daemon::Daemon;
use crate::support::http::{metric, wait_for_metric};
use crate::support::positions::{At, publish_text};
use crate::support::server::{TestServer, test_config};
use crate::support::tempdir::TempDir;
use crate::support::tls::{DualServer, tls_over};

/// A broadcast route that keeps history, and one that keeps none.
const LIVE: &str = "/live";
const PLAIN: &str = "/plain";

fn config(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    let mut live = RouteConfig::new(LIVE, RouteKind::Broadcast);
    live.history_size = 1000;
    live.max_replay = 1000;
    config.routes.push(live);
    config
        .routes
        .push(RouteConfig::new(PLAIN, RouteKind::Broadcast));
    adjust(&mut config);
    config
}

/// One event as a client's parser dispatches it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Event {
    id: Option<String>,
    kind: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

/// A blocking event-stream client: the response head, then events.
struct Stream {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Stream {
    /// Sends the request (with `Accept: text/event-stream` and `extra`
    /// header lines) without reading anything.
    fn request(addr: SocketAddr, path: &str, extra: &str) -> TcpStream {
        let mut stream = connect_tcp(addr);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send");
        stream
    }

    /// Reads the response head of a request sent with [`Stream::request`].
    fn read_head(stream: TcpStream) -> Stream {
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header line");
            let line = line.trim_end_matches("\r\n");
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        Stream {
            reader,
            status,
            headers,
        }
    }

    fn open_with(addr: SocketAddr, path: &str, extra: &str) -> Stream {
        Stream::read_head(Stream::request(addr, path, extra))
    }

    /// A stream that must open: its `200` and first bytes are checked.
    fn open(addr: SocketAddr, path: &str, extra: &str) -> Stream {
        let mut stream = Stream::open_with(addr, path, extra);
        if stream.status != 200 {
            let status = stream.status;
            panic!("{path} refused: {status} {}", stream.body());
        }
        assert_eq!(stream.line(), "retry: 2000");
        assert_eq!(stream.line(), ": wshub event stream");
        assert_eq!(stream.line(), "");
        stream
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The rest of a refusal's body.
    fn body(&mut self) -> String {
        let mut body = String::new();
        let _ = self.reader.read_to_string(&mut body);
        body
    }

    /// One line, without its `\n` (the server ends lines with LF only).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line");
        assert!(n > 0, "the stream ended");
        assert!(line.ends_with('\n'), "{line:?}");
        line.pop();
        assert!(!line.contains('\r'));
        line
    }

    /// The next event (comments and empty blocks skipped), parsed as the
    /// HTML standard says.
    fn event(&mut self) -> Event {
        let (mut id, mut kind, mut data) = (None, String::new(), None::<String>);
        loop {
            let line = self.line();
            if line.is_empty() {
                match data.take() {
                    Some(data) => {
                        let kind = if kind.is_empty() {
                            "message".to_owned()
                        } else {
                            kind
                        };
                        return Event { id, kind, data };
                    }
                    None => {
                        kind.clear();
                        continue;
                    }
                }
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => kind = value.to_owned(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    /// Reads to EOF: what arrived after the last event read.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).expect("read to EOF");
        rest
    }
}

/// The id of a message at `at`.
fn id_of(at: &At) -> String {
    format!("{}:{}", at.epoch, at.offset)
}

/// Publishes `body` with `content_type`; the position, when the channel
/// has one.
fn publish(publisher: &mut RawClient, channel: &str, content_type: &str, body: &[u8]) -> At {
    let response = publisher.publish(channel, Some(content_type), body);
    assert_eq!(response.status, 200, "{}", response.body_text());
    let v: Value = serde_json::from_slice(&response.body).expect("a JSON answer");
    At::of(&v)
}

#[test]
fn the_stream_has_its_headers_and_published_messages_arrive_byte_exact() {
    let server = TestServer::with_config(config(|_| {}));
    let mut stream = Stream::open_with(server.addr, "/live/news", "");
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("Content-Type"), Some("text/event-stream"));
    assert_eq!(stream.header("Cache-Control"), Some("no-cache"));
    assert_eq!(stream.header("X-Accel-Buffering"), Some("no"));
    assert_eq!(stream.header("Connection"), Some("close"));
    assert_eq!(stream.header("Content-Length"), None);
    assert_eq!(stream.header("Transfer-Encoding"), None);
    assert_eq!(stream.header("Access-Control-Allow-Origin"), None);
    assert_eq!(stream.line(), "retry: 2000");
    assert_eq!(stream.line(), ": wshub event stream");
    assert_eq!(stream.line(), "");
    // A fresh stream on a history route is told where the channel stands.
    let position = stream.event();
    assert_eq!(position.kind, "position");
    let at = At::of(&position.json());
    assert_eq!(at.offset, 0);
    assert_eq!(position.id.as_deref(), Some(id_of(&at).as_str()));

    let mut publisher = RawClient::connect(server.addr);
    let text = publish(
        &mut publisher,
        "news",
        "text/plain",
        "héllo wörld".as_bytes(),
    );
    let event = stream.event();
    assert_eq!(
        event,
        Event {
            id: Some(id_of(&text)),
            kind: "message".into(),
            data: "héllo wörld".into()
        }
    );
    let json = br#"{"price": 42, "tags": ["a", "b"]}"#;
    let at = publish(&mut publisher, "news", "application/json", json);
    let event = stream.event();
    assert_eq!(event.data.as_bytes(), json, "the body as published");
    assert_eq!(event.id, Some(id_of(&at)));
    let binary: Vec<u8> = (0..=255u8).chain([0, b'\n', b'\r']).collect();
    let at = publish(&mut publisher, "news", "application/octet-stream", &binary);
    let event = stream.event();
    assert_eq!(event.kind, "binary");
    assert_eq!(event.id, Some(id_of(&at)));
    assert_eq!(STANDARD.decode(&event.data).expect("base64"), binary);
    // Multi-line text: every line break comes back as LF, a trailing one too.
    for (body, expected) in [
        ("one\ntwo\nthree", "one\ntwo\nthree"),
        ("crlf\r\nand cr\rend", "crlf\nand cr\nend"),
        ("trailing\n", "trailing\n"),
        ("\n\nblank lines\n\n", "\n\nblank lines\n\n"),
        ("", ""),
        (" leading space", " leading space"),
        (": not a comment", ": not a comment"),
    ] {
        let at = publish(&mut publisher, "news", "text/plain", body.as_bytes());
        let event = stream.event();
        assert_eq!(event.data, expected, "{body:?}");
        assert_eq!(event.id, Some(id_of(&at)));
    }
}

#[test]
fn a_route_without_history_sends_events_without_ids_and_no_position() {
    let server = TestServer::with_config(config(|_| {}));
    let mut stream = Stream::open(server.addr, "/plain?channel=quiet&sse=1", "");
    let mut publisher = RawClient::connect(server.addr);
    publish_text(&mut publisher, "quiet", "first");
    let event = stream.event();
    assert_eq!(event.id, None, "no position a client could resume from");
    assert_eq!(event.data, "first");
}

#[test]
fn resume_gets_exactly_the_hundred_missed_then_live() {
    let server = TestServer::with_config(config(|_| {}));
    let mut publisher = RawClient::connect(server.addr);
    let mut stream = Stream::open(server.addr, "/live/feed", "");
    assert_eq!(stream.event().kind, "position");
    let first = publish_text(&mut publisher, "feed", "seen").expect("a position");
    assert_eq!(stream.event().id, Some(id_of(&first)));
    drop(stream);

    let missed: Vec<At> = (0..100)
        .map(|i| publish_text(&mut publisher, "feed", &format!("missed {i}")).expect("kept"))
        .collect();
    let header = format!("Last-Event-ID: {}\r\n", id_of(&first));
    let mut stream = Stream::open(server.addr, "/live/feed", &header);
    for (i, at) in missed.iter().enumerate() {
        let event = stream.event();
        assert_eq!(event.kind, "message");
        assert_eq!(event.data, format!("missed {i}"));
        assert_eq!(event.id, Some(id_of(at)));
    }
    let live = publish_text(&mut publisher, "feed", "live").expect("a position");
    let event = stream.event();
    assert_eq!(
        (event.data.as_str(), event.id),
        ("live", Some(id_of(&live)))
    );
    assert_eq!(live.offset, missed[99].offset + 1, "no gap, no duplicate");
    assert_eq!(metric(server.addr, "wshub_recovered_messages_total"), 100);

    // The query form, on a first request; the header wins over it.
    let query = format!("/live/feed?last_event_id={}", id_of(&missed[97]));
    let mut stream = Stream::open(server.addr, &query, "");
    assert_eq!(stream.event().data, "missed 98");
    assert_eq!(stream.event().data, "missed 99");
    assert_eq!(stream.event().data, "live");
    let mut stream = Stream::open(
        server.addr,
        &query,
        &format!("Last-Event-ID: {}\r\n", id_of(&live)),
    );
    let later = publish_text(&mut publisher, "feed", "later").expect("a position");
    let event = stream.event();
    assert_eq!(
        (event.data.as_str(), event.id),
        ("later", Some(id_of(&later)))
    );
}

#[test]
fn an_evicted_or_foreign_position_is_not_recovered_then_live() {
    let server = TestServer::with_config(config(|c| {
        if let Some(live) = c.routes.iter_mut().find(|r| r.path == LIVE) {
            live.history_size = 3;
        }
    }));
    let mut publisher = RawClient::connect(server.addr);
    let _holder = Stream::open(server.addr, "/live/ch", "");
    let first = publish_text(&mut publisher, "ch", "1").expect("a position");
    for i in 2..=6 {
        publish_text(&mut publisher, "ch", &i.to_string());
    }
    let check = |extra: String, reason: &str| {
        let mut stream = Stream::open(server.addr, "/live/ch", &extra);
        let event = stream.event();
        assert_eq!(event.kind, "not-recovered");
        let v = event.json();
        assert_eq!(v["reason"], reason, "{v}");
        assert_eq!(v["recovered"], false);
        assert_eq!(v["offset"], 6);
        let current = At::of(&v);
        assert_eq!(
            event.id,
            Some(id_of(&current)),
            "resume from where it stands"
        );
        stream
    };
    let mut evicted = check(format!("Last-Event-ID: {}\r\n", id_of(&first)), "evicted");
    let other_epoch = format!("Last-Event-ID: 00000000000000aa:{}\r\n", first.offset);
    let mut foreign = check(other_epoch, "epoch");
    let live = publish_text(&mut publisher, "ch", "7").expect("a position");
    for stream in [&mut evicted, &mut foreign] {
        let event = stream.event();
        assert_eq!((event.data.as_str(), event.id), ("7", Some(id_of(&live))));
    }
    assert_eq!(
        metric(
            server.addr,
            "wshub_recoveries_refused_total{reason=\"evicted\"}"
        ),
        1
    );
    // A malformed id, and two channels, are refused with the reason.
    let mut bad = Stream::open_with(server.addr, "/live/ch", "Last-Event-ID: 12\r\n");
    assert_eq!(bad.status, 400);
    assert!(bad.body().contains("malformed event id"));
    let mut two = Stream::open_with(server.addr, "/live?channel=a&channel=b", "");
    assert_eq!(two.status, 400);
    assert!(two.body().contains("one channel"));
}

#[test]
fn origins_are_checked_and_allowed_ones_get_cors_headers() {
    let origin = "https://app.example";
    let server = TestServer::with_config(config(|c| c.allowed_origins = vec![origin.into()]));
    let evil = Stream::open_with(server.addr, "/live/a", "Origin: https://evil.example\r\n");
    assert_eq!(evil.status, 403);
    let stream = Stream::open(server.addr, "/live/a", &format!("Origin: {origin}\r\n"));
    assert_eq!(stream.header("Access-Control-Allow-Origin"), Some(origin));
    assert_eq!(
        stream.header("Access-Control-Allow-Credentials"),
        Some("true")
    );
    assert_eq!(stream.header("Vary"), Some("Origin"));
    assert_eq!(
        metric(
            server.addr,
            "wshub_requests_refused_total{reason=\"forbidden\"}"
        ),
        1
    );
}

#[test]
fn a_token_in_the_query_or_the_cookie_opens_a_stream_its_grants_allow() {
    use jsonwebtoken::{EncodingKey, Header, encode};

    let dir = TempDir::new("sse-auth");
    let secret = "0123456789abcdef0123456789abcdef";
    let secret_file = dir.write("hs.secret", secret);
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/live\"\nkind = \"broadcast\"\nauth = \"app\"\n\
         [auth.app]\nalgorithm = \"HS256\"\nsecret_file = {:?}\n",
        secret_file.display().to_string()
    );
    let server = TestServer::with_config(Config::from_toml_str(&text).expect("config"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({"exp": now + 600, "channels": ["news"]});
    let key = EncodingKey::from_secret(secret.as_bytes());
    let token = encode(&Header::default(), &claims, &key).expect("token");
    assert_eq!(Stream::open_with(server.addr, "/live/news", "").status, 401);
    let ungranted = format!("/live/sports?token={token}");
    assert_eq!(Stream::open_with(server.addr, &ungranted, "").status, 403);
    let mut by_query = Stream::open(server.addr, &format!("/live/news?token={token}"), "");
    let cookie = format!("Cookie: theme=dark; wshub_token={token}\r\n");
    let mut by_cookie = Stream::open(server.addr, "/live/news", &cookie);
    let mut publisher = RawClient::connect(server.addr);
    publish_text(&mut publisher, "news", "granted");
    assert_eq!(by_query.event().data, "granted");
    assert_eq!(by_cookie.event().data, "granted");
}

#[test]
fn shutdown_sends_a_shutdown_event_and_ends_the_stream() {
    let dir = TempDir::new("sse-shutdown");
    let text = "shutdown_timeout = \"5s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                [[route]]\npath = \"/live\"\nkind = \"broadcast\"\n";
    let path = dir.write("wshub.toml", text);
    let mut daemon = Daemon::start(&path, &[]);
    let addr = daemon.listening_address();
    let mut stream = Stream::open(addr, "/live/news", "");
    let mut ws = RawClient::open(addr, "/live/news");
    let mut publisher = RawClient::connect(addr);
    publish_text(&mut publisher, "news", "before");
    assert_eq!(stream.event().data, "before");
    assert_eq!(ws.expect_message(op::TEXT), b"before");
    drop(publisher);
    daemon.signal(Signal::TERM);
    let event = stream.event();
    assert_eq!(
        (event.kind.as_str(), event.data.as_str()),
        ("shutdown", "restart")
    );
    assert_eq!(stream.rest(), "", "then the end of the stream");
    assert_eq!(ws.read_server_frame().close_code(), Some(1001));
    ws.send_close(1001, b"");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
}

#[test]
fn streams_are_counted_apart_until_they_close_or_reset() {
    let server = TestServer::with_config(config(|_| {}));
    let sse = "wshub_sse_connections{route=\"/plain\"}";
    let ws = "wshub_websocket_connections{route=\"/plain\"}";
    let closed = Stream::open(server.addr, "/plain/a", "");
    let reset_one = Stream::open(server.addr, "/plain/a", "");
    let _socket = RawClient::open(server.addr, "/plain/a");
    assert_eq!(metric(server.addr, sse), 2);
    assert_eq!(metric(server.addr, ws), 1);
    assert_eq!(metric(server.addr, "wshub_sse_streams_total"), 2);
    assert_eq!(metric(server.addr, "wshub_handshakes_accepted_total"), 1);
    drop(closed);
    reset(reset_one.reader.into_inner());
    let within = Duration::from_secs(5);
    assert_eq!(wait_for_metric(server.addr, sse, 0, within), 0);
    assert_eq!(metric(server.addr, ws), 1);
    assert_eq!(metric(server.addr, "wshub_subscriptions"), 1);
}

#[test]
fn a_stream_keeps_going_across_a_reload() {
    let dir = TempDir::new("sse-reload");
    let route = "[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n";
    let listener = "[[listener]]\naddress = \"127.0.0.1:0\"\n";
    let path = dir.write("wshub.toml", &format!("{listener}{route}"));
    let mut daemon = Daemon::start(&path, &[]);
    let addr = daemon.listening_address();
    let mut stream = Stream::open(addr, "/live/news", "");
    dir.write(
        "wshub.toml",
        &format!("idle_timeout = \"10m\"\n{listener}{route}"),
    );
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload done");
    let mut publisher = RawClient::connect(addr);
    publish_text(&mut publisher, "news", "after the reload");
    assert_eq!(stream.event().data, "after the reload");
}

#[test]
fn a_stream_over_tls_gets_events_published_on_the_plain_listener() {
    let server = DualServer::start(config(|_| {}));
    let mut tls = tls_over(connect_tcp(server.tls), server.client_config());
    tls.write_all(
        b"GET /plain/secure HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
    )
    .expect("send over TLS");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read_until = |tls: &mut _, needle: &[u8], received: &mut Vec<u8>| {
        while !received.windows(needle.len()).any(|w| w == needle) {
            let n = Read::read(tls, &mut chunk).expect("read over TLS");
            assert!(n > 0, "ended: {}", String::from_utf8_lossy(received));
            received.extend_from_slice(&chunk[..n]);
        }
    };
    read_until(&mut tls, b": wshub event stream\n\n", &mut received);
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut publisher = RawClient::connect(server.plain);
    publish_text(&mut publisher, "secure", "over tls");
    read_until(&mut tls, b"data: over tls\n\n", &mut received);
}

#[test]
fn a_thousand_streams_and_a_thousand_websockets_get_every_message_in_order() {
    const EACH: usize = 1000;
    const MESSAGES: usize = 20;
    let server = TestServer::with_config(config(|_| {}));
    let pending: Vec<TcpStream> = (0..EACH)
        .map(|_| Stream::request(server.addr, "/plain/crowd", ""))
        .collect();
    let mut streams: Vec<Stream> = pending
        .into_iter()
        .map(|s| {
            let mut stream = Stream::read_head(s);
            assert_eq!(stream.status, 200);
            for _ in 0..3 {
                stream.line();
            }
            stream
        })
        .collect();
    let mut sockets: Vec<RawClient> = (0..EACH)
        .map(|_| RawClient::open(server.addr, "/plain/crowd"))
        .collect();
    assert_eq!(
        metric(server.addr, "wshub_sse_connections{route=\"/plain\"}"),
        EACH as u64
    );
    assert_eq!(
        metric(server.addr, "wshub_websocket_connections{route=\"/plain\"}"),
        EACH as u64
    );
    let mut publisher = RawClient::connect(server.addr);
    for i in 0..MESSAGES {
        let response = publisher.publish("crowd", Some("text/plain"), format!("m{i}").as_bytes());
        assert_eq!(response.status, 200);
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            assert_eq!(stream.event().data, format!("m{i}"), "stream {n}");
        }
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let text = socket.expect_message(op::TEXT);
            assert_eq!(text, format!("m{i}").as_bytes(), "websocket {n}");
        }
    }
    let deliveries = metric(server.addr, "wshub_deliveries_total");
    assert_eq!(deliveries, (2 * EACH * MESSAGES) as u64);
}

/// Reads a stream with Python's standard library only (`http.client`), as
/// an independent parser: prints each event's type, id and data as JSON.
const PYTHON_CLIENT: &str = r#"
import http.client, json, sys
host, port, path, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection(host, port, timeout=10)
conn.request("GET", path, headers={"Accept": "text/event-stream"})
resp = conn.getresponse()
assert resp.status == 200, resp.status
assert resp.getheader("Content-Type") == "text/event-stream"
events, data, kind, last_id = [], [], "", ""
while len(events) < want:
    line = resp.readline().decode("utf-8")
    assert line, "the stream ended"
    line = line.rstrip("\r\n")
    if line == "":
        if data:
            events.append({"type": kind or "message", "id": last_id, "data": "\n".join(data)})
        data, kind = [], ""
        continue
    if line.startswith(":"):
        continue
    field, _, value = line.partition(":")
    if value.startswith(" "):
        value = value[1:]
    if field == "data":
        data.append(value)
    elif field == "event":
        kind = value
    elif field == "id":
        last_id = value
print(json.dumps(events))
"#;

#[test]
fn python_reads_a_resumed_stream() {
    let server = TestServer::with_config(config(|_| {}));
    let mut publisher = RawClient::connect(server.addr);
    let _holder = Stream::open(server.addr, "/live/py", "");
    let bodies = ["plain", "two\nlines", "trailing\n"];
    let positions: Vec<At> = bodies
        .iter()
        .map(|b| publish_text(&mut publisher, "py", b).expect("a position"))
        .collect();
    let start = At {
        offset: 0,
        ..positions[0].clone()
    };
    let path = format!("/live/py?last_event_id={}", id_of(&start));
    let output = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .args([
            &server.addr.ip().to_string(),
            &server.addr.port().to_string(),
            &path,
            "3",
        ])
        .output()
        .expect("python3 must be installed to run this test");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON events");
    assert_eq!(events.len(), 3);
    for ((event, body), at) in events.iter().zip(bodies).zip(&positions) {
        assert_eq!(event["type"], "message");
        assert_eq!(event["data"], body);
        assert_eq!(event["id"], id_of(at));
    }
}
