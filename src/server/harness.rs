//! Test harness: connections driven on a virtual clock, with no socket, no
//! poller and no sleep (quinn-proto's test `Pair` is the model).
//!
//! Owns: the in-memory [`Wire`] a connection writes into, the loop's shared
//! state for tests ([`Env`]), one driven connection ([`Driven`]) that reacts
//! to input, EOF and deadlines the way the event loop does, and small client
//! frame helpers.
//! Must never: be compiled outside tests, open a socket, or read the wall
//! clock: time moves only when a test says so.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use super::compress::Codec;
use super::conn::{Action, Connection, Ctx};
use super::outqueue::Sink;
use super::slot::Slot;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::frame::{self, OpCode};
use crate::protocol::message::Inflater;
use crate::route::Routes;

/// The peer end of a connection in memory: takes up to `room` bytes, then
/// reports `WouldBlock` like a full socket.
#[derive(Debug)]
pub(super) struct Wire {
    pub bytes: Vec<u8>,
    pub room: usize,
    /// The connection asked for its write side to be shut (FIN).
    pub write_shut: bool,
    /// Writes that took bytes.
    pub writes: usize,
}

impl Default for Wire {
    fn default() -> Wire {
        Wire {
            bytes: Vec::new(),
            room: usize::MAX,
            write_shut: false,
            writes: 0,
        }
    }
}

impl Sink for Wire {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(self.room - n);
            self.bytes.extend_from_slice(&buf[..take]);
            n += take;
        }
        self.room -= n;
        self.writes += 1;
        Ok(n)
    }
}

/// What the loop shares with every connection, and the virtual clock.
pub(super) struct Env {
    pub config: Config,
    pub routes: Routes,
    pub metrics: Metrics,
    pub actions: Vec<Action>,
    pub codec: Codec,
    pub inflater: Inflater,
    /// Milliseconds on the virtual clock.
    pub now: u64,
}

impl Env {
    pub(super) fn new(config: Config) -> Env {
        Env {
            routes: Routes::new(&config),
            metrics: Metrics::new(config.routes.len()),
            actions: Vec::new(),
            codec: Codec::default(),
            inflater: Inflater::new(),
            config,
            now: 0,
        }
    }

    /// The Prometheus text of the metrics.
    pub(super) fn metrics_text(&self) -> String {
        let mut text = Vec::new();
        self.metrics.render(self.routes.paths(), &mut text);
        String::from_utf8(text).expect("metrics are UTF-8")
    }

    pub(super) fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            routes: &self.routes,
            metrics: &mut self.metrics,
            actions: &mut self.actions,
            codec: &mut self.codec,
            inflater: &mut self.inflater,
            now: self.now,
            unix_ms: UNIX_MS_AT_ZERO + self.now,
            degraded: None,
        }
    }
}

/// The wall clock when the virtual clock reads 0 (ms since the Unix epoch).
pub(super) const UNIX_MS_AT_ZERO: u64 = 1_800_000_000_000;

/// A loopback client address.
pub(super) fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// A client's upgrade request for `path`.
pub(super) fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A final, masked client frame.
pub(super) fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    let mut out = Vec::new();
    frame::write_frame(&mut out, true, 0, opcode, payload);
    // Set the mask bit and insert the key after the header.
    let header_len = out.len() - payload.len();
    out[1] |= 0x80;
    let mut body = out.split_off(header_len);
    frame::apply_mask(&mut body, MASK, 0);
    out.extend_from_slice(&MASK);
    out.extend_from_slice(&body);
    out
}

/// Splits unmasked server frames: (opcode, payload) of each whole frame,
/// and how many bytes at the end are not a whole frame.
pub(super) fn server_frames(mut bytes: &[u8]) -> (Vec<(OpCode, Vec<u8>)>, usize) {
    let mut frames = Vec::new();
    loop {
        let [b0, b1, rest @ ..] = bytes else {
            return (frames, bytes.len());
        };
        let (len, header) = match b1 & 0x7F {
            126 if rest.len() >= 2 => (usize::from(u16::from_be_bytes([rest[0], rest[1]])), 4),
            127 if rest.len() >= 8 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[..8]);
                (usize::try_from(u64::from_be_bytes(n)).unwrap(), 10)
            }
            126 | 127 => return (frames, bytes.len()),
            n => (usize::from(n), 2),
        };
        if bytes.len() < header + len {
            return (frames, bytes.len());
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).expect("server opcode");
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
}

