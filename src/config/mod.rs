//! The daemon's configuration: one TOML file, every setting optional.
//!
//! Owns: the schema, each setting's default, parsing, the checks a config
//! must pass before the server sees it, and the reload diff.
//! Must never: touch sockets, accept an unknown key silently, or show the
//! publish token's value.
//!
//! [`Config`] is the file's schema itself: serde fills every key the file
//! leaves out from `Config::default()`, the one place defaults are set. A
//! setting is thus named in its field, its default, and its rule (if it has
//! one). The submodules:
//! - `values`: the value types (lowercase enums, [`Secret`]) and parsers;
//! - `listener`, `route`: the tables, whose file shape differs from the
//!   checked one, and their rules; the request-path rules;
//! - `auth`: the `[auth.<name>]` key sets for signed tokens and their rules;
//! - `validate`: the rules of the top-level settings;
//! - `reload`: what changed between two configs, for the log.

mod auth;
mod cluster;
mod listener;
mod reload;
mod route;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use log::LevelFilter;
use serde::Deserialize;

use crate::protocol::close::CloseCode;

pub use crate::auth::keys::{Algorithm, KeySet, KeySource};
pub(crate) use auth::RELAY_CHANNELS;
pub use auth::{AuthConfig, DEFAULT_CHANNELS_CLAIM, DEFAULT_LEEWAY, DEFAULT_PUBLISH_CLAIM};
pub use cluster::{ClusterConfig, RedisUrl};
pub use listener::{ListenerConfig, ListenerTls};
pub use route::{HEALTH_CHECK_PATH, HistoryPolicy, METRICS_PATH, PAGE_PATH, RouteConfig};
pub use validate::check_publish_token;
pub use values::{ClientMessages, Compression, OnBacklog, RouteKind, Secret};

/// The configuration `wshub` runs with when given no file: an echo route
/// and a broadcast hub on the default loopback listener.
///
/// Only the routes are spelled out; the listener and every other setting
/// take their built-in defaults. `config/wshub.toml` documents all settings
/// and equals this config (a test checks).
pub const DEFAULT_CONFIG_TOML: &str = r#"# Built-in configuration: the default listener (127.0.0.1:8080) and
# settings, an echo route, a broadcast hub, and the watch page at
# http://127.0.0.1:8080/ to see it work.
page = true

[[route]]
path = "/echo"
kind = "echo"

# Subscribe with `websocat ws://127.0.0.1:8080/live/news`; publish from this
# host with `curl --data hi http://127.0.0.1:8080/publish/news` (no token is
# set, so only loopback clients may publish).
[[route]]
path = "/live"
kind = "broadcast"
"#;

/// Path prefix of the HTTP publish API when `publish_prefix` is not set.
pub const DEFAULT_PUBLISH_PREFIX: &str = "/publish";

/// Close code 1001 ("going away"): the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = CloseCode::GOING_AWAY.0;
/// Close code 1012 ("service restart"): the server is restarting; clients
/// may reconnect shortly.
pub const CLOSE_SERVICE_RESTART: u16 = CloseCode::SERVICE_RESTART.0;

