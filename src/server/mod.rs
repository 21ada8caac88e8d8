//! The event loop: one thread, one `mio::Poll`, a slab of connection slots.
//!
//! Owns: the poller, the slab, the timer wheel, the clock, the one receive
//! buffer shared by every connection, and the loop itself: poll, then hand
//! each event to whoever it concerns (a listener, a connection, the signal
//! pipe), drive connections with input left over, handle signals, fire
//! deadlines, flush what fan-outs queued. Everything else lives beside it:
//! accept and listeners (`listener`), one connection's turn (`drive`), hub
//! work and the slow-consumer rule (`fanout`), signals, shutdown and reload
//! (`lifecycle`), the Redis links of a cluster node (`bus`), and the
//! connection state machine itself (`conn`).
//! Must never: parse protocol bytes, decide policy, block, or let one
//! connection's failure or flood reach another.

mod bus;
mod compress;
mod conn;
mod drive;
mod fanout;
mod handover;
#[cfg(test)]
mod harness;
mod lifecycle;
mod listener;
mod outqueue;
mod per_ip;
mod slot;
pub(crate) mod tls;
mod transport;
mod upgrade;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::message::Inflater;
use crate::route::Routes;
use crate::timer::TimerWheel;
use compress::Codec;
use conn::Action;
use fanout::FanOut;
use lifecycle::{AfterSignals, Lifecycle};
pub use listener::load_listener_tls;
use listener::{Listener, Listeners};
use per_ip::PerIp;
use slot::{SIGNAL_TOKEN, Slot, WAKER_TOKEN, split_token};
pub use tls::TlsConfigError;
use transport::Transport;
pub use upgrade::Relaunch;

/// Size of the one receive buffer shared by every connection of the loop.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Events taken from the poller per turn.
const EVENTS_PER_POLL: usize = 1024;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        // Boxed: the error is rare and large, `Result<Server, _>` is not.
        source: Box<TlsConfigError>,
    },
    #[error("no listening socket to serve on")]
    NoListeners,
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
    listeners: Listeners,
    conns: Slab<Slot<Transport>>,
    next_generation: u32,
    timers: TimerWheel<Token>,
    recv_buf: Box<[u8]>,
    config: Config,
    routes: Routes,
    /// Channels, their subscribers (slab keys), positions and history.
    hub: Hub<u32, std::rc::Rc<compress::Delivery>>,
    metrics: Metrics,
    /// Work queued by the connection being driven, carried out right after.
    actions: Vec<Action>,
    /// permessage-deflate: one compressor and one inflater for every
    /// connection, reset per message.
    codec: Codec,
    inflater: Inflater,
    fanout: FanOut,
    clock: Instant,
    /// The wall clock (ms since the Unix epoch) as the current turn began,
    /// read once per turn rather than per connection: token times only.
    wall_ms: u64,
    /// Connections to drive again next turn: read budget used up, or input
    /// held back by backpressure that may now proceed.
    ready: VecDeque<Token>,
    /// Connections held per client address (while that limit is on).
    per_ip: PerIp,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    life: Lifecycle,
    /// The Redis bus, when `[cluster]` is configured (boxed: most servers
    /// have none).
    cluster: Option<Box<bus::Cluster>>,
}

