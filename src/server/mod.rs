//! The event loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! Owns: listeners, sockets, the shared receive buffer, the timer wheel and
//! the clock. Moves bytes between sockets and the connection state machines.
//! Also the process's life as a service, acted on only from inside the loop:
//! signals (SIGTERM/SIGINT drain and exit, SIGHUP reloads the config file),
//! and the service manager's notifications (ready, status, watchdog).
//! Must never: parse protocol bytes itself, block, or let one connection's
//! failure or flood reach another; nor drop an open connection on reload.

mod compress;
mod conn;
#[cfg(test)]
mod harness;
mod outqueue;
mod per_ip;
mod slot;
pub(crate) mod tls;
mod transport;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustix::process::Signal;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{CLOSE_SERVICE_RESTART, Config, ConfigError, ListenerConfig, OnBacklog};
use crate::daemon::notify::Notifier;
use crate::hub::{ChannelId, Hub};
use crate::metrics::{Metrics, Refused};
use crate::protocol::close::CloseCode;
use crate::protocol::http;
use crate::protocol::message::Inflater;
use crate::route::Routes;
use crate::timer::{TimerKey, TimerWheel};
use compress::{Broadcast, Codec, FrameCache};
use conn::{Action, Connection, Ctx};
use outqueue::Flush;
use per_ip::PerIp;
use slot::{KEY_MASK, Slot, split_token, token_of};
pub use tls::TlsConfigError;
use tls::TlsStream;
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
/// Listener tokens use generation 0, which connections never get.
const WAKER_TOKEN: Token = Token(usize::MAX);
/// The signal pipe registered by [`Server::handle_signals`].
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Timer-wheel values of the loop's own deadlines, next to the connections'
/// tokens in the same wheel.
const WATCHDOG_TIMER: Token = Token(usize::MAX - 2);
const STATUS_TIMER: Token = Token(usize::MAX - 3);
const SHUTDOWN_TIMER: Token = Token(usize::MAX - 4);
/// Slab keys from here up are never given to connections, so no connection
/// token can equal one of the reserved tokens above, whatever its generation.
const FIRST_RESERVED_KEY: usize = KEY_MASK - 7;
/// How often the status line sent to the service manager is refreshed.
const STATUS_INTERVAL_MS: u64 = 5_000;
/// Linux errno values for "too many open files" (per process / system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

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
    listeners: Vec<TcpListener>,
    /// Per listening socket (same index): the TLS config new connections
    /// get, `None` for plain ws://. Swapped on reload; connections keep the
    /// `Arc` they were accepted with.
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Per listening socket: the `config.listeners` entry whose
    /// certificate it serves, for reloads.
    tls_source: Vec<Option<usize>>,
    conns: Slab<Slot<Transport>>,
    next_generation: u32,
    timers: TimerWheel<Token>,
    recv_buf: Box<[u8]>,
    config: Config,
    routes: Routes,
    hub: Hub<u32>,
    metrics: Metrics,
    /// Work queued by the connection being driven, carried out right after.
    actions: Vec<Action>,
    /// permessage-deflate: one compressor and one inflater for every
    /// connection, reset per message.
    codec: Codec,
    inflater: Inflater,
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
    /// The canned answer for connections beyond `max_connections_per_ip`.
    too_many_response: Vec<u8>,
    /// Connections held per client address (while that limit is on).
    per_ip: PerIp,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// The listening sockets came from the service manager: `[[listener]]`
    /// is not used.
    inherited: bool,
    /// The file a reload (SIGHUP) reads; `None` on the built-in config.
    config_path: Option<PathBuf>,
    /// SIGTERM, SIGINT and SIGHUP, once [`Server::handle_signals`] was called.
    signals: Option<Signals>,
    notifier: Notifier,
    /// The drain after the first SIGTERM/SIGINT.
    shutdown: Option<Shutdown>,
}

/// A graceful shutdown in progress: every open WebSocket gets a close frame
/// (all at once, or spread over `shutdown_spread`), then the loop waits for
/// the connections to finish, at most until `deadline`.
struct Shutdown {
    started: u64,
    deadline: u64,
    spread: u64,
    code: CloseCode,
    reason: &'static str,
    /// Tokens of the connections that were open WebSockets when the drain
    /// began, in the order their close frames go out.
    queue: Vec<Token>,
    /// How many of `queue` have been sent their close frame.
    sent: usize,
    /// The wheel entry that wakes the loop for the next close or the deadline.
    timer: Option<TimerKey>,
}

