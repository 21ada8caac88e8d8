//! Server-Sent Events streams on cluster nodes: a fresh stream is told
//! Redis's position, and a stream that comes back on another node with
//! `Last-Event-ID` gets exactly what it missed (read from Redis) as events
//! with their ids, then live events; a foreign position is not recovered.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::support::client::{RawClient, connect_tcp};
use super::support::http::metric;
use super::support::positions::{At, publish_text};
use super::support::redis::Redis;
use super::support::server::{LIVE_PATH, TestServer};
use super::{alone, node_config, wait_healthy, wait_numsub};

/// A node whose `/live` route keeps 1,000 messages per channel.
fn node(redis: &Redis) -> TestServer {
    let mut config = node_config(redis);
    for route in &mut config.routes {
        if route.path == LIVE_PATH {
            route.history_size = 1_000;
            route.max_replay = 1_000;
        }
    }
    let node = TestServer::with_config(config);
    wait_healthy(&node, Duration::from_secs(5));
    node
}

/// An event: its id, type and data.
type Event = (Option<String>, String, String);

/// An open stream, past its head and first bytes.
struct Stream(BufReader<TcpStream>);

impl Stream {
    fn open(addr: SocketAddr, path: &str, extra: &str) -> Stream {
        let mut stream = connect_tcp(addr);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut reader = Stream(BufReader::new(stream));
        assert_eq!(reader.line(), "HTTP/1.1 200 OK\r");
        while reader.line() != "\r" {}
        reader
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert!(self.0.read_line(&mut line).expect("a line") > 0, "ended");
        line.pop();
        line
    }

    /// The next event (comments and blocks without data skipped).
    fn event(&mut self) -> Event {
        let (mut id, mut kind, mut data) = (None, String::from("message"), None::<String>);
        loop {
            let line = self.line();
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return (id, kind, data);
                }
                kind = "message".into();
                continue;
            }
            if line.starts_with(':') || line.starts_with("retry:") {
                continue;
            }
            let (field, value) = line.split_once(": ").expect("a field");
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => kind = value.to_owned(),
                "data" => {
                    let data = data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                other => panic!("unexpected field {other}"),
            }
        }
    }
}

fn id_of(at: &At) -> String {
    format!("{}:{}", at.epoch, at.offset)
}

#[test]
fn a_stream_resumes_on_another_node_from_redis_then_live() {
    let _alone = alone();
    let redis = Redis::start();
    let a = node(&redis);
    let b = node(&redis);
    let mut via_a = RawClient::connect(a.addr);
    let mut via_b = RawClient::connect(b.addr);

    let mut stream = Stream::open(a.addr, "/live/feed", "");
    let (id, kind, data) = stream.event();
    assert_eq!(kind, "position");
    let told: Value = serde_json::from_str(&data).expect("JSON");
    let start = At::of(&told);
    assert_eq!(id, Some(id_of(&start)), "Redis's position, as the id");
    wait_numsub(&redis, "feed", 1);
    let mut last = start;
    for i in 1..=10 {
        let at = publish_text(&mut via_a, "feed", &format!("m{i}")).expect("a position");
        assert_eq!(
            stream.event(),
            (Some(id_of(&at)), "message".into(), format!("m{i}"))
        );
        last = at;
    }
    drop(stream);
    let missed: Vec<At> = (11..=110)
        .map(|i| publish_text(&mut via_b, "feed", &format!("m{i}")).expect("a position"))
        .collect();

    // Node B has nobody on the channel: the read from Redis serves it.
    let header = format!("Last-Event-ID: {}\r\n", id_of(&last));
    let mut stream = Stream::open(b.addr, "/live/feed", &header);
    for (i, at) in missed.iter().enumerate() {
        let body = format!("m{}", i + 11);
        assert_eq!(stream.event(), (Some(id_of(at)), "message".into(), body));
    }
    let live = publish_text(&mut via_a, "feed", "m111").expect("a position");
    assert_eq!(
        stream.event(),
        (Some(id_of(&live)), "message".into(), "m111".into())
    );
    assert_eq!(metric(b.addr, "wshub_cluster_recovery_reads_total"), 1);
    assert_eq!(metric(b.addr, "wshub_recovered_messages_total"), 100);

    // A position of another history is not recovered: told where it stands.
    let foreign = "Last-Event-ID: 00000000000000aa:3\r\n";
    let mut other = Stream::open(b.addr, "/live/feed", foreign);
    let (id, kind, data) = other.event();
    assert_eq!(kind, "not-recovered");
    let v: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(v["reason"], "epoch");
    assert_eq!(id, Some(id_of(&live)));
    let next = publish_text(&mut via_b, "feed", "m112").expect("a position");
    for s in [&mut stream, &mut other] {
        assert_eq!(
            s.event(),
            (Some(id_of(&next)), "message".into(), "m112".into())
        );
    }
}
