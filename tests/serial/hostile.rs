//! Slowloris: 2,000 connections that dribble a request head one byte per
//! second never complete a handshake, so `handshake_timeout` drops every
//! one of them, while an established client's echoes stay fast throughout.
//!
//! The other hostile-client tests that measure live beside it in
//! `hostile_*.rs`; this binary runs its tests one at a time, so their
//! measurements do not disturb each other.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::{ECHO_PATH, IO_TIMEOUT, RawClient, code, op};
use crate::support::http::wait_for_metric;
use crate::support::load::{connect_from, ensure_nofile, percentile, source_address};
use crate::support::server::TestServer;

const SLOW_CLIENTS: usize = 2_000;
/// Source addresses 127.0.0.2 ..= 127.0.0.9.
const SOURCE_ADDRESSES: usize = 8;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time past the handshake timeout by which every slow client must be gone.
const MARGIN: Duration = Duration::from_secs(3);
/// A dribbled byte per connection this often.
const DRIBBLE_EVERY: Duration = Duration::from_secs(1);
/// How often the slow clients are checked for EOF.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// Connections opened before waiting for the server to have accepted them
/// all, so every client's clock starts when the server's does and the
/// lifetimes measured here are the server's handshake timeout.
const CONNECT_BATCH: usize = 100;
const MIN_ROUND_TRIPS: usize = 200;
const MAX_P99: Duration = Duration::from_millis(50);
/// Pause between two echo round trips of the measuring client.
const ECHO_PAUSE: Duration = Duration::from_millis(2);

/// A request head that would be valid, if it were ever finished.
const SLOW_REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

struct Slow {
    stream: TcpStream,
    connected: Instant,
    sent: usize,
    /// When EOF (or a reset) was first seen.
    closed: Option<Instant>,
    /// Bytes the server sent before closing (it should send none).
    answered: usize,
    /// Closed by a FIN rather than a reset or a refused write.
    eof: bool,
}

impl Slow {
    /// Sends the next byte of the request; a refused write means the server
    /// has closed the connection.
    fn dribble(&mut self, now: Instant) {
        let byte = [SLOW_REQUEST[self.sent % (SLOW_REQUEST.len() - 4)]];
        match self.stream.write(&byte) {
            Ok(_) => self.sent += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed = Some(now),
        }
    }

    fn check_closed(&mut self, now: Instant) {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break self.closed = Some(now);
                }
                Ok(n) => self.answered += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break self.closed = Some(now),
            }
        }
    }
}

/// Echo round trips, timed, until `stop` is set.
fn measure_echoes(server_addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut client = RawClient::open(server_addr, ECHO_PATH);
    let mut samples = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let text = format!("round trip {seq}");
        let start = Instant::now();
        client.send_text(&text);
        let frame = client.read_server_frame();
        samples.push(start.elapsed());
        assert_eq!(frame.opcode, op::TEXT);
        assert_eq!(frame.payload, text.as_bytes());
        seq += 1;
        std::thread::sleep(ECHO_PAUSE);
    }
    client.send_close(code::NORMAL, b"");
    client.expect_close(code::NORMAL);
    samples
}

#[test]
fn slowloris_connections_time_out_while_echo_stays_fast() {
    let _alone = crate::alone();
    // Both ends of every connection live in this process.
    ensure_nofile(2 * SLOW_CLIENTS as u64 + 256);
    let server = TestServer::with(|config| config.handshake_timeout = HANDSHAKE_TIMEOUT);
    let addr = server.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || measure_echoes(addr, stop))
    };

    let connect_start = Instant::now();
    let mut slow: Vec<Slow> = (0..SLOW_CLIENTS)
        .map(|i| {
            if i % CONNECT_BATCH == 0 {
                // One more for the echo client, one for the metrics request.
                let held = wait_for_metric(addr, "wshub_connections", i as u64 + 2, IO_TIMEOUT);
                assert_eq!(held, i as u64 + 2, "server holds {held} connections");
            }
            let stream = connect_from(source_address(i, SOURCE_ADDRESSES), addr)
                .unwrap_or_else(|e| panic!("slow client {i}: connect failed: {e}"));
            stream.set_nonblocking(true).unwrap();
            let mut client = Slow {
                stream,
                connected: Instant::now(),
                sent: 0,
                closed: None,
                answered: 0,
                eof: false,
            };
            client.dribble(client.connected);
            client
        })
        .collect();
    let last_connect = Instant::now();
    eprintln!(
        "{SLOW_CLIENTS} slow clients connected in {:?}",
        last_connect - connect_start
    );

    let deadline = last_connect + HANDSHAKE_TIMEOUT + MARGIN;
    let mut next_dribble = Instant::now() + DRIBBLE_EVERY;
    loop {
        let now = Instant::now();
        let dribble = now >= next_dribble;
        if dribble {
            next_dribble += DRIBBLE_EVERY;
        }
        let mut open = 0;
        for client in slow.iter_mut().filter(|c| c.closed.is_none()) {
            client.check_closed(now);
            if client.closed.is_none() && dribble {
                client.dribble(now);
            }
            open += usize::from(client.closed.is_none());
        }
        if open == 0 || now >= deadline {
            break;
        }
        std::thread::sleep(CHECK_EVERY);
    }
    let attack_time = connect_start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut samples = echo.join().expect("echo client failed");

    let still_open = slow.iter().filter(|c| c.closed.is_none()).count();
    let lifetimes: Vec<Duration> = slow
        .iter()
        .filter_map(|c| Some(c.closed? - c.connected))
        .collect();
    let shortest = lifetimes.iter().min().copied().unwrap_or_default();
    let longest = lifetimes.iter().max().copied().unwrap_or_default();
    let answered = slow.iter().filter(|c| c.answered > 0).count();
    let by_eof = slow.iter().filter(|c| c.eof).count();
    let most_sent = slow.iter().map(|c| c.sent).max().unwrap_or(0);
    let p50 = percentile(&mut samples, 50);
    let p99 = percentile(&mut samples, 99);
    eprintln!(
        "slowloris: {} of {SLOW_CLIENTS} dropped ({by_eof} by EOF), lifetimes {shortest:?} ..= {longest:?} \
         (handshake_timeout {HANDSHAKE_TIMEOUT:?}), at most {most_sent} bytes sent each, \
         {answered} answered before closing; attack lasted {attack_time:?}",
        SLOW_CLIENTS - still_open
    );
    eprintln!(
        "echo during the attack: {} round trips, p50 {p50:?}, p99 {p99:?}",
        samples.len()
    );

    assert_eq!(
        still_open, 0,
        "slow clients still connected {MARGIN:?} past the handshake timeout"
    );
    assert!(
        shortest >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "a slow client was dropped after {shortest:?}, before the handshake timeout"
    );
    assert!(
        samples.len() >= MIN_ROUND_TRIPS,
        "only {} round trips during the attack",
        samples.len()
    );
    assert!(p99 < MAX_P99, "echo p99 {p99:?} during the attack");

    // Still serving after the attack.
    let mut client = server.client();
    client.send_text("after the attack");
    assert_eq!(client.expect_text(), "after the attack");
}
