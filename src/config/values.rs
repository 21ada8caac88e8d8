//! The config's small value types and how the file's strings become them.
//!
//! Owns: the lowercase enums (their spelling in the file, logs and error
//! messages), [`Secret`], and the parsers for durations, socket addresses and
//! log levels with messages that show the expected form.
//! Must never: know which setting a value belongs to, or let a [`Secret`]'s
//! value reach `Debug` output.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use log::LevelFilter;
use serde::{Deserialize, Deserializer};

/// Defines one of the config's lowercase enums from its variants and their
/// names in the file, with `as_str` and a matching `Display`, so the
/// spelling in error messages and logs can never drift from what the file
/// accepts.
macro_rules! config_enum {
    ($(#[$meta:meta])* pub enum $ty:ident {
        $($(#[$vmeta:meta])* $variant:ident => $name:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
        pub enum $ty {
            $($(#[$vmeta])* #[serde(rename = $name)] $variant,)+
        }

        impl $ty {
            /// The name used for this value in the config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum! {
    /// What a route does with messages.
    pub enum RouteKind {
        /// Sends every message back to its sender.
        Echo => "echo",
        /// Fans messages published to a channel out to the channel's
        /// subscribers. The route path is a prefix naming no channel itself.
        Broadcast => "broadcast",
    }
}

config_enum! {
    /// What a broadcast delivery does to a connection whose outbound queue
    /// would grow past `max_backlog_bytes`.
    #[derive(Default)]
    pub enum OnBacklog {
        /// Close the slow connection, so every client that stays connected
        /// has seen every message.
        #[default]
        Close => "close",
        /// Skip the message for that connection: it misses messages until it
        /// has caught up, but stays connected.
        Drop => "drop",
    }
}

config_enum! {
    /// What a broadcast route does with messages its subscribers send.
    #[derive(Default)]
    pub enum ClientMessages {
        /// Discard them (pings and closes are still answered).
        #[default]
        Ignore => "ignore",
        /// Relay them to the other subscribers of the sender's channels.
        Broadcast => "broadcast",
        /// Close the connection with 1003 (unsupported data).
        Reject => "reject",
    }
}

config_enum! {
    /// Whether a route accepts permessage-deflate (RFC 7692).
    #[derive(Default)]
    pub enum Compression {
        /// Decline every offer: messages go uncompressed.
        #[default]
        Off => "off",
        /// Accept the client's first acceptable offer, always with no context
        /// takeover in both directions.
        On => "on",
    }
}

/// A setting whose value must never be shown: `Debug` prints `<redacted>`,
/// and there is no `Display`. Dereferences to the text for the one place
/// that compares it (in constant time, with `subtle`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses `IP:port` with a message that says what is expected; serde's own
/// wording ("invalid socket address syntax") leaves people guessing whether
/// host names work (they do not: nothing is resolved at startup).
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {text:?}: expected an IP address and port such as \
             \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"
        ))
    })
}

/// The names `log_level` accepts, most to least verbose after "off".
pub(super) const LOG_LEVELS: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

/// Parses a log level name; lowercase only, like every other value in the
/// file.
pub(super) fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LevelFilter>, D::Error> {
    let text = String::deserialize(d)?;
    LOG_LEVELS
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, level)| Some(*level))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid log level {text:?}: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\""
            ))
        })
}

/// The config file's name for a level (the inverse of [`log_level`]).
pub(super) fn log_level_name(level: LevelFilter) -> &'static str {
    LOG_LEVELS
        .iter()
        .find(|(_, l)| *l == level)
        .map_or("?", |(name, _)| *name)
}

/// Parses a duration ("30s", "500ms", "2m") with `humantime`, through a
/// visitor of our own so both a wrong type and a bad unit produce a message
/// that shows the expected form.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text).map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?}: {e}; write it like \"30s\" or \"500ms\""
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
}

/// [`duration`] for a setting that may be left out (`None`); use with
/// `#[serde(default)]`.
pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(RouteKind::Echo.to_string(), "echo");
        assert_eq!(RouteKind::Broadcast.to_string(), "broadcast");
        for (name, level) in LOG_LEVELS {
            assert_eq!(log_level_name(level), name);
        }
    }

    #[test]
    fn secret_is_redacted_but_readable() {
        let secret = Secret::from("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(&*secret, "hunter2");
    }
}