impl Shutdown {
    /// When the close frame of `queue[index]` is due: evenly over the spread.
    fn due(&self, index: usize) -> u64 {
        let count = self.queue.len().max(1) as u128;
        let offset = u128::from(self.spread) * index as u128 / count;
        self.started
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }
}

/// What the loop does after handling signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterSignals {
    Continue,
    ExitNow,
}

impl Server {
    /// Binds every configured listener, reading the certificate and key
    /// of each TLS one.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut tls = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            tls.push(load_tls_for(listener)?.map(|c| (index, c)));
        }
        for listener in &config.listeners {
            let addr = listener.address;
            let socket = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(socket);
        }
        Server::new(config, listeners, tls, false)
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
        let mut sockets = Vec::with_capacity(listeners.len());
        let mut tls = Vec::with_capacity(listeners.len());
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let local = listener.local_addr()?;
            let source = config
                .listeners
                .iter()
                .position(|l| l.tls.is_some() && l.address == local);
            tls.push(match source {
                Some(index) => load_tls_for(&config.listeners[index])?.map(|c| (index, c)),
                None => None,
            });
            sockets.push(TcpListener::from_std(listener));
        }
        Server::new(config, sockets, tls, true)
    }

    fn new(
        config: Config,
        mut listeners: Vec<TcpListener>,
        tls: Vec<Option<(usize, Arc<rustls::ServerConfig>)>>,
        inherited: bool,
    ) -> Result<Server, ServerError> {
        let tls_source = tls.iter().map(|t| t.as_ref().map(|(i, _)| *i)).collect();
        let tls = tls.into_iter().map(|t| t.map(|(_, c)| c)).collect();
        let poll = Poll::new()?;
        for (index, socket) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(index), Interest::READABLE)?;
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
        let mut too_many_response = Vec::new();
        http::write_response(
            429,
            &[("Retry-After", "5")],
            b"too many connections from this address\n",
            true,
            &mut too_many_response,
        );
        Ok(Server {
            poll,
            listeners,
            tls,
            tls_source,
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
            dirty: Vec::new(),
            slow: Vec::new(),
            delivery_stamp: 0,
            config,
            clock: Instant::now(),
            ready: VecDeque::new(),
            accept_paused_until: None,
            busy_response,
            too_many_response,
            per_ip: PerIp::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            inherited,
            config_path: None,
            signals: None,
            notifier: Notifier::disabled(),
            shutdown: None,
        })
    }

    /// Sets the file that SIGHUP reloads the config from; `None` (the
    /// default) for a server on the built-in config, which has nothing to
    /// reload.
    pub fn set_config_path(&mut self, path: Option<PathBuf>) {
        self.config_path = path;
    }

    /// Sends the service manager notifications through `notifier`: READY=1
    /// when the loop starts, a periodic STATUS=, WATCHDOG=1 when asked for,
    /// RELOADING=1 and STOPPING=1.
    pub fn set_notifier(&mut self, notifier: Notifier) {
        self.notifier = notifier;
    }

    /// Takes over SIGTERM, SIGINT (graceful shutdown; a second one exits at
    /// once) and SIGHUP (reload the config file) for this process, handled
    /// inside the loop. For the daemon's one server only: signal handlers
    /// are process-wide.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        let mut signals = Signals::new([
            Signal::TERM.as_raw(),
            Signal::INT.as_raw(),
            Signal::HUP.as_raw(),
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The listening sockets came from the service manager.
    pub fn is_socket_activated(&self) -> bool {
        self.inherited
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Each listening socket's address and whether it serves TLS (wss://),
    /// in the order of [`Server::local_addrs`].
    pub fn local_endpoints(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .iter()
            .enumerate()
            .filter_map(|(index, l)| {
                let tls = self.tls.get(index).is_some_and(Option::is_some);
                l.local_addr().ok().map(|addr| (addr, tls))
            })
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
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = self.poll_timeout(self.now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let now = self.now();
            let mut signalled = false;
            for event in events.iter() {
                let token = event.token();
                if token == WAKER_TOKEN {
                    continue;
                }
                if token == SIGNAL_TOKEN {
                    signalled = true;
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
            if signalled && self.on_signals(now) == AfterSignals::ExitNow {
                return Ok(());
            }
            self.fire_timers(now);
            self.flush_dirty(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                for index in 0..self.listeners.len() {
                    self.accept(index, now);
                }
            }
            if self.shutdown_finished(now) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Just before the loop starts: tells the service manager the server is
    /// ready and schedules the watchdog and status updates.
    fn start_service(&mut self, now: u64) {
        let status = self.status_line();
        self.notifier.ready(&status);
        if let Some(period) = self.notifier.watchdog_period() {
            info!(
                "service watchdog enabled: pinging every {}",
                humantime::format_duration(period)
            );
            self.timers.insert(now, WATCHDOG_TIMER);
        }
        if self.notifier.is_enabled() {
            self.timers.insert(now + STATUS_INTERVAL_MS, STATUS_TIMER);
        }
    }

    /// The status line shown by `systemctl status`.
    fn status_line(&self) -> String {
        let open: u64 = self.metrics.open_by_route.iter().sum();
        let line = format!(
            "{} connections, {open} open websockets, {} channels",
            self.metrics.connections, self.metrics.channels
        );
        if self.shutdown.is_some() {
            format!("shutting down: {line} left")
        } else {
            line
        }
    }

    /// Handles the loop's own wheel entries; false for a connection token.
    fn on_loop_timer(&mut self, token: Token, now: u64) -> bool {
        match token {
            WATCHDOG_TIMER => {
                self.notifier.watchdog();
                if let Some(period) = self.notifier.watchdog_period() {
                    let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                    self.timers
                        .insert(now.saturating_add(period), WATCHDOG_TIMER);
                }
            }
            STATUS_TIMER => {
                let status = self.status_line();
                self.notifier.status(&status);
                self.timers
                    .insert(now.saturating_add(STATUS_INTERVAL_MS), STATUS_TIMER);
            }
            SHUTDOWN_TIMER => {
                if let Some(shutdown) = &mut self.shutdown {
                    shutdown.timer = None;
                }
                self.shutdown_step(now);
            }
            _ => return false,
        }
        true
    }

    /// Acts on the signals that arrived since the last turn.
    fn on_signals(&mut self, now: u64) -> AfterSignals {
        let received: Vec<i32> = match &mut self.signals {
            Some(signals) => signals.pending().collect(),
            None => return AfterSignals::Continue,
        };
        for signal in received {
            let name = signal_name(signal);
            if signal == Signal::HUP.as_raw() {
                self.reload();
            } else if self.shutdown.is_some() {
                warn!(
                    "{name} again: exiting now with {} connections still open",
                    self.conns.len()
                );
                return AfterSignals::ExitNow;
            } else {
                self.begin_shutdown(name, now);
            }
        }
        AfterSignals::Continue
    }

    /// Stops accepting, turns away HTTP clients and starts closing every
    /// open WebSocket with the configured code.
    fn begin_shutdown(&mut self, why: &str, now: u64) {
        let (code, reason) = if self.config.shutdown_close_code == CLOSE_SERVICE_RESTART {
            (CloseCode::SERVICE_RESTART, "service restart")
        } else {
            (CloseCode::GOING_AWAY, "going away")
        };
        let timeout = millis(self.config.shutdown_timeout);
        let spread = millis(self.config.shutdown_spread).min(timeout);
        // Closing the listeners refuses new connections at once (with socket
        // activation the service manager keeps its copy and queues them for
        // the next start).
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        self.listeners.clear();
        self.accept_paused_until = None;
        let mut queue = Vec::new();
        let mut http = Vec::new();
        for (key, slot) in &self.conns {
            if slot.conn.is_open() {
                queue.push(slot.token(key));
            } else {
                http.push(key);
            }
        }
        info!(
            "{why}: shutting down; closing {} websockets with {} ({reason}){} and waiting up to {} for them",
            queue.len(),
            code.0,
            if spread > 0 {
                format!(
                    " spread over {}",
                    humantime::format_duration(self.config.shutdown_spread)
                )
            } else {
                String::new()
            },
            humantime::format_duration(self.config.shutdown_timeout),
        );
        for key in http {
            if let Some(slot) = self.conns.get_mut(key)
                && slot.conn.stop_http(now)
            {
                self.drive(key, false, false, now);
            }
        }
        self.shutdown = Some(Shutdown {
            started: now,
            deadline: now.saturating_add(timeout),
            spread,
            code,
            reason,
            queue,
            sent: 0,
            timer: None,
        });
        let status = self.status_line();
        self.notifier.stopping(&status);
        self.shutdown_step(now);
    }

    /// Sends the close frames that are due and schedules the next wake-up:
    /// the next close, or the deadline.
    fn shutdown_step(&mut self, now: u64) {
        let Some(mut shutdown) = self.shutdown.take() else {
            return;
        };
        while shutdown.sent < shutdown.queue.len() && shutdown.due(shutdown.sent) <= now {
            let token = shutdown.queue[shutdown.sent];
            shutdown.sent += 1;
            let Some(key) = self.live_key(token) else {
                continue;
            };
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.send_close(shutdown.code, shutdown.reason, now);
                self.drive(key, false, false, now);
            }
        }
        let next = if shutdown.sent < shutdown.queue.len() {
            shutdown.due(shutdown.sent).min(shutdown.deadline)
        } else {
            // Every close is out: the queue is no longer needed.
            shutdown.queue = Vec::new();
            shutdown.sent = 0;
            shutdown.deadline
        };
        if let Some(timer) = shutdown.timer.take() {
            self.timers.remove(timer);
        }
        // A deadline already passed needs no wake-up: the loop ends this turn.
        if next > now {
            shutdown.timer = Some(self.timers.insert(next, SHUTDOWN_TIMER));
        }
        self.shutdown = Some(shutdown);
    }

    /// True once a shutdown has nothing left to wait for, or waited long enough.
    fn shutdown_finished(&self, now: u64) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        if self.conns.is_empty() {
            info!("every connection is closed; exiting");
            return true;
        }
        if now >= shutdown.deadline {
            warn!(
                "shutdown_timeout ({}) reached with {} connections still open; dropping them",
                humantime::format_duration(self.config.shutdown_timeout),
                self.conns.len()
            );
            return true;
        }
        false
    }

    /// SIGHUP: reads the config file again and applies what can change
    /// while running. An unreadable or invalid file changes nothing.
    fn reload(&mut self) {
        if self.shutdown.is_some() {
            info!("SIGHUP ignored: shutting down");
            return;
        }
        let Some(path) = self.config_path.clone() else {
            warn!("SIGHUP: running on the built-in config, so there is no file to reload");
            return;
        };
        info!("SIGHUP: reloading {}", path.display());
        self.notifier.reloading();
        match Config::load(&path) {
            Ok(config) => self.apply_config(config),
            Err(e) => {
                let message = match e {
                    ConfigError::Invalid { .. } => format!("{}: {e}", path.display()),
                    ConfigError::Read { .. } | ConfigError::Parse(_) => e.to_string(),
                };
                error!("reload failed, the running config stays in force: {message}");
            }
        }
        // Certificates are renewed on their own schedule, so they are read
        // again even when the config file itself could not be used.
        self.reload_certificates();
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    /// Swaps in a reloaded config: everything but the listeners applies at
    /// once, to open connections too; routes keep their indexes.
    fn apply_config(&mut self, mut config: Config) {
        // Certificate settings may change; the sockets themselves may not.
        let same_sockets = config.listeners.len() == self.config.listeners.len()
            && config
                .listeners
                .iter()
                .zip(&self.config.listeners)
                .all(|(a, b)| a.address == b.address && a.tls.is_some() == b.tls.is_some());
        if config.listeners != self.config.listeners && (self.inherited || !same_sockets) {
            let show = |c: &Config| {
                c.listeners
                    .iter()
                    .map(|l| l.address.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if self.inherited {
                warn!(
                    "reload: [[listener]] changed ({}), but the listening sockets come from the service manager and the setting is not used",
                    show(&config)
                );
            } else {
                warn!(
                    "reload: listener addresses cannot change while running, nor whether they use tls (in use: {}; in the file: {}); restart wshub to apply them",
                    show(&self.config),
                    show(&config)
                );
            }
            config.listeners.clone_from(&self.config.listeners);
        }
        let route_changes = match self.routes.update(&config) {
            Ok(changes) => changes,
            Err(e) => {
                error!("reload failed, the running config stays in force: {e}");
                return;
            }
        };
        self.metrics.set_routes(self.routes.len());
        let mut changes = self.config.changed_settings(&config);
        changes.extend(route_changes);
        let old = std::mem::replace(&mut self.config, config);
        let deadlines_changed = old.handshake_timeout != self.config.handshake_timeout
            || old.ping_interval != self.config.ping_interval
            || old.pong_timeout != self.config.pong_timeout
            || old.close_timeout != self.config.close_timeout
            || old.idle_timeout != self.config.idle_timeout;
        if deadlines_changed {
            // Entries only ever move earlier here; later deadlines are
            // picked up when the current entry fires.
            let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
            for key in keys {
                self.sync_timer(key);
            }
        }
        for change in &changes {
            info!("reload: {change}");
        }
        if changes.is_empty() {
            info!(
                "reload done: no changes, {} connections kept",
                self.conns.len()
            );
        } else {
            info!(
                "reload done: {} changes applied, {} connections kept",
                changes.len(),
                self.conns.len()
            );
        }
        // Last, so that lowering the level does not hide what changed.
        if old.log_level != self.config.log_level {
            crate::daemon::logging::set_level(self.config.log_level);
        }
    }

    /// Reads the certificate and key of every TLS listener again, from the
    /// paths in the running config. New connections get the new pair; a
    /// pair that cannot be used is reported and the current one stays.
    fn reload_certificates(&mut self) {
        for index in 0..self.tls.len() {
            if !matches!(self.tls.get(index), Some(Some(_))) {
                continue;
            }
            let Some(listener) = self
                .tls_source
                .get(index)
                .copied()
                .flatten()
                .and_then(|i| self.config.listeners.get(i))
            else {
                continue;
            };
            let addr = self
                .listeners
                .get(index)
                .and_then(|l| l.local_addr().ok())
                .unwrap_or(listener.address);
            match load_tls_for(listener) {
                Ok(Some(config)) => {
                    if let Some(tls) = &listener.tls {
                        info!(
                            "reload: wss://{addr}: certificate {} and key {} loaded; new connections use them",
                            tls.cert.display(),
                            tls.key.display()
                        );
                    }
                    if let Some(slot) = self.tls.get_mut(index) {
                        *slot = Some(config);
                    }
                }
                Ok(None) => {}
                Err(ServerError::Tls { source, .. }) => warn!(
                    "reload: wss://{addr}: {source}; the certificate loaded before stays in use"
                ),
                Err(e) => {
                    warn!("reload: wss://{addr}: {e}; the certificate loaded before stays in use")
                }
            }
        }
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
        let (key, generation) = split_token(token);
        self.conns
            .get(key)
            .filter(|s| s.generation == generation)
            .map(|_| key)
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
                Ok((stream, peer)) => self.admit(index, stream, peer, now),
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

    fn admit(&mut self, listener: usize, mut stream: TcpStream, peer: SocketAddr, now: u64) {
        if self.shutdown.is_some() {
            return;
        }
        let tls = self.tls.get(listener).cloned().flatten();
        if self.conns.len() >= self.config.max_connections {
            // Best effort: a refused client gets a reason if its socket has
            // room. A TLS client would take plaintext for a broken record,
            // so it is just closed.
            if tls.is_none() {
                let _ = io::Write::write(&mut stream, &self.busy_response);
            }
            self.metrics.refuse(Refused::OverCapacity);
            debug!("refused {peer}: connection limit reached");
            return;
        }
        let max_per_ip = self.config.max_connections_per_ip;
        let ip_slot = if max_per_ip == 0 {
            None
        } else {
            match self.per_ip.try_acquire(peer.ip(), max_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    if tls.is_none() {
                        let _ = io::Write::write(&mut stream, &self.too_many_response);
                    }
                    self.metrics.refuse(Refused::TooManyFromAddress);
                    debug!("refused {peer}: max_connections_per_ip reached");
                    return;
                }
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= FIRST_RESERVED_KEY {
            return;
        }
        let generation = self.next_generation;
        self.next_generation = match self.next_generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let token = token_of(key, generation);
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
        let transport = match tls {
            None => Transport::Plain(stream),
            Some(config) => match TlsStream::new(config, stream) {
                Ok(tls) => Transport::Tls(Box::new(tls)),
                Err(e) => {
                    // The socket was closed with the failed stream, which
                    // also took it out of the poller.
                    warn!("cannot start TLS for {peer}: {e}");
                    return;
                }
            },
        };
        entry.insert(Slot::new(
            transport,
            Connection::new(peer, now),
            generation,
            ip_slot,
        ));
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
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let mut ctx = Ctx {
                config: &self.config,
                routes: &self.routes,
                metrics: &mut self.metrics,
                actions: &mut self.actions,
                codec: &mut self.codec,
                inflater: &mut self.inflater,
                now,
            };
            if slot.conn.has_pending_input() {
                if slot.conn.queued() > self.config.max_backlog_bytes {
                    // Resumed by the flush that drains the queue.
                    read = false;
                    break;
                }
                if slot.conn.resume(&mut ctx) {
                    // Reads were paused, so readiness edges may have been missed.
                    read = true;
                }
            } else if read {
                read = false;
                match read_input(slot, &mut self.recv_buf, &mut ctx, read_to_end) {
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
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let token = slot.token(key);
        let Slot { io, conn, .. } = slot;
        if conn.queued() > 0 {
            match conn.flush(io) {
                Ok(Flush::Done | Flush::Blocked) => {}
                Err(e) => {
                    debug!("connection {key}: write failed: {e}");
                    self.remove(key);
                    return;
                }
            }
        } else if io.wants_write() {
            // TLS records (handshake, the tail of a write, close_notify)
            // with nothing queued behind them.
            if let Err(e) = io.flush_pending() {
                debug!("connection {key}: write failed: {e}");
                self.remove(key);
                return;
            }
        }
        if conn.poll_shutdown_write() {
            // Failure here means the peer is already gone; EOF or the close
            // timeout ends the connection either way.
            let _ = io.shutdown_write();
        }
        if conn.is_finished() && !io.wants_write() {
            self.remove(key);
            return;
        }
        if read || (conn.has_pending_input() && conn.queued() <= self.config.max_backlog_bytes) {
            again = true;
        }
        let want_write = conn.queued() > 0 || io.wants_write();
        if want_write != slot.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(slot.io.source(), token, interest)
            {
                debug!("connection {key}: reregister failed: {e}");
                self.remove(key);
                return;
            }
            slot.write_interest = want_write;
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
                        if let Some(slot) = self.conns.get_mut(key) {
                            slot.conn.memberships.push(membership);
                        }
                    }
                    self.update_hub_gauges();
                }
                Action::Publish {
                    channel,
                    message,
                    keep_alive,
                } => {
                    self.metrics.publishes += 1;
                    let stamp = self.next_stamp();
                    let mut cache = FrameCache::default();
                    let recipients = match self.hub.lookup(&channel) {
                        Some(id) => self.fan_out(id, &message, &mut cache, None, stamp),
                        None => 0,
                    };
                    if let Some(slot) = self.conns.get_mut(key) {
                        slot.conn.answer_publish(&channel, recipients, keep_alive);
                    }
                    self.remove_slow();
                }
                Action::Relay { message, to_sender } => {
                    self.metrics.publishes += 1;
                    let stamp = self.next_stamp();
                    let exclude = (!to_sender).then_some(key);
                    let mut cache = FrameCache::default();
                    // Indexed rather than collected: no allocation per relayed
                    // message (a connection holds at most a few memberships,
                    // and slow recipients are only removed after the loop).
                    let count = self.conns.get(key).map_or(0, |s| s.conn.memberships.len());
                    for i in 0..count {
                        let Some(id) = self
                            .conns
                            .get(key)
                            .and_then(|s| s.conn.memberships.iter().nth(i))
                            .map(|m| m.channel())
                        else {
                            break;
                        };
                        self.fan_out(id, &message, &mut cache, exclude, stamp);
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
    ///
    /// Subscribers that negotiated permessage-deflate share one compressed
    /// frame per server window size, made by the first of them (`cache`
    /// lives as long as the publish); the others share the plain frame.
    fn fan_out(
        &mut self,
        channel: ChannelId,
        message: &Broadcast,
        cache: &mut FrameCache,
        exclude: Option<usize>,
        stamp: u32,
    ) -> usize {
        let limit = self.config.max_backlog_bytes;
        let mut recipients = 0usize;
        let mut bytes = 0u64;
        for who in self.hub.subscribers(channel) {
            let key = who as usize;
            if exclude == Some(key) {
                continue;
            }
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if !slot.conn.is_open() || slot.delivery_stamp == stamp {
                continue;
            }
            slot.delivery_stamp = stamp;
            let conn = &mut slot.conn;
            let compression = self.routes.get(conn.route()).and_then(|r| r.deflate);
            let frame = cache.frame_for(message, conn.deflate(), compression, &mut self.codec);
            if conn.queued().saturating_add(frame.len()) > limit {
                match self.config.on_backlog {
                    OnBacklog::Close => {
                        self.metrics.slow_consumer_closes += 1;
                        self.slow.push(key);
                    }
                    OnBacklog::Drop => self.metrics.slow_consumer_drops += 1,
                }
                continue;
            }
            bytes = bytes.saturating_add(frame.len() as u64);
            conn.deliver(frame);
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(key);
            }
            recipients += 1;
        }
        let count = recipients as u64;
        self.metrics.deliveries += count;
        self.metrics.messages_out += count;
        self.metrics.bytes_out += bytes;
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
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.dirty = false;
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

    /// Keeps the connection's one wheel entry at or before its next deadline.
    /// Later deadlines are not chased: the entry fires early and re-arms.
    fn sync_timer(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = slot.conn.next_deadline(&self.config);
        match (slot.timer, deadline) {
            (Some(timer), Some(at)) => {
                let current = self.timers.deadline(timer);
                if current.is_none_or(|c| at < c) && !self.timers.reschedule(timer, at) {
                    slot.timer = Some(self.timers.insert(at, slot.token(key)));
                }
            }
            (None, Some(at)) => {
                slot.timer = Some(self.timers.insert(at, slot.token(key)));
            }
            (Some(timer), None) => {
                self.timers.remove(timer);
                slot.timer = None;
            }
            (None, None) => {}
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(mut slot) = self.conns.try_remove(key) {
            if let Some(timer) = slot.timer {
                self.timers.remove(timer);
            }
            if let Some(ip_slot) = slot.ip_slot {
                self.per_ip.release(ip_slot);
            }
            let conn = &mut slot.conn;
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
            let _ = self.poll.registry().deregister(slot.io.source());
            debug!("connection {key} closed");
        }
    }
}

/// Reads the certificate and key of a TLS listener (`None` for a plain
/// one). Used at start and on reload; `--check-config` uses
/// [`load_listener_tls`].
fn load_tls_for(
    listener: &ListenerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    load_listener_tls(listener).map_err(|source| ServerError::Tls {
        addr: listener.address,
        source: Box::new(source),
    })
}

/// Reads and checks the certificate and key files of a `tls = true`
/// listener; `Ok(None)` for a plain listener. Touches nothing but the two
/// files, so `--check-config` can use it.
pub fn load_listener_tls(
    listener: &ListenerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsConfigError> {
    match &listener.tls {
        None => Ok(None),
        Some(tls) => tls::load_server_config(&tls.cert, &tls.key, tls.alpn).map(Some),
    }
}

/// A configured duration in milliseconds on the loop's clock.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A signal's name for the log.
fn signal_name(signal: i32) -> &'static str {
    if signal == Signal::TERM.as_raw() {
        "SIGTERM"
    } else if signal == Signal::INT.as_raw() {
        "SIGINT"
    } else if signal == Signal::HUP.as_raw() {
        "SIGHUP"
    } else {
        "signal"
    }
}

/// Connections the kernel may queue for `accept` per listener. The usual 128
/// overflows when thousands of clients reconnect at once (after a restart or
/// a network blip); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a non-blocking listening socket with [`LISTEN_BACKLOG`] (mio's own
/// `bind` uses 128).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(std::net::TcpListener::from(socket)))
}

/// Reads until the socket is drained or the turn's budget is spent, feeding
/// each read to the connection straight from the shared buffer.
/// Returns true when the budget ran out with input possibly left.
fn read_input(
    slot: &mut Slot<Transport>,
    buf: &mut [u8],
    ctx: &mut Ctx<'_>,
    read_to_end: bool,
) -> io::Result<bool> {
    let Slot { io, conn, .. } = slot;
    for _ in 0..READS_PER_TURN {
        if !conn.wants_read() {
            return Ok(false);
        }
        match io.read(buf) {
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
