//! One client connection: the state machine
//! `AwaitingHandshake → Open → Closing`, after which the loop removes it.
//!
//! While awaiting a handshake the connection speaks HTTP/1.1: health checks,
//! metrics and publishes are answered (keep-alive, pipelined, with bodies)
//! until a request upgrades it to WebSocket, or opens a Server-Sent Events
//! stream on a broadcast route (then `Open` means the stream: broadcast
//! events go out, keep-alive comments replace pings, input is discarded,
//! and the stream ends where a WebSocket would get a close frame; see
//! [`crate::protocol::sse`]). On a cluster node several
//! publishes may be out at Redis at once (at most [`MAX_QUEUED_RESPONSES`]
//! responses queued); every response, a `100 Continue` or a refusal
//! included, still leaves in request order, and an upgrade waits until the
//! answers before it are out.
//!
//! Sans-IO, in the manner of quinn-proto's `Connection`: bytes and `now` go
//! in ([`Connection::on_input`], [`Connection::on_eof`],
//! [`Connection::on_timer`]); out come bytes to send ([`Connection::flush`]
//! into any [`Sink`]), "shut the write side"
//! ([`Connection::poll_shutdown_write`]), the next deadline
//! ([`Connection::next_deadline`]) and hub work ([`Action`]s).
//!
//! Owns: the connection's phase, the sans-IO receiver, its outbound queue,
//! its channel memberships and the few timestamps its deadlines derive from.
//! Must never: touch a socket, a poller, a timer wheel or a clock (the loop's
//! slot holds those), block, touch another connection (work on others is
//! handed to the loop as an [`Action`]), or keep a buffer while it has
//! nothing in flight — bytes are handed in from the loop's shared receive
//! buffer and only a leftover fragment is ever copied.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use log::debug;

use super::compress::{Broadcast, Codec, Format};
use super::outqueue::{Flush, OutQueue, Sink};
use crate::auth::{self, CLOSE_TOKEN_EXPIRED, Failure, TOKEN_EXPIRED_REASON};
use crate::config::{ClientMessages, Config, RELAY_CHANNELS, RouteKind};
use crate::hub::NotRecovered;
use crate::hub::names::{Wanted, parse_options, parse_subscription};
use crate::hub::publish::{self, Access, PublishBody, Refusal};
use crate::hub::{Memberships, Position};
use crate::metrics::{Counted, Gauge, Metrics, Refused, Transport};
use crate::page;
use crate::protocol::close::{self, CloseCode};
use crate::protocol::deflate::{self, Params};
use crate::protocol::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use crate::protocol::handshake;
use crate::protocol::http::{self, HeadReader, RequestHead};
use crate::protocol::message::{Event, Flow, Inflater, Limits, Receiver};
use crate::protocol::sse;
use crate::route::{RouteId, Routes, Target};

mod handover;
pub(super) use handover::{Clocks, ConnState};

/// The reason in the close frame of a restart (close code 1012).
pub(super) const SERVICE_RESTART_REASON: &str = "service restart";

/// The reason in the close frame of an evicted slow consumer.
pub(super) const SLOW_CONSUMER_REASON: &str = "slow consumer";

/// HTTP responses a connection may have queued behind cluster publishes
/// still out at Redis (those publishes included). Past it, input is held
/// until answers come back: backpressure on a pipelining publisher.
pub(super) const MAX_QUEUED_RESPONSES: usize = 64;

/// Work a connection asks of the loop because it concerns other connections.
#[derive(Debug)]
pub(super) enum Action {
    /// Subscribe this connection to these channels (just upgraded), and
    /// recover those that give a position.
    Subscribe(Vec<Wanted>),
    /// Deliver `frame` to the channel's subscribers, then answer this
    /// connection's publish request.
    Publish {
        channel: String,
        message: Broadcast,
        keep_alive: bool,
    },
    /// Relay a subscriber's message to the other subscribers of its channels.
    Relay { message: Broadcast, to_sender: bool },
}

/// What a connection needs from the loop to process input.
pub(super) struct Ctx<'a> {
    pub config: &'a Config,
    pub routes: &'a Routes,
    pub metrics: &'a mut Metrics,
    pub actions: &'a mut Vec<Action>,
    /// The loop's compressor and inflater (permessage-deflate).
    pub codec: &'a mut Codec,
    pub inflater: &'a mut Inflater,
    /// Milliseconds on the loop's clock.
    pub now: u64,
    /// The wall clock (ms since the Unix epoch), for token times only.
    pub unix_ms: u64,
    /// Why this node is degraded (a cluster node whose Redis link is
    /// down): `/healthz` answers 503 with it.
    pub degraded: Option<&'a str>,
}

impl Ctx<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_frame_size: self.config.max_frame_size,
            max_message_size: self.config.max_message_size,
        }
    }
}

/// How an open connection receives broadcasts: one byte of state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// WebSocket frames as published.
    Plain,
    /// WebSocket frames with channel and position (`meta=1` or a recovery).
    Meta,
    /// A Server-Sent Events stream (one channel, positions as event ids).
    Sse,
}

/// What a subscriber is told of a channel as it subscribes (see
/// [`Connection::send_notice`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum Notice {
    /// Where the channel stands (no recovery asked for).
    Subscribed(Position),
    /// The replay that follows is everything missed.
    Recovered,
    /// What was missed cannot be replayed; the channel stands at `current`.
    NotRecovered {
        reason: NotRecovered,
        current: Position,
    },
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Speaking HTTP until a request upgrades the connection (its parser
    /// state is in `Connection::http`, present exactly in this phase).
    AwaitingHandshake,
    Open,
    /// Our last bytes (a close frame or an HTTP answer) are queued or sent;
    /// nothing else will be. The write side is shut once they are flushed,
    /// then the connection lingers until the peer is done or `close_timeout`.
    Closing {
        /// Keep decoding frames to see the peer's close frame.
        websocket: bool,
        /// The peer's close frame (or EOF) has arrived: nothing left to wait for.
        peer_closed: bool,
    },
}

#[derive(Debug, Default)]
struct HttpState {
    head: HeadReader,
    /// A publish whose body is still arriving.
    body: Option<PublishBody>,
    /// A request was answered: a keep-alive connection idle after it that
    /// runs into the handshake timeout had no request refused.
    served: bool,
    /// Responses in request order while cluster publishes are out at Redis:
    /// empty (no allocation) otherwise. The front entry is always
    /// [`Response::Pending`]; whatever is ready behind it goes out as soon
    /// as it is answered.
    responses: VecDeque<Response>,
    /// The sequence number of the next cluster publish.
    next_seq: u32,
    /// An upgrade request that came while publishes were out: it is served
    /// once they are all answered (its 101 must follow their answers, and
    /// broadcast frames the 101).
    deferred: Option<RequestHead>,
}

/// One HTTP response in a pipelined connection's queue.
#[derive(Debug)]
enum Response {
    /// The answer to cluster publish number `.0`, still out at Redis.
    Pending(u32),
    /// A response produced while publishes ahead of it were out.
    Ready(Vec<u8>),
}

impl HttpState {
    /// A request is outstanding: none came yet, or one is half-received.
    fn awaits_request(&self) -> bool {
        !self.served || self.body.is_some() || self.head.buffered_bytes() > 0
    }
}

/// A client connection: its protocol state only. The loop keeps it in a
/// slot next to its socket and bookkeeping.
#[derive(Debug)]
pub(super) struct Connection {
    out: OutQueue,
    /// Channels this connection is subscribed to.
    pub memberships: Memberships,
    phase: Phase,
    /// HTTP parser state while [`Phase::AwaitingHandshake`], `None` after.
    /// Kept apart from `phase` so the phase is a byte, not a tagged pointer.
    http: Option<Box<HttpState>>,
    receiver: Receiver,
    /// Input not yet processed: held back while the outbound queue is over
    /// its limit, or while the loop carries out an [`Action`] whose answer
    /// must precede it. Empty (no allocation) almost always.
    /// Boxed: one pointer instead of a three-word `Vec` in every connection.
    #[allow(clippy::box_collection)]
    pending_in: Option<Box<Vec<u8>>>,
    route: RouteId,
    /// permessage-deflate parameters, when negotiated: the only compression
    /// state a connection keeps (the codecs belong to the loop).
    deflate: Option<Params>,
    /// When anything was last received.
    last_recv: u64,
    /// When the current wait began: accept or last HTTP request, the
    /// outstanding ping (an event stream's last keep-alive), or the close.
    since: u64,
    /// A ping awaits its pong; on an event stream, the last keep-alive
    /// comment was queued and the queue has not run dry since.
    ping_outstanding: bool,
    /// Counted as an open WebSocket connection of `route`.
    upgraded: bool,
    /// The write side was shut (asked of the loop once, by
    /// [`Connection::poll_shutdown_write`]).
    write_shut: bool,
    /// The peer's address is a loopback one (captured at accept): without a
    /// publish token only such peers may publish.
    peer_loopback: bool,
    /// Cluster publishes out at Redis (at most [`MAX_QUEUED_RESPONSES`]):
    /// responses to requests after them wait in the HTTP state's queue.
    outstanding: u8,
    /// How broadcasts reach this client: plain frames, frames with their
    /// channel and position (`meta=1` or a recovery), or events of a
    /// stream — the one byte of state metadata and event streams cost.
    mode: Mode,
    /// Token auth: when the token expires, in whole seconds on the loop's
    /// clock (rounded up); 0 when no token bounds the connection.
    token_expires: u32,
    /// Token auth on a chat route: bit `i` set when the bearer's messages
    /// may be relayed to its `i`-th channel (subscription order); all set
    /// when no relay claim applies.
    relay_mask: u32,
}

impl Connection {
    /// A connection accepted from `peer` at `now`.
    pub(super) fn new(peer: SocketAddr, now: u64) -> Connection {
        Connection {
            out: OutQueue::default(),
            memberships: Memberships::default(),
            phase: Phase::AwaitingHandshake,
            http: Some(Box::default()),
            receiver: Receiver::new(),
            pending_in: None,
            route: RouteId::default(),
            deflate: None,
            last_recv: now,
            since: now,
            ping_outstanding: false,
            upgraded: false,
            write_shut: false,
            peer_loopback: peer.ip().to_canonical().is_loopback(),
            outstanding: 0,
            mode: Mode::Plain,
            token_expires: 0,
            relay_mask: u32::MAX,
        }
    }

    /// Bytes queued for the peer and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Bytes queued that the slow-consumer rule counts (a recovery's replay
    /// is exempt until written).
    pub(super) fn backlog(&self) -> usize {
        self.out.counted_len()
    }

    /// The client wants messages with their channel and position (a
    /// metadata WebSocket or an event stream, whose ids are positions).
    pub(super) fn meta(&self) -> bool {
        self.mode != Mode::Plain
    }

    /// The connection is a Server-Sent Events stream.
    pub(super) fn sse(&self) -> bool {
        self.mode == Mode::Sse
    }

