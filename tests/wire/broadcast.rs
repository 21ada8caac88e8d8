//! The broadcast hub on real sockets: fan-out to many subscribers, several
//! channels per connection, subscribers' own messages (relay, ignore,
//! reject), slow consumers, and refused subscriptions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wshub::config::{ClientMessages, OnBacklog};

use crate::support::client::{
    RawClient, assert_switching_protocols, client_close, client_frame, code, fresh_key, op,
    split_frames, upgrade_request,
};
use crate::support::data::{binary_payload, eventually, text_payload};
use crate::support::server::{TestServer, broadcast_config};

/// The close code for a message type the endpoint does not accept (RFC 6455 §7.4.1).
const UNSUPPORTED_DATA: u16 = 1003;

fn hub_server(client_messages: ClientMessages, echo_to_sender: bool) -> TestServer {
    TestServer::with_config(broadcast_config(client_messages, echo_to_sender))
}

/// A plain HTTP connection for publishing and reading metrics.
fn publisher(server: &TestServer) -> RawClient {
    RawClient::connect(server.addr)
}

/// A subscriber that completed the handshake on `path`.
fn subscribe(server: &TestServer, path: &str) -> RawClient {
    RawClient::open(server.addr, path)
}

fn text(client: &mut RawClient) -> String {
    client.expect_text()
}

// ---------------------------------------------------------------------------
// Fan-out to many subscribers
// ---------------------------------------------------------------------------

const BULK_SUBSCRIBERS: usize = 1000;
const BULK_MESSAGES: usize = 100;
/// Threads opening and later reading the subscribers.
const BULK_THREADS: usize = 4;

/// Message `seq` of the bulk test: alternately text (mixing multi-byte
/// characters) and binary (every byte value), of varied lengths, with an
/// empty message and one needing the 64-bit length form.
fn bulk_message(seq: usize) -> (Option<&'static str>, u8, Vec<u8>) {
    match seq {
        50 => (None, op::BINARY, Vec::new()),
        99 => (
            Some("application/octet-stream"),
            op::BINARY,
            binary_payload(70_000, 99),
        ),
        _ if seq.is_multiple_of(2) => {
            let text = format!("m{seq:03}:{}", text_payload(10 + (seq * 37) % 300));
            (
                Some("text/plain; charset=utf-8"),
                op::TEXT,
                text.into_bytes(),
            )
        }
        _ => (
            Some("application/octet-stream"),
            op::BINARY,
            binary_payload(1 + (seq * 53) % 400, seq as u8),
        ),
    }
}

