//! The one error type of the load generator and the global run deadline.
//!
//! Every failure ends the run with a message and an exit status: 2 for
//! usage problems (bad arguments, a non-loopback target, too few file
//! descriptors), 1 for anything that goes wrong while running, including a
//! failed correctness check and the deadline running out.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

/// A reason to stop, with the exit status it maps to.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    /// A problem with how loadgen was invoked (exit status 2).
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: 2,
            message: message.into(),
        }
    }

    /// A failure while running, or a failed check (exit status 1).
    pub fn run(message: impl Into<String>) -> Fail {
        Fail {
            code: 1,
            message: message.into(),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, Fail>;

/// Adds what was being done to an I/O error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Fail::run(format!("{}: {e}", what())))
    }
}

/// The time by which the whole run must be over. Every loop checks it, so
/// a server that stops answering ends the run instead of hanging it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// Fails once the deadline has passed; `doing` names the phase for the
    /// message.
    pub fn check(&self, now: Instant, doing: &str) -> Result<()> {
        if now >= self.at {
            Err(Fail::run(format!(
                "timed out after {:.1} s while {doing} (raise --timeout if the run is \
                 legitimately longer)",
                self.limit.as_secs_f64()
            )))
        } else {
            Ok(())
        }
    }

    /// Time left, never more than `cap`; used as the poll timeout so loops
    /// wake up to check the deadline.
    pub fn poll_timeout(&self, now: Instant, cap: Duration) -> Duration {
        self.at.saturating_duration_since(now).min(cap)
    }
}
