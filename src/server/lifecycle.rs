//! The process's life as a service, acted on only from inside the loop:
//! signals, graceful shutdown, reload of the config file and of
//! certificates, and the service manager's notifications.
//!
//! Owns: the signal pipe (SIGTERM/SIGINT drain and exit, a second one exits
//! at once; SIGHUP reloads; SIGUSR2 and, under a file descriptor store,
//! SIGTERM hand over to a new process through [`super::upgrade`]), the drain
//! in progress ([`Shutdown`], whose close frames are paced over
//! `shutdown_spread`, and what a handover left behind: [`Drain`]), applying
//! a reloaded config, and the READY/STATUS/WATCHDOG/RELOADING/STOPPING
//! notifications with their timer-wheel entries.
//! Must never: block, drop an open connection on reload, apply a config
//! that failed to load or validate, or change a listening socket while
//! running.

use std::path::PathBuf;
use std::time::Duration;

use log::{error, info, warn};
use mio::{Interest, Token};
use rustix::process::Signal;
use signal_hook_mio::v1_0::Signals;

use super::conn::SERVICE_RESTART_REASON;
use super::slot::{
    BUS_TIMER, HANDOVER_TIMER, SHUTDOWN_TIMER, SIGNAL_TOKEN, STATUS_TIMER, WATCHDOG_TIMER,
};
use super::upgrade::{Relaunch, Upgrade};
use super::{Server, ServerError};
use crate::config::{CLOSE_SERVICE_RESTART, Config, ConfigError};
use crate::daemon::notify::Notifier;
use crate::metrics::Transport;
use crate::protocol::close::CloseCode;
use crate::timer::TimerKey;

/// What a shutdown leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    /// Everything: every connection is closed the configured way.
    Ordinary,
    /// What a new process did not take over; it serves the rest already,
    /// so the drain takes its configured time.
    HandedOver,
    /// What did not go into the service manager's store: the next process
    /// starts only once this one exits, so the drain is short.
    Stored,
}

/// The longest drain after the connections went into the store: close
/// frames go out at once, and the replies get this long.
const STORED_DRAIN_MS: u64 = 1_000;

/// How often the status line sent to the service manager is refreshed.
const STATUS_INTERVAL_MS: u64 = 5_000;

/// The loop's life as a service.
pub(super) struct Lifecycle {
    /// The listening sockets came from the service manager: `[[listener]]`
    /// is not used.
    pub inherited: bool,
    /// The file a reload (SIGHUP) reads; `None` on the built-in config.
    config_path: Option<PathBuf>,
    /// SIGTERM, SIGINT and SIGHUP, once [`Server::handle_signals`] was called.
    signals: Option<Signals>,
    notifier: Notifier,
    /// The drain after the first SIGTERM/SIGINT.
    pub shutdown: Option<Shutdown>,
    /// How SIGUSR2 starts the new process of an upgrade.
    pub relaunch: Option<Relaunch>,
    /// The upgrade waiting for the new process to say hello.
    pub upgrade: Option<Upgrade>,
    /// The listening sockets belong to a socket unit of the service manager
    /// (which keeps them across restarts), not to its file descriptor store.
    pub socket_activated: bool,
}

impl Lifecycle {
    pub(super) fn new(inherited: bool) -> Lifecycle {
        Lifecycle {
            inherited,
            config_path: None,
            signals: None,
            notifier: Notifier::disabled(),
            shutdown: None,
            relaunch: None,
            upgrade: None,
            socket_activated: inherited,
        }
    }
}

/// What the loop does after handling signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterSignals {
    Continue,
    ExitNow,
}