#[test]
fn thousand_subscribers_each_receive_a_hundred_messages_in_order() {
    let server = hub_server(ClientMessages::Ignore, false);
    let addr = server.addr;
    let started = Instant::now();
    let per_thread = BULK_SUBSCRIBERS / BULK_THREADS;
    let mut subscribers: Vec<RawClient> = std::thread::scope(|s| {
        let openers: Vec<_> = (0..BULK_THREADS)
            .map(|_| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|_| RawClient::open(addr, "/live/bulk"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        openers
            .into_iter()
            .flat_map(|h| h.join().expect("opener thread"))
            .collect()
    });
    assert_eq!(subscribers.len(), BULK_SUBSCRIBERS);
    let opened = started.elapsed();

    let messages: Vec<_> = (0..BULK_MESSAGES).map(bulk_message).collect();
    let mut http = publisher(&server);
    let publish_start = Instant::now();
    for (seq, (content_type, _, body)) in messages.iter().enumerate() {
        let recipients = http.publish_ok("bulk", *content_type, body);
        assert_eq!(recipients, BULK_SUBSCRIBERS, "recipients of message {seq}");
    }
    let published = publish_start.elapsed();

    let read_start = Instant::now();
    let messages = &messages;
    std::thread::scope(|s| {
        let mut rest = subscribers.as_mut_slice();
        let mut readers = Vec::new();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at_mut(per_thread.min(rest.len()));
            rest = tail;
            readers.push(s.spawn(move || {
                for (index, client) in chunk.iter_mut().enumerate() {
                    for (seq, (_, opcode, body)) in messages.iter().enumerate() {
                        let frame = client.read_server_frame();
                        assert_eq!(
                            frame.opcode, *opcode,
                            "subscriber {index}, message {seq}: opcode"
                        );
                        assert!(
                            frame.payload == *body,
                            "subscriber {index}, message {seq}: payload differs \
                             ({} bytes, want {})",
                            frame.payload.len(),
                            body.len()
                        );
                    }
                }
            }));
        }
        for reader in readers {
            reader.join().expect("reader thread");
        }
    });
    let read = read_start.elapsed();

    let metrics = http.metrics();
    assert_eq!(
        metrics.value("wshub_subscriptions"),
        BULK_SUBSCRIBERS as u64
    );
    assert_eq!(metrics.value("wshub_channels"), 1);
    assert_eq!(
        metrics.value("wshub_websocket_connections{route=\"/live\"}"),
        BULK_SUBSCRIBERS as u64
    );
    assert_eq!(
        metrics.value("wshub_deliveries_total"),
        (BULK_SUBSCRIBERS * BULK_MESSAGES) as u64
    );
    assert_eq!(metrics.value("wshub_publishes_total"), BULK_MESSAGES as u64);
    println!(
        "{BULK_SUBSCRIBERS} subscribers x {BULK_MESSAGES} messages: \
         handshakes {opened:?}, publishing {published:?}, reading {read:?}, \
         total {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Several channels per connection
// ---------------------------------------------------------------------------

#[test]
fn multi_channel_subscriber_gets_both_channels_single_channel_only_its_own() {
    let server = hub_server(ClientMessages::Ignore, false);
    let mut both = subscribe(&server, "/live?channel=a&channel=b");
    let mut only_a = subscribe(&server, "/live/a");
    let mut http = publisher(&server);

    assert_eq!(http.publish_ok("a", Some("text/plain"), b"a-1"), 2);
    assert_eq!(http.publish_ok("b", Some("text/plain"), b"b-1"), 1);
    assert_eq!(http.publish_ok("c", Some("text/plain"), b"c-1"), 0);
    assert_eq!(http.publish_ok("a", Some("text/plain"), b"a-2"), 2);

    assert_eq!(text(&mut both), "a-1");
    assert_eq!(text(&mut both), "b-1");
    assert_eq!(text(&mut both), "a-2");
    assert_eq!(text(&mut only_a), "a-1");
    // b-1 and c-1 were not for it: a-2 comes next.
    assert_eq!(text(&mut only_a), "a-2");
    both.expect_silence(Duration::from_millis(100));
    only_a.expect_silence(Duration::from_millis(100));
}

#[test]
fn path_and_query_channels_combine_and_duplicates_count_once() {
    let server = hub_server(ClientMessages::Ignore, false);
    // Path channel plus a query channel, with other parameters ignored.
    let mut mixed = subscribe(&server, "/live/a?t=1&channel=b&token=x");
    // The same channel named three times is one subscription.
    let mut dup = subscribe(&server, "/live/a?channel=a&channel=a");
    // A percent-encoded name in the query is decoded.
    let mut encoded = subscribe(&server, "/live?channel=user%40host");
    let mut http = publisher(&server);

    assert_eq!(http.publish_ok("a", Some("text/plain"), b"to a"), 2);
    assert_eq!(http.publish_ok("b", Some("text/plain"), b"to b"), 1);
    assert_eq!(http.publish_ok("user@host", Some("text/plain"), b"to u"), 1);
    assert_eq!(http.publish_ok("a", Some("text/plain"), b"a again"), 2);

    assert_eq!(text(&mut mixed), "to a");
    assert_eq!(text(&mut mixed), "to b");
    assert_eq!(text(&mut mixed), "a again");
    assert_eq!(text(&mut dup), "to a");
    assert_eq!(text(&mut dup), "a again");
    assert_eq!(text(&mut encoded), "to u");
    for client in [&mut mixed, &mut dup, &mut encoded] {
        client.expect_silence(Duration::from_millis(100));
    }
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_subscriptions"), 4);
    assert_eq!(metrics.value("wshub_channels"), 3);
}

// ---------------------------------------------------------------------------
// Subscribers' own messages
// ---------------------------------------------------------------------------

#[test]
fn chat_room_relays_to_the_others_but_not_the_sender() {
    let server = hub_server(ClientMessages::Broadcast, false);
    let mut a = subscribe(&server, "/live/room");
    let mut b = subscribe(&server, "/live/room");
    let mut c = subscribe(&server, "/live/room");
    let mut outsider = subscribe(&server, "/live/lobby");

    a.send_text("hello from a");
    assert_eq!(text(&mut b), "hello from a");
    assert_eq!(text(&mut c), "hello from a");

    let data = binary_payload(300, 7);
    c.send_binary(&data);
    assert_eq!(a.expect_message(op::BINARY), data);
    assert_eq!(b.expect_message(op::BINARY), data);

    // A fragmented message is relayed once, whole, as one frame.
    b.send(&client_frame(false, op::TEXT, b"frag"));
    b.send(&client_frame(true, op::CONTINUATION, b"mented"));
    assert_eq!(text(&mut a), "fragmented");
    assert_eq!(text(&mut c), "fragmented");

    // Every relay has reached the others: if a sender had got its own
    // message back, it would come before this marker.
    let mut http = publisher(&server);
    assert_eq!(http.publish_ok("room", Some("text/plain"), b"marker"), 3);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(client), "marker");
        client.expect_silence(Duration::from_millis(100));
    }
    outsider.expect_silence(Duration::from_millis(50));
}

#[test]
fn messages_pipelined_behind_the_upgrade_and_before_a_close_are_relayed() {
    let server = hub_server(ClientMessages::Broadcast, false);
    let mut listener = subscribe(&server, "/live/room");
    // The handshake and the first messages in one write.
    let mut eager = RawClient::connect(server.addr);
    let key = fresh_key();
    let mut bytes = upgrade_request("/live/room", &server.addr.to_string(), &key).into_bytes();
    bytes.extend(client_frame(true, op::TEXT, b"first"));
    bytes.extend(client_frame(true, op::TEXT, b"second"));
    eager.send(&bytes);
    assert_switching_protocols(&eager.read_http_response(), &key);
    assert_eq!(text(&mut listener), "first");
    assert_eq!(text(&mut listener), "second");

    // A last message and the close frame in one write.
    let mut bytes = client_frame(true, op::TEXT, b"last words");
    bytes.extend(client_close(code::NORMAL, b"bye"));
    eager.send(&bytes);
    eager.expect_close(code::NORMAL);
    assert_eq!(text(&mut listener), "last words");
    listener.expect_silence(Duration::from_millis(100));
}

#[test]
fn chat_room_with_echo_to_sender_includes_the_sender() {
    let server = hub_server(ClientMessages::Broadcast, true);
    let mut a = subscribe(&server, "/live/room");
    let mut b = subscribe(&server, "/live/room");
    let mut c = subscribe(&server, "/live/room");

    a.send_text("from a");
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(client), "from a");
    }
    let mut http = publisher(&server);
    assert_eq!(http.publish_ok("room", Some("text/plain"), b"marker"), 3);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(client), "marker");
        client.expect_silence(Duration::from_millis(100));
    }
}

