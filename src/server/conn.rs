//! One client connection: the state machine
//! `AwaitingHandshake → Open → Closing`, after which the loop removes it.
//!
//! Owns: the connection's transport, its phase, the sans-IO receiver, its
//! outbound queue and the few timestamps its deadlines derive from.
//! Must never: block, touch another connection, or keep a buffer while it has
//! nothing in flight — bytes are handed in from the loop's shared receive
//! buffer and only a leftover fragment is ever copied.

use log::debug;

use super::outqueue::OutQueue;
use super::transport::Transport;
use crate::config::{Config, RouteKind};
use crate::protocol::close::{self, CloseCode};
use crate::protocol::frame::{MAX_CONTROL_PAYLOAD, OpCode};
use crate::protocol::handshake;
use crate::protocol::http::{self, HeadReader, RequestHead};
use crate::protocol::message::{Event, Flow, Limits, Receiver};
use crate::route::{HEALTH_PATH, RouteId, Routes};
use crate::timer::TimerKey;

/// What a connection needs from the loop to process input.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub routes: &'a Routes,
    /// Milliseconds on the loop's clock.
    pub now: u64,
}

impl Ctx<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_frame_size: self.config.max_frame_size,
            max_message_size: self.config.max_message_size,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading the HTTP request head.
    AwaitingHandshake(HeadReader),
    Open,
    /// Our last bytes (a close frame or an HTTP error) are queued or sent;
    /// nothing else will be. The write side is shut once they are flushed,
    /// then the connection lingers until the peer is done or `close_timeout`.
    Closing {
        /// Keep decoding frames to see the peer's close frame.
        websocket: bool,
        /// The peer's close frame has arrived: nothing left to wait for.
        peer_closed: bool,
    },
}

/// A client connection owned by the loop's slab.
#[derive(Debug)]
pub struct Connection {
    pub transport: Transport,
    /// Generation of the slab slot, part of the poll token, so a late event
    /// for a closed connection never reaches one that reuses the slot.
    pub generation: u32,
    /// The single timer wheel entry of this connection, if any deadline applies.
    pub timer: Option<TimerKey>,
    pub out: OutQueue,
    phase: Phase,
    receiver: Receiver,
    /// Input received but not yet processed because the outbound queue was
    /// over its limit. Empty (no allocation) almost always.
    pending_in: Vec<u8>,
    route: RouteId,
    /// When anything was last received.
    last_recv: u64,
    /// When the current wait began: accept, the outstanding ping, or the close.
    since: u64,
    ping_outstanding: bool,
    write_shut: bool,
    eof: bool,
    /// WRITABLE interest is registered with the poller.
    pub write_interest: bool,
}

impl Connection {
    pub fn new(transport: Transport, generation: u32, now: u64) -> Connection {
        Connection {
            transport,
            generation,
            timer: None,
            out: OutQueue::default(),
            phase: Phase::AwaitingHandshake(HeadReader::new()),
            receiver: Receiver::new(),
            pending_in: Vec::new(),
            route: RouteId(0),
            last_recv: now,
            since: now,
            ping_outstanding: false,
            write_shut: false,
            eof: false,
            write_interest: false,
        }
    }

    /// The loop should read from the socket (not paused by backpressure, not at EOF).
    pub fn wants_read(&self) -> bool {
        self.pending_in.is_empty() && !self.eof
    }

    /// The peer closed its side of the TCP connection: nothing more will
    /// arrive, but what is already queued for it still goes out (within the
    /// close timeout).
    pub fn on_eof(&mut self, now: u64) {
        self.eof = true;
        match &mut self.phase {
            Phase::AwaitingHandshake(_) | Phase::Open => {
                self.phase = Phase::Closing {
                    websocket: false,
                    peer_closed: true,
                };
                self.since = now;
            }
            Phase::Closing { peer_closed, .. } => *peer_closed = true,
        }
        self.pending_in = Vec::new();
    }

    /// Nothing more can happen on this connection: the loop removes it.
    pub fn is_finished(&self) -> bool {
        let peer_done = matches!(
            self.phase,
            Phase::Closing {
                peer_closed: true,
                ..
            }
        );
        peer_done && (self.write_shut || self.out.is_empty())
    }

