//! Positions, history and recovery on real sockets: a client that comes
//! back gets exactly what it missed (then live messages), even while a
//! publisher keeps going; every case it cannot is told explicitly; a
//! restarted daemon's new epoch is told to returning clients; and the
//! metadata format round-trips through Python's `websockets` client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Signal;
use wshub::config::{Config, RouteConfig, RouteKind};

use crate::support::client::{RawClient, op};
use crate::support::daemon::{Daemon, config_with};
use crate::support::data::eventually;
use crate::support::positions::{At, json, message, publish_text};
use crate::support::python::run_websockets_client;
use crate::support::server::{TestServer, test_config};
use crate::support::tempdir::TempDir;

/// The route that keeps history, and one that keeps none.
const LIVE: &str = "/live";
const PLAIN: &str = "/plain";

fn history_config(size: usize, max_replay: usize, ttl: Duration) -> Config {
    let mut config = test_config();
    let mut live = RouteConfig::new(LIVE, RouteKind::Broadcast);
    live.history_size = size;
    live.max_replay = max_replay;
    live.history_ttl = ttl;
    config.routes.push(live);
    config
        .routes
        .push(RouteConfig::new(PLAIN, RouteKind::Broadcast));
    config
}

fn server(size: usize, max_replay: usize) -> TestServer {
    TestServer::with_config(history_config(size, max_replay, Duration::from_secs(300)))
}

/// Publishes a text message; returns the position the answer gives.
fn publish(publisher: &mut RawClient, channel: &str, body: &str) -> Option<At> {
    publish_text(publisher, channel, body)
}

#[test]
fn the_publish_answer_carries_the_position_when_the_channel_exists() {
    let server = server(10, 10);
    let mut publisher = RawClient::connect(server.addr);
    assert_eq!(publish(&mut publisher, "nobody", "lost"), None);
    let _sub = RawClient::open(server.addr, "/live/here");
    let first = publish(&mut publisher, "here", "a").expect("a position");
    let second = publish(&mut publisher, "here", "b").expect("a position");
    assert_eq!(first.offset, 1);
    assert_eq!(first.epoch.len(), 16);
    assert_eq!(second, At { offset: 2, ..first });
}

#[test]
fn a_returning_subscriber_gets_exactly_the_hundred_it_missed_then_live() {
    let server = server(1000, 1000);
    let mut publisher = RawClient::connect(server.addr);
    let mut client = RawClient::open(server.addr, "/live/news?meta=1");
    let subscribed = json(&mut client);
    assert_eq!(subscribed["subscribed"], true);
    assert_eq!(subscribed["offset"], 0);
    publish(&mut publisher, "news", "before");
    let (seen, text) = message(&mut client);
    assert_eq!((seen.offset, text.as_str()), (1, "before"));
    drop(client);

    let mut published = Vec::new();
    for i in 0..100 {
        let at = publish(&mut publisher, "news", &format!("missed {i}")).expect("kept alive");
        published.push(at);
    }
    assert_eq!(published[99].offset, 101);

    let path = format!("/live/news?{}", seen.query("news"));
    let mut client = RawClient::open(server.addr, &path);
    let answer = json(&mut client);
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["replayed"], 100);
    assert_eq!(At::of(&answer), seen);
    for (i, at) in published.iter().enumerate() {
        let (got, text) = message(&mut client);
        assert_eq!(&got, at);
        assert_eq!(text, format!("missed {i}"));
    }
    publish(&mut publisher, "news", "live");
    let (got, text) = message(&mut client);
    assert_eq!((got.offset, text.as_str()), (102, "live"));
    let metrics = publisher.metrics();
    assert_eq!(metrics.value("wshub_recoveries_total"), 1);
    assert_eq!(metrics.value("wshub_recovered_messages_total"), 100);
    assert_eq!(metrics.value("wshub_history_messages"), 102);
}