#[test]
fn relay_reaches_a_subscriber_sharing_several_channels_once() {
    for echo_to_sender in [false, true] {
        let server = hub_server(ClientMessages::Broadcast, echo_to_sender);
        let mut sender = subscribe(&server, "/live?channel=x&channel=y&channel=z");
        // Shares all three channels with the sender.
        let mut all = subscribe(&server, "/live?channel=z&channel=y&channel=x");
        // Shares two.
        let mut two = subscribe(&server, "/live?channel=x&channel=y");
        // Shares one.
        let mut one = subscribe(&server, "/live/z");
        // Shares none.
        let mut none = subscribe(&server, "/live/w");

        sender.send_text("once");
        for client in [&mut all, &mut two, &mut one] {
            assert_eq!(text(client), "once", "echo_to_sender={echo_to_sender}");
        }
        if echo_to_sender {
            assert_eq!(text(&mut sender), "once");
        }
        let mut http = publisher(&server);
        for channel in ["x", "w"] {
            http.publish_ok(
                channel,
                Some("text/plain"),
                format!("to {channel}").as_bytes(),
            );
        }
        for client in [&mut sender, &mut all, &mut two] {
            assert_eq!(
                text(client),
                "to x",
                "a duplicate relay arrived (echo_to_sender={echo_to_sender})"
            );
            client.expect_silence(Duration::from_millis(50));
        }
        one.expect_silence(Duration::from_millis(50));
        assert_eq!(text(&mut none), "to w");
        let metrics = http.metrics();
        // The relay counts as one publish, delivered to each recipient once.
        let recipients = if echo_to_sender { 4 } else { 3 };
        assert_eq!(metrics.value("wshub_publishes_total"), 3);
        assert_eq!(metrics.value("wshub_deliveries_total"), recipients + 3 + 1);
    }
}

