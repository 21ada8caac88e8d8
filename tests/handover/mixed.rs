//! What else a daemon serves through a handover: TLS connections are not
//! handed over (they get 1012 and reconnect to the new process), an idle
//! keep-alive HTTP connection goes on working, an event stream (Server-Sent
//! Events) goes on with the next event, and with history on a
//! metadata client keeps its positions (the epoch does not change), so a
//! client recovering from a position taken before the handover gets
//! exactly what followed it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::common::{LIVE, Publisher, config, write_config};
use crate::support::client::{RawClient, connect_tcp};
use crate::support::daemon::Daemon;
use crate::support::handover::{HANDOVER_TIMEOUT, upgrade, wait_for_nth};
use crate::support::positions::{At, json, message};
use crate::support::tempdir::TempDir;
use crate::support::tls::{Identity, TlsStream, client_config, wss_connect};

const CHANNEL: &str = "mixed";

/// The address after `marker` in the first log line holding it.
fn address(daemon: &Daemon, marker: &str) -> SocketAddr {
    let line = wait_for_nth(daemon, marker, 1, HANDOVER_TIMEOUT);
    let (_, rest) = line.split_once(marker).expect("the marker");
    rest.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn wss(
    addr: SocketAddr,
    roots: &Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).expect("connect to the TLS listener");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    wss_connect(tcp, Arc::clone(roots), path)
}

fn text(socket: &mut WebSocket<TlsStream<TcpStream>>) -> String {
    match socket.read().expect("a message over TLS") {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// An event stream on `path`, its `200` head read.
fn event_stream(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut stream = connect_tcp(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request =
        format!("GET {path}?sse=1 HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("a status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header line");
        if line == "\r\n" {
            return reader;
        }
    }
}

/// The data of the next text message on an event stream: an event with a
/// `data:` line and no `event:` line (comments, ids and the server's own
/// events, such as its position, skipped).
fn next_data(reader: &mut BufReader<TcpStream>) -> String {
    let (mut kind, mut data) = (None, None);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("an event line");
        assert!(n > 0, "the event stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if let (None, Some(data)) = (kind.take(), data.take()) {
                return data;
            }
        } else if let Some(value) = line.strip_prefix("event: ") {
            kind = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(value.to_owned());
        }
    }
}

#[test]
fn tls_reconnects_with_1012_keep_alive_and_positions_carry_on() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-mixed");
    let identity = Identity::new(&[0x16, 0x01]);
    let (cert, key) = identity.write_to(&dir);
    let tls_listener = format!(
        "\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let path = write_config(&dir, &config("", &tls_listener, "history_size = 100"));
    let daemon = Daemon::start(&path, &[]);
    let addr = address(&daemon, "listening on ws://");
    let tls_addr = address(&daemon, "listening on wss://");
    let roots = client_config(&[&identity.der], false);
    let channel_path = format!("{LIVE}/{CHANNEL}");

    let mut secure = wss(tls_addr, &roots, &channel_path);
    let mut events = event_stream(addr, &channel_path);
    let mut keep_alive = RawClient::connect(addr);
    assert_eq!(keep_alive.get("/healthz").status, 200);
    let mut meta = RawClient::open(addr, &format!("{channel_path}?meta=1"));
    let subscribed = json(&mut meta);
    assert_eq!(subscribed["subscribed"], true, "{subscribed}");
    let epoch = At::of(&subscribed).epoch;
    let mut publisher = Publisher::new(addr);
    for i in 1..=3u64 {
        let answer = publisher.publish(CHANNEL, &format!("before {i}"));
        assert_eq!(
            At::of(&answer),
            At {
                epoch: epoch.clone(),
                offset: i
            }
        );
        assert_eq!(text(&mut secure), format!("before {i}"));
        assert_eq!(next_data(&mut events), format!("before {i}"));
    }

    let handover = upgrade(&daemon, daemon.pid());
    eprintln!("{} / {}", handover.handed, handover.taken);

    // TLS: the ordinary restart close (the client comes back below).
    match secure.read().expect("a close over TLS") {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Restart, "{frame:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let _ = secure.flush();
    drop(secure);

    for i in 4..=6u64 {
        let answer = publisher.publish(CHANNEL, &format!("after {i}"));
        assert_eq!(
            At::of(&answer),
            At {
                epoch: epoch.clone(),
                offset: i
            },
            "same epoch"
        );
        assert_eq!(next_data(&mut events), format!("after {i}"), "event stream");
    }
    for i in 1..=6u64 {
        let (at, body) = message(&mut meta);
        assert_eq!(
            at,
            At {
                epoch: epoch.clone(),
                offset: i
            }
        );
        let when = if i <= 3 { "before" } else { "after" };
        assert_eq!(body, format!("{when} {i}"));
    }
    assert_eq!(keep_alive.get("/healthz").status, 200, "keep-alive after");

    // A position from before the handover recovers what followed it.
    let query = At {
        epoch: epoch.clone(),
        offset: 2,
    }
    .query(CHANNEL);
    let mut back = RawClient::open(addr, &format!("{channel_path}?{query}"));
    let answer = json(&mut back);
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["replayed"], 4, "{answer}");
    for i in 3..=6u64 {
        let (at, _) = message(&mut back);
        assert_eq!(at.offset, i);
    }

    // The TLS client comes back, to the new process's TLS listener.
    wait_for_nth(&daemon, "listening on wss://", 2, Duration::from_secs(5));
    let mut secure = wss(tls_addr, &roots, &channel_path);
    publisher.publish(CHANNEL, "tls is back");
    assert_eq!(text(&mut secure), "tls is back");

    let mut daemon = daemon;
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let mut successor = handover.successor;
    successor.signal(Signal::TERM);
    drop((secure, events, meta, back, keep_alive));
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
}