/// Clients that drop their connection every few messages and come back
/// with their position, while a publisher never pauses: each sees every
/// offset from its first to the last exactly once, in order.
#[test]
fn no_gap_and_no_duplicate_while_a_publisher_keeps_publishing() {
    const CLIENTS: usize = 8;
    const MESSAGES: u64 = 3000;
    let server = server(MESSAGES as usize, MESSAGES as usize);
    let addr = server.addr;
    // The channel exists before the publisher starts.
    let mut first = RawClient::open(addr, "/live/feed?meta=1");
    let start = At::of(&json(&mut first));
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut publisher = RawClient::connect(addr);
            let mut last = None;
            for i in 0..MESSAGES {
                last = publish(&mut publisher, "feed", &i.to_string());
            }
            done.store(true, Ordering::SeqCst);
            last.expect("a position")
        })
    };
    let reconnects: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let start = start.clone();
                s.spawn(move || {
                    let mut at = start;
                    let mut reconnects = 0;
                    loop {
                        let path = format!("/live/feed?{}", at.query("feed"));
                        let mut client = RawClient::open(addr, &path);
                        let answer = json(&mut client);
                        assert_eq!(answer["recovered"], true, "{answer}");
                        assert_eq!(At::of(&answer), at);
                        let replayed = answer["replayed"].as_u64().expect("a count");
                        // A few messages beyond the replay, then drop the connection.
                        let take = replayed + 1 + (c as u64 + reconnects) % 7;
                        for _ in 0..take {
                            if at.offset == MESSAGES {
                                return reconnects as usize;
                            }
                            let (got, text) = message(&mut client);
                            assert_eq!(got.epoch, at.epoch);
                            assert_eq!(got.offset, at.offset + 1, "client {c}: a gap or a repeat");
                            assert_eq!(text, (got.offset - 1).to_string());
                            at = got;
                        }
                        reconnects += 1;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("client"))
            .collect()
    });
    let last = publisher.join().expect("publisher");
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(last.offset, MESSAGES);
    assert!(reconnects.iter().all(|&r| r > 10), "{reconnects:?}");
    drop(first);
}

#[test]
fn every_case_that_cannot_be_recovered_is_told_with_the_current_position() {
    // history_size 5, max_replay 8.
    let server = server(5, 8);
    let mut publisher = RawClient::connect(server.addr);
    let mut keeper = RawClient::open(server.addr, "/live/c?meta=1");
    let start = At::of(&json(&mut keeper));
    let told = |query: String| {
        let mut client = RawClient::open(server.addr, &format!("/live/c?{query}"));
        let v = json(&mut client);
        assert_eq!(v["recovered"], false, "{v}");
        (
            v["reason"].as_str().expect("a reason").to_owned(),
            At::of(&v),
            client,
        )
    };
    for i in 0..10 {
        publish(&mut publisher, "c", &i.to_string());
    }
    let now = At {
        offset: 10,
        ..start.clone()
    };
    // Missed 10, five kept.
    let (reason, current, _) = told(start.query("c"));
    assert_eq!((reason.as_str(), &current), ("evicted", &now));
    // Missed 9 of which the last five are kept... but 9 > max_replay too:
    // kept ones are checked first.
    let (reason, ..) = told(
        At {
            offset: 1,
            ..start.clone()
        }
        .query("c"),
    );
    assert_eq!(reason, "evicted");
    let mut epoch = start.epoch.clone().into_bytes();
    epoch[0] = if epoch[0] == b'0' { b'1' } else { b'0' };
    let other = At {
        epoch: String::from_utf8(epoch).unwrap(),
        offset: 9,
    };
    let (reason, current, _) = told(other.query("c"));
    assert_eq!((reason.as_str(), &current), ("epoch", &now));
    let ahead = At {
        offset: 11,
        ..start.clone()
    };
    assert_eq!(told(ahead.query("c")).0, "epoch");
    // Recoverable positions still work, up to date included.
    let mut client = RawClient::open(server.addr, &format!("/live/c?{}", now.query("c")));
    let v = json(&mut client);
    assert_eq!(
        (v["recovered"].clone(), v["replayed"].clone()),
        (true.into(), 0.into())
    );
    // The route without history says so, and then delivers live.
    let (reason, current, mut plain) = {
        let mut client = RawClient::open(server.addr, &format!("{PLAIN}/c?{}", now.query("c")));
        let v = json(&mut client);
        (v["reason"].as_str().unwrap().to_owned(), At::of(&v), client)
    };
    assert_eq!((reason.as_str(), &current), ("no_history", &now));
    publish(&mut publisher, "c", "live");
    assert_eq!(message(&mut plain).1, "live");
    let metrics = publisher.metrics();
    assert_eq!(
        metrics.value("wshub_recoveries_refused_total{reason=\"evicted\"}"),
        2
    );
    assert_eq!(
        metrics.value("wshub_recoveries_refused_total{reason=\"no_history\"}"),
        1
    );
    drop(keeper);
}