/// The close code of a close frame's payload.
pub(super) fn close_code(payload: &[u8]) -> Option<u16> {
    payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// One connection driven as the loop drives it: after every input, EOF or
/// deadline its output is flushed into `wire`, its write side shut when it
/// asks, and it is dropped when finished or expired.
pub(super) struct Driven {
    pub env: Env,
    pub conn: Connection,
    pub wire: Wire,
    /// When the loop would have removed the connection.
    pub dropped: Option<u64>,
}

impl Driven {
    /// A connection just accepted at time 0.
    pub(super) fn accepted(config: Config) -> Driven {
        let env = Env::new(config);
        Driven {
            conn: Connection::new(peer(), env.now),
            env,
            wire: Wire::default(),
            dropped: None,
        }
    }

    /// A WebSocket opened on `path` at time 0; the 101 answer is consumed.
    pub(super) fn open(config: Config, path: &str) -> Driven {
        let mut driven = Driven::accepted(config);
        driven.send(&upgrade_request(path));
        let answer = driven.take();
        assert!(
            answer.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(driven.conn.is_open());
        driven
    }

    /// The peer sends `bytes` now.
    pub(super) fn send(&mut self, bytes: &[u8]) {
        let mut input = bytes.to_vec();
        let mut ctx = self.env.ctx();
        self.conn.on_input(&mut input, &mut ctx);
        // Hub work is the loop's; these tests drive one connection alone.
        self.env.actions.clear();
        self.settle();
    }

    /// The peer closes its side of TCP now.
    pub(super) fn eof(&mut self) {
        self.conn.on_eof(self.env.now);
        self.settle();
    }

    /// Moves the clock to `at`, handling every deadline on the way at the
    /// moment it falls due.
    pub(super) fn advance_to(&mut self, at: u64) {
        while self.dropped.is_none() {
            let Some(due) = self.conn.next_deadline(&self.env.config) else {
                break;
            };
            if due > at {
                break;
            }
            self.env.now = self.env.now.max(due);
            if self
                .conn
                .on_timer(&self.env.config, &mut self.env.metrics, self.env.now)
            {
                self.settle();
            } else {
                self.dropped = Some(self.env.now);
            }
        }
        self.env.now = self.env.now.max(at);
    }

    /// Bytes written so far and not yet taken.
    pub(super) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire.bytes)
    }

    /// The whole frames written so far (taken).
    pub(super) fn frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let bytes = self.take();
        let (frames, partial) = server_frames(&bytes);
        assert_eq!(partial, 0, "a frame was cut");
        frames
    }

    /// What the loop does after driving: flush, shut, remove when finished.
    pub(super) fn settle(&mut self) {
        if self.dropped.is_some() {
            return;
        }
        if self.conn.flush(&mut self.wire).is_err() {
            self.dropped = Some(self.env.now);
            return;
        }
        if self.conn.poll_shutdown_write() {
            self.wire.write_shut = true;
        }
        if self.conn.is_finished() {
            self.dropped = Some(self.env.now);
        }
    }
}

/// A slot whose connection opened a WebSocket on `path` at `env.now`, the
/// way the loop holds it; the 101 answer is consumed and the connection's
/// actions (its subscriptions) are left in `env.actions`.
pub(super) fn open_slot(env: &mut Env, path: &str) -> Slot<Wire> {
    let mut conn = Connection::new(peer(), env.now);
    let mut request = upgrade_request(path);
    conn.on_input(&mut request, &mut env.ctx());
    let mut wire = Wire::default();
    conn.flush(&mut wire).expect("in-memory wire");
    assert!(wire.bytes.starts_with(b"HTTP/1.1 101"));
    wire.bytes.clear();
    Slot::new(wire, conn, 1, None)
}