    /// Input is held back until the outbound queue drains.
    pub fn has_pending_input(&self) -> bool {
        !self.pending_in.is_empty()
    }

    /// Processes bytes just read from the socket.
    pub fn on_input(&mut self, mut input: &mut [u8], ctx: &Ctx<'_>) {
        self.last_recv = ctx.now;
        if let Phase::AwaitingHandshake(reader) = &mut self.phase {
            match reader.feed(input) {
                Ok(None) => return,
                Ok(Some((head, used))) => {
                    self.on_request(&head, ctx);
                    input = &mut input[used..];
                }
                Err(e) => {
                    debug!("bad request head: {e}");
                    self.reply_http_and_close(e.status(), &[], &format!("{e}\n"), ctx.now);
                    return;
                }
            }
        }
        match self.phase {
            Phase::Open => self.feed_open(input, ctx),
            Phase::Closing {
                websocket: true,
                peer_closed: false,
            } => self.feed_closing(input, ctx),
            // Bytes after an HTTP error, or after both closes: discard.
            _ => {}
        }
    }

    /// Processes input held back by backpressure once the outbound queue has
    /// drained below its limit. Returns true if reading may resume.
    pub fn resume(&mut self, ctx: &Ctx<'_>) -> bool {
        if self.pending_in.is_empty() {
            return true;
        }
        if self.out.len() > ctx.config.max_backlog_bytes {
            return false;
        }
        let mut held = std::mem::take(&mut self.pending_in);
        let now = self.last_recv;
        self.on_input(&mut held, ctx);
        // Received time is when the bytes arrived, not when they were processed.
        self.last_recv = now;
        self.pending_in.is_empty()
    }

    fn on_request(&mut self, head: &RequestHead, ctx: &Ctx<'_>) {
        if head.path == HEALTH_PATH {
            if head.method == "GET" {
                self.reply_http_and_close(200, &[], "ok\n", ctx.now);
            } else {
                self.reply_http_and_close(405, &[("Allow", "GET")], "use GET\n", ctx.now);
            }
            return;
        }
        let Some(route) = ctx.routes.lookup(&head.path) else {
            debug!("no route for {}", head.path);
            self.reply_http_and_close(404, &[], "no WebSocket route at this path\n", ctx.now);
            return;
        };
        match handshake::validate(head) {
            Ok(upgrade) => {
                self.out
                    .push_with(|buf| handshake::write_accept(&upgrade, None, None, buf));
                self.route = route;
                self.phase = Phase::Open;
                debug!("websocket open on {}", head.path);
            }
            Err(rejection) => {
                debug!("handshake refused on {}: {rejection}", head.path);
                self.out.push_with(|buf| rejection.write_response(buf));
                self.enter_closing(false, ctx.now);
            }
        }
    }

    fn reply_http_and_close(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        now: u64,
    ) {
        self.out
            .push_with(|buf| http::write_response(status, headers, body.as_bytes(), true, buf));
        self.enter_closing(false, now);
    }

    fn feed_open(&mut self, input: &mut [u8], ctx: &Ctx<'_>) {
        let backlog = ctx.config.max_backlog_bytes;
        let kind = ctx.routes.get(self.route).map(|r| r.kind);
        let out = &mut self.out;
        let mut peer_close = None;
        let result = self.receiver.feed(input, &ctx.limits(), |event| {
            match event {
                Event::Text(data) => on_message(kind, OpCode::Text, data, out),
                Event::Binary(data) => on_message(kind, OpCode::Binary, data, out),
                Event::Ping(data) => out.push_frame(OpCode::Pong, data),
                Event::Pong(_) => {}
                Event::Close(status) => peer_close = Some(status.map(|(code, _)| code)),
            }
            if out.len() > backlog {
                Flow::Pause
            } else {
                Flow::Continue
            }
        });
        match result {
            Err(error) => {
                debug!("protocol error: {error}");
                self.send_close(error.code, error.reason, ctx.now);
            }
            Ok(_) if peer_close.is_some() => {
                let code = close::reply_code(peer_close.flatten());
                self.send_close(code, "", ctx.now);
                self.phase = Phase::Closing {
                    websocket: true,
                    peer_closed: true,
                };
            }
            Ok(used) => {
                if let Some(rest) = input.get(used..).filter(|r| !r.is_empty()) {
                    self.pending_in.extend_from_slice(rest);
                }
            }
        }
    }

