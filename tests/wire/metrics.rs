//! `/metrics` and `/healthz` on real sockets: the numbers follow what
//! happens on the hub, and subscribers leaving in the middle of a broadcast
//! leave no trace in them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wshub::config::ClientMessages;

use crate::support::client::{RawClient, code, fresh_key, op, upgrade_request};
use crate::support::data::eventually;
use crate::support::http::{MetricsText, get_request};
use crate::support::server::{TestServer, broadcast_config};

const LIVE: &str = "wshub_websocket_connections{route=\"/live\"}";
const ECHO: &str = "wshub_websocket_connections{route=\"/echo\"}";
/// How long the server may take to notice that clients went away.
const SETTLE: Duration = Duration::from_secs(10);

fn hub_server() -> TestServer {
    TestServer::with_config(broadcast_config(ClientMessages::Ignore, false))
}

fn refused_series(reason: &str) -> String {
    format!("wshub_requests_refused_total{{reason=\"{reason}\"}}")
}

/// The gauges that describe who is connected and subscribed.
#[derive(Debug, PartialEq, Eq)]
struct Gauges {
    connections: u64,
    live: u64,
    channels: u64,
    subscriptions: u64,
}

impl Gauges {
    fn of(metrics: &MetricsText) -> Gauges {
        Gauges {
            connections: metrics.value("wshub_connections"),
            live: metrics.value(LIVE),
            channels: metrics.value("wshub_channels"),
            subscriptions: metrics.value("wshub_subscriptions"),
        }
    }
}

/// Polls `/metrics` on `http` until the gauges equal `want`.
fn settle(http: &mut RawClient, want: Gauges) {
    let mut last = None;
    let reached = eventually(SETTLE, || {
        let gauges = Gauges::of(&http.metrics());
        let done = gauges == want;
        last = Some(gauges);
        done
    });
    assert!(
        reached,
        "gauges did not settle within {SETTLE:?}: last {last:?}, want {want:?}"
    );
}

#[test]
fn metrics_follow_connections_subscriptions_and_traffic() {
    let server = hub_server();
    let mut http = RawClient::connect(server.addr);

    let response = http.get("/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.body_text();
    // Every sample belongs to a family announced with HELP and TYPE (a
    // histogram's samples carry a suffix after its family's name).
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let sample = line.split(['{', ' ']).next().unwrap();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let family = sample.strip_suffix(suffix)?;
                text.contains(&format!("# TYPE {family} histogram"))
                    .then_some(family)
            })
            .unwrap_or(sample);
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    // The loop has turned to serve this very request.
    assert!(
        !text.contains("wshub_loop_turn_seconds_count 0\n"),
        "{text}"
    );
    let metrics = MetricsText(text.to_owned());
    assert_eq!(
        Gauges::of(&metrics),
        Gauges {
            connections: 1,
            live: 0,
            channels: 0,
            subscriptions: 0
        }
    );
    for series in [
        ECHO,
        "wshub_handshakes_accepted_total",
        "wshub_messages_received_total",
        "wshub_publishes_total",
        "wshub_deliveries_total",
        "wshub_slow_consumer_drops_total",
        "wshub_slow_consumer_closes_total",
    ] {
        assert_eq!(metrics.value(series), 0, "{series}");
    }

    let mut a1 = RawClient::open(server.addr, "/live/a");
    let mut a2 = RawClient::open(server.addr, "/live/a");
    let mut bc = RawClient::open(server.addr, "/live?channel=b&channel=c");
    let mut echo = RawClient::open(server.addr, "/echo");
    let metrics = http.metrics();
    assert_eq!(
        Gauges::of(&metrics),
        Gauges {
            connections: 5,
            live: 3,
            channels: 3,
            subscriptions: 4
        }
    );
    assert_eq!(metrics.value(ECHO), 1);
    assert_eq!(metrics.value("wshub_handshakes_accepted_total"), 4);

    assert_eq!(http.publish_ok("a", Some("text/plain"), b"to a"), 2);
    assert_eq!(http.publish_ok("c", None, b"to c"), 1);
    assert_eq!(http.publish_ok("nobody", None, b"lost"), 0);
    a1.send_text("ignored");
    a1.send_binary(b"ignored too");
    echo.send_text("echoed");
    assert_eq!(echo.expect_text(), "echoed");
    assert_eq!(a1.expect_text(), "to a");
    assert_eq!(a2.expect_text(), "to a");
    assert_eq!(bc.expect_message(op::BINARY), b"to c");
    // a1's messages are counted once the server has read them; a ping
    // behind them proves it has.
    a1.send_frame(true, op::PING, b"sync");
    assert_eq!(a1.read_server_frame().opcode, op::PONG);
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_publishes_total"), 3);
    assert_eq!(metrics.value("wshub_deliveries_total"), 3);
    assert_eq!(metrics.value("wshub_messages_received_total"), 3);

    // Refusals, each on its own connection, counted by reason.
    let refusals: [(&[u8], &str); 5] = [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", "not_found"),
        (
            b"GET /publish/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "method_not_allowed",
        ),
        (
            b"POST /publish/a HTTP/1.1\r\nHost: x\r\n\r\n",
            "length_required",
        ),
        (
            b"POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            "too_large",
        ),
        (
            b"POST /publish/%%% HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
            "bad_request",
        ),
    ];
    for (request, _) in &refusals {
        let mut client = RawClient::connect(server.addr);
        client.send(request);
        assert!(client.read_http_response().status >= 400);
        client.expect_eof();
    }
    let mut bad = RawClient::connect(server.addr);
    let key = fresh_key();
    bad.send(upgrade_request("/live", &server.addr.to_string(), &key).as_bytes());
    assert_eq!(bad.read_http_response().status, 400);
    bad.expect_eof();
    // A client that saw the server close goes away too (else the server
    // lingers on its socket until close_timeout).
    drop(bad);
    let metrics = http.metrics();
    for (_, reason) in &refusals[..4] {
        assert_eq!(metrics.value(&refused_series(reason)), 1, "{reason}");
    }
    assert_eq!(metrics.value(&refused_series("bad_request")), 2);
    assert_eq!(metrics.value("wshub_handshakes_accepted_total"), 4);

    // Leaving: a closing handshake and an abrupt drop.
    a1.send_close(code::NORMAL, b"");
    a1.expect_close(code::NORMAL);
    drop(bc);
    settle(
        &mut http,
        Gauges {
            connections: 3,
            live: 1,
            channels: 1,
            subscriptions: 1,
        },
    );
    assert_eq!(http.metrics().value(ECHO), 1);
}