/// A graceful shutdown in progress: every open WebSocket gets a close frame
/// (all at once, or spread over `shutdown_spread`), then the loop waits for
/// the connections to finish, at most until `deadline`.
pub(super) struct Shutdown {
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
    /// A drain starting at `now` that closes the connections of `queue`
    /// (in that order) evenly over `spread` (at most `timeout`) and gives up
    /// at `now + timeout`.
    pub(super) fn new(
        now: u64,
        timeout: u64,
        spread: u64,
        (code, reason): (CloseCode, &'static str),
        queue: Vec<Token>,
    ) -> Shutdown {
        Shutdown {
            started: now,
            deadline: now.saturating_add(timeout),
            spread: spread.min(timeout),
            code,
            reason,
            queue,
            sent: 0,
            timer: None,
        }
    }

    /// When the close frame of `queue[index]` is due: evenly over the spread.
    fn due(&self, index: usize) -> u64 {
        let count = self.queue.len().max(1) as u128;
        let offset = u128::from(self.spread) * index as u128 / count;
        self.started
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// The next connection whose close frame is due at `now`, if any.
    pub(super) fn next_due(&mut self, now: u64) -> Option<Token> {
        let token = *self.queue.get(self.sent)?;
        if self.due(self.sent) > now {
            return None;
        }
        self.sent += 1;
        Some(token)
    }

    /// When the loop must wake for this drain next: the next close, or the
    /// deadline once every close is out.
    pub(super) fn next_wake(&mut self) -> u64 {
        if self.sent < self.queue.len() {
            self.due(self.sent).min(self.deadline)
        } else {
            // Every close is out: the queue is no longer needed.
            self.queue = Vec::new();
            self.sent = 0;
            self.deadline
        }
    }

    /// The drain has waited as long as it may.
    pub(super) fn timed_out(&self, now: u64) -> bool {
        now >= self.deadline
    }
}

impl Server {
    /// Sets the file that SIGHUP reloads the config from; `None` (the
    /// default) for a server on the built-in config, which has nothing to
    /// reload.
    pub fn set_config_path(&mut self, path: Option<PathBuf>) {
        self.life.config_path = path;
    }

    /// Sends the service manager notifications through `notifier`: READY=1
    /// when the loop starts, a periodic STATUS=, WATCHDOG=1 when asked for,
    /// RELOADING=1 and STOPPING=1.
    pub fn set_notifier(&mut self, notifier: Notifier) {
        self.life.notifier = notifier;
    }

    /// Takes over SIGTERM, SIGINT (graceful shutdown; a second one exits at
    /// once), SIGHUP (reload the config file) and SIGUSR2 (hand everything
    /// over to a new process) for this process, handled inside the loop.
    /// For the daemon's one server only: signal handlers are process-wide.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        let mut signals = Signals::new([
            Signal::TERM.as_raw(),
            Signal::INT.as_raw(),
            Signal::HUP.as_raw(),
            Signal::USR2.as_raw(),
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        self.life.signals = Some(signals);
        Ok(())
    }

    /// Just before the loop starts: tells the service manager the server is
    /// ready and schedules the watchdog and status updates.
    pub(super) fn start_service(&mut self, now: u64) {
        let status = self.status_line();
        self.life.notifier.ready(&status);
        if let Some(period) = self.life.notifier.watchdog_period() {
            info!(
                "service watchdog enabled: pinging every {}",
                humantime::format_duration(period)
            );
            self.timers.insert(now, WATCHDOG_TIMER);
        }
        if self.life.notifier.is_enabled() {
            self.timers.insert(now + STATUS_INTERVAL_MS, STATUS_TIMER);
        }
    }

    /// The status line shown by `systemctl status`.
    fn status_line(&self) -> String {
        let open = self.metrics.open(Transport::WebSocket);
        let line = format!(
            "{} connections, {open} open websockets, {} channels",
            self.metrics.connections, self.metrics.channels
        );
        // A cluster node whose Redis link is down says so in `systemctl status`.
        let line = match self.cluster.as_ref().and_then(|c| c.bus.health()) {
            Some(why) => format!("{line}; degraded: {why}"),
            None => line,
        };
        if self.life.shutdown.is_some() {
            format!("shutting down: {line} left")
        } else {
            line
        }
    }

    /// Handles the loop's own wheel entries; false for a connection token.
    pub(super) fn on_loop_timer(&mut self, token: Token, now: u64) -> bool {
        match token {
            WATCHDOG_TIMER => {
                self.life.notifier.watchdog();
                if let Some(period) = self.life.notifier.watchdog_period() {
                    let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                    self.timers
                        .insert(now.saturating_add(period), WATCHDOG_TIMER);
                }
            }
            STATUS_TIMER => {
                let status = self.status_line();
                self.life.notifier.status(&status);
                self.timers
                    .insert(now.saturating_add(STATUS_INTERVAL_MS), STATUS_TIMER);
            }
            BUS_TIMER => self.on_bus_timer(now),
            HANDOVER_TIMER => self.on_upgrade_timer(),
            SHUTDOWN_TIMER => {
                if let Some(shutdown) = &mut self.life.shutdown {
                    shutdown.timer = None;
                }
                self.shutdown_step(now);
            }
            _ => return false,
        }
        true
    }

    /// Acts on the signals that arrived since the last turn.
    pub(super) fn on_signals(&mut self, now: u64) -> AfterSignals {
        let received: Vec<i32> = match &mut self.life.signals {
            Some(signals) => signals.pending().collect(),
            None => return AfterSignals::Continue,
        };
        for signal in received {
            let name = signal_name(signal);
            if signal == Signal::HUP.as_raw() {
                self.reload();
            } else if signal == Signal::USR2.as_raw() {
                self.begin_upgrade(now);
            } else if self.life.shutdown.is_some() {
                warn!(
                    "{name} again: exiting now with {} connections still open",
                    self.conns.len()
                );
                return AfterSignals::ExitNow;
            } else {
                if self.life.upgrade.is_some() {
                    self.upgrade_failed_for_shutdown();
                }
                // SIGTERM under a service manager with a file descriptor
                // store: what can be carried over goes there for the next
                // process. SIGINT always shuts down the ordinary way.
                let drain = if signal == Signal::TERM.as_raw() && self.store_for_restart(now) {
                    Drain::Stored
                } else {
                    Drain::Ordinary
                };
                self.begin_shutdown(name, drain, now);
            }
        }
        AfterSignals::Continue
    }

    /// Stops accepting, turns away HTTP clients and starts closing every
    /// open WebSocket: with the configured code, or after a handover with
    /// 1012 ("service restart") whatever is configured (see [`Drain`]).
    pub(super) fn begin_shutdown(&mut self, why: &str, drain: Drain, now: u64) {
        let restart = drain != Drain::Ordinary;
        let (code, reason) = if restart || self.config.shutdown_close_code == CLOSE_SERVICE_RESTART
        {
            (CloseCode::SERVICE_RESTART, SERVICE_RESTART_REASON)
        } else {
            (CloseCode::GOING_AWAY, "going away")
        };
        let (timeout, spread) = match drain {
            Drain::Ordinary | Drain::HandedOver => (
                millis(self.config.shutdown_timeout),
                millis(self.config.shutdown_spread),
            ),
            Drain::Stored => (millis(self.config.shutdown_timeout).min(STORED_DRAIN_MS), 0),
        };
        // Closing the listeners refuses new connections at once (with socket
        // activation the service manager keeps its copy and queues them for
        // the next start).
        self.listeners.close_all(self.poll.registry());
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
        self.life.shutdown = Some(Shutdown::new(now, timeout, spread, (code, reason), queue));
        let status = self.status_line();
        self.life.notifier.stopping(&status);
        self.shutdown_step(now);
    }

    /// Sends the close frames that are due and schedules the next wake-up:
    /// the next close, or the deadline.
    fn shutdown_step(&mut self, now: u64) {
        let Some(mut shutdown) = self.life.shutdown.take() else {
            return;
        };
        while let Some(token) = shutdown.next_due(now) {
            let Some(key) = self.live_key(token) else {
                continue;
            };
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.shut_down(shutdown.code, shutdown.reason, now);
                self.drive(key, false, false, now);
            }
        }
        let next = shutdown.next_wake();
        if let Some(timer) = shutdown.timer.take() {
            self.timers.remove(timer);
        }
        // A deadline already passed needs no wake-up: the loop ends this turn.
        if next > now {
            shutdown.timer = Some(self.timers.insert(next, SHUTDOWN_TIMER));
        }
        self.life.shutdown = Some(shutdown);
    }