#[test]
fn reject_route_closes_a_talking_subscriber_with_1003() {
    let server = hub_server(ClientMessages::Reject, false);
    let mut talker = subscribe(&server, "/live/news");
    let mut listener = subscribe(&server, "/live/news");
    let mut http = publisher(&server);
    assert_eq!(http.publish_ok("news", Some("text/plain"), b"before"), 2);
    assert_eq!(text(&mut talker), "before");
    assert_eq!(text(&mut listener), "before");

    // Control frames are still fine on a reject route.
    talker.send_frame(true, op::PING, b"still here");
    let pong = talker.read_server_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (op::PONG, &b"still here"[..])
    );

    talker.send_text("may I speak?");
    let close = talker.expect_close(UNSUPPORTED_DATA);
    assert!(
        !close.close_reason().is_empty(),
        "close frame carries a reason"
    );

    // The rejected message went nowhere; the other subscriber carries on.
    assert_eq!(http.publish_ok("news", Some("text/plain"), b"after"), 1);
    assert_eq!(text(&mut listener), "after");
    listener.expect_silence(Duration::from_millis(100));
}

#[test]
fn reject_route_closes_on_binary_messages_too() {
    let server = hub_server(ClientMessages::Reject, false);
    let mut talker = subscribe(&server, "/live/news");
    talker.send_binary(&[1, 2, 3]);
    talker.expect_close(UNSUPPORTED_DATA);
}

#[test]
fn ignore_route_drops_client_messages_but_answers_pings_and_closes() {
    let server = hub_server(ClientMessages::Ignore, false);
    let mut talker = subscribe(&server, "/live/news");
    let mut listener = subscribe(&server, "/live/news");

    talker.send_text("nobody hears this");
    talker.send_binary(&binary_payload(1000, 3));
    talker.send_frame(true, op::PING, b"are you there");
    // The pong is the first thing back: nothing was echoed or relayed.
    let pong = talker.read_server_frame();
    assert_eq!(pong.opcode, op::PONG, "{pong:?}");
    assert_eq!(pong.payload, b"are you there");

    let mut http = publisher(&server);
    assert_eq!(http.publish_ok("news", Some("text/plain"), b"marker"), 2);
    assert_eq!(text(&mut listener), "marker");
    assert_eq!(text(&mut talker), "marker");
    listener.expect_silence(Duration::from_millis(100));

    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_messages_received_total"), 2);
    assert_eq!(metrics.value("wshub_publishes_total"), 1);

    // The closing handshake works as on any route.
    talker.send_close(code::NORMAL, b"bye");
    talker.expect_close(code::NORMAL);
    listener.send_close(code::NORMAL, b"");
    listener.expect_close(code::NORMAL);
}