#[test]
fn healthz_answers_ok_on_a_keep_alive_connection() {
    let server = hub_server();
    let mut http = RawClient::connect(server.addr);
    for _ in 0..5 {
        let response = http.get("/healthz");
        assert_eq!(response.status, 200);
        assert_eq!(response.body_text(), "ok\n");
        assert_eq!(response.header("Connection"), None);
    }
    // Pipelined health checks, then metrics, in one write.
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.extend(get_request("/healthz"));
    }
    batch.extend(get_request("/metrics"));
    http.send(&batch);
    for _ in 0..10 {
        assert_eq!(http.read_http_response().body_text(), "ok\n");
    }
    let metrics = http.read_http_response();
    assert!(metrics.body_text().contains("wshub_connections 1\n"));

    for (request, allow) in [
        (
            &b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
            "GET",
        ),
        (
            &b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
            "GET",
        ),
    ] {
        let mut client = RawClient::connect(server.addr);
        client.send(request);
        let response = client.read_http_response();
        assert_eq!(response.status, 405, "{response:?}");
        assert_eq!(response.header("Allow"), Some(allow));
        client.expect_eof();
    }
    assert_eq!(http.get("/healthz").body_text(), "ok\n");
}

// ---------------------------------------------------------------------------
// Subscribers leaving in the middle of a broadcast
// ---------------------------------------------------------------------------

const STAYERS: usize = 10;
const LEAVERS: usize = 60;
/// Publishes before the first leaver goes, between leavers, and after the last.
const LEAD: usize = 50;
const EVERY: usize = 5;
const MESSAGES: usize = LEAD + LEAVERS * EVERY + LEAD;
const SIDE_CHANNELS: usize = 4;

fn side_channel(subscriber: usize) -> String {
    format!("side{}", subscriber % SIDE_CHANNELS)
}

/// Message `seq` goes to every subscriber (channel `all`) or one side channel.
fn target(seq: usize) -> String {
    if seq.is_multiple_of(2) {
        "all".to_owned()
    } else {
        side_channel(seq / 2)
    }
}

fn body(seq: usize) -> Vec<u8> {
    let mut body = format!("message {seq:04} to {} ", target(seq)).into_bytes();
    body.resize(1024, b'a' + (seq % 26) as u8);
    body
}

