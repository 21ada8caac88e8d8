//! The event loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! Owns: listeners, sockets, the shared receive buffer, the timer wheel and
//! the clock. Moves bytes between sockets and the connection state machines.
//! Must never: parse protocol bytes itself, block, or let one connection's
//! failure or flood reach another.

mod conn;
mod outqueue;
mod transport;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::{Config, OnBacklog};
use crate::hub::{ChannelId, Hub};
use crate::metrics::Metrics;
use crate::protocol::http;
use crate::route::Routes;
use crate::timer::TimerWheel;
use conn::{Action, Connection, Ctx};
use outqueue::Flush;
use transport::Transport;

/// Size of the one receive buffer shared by every connection of the loop.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Reads per connection per readiness event before others get their turn;
/// the connection is revisited on the next loop turn.
const READS_PER_TURN: usize = 16;
/// Rounds of "process held-back input, carry out its actions" per
/// connection per turn; bounds how long one pipelining client holds the loop.
const ROUNDS_PER_TURN: usize = 64;
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// Events taken from the poller per turn.
const EVENTS_PER_POLL: usize = 1024;
/// Bits of a token holding the slab key; the bits above hold the slot's generation.
const KEY_BITS: u32 = usize::BITS / 2;
const KEY_MASK: usize = (1 << KEY_BITS) - 1;
/// Listener tokens use generation 0, which connections never get.
const WAKER_TOKEN: Token = Token(usize::MAX);
/// Linux errno values for "too many open files" (per process / system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("event loop failure: {0}")]
    Io(#[from] io::Error),
}

/// Stops a running server from another thread.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ServerHandle {
    /// Asks the loop to exit; running connections are dropped.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }
}