#[test]
fn more_than_max_replay_missed_is_too_many() {
    let server = server(100, 5);
    let mut publisher = RawClient::connect(server.addr);
    let mut keeper = RawClient::open(server.addr, "/live/t?meta=1");
    let start = At::of(&json(&mut keeper));
    for i in 0..6 {
        publish(&mut publisher, "t", &i.to_string());
    }
    let mut client = RawClient::open(server.addr, &format!("/live/t?{}", start.query("t")));
    let v = json(&mut client);
    assert_eq!(
        (v["recovered"].clone(), v["reason"].clone()),
        (false.into(), "too_many".into())
    );
    assert_eq!(v["offset"], 6);
    // Five missed is within the cap.
    let one = At { offset: 1, ..start };
    let mut client = RawClient::open(server.addr, &format!("/live/t?{}", one.query("t")));
    assert_eq!(json(&mut client)["replayed"], 5);
}

#[test]
fn history_older_than_its_ttl_is_expired() {
    let server = TestServer::with_config(history_config(100, 100, Duration::from_secs(1)));
    let mut publisher = RawClient::connect(server.addr);
    let mut keeper = RawClient::open(server.addr, "/live/x?meta=1");
    let start = At::of(&json(&mut keeper));
    publish(&mut publisher, "x", "old");
    assert!(eventually(Duration::from_secs(5), || {
        publisher.metrics().value("wshub_history_messages") == 0
    }));
    let mut client = RawClient::open(server.addr, &format!("/live/x?{}", start.query("x")));
    let v = json(&mut client);
    assert_eq!(
        (v["recovered"].clone(), v["reason"].clone()),
        (false.into(), "expired".into())
    );
    assert_eq!(v["offset"], 1);
}

#[test]
fn a_channel_with_history_outlives_its_last_subscriber() {
    let server = server(100, 100);
    let mut publisher = RawClient::connect(server.addr);
    let mut client = RawClient::open(server.addr, "/live/solo?meta=1");
    json(&mut client);
    publish(&mut publisher, "solo", "first");
    let (seen, _) = message(&mut client);
    drop(client);
    // Nobody subscribed, yet the channel lives on in its history.
    assert!(eventually(Duration::from_secs(5), || {
        publisher.metrics().value("wshub_subscriptions") == 0
    }));
    let at = publish(&mut publisher, "solo", "while away").expect("kept");
    assert_eq!(
        at,
        At {
            offset: 2,
            ..seen.clone()
        }
    );
    let path = format!("/live/solo?{}", seen.query("solo"));
    let mut client = RawClient::open(server.addr, &path);
    assert_eq!(json(&mut client)["replayed"], 1);
    assert_eq!(message(&mut client), (at, "while away".to_owned()));
    // A channel that never kept anything is freed with its last subscriber,
    // and a publish to it is kept nowhere.
    let client = RawClient::open(server.addr, "/live/empty");
    drop(client);
    assert!(eventually(Duration::from_secs(5), || {
        publisher.metrics().value("wshub_subscriptions") == 1
    }));
    assert_eq!(publish(&mut publisher, "empty", "lost"), None);
}