#[test]
fn subscribers_leaving_mid_broadcast_leave_no_trace() {
    let server = hub_server();
    let open = |i: usize| {
        RawClient::open(
            server.addr,
            &format!("/live?channel=all&channel={}", side_channel(i)),
        )
    };
    let mut stayers: Vec<RawClient> = (0..STAYERS).map(open).collect();
    let leavers: Vec<RawClient> = (STAYERS..STAYERS + LEAVERS).map(open).collect();
    let mut http = RawClient::connect(server.addr);
    assert_eq!(
        Gauges::of(&http.metrics()),
        Gauges {
            connections: (STAYERS + LEAVERS + 1) as u64,
            live: (STAYERS + LEAVERS) as u64,
            channels: 1 + SIDE_CHANNELS as u64,
            subscriptions: 2 * (STAYERS + LEAVERS) as u64,
        }
    );

    let published = AtomicUsize::new(0);
    let left = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let recipients: Vec<usize> = std::thread::scope(|s| {
        let http = &mut http;
        let publisher = s.spawn(|| {
            let mut recipients = Vec::with_capacity(MESSAGES);
            for seq in 0..MESSAGES {
                // Lockstep with the leavers, so they go while messages flow.
                let due = seq.saturating_sub(LEAD) / EVERY;
                while left.load(Ordering::Acquire) < due.min(LEAVERS) {
                    assert!(Instant::now() < deadline, "leavers stalled");
                    std::thread::sleep(Duration::from_micros(200));
                }
                let count = http.publish_ok(&target(seq), None, &body(seq));
                let stay_here = if seq.is_multiple_of(2) {
                    STAYERS
                } else {
                    (0..STAYERS)
                        .filter(|&i| side_channel(i) == target(seq))
                        .count()
                };
                assert!(count >= stay_here, "message {seq}: {count} recipients");
                recipients.push(count);
                published.store(seq + 1, Ordering::Release);
            }
            recipients
        });
        for (j, mut leaver) in leavers.into_iter().enumerate() {
            while published.load(Ordering::Acquire) < LEAD + j * EVERY {
                assert!(!publisher.is_finished(), "publisher stopped early");
                assert!(Instant::now() < deadline, "publisher stalled");
                std::thread::sleep(Duration::from_micros(200));
            }
            // Different ways of vanishing: with unread data (a reset), after
            // reading a little, or after shutting the socket down.
            match j % 3 {
                0 => {}
                1 => {
                    leaver.read_server_frame();
                }
                _ => {
                    let _ = leaver.stream.shutdown(std::net::Shutdown::Both);
                }
            }
            drop(leaver);
            left.store(j + 1, Ordering::Release);
        }
        publisher.join().expect("publisher thread")
    });

    // Those who stayed got exactly their messages, in order.
    for (i, stayer) in stayers.iter_mut().enumerate() {
        for seq in
            (0..MESSAGES).filter(|&seq| target(seq) == "all" || target(seq) == side_channel(i))
        {
            let payload = stayer.expect_message(op::BINARY);
            assert!(
                payload == body(seq),
                "stayer {i}, message {seq}: got {:?}",
                String::from_utf8_lossy(&payload[..30])
            );
        }
        stayer.expect_silence(Duration::from_millis(20));
    }

    settle(
        &mut http,
        Gauges {
            connections: STAYERS as u64 + 1,
            live: STAYERS as u64,
            channels: 1 + SIDE_CHANNELS as u64,
            subscriptions: 2 * STAYERS as u64,
        },
    );
    let metrics = http.metrics();
    assert_eq!(
        metrics.value("wshub_deliveries_total"),
        recipients.iter().sum::<usize>() as u64
    );
    assert_eq!(metrics.value("wshub_publishes_total"), MESSAGES as u64);

    // Now everyone leaves: half politely, half abruptly.
    for (i, mut stayer) in stayers.into_iter().enumerate() {
        if i.is_multiple_of(2) {
            stayer.send_close(code::NORMAL, b"");
            stayer.expect_close(code::NORMAL);
        }
    }
    settle(
        &mut http,
        Gauges {
            connections: 1,
            live: 0,
            channels: 0,
            subscriptions: 0,
        },
    );
    // The channels are gone, not just empty.
    assert_eq!(http.publish_ok("all", None, b"anyone?"), 0);
    for i in 0..SIDE_CHANNELS {
        assert_eq!(http.publish_ok(&side_channel(i), None, b"anyone?"), 0);
    }
    // New subscribers start from scratch.
    let mut again = RawClient::open(server.addr, "/live/all");
    assert_eq!(http.publish_ok("all", Some("text/plain"), b"fresh"), 1);
    assert_eq!(again.expect_text(), "fresh");
}
