//! The daemon's configuration: one TOML file, every field optional.
//!
//! Owns: the schema, its defaults (the embedded default config), and checks
//! that a loaded config makes sense before the server sees it.
//! Must never: touch sockets, or accept an unknown key silently.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The configuration `wshub` runs with when given no file.
pub const DEFAULT_CONFIG_TOML: &str = "";

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub max_connections: usize,
    pub max_message_size: u64,
    pub max_frame_size: u64,
    pub max_backlog_bytes: usize,
    pub handshake_timeout: Duration,
    /// Zero disables keep-alive pings.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    /// Zero disables the idle timeout.
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    pub path: String,
    pub kind: RouteKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Echo,
}

/// A config that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        todo!("{text}")
    }
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        todo!("{path:?}")
    }
}

impl Default for Config {
    /// The embedded default config.
    fn default() -> Self {
        todo!()
    }
}