#[test]
fn malformed_or_foreign_recovery_requests_are_refused_with_a_reason() {
    let server = server(10, 10);
    let e = "0123456789abcdef";
    let cases = [
        (format!("/live/a?recover=a:{e}"), "malformed recover"),
        (format!("/live/a?recover=a:{e}:x"), "malformed recover"),
        (format!("/live/a?recover=b:{e}:1"), "does not subscribe"),
        (format!("/live/a?recover=a:{e}:1&recover=a:{e}:2"), "twice"),
        ("/live/a?meta=2".to_owned(), "meta must be 0 or 1"),
    ];
    for (path, reason) in cases {
        let mut client = RawClient::connect(server.addr);
        client.send(
            crate::support::client::upgrade_request(
                &path,
                "localhost",
                &crate::support::client::fresh_key(),
            )
            .as_bytes(),
        );
        let response = client.read_http_response();
        assert_eq!(response.status, 400, "{path}");
        assert!(
            response.body_text().contains(reason),
            "{path}: {}",
            response.body_text()
        );
    }
}

#[test]
fn plain_clients_get_plain_frames_and_metadata_clients_each_form() {
    let server = server(10, 10);
    let mut publisher = RawClient::connect(server.addr);
    let mut plain = RawClient::open(server.addr, "/live/f");
    let mut meta = RawClient::open(server.addr, "/live/f?meta=1");
    let at = At::of(&json(&mut meta));
    publisher.publish_ok_any("f", Some("application/json"), br#"{"a": [1, "x"]}"#);
    publisher.publish_ok_any("f", Some("application/json"), b"{broken");
    publisher.publish_ok_any("f", None, &[0, 1, 2, 255]);
    assert_eq!(plain.expect_message(op::TEXT), br#"{"a": [1, "x"]}"#);
    assert_eq!(plain.expect_message(op::TEXT), b"{broken");
    assert_eq!(plain.expect_message(op::BINARY), [0, 1, 2, 255]);
    let epoch = &at.epoch;
    assert_eq!(
        meta.expect_message(op::TEXT),
        format!(r#"{{"channel":"f","epoch":"{epoch}","offset":1,"json":{{"a": [1, "x"]}}}}"#)
            .into_bytes()
    );
    assert_eq!(
        meta.expect_message(op::TEXT),
        format!(r#"{{"channel":"f","epoch":"{epoch}","offset":2,"text":"{{broken"}}"#).into_bytes()
    );
    let binary = meta.expect_message(op::BINARY);
    let header = format!(r#"{{"channel":"f","epoch":"{epoch}","offset":3}}"#);
    let mut expected = (header.len() as u16).to_be_bytes().to_vec();
    expected.extend_from_slice(header.as_bytes());
    expected.extend_from_slice(&[0, 1, 2, 255]);
    assert_eq!(binary, expected);
}

impl RawClient {
    /// Publishes and asserts a 200, whatever the answer carries.
    fn publish_ok_any(&mut self, channel: &str, content_type: Option<&str>, body: &[u8]) {
        let response = self.publish(channel, content_type, body);
        assert_eq!(response.status, 200, "{response:?}");
    }
}

/// The real binary, stopped and started again: the channel's new epoch
/// tells a returning client it may have missed messages.
#[test]
fn a_restarted_daemon_tells_returning_clients_the_epoch_changed() {
    let dir = TempDir::new("history-restart");
    let config = dir.write(
        "wshub.toml",
        &format!(
            "{}\n[[route]]\npath = \"/live\"\nkind = \"broadcast\"\nhistory_size = 100\n",
            config_with("")
        ),
    );
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/live/r?meta=1");
    let start = At::of(&json(&mut client));
    let mut publisher = RawClient::connect(addr);
    publish(&mut publisher, "r", "one");
    let (seen, _) = message(&mut client);
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    drop((client, publisher));

    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, &format!("/live/r?{}", seen.query("r")));
    let v = json(&mut client);
    assert_eq!(
        (v["recovered"].clone(), v["reason"].clone()),
        (false.into(), "epoch".into())
    );
    let current = At::of(&v);
    assert_ne!(current.epoch, start.epoch);
    assert_eq!(current.offset, 0);
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// A reload that changes the history settings applies them to what is
/// kept at once: a smaller `history_size` trims every channel, and history
/// switched off drops everything (and the channels kept only by it), not
/// only when the old TTL's timer fires.
#[test]
fn a_reload_applies_new_history_settings_to_what_is_kept() {
    let dir = TempDir::new("history-reload");
    let with = |extra: &str| {
        format!(
            "{}\n[[route]]\npath = \"/live\"\nkind = \"broadcast\"\nhistory_ttl = \"5m\"\n{extra}\n",
            config_with("")
        )
    };
    let config = dir.write("wshub.toml", &with("history_size = 100"));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.listening_address();
    let mut client = RawClient::open(addr, "/live/r?meta=1");
    let start = At::of(&json(&mut client));
    let mut publisher = RawClient::connect(addr);
    for i in 0..5 {
        publish(&mut publisher, "r", &format!("m{i}"));
    }
    let kept = RawClient::open(addr, "/live/only-history");
    publish(&mut publisher, "only-history", "x");
    drop(kept);
    assert!(eventually(Duration::from_secs(5), || {
        publisher.metrics().value("wshub_history_messages") == 6
    }));

    dir.write("wshub.toml", &with("history_size = 2"));
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload done");
    assert_eq!(publisher.metrics().value("wshub_history_messages"), 3);
    // Offsets 4 and 5 are kept: from 2, offset 3 is gone.
    let from = At {
        offset: 2,
        ..start.clone()
    };
    let mut back = RawClient::open(addr, &format!("/live/r?{}", from.query("r")));
    let v = json(&mut back);
    assert_eq!(v["reason"], "evicted", "{v}");

    dir.write("wshub.toml", &with("history_size = 0"));
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("reload done");
    let metrics = publisher.metrics();
    assert_eq!(metrics.value("wshub_history_messages"), 0);
    assert_eq!(metrics.value("wshub_history_bytes"), 0);
    // Only "r" (subscribed) is left: "only-history" went with its history.
    assert_eq!(metrics.value("wshub_channels"), 1);
    drop((client, back));
    daemon.signal(Signal::TERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// Python's `websockets` (an independent client, the library path browser
/// code resembles) decodes all three metadata forms byte-exact. Fails
/// (never skips) without it: `.ci/test` installs it.
#[test]
fn python_websockets_reads_every_metadata_form_byte_exact() {
    let server = server(10, 10);
    let script = r#"
import http.client, json, sys
from websockets.sync.client import connect
host, port = sys.argv[1], int(sys.argv[2])
text = 'quote " back \\ slash \u00e9 \U0001f389 \x01 end'
doc = b'{"n": 1.5e3, "s": "\\u00e9", "a": [true, null]}'
data = bytes(range(256)) * 3
def publish(body, ctype):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("POST", "/publish/py", body=body, headers={"Content-Type": ctype} if ctype else {})
    r = c.getresponse()
    assert r.status == 200, r.read()
    return json.loads(r.read())
with connect(f"ws://{host}:{port}/live/py?meta=1", open_timeout=5, max_size=None) as ws:
    hello = json.loads(ws.recv(timeout=5))
    assert hello["subscribed"] is True and hello["offset"] == 0, hello
    epoch = hello["epoch"]
    a = publish(text.encode(), "text/plain; charset=utf-8")
    b = publish(doc, "application/json")
    c = publish(data, None)
    m = ws.recv(timeout=5)
    assert isinstance(m, str)
    v = json.loads(m)
    assert v == {"channel": "py", "epoch": epoch, "offset": a["offset"], "text": text}, v
    m = ws.recv(timeout=5)
    v = json.loads(m)
    assert v["offset"] == b["offset"] and v["json"] == json.loads(doc), v
    # The JSON body is embedded as is, byte for byte.
    assert m.encode().endswith(b'"json":' + doc + b'}'), m
    m = ws.recv(timeout=5)
    assert isinstance(m, bytes)
    n = int.from_bytes(m[:2], "big")
    header = json.loads(m[2:2 + n])
    assert header == {"channel": "py", "epoch": epoch, "offset": c["offset"]}, header
    assert m[2 + n:] == data
print("OK")
"#;
    let ip = server.addr.ip().to_string();
    let port = server.addr.port().to_string();
    let stdout = run_websockets_client(script, &[&ip, &port]);
    assert_eq!(stdout.trim(), "OK");
}
