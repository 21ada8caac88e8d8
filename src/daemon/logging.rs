//! The daemon's logger: `env_logger` on stderr, in a journal-friendly form
//! when stderr is connected to systemd's journal.
//!
//! Under the journal (`JOURNAL_STREAM` names stderr's device and inode),
//! lines carry no timestamp (journald adds its own) and start with a syslog
//! priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so
//! `journalctl -p warning` selects by level. Elsewhere the usual
//! `env_logger` format is kept.
//!
//! Owns: the log format, the filter taken from `RUST_LOG`, and the overall
//! level, which the config's `log_level` may change at start and on reload.
//! Must never: panic or fail the daemon over logging, or be initialised twice.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::{Level, LevelFilter};

/// The overall level `RUST_LOG` chose (or the default, info), as a
/// `LevelFilter` index, restored when `log_level` is removed on reload.
static BASE_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

/// Installs the logger. Returns whether the journal format is in use.
///
/// `RUST_LOG`, when set, filters per module as usual. When it is not set,
/// every module passes the filter and only the overall level (default
/// `info`) applies, so that `log_level` in the config can raise it as well
/// as lower it.
pub fn init() -> bool {
    let journal = stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    let base = match std::env::var("RUST_LOG") {
        Ok(filters) if !filters.trim().is_empty() => {
            builder.parse_filters(&filters);
            None
        }
        _ => {
            builder.filter_level(LevelFilter::Trace);
            Some(LevelFilter::Info)
        }
    };
    if journal {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                // Every line of a multi-line message is its own journal
                // entry, so each gets the prefix.
                let priority = priority(record.level());
                let message = record.args().to_string();
                let mut lines = message.lines().peekable();
                if lines.peek().is_none() {
                    return writeln!(buf, "<{priority}>");
                }
                for line in lines {
                    writeln!(buf, "<{priority}>{line}")?;
                }
                Ok(())
            });
    }
    let logger = builder.build();
    let base = base.unwrap_or_else(|| logger.filter());
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        BASE_LEVEL.store(base as usize, Ordering::Relaxed);
        log::set_max_level(base);
    }
    journal
}

/// Applies the config's `log_level`; `None` goes back to what `RUST_LOG`
/// (or the default) chose at start.
pub fn set_level(level: Option<LevelFilter>) {
    log::set_max_level(level.unwrap_or_else(base_level));
}

fn base_level() -> LevelFilter {
    let index = BASE_LEVEL.load(Ordering::Relaxed);
    [
        LevelFilter::Off,
        LevelFilter::Error,
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
        LevelFilter::Trace,
    ]
    .get(index)
    .copied()
    .unwrap_or(LevelFilter::Info)
}

/// The syslog priority of a log level (`sd-daemon(3)` prefixes).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// True when `JOURNAL_STREAM` (`DEVICE:INODE`) matches stderr: the variable
/// alone is inherited by children whose stderr went elsewhere.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&value, stat.st_dev, stat.st_ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
        assert_eq!(priority(Level::Trace), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_matches("64769:123456", 64769, 123_456));
        assert!(!journal_stream_matches("64769:123456", 64769, 1));
        assert!(!journal_stream_matches("64769", 64769, 123_456));
        assert!(!journal_stream_matches("x:y", 0, 0));
    }
}