    /// After our close frame: only the peer's close frame matters now.
    fn feed_closing(&mut self, input: &mut [u8], ctx: &Ctx<'_>) {
        let mut peer_closed = false;
        let result = self.receiver.feed(input, &ctx.limits(), |event| {
            if let Event::Close(_) = event {
                peer_closed = true;
            }
            Flow::Continue
        });
        if peer_closed || result.is_err() {
            // A broken frame after our close ends the wait just like a close would.
            self.phase = Phase::Closing {
                websocket: true,
                peer_closed: true,
            };
        }
    }

    /// Starts the closing handshake from our side (or answers the peer's).
    pub fn send_close(&mut self, code: CloseCode, reason: &str, now: u64) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = close::encode_close_payload(code, reason, &mut payload);
        self.out.push_frame(OpCode::Close, &payload[..len]);
        self.enter_closing(true, now);
    }

    fn enter_closing(&mut self, websocket: bool, now: u64) {
        self.phase = Phase::Closing {
            websocket,
            peer_closed: false,
        };
        self.since = now;
        self.pending_in = Vec::new();
    }

    /// Called after the outbound queue was flushed: once our final bytes are
    /// out, send FIN so the peer sees the end, but keep reading its reply.
    pub fn after_flush(&mut self) {
        if self.out.is_empty() && !self.write_shut && matches!(self.phase, Phase::Closing { .. }) {
            // Failure here means the peer is already gone; EOF or the close
            // timeout ends the connection either way.
            let _ = self.transport.shutdown_write();
            self.write_shut = true;
        }
    }

    /// The earliest time something must happen on this connection.
    pub fn next_deadline(&self, config: &Config) -> Option<u64> {
        match self.phase {
            Phase::AwaitingHandshake(_) => Some(after(self.since, config.handshake_timeout)),
            Phase::Closing { .. } => Some(after(self.since, config.close_timeout)),
            Phase::Open => {
                let ping = (!config.ping_interval.is_zero()).then(|| {
                    if self.ping_outstanding && self.last_recv < self.since {
                        after(self.since, config.pong_timeout)
                    } else {
                        after(self.last_recv, config.ping_interval)
                    }
                });
                let idle = (!config.idle_timeout.is_zero())
                    .then(|| after(self.last_recv, config.idle_timeout));
                match (ping, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// The connection's timer fired: act on whatever deadline has passed.
    /// Returns false when the connection must be dropped at once.
    pub fn on_timer(&mut self, config: &Config, now: u64) -> bool {
        match self.phase {
            Phase::AwaitingHandshake(_) => {
                if now >= after(self.since, config.handshake_timeout) {
                    debug!("handshake timeout");
                    return false;
                }
            }
            Phase::Closing { .. } => {
                if now >= after(self.since, config.close_timeout) {
                    debug!("close timeout");
                    return false;
                }
            }
            Phase::Open => {
                if !config.idle_timeout.is_zero()
                    && now >= after(self.last_recv, config.idle_timeout)
                {
                    debug!("idle timeout");
                    self.send_close(CloseCode::NORMAL, "idle timeout", now);
                    return true;
                }
                if self.ping_outstanding {
                    if self.last_recv >= self.since {
                        self.ping_outstanding = false;
                    } else if now >= after(self.since, config.pong_timeout) {
                        debug!("no pong within the pong timeout");
                        return false;
                    }
                }
                if !self.ping_outstanding
                    && !config.ping_interval.is_zero()
                    && now >= after(self.last_recv, config.ping_interval)
                {
                    self.out.push_frame(OpCode::Ping, b"");
                    self.ping_outstanding = true;
                    self.since = now;
                }
            }
        }
        true
    }
}

/// What a route does with a whole message from its client.
fn on_message(kind: Option<RouteKind>, opcode: OpCode, data: &[u8], out: &mut OutQueue) {
    match kind {
        Some(RouteKind::Echo) => out.push_frame(opcode, data),
        None => {}
    }
}

/// `start` plus a configured duration, saturating rather than overflowing on
/// absurdly long settings.
fn after(start: u64, d: std::time::Duration) -> u64 {
    start.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