    /// The form in which this connection gets a message of `channel` at
    /// `position`. An event stream's events carry the position as their id
    /// on a route that keeps history (the only kind a client can resume on).
    pub(super) fn format<'a>(
        &self,
        channel: &'a str,
        position: Option<Position>,
        routes: &Routes,
    ) -> Format<'a> {
        match self.mode {
            Mode::Plain => Format::Plain,
            Mode::Meta => Format::Meta { channel, position },
            Mode::Sse => {
                let history = routes
                    .get(self.route)
                    .is_some_and(|r| r.history().is_some());
                Format::Sse {
                    id: position.filter(|_| history),
                }
            }
        }
    }

    /// Queues a broadcast frame shared with other recipients.
    pub(super) fn deliver(&mut self, frame: Rc<[u8]>) {
        self.out.push_shared(frame);
    }

    /// Queues what a subscriber is told of a channel as it subscribes;
    /// `json` is the metadata answer (see [`crate::hub::meta`]). A WebSocket
    /// gets it as a text frame. An event stream gets `position` or
    /// `not-recovered` events with `json` as data and the position to resume
    /// from as id (none when the route keeps no history), and nothing for a
    /// successful recovery: the replayed events carry their own ids.
    pub(super) fn send_notice(&mut self, notice: Notice, json: &[u8]) {
        if self.mode != Mode::Sse {
            self.out.push_frame(OpCode::Text, json);
            return;
        }
        let (event, id) = match notice {
            Notice::Recovered => return,
            Notice::Subscribed(current) => (sse::EVENT_POSITION, Some(current)),
            Notice::NotRecovered { reason, current } => (
                sse::EVENT_NOT_RECOVERED,
                (reason != NotRecovered::NoHistory).then_some(current),
            ),
        };
        self.push_event(id, event, json);
    }

    /// Queues an event of this stream's own.
    fn push_event(&mut self, id: Option<Position>, event: &str, data: &[u8]) {
        let data = sse::Data::Text(data);
        self.out.push_sized(sse::max_event_len(data), |buf| {
            sse::write_event(id, Some(event), data, buf);
        });
    }

    /// The last `bytes` queued are a recovery: not counted against
    /// `max_backlog_bytes` until written.
    pub(super) fn exempt(&mut self, bytes: usize) {
        self.out.exempt(bytes);
    }

    /// Queues the answer to this connection's publish request, with the
    /// message's position when it got one.
    pub(super) fn answer_publish(
        &mut self,
        channel: &str,
        recipients: usize,
        position: Option<Position>,
        keep_alive: bool,
    ) {
        self.out.push_with(|buf| {
            publish::write_published(channel, recipients, position, keep_alive, buf);
        });
    }

    /// The publish just asked for goes to Redis: its answer comes later,
    /// with the sequence number returned here. Its place among the
    /// connection's responses is kept, so requests after it go on.
    pub(super) fn await_answer(&mut self) -> u32 {
        self.outstanding = self.outstanding.saturating_add(1);
        match self.http.as_deref_mut() {
            Some(state) => {
                let seq = state.next_seq;
                state.next_seq = seq.wrapping_add(1);
                state.responses.push_back(Response::Pending(seq));
                seq
            }
            // The publish was the connection's last request (it closes):
            // nothing can follow its answer.
            None => 0,
        }
    }

    /// Input waits for answers from Redis: the response queue is full, an
    /// upgrade waits for the publishes before it, or the last request's
    /// answer is out.
    pub(super) fn waits_for_answers(&self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        self.http
            .as_deref()
            .is_none_or(|s| s.responses.len() >= MAX_QUEUED_RESPONSES || s.deferred.is_some())
    }

    /// Queues the answer to cluster publish `seq` (from
    /// [`Connection::await_answer`]): the Redis subscribers (nodes) it
    /// reached, or 503 and why nothing was delivered. Answers may come in
    /// any order; responses still leave in request order.
    pub(super) fn answer_bus_publish(
        &mut self,
        seq: u32,
        channel: &str,
        keep_alive: bool,
        outcome: Result<crate::bus::Published, &str>,
    ) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let write = |buf: &mut Vec<u8>| match outcome {
            Ok(crate::bus::Published { nodes, position }) => {
                let nodes = usize::try_from(nodes).unwrap_or(usize::MAX);
                publish::write_published(channel, nodes, position, keep_alive, buf);
            }
            Err(reason) => write_unavailable(reason, keep_alive, buf),
        };
        let Some(state) = self.http.as_deref_mut() else {
            self.out.push_with(write);
            return;
        };
        let at = state
            .responses
            .iter()
            .position(|r| matches!(r, Response::Pending(s) if *s == seq));
        match at {
            Some(0) => {
                state.responses.pop_front();
                self.out.push_with(write);
                while let Some(Response::Ready(_)) = state.responses.front() {
                    if let Some(Response::Ready(bytes)) = state.responses.pop_front() {
                        self.out
                            .push_sized(bytes.len(), |buf| buf.extend_from_slice(&bytes));
                    }
                }
            }
            Some(i) => {
                let mut bytes = Vec::new();
                write(&mut bytes);
                if let Some(entry) = state.responses.get_mut(i) {
                    *entry = Response::Ready(bytes);
                }
            }
            None => self.out.push_with(write),
        }
        self.release_http_state();
    }

    /// Queues an HTTP response: straight out, or behind the answers still
    /// awaited from Redis.
    fn push_response(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        match self.http.as_deref_mut() {
            Some(state) if !state.responses.is_empty() => {
                let mut bytes = Vec::new();
                write(&mut bytes);
                state.responses.push_back(Response::Ready(bytes));
            }
            _ => self.out.push_with(write),
        }
    }

    /// A closing connection keeps its HTTP state only for the responses
    /// still queued in it.
    fn release_http_state(&mut self) {
        if !matches!(self.phase, Phase::AwaitingHandshake)
            && self.http.as_ref().is_some_and(|s| s.responses.is_empty())
        {
            self.http = None;
        }
    }

    /// Writes queued bytes into `sink` until it is full or they are all out.
    pub(super) fn flush(&mut self, sink: &mut impl Sink) -> io::Result<Flush> {
        let flushed = self.out.flush(sink);
        if self.mode == Mode::Sse && self.out.is_empty() {
            // The client took everything, its last keep-alive included.
            self.ping_outstanding = false;
        }
        flushed
    }

    /// True once, when our last bytes are out and the write side should be
    /// shut (FIN) so the peer sees the end; reading goes on for its reply.
    pub(super) fn poll_shutdown_write(&mut self) -> bool {
        if self.out.is_empty()
            && !self.write_shut
            && self.outstanding == 0
            && matches!(self.phase, Phase::Closing { .. })
        {
            self.write_shut = true;
            return true;
        }
        false
    }

    /// Moves to `phase`; the HTTP parser state goes once the phase is left
    /// (its response queue stays until the answers ahead are out).
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        if let Some(state) = self.http.as_deref_mut()
            && !matches!(phase, Phase::AwaitingHandshake)
        {
            state.head = HeadReader::default();
            state.body = None;
            state.deferred = None;
            self.release_http_state();
        }
    }

    /// The loop should read from the socket (nothing held back, peer not done).
    pub(super) fn wants_read(&self) -> bool {
        self.pending_in.is_none() && !self.peer_done() && !self.waits_for_answers()
    }

    fn peer_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                peer_closed: true,
                ..
            }
        )
    }

    /// Broadcast frames may be queued: the connection is an open WebSocket
    /// or event stream.
    pub(super) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// The route the connection was upgraded on.
    pub(super) fn route(&self) -> RouteId {
        self.route
    }

    /// The negotiated permessage-deflate parameters, if any.
    pub(super) fn deflate(&self) -> Option<Params> {
        self.deflate
    }

    /// The open-connection gauge (route and transport) that counts this
    /// connection.
    pub(super) fn counted_route(&self) -> Option<Counted> {
        self.upgraded.then_some(Counted(self.gauge()))
    }

    /// The gauge an imported connection is counted in, if it is open.
    pub(super) fn counted_gauge(&self) -> Option<Gauge> {
        self.upgraded.then(|| self.gauge())
    }

    fn gauge(&self) -> Gauge {
        Gauge {
            route: self.route,
            transport: match self.mode {
                Mode::Sse => Transport::Sse,
                Mode::Plain | Mode::Meta => Transport::WebSocket,
            },
        }
    }

    /// The peer closed its side of the TCP connection: nothing more will
    /// arrive, but what is already queued for it still goes out (within the
    /// close timeout).
    pub(super) fn on_eof(&mut self, now: u64) {
        match &mut self.phase {
            Phase::AwaitingHandshake | Phase::Open => {
                self.set_phase(Phase::Closing {
                    websocket: false,
                    peer_closed: true,
                });
                self.since = now;
            }
            Phase::Closing { peer_closed, .. } => *peer_closed = true,
        }
        self.pending_in = None;
    }

    /// Nothing more can happen on this connection: the loop removes it.
    pub(super) fn is_finished(&self) -> bool {
        self.peer_done() && self.outstanding == 0 && (self.write_shut || self.out.is_empty())
    }

    /// Input is held back until the outbound queue drains, an action is
    /// done or the answers an upgrade waits for are in.
    pub(super) fn has_pending_input(&self) -> bool {
        self.pending_in.is_some() || self.http.as_ref().is_some_and(|s| s.deferred.is_some())
    }

    /// Processes bytes just read from the socket.
    pub(super) fn on_input(&mut self, input: &mut [u8], ctx: &mut Ctx<'_>) {
        self.last_recv = ctx.now;
        self.process(input, ctx);
    }

    /// Processes input held back earlier. Returns true once none is left.
    pub(super) fn resume(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if self.waits_for_answers()
            || (self.pending_in.is_some() && self.out.len() > ctx.config.max_backlog_bytes)
        {
            return false;
        }
        if !self.has_pending_input() {
            return true;
        }
        match self.pending_in.take() {
            Some(mut held) => self.process(&mut held, ctx),
            None => self.process(&mut [], ctx),
        }
        !self.has_pending_input()
    }

    fn hold(&mut self, rest: &[u8]) {
        if !rest.is_empty() && !self.peer_done() {
            self.pending_in
                .get_or_insert_with(Box::default)
                .extend_from_slice(rest);
        }
    }

    fn process(&mut self, mut input: &mut [u8], ctx: &mut Ctx<'_>) {
        if self.outstanding == 0
            && let Some(head) = self.http.as_deref_mut().and_then(|s| s.deferred.take())
        {
            // An upgrade (never an action to wait for) whose turn has come.
            self.on_request(&head, ctx);
        }
        while matches!(self.phase, Phase::AwaitingHandshake)
            && let Some(state) = self.http.as_deref_mut()
        {
            if input.is_empty() {
                return;
            }
            if state.deferred.is_some() || state.responses.len() >= MAX_QUEUED_RESPONSES {
                // Resumed as answers come back.
                self.hold(input);
                return;
            }
            if let Some(body) = &mut state.body {
                match body.feed(input) {
                    Ok(used) => input = &mut input[used..],
                    Err(refusal) => {
                        self.refuse_with(refusal, ctx);
                        return;
                    }
                }
                if !body.is_complete() {
                    return;
                }
                if let Some(body) = state.body.take() {
                    self.finish_publish(body, ctx);
                }
                // The loop answers the publish; what follows must wait for it.
                self.hold(input);
                return;
            }
            match state.head.feed(input) {
                Ok(None) => return,
                Ok(Some((head, used))) => {
                    input = &mut input[used..];
                    if self.on_request(&head, ctx) {
                        self.hold(input);
                        return;
                    }
                }
                Err(e) => {
                    debug!("bad request head: {e}");
                    self.refuse(e.status(), &[], &format!("{e}\n"), ctx);
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
            // Bytes after an HTTP answer that closes, or after both closes: discard.
            _ => {}
        }
    }

    /// Answers one HTTP request. Returns true when an action was queued whose
    /// answer must go out before anything that follows.
    fn on_request(&mut self, head: &RequestHead, ctx: &mut Ctx<'_>) -> bool {
        self.since = ctx.now;
        if let Some(state) = &mut self.http {
            state.served = true;
        }
        let keep_alive = publish::keep_alive(head);
        match ctx.routes.resolve(&head.path) {
            Target::Health | Target::Metrics | Target::Page if head.method != "GET" => {
                self.refuse(405, &[("Allow", "GET")], "use GET\n", ctx);
            }
            Target::Health | Target::Metrics | Target::Page
                if !matches!(publish::body_length(head), Ok(0)) =>
            {
                self.refuse(400, &[], "this request takes no body\n", ctx);
            }
            Target::Page => {
                self.respond(200, page::HEADERS, page::HTML.as_bytes(), keep_alive);
            }
            Target::Health => match ctx.degraded {
                None => self.respond(200, &[], b"ok\n", keep_alive),
                Some(why) => {
                    let body = format!("degraded: {why}\n");
                    self.respond(503, &[], body.as_bytes(), keep_alive);
                }
            },
            Target::Metrics => {
                if let Err(refusal) = publish::authorize(head, self.access(ctx.config)) {
                    self.refuse_with(refusal, ctx);
                } else {
                    let mut body = Vec::new();
                    ctx.metrics.render(ctx.routes.paths(), &mut body);
                    let content_type =
                        [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")];
                    self.respond(200, &content_type, &body, keep_alive);
                }
            }
            Target::Publish { channel } => return self.on_publish(head, channel, ctx),
            Target::Route { .. } if self.outstanding > 0 => {
                if let Some(state) = &mut self.http {
                    state.deferred = Some(head.clone());
                }
                return true;
            }
            Target::Route { id, rest } => self.on_upgrade(head, id, rest, ctx),
            Target::NotFound => {
                debug!("no route for {}", head.path);
                self.refuse(404, &[], "nothing at this path\n", ctx);
            }
        }
        false
    }

    fn access<'c>(&self, config: &'c Config) -> Access<'c> {
        match &config.publish_token {
            Some(token) => Access::Token(token),
            None => Access::LoopbackOnly {
                peer_is_loopback: self.peer_loopback,
            },
        }
    }

    /// The publish access rule, with `publish_auth`: `publish_token` (when
    /// set) or a signed token whose publish claim (never the subscribe
    /// claim) grants `channel`.
    fn authorize_publish(
        &self,
        head: &RequestHead,
        channel: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Refusal> {
        let config = ctx.config;
        let Some(table) = config
            .publish_auth
            .as_deref()
            .and_then(|n| config.auth.get(n))
        else {
            return publish::authorize(head, self.access(config));
        };
        if let Some(token) = &config.publish_token
            && publish::authorize(head, Access::Token(token)).is_ok()
        {
            return Ok(());
        }
        let checked = auth::token::bearer(head)
            .and_then(|token| token.ok_or(Failure::Missing))
            .and_then(|token| {
                auth::verify(token, table, ctx.unix_ms / 1000, |verified| {
                    if verified.publish.allows(channel) {
                        Ok(())
                    } else {
                        Err(Failure::NotGranted)
                    }
                })
            });
        checked.map_err(|failure| {
            debug!("publish token refused: {failure}");
            ctx.metrics.refuse_token(failure);
            publish::token_refusal(failure.status())
        })
    }

    fn on_publish(&mut self, head: &RequestHead, channel: &str, ctx: &mut Ctx<'_>) -> bool {
        let checked = self
            .authorize_publish(head, channel, ctx)
            .and_then(|()| publish::check_publish(head, channel, ctx.config.max_message_size));
        let publish = match checked {
            Ok(publish) => publish,
            Err(refusal) => {
                debug!("publish refused: {refusal}");
                self.refuse_with(refusal, ctx);
                return false;
            }
        };
        let body = PublishBody::new(publish, ctx.config.max_message_size);
        if body.is_complete() {
            self.finish_publish(body, ctx);
            return true;
        }
        if body.publish.expect_continue {
            // Interim responses keep request order too: behind publishes
            // still out, the client gets its 100 once they are answered
            // (or sends the body after its own wait, as RFC 9110 allows).
            self.push_response(|buf| buf.extend_from_slice(publish::CONTINUE));
        }
        if let Some(state) = &mut self.http {
            state.body = Some(body);
        }
        false
    }

    fn finish_publish(&mut self, body: PublishBody, ctx: &mut Ctx<'_>) {
        let PublishBody { publish, data, .. } = body;
        if publish.text && std::str::from_utf8(&data).is_err() {
            self.refuse_with(publish::NOT_UTF8, ctx);
            return;
        }
        let opcode = if publish.text {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let message = if publish.json {
            Broadcast::json(&data)
        } else {
            Broadcast::new(opcode, &data)
        };
        ctx.actions.push(Action::Publish {
            channel: publish.channel,
            message,
            keep_alive: publish.keep_alive,
        });
        self.since = ctx.now;
        if !publish.keep_alive {
            self.enter_closing(false, ctx.now);
        }
    }

    fn on_upgrade(&mut self, head: &RequestHead, id: RouteId, rest: &str, ctx: &mut Ctx<'_>) {
        let broadcast = ctx
            .routes
            .get(id)
            .is_some_and(|r| r.kind == RouteKind::Broadcast);
        if broadcast && sse::wants_stream(head) {
            self.on_stream(head, id, rest, ctx);
            return;
        }
        let upgrade = match handshake::validate(head) {
            Ok(upgrade) => upgrade,
            Err(rejection) => {
                debug!("handshake refused on {}: {rejection}", head.path);
                ctx.metrics.refuse(Refused::from_status(rejection.status));
                self.push_response(|buf| rejection.write_response(buf));
                self.enter_closing(false, ctx.now);
                return;
            }
        };
        let Some(route) = ctx.routes.get(id) else {
            self.refuse(404, &[], "nothing at this path\n", ctx);
            return;
        };
        if !handshake::origin_allowed(upgrade.origin.as_deref(), &ctx.config.allowed_origins) {
            debug!("origin {:?} refused on {}", upgrade.origin, head.path);
            self.refuse(403, &[], "this Origin may not connect\n", ctx);
            return;
        }
        let protocol = handshake::select_protocol(&upgrade.protocols, &route.subprotocols);
        if protocol.is_none() && route.require_subprotocol {
            let body = format!(
                "offer one of these subprotocols in Sec-WebSocket-Protocol: {}\n",
                route.subprotocols.join(", ")
            );
            self.refuse(400, &[], &body, ctx);
            return;
        }
        if !self.authorize_upgrade(head, id, rest, None, ctx) {
            return;
        }
        if route.kind == RouteKind::Broadcast {
            let max = ctx.config.max_channels_per_connection;
            let query = head.query.as_deref();
            let parsed = parse_subscription(rest, query, max)
                .map_err(|e| e.to_string())
                .and_then(|channels| parse_options(channels, query).map_err(|e| e.to_string()));
            match parsed {
                Ok((meta, wanted)) => {
                    self.mode = if meta { Mode::Meta } else { Mode::Plain };
                    ctx.actions.push(Action::Subscribe(wanted));
                }
                Err(e) => {
                    debug!("subscription refused on {}: {e}", head.path);
                    self.refuse(400, &[], &format!("{e}\n"), ctx);
                    return;
                }
            }
        }
        let params = route
            .deflate
            .and_then(|_| deflate::negotiate(upgrade.extensions.iter().map(Vec::as_slice)));
        let extensions = params.map(|p| p.response_header());
        self.out.push_with(|buf| {
            handshake::write_accept(&upgrade, protocol, extensions.as_deref(), buf);
        });
        if params.is_some() {
            self.receiver.set_allowed_rsv(deflate::RSV_COMPRESSED);
        }
        self.deflate = params;
        self.route = id;
        self.set_phase(Phase::Open);
        self.upgraded = true;
        ctx.metrics.handshakes_accepted += 1;
        ctx.metrics.opened(self.gauge());
        debug!("websocket open on {}", head.path);
    }

    /// Opens a Server-Sent Events stream of one channel on broadcast route
    /// `id`, under the rules of a WebSocket subscriber there: the Origin
    /// allow-list, token auth (the token also in the [`sse::TOKEN_COOKIE`]
    /// cookie), channel grants; the resume position comes from
    /// `Last-Event-ID` or `last_event_id=`. Refusals are plain HTTP errors.
    fn on_stream(&mut self, head: &RequestHead, id: RouteId, rest: &str, ctx: &mut Ctx<'_>) {
        let origin = head.header("Origin").map(http::trim_ows);
        let origin_text = origin.and_then(|o| std::str::from_utf8(o).ok());
        let allowed = &ctx.config.allowed_origins;
        if origin.is_some_and(|_| origin_text.is_none())
            || !handshake::origin_allowed(origin_text, allowed)
        {
            debug!("origin {origin_text:?} refused on {}", head.path);
            self.refuse(403, &[], "this Origin may not connect\n", ctx);
            return;
        }
        if !matches!(publish::body_length(head), Ok(0)) {
            self.refuse(400, &[], "this request takes no body\n", ctx);
            return;
        }
        if !self.authorize_upgrade(head, id, rest, Some(sse::TOKEN_COOKIE), ctx) {
            return;
        }
        let query = head.query.as_deref();
        let max = ctx.config.max_channels_per_connection;
        let wanted = parse_subscription(rest, query, max)
            .map_err(|e| e.to_string())
            .and_then(|mut channels| match (channels.pop(), channels.is_empty()) {
                (Some(name), true) => Ok(name),
                _ => Err(
                    "an event stream follows one channel: name exactly one (Last-Event-ID holds one position)"
                        .to_owned(),
                ),
            })
            .and_then(|name| {
                let from = sse::resume_position(head).map_err(|e| e.to_string())?;
                Ok(Wanted { name, from })
            });
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(e) => {
                debug!("event stream refused on {}: {e}", head.path);
                self.refuse(400, &[], &format!("{e}\n"), ctx);
                return;
            }
        };
        // CORS only for an Origin the allow-list names: with no list, no
        // other site may read a stream (the cookie makes it the user's).
        // Never for the opaque origin `null`, which any page can send from
        // a sandboxed frame: listed, it may connect, not read with cookies.
        let cors = origin.filter(|o| !allowed.is_empty() && !o.eq_ignore_ascii_case(b"null"));
        self.out
            .push_with(|buf| sse::write_response_head(cors, buf));
        ctx.actions.push(Action::Subscribe(vec![wanted]));
        self.mode = Mode::Sse;
        self.route = id;
        self.set_phase(Phase::Open);
        self.since = ctx.now;
        self.upgraded = true;
        ctx.metrics.sse_streams_accepted += 1;
        ctx.metrics.opened(self.gauge());
        debug!("event stream open on {}", head.path);
    }

    /// Token auth of an upgrade on a route with `auth`: the token must
    /// verify and grant every channel asked for. True when the upgrade may
    /// go on (the token's expiry and relay grants are then kept); otherwise
    /// the 401 or 403 is queued and counted. A subscription the route would
    /// refuse anyway is left to that check (400).
    /// `cookie` is where else to look for the token when the auth table
    /// names no cookie of its own (an event stream's [`sse::TOKEN_COOKIE`]).
    fn authorize_upgrade(
        &mut self,
        head: &RequestHead,
        id: RouteId,
        rest: &str,
        cookie: Option<&str>,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let (routes, config) = (ctx.routes, ctx.config);
        let Some(route) = routes.get(id) else {
            return true;
        };
        let Some(name) = route.auth.as_deref() else {
            return true;
        };
        let checked = config
            .auth
            .get(name)
            .ok_or(Failure::UnknownKey)
            .and_then(|table| {
                let cookie = table.cookie.as_deref().or(cookie);
                let (token, source) = auth::token::find(head, cookie)?;
                let channels = match route.kind {
                    RouteKind::Broadcast => parse_subscription(
                        rest,
                        head.query.as_deref(),
                        config.max_channels_per_connection,
                    )
                    .unwrap_or_default(),
                    RouteKind::Echo => Vec::new(),
                };
                auth::verify(&token, table, ctx.unix_ms / 1000, |verified| {
                    let subject = verified.subject.as_deref();
                    if let Some(channel) = channels.iter().find(|c| !verified.channels.allows(c)) {
                        debug!("token of {subject:?} does not grant channel {channel:?}");
                        return Err(Failure::NotGranted);
                    }
                    let relay_mask = verified.relay.as_ref().map_or(u32::MAX, |relay| {
                        let granted = channels
                            .iter()
                            .take(RELAY_CHANNELS)
                            .map(|c| relay.allows(c));
                        granted
                            .enumerate()
                            .fold(0, |mask, (i, ok)| mask | (u32::from(ok) << i))
                    });
                    debug!(
                        "token of {subject:?} accepted from the {source:?} on {}",
                        head.path
                    );
                    Ok((verified.expires, relay_mask))
                })
            });
        match checked {
            Ok((expires, relay_mask)) => {
                self.relay_mask = relay_mask;
                if let Some(expires) = expires {
                    let left = expires.saturating_mul(1000).saturating_sub(ctx.unix_ms);
                    let at = ctx.now.saturating_add(left).div_ceil(1000).max(1);
                    self.token_expires = u32::try_from(at).unwrap_or(u32::MAX);
                }
                true
            }
            Err(failure) => {
                debug!("token refused on {}: {failure}", head.path);
                ctx.metrics.refuse_token(failure);
                let headers: &[(&str, &str)] = match failure.status() {
                    401 => &[("WWW-Authenticate", "Bearer")],
                    _ => &[],
                };
                self.refuse(failure.status(), headers, failure.body(), ctx);
                false
            }
        }
    }

    /// Whether this connection's messages may be relayed to its `i`-th
    /// channel (a relay claim restricts it; see `relay_mask`).
    pub(super) fn may_relay(&self, i: usize) -> bool {
        self.relay_mask == u32::MAX
            || u32::try_from(i)
                .ok()
                .and_then(|i| 1u32.checked_shl(i))
                .is_some_and(|bit| self.relay_mask & bit != 0)
    }

    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], keep_alive: bool) {
        self.push_response(|buf| http::write_response(status, headers, body, !keep_alive, buf));
        if !keep_alive {
            self.enter_closing(false, self.since);
        }
    }

    /// Answers with an error and closes: the request may have a body we did
    /// not read, so the connection cannot carry another request safely.
    fn refuse(&mut self, status: u16, headers: &[(&str, &str)], body: &str, ctx: &mut Ctx<'_>) {
        ctx.metrics.refuse(Refused::from_status(status));
        self.push_response(|buf| http::write_response(status, headers, body.as_bytes(), true, buf));
        self.enter_closing(false, ctx.now);
    }

    fn refuse_with(&mut self, refusal: Refusal, ctx: &mut Ctx<'_>) {
        ctx.metrics.refuse(Refused::from_status(refusal.status));
        self.push_response(|buf| refusal.write_response(buf));
        if refusal.close {
            self.enter_closing(false, ctx.now);
        }
    }

    fn feed_open(&mut self, input: &mut [u8], ctx: &mut Ctx<'_>) {
        if self.mode == Mode::Sse {
            // An event stream's client has nothing to say: discarded unread.
            return;
        }
        let limits = ctx.limits();
        let backlog = ctx.config.max_backlog_bytes;
        let route = ctx.routes.get(self.route);
        let kind = route.map(|r| r.kind);
        let client_messages = route.map(|r| r.client_messages);
        let to_sender = route.is_some_and(|r| r.echo_to_sender);
        let compression = route.and_then(|r| r.deflate);
        let params = self.deflate;
        let may_relay = self.relay_mask != 0;
        let Connection { out, receiver, .. } = self;
        let Ctx {
            metrics,
            actions,
            codec,
            inflater,
            ..
        } = ctx;
        // Only a connection that negotiated deflate gets the inflater: for
        // any other, a compressed message is a protocol error.
        let inflater = params.map(|_| &mut **inflater);
        let mut peer_close = None;
        let mut rejected = false;
        let result = receiver.feed_inflating(input, &limits, inflater, |event| {
            let (opcode, data) = match event {
                Event::Text(data) => (OpCode::Text, data),
                Event::Binary(data) => (OpCode::Binary, data),
                Event::Ping(data) => {
                    out.push_frame(OpCode::Pong, data);
                    return Flow::Continue;
                }
                Event::Pong(_) => return Flow::Continue,
                Event::Close(status) => {
                    peer_close = Some(status.map(|(code, _)| code));
                    return Flow::Continue;
                }
            };
            metrics.messages_in += 1;
            metrics.bytes_in += data.len() as u64;
            match (kind, client_messages) {
                (Some(RouteKind::Echo), _) => {
                    let before = out.len();
                    // Compressed output is only used when smaller, so the
                    // plain frame's size bounds it.
                    let size = data.len().saturating_add(MAX_HEADER_LEN);
                    out.push_sized(size, |buf| {
                        codec.write_message(params, compression, opcode, data, buf);
                    });
                    metrics.messages_out += 1;
                    metrics.bytes_out += out.len().saturating_sub(before) as u64;
                }
                (_, Some(ClientMessages::Broadcast)) if may_relay => actions.push(Action::Relay {
                    message: Broadcast::new(opcode, data),
                    to_sender,
                }),
                (_, Some(ClientMessages::Reject)) => {
                    rejected = true;
                    return Flow::Pause;
                }
                _ => {}
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
            Ok(_) if rejected => {
                self.send_close(
                    CloseCode::UNSUPPORTED_DATA,
                    "this route does not accept messages",
                    ctx.now,
                );
            }
            Ok(_) if peer_close.is_some() => {
                let code = close::reply_code(peer_close.flatten());
                self.send_close(code, "", ctx.now);
                self.set_phase(Phase::Closing {
                    websocket: true,
                    peer_closed: true,
                });
            }
            Ok(used) => {
                if let Some(rest) = input.get(used..) {
                    self.hold(rest);
                }
            }
        }
    }

    /// After our close frame: only the peer's close frame matters now.
    fn feed_closing(&mut self, input: &mut [u8], ctx: &mut Ctx<'_>) {
        let mut peer_closed = false;
        let limits = ctx.limits();
        let inflater = self.deflate.map(|_| &mut *ctx.inflater);
        let result = self
            .receiver
            .feed_inflating(input, &limits, inflater, |event| {
                if let Event::Close(_) = event {
                    peer_closed = true;
                }
                Flow::Continue
            });
        if peer_closed || result.is_err() {
            // A broken frame after our close ends the wait just like a close would.
            self.set_phase(Phase::Closing {
                websocket: true,
                peer_closed: true,
            });
        }
    }

    /// Shutdown of a connection still speaking HTTP: it answers nothing more,
    /// while what is already queued still goes out. Returns false (and does
    /// nothing) once the connection is a WebSocket or already closing.
    pub(super) fn stop_http(&mut self, now: u64) -> bool {
        if !matches!(self.phase, Phase::AwaitingHandshake) {
            return false;
        }
        self.enter_closing(false, now);
        true
    }

    /// The server shuts down: a WebSocket gets a close frame with `code`
    /// and `reason`, an event stream a `shutdown` event (data `restart`)
    /// and its end (its client reconnects by itself, elsewhere or later).
    pub(super) fn shut_down(&mut self, code: CloseCode, reason: &str, now: u64) {
        if self.mode == Mode::Sse {
            let data = sse::SHUTDOWN_DATA.as_bytes();
            self.end_stream(Some((sse::EVENT_SHUTDOWN, data)), now);
        } else {
            self.send_close(code, reason, now);
        }
    }

    /// Ends an open event stream, after `last` (an event name and its data)
    /// when given: the write side is shut once it is out, and the
    /// connection lingers until the client is gone or `close_timeout`.
    fn end_stream(&mut self, last: Option<(&str, &[u8])>, now: u64) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if let Some((event, data)) = last {
            self.push_event(None, event, data);
        }
        self.enter_closing(false, now);
    }

    /// Starts the closing handshake from our side (or answers the peer's).
    pub(super) fn send_close(&mut self, code: CloseCode, reason: &str, now: u64) {
        if !matches!(self.phase, Phase::Open) || self.mode == Mode::Sse {
            return;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = close::encode_close_payload(code, reason, &mut payload);
        self.out.push_frame(OpCode::Close, &payload[..len]);
        self.enter_closing(true, now);
    }

    /// Evicts a slow consumer as RFC 6455 §7.1.7 asks: the frame in flight
    /// is finished (the peer gets whole frames only), the broadcast frames
    /// queued behind it are dropped, a close frame with 1013 ("try again
    /// later") follows, and `close_timeout` bounds the rest as for any close.
    pub(super) fn evict_slow(&mut self, now: u64) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        self.out.drop_unsent_broadcasts();
        if self.mode == Mode::Sse {
            // The event in flight is finished; its client resumes from it.
            self.end_stream(None, now);
        } else {
            self.send_close(CloseCode::TRY_AGAIN_LATER, SLOW_CONSUMER_REASON, now);
        }
    }

    fn enter_closing(&mut self, websocket: bool, now: u64) {
        self.set_phase(Phase::Closing {
            websocket,
            peer_closed: false,
        });
        self.since = now;
        self.pending_in = None;
    }

    /// The earliest time something must happen on this connection.
    pub(super) fn next_deadline(&self, config: &Config) -> Option<u64> {
        match self.phase {
            Phase::AwaitingHandshake => Some(after(self.since, config.handshake_timeout)),
            Phase::Closing { .. } => Some(after(self.since, config.close_timeout)),
            // An event stream: a keep-alive comment every `ping_interval`
            // (no idle timeout: its client never sends); a comment still
            // queued after `pong_timeout` is a client that stopped reading.
            Phase::Open if self.mode == Mode::Sse => {
                let keep_alive = (!config.ping_interval.is_zero()).then(|| {
                    if self.ping_outstanding {
                        after(self.since, config.pong_timeout)
                    } else {
                        after(self.since, config.ping_interval)
                    }
                });
                keep_alive.into_iter().chain(self.token_deadline()).min()
            }
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
                [ping, idle, self.token_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// When the token of an open connection expires (loop clock, ms).
    fn token_deadline(&self) -> Option<u64> {
        (self.token_expires != 0).then(|| u64::from(self.token_expires) * 1000)
    }

    /// The connection's timer fired: act on whatever deadline has passed.
    /// Returns false when the connection must be dropped at once.
    pub(super) fn on_timer(&mut self, config: &Config, metrics: &mut Metrics, now: u64) -> bool {
        match self.phase {
            Phase::AwaitingHandshake => {
                if now >= after(self.since, config.handshake_timeout) {
                    debug!("handshake timeout");
                    if self.http.as_ref().is_some_and(|s| s.awaits_request()) {
                        metrics.refuse(Refused::Timeout);
                    }
                    return false;
                }
            }
            Phase::Closing { .. } => {
                if now >= after(self.since, config.close_timeout) {
                    debug!("close timeout");
                    return false;
                }
            }
            Phase::Open if self.mode == Mode::Sse => {
                if self.token_deadline().is_some_and(|at| now >= at) {
                    debug!("token expired");
                    metrics.auth_expired_closes += 1;
                    let last = (sse::EVENT_EXPIRED, TOKEN_EXPIRED_REASON.as_bytes());
                    self.end_stream(Some(last), now);
                    return true;
                }
                if config.ping_interval.is_zero() {
                    return true;
                }
                if self.ping_outstanding {
                    // Nothing the stream was given has been taken since the
                    // keep-alive (a zero TCP window, no FIN): the slot, the
                    // queue and the socket go, as for an unanswered ping.
                    if now >= after(self.since, config.pong_timeout) {
                        debug!("event stream not read within the pong timeout");
                        return false;
                    }
                } else if now >= after(self.since, config.ping_interval) {
                    self.out.push_sized(sse::KEEP_ALIVE.len(), |buf| {
                        buf.extend_from_slice(sse::KEEP_ALIVE);
                    });
                    self.ping_outstanding = true;
                    self.since = now;
                }
            }
            Phase::Open => {
                if self.token_deadline().is_some_and(|at| now >= at) {
                    debug!("token expired");
                    metrics.auth_expired_closes += 1;
                    let code = CloseCode(CLOSE_TOKEN_EXPIRED);
                    self.send_close(code, TOKEN_EXPIRED_REASON, now);
                    return true;
                }
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

/// A 503 with `reason`: the publish was not delivered; retry later.
fn write_unavailable(reason: &str, keep_alive: bool, buf: &mut Vec<u8>) {
    let body = format!("not published: {reason}\n");
    http::write_response(
        503,
        &[("Retry-After", "1")],
        body.as_bytes(),
        !keep_alive,
        buf,
    );
}

/// `start` plus a configured duration, saturating rather than overflowing on
/// absurdly long settings.
fn after(start: u64, d: std::time::Duration) -> u64 {
    start.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    //! Deadlines on the virtual clock: every test moves time explicitly and
    //! checks the exact millisecond something happens.

    use std::time::Duration;

    use super::*;
    use crate::server::harness::{Driven, client_frame, close_code};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(adjust: impl FnOnce(&mut Config)) -> Config {
        let mut config = Config {
            ping_interval: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        adjust(&mut config);
        config
    }

    const TIMEOUT_SERIES: &str = "wshub_requests_refused_total{reason=\"timeout\"}";

    fn refused_timeouts(driven: &Driven) -> u64 {
        let text = driven.env.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(TIMEOUT_SERIES))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn silent_connection_is_dropped_at_the_handshake_timeout_and_counted() {
        let mut c = Driven::accepted(config(|c| c.handshake_timeout = ms(300)));
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n");
        c.advance_to(299);
        assert_eq!(c.dropped, None);
        c.advance_to(10_000);
        assert_eq!(c.dropped, Some(300));
        assert!(c.take().is_empty(), "dropped without an answer");
        assert_eq!(refused_timeouts(&c), 1);
    }

    #[test]
    fn a_request_half_sent_after_another_counts_as_a_timeout() {
        let mut c = Driven::accepted(config(|c| c.handshake_timeout = ms(300)));
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /heal");
        c.advance_to(300);
        assert_eq!(c.dropped, Some(300));
        assert_eq!(refused_timeouts(&c), 1);
    }

    #[test]
    fn an_idle_keep_alive_connection_is_dropped_without_counting_a_refusal() {
        let mut c = Driven::accepted(config(|c| c.handshake_timeout = ms(300)));
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        c.advance_to(300);
        assert_eq!(c.dropped, Some(300));
        assert_eq!(refused_timeouts(&c), 0, "no request was refused");
    }

    #[test]
    fn each_http_request_restarts_the_handshake_deadline() {
        let mut c = Driven::accepted(config(|c| c.handshake_timeout = ms(300)));
        c.advance_to(200);
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(c.take().starts_with(b"HTTP/1.1 200"));
        c.advance_to(499);
        assert_eq!(c.dropped, None);
        c.advance_to(500);
        assert_eq!(c.dropped, Some(500));
    }

    #[test]
    fn open_websocket_is_not_subject_to_the_handshake_timeout() {
        let mut c = Driven::open(config(|c| c.handshake_timeout = ms(100)), "/echo");
        c.advance_to(60_000);
        assert_eq!(c.dropped, None);
        assert!(c.take().is_empty());
    }

    fn ping_config() -> Config {
        config(|c| {
            c.ping_interval = ms(200);
            c.pong_timeout = ms(150);
        })
    }

    #[test]
    fn silent_client_is_pinged_at_the_ping_interval() {
        let mut c = Driven::open(ping_config(), "/echo");
        c.advance_to(199);
        assert!(c.take().is_empty());
        c.advance_to(200);
        assert_eq!(c.frames(), [(OpCode::Ping, Vec::new())]);
    }

    #[test]
    fn traffic_postpones_the_ping() {
        let mut c = Driven::open(ping_config(), "/echo");
        c.advance_to(150);
        c.send(&client_frame(OpCode::Text, b"hi"));
        assert_eq!(c.frames(), [(OpCode::Text, b"hi".to_vec())]);
        c.advance_to(349);
        assert!(c.take().is_empty());
        c.advance_to(350);
        assert_eq!(c.frames(), [(OpCode::Ping, Vec::new())]);
    }

    #[test]
    fn unanswered_ping_drops_the_connection_at_the_pong_timeout() {
        let mut c = Driven::open(ping_config(), "/echo");
        c.advance_to(349);
        assert_eq!(c.frames(), [(OpCode::Ping, Vec::new())]);
        assert_eq!(c.dropped, None);
        c.advance_to(350);
        assert_eq!(c.dropped, Some(350), "ping at 200 + pong timeout 150");
        assert_eq!(refused_timeouts(&c), 0, "not a handshake timeout");
    }

    #[test]
    fn answered_pings_keep_the_connection_for_many_intervals() {
        let mut c = Driven::open(ping_config(), "/echo");
        for round in 1..=20u64 {
            let ping_at = round * 200 + (round - 1) * 10;
            c.advance_to(ping_at);
            assert_eq!(c.frames(), [(OpCode::Ping, Vec::new())], "round {round}");
            c.advance_to(ping_at + 10);
            c.send(&client_frame(OpCode::Pong, b""));
        }
        assert_eq!(c.dropped, None);
    }

    fn idle_config() -> Config {
        config(|c| {
            c.idle_timeout = ms(400);
            c.close_timeout = ms(1000);
        })
    }

    #[test]
    fn idle_client_gets_close_1000_at_the_idle_timeout() {
        let mut c = Driven::open(idle_config(), "/echo");
        c.advance_to(399);
        assert!(c.take().is_empty());
        c.advance_to(400);
        let frames = c.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, OpCode::Close);
        assert_eq!(close_code(&frames[0].1), Some(1000));
        assert!(c.wire.write_shut, "FIN follows the close frame");
        // The peer's close reply ends it.
        c.send(&client_frame(OpCode::Close, &1000u16.to_be_bytes()));
        assert_eq!(c.dropped, Some(400));
    }

    #[test]
    fn traffic_resets_the_idle_timeout() {
        let mut c = Driven::open(idle_config(), "/echo");
        for t in (100..=1200).step_by(100) {
            c.advance_to(t);
            c.send(&client_frame(OpCode::Text, b"tick"));
        }
        assert!(c.frames().iter().all(|(op, _)| *op == OpCode::Text));
        c.advance_to(1599);
        assert!(c.take().is_empty());
        c.advance_to(1600);
        assert_eq!(c.frames()[0].0, OpCode::Close);
    }

    #[test]
    fn unanswered_close_is_dropped_at_the_close_timeout() {
        let mut c = Driven::open(idle_config(), "/echo");
        c.advance_to(400);
        assert_eq!(c.frames()[0].0, OpCode::Close);
        c.advance_to(1399);
        assert_eq!(c.dropped, None);
        c.advance_to(1400);
        assert_eq!(
            c.dropped,
            Some(1400),
            "idle close at 400 + close timeout 1000"
        );
    }

    #[test]
    fn no_pings_when_the_ping_interval_is_zero() {
        let mut c = Driven::open(config(|_| {}), "/echo");
        assert_eq!(c.conn.next_deadline(&c.env.config), None);
        c.advance_to(3_600_000);
        assert!(c.take().is_empty());
        assert_eq!(c.dropped, None);
    }

    #[test]
    fn refused_request_closes_after_the_answer_and_the_close_timeout() {
        let mut c = Driven::accepted(config(|c| c.close_timeout = ms(500)));
        c.advance_to(10);
        c.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(c.take().starts_with(b"HTTP/1.1 404"));
        assert!(c.wire.write_shut);
        c.advance_to(509);
        assert_eq!(c.dropped, None);
        c.advance_to(510);
        assert_eq!(c.dropped, Some(510));
    }

    #[test]
    fn echo_holds_input_back_past_the_backlog_and_resumes_as_it_drains() {
        let mut c = Driven::open(config(|c| c.max_backlog_bytes = 100), "/echo");
        c.wire.room = 0;
        let mut input = Vec::new();
        for i in 0..10u8 {
            input.extend(client_frame(OpCode::Binary, &[i; 40]));
        }
        c.send(&input);
        // Three 42-byte echoes take the queue past 100 bytes: reading stops.
        assert_eq!(c.conn.queued(), 3 * 42);
        assert!(c.conn.has_pending_input());
        assert!(!c.conn.wants_read());
        {
            let mut ctx = c.env.ctx();
            assert!(!c.conn.resume(&mut ctx), "still over the backlog");
        }
        c.wire.room = usize::MAX;
        loop {
            c.settle();
            if !c.conn.has_pending_input() {
                break;
            }
            let mut ctx = c.env.ctx();
            c.conn.resume(&mut ctx);
        }
        let frames = c.frames();
        let echoed: Vec<u8> = frames.iter().map(|(_, payload)| payload[0]).collect();
        assert_eq!(echoed, (0..10).collect::<Vec<u8>>());
        assert!(c.conn.wants_read());
    }

    #[test]
    fn peer_eof_after_our_close_ends_the_connection_at_once() {
        let mut c = Driven::open(idle_config(), "/echo");
        c.advance_to(400);
        c.advance_to(450);
        c.eof();
        assert_eq!(c.dropped, Some(450));
    }

    /// A cluster node's loop around one connection, on the virtual clock:
    /// publishes go to "Redis" (recorded in `sent`) and the test answers
    /// them, in any order, with [`ClusterLoop::answer`].
    struct ClusterLoop {
        c: Driven,
        /// (sequence number, channel, keep-alive) of each publish sent.
        sent: Vec<(u32, String, bool)>,
    }

    impl ClusterLoop {
        fn new(config: Config) -> ClusterLoop {
            ClusterLoop {
                c: Driven::accepted(config),
                sent: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            let mut input = bytes.to_vec();
            let mut ctx = self.c.env.ctx();
            self.c.conn.on_input(&mut input, &mut ctx);
            self.pump();
        }

        /// What `drive` does: carry out actions, resume held input, within
        /// the same bounded number of rounds.
        fn pump(&mut self) {
            for _ in 0..crate::server::drive::ROUNDS_PER_TURN {
                for action in std::mem::take(&mut self.c.env.actions) {
                    if let Action::Publish {
                        channel,
                        keep_alive,
                        ..
                    } = action
                    {
                        let seq = self.c.conn.await_answer();
                        self.sent.push((seq, channel, keep_alive));
                    }
                }
                if self.c.conn.waits_for_answers() || !self.c.conn.has_pending_input() {
                    break;
                }
                let mut ctx = self.c.env.ctx();
                self.c.conn.resume(&mut ctx);
            }
            self.c.settle();
        }

        fn answer(&mut self, i: usize, outcome: Result<u64, &str>) {
            let (seq, channel, keep_alive) = self.sent[i].clone();
            let outcome = outcome.map(|nodes| crate::bus::Published {
                nodes,
                position: None,
            });
            self.c
                .conn
                .answer_bus_publish(seq, &channel, keep_alive, outcome);
            self.pump();
        }

        fn channels_sent(&self) -> Vec<&str> {
            self.sent.iter().map(|(_, ch, _)| ch.as_str()).collect()
        }

        /// Status and body of each whole response written so far (taken).
        fn responses(&mut self) -> Vec<(u16, String)> {
            let bytes = self.c.take();
            let text = String::from_utf8(bytes).expect("HTTP answers are text here");
            let mut rest = text.as_str();
            let mut out = Vec::new();
            while !rest.is_empty() {
                let (head, after) = rest.split_once("\r\n\r\n").expect("a whole head");
                let status = head[9..12].parse().expect("a status");
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.parse().expect("a length"));
                out.push((status, after[..len].to_owned()));
                rest = &after[len..];
            }
            out
        }
    }

    fn publish_request(channel: &str) -> Vec<u8> {
        format!("POST /publish/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .into_bytes()
    }

    fn publishes(channels: &[&str]) -> Vec<u8> {
        channels.iter().flat_map(|ch| publish_request(ch)).collect()
    }

    fn published(channel: &str, nodes: u64) -> (u16, String) {
        (
            200,
            format!("{{\"channel\":\"{channel}\",\"recipients\":{nodes}}}\n"),
        )
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn pipelined_publishes_all_go_to_the_bus_before_any_answer() {
        let mut n = ClusterLoop::new(config(|_| {}));
        n.send(&publishes(&["a", "b", "c"]));
        assert_eq!(n.channels_sent(), ["a", "b", "c"]);
        assert!(n.c.take().is_empty(), "nothing answered before Redis");
        assert!(n.c.conn.wants_read(), "more requests may come");
        n.answer(0, Ok(1));
        n.answer(1, Ok(2));
        n.answer(2, Ok(3));
        assert_eq!(
            n.responses(),
            [published("a", 1), published("b", 2), published("c", 3)]
        );
        assert!(!n.c.conn.waits_for_answers());
    }

    #[test]
    fn answers_coming_out_of_order_leave_in_request_order() {
        let mut n = ClusterLoop::new(config(|_| {}));
        n.send(&publishes(&["a", "b", "c"]));
        n.answer(2, Ok(3));
        n.answer(1, Ok(2));
        assert!(n.responses().is_empty(), "the first is still out");
        n.answer(0, Ok(1));
        assert_eq!(
            n.responses(),
            [published("a", 1), published("b", 2), published("c", 3)]
        );
    }

    #[test]
    fn a_health_check_between_two_publishes_is_answered_between_their_answers() {
        let mut n = ClusterLoop::new(config(|_| {}));
        let mut input = publish_request("a");
        input.extend_from_slice(HEALTHZ);
        input.extend(publish_request("b"));
        n.send(&input);
        assert_eq!(n.channels_sent(), ["a", "b"]);
        assert!(n.c.take().is_empty());
        n.answer(0, Ok(1));
        assert_eq!(n.responses(), [published("a", 1), (200, "ok\n".to_owned())]);
        n.answer(1, Ok(1));
        assert_eq!(n.responses(), [published("b", 1)]);
    }

    #[test]
    fn a_503_outcome_in_the_middle_takes_its_place() {
        let mut n = ClusterLoop::new(config(|_| {}));
        n.send(&publishes(&["a", "b", "c"]));
        n.answer(1, Err("redis did not accept it in time"));
        n.answer(0, Ok(1));
        n.answer(2, Ok(1));
        let answers = n.responses();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0], published("a", 1));
        assert_eq!(
            answers[1],
            (
                503,
                "not published: redis did not accept it in time\n".to_owned()
            )
        );
        assert_eq!(answers[2], published("c", 1));
        assert!(!n.c.wire.write_shut, "a 503 keeps the connection");
    }

    #[test]
    fn a_404_after_outstanding_publishes_closes_only_after_their_answers() {
        let mut n = ClusterLoop::new(config(|c| c.close_timeout = ms(60_000)));
        let mut input = publishes(&["a", "b"]);
        input.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
        input.extend(publish_request("c"));
        n.send(&input);
        assert_eq!(n.channels_sent(), ["a", "b"], "nothing after the refusal");
        assert!(n.c.take().is_empty());
        assert!(!n.c.wire.write_shut);
        n.answer(0, Ok(1));
        assert_eq!(n.responses(), [published("a", 1)]);
        assert!(!n.c.wire.write_shut, "an answer is still out");
        n.answer(1, Ok(1));
        let answers = n.responses();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0], published("b", 1));
        assert_eq!(answers[1].0, 404);
        assert!(n.c.wire.write_shut, "closed after everything ahead");
    }

    #[test]
    fn a_401_in_the_middle_follows_the_answers_ahead_and_closes() {
        let token = "s3cret";
        let mut n = ClusterLoop::new(config(|c| c.publish_token = Some(token.into())));
        let authorized = |ch: &str| {
            format!(
                "POST /publish/{ch} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 2\r\n\r\nhi"
            )
            .into_bytes()
        };
        let mut input = authorized("a");
        input.extend(publish_request("b"));
        input.extend(authorized("c"));
        n.send(&input);
        assert_eq!(n.channels_sent(), ["a"]);
        assert!(n.c.take().is_empty(), "the 401 waits for the answer ahead");
        n.answer(0, Ok(1));
        let answers = n.responses();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0], published("a", 1));
        assert_eq!(answers[1].0, 401);
        assert!(n.c.wire.write_shut);
    }

    #[test]
    fn the_response_bound_holds_input_until_answers_come() {
        let mut n = ClusterLoop::new(config(|_| {}));
        let names: Vec<String> = (0..MAX_QUEUED_RESPONSES + 6)
            .map(|i| format!("c{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        n.send(&publishes(&names));
        assert_eq!(n.sent.len(), MAX_QUEUED_RESPONSES);
        assert!(n.c.conn.waits_for_answers());
        assert!(!n.c.conn.wants_read(), "backpressure");
        n.answer(0, Ok(1));
        assert_eq!(
            n.sent.len(),
            MAX_QUEUED_RESPONSES + 1,
            "one answer, one more out"
        );
        let mut i = 1;
        while i < n.sent.len() {
            n.answer(i, Ok(1));
            i += 1;
        }
        assert_eq!(n.channels_sent(), names);
        let answers = n.responses();
        let expected: Vec<_> = names.iter().map(|ch| published(ch, 1)).collect();
        assert_eq!(answers, expected);
        assert!(n.c.conn.wants_read());
    }

    #[test]
    fn an_upgrade_after_outstanding_publishes_waits_for_their_answers() {
        let mut n = ClusterLoop::new(config(|_| {}));
        let mut input = publish_request("a");
        input.extend(crate::server::harness::upgrade_request("/echo"));
        n.send(&input);
        assert!(!n.c.conn.is_open(), "not upgraded while the answer is out");
        assert!(n.c.take().is_empty());
        n.answer(0, Ok(1));
        assert!(n.c.conn.is_open());
        let bytes = n.c.take();
        let text = String::from_utf8_lossy(&bytes);
        let at_200 = text.find("HTTP/1.1 200").expect("the publish answer");
        let at_101 = text.find("HTTP/1.1 101").expect("the upgrade");
        assert!(at_200 < at_101, "{text}");
    }

    #[test]
    fn a_continue_behind_outstanding_publishes_waits_its_turn() {
        let mut n = ClusterLoop::new(config(|_| {}));
        let mut input = publish_request("a");
        input.extend_from_slice(
            b"POST /publish/b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        n.send(&input);
        assert!(n.c.take().is_empty(), "no 100 before the answer ahead");
        n.answer(0, Ok(1));
        let text = String::from_utf8(n.c.take()).expect("text");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with(std::str::from_utf8(publish::CONTINUE).expect("text")));
        n.send(b"hi");
        n.answer(1, Ok(1));
        assert_eq!(n.responses(), [published("b", 1)]);
    }

    mod event_streams {
        //! Server-Sent Events streams on the virtual clock: the entry rules,
        //! keep-alive comments, no idle timeout, token expiry, shutdown.

        use jsonwebtoken::{EncodingKey, Header, encode};
        use serde_json::json;

        use super::*;
        use crate::config::{Algorithm, AuthConfig, KeySet, RouteConfig};
        use crate::server::harness::UNIX_MS_AT_ZERO;

        const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

        fn stream_config(adjust: impl FnOnce(&mut Config)) -> Config {
            config(|c| {
                let mut live = RouteConfig::new("/live", RouteKind::Broadcast);
                live.history_size = 10;
                c.routes = vec![live, RouteConfig::new("/echo", RouteKind::Echo)];
                adjust(c);
            })
        }

        fn get(path: &str, extra: &str) -> Vec<u8> {
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n")
                .into_bytes()
        }

        /// A stream opened on `path` at time 0: the head and first bytes
        /// are checked and taken, the subscription action returned.
        fn open_stream(config: Config, path: &str, extra: &str) -> (Driven, Vec<Wanted>) {
            let mut c = Driven::accepted(config);
            let mut input = get(path, extra);
            c.conn.on_input(&mut input, &mut c.env.ctx());
            let wanted = match c.env.actions.pop() {
                Some(Action::Subscribe(wanted)) => wanted,
                other => panic!("not a subscription: {other:?}"),
            };
            c.settle();
            let bytes = c.take();
            let text = String::from_utf8(bytes).expect("text");
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("\r\nContent-Type: text/event-stream\r\n"));
            assert!(text.ends_with("\r\n\r\nretry: 2000\n: wshub event stream\n\n"));
            assert!(c.conn.is_open() && c.conn.sse() && c.conn.meta());
            (c, wanted)
        }

        fn status_of(c: &mut Driven) -> String {
            let bytes = c.take();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            text.lines().next().unwrap_or("").to_owned()
        }

        fn refused(config: Config, path: &str, extra: &str) -> (String, String) {
            let mut c = Driven::accepted(config);
            c.send(&get(path, extra));
            assert!(!c.conn.is_open());
            let bytes = c.take();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
            (
                head.lines().next().unwrap_or("").to_owned(),
                body.to_owned(),
            )
        }

        #[test]
        fn a_stream_subscribes_one_channel_from_its_last_event_id() {
            let (_, wanted) = open_stream(stream_config(|_| {}), "/live/news", "");
            assert_eq!(
                wanted,
                [Wanted {
                    name: "news".into(),
                    from: None
                }]
            );
            let id = "Last-Event-ID: 00000000000000ff:12\r\n";
            let (c, wanted) = open_stream(stream_config(|_| {}), "/live?channel=a&sse=1", id);
            let from = Position {
                epoch: crate::hub::Epoch::new(0xff),
                offset: 12,
            };
            assert_eq!(
                wanted,
                [Wanted {
                    name: "a".into(),
                    from: Some(from)
                }]
            );
            let text = c.env.metrics_text();
            assert!(
                text.contains("wshub_sse_connections{route=\"/live\"} 1"),
                "{text}"
            );
            assert!(text.contains("wshub_websocket_connections{route=\"/live\"} 0"));
            assert!(text.contains("wshub_sse_streams_total 1"));
            assert_eq!(
                c.conn.counted_route().map(|counted| usize::from(counted.0)),
                Some(1),
                "route 0, second transport"
            );
        }

        #[test]
        fn what_a_stream_may_not_ask_for_is_refused_with_the_reason() {
            let (status, body) = refused(stream_config(|_| {}), "/live?channel=a&channel=b", "");
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
            assert!(body.contains("one channel"), "{body}");
            let (status, body) = refused(stream_config(|_| {}), "/live/a", "Last-Event-ID: 17\r\n");
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
            assert!(body.contains("malformed event id"), "{body}");
            let (status, _) = refused(stream_config(|_| {}), "/live/a?last_event_id=x:1", "");
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
            let (status, _) = refused(stream_config(|_| {}), "/live/bad%20name", "");
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
            let allow = |c: &mut Config| c.allowed_origins = vec!["https://app.example".into()];
            let (status, _) = refused(
                stream_config(allow),
                "/live/a",
                "Origin: https://evil.example\r\n",
            );
            assert_eq!(status, "HTTP/1.1 403 Forbidden");
            // Not a stream: the echo route and a plain GET keep their answers.
            let mut c = Driven::accepted(stream_config(|_| {}));
            c.send(&get("/echo", ""));
            assert_eq!(status_of(&mut c), "HTTP/1.1 426 Upgrade Required");
            let mut c = Driven::accepted(stream_config(|_| {}));
            c.send(b"GET /live/a HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(status_of(&mut c), "HTTP/1.1 426 Upgrade Required");
        }

        #[test]
        fn an_allowed_origin_gets_the_cors_headers_and_no_list_none() {
            let allow = |c: &mut Config| c.allowed_origins = vec!["https://app.example".into()];
            let mut c = Driven::accepted(stream_config(allow));
            c.send(&get("/live/a", "Origin: https://app.example\r\n"));
            let text = String::from_utf8(c.take()).expect("text");
            assert!(text.contains("\r\nAccess-Control-Allow-Origin: https://app.example\r\n"));
            assert!(text.contains("\r\nAccess-Control-Allow-Credentials: true\r\n"));
            assert!(text.contains("\r\nVary: Origin\r\n"));
            let mut c = Driven::accepted(stream_config(|_| {}));
            c.send(&get("/live/a", "Origin: https://any.example\r\n"));
            let text = String::from_utf8(c.take()).expect("text");
            assert!(text.starts_with("HTTP/1.1 200"));
            assert!(!text.contains("Access-Control"), "{text}");
        }

        #[test]
        fn an_opaque_origin_never_gets_credentialed_cors() {
            // Every sandboxed iframe of every site sends `Origin: null`: a
            // listed `null` may connect, but its stream is not made
            // readable (with the user's cookie) to whichever page that is.
            let allow = |c: &mut Config| {
                c.allowed_origins = vec!["https://app.example".into(), "null".into()];
            };
            let mut c = Driven::accepted(stream_config(allow));
            c.send(&get("/live/a", "Origin: null\r\n"));
            let text = String::from_utf8(c.take()).expect("text");
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(!text.contains("Access-Control"), "{text}");
        }

        #[test]
        fn a_stream_whose_client_stopped_reading_is_dropped_like_a_silent_websocket() {
            // A reader that takes nothing (its socket full, a zero TCP
            // window) whose queue stays under `max_backlog_bytes` (a quiet
            // channel after a burst, or `on_backlog = "drop"`, where the
            // backlog rule never ends it): the stream must not hold its
            // slot and queue for ever. Its keep-alive plays the ping: not
            // taken within `pong_timeout`, the connection goes.
            let config = stream_config(|c| {
                c.ping_interval = ms(1000);
                c.pong_timeout = ms(300);
            });
            let (mut c, _) = open_stream(config, "/live/a", "");
            c.wire.room = 0;
            c.advance_to(1000);
            assert!(c.dropped.is_none());
            assert_eq!(c.conn.next_deadline(&c.env.config), Some(1300));
            c.advance_to(1299);
            assert!(c.dropped.is_none());
            c.advance_to(1300);
            assert_eq!(c.dropped, Some(1300), "the keep-alive was never taken");

            // A reader that takes its keep-alives keeps its stream, however
            // late it takes one within the timeout.
            let config = stream_config(|c| {
                c.ping_interval = ms(1000);
                c.pong_timeout = ms(300);
            });
            let (mut c, _) = open_stream(config, "/live/a", "");
            c.wire.room = 0;
            c.advance_to(1200);
            c.wire.room = usize::MAX;
            c.settle();
            assert_eq!(c.take(), b":\n\n");
            c.advance_to(10_000);
            assert!(c.dropped.is_none());
            assert_eq!(c.take(), b":\n\n".repeat(9));
        }

        #[test]
        fn keep_alive_comments_every_ping_interval_and_no_idle_timeout() {
            let config = stream_config(|c| {
                c.ping_interval = ms(1000);
                c.pong_timeout = ms(100);
                c.idle_timeout = ms(1500);
            });
            let (mut c, _) = open_stream(config, "/live/a", "");
            assert_eq!(c.conn.next_deadline(&c.env.config), Some(1000));
            c.advance_to(999);
            assert!(c.take().is_empty());
            for at in [1000, 2000, 3000] {
                c.advance_to(at);
                assert_eq!(c.take(), b":\n\n", "at {at}");
            }
            c.advance_to(10_000);
            assert_eq!(c.take(), b":\n\n".repeat(7), "one per interval");
            assert!(c.dropped.is_none(), "no pong and no idle timeout");
            assert!(c.conn.is_open());
            // Anything the client sends is discarded, and changes nothing.
            c.send(&client_frame(OpCode::Close, b""));
            c.send(b"garbage that is no frame at all");
            assert!(c.take().is_empty());
            assert!(c.conn.is_open() && c.conn.wants_read());
            assert!(!c.conn.has_pending_input());
            c.advance_to(11_000);
            assert_eq!(c.take(), b":\n\n");
            c.eof();
            assert!(c.dropped.is_some(), "gone with its client");
        }

        #[test]
        fn bytes_pipelined_after_the_request_are_discarded() {
            let mut c = Driven::accepted(stream_config(|_| {}));
            let mut input = get("/live/a", "");
            input.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            c.send(&input);
            let text = String::from_utf8(c.take()).expect("text");
            assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
            assert!(c.conn.is_open());
        }

        #[test]
        fn the_stream_ends_with_an_expired_event_when_its_token_expires() {
            let config = stream_config(|c| {
                c.ping_interval = ms(1000);
                if let Some(route) = c.routes.first_mut() {
                    route.auth = Some("app".to_owned());
                }
                let text = "algorithm = \"HS256\"\nsecret_file = \"unused\"\nleeway = \"0s\"\n";
                let mut table: AuthConfig = toml::from_str(text).expect("table");
                table.keys = KeySet::from_secret(Algorithm::HS256, SECRET).expect("keys");
                c.auth.insert("app".to_owned(), table);
            });
            let t0 = UNIX_MS_AT_ZERO / 1000;
            let claims = json!({"exp": t0 + 3, "channels": ["news"]});
            let token = encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .expect("token");
            let (status, _) = refused(config.clone(), "/live/news", "");
            assert_eq!(status, "HTTP/1.1 401 Unauthorized");
            let (status, _) = refused(config.clone(), &format!("/live/other?token={token}"), "");
            assert_eq!(status, "HTTP/1.1 403 Forbidden");
            // The token in the cookie, then in the query.
            let cookie = format!("Cookie: theme=dark; wshub_token={token}\r\n");
            let (mut c, _) = open_stream(config.clone(), "/live/news", &cookie);
            c.advance_to(2000);
            assert_eq!(c.take(), b":\n\n:\n\n");
            c.advance_to(3000);
            assert_eq!(
                String::from_utf8(c.take()).expect("text"),
                "event: expired\ndata: token expired\n\n"
            );
            assert!(c.wire.write_shut, "the stream ends");
            assert!(!c.conn.is_open());
            assert!(
                c.env
                    .metrics_text()
                    .contains("wshub_auth_expired_closes_total 1")
            );
            let (mut c, _) = open_stream(config, &format!("/live/news?token={token}"), "");
            c.advance_to(3000);
            assert!(
                String::from_utf8(c.take())
                    .expect("text")
                    .ends_with("event: expired\ndata: token expired\n\n")
            );
        }

        #[test]
        fn shutdown_sends_a_shutdown_event_and_ends_the_stream() {
            let config = stream_config(|c| c.close_timeout = ms(500));
            let (mut c, _) = open_stream(config, "/live/a", "");
            c.conn.shut_down(CloseCode::GOING_AWAY, "going away", 0);
            c.settle();
            assert_eq!(
                String::from_utf8(c.take()).expect("text"),
                "event: shutdown\ndata: restart\n\n"
            );
            assert!(c.wire.write_shut);
            c.advance_to(499);
            assert!(c.dropped.is_none(), "lingers for the client's FIN");
            c.advance_to(500);
            assert_eq!(c.dropped, Some(500));
        }

        #[test]
        fn an_evicted_stream_just_ends() {
            let (mut c, _) = open_stream(stream_config(|_| {}), "/live/a", "");
            c.conn.evict_slow(0);
            c.settle();
            assert!(c.take().is_empty());
            assert!(c.wire.write_shut);
        }

        #[test]
        fn notices_become_events_with_the_position_to_resume_from() {
            let (mut c, _) = open_stream(stream_config(|_| {}), "/live/a", "");
            let current = Position {
                epoch: crate::hub::Epoch::new(1),
                offset: 4,
            };
            c.conn
                .send_notice(Notice::Subscribed(current), b"{\"s\":1}");
            c.conn.send_notice(Notice::Recovered, b"{\"r\":1}");
            let refused = Notice::NotRecovered {
                reason: NotRecovered::Evicted,
                current,
            };
            c.conn.send_notice(refused, b"{\"n\":1}");
            let no_history = Notice::NotRecovered {
                reason: NotRecovered::NoHistory,
                current,
            };
            c.conn.send_notice(no_history, b"{\"n\":2}");
            c.settle();
            assert_eq!(
                String::from_utf8(c.take()).expect("text"),
                concat!(
                    "id: 0000000000000001:4\nevent: position\ndata: {\"s\":1}\n\n",
                    "id: 0000000000000001:4\nevent: not-recovered\ndata: {\"n\":1}\n\n",
                    "event: not-recovered\ndata: {\"n\":2}\n\n",
                )
            );
        }
    }

    mod event_stream_fan_out {
        //! Event streams among WebSocket subscribers in the fan-out: one
        //! event per message shared by every stream, replay and refusal as
        //! events, and the slow-consumer rule.

        use std::rc::Rc;

        use slab::Slab;

        use super::*;
        use crate::config::{OnBacklog, RouteConfig};
        use crate::hub::Epoch;
        use crate::server::compress::{Delivery, FrameCache};
        use crate::server::fanout::{FanOut, Outgoing, Recovery, env_of};
        use crate::server::harness::{self, Wire, open_slot, peer, server_frames};
        use crate::server::slot::Slot;

        fn env(adjust: impl FnOnce(&mut Config)) -> harness::Env {
            let mut config = Config::default();
            let mut live = RouteConfig::new("/live", RouteKind::Broadcast);
            live.history_size = 10;
            config.routes = vec![live];
            adjust(&mut config);
            harness::Env::new(config)
        }

        /// A slot whose connection opened an event stream on `path`; its
        /// first bytes are taken and its subscription dropped.
        fn stream_slot(env: &mut harness::Env, path: &str) -> Slot<Wire> {
            let mut conn = Connection::new(peer(), env.now);
            let mut request =
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
                    .into_bytes();
            conn.on_input(&mut request, &mut env.ctx());
            env.actions.clear();
            let mut wire = Wire::default();
            conn.flush(&mut wire).expect("in-memory wire");
            assert!(wire.bytes.starts_with(b"HTTP/1.1 200 OK"));
            wire.bytes.clear();
            assert!(conn.sse());
            Slot::new(wire, conn, 1, None)
        }

        fn at(offset: u64) -> Option<Position> {
            Some(Position {
                epoch: Epoch::new(5),
                offset,
            })
        }

        fn flush(fanout: &mut FanOut, slots: &mut Slab<Slot<Wire>>) {
            for key in fanout.dirty.drain(..) {
                let slot = &mut slots[key];
                slot.dirty = false;
                slot.conn.flush(&mut slot.io).expect("in-memory wire");
                if slot.conn.poll_shutdown_write() {
                    slot.io.write_shut = true;
                }
            }
        }

        fn text(slot: &mut Slot<Wire>) -> String {
            String::from_utf8(std::mem::take(&mut slot.io.bytes)).expect("text")
        }

        #[test]
        fn every_stream_gets_the_same_event_and_websockets_their_frames() {
            let mut env = env(|_| {});
            let mut slots = Slab::new();
            let a = slots.insert(stream_slot(&mut env, "/live/feed"));
            let b = slots.insert(stream_slot(&mut env, "/live/feed"));
            let plain = slots.insert(open_slot(&mut env, "/live/feed"));
            let meta = slots.insert(open_slot(&mut env, "/live/feed?meta=1"));
            env.actions.clear();
            let mut fanout = FanOut::default();
            let delivery = Delivery::new(Broadcast::new(OpCode::Text, b"x\ny"), at(3));
            let out = Outgoing {
                channel: "feed",
                message: &delivery.message,
                position: delivery.position,
                frames: &delivery.frames,
                held: None,
            };
            let stamp = fanout.next_stamp();
            let keys = [a, b, plain, meta].map(|k| k as u32);
            let sent = fanout.deliver(
                &mut slots,
                keys.into_iter(),
                out,
                None,
                stamp,
                env_of!(env, 0),
            );
            assert_eq!(sent, 4);
            let event = "id: 0000000000000005:3\ndata: x\ndata: y\n\n";
            // One event made once, the same bytes shared by both streams.
            let made = delivery.frames.frame_for(
                &delivery.message,
                Format::Sse { id: at(3) },
                None,
                None,
                &mut env.codec,
            );
            assert_eq!(&*made, event.as_bytes());
            flush(&mut fanout, &mut slots);
            assert_eq!(text(&mut slots[a]), event);
            assert_eq!(text(&mut slots[b]), event);
            let (frames, _) = server_frames(&slots[plain].io.bytes);
            assert_eq!(frames, [(OpCode::Text, b"x\ny".to_vec())]);
            let (frames, _) = server_frames(&slots[meta].io.bytes);
            assert!(frames[0].1.starts_with(b"{\"channel\":\"feed\""));
            let gauges = env.metrics_text();
            assert!(
                gauges.contains("wshub_sse_connections{route=\"/live\"} 2"),
                "{gauges}"
            );
            assert!(gauges.contains("wshub_websocket_connections{route=\"/live\"} 2"));
        }

        #[test]
        fn a_recovery_replays_events_with_ids_and_a_refusal_is_an_event() {
            let mut env = env(|_| {});
            let mut slots = Slab::new();
            let key = slots.insert(stream_slot(&mut env, "/live/feed"));
            let mut fanout = FanOut::default();
            let missed: Vec<Rc<Delivery>> = (1..=2)
                .map(|i| {
                    let message = Broadcast::new(OpCode::Binary, &[i as u8]);
                    Rc::new(Delivery::new(message, at(i)))
                })
                .collect();
            let outcome = Recovery::Recovered {
                from: at(0).expect("a position"),
                messages: missed.iter(),
            };
            let replayed = fanout.recover(&mut slots, key, "feed", outcome, env_of!(env, 0));
            assert_eq!(replayed, 2);
            let refused = Recovery::refused(NotRecovered::TooMany, at(9).expect("a position"));
            fanout.recover(&mut slots, key, "feed", refused, env_of!(env, 0));
            flush(&mut fanout, &mut slots);
            assert_eq!(
                text(&mut slots[key]),
                concat!(
                    "id: 0000000000000005:1\nevent: binary\ndata: AQ==\n\n",
                    "id: 0000000000000005:2\nevent: binary\ndata: Ag==\n\n",
                    "id: 0000000000000005:9\nevent: not-recovered\n",
                    "data: {\"channel\":\"feed\",\"recovered\":false,\"reason\":\"too_many\",",
                    "\"epoch\":\"0000000000000005\",\"offset\":9}\n\n",
                )
            );
        }

        #[test]
        fn a_stuck_stream_misses_events_with_drop_and_ends_with_close() {
            for policy in [OnBacklog::Drop, OnBacklog::Close] {
                let mut env = env(|c| {
                    c.max_backlog_bytes = 100;
                    c.on_backlog = policy;
                });
                let mut slots = Slab::new();
                let key = slots.insert(stream_slot(&mut env, "/live/feed"));
                slots[key].io.room = 0;
                let mut fanout = FanOut::default();
                for i in 0..4u64 {
                    let delivery = Delivery::new(Broadcast::new(OpCode::Text, &[b'x'; 40]), at(i));
                    let out = Outgoing {
                        channel: "feed",
                        message: &delivery.message,
                        position: delivery.position,
                        frames: &FrameCache::default(),
                        held: None,
                    };
                    let stamp = fanout.next_stamp();
                    let keys = std::iter::once(key as u32);
                    fanout.deliver(&mut slots, keys, out, None, stamp, env_of!(env, 0));
                    flush(&mut fanout, &mut slots);
                }
                let slot = &mut slots[key];
                match policy {
                    OnBacklog::Drop => {
                        assert!(slot.conn.is_open());
                        // One ~70-byte event fits under 100 bytes; the rest miss.
                        assert_eq!(env.metrics.slow_consumer_drops, 3);
                    }
                    OnBacklog::Close => {
                        assert!(!slot.conn.is_open(), "the stream ends");
                        assert_eq!(env.metrics.slow_consumer_closes, 1);
                        assert!(slot.io.write_shut, "its end is sent at once");
                        assert!(slot.io.bytes.is_empty(), "nothing was started");
                    }
                }
            }
        }
    }

    mod token_auth {
        //! Token auth at the upgrade and the expiry of an open connection,
        //! on the virtual clock.

        use jsonwebtoken::{EncodingKey, Header, encode};
        use serde_json::json;

        use super::*;
        use crate::config::{Algorithm, AuthConfig, KeySet, RouteConfig};
        use crate::server::harness::{UNIX_MS_AT_ZERO, upgrade_request};

        const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
        const T0: u64 = UNIX_MS_AT_ZERO / 1000;

        fn auth_config() -> Config {
            config(|c| {
                let mut route = RouteConfig::new("/live", RouteKind::Broadcast);
                route.auth = Some("app".to_owned());
                c.routes = vec![route];
                let text = "algorithm = \"HS256\"\nsecret_file = \"unused\"\nleeway = \"0s\"\n";
                let mut table: AuthConfig = toml::from_str(text).expect("table");
                table.keys = KeySet::from_secret(Algorithm::HS256, SECRET).expect("keys");
                c.auth.insert("app".to_owned(), table);
            })
        }

        fn token(claims: serde_json::Value) -> String {
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .expect("token")
        }

        fn upgrade(path: &str) -> Driven {
            let mut c = Driven::accepted(auth_config());
            c.send(&upgrade_request(path));
            c
        }

        fn status_line(c: &mut Driven) -> String {
            let bytes = c.take();
            let text = String::from_utf8_lossy(&bytes);
            text.lines().next().unwrap_or("").to_owned()
        }

        #[test]
        fn an_open_connection_is_closed_with_4001_when_its_token_expires() {
            let t = token(json!({"exp": T0 + 3, "channels": ["news"]}));
            let mut c = upgrade(&format!("/live/news?token={t}"));
            assert_eq!(status_line(&mut c), "HTTP/1.1 101 Switching Protocols");
            assert_eq!(c.conn.next_deadline(&c.env.config), Some(3000));
            c.advance_to(2999);
            assert!(c.take().is_empty());
            c.advance_to(3000);
            let frames = c.frames();
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].0, OpCode::Close);
            assert_eq!(close_code(&frames[0].1), Some(CLOSE_TOKEN_EXPIRED));
            assert_eq!(&frames[0].1[2..], TOKEN_EXPIRED_REASON.as_bytes());
            assert!(
                c.env
                    .metrics_text()
                    .contains("wshub_auth_expired_closes_total 1")
            );
        }

        #[test]
        fn token_expiry_holds_beside_keep_alive_pings() {
            let mut config = auth_config();
            config.ping_interval = ms(1000);
            config.pong_timeout = ms(900);
            let t = token(json!({"exp": T0 + 3, "channels": ["news"]}));
            let mut c = Driven::accepted(config);
            c.send(&upgrade_request(&format!("/live/news?token={t}")));
            assert_eq!(status_line(&mut c), "HTTP/1.1 101 Switching Protocols");
            for at in [1000, 2000] {
                c.advance_to(at);
                assert_eq!(c.frames(), [(OpCode::Ping, Vec::new())], "{at}");
                c.send(&client_frame(OpCode::Pong, b""));
            }
            c.advance_to(2999);
            assert!(c.take().is_empty());
            c.advance_to(3000);
            let frames = c.frames();
            assert_eq!(frames.len(), 1);
            assert_eq!(close_code(&frames[0].1), Some(CLOSE_TOKEN_EXPIRED));
        }

        #[test]
        fn missing_invalid_and_ungranted_tokens_are_refused() {
            let mut c = upgrade("/live/news");
            assert_eq!(status_line(&mut c), "HTTP/1.1 401 Unauthorized");
            let expired = token(json!({"exp": T0, "channels": ["news"]}));
            let mut c = upgrade(&format!("/live/news?token={expired}"));
            assert_eq!(status_line(&mut c), "HTTP/1.1 401 Unauthorized");
            let narrow = token(json!({"exp": T0 + 60, "channels": ["news", "user.1.*"]}));
            let mut c = upgrade(&format!(
                "/live?channel=news&channel=user.2.x&token={narrow}"
            ));
            assert_eq!(status_line(&mut c), "HTTP/1.1 403 Forbidden");
            let text = c.env.metrics_text();
            assert!(
                text.contains("wshub_auth_refused_total{reason=\"not_granted\"} 1"),
                "{text}"
            );
            let mut c = upgrade(&format!(
                "/live?channel=news&channel=user.1.x&token={narrow}"
            ));
            assert_eq!(status_line(&mut c), "HTTP/1.1 101 Switching Protocols");
        }

        #[test]
        fn a_subscriber_token_does_not_let_its_bearer_publish() {
            let mut config = auth_config();
            config.publish_auth = Some("app".to_owned());
            let mut n = ClusterLoop::new(config);
            let post = |token: &str| {
                format!(
                    "POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                     Content-Length: 2\r\n\r\nhi"
                )
                .into_bytes()
            };
            let subscriber = token(json!({"exp": T0 + 60, "channels": ["news"]}));
            n.send(&post(&subscriber));
            assert!(n.channels_sent().is_empty());
            let answers = n.responses();
            assert_eq!(answers.len(), 1);
            assert_eq!(answers[0].0, 403);
            let mut n = ClusterLoop::new({
                let mut config = auth_config();
                config.publish_auth = Some("app".to_owned());
                config
            });
            let publisher = token(json!({"exp": T0 + 60, "publish": ["news"]}));
            n.send(&post(&publisher));
            assert_eq!(n.channels_sent(), ["news"]);
        }

        #[test]
        fn the_relay_claim_decides_per_channel() {
            let mut config = auth_config();
            if let Some(t) = config.auth.get_mut("app") {
                t.relay_claim = Some("relay".to_owned());
            }
            let t = token(json!({"exp": T0 + 60, "channels": ["a", "b", "c"], "relay": ["b"]}));
            let mut c = Driven::accepted(config);
            c.send(&upgrade_request(&format!(
                "/live?channel=a&channel=b&channel=c&token={t}"
            )));
            assert!(c.conn.is_open());
            let allowed: Vec<bool> = (0..4).map(|i| c.conn.may_relay(i)).collect();
            assert_eq!(allowed, [false, true, false, false]);
        }
    }
}
