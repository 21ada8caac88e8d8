//! Notifications to the service manager (systemd's `sd_notify` protocol),
//! sent through the `sd-notify` crate: `READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `STATUS=...` and `WATCHDOG=1`.
//!
//! Owns: whether notifications are wanted (`NOTIFY_SOCKET`), the watchdog
//! interval the manager asked for (`WATCHDOG_USEC`, `WATCHDOG_PID`), and
//! reporting a notification that could not be sent.
//! Must never: decide when to notify (the event loop does), fail or stop the
//! server because a notification could not be sent, or send anything when
//! the process was not started with `NOTIFY_SOCKET`.

use std::time::Duration;

use log::{debug, warn};
use sd_notify::NotifyState;

/// Sends notifications when the process runs under a service manager.
#[derive(Debug, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// `WATCHDOG_USEC`, when it applies to this process.
    watchdog: Option<Duration>,
    /// A send already failed and was reported as a warning; later failures
    /// only go to the debug log, so a vanished socket cannot flood the log.
    failed: bool,
}

impl Notifier {
    /// A notifier that never sends anything (the default for servers run in
    /// process, e.g. by tests).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Reads `NOTIFY_SOCKET` and the watchdog settings from the environment.
    /// The watchdog only counts when `WATCHDOG_PID` is unset or names this
    /// process, so a child that inherited the variables does not ping.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Notifier {
            enabled,
            watchdog: if enabled { watchdog } else { None },
            failed: false,
        }
    }

    /// True when notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often to send `WATCHDOG=1`: half the manager's interval, as
    /// `sd_watchdog_enabled(3)` recommends. `None` when no watchdog is set.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|d| (d / 2).max(Duration::from_millis(1)))
    }

    /// The listeners are up and the loop is about to start, or a reload is
    /// finished.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload starts; [`Notifier::ready`] ends it.
    pub fn reloading(&mut self) {
        let mut states = vec![NotifyState::Reloading];
        // The manager uses the timestamp to tell this reload apart from a
        // later one; without a clock reading the plain form still works.
        if let Ok(stamp) = NotifyState::monotonic_usec_now() {
            states.push(stamp);
        }
        states.push(NotifyState::Status("reloading the configuration"));
        self.send(&states);
    }

    /// Shutdown has begun.
    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A free-form status line, shown by `systemctl status`.
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The event loop is alive.
    pub fn watchdog(&mut self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if self.failed {
                debug!("cannot notify the service manager: {e}");
            } else {
                warn!("cannot notify the service manager through NOTIFY_SOCKET: {e}");
                self.failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let mut n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_period(), None);
        n.ready("x");
        n.watchdog();
        assert!(!n.failed);
    }

    #[test]
    fn watchdog_period_is_half_the_interval() {
        let n = Notifier {
            enabled: true,
            watchdog: Some(Duration::from_millis(200)),
            failed: false,
        };
        assert_eq!(n.watchdog_period(), Some(Duration::from_millis(100)));
        let tiny = Notifier {
            watchdog: Some(Duration::from_micros(1)),
            ..n
        };
        assert_eq!(tiny.watchdog_period(), Some(Duration::from_millis(1)));
    }
}
