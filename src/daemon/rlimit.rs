//! The process's open-file limit (`RLIMIT_NOFILE`): every connection is one
//! file descriptor, so the soft limit is raised to the hard limit at start.
//!
//! Owns: reading and raising that one limit, through `rustix`'s safe API.
//! Must never: lower a limit, touch the hard limit, or stop the daemon when
//! the limit cannot be raised (it runs with what it has and says so).

use std::fmt;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-file limit before and after raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now in force.
    pub soft: Option<u64>,
    /// The hard limit, the ceiling for the soft one.
    pub hard: Option<u64>,
}

impl NofileLimit {
    /// Whether the soft limit leaves room for `n` descriptors.
    pub fn allows(&self, n: u64) -> bool {
        self.soft.is_none_or(|soft| soft >= n)
    }
}

impl fmt::Display for NofileLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        if self.before == self.soft {
            write!(
                f,
                "open file limit {} (hard limit {})",
                show(self.soft),
                show(self.hard)
            )
        } else {
            write!(
                f,
                "open file limit raised from {} to {} (the hard limit)",
                show(self.before),
                show(self.soft)
            )
        }
    }
}

/// Raises the soft open-file limit to the hard limit. On failure the error
/// says what the limit still is.
pub fn raise_nofile() -> Result<NofileLimit, String> {
    let current = getrlimit(Resource::Nofile);
    let mut limit = NofileLimit {
        before: current.current,
        soft: current.current,
        hard: current.maximum,
    };
    let raise = match (current.current, current.maximum) {
        (_, None) => current.current.is_some(),
        (Some(soft), Some(hard)) => soft < hard,
        (None, Some(_)) => false,
    };
    if !raise {
        return Ok(limit);
    }
    let wanted = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    setrlimit(Resource::Nofile, wanted).map_err(|e| format!("cannot raise the {limit}: {e}"))?;
    limit.soft = getrlimit(Resource::Nofile).current;
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_limit() {
        let same = NofileLimit {
            before: Some(1024),
            soft: Some(1024),
            hard: Some(1024),
        };
        assert_eq!(same.to_string(), "open file limit 1024 (hard limit 1024)");
        let raised = NofileLimit {
            soft: Some(524_288),
            hard: Some(524_288),
            ..same
        };
        assert_eq!(
            raised.to_string(),
            "open file limit raised from 1024 to 524288 (the hard limit)"
        );
        assert!(raised.allows(100_000) && !same.allows(100_000));
        let unlimited = NofileLimit {
            before: None,
            soft: None,
            hard: None,
        };
        assert!(unlimited.allows(u64::MAX));
    }

    #[test]
    fn raising_leaves_soft_at_or_below_hard() {
        // Raising is idempotent and never exceeds the hard limit.
        let limit = raise_nofile().unwrap();
        if let (Some(soft), Some(hard)) = (limit.soft, limit.hard) {
            assert!(soft <= hard);
        }
        assert_eq!(raise_nofile().unwrap().soft, limit.soft);
    }
}