/// The whole configuration, field for key as in the file (`[[listener]]`
/// and `[[route]]` fill `listeners` and `routes`). `Debug` never shows the
/// token: it is a [`Secret`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept connections on; never empty once validated.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Request paths clients may upgrade on; never empty once validated.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Open connections (handshaking or established) across all listeners.
    pub max_connections: usize,
    /// Largest assembled message in bytes (inclusive).
    pub max_message_size: u64,
    /// Largest single frame payload in bytes (inclusive); never above
    /// `max_message_size`.
    pub max_frame_size: u64,
    /// Outbound bytes queued per connection before it counts as a slow
    /// consumer. On echo routes the server then stops reading from that
    /// client until its queue drains; for broadcast deliveries `on_backlog`
    /// decides.
    pub max_backlog_bytes: usize,
    /// Time from accept until the opening handshake must be complete.
    #[serde(deserialize_with = "values::duration")]
    pub handshake_timeout: Duration,
    /// Zero disables keep-alive pings.
    #[serde(deserialize_with = "values::duration")]
    pub ping_interval: Duration,
    /// How long to wait for a pong after a ping before dropping the peer.
    #[serde(deserialize_with = "values::duration")]
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours.
    #[serde(deserialize_with = "values::duration")]
    pub close_timeout: Duration,
    /// Zero disables the idle timeout.
    #[serde(deserialize_with = "values::duration")]
    pub idle_timeout: Duration,
    /// `POST <publish_prefix>/<channel>` publishes the request body to a
    /// channel. Starts with `/`, never ends with one, and overlaps no route
    /// and neither the health check nor the metrics path.
    pub publish_prefix: String,
    /// When set, publishing and `/metrics` require
    /// `Authorization: Bearer <token>`; when unset, only loopback peers may
    /// use them. Passes [`check_publish_token`] once validated.
    pub publish_token: Option<Secret>,
    /// Names an `[auth.<name>]` key set: publishing then also accepts a
    /// signed token (JWT) as the bearer token, for the channels its
    /// channels claim grants (`publish_token` keeps working beside it).
    pub publish_auth: Option<String>,
    /// `[auth.<name>]`: key sets that verify signed tokens, used by routes
    /// (`auth = "<name>"`) and `publish_auth`.
    pub auth: BTreeMap<String, AuthConfig>,
    /// Channels one broadcast connection may subscribe to at once; above 0.
    pub max_channels_per_connection: usize,
    /// What a broadcast delivery does when it would push a connection's
    /// outbound queue past `max_backlog_bytes`.
    pub on_backlog: OnBacklog,
    /// On SIGTERM/SIGINT, how long to wait for clients to answer the close
    /// and for queued bytes to drain before exiting anyway; above 0.
    #[serde(deserialize_with = "values::duration")]
    pub shutdown_timeout: Duration,
    /// On shutdown, spread the close frames evenly over this window instead
    /// of sending them all at once; at most `shutdown_timeout`.
    #[serde(deserialize_with = "values::duration")]
    pub shutdown_spread: Duration,
    /// The close code sent on shutdown: [`CLOSE_GOING_AWAY`] or
    /// [`CLOSE_SERVICE_RESTART`].
    pub shutdown_close_code: u16,
    /// On a planned restart (SIGUSR2, or SIGTERM when the service manager
    /// offers a file descriptor store), hand the listening sockets and every
    /// connection that can be carried over to the new process instead of
    /// closing them.
    pub handover: bool,
    /// The most verbose level logged, applied at start and on reload; `None`
    /// leaves it to `RUST_LOG` (default `info`).
    #[serde(deserialize_with = "values::log_level")]
    pub log_level: Option<LevelFilter>,
    /// Browser origins (`scheme://host[:port]`) allowed to open WebSocket
    /// connections; empty allows every origin. The defence against
    /// cross-site WebSocket hijacking: a page on another site can make a
    /// user's browser connect with the user's cookies, but cannot forge
    /// `Origin`. Requests without `Origin` (not from a browser) pass.
    pub allowed_origins: Vec<String>,
    /// Connections one client IP address may hold at once; 0 disables the
    /// limit. Beyond it a new connection gets `429 Too Many Requests`.
    pub max_connections_per_ip: usize,
    /// The most bytes all channels' history may hold together; the oldest
    /// messages are evicted first beyond it. Above 0.
    pub history_max_bytes: usize,
    /// `[cluster]`: run as one node of several sharing channels over Redis;
    /// `None` (no table) is a single node.
    pub cluster: Option<ClusterConfig>,
    /// Serve the watch page (one self-contained HTML file compiled into the
    /// binary) at `/`: subscribe to a channel over WebSocket or SSE, see
    /// messages with their positions, publish from loopback. No route may
    /// then be at `/`.
    pub page: bool,
}

impl Default for Config {
    /// Every setting at its built-in default: what a key left out of a file
    /// gets, and what an empty file gives. The only place these values are
    /// set (a route's own defaults are in [`RouteConfig::new`]).
    fn default() -> Config {
        Config {
            listeners: vec![ListenerConfig::plain(listener::DEFAULT_ADDRESS)],
            routes: vec![RouteConfig::new(route::DEFAULT_ROUTE_PATH, RouteKind::Echo)],
            max_connections: 100_000,
            max_message_size: 16 * 1024 * 1024,
            max_frame_size: 16 * 1024 * 1024,
            max_backlog_bytes: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            publish_prefix: DEFAULT_PUBLISH_PREFIX.to_owned(),
            publish_token: None,
            publish_auth: None,
            auth: BTreeMap::new(),
            max_channels_per_connection: 16,
            on_backlog: OnBacklog::default(),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_spread: Duration::ZERO,
            shutdown_close_code: CLOSE_GOING_AWAY,
            handover: true,
            log_level: None,
            allowed_origins: Vec::new(),
            max_connections_per_ip: 0,
            history_max_bytes: 64 * 1024 * 1024,
            cluster: None,
            page: false,
        }
    }
}

/// A config that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax, type, or unknown-key errors, and table options that do not
    /// fit together; the text carries the line and column (and the file
    /// path when loaded from a file).
    #[error("{0}")]
    Parse(String),
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl Config {
    /// What the channels' history keeps, `None` when no route keeps any.
    pub fn history(&self) -> Option<HistoryPolicy> {
        route::history_of(&self.routes)
    }

    /// The config `wshub` runs with when given no file:
    /// [`DEFAULT_CONFIG_TOML`].
    pub fn embedded() -> Config {
        // The embedded text is a constant checked by a unit test; the
        // fallback only exists so that this can never panic.
        Config::from_toml_str(DEFAULT_CONFIG_TOML).unwrap_or_default()
    }

    /// Parses and validates a config from TOML text, and reads the key
    /// files of its `[auth.*]` tables.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            // toml's report ends in a newline; callers add their own.
            ConfigError::Parse(e.to_string().trim_end().to_owned())
        })?;
        config.validate()?;
        config.load_keys()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file. Parse errors are prefixed
    /// with `path` so the message alone says which file to fix.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}