// ---------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------

const SLOW_BACKLOG: usize = 64 * 1024;
const SLOW_MESSAGE_LEN: usize = 4096;
/// The flood goes on until the never-reading subscriber stops getting
/// messages, then this many more (kernel socket buffers absorb a few MB
/// first, how many depends on the host's TCP settings)...
const SLOW_AFTER: usize = 200;
/// ...but never past this many messages (80 MB).
const SLOW_MAX_MESSAGES: usize = 20_000;
/// How far the reading subscriber may fall behind the publisher, in
/// messages: well under the backlog limit, so it is never slow itself.
const SLOW_PACE: usize = 8;
/// Bound on the flood phase.
const SLOW_BOUND: Duration = Duration::from_secs(60);
/// The message that ends the flood.
const FLOOD_END: &[u8] = b"end of flood";

/// Message `seq` of the flood: its number in the first 4 bytes.
fn flood_message(seq: usize) -> Vec<u8> {
    let mut payload = binary_payload(SLOW_MESSAGE_LEN, seq as u8);
    payload[..4].copy_from_slice(&(seq as u32).to_be_bytes());
    payload
}

fn flood_seq(payload: &[u8]) -> usize {
    assert_eq!(payload.len(), SLOW_MESSAGE_LEN);
    let seq = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
    assert_eq!(
        payload,
        flood_message(seq),
        "payload of message {seq} corrupted"
    );
    seq
}

fn slow_server(on_backlog: OnBacklog) -> TestServer {
    let mut config = broadcast_config(ClientMessages::Ignore, false);
    config.max_backlog_bytes = SLOW_BACKLOG;
    config.on_backlog = on_backlog;
    // An evicted subscriber's close frame waits for it to read again.
    config.close_timeout = Duration::from_secs(60);
    TestServer::with_config(config)
}

/// Publishes a flood to channel `feed`, whose subscribers are `fast` and
/// one that never reads, until the latter has missed `SLOW_AFTER` messages,
/// then `FLOOD_END`. Meanwhile `fast` reads every message in order (checked)
/// on another thread. Returns each flood message's recipient count, the end
/// message's, and `fast` back.
fn flood(http: &mut RawClient, mut fast: RawClient) -> (Vec<usize>, usize, RawClient) {
    let progress = AtomicUsize::new(0);
    let deadline = Instant::now() + SLOW_BOUND;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            for seq in 0.. {
                let payload = fast.expect_message(op::BINARY);
                if payload == FLOOD_END {
                    break;
                }
                assert_eq!(flood_seq(&payload), seq, "reading subscriber: order");
                progress.store(seq + 1, Ordering::Release);
            }
            fast
        });
        let mut recipients = Vec::new();
        let mut missed = 0;
        for seq in 0..SLOW_MAX_MESSAGES {
            while progress.load(Ordering::Acquire) + SLOW_PACE < seq {
                assert!(
                    !reader.is_finished(),
                    "reading subscriber stopped at {}",
                    progress.load(Ordering::Acquire)
                );
                assert!(Instant::now() < deadline, "flood past {SLOW_BOUND:?}");
                std::thread::sleep(Duration::from_micros(200));
            }
            let count = http.publish_ok("feed", None, &flood_message(seq));
            assert!(count == 1 || count == 2, "recipients {count} of {seq}");
            recipients.push(count);
            if count == 1 {
                missed += 1;
                if missed == SLOW_AFTER {
                    break;
                }
            }
        }
        assert_eq!(missed, SLOW_AFTER, "the never-reading subscriber kept up");
        let end = http.publish_ok("feed", None, FLOOD_END);
        let fast = reader.join().expect("reading subscriber");
        assert_eq!(progress.load(Ordering::Acquire), recipients.len());
        (recipients, end, fast)
    })
}