    /// True once a shutdown has nothing left to wait for, or waited long enough.
    pub(super) fn shutdown_finished(&self, now: u64) -> bool {
        let Some(shutdown) = &self.life.shutdown else {
            return false;
        };
        if self.conns.is_empty() {
            info!("every connection is closed; exiting");
            return true;
        }
        if shutdown.timed_out(now) {
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
        if self.life.shutdown.is_some() {
            info!("SIGHUP ignored: shutting down");
            return;
        }
        let Some(path) = self.life.config_path.clone() else {
            warn!("SIGHUP: running on the built-in config, so there is no file to reload");
            return;
        };
        info!("SIGHUP: reloading {}", path.display());
        self.life.notifier.reloading();
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
        self.life.notifier.ready(&status);
    }

    /// Swaps in a reloaded config: everything but the listening sockets
    /// applies at once, to open connections too (certificate paths
    /// included); routes keep their indexes.
    pub(super) fn apply_config(&mut self, mut config: Config) {
        // Certificate settings may change; the sockets themselves may not.
        let same_sockets = config.listeners.len() == self.config.listeners.len()
            && config
                .listeners
                .iter()
                .zip(&self.config.listeners)
                .all(|(a, b)| a.same_socket(b));
        // The certificate paths come from the file as it is, even where the
        // rest of `[[listener]]` cannot apply: a listening socket (bound or
        // passed) takes those of the `tls = true` entry with its address.
        let file_listeners = config.listeners.clone();
        if !same_sockets {
            let show = |c: &Config| {
                c.listeners
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if self.life.inherited {
                warn!(
                    "reload: [[listener]] changed ({}), but the listening sockets come from the service manager and the setting is not used",
                    show(&config)
                );
            } else {
                warn!(
                    "reload: listener addresses cannot change while running, nor whether they use tls or reuse_port (in use: {}; in the file: {}); restart wshub to apply them",
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
        for listener in &mut self.listeners.list {
            listener.take_tls_files(&file_listeners);
        }
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
        let now = self.now();
        self.reapply_history(now);
        self.reload_cluster(old.cluster.as_ref(), now);
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

    /// Reads the certificate and key of every TLS listener again. New
    /// connections get the new pair; a pair that cannot be used is reported
    /// and the current one stays.
    fn reload_certificates(&mut self) {
        for listener in &mut self.listeners.list {
            listener.reload_certificate();
        }
    }
}

/// A configured duration in milliseconds on the loop's clock.
pub(super) fn millis(d: Duration) -> u64 {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{ListenerConfig, ListenerTls};
    use crate::server::tls::tests::ec_identity;

    fn tls_entry(
        address: std::net::SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> ListenerConfig {
        ListenerConfig {
            address,
            tls: Some(ListenerTls {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                alpn: true,
                ktls: false,
            }),
            reuse_port: false,
        }
    }

    /// Under socket activation `[[listener]]` changes are not applied, yet a
    /// passed socket matched to a TLS entry by address must take that
    /// entry's new certificate paths from the reloaded file.
    #[test]
    fn a_passed_tls_socket_takes_the_reloaded_certificate_paths() {
        let first = ec_identity();
        let second = ec_identity();
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let mut config = Config {
            listeners: vec![tls_entry(addr, &first.cert, &first.key)],
            ..Config::default()
        };
        let mut server = Server::with_listeners(config.clone(), vec![socket]).unwrap();
        let before = Arc::clone(server.listeners.list[0].tls_config().unwrap());

        // The file moves the certificate and also adds a listener, which
        // cannot apply under socket activation.
        config.listeners = vec![
            ListenerConfig::plain("127.0.0.1:1".parse().unwrap()),
            tls_entry(addr, &second.cert, &second.key),
        ];
        server.apply_config(config);
        server.reload_certificates();

        let files = server.listeners.list[0].tls_files().unwrap();
        assert_eq!(files.cert, second.cert);
        assert_eq!(files.key, second.key);
        let after = server.listeners.list[0].tls_config().unwrap();
        assert!(!Arc::ptr_eq(&before, after), "the new pair was loaded");
    }

    const CLOSE: (CloseCode, &str) = (CloseCode::GOING_AWAY, "going away");

    /// Runs a drain on the virtual clock, waking exactly when it asks to;
    /// returns (token, time) of each close and the final wake-up.
    fn run(mut shutdown: Shutdown) -> (Vec<(usize, u64)>, u64) {
        let mut sent = Vec::new();
        let mut now = shutdown.started;
        loop {
            while let Some(token) = shutdown.next_due(now) {
                sent.push((token.0, now));
            }
            let wake = shutdown.next_wake();
            if shutdown.queue.is_empty() {
                return (sent, wake);
            }
            assert!(wake > now, "no progress at {now}");
            now = wake;
        }
    }

    fn tokens(n: usize) -> Vec<Token> {
        (0..n).map(Token).collect()
    }

    #[test]
    fn closes_are_spread_evenly_over_the_spread() {
        let (sent, end) = run(Shutdown::new(0, 5_000, 1_000, CLOSE, tokens(10)));
        let expected: Vec<(usize, u64)> = (0..10).map(|i| (i, i as u64 * 100)).collect();
        assert_eq!(sent, expected);
        assert_eq!(end, 5_000, "then the loop waits for the deadline");
    }

    #[test]
    fn without_a_spread_every_close_goes_at_once() {
        let (sent, end) = run(Shutdown::new(0, 2_000, 0, CLOSE, tokens(5)));
        assert_eq!(sent, (0..5).map(|i| (i, 0)).collect::<Vec<_>>());
        assert_eq!(end, 2_000);
    }

    #[test]
    fn a_spread_longer_than_the_timeout_is_cut_to_it() {
        let (sent, _) = run(Shutdown::new(0, 400, 10_000, CLOSE, tokens(4)));
        assert_eq!(sent, [(0, 0), (1, 100), (2, 200), (3, 300)]);
    }

    #[test]
    fn the_drain_times_out_at_its_deadline() {
        let shutdown = Shutdown::new(1_000, 3_000, 0, CLOSE, Vec::new());
        assert!(!shutdown.timed_out(3_999));
        assert!(shutdown.timed_out(4_000));
    }
}