impl Server {
    /// Binds every configured listener, reading the certificate and key
    /// of each TLS one.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let listeners = Listener::bind_all(&config.listeners)?;
        Server::new(config, listeners, false)
    }

    /// Serves on sockets that are already listening, such as the ones the
    /// service manager passes on socket activation; `config.listeners` is
    /// then not used, except that a socket bound to the address of a
    /// `tls = true` listener serves TLS with that listener's certificate.
    /// The sockets are switched to non-blocking mode.
    pub fn with_listeners(
        config: Config,
        listeners: Vec<std::net::TcpListener>,
    ) -> Result<Server, ServerError> {
        if listeners.is_empty() {
            return Err(ServerError::NoListeners);
        }
        let listeners = listeners.into_iter().map(|socket| (socket, None)).collect();
        Server::with_listeners_as(config, listeners)
    }

    /// Serves on listening sockets handed over by the process this one
    /// takes over from, as the (possibly changed) config's `[[listener]]`
    /// says: each entry takes the handed socket that was bound for its
    /// address (preferring one that served TLS alike), so that the clients
    /// waiting in its queue carry over, or binds anew; a handed socket the
    /// config no longer names is closed. `handed` gives each socket's
    /// `[[listener]]` address and TLS flag when known (else its own
    /// address counts). Sockets of a socket unit are all kept as they are
    /// (`[[listener]]` does not apply to them).
    fn with_handed_listeners(
        config: Config,
        handed: Vec<(std::net::TcpListener, Option<(SocketAddr, bool)>)>,
        socket_activated: bool,
    ) -> Result<Server, ServerError> {
        if socket_activated {
            let mut server = Server::with_listeners_as(config, handed)?;
            server.life.socket_activated = true;
            return Ok(server);
        }
        let listeners = Listener::for_config(&config.listeners, handed)?;
        if listeners.is_empty() {
            return Err(ServerError::NoListeners);
        }
        Server::new(config, listeners, false)
    }

    /// [`Server::with_listeners`] for sockets handed over by another
    /// process, each with the `[[listener]]` address it was bound for and
    /// whether it served TLS, when known.
    fn with_listeners_as(
        config: Config,
        listeners: Vec<(std::net::TcpListener, Option<(SocketAddr, bool)>)>,
    ) -> Result<Server, ServerError> {
        if listeners.is_empty() {
            return Err(ServerError::NoListeners);
        }
        let listeners = listeners
            .into_iter()
            .map(|(socket, handed)| Listener::passed(socket, handed, &config.listeners))
            .collect::<Result<Vec<_>, _>>()?;
        Server::new(config, listeners, true)
    }

    fn new(
        config: Config,
        mut listeners: Vec<Listener>,
        inherited: bool,
    ) -> Result<Server, ServerError> {
        let poll = Poll::new()?;
        for (index, listener) in listeners.iter_mut().enumerate() {
            listener.register(poll.registry(), Token(index))?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let config_cluster = config
            .cluster
            .as_ref()
            .map(|c| Box::new(bus::Cluster::new(c)));
        Ok(Server {
            poll,
            listeners: Listeners::new(listeners),
            conns: Slab::new(),
            next_generation: 1,
            timers: TimerWheel::new(0),
            recv_buf: vec![0; RECV_BUF_LEN].into_boxed_slice(),
            routes: Routes::new(&config),
            hub: Hub::new(),
            metrics: Metrics::new(config.routes.len()),
            actions: Vec::new(),
            codec: Codec::default(),
            inflater: Inflater::new(),
            fanout: FanOut::default(),
            config,
            clock: Instant::now(),
            wall_ms: crate::auth::unix_ms(),
            ready: VecDeque::new(),
            per_ip: PerIp::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            life: Lifecycle::new(inherited),
            cluster: config_cluster,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .list
            .iter()
            .filter_map(Listener::local_addr)
            .collect()
    }

    /// Each listening socket's address and whether it serves TLS (wss://),
    /// in the order of [`Server::local_addrs`].
    pub fn local_endpoints(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .list
            .iter()
            .filter_map(|l| l.local_addr().map(|addr| (addr, l.is_tls())))
            .collect()
    }

    /// A handle that can stop the loop from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: Arc::clone(&self.stop),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Runs the event loop until stopped through a [`ServerHandle`], or,
    /// with [`Server::handle_signals`], until a shutdown has drained.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        self.start_service(self.now());
        self.bus_turn(self.now());
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = self.poll_timeout(self.now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let turn = Instant::now();
            let now = self.now();
            self.wall_ms = crate::auth::unix_ms();
            let mut signalled = false;
            // Redis disconnects a subscriber whose output it cannot send:
            // its socket is drained before anything else.
            self.bus_again(now);
            for event in events.iter() {
                if event.token() == slot::BUS_SUBSCRIPTION_TOKEN {
                    self.on_bus_event(crate::bus::Role::Subscriptions, now);
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER_TOKEN {
                    continue;
                }
                if let Some(role) = bus::role_of(token) {
                    if role == crate::bus::Role::Commands {
                        self.on_bus_event(role, now);
                    }
                    continue;
                }
                if token == SIGNAL_TOKEN {
                    signalled = true;
                    continue;
                }
                if token == slot::HANDOVER_TOKEN {
                    self.on_upgrade_event(now);
                    continue;
                }
                if let Some(index) = self.listeners.index_of(token) {
                    self.accept(index, now);
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
            if signalled && self.on_signals(now) == AfterSignals::ExitNow {
                return Ok(());
            }
            self.fire_timers(now);
            self.bus_turn(now);
            self.flush_dirty(now);
            self.resume_accepting(now);
            self.metrics.loop_turn(turn.elapsed());
            if self.shutdown_finished(now) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let bus_again = self.cluster.as_ref().is_some_and(|c| c.again);
        if !self.ready.is_empty() || !self.fanout.dirty.is_empty() || bus_again {
            return Some(Duration::ZERO);
        }
        let next = match (self.timers.next_expiry(), self.listeners.paused_until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| Duration::from_millis(t.saturating_sub(now)))
    }

    /// The slab key of the connection `token` names, if it is still there
    /// (a late event for a reused slot has another generation).
    fn live_key(&self, token: Token) -> Option<usize> {
        let (key, generation) = split_token(token);
        self.conns
            .get(key)
            .filter(|s| s.generation == generation)
            .map(|_| key)
    }

    /// Drives the connections left with input or budget last turn.
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

    /// Fires every wheel entry that is due: the loop's own, then connections'.
    fn fire_timers(&mut self, now: u64) {
        while let Some((_, token)) = self.timers.poll(now) {
            if token == slot::HISTORY_TIMER {
                self.on_history_timer(now);
                continue;
            }
            if self.on_loop_timer(token, now) {
                continue;
            }
            let Some(key) = self.live_key(token) else {
                continue;
            };
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            slot.timer = None;
            if slot.conn.on_timer(&self.config, &mut self.metrics, now) {
                self.drive(key, false, false, now);
            } else {
                debug!("connection {key}: timed out");
                self.remove(key);
            }
        }
    }
}