#[test]
fn slow_consumer_is_closed_at_the_backlog_limit_while_others_get_everything() {
    let server = slow_server(OnBacklog::Close);
    let mut slow = subscribe(&server, "/live/feed");
    let fast = subscribe(&server, "/live/feed");
    let mut http = publisher(&server);

    let (recipients, end, mut fast) = flood(&mut http, fast);

    // Both got messages until the slow one was dropped, then only the fast one.
    let reached_slow = recipients.iter().take_while(|&&n| n == 2).count();
    assert!(
        recipients[reached_slow..].iter().all(|&n| n == 1),
        "recipients went back up after the slow consumer was dropped: {recipients:?}"
    );
    assert_eq!(end, 1);
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_slow_consumer_closes_total"), 1);
    assert_eq!(metrics.value("wshub_slow_consumer_drops_total"), 0);

    // RFC 6455 §7.1.7: what reaches the slow subscriber once it reads is a
    // gapless prefix of the flood in whole frames (the frame in flight was
    // finished), then a close frame with 1013, then EOF.
    let bytes = slow.read_to_eof();
    let (frames, partial) = split_frames(&bytes);
    assert_eq!(partial, 0, "a frame was cut");
    let (close, messages) = frames.split_last().expect("a close frame");
    assert_eq!(close.opcode, op::CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1013));
    assert_eq!(close.close_reason(), "slow consumer");
    assert!(messages.len() <= reached_slow);
    for (seq, frame) in messages.iter().enumerate() {
        assert_eq!(frame.opcode, op::BINARY);
        assert_eq!(flood_seq(&frame.payload), seq, "slow subscriber: order");
    }
    println!(
        "slow consumer closed after {reached_slow} messages; {} reached it",
        messages.len()
    );
    drop(slow);
    // Gone once it hung up: the fast subscriber and this HTTP connection.
    assert!(eventually(Duration::from_secs(10), || {
        let metrics = http.metrics();
        metrics.value("wshub_connections") == 2
            && metrics.value("wshub_subscriptions") == 1
            && metrics.value("wshub_websocket_connections{route=\"/live\"}") == 1
    }));

    // The fast subscriber is still connected and current.
    assert_eq!(http.publish_ok("feed", None, b"after"), 1);
    assert_eq!(fast.expect_message(op::BINARY), b"after");
}

#[test]
fn slow_consumer_misses_messages_but_stays_connected_with_on_backlog_drop() {
    let server = slow_server(OnBacklog::Drop);
    let mut slow = subscribe(&server, "/live/feed");
    let fast = subscribe(&server, "/live/feed");
    let mut http = publisher(&server);

    let (recipients, end, mut fast) = flood(&mut http, fast);

    let sent = recipients.len() + 1;
    let reached_slow = recipients.iter().filter(|&&n| n == 2).count() + usize::from(end == 2);
    let missed = sent - reached_slow;
    let metrics = http.metrics();
    assert_eq!(
        metrics.value("wshub_slow_consumer_drops_total"),
        missed as u64
    );
    assert_eq!(metrics.value("wshub_slow_consumer_closes_total"), 0);
    assert_eq!(
        metrics.value("wshub_deliveries_total"),
        (sent + reached_slow) as u64
    );
    assert_eq!(metrics.value("wshub_subscriptions"), 2);
    assert_eq!(metrics.value("wshub_connections"), 3);

    // The slow subscriber now reads: exactly the messages queued for it, in
    // increasing order, whole.
    let mut last = None;
    for _ in 0..reached_slow - usize::from(end == 2) {
        let seq = flood_seq(&slow.expect_message(op::BINARY));
        assert!(last < Some(seq), "slow subscriber: {seq} after {last:?}");
        last = Some(seq);
    }
    if end == 2 {
        assert_eq!(slow.expect_message(op::BINARY), FLOOD_END);
    }
    // Having caught up, it gets new messages again.
    assert_eq!(http.publish_ok("feed", None, b"caught up"), 2);
    assert_eq!(slow.expect_message(op::BINARY), b"caught up");
    assert_eq!(fast.expect_message(op::BINARY), b"caught up");
    println!("slow consumer (drop) received {reached_slow}, missed {missed}");
}