/// A bound server, ready to run.
pub struct Server {
    poll: Poll,
    listeners: Vec<TcpListener>,
    conns: Slab<Connection>,
    next_generation: u32,
    timers: TimerWheel<Token>,
    recv_buf: Box<[u8]>,
    config: Config,
    routes: Routes,
    hub: Hub<u32>,
    metrics: Metrics,
    /// Work queued by the connection being driven, carried out right after.
    actions: Vec<Action>,
    /// Connections given broadcast frames this turn, flushed before polling.
    dirty: Vec<usize>,
    /// Slow subscribers found during a fan-out, removed after it.
    slow: Vec<usize>,
    /// Tags each fan-out so a relay through several channels reaches a
    /// subscriber of more than one of them once.
    delivery_stamp: u32,
    clock: Instant,
    /// Connections to drive again next turn: read budget used up, or input
    /// held back by backpressure that may now proceed.
    ready: VecDeque<Token>,
    accept_paused_until: Option<u64>,
    /// The canned answer for connections beyond `max_connections`.
    busy_response: Vec<u8>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Server {
    /// Binds every configured listener.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let poll = Poll::new()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let addr = listener.address;
            let mut socket =
                TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
            poll.registry()
                .register(&mut socket, Token(index), Interest::READABLE)?;
            listeners.push(socket);
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let mut busy_response = Vec::new();
        http::write_response(
            503,
            &[("Retry-After", "5")],
            b"server is at its connection limit\n",
            true,
            &mut busy_response,
        );
        Ok(Server {
            poll,
            listeners,
            conns: Slab::new(),
            next_generation: 1,
            timers: TimerWheel::new(0),
            recv_buf: vec![0; RECV_BUF_LEN].into_boxed_slice(),
            routes: Routes::new(&config),
            hub: Hub::new(),
            metrics: Metrics::new(config.routes.len()),
            actions: Vec::new(),
            dirty: Vec::new(),
            slow: Vec::new(),
            delivery_stamp: 0,
            config,
            clock: Instant::now(),
            ready: VecDeque::new(),
            accept_paused_until: None,
            busy_response,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// A handle that can stop the loop from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: Arc::clone(&self.stop),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Runs the event loop until stopped through a [`ServerHandle`].
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = self.poll_timeout(self.now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = self.now();
            for event in events.iter() {
                let token = event.token();
                if token == WAKER_TOKEN {
                    continue;
                }
                if token.0 < self.listeners.len() {
                    self.accept(token.0, now);
                    continue;
                }
                let Some(key) = self.live_key(token) else {
                    continue;
                };
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                // After a short read the socket is known to be drained, unless
                // the peer also closed: then read on to see the EOF.
                let read_to_end = event.is_read_closed() || event.is_error();
                self.drive(key, readable, read_to_end, now);
            }
            self.drive_ready(now);
            self.fire_timers(now);
            self.flush_dirty(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                for index in 0..self.listeners.len() {
                    self.accept(index, now);
                }
            }
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        if !self.ready.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = match (self.timers.next_expiry(), self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| Duration::from_millis(t.saturating_sub(now)))
    }

    fn live_key(&self, token: Token) -> Option<usize> {
        let key = token.0 & KEY_MASK;
        let generation = token.0 >> KEY_BITS;
        self.conns
            .get(key)
            .filter(|c| c.generation as usize == generation)
            .map(|_| key)
    }

    fn token_of(key: usize, generation: u32) -> Token {
        Token(((generation as usize) << KEY_BITS) | key)
    }

    fn accept(&mut self, index: usize, now: u64) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    // Pending connections stay in the backlog; retrying at
                    // once would spin, so wait for descriptors to free up.
                    warn!("out of file descriptors, pausing accept: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE_MS);
                    return;
                }
                // A connection that died in the backlog, or a transient
                // failure: it concerns that one connection only.
                Err(e) => debug!("accept failed: {e}"),
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: u64) {
        if self.conns.len() >= self.config.max_connections {
            // Best effort: a refused client gets a reason if its socket has room.
            let _ = io::Write::write(&mut stream, &self.busy_response);
            debug!("refused {peer}: connection limit reached");
            return;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key > KEY_MASK {
            return;
        }
        let generation = self.next_generation;
        self.next_generation = match self.next_generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let token = Self::token_of(key, generation);
        // Small frames must not wait for ACKs of earlier ones.
        let _ = stream.set_nodelay(true);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            debug!("cannot register {peer}: {e}");
            return;
        }
        entry.insert(Connection::new(Transport::Plain(stream), generation, now));
        self.metrics.connections += 1;
        debug!("connection {key} from {peer}");
        self.sync_timer(key);
    }

    /// Reads what is available, lets the connection process it, carries out
    /// the actions it asks for, writes what it produced in one go, and
    /// settles poll interest and timer.
    fn drive(&mut self, key: usize, readable: bool, read_to_end: bool, now: u64) {
        let mut read = readable;
        let mut again = false;
        for _ in 0..ROUNDS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let mut ctx = Ctx {
                config: &self.config,
                routes: &self.routes,
                metrics: &mut self.metrics,
                actions: &mut self.actions,
                now,
            };
            if conn.has_pending_input() {
                if conn.out.len() > self.config.max_backlog_bytes {
                    // Resumed by the flush that drains the queue.
                    read = false;
                    break;
                }
                if conn.resume(&mut ctx) {
                    // Reads were paused, so readiness edges may have been missed.
                    read = true;
                }
            } else if read {
                read = false;
                match read_input(conn, &mut self.recv_buf, &mut ctx, read_to_end) {
                    Ok(more) => again = more,
                    Err(e) => {
                        debug!("connection {key}: read failed: {e}");
                        self.remove(key);
                        return;
                    }
                }
            } else {
                break;
            }
            if !self.actions.is_empty() {
                self.run_actions(key);
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let token = Self::token_of(key, conn.generation);
        if !conn.out.is_empty() {
            match conn.out.flush(&mut conn.transport) {
                Ok(Flush::Done | Flush::Blocked) => {}
                Err(e) => {
                    debug!("connection {key}: write failed: {e}");
                    self.remove(key);
                    return;
                }
            }
        }
        conn.after_flush();
        if conn.is_finished() {
            self.remove(key);
            return;
        }
        if read || (conn.has_pending_input() && conn.out.len() <= self.config.max_backlog_bytes) {
            again = true;
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(conn.transport.source(), token, interest)
            {
                debug!("connection {key}: reregister failed: {e}");
                self.remove(key);
                return;
            }
            conn.write_interest = want_write;
        }
        if again {
            self.ready.push_back(token);
        }
        self.sync_timer(key);
    }

    /// Carries out what connection `key` asked for while processing input.
    fn run_actions(&mut self, key: usize) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Subscribe(channels) => {
                    let Ok(who) = u32::try_from(key) else {
                        continue;
                    };
                    for name in &channels {
                        let membership = self.hub.subscribe(name, who);
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.memberships.push(membership);
                        }
                    }
                    self.update_hub_gauges();
                }
                Action::Publish {
                    channel,
                    frame,
                    keep_alive,
                } => {
                    self.metrics.publishes += 1;
                    let stamp = self.next_stamp();
                    let recipients = match self.hub.lookup(&channel) {
                        Some(id) => self.fan_out(id, &frame, None, stamp),
                        None => 0,
                    };
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.out.push_with(|buf| {
                            crate::hub::publish::write_published(
                                &channel, recipients, keep_alive, buf,
                            );
                        });
                    }
                    self.remove_slow();
                }
                Action::Relay { frame, to_sender } => {
                    self.metrics.publishes += 1;
                    let stamp = self.next_stamp();
                    let exclude = (!to_sender).then_some(key);
                    let channels: Vec<ChannelId> = match self.conns.get(key) {
                        Some(conn) => conn.memberships.iter().map(|m| m.channel()).collect(),
                        None => Vec::new(),
                    };
                    for id in channels {
                        self.fan_out(id, &frame, exclude, stamp);
                    }
                    self.remove_slow();
                }
            }
        }
        // Keep the vector's capacity for the next connection.
        self.actions = actions;
    }

    fn next_stamp(&mut self) -> u32 {
        // Zero is what new connections start with, so it is never used.
        self.delivery_stamp = match self.delivery_stamp.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        self.delivery_stamp
    }

    /// Queues one shared frame on every open subscriber of a channel and
    /// lists them for a flush at the end of the turn. Returns the recipients.
    fn fan_out(
        &mut self,
        channel: ChannelId,
        frame: &Rc<[u8]>,
        exclude: Option<usize>,
        stamp: u32,
    ) -> usize {
        let limit = self.config.max_backlog_bytes;
        let mut recipients = 0usize;
        for who in self.hub.subscribers(channel) {
            let key = who as usize;
            if exclude == Some(key) {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.is_open() || conn.delivery_stamp == stamp {
                continue;
            }
            conn.delivery_stamp = stamp;
            if conn.out.len().saturating_add(frame.len()) > limit {
                match self.config.on_backlog {
                    OnBacklog::Close => {
                        self.metrics.slow_consumer_closes += 1;
                        self.slow.push(key);
                    }
                    OnBacklog::Drop => self.metrics.slow_consumer_drops += 1,
                }
                continue;
            }
            conn.out.push_shared(Rc::clone(frame));
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            recipients += 1;
        }
        let count = recipients as u64;
        self.metrics.deliveries += count;
        self.metrics.messages_out += count;
        self.metrics.bytes_out += count.saturating_mul(frame.len() as u64);
        recipients
    }

    fn remove_slow(&mut self) {
        while let Some(key) = self.slow.pop() {
            debug!("connection {key}: slow consumer over max_backlog_bytes, dropped");
            self.remove(key);
        }
    }

    /// Writes out what fan-outs queued this turn, one vectored write per
    /// connection however many frames it got.
    fn flush_dirty(&mut self, now: u64) {
        for _ in 0..ROUNDS_PER_TURN {
            if self.dirty.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.dirty);
            for key in batch.drain(..) {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.dirty = false;
                    self.drive(key, false, false, now);
                }
            }
            // Driving can resume held-back input that relays further; those
            // recipients are in `self.dirty` now. Otherwise keep the capacity.
            if self.dirty.is_empty() {
                self.dirty = batch;
            }
        }
    }

    fn update_hub_gauges(&mut self) {
        self.metrics.channels = self.hub.channel_count() as u64;
        self.metrics.subscriptions = self.hub.subscription_count() as u64;
    }

    fn drive_ready(&mut self, now: u64) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            if let Some(key) = self.live_key(token) {
                self.drive(key, true, true, now);
            }
        }
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some((_, token)) = self.timers.poll(now) {
            let Some(key) = self.live_key(token) else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            if conn.on_timer(&self.config, now) {
                self.drive(key, false, false, now);
            } else {
                debug!("connection {key}: timed out");
                self.remove(key);
            }
        }
    }

    /// Keeps the connection's one wheel entry at or before its next deadline.
    /// Later deadlines are not chased: the entry fires early and re-arms.
    fn sync_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = conn.next_deadline(&self.config);
        match (conn.timer, deadline) {
            (Some(timer), Some(at)) => {
                let current = self.timers.deadline(timer);
                if current.is_none_or(|c| at < c) && !self.timers.reschedule(timer, at) {
                    let token = Self::token_of(key, conn.generation);
                    conn.timer = Some(self.timers.insert(at, token));
                }
            }
            (None, Some(at)) => {
                let token = Self::token_of(key, conn.generation);
                conn.timer = Some(self.timers.insert(at, token));
            }
            (Some(timer), None) => {
                self.timers.remove(timer);
                conn.timer = None;
            }
            (None, None) => {}
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            if let Some(timer) = conn.timer {
                self.timers.remove(timer);
            }
            let memberships = conn.memberships.take();
            if !memberships.is_empty() {
                for membership in memberships.iter() {
                    self.hub.unsubscribe(membership);
                }
                self.update_hub_gauges();
            }
            self.metrics.connections = self.metrics.connections.saturating_sub(1);
            if let Some(open) = conn
                .counted_route()
                .and_then(|r| self.metrics.open_by_route.get_mut(usize::from(r.0)))
            {
                *open = open.saturating_sub(1);
            }
            let _ = self.poll.registry().deregister(conn.transport.source());
            debug!("connection {key} closed");
        }
    }
}

/// Reads until the socket is drained or the turn's budget is spent, feeding
/// each read to the connection straight from the shared buffer.
/// Returns true when the budget ran out with input possibly left.
fn read_input(
    conn: &mut Connection,
    buf: &mut [u8],
    ctx: &mut Ctx<'_>,
    read_to_end: bool,
) -> io::Result<bool> {
    for _ in 0..READS_PER_TURN {
        if !conn.wants_read() {
            return Ok(false);
        }
        match conn.transport.read(buf) {
            Ok(0) => {
                conn.on_eof(ctx.now);
                return Ok(false);
            }
            Ok(n) => {
                let Some(input) = buf.get_mut(..n) else {
                    return Ok(false);
                };
                conn.on_input(input, ctx);
                // A short read emptied the socket's receive queue; new data
                // raises a new edge.
                if n < buf.len() && !read_to_end {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