// ---------------------------------------------------------------------------
// Refused subscriptions
// ---------------------------------------------------------------------------

/// Sends an upgrade request for `path` and expects a `400` whose body
/// contains `reason`, after which the server closes the connection.
fn expect_refused(server: &TestServer, path: &str, reason: &str) {
    let mut client = RawClient::connect(server.addr);
    let key = fresh_key();
    client.send(upgrade_request(path, &server.addr.to_string(), &key).as_bytes());
    let response = client.read_http_response();
    assert_eq!(response.status, 400, "{path}: {response:?}");
    assert!(
        response.body_text().contains(reason),
        "{path}: body {:?} lacks {reason:?}",
        response.body_text()
    );
    assert_eq!(response.header("Connection"), Some("close"), "{path}");
    client.expect_eof();
}

fn channels_query(count: usize) -> String {
    let params: Vec<String> = (0..count).map(|i| format!("channel=c{i}")).collect();
    format!("/live?{}", params.join("&"))
}

#[test]
fn bad_subscriptions_are_refused_with_400_and_a_reason() {
    let server = hub_server(ClientMessages::Ignore, false);
    let long = "a".repeat(129);
    let invalid = "invalid channel name";
    expect_refused(&server, &format!("/live/{long}"), invalid);
    expect_refused(&server, &format!("/live?channel={long}"), invalid);
    expect_refused(&server, "/live/a%20b", invalid);
    expect_refused(&server, "/live/a/b", invalid);
    expect_refused(&server, "/live/caf%C3%A9", invalid);
    expect_refused(&server, "/live?channel=", invalid);
    expect_refused(&server, "/live?channel=ok&channel=not+ok", invalid);
    let none = "no channel given";
    expect_refused(&server, "/live", none);
    expect_refused(&server, "/live/", none);
    expect_refused(&server, "/live?room=a", none);
    expect_refused(
        &server,
        &channels_query(17),
        "too many channels: at most 16 per connection",
    );

    // Nothing was subscribed by the refused requests.
    let mut http = publisher(&server);
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_subscriptions"), 0);
    assert_eq!(metrics.value("wshub_channels"), 0);
    assert_eq!(metrics.value("wshub_handshakes_accepted_total"), 0);
    assert_eq!(
        metrics.value("wshub_requests_refused_total{reason=\"bad_request\"}"),
        11
    );
}

#[test]
fn limits_are_inclusive_128_byte_name_and_16_channels() {
    let server = hub_server(ClientMessages::Ignore, false);
    let longest = format!("{}-:.@_", "Az9".repeat(41));
    assert_eq!(longest.len(), 128);
    let mut long_name = subscribe(&server, &format!("/live/{longest}"));
    let mut sixteen = subscribe(&server, &channels_query(16));
    let mut http = publisher(&server);
    assert_eq!(http.publish_ok(&longest, Some("text/plain"), b"long"), 1);
    assert_eq!(text(&mut long_name), "long");
    for i in [0, 7, 15] {
        let channel = format!("c{i}");
        assert_eq!(
            http.publish_ok(&channel, Some("text/plain"), channel.as_bytes()),
            1
        );
        assert_eq!(text(&mut sixteen), channel);
    }
    let metrics = http.metrics();
    assert_eq!(metrics.value("wshub_subscriptions"), 17);
    assert_eq!(metrics.value("wshub_channels"), 17);
}

#[test]
fn channel_cap_follows_the_config() {
    let mut config = broadcast_config(ClientMessages::Ignore, false);
    config.max_channels_per_connection = 2;
    let server = TestServer::with_config(config);
    subscribe(&server, &channels_query(2));
    expect_refused(
        &server,
        &channels_query(3),
        "too many channels: at most 2 per connection",
    );
}
