//! The daemon's configuration: one TOML file, every field optional.
//!
//! Owns: the schema, its defaults (the embedded default config), and checks
//! that a loaded config makes sense before the server sees it.
//! Must never: touch sockets, or accept an unknown key silently.
//!
//! Parsing goes through private "raw" serde structs that mirror the file
//! layout (`[[listener]]`, `[[route]]`), so the public [`Config`] stays free
//! of serde attributes and can only be built from text that passed
//! [`Config::validate`].

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde::{Deserialize, Deserializer};

/// The configuration `wshub` runs with when given no file.
///
/// Only the tables are spelled out; every scalar setting takes its built-in
/// default. `config/wshub.toml` documents all settings.
pub const DEFAULT_CONFIG_TOML: &str = r#"# Built-in configuration: one loopback listener, one echo route.
[[listener]]
address = "127.0.0.1:8080"

[[route]]
path = "/echo"
kind = "echo"
"#;

/// Request path answered by the server itself, so no route may claim it.
pub const HEALTH_CHECK_PATH: &str = "/healthz";

/// Request path of the server's metrics endpoint, so no route may claim it.
pub const METRICS_PATH: &str = "/metrics";

/// Path prefix of the HTTP publish API when `publish_prefix` is not set.
pub const DEFAULT_PUBLISH_PREFIX: &str = "/publish";

/// Built-in defaults, used for every setting a file leaves out.
///
/// These are the single source of truth for default values; tests check
/// that `DEFAULT_CONFIG_TOML` and `config/wshub.toml` agree with them.
mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::{ClientMessages, OnBacklog};

    pub const MAX_CONNECTIONS: usize = 100_000;
    pub const MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;
    pub const MAX_FRAME_SIZE: u64 = 16 * 1024 * 1024;
    pub const MAX_BACKLOG_BYTES: usize = 1024 * 1024;
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const PING_INTERVAL: Duration = Duration::from_secs(30);
    pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
    pub const LISTENER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
    pub const ROUTE_PATH: &str = "/echo";
    pub const MAX_CHANNELS_PER_CONNECTION: usize = 16;
    pub const ON_BACKLOG: OnBacklog = OnBacklog::Close;
    pub const CLIENT_MESSAGES: ClientMessages = ClientMessages::Ignore;
    pub const ECHO_TO_SENDER: bool = false;
    pub const COMPRESSION: super::Compression = super::Compression::Off;
    /// zlib's default balance of speed and ratio; a broadcast is compressed
    /// once per publish, so its cost does not grow with the subscribers.
    pub const COMPRESSION_LEVEL: u32 = 6;
    /// Shorter messages rarely shrink: DEFLATE's block header and tables eat
    /// most of what they would save.
    pub const COMPRESSION_MIN_SIZE: usize = 128;
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SHUTDOWN_SPREAD: Duration = Duration::ZERO;
    pub const SHUTDOWN_CLOSE_CODE: u16 = super::CLOSE_GOING_AWAY;

    // serde's `default = "..."` wants functions, not constants.
    pub fn max_connections() -> usize {
        MAX_CONNECTIONS
    }
    pub fn max_message_size() -> u64 {
        MAX_MESSAGE_SIZE
    }
    pub fn max_frame_size() -> u64 {
        MAX_FRAME_SIZE
    }
    pub fn max_backlog_bytes() -> usize {
        MAX_BACKLOG_BYTES
    }
    pub fn handshake_timeout() -> Duration {
        HANDSHAKE_TIMEOUT
    }
    pub fn ping_interval() -> Duration {
        PING_INTERVAL
    }
    pub fn pong_timeout() -> Duration {
        PONG_TIMEOUT
    }
    pub fn close_timeout() -> Duration {
        CLOSE_TIMEOUT
    }
    pub fn idle_timeout() -> Duration {
        IDLE_TIMEOUT
    }
    pub fn publish_prefix() -> String {
        super::DEFAULT_PUBLISH_PREFIX.to_owned()
    }
    pub fn max_channels_per_connection() -> usize {
        MAX_CHANNELS_PER_CONNECTION
    }
    pub fn on_backlog() -> OnBacklog {
        ON_BACKLOG
    }
    pub fn shutdown_timeout() -> Duration {
        SHUTDOWN_TIMEOUT
    }
    pub fn shutdown_spread() -> Duration {
        SHUTDOWN_SPREAD
    }
    pub fn shutdown_close_code() -> u16 {
        SHUTDOWN_CLOSE_CODE
    }
}

/// Close code 1001 ("going away"): the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code 1012 ("service restart"): the server is restarting; clients
/// may reconnect shortly.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// The whole configuration.
///
/// `Debug` is written by hand so that printing a config (in a log line or a
/// failed assertion) never reveals `publish_token`.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Addresses to accept connections on; never empty once validated.
    pub listeners: Vec<ListenerConfig>,
    /// Request paths clients may upgrade on; never empty once validated.
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
    pub handshake_timeout: Duration,
    /// Zero disables keep-alive pings.
    pub ping_interval: Duration,
    /// How long to wait for a pong after a ping before dropping the peer.
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours.
    pub close_timeout: Duration,
    /// Zero disables the idle timeout.
    pub idle_timeout: Duration,
    /// `POST <publish_prefix>/<channel>` publishes the request body to a
    /// channel. Starts with `/`, never ends with one, and overlaps no route
    /// and neither the health check nor the metrics path.
    pub publish_prefix: String,
    /// When set, publishing and `/metrics` require
    /// `Authorization: Bearer <token>`; when unset, only loopback peers may
    /// use them. Non-empty visible ASCII once validated.
    pub publish_token: Option<String>,
    /// Channels one broadcast connection may subscribe to at once; above 0.
    pub max_channels_per_connection: usize,
    /// What a broadcast delivery does when it would push a connection's
    /// outbound queue past `max_backlog_bytes`.
    pub on_backlog: OnBacklog,
    /// On SIGTERM/SIGINT, how long to wait for clients to answer the close
    /// and for queued bytes to drain before exiting anyway; above 0.
    pub shutdown_timeout: Duration,
    /// On shutdown, spread the close frames evenly over this window instead
    /// of sending them all at once; at most `shutdown_timeout`.
    pub shutdown_spread: Duration,
    /// The close code sent on shutdown: [`CLOSE_GOING_AWAY`] or
    /// [`CLOSE_SERVICE_RESTART`].
    pub shutdown_close_code: u16,
    /// The most verbose level logged, applied at start and on reload; `None`
    /// leaves it to `RUST_LOG` (default `info`).
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
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whether a token is set is useful to see; its value never is.
        let token = self.publish_token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .field("max_connections", &self.max_connections)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("max_backlog_bytes", &self.max_backlog_bytes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("publish_prefix", &self.publish_prefix)
            .field("publish_token", &token)
            .field(
                "max_channels_per_connection",
                &self.max_channels_per_connection,
            )
            .field("on_backlog", &self.on_backlog)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("shutdown_spread", &self.shutdown_spread)
            .field("shutdown_close_code", &self.shutdown_close_code)
            .field("log_level", &self.log_level)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish()
    }
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// `Some` for a wss:// (TLS) listener, `None` for plain ws://.
    pub tls: Option<ListenerTls>,
}

impl ListenerConfig {
    /// A plain (ws://) listener.
    pub fn plain(address: SocketAddr) -> ListenerConfig {
        ListenerConfig { address, tls: None }
    }
}

/// The certificate of a TLS listener. Only the paths are kept here; the
/// server reads the files at start, at `--check-config` and on SIGHUP.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Agree to ALPN `http/1.1` when the client offers it.
    pub alpn: bool,
}

/// One request path and what happens to connections made on it.
///
/// A struct rather than a bare kind so that kinds needing extra settings can
/// add optional fields here without changing the file layout.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    /// Starts with `/` and does not end with one (unless it is exactly `/`).
    /// Echo routes match this path exactly; broadcast routes match it as a
    /// prefix: `<path>/<channel>` or `<path>?channel=...`.
    pub path: String,
    pub kind: RouteKind,
    /// What a subscriber's own messages do. Always the default
    /// ([`ClientMessages::Ignore`]) on echo routes.
    pub client_messages: ClientMessages,
    /// With [`ClientMessages::Broadcast`], also send a message back to its
    /// sender. Always false unless `client_messages` is `Broadcast`.
    pub echo_to_sender: bool,
    /// `Sec-WebSocket-Protocol` values the route speaks; the server answers
    /// with the first one the client offers (in the client's order).
    pub subprotocols: Vec<String>,
    /// Refuse (400) clients that offer none of `subprotocols`.
    pub require_subprotocol: bool,
    /// permessage-deflate (RFC 7692): accept the client's offer. Any kind.
    pub compression: Compression,
    /// zlib level, 0 (stored) to 9 (smallest), for messages sent on it.
    pub compression_level: u32,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub compression_min_size: usize,
}

impl RouteConfig {
    /// A route with the kind's default options.
    pub fn new(path: impl Into<String>, kind: RouteKind) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            kind,
            client_messages: defaults::CLIENT_MESSAGES,
            echo_to_sender: defaults::ECHO_TO_SENDER,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            compression: defaults::COMPRESSION,
            compression_level: defaults::COMPRESSION_LEVEL,
            compression_min_size: defaults::COMPRESSION_MIN_SIZE,
        }
    }

    /// The compression settings in force, `None` when compression is off.
    pub fn deflate(&self) -> Option<crate::protocol::deflate::DeflateConfig> {
        (self.compression == Compression::On).then_some(crate::protocol::deflate::DeflateConfig {
            level: self.compression_level,
            min_size: self.compression_min_size,
        })
    }
}

/// Generates `as_str` (the name used in the config file) and a matching
/// `Display` for the config's lowercase enums, so the spelling in error
/// messages and logs can never drift from what the file accepts.
macro_rules! config_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
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

/// What a route does with messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Sends every message back to its sender.
    Echo,
    /// Fans messages published to a channel out to the channel's
    /// subscribers. The route path is a prefix naming no channel itself.
    Broadcast,
}

config_names!(RouteKind {
    Echo => "echo",
    Broadcast => "broadcast",
});

/// What a broadcast delivery does to a connection whose outbound queue
/// would grow past `max_backlog_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBacklog {
    /// Close the slow connection, so every client that stays connected has
    /// seen every message.
    Close,
    /// Skip the message for that connection: it misses messages until it
    /// has caught up, but stays connected.
    Drop,
}

config_names!(OnBacklog {
    Close => "close",
    Drop => "drop",
});

/// What a broadcast route does with messages its subscribers send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMessages {
    /// Discard them (pings and closes are still answered).
    Ignore,
    /// Relay them to the other subscribers of the sender's channels.
    Broadcast,
    /// Close the connection with 1003 (unsupported data).
    Reject,
}

config_names!(ClientMessages {
    Ignore => "ignore",
    Broadcast => "broadcast",
    Reject => "reject",
});

/// Whether a route accepts permessage-deflate (RFC 7692).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Decline every offer: messages go uncompressed.
    Off,
    /// Accept the client's first acceptable offer, always with no context
    /// takeover in both directions.
    On,
}

config_names!(Compression {
    Off => "off",
    On => "on",
});

/// A config that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax, type, or unknown-key errors; the text carries the line and
    /// column (and the file path when loaded from a file).
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

/// The file as written. `Option` on the tables tells "not given" (use the
/// default) apart from an explicit empty list (rejected by validation).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
    #[serde(default = "defaults::max_message_size")]
    max_message_size: u64,
    #[serde(default = "defaults::max_frame_size")]
    max_frame_size: u64,
    #[serde(default = "defaults::max_backlog_bytes")]
    max_backlog_bytes: usize,
    #[serde(default = "defaults::handshake_timeout", deserialize_with = "duration")]
    handshake_timeout: Duration,
    #[serde(default = "defaults::ping_interval", deserialize_with = "duration")]
    ping_interval: Duration,
    #[serde(default = "defaults::pong_timeout", deserialize_with = "duration")]
    pong_timeout: Duration,
    #[serde(default = "defaults::close_timeout", deserialize_with = "duration")]
    close_timeout: Duration,
    #[serde(default = "defaults::idle_timeout", deserialize_with = "duration")]
    idle_timeout: Duration,
    #[serde(default = "defaults::publish_prefix")]
    publish_prefix: String,
    #[serde(default)]
    publish_token: Option<String>,
    #[serde(default = "defaults::max_channels_per_connection")]
    max_channels_per_connection: usize,
    #[serde(default = "defaults::on_backlog")]
    on_backlog: OnBacklog,
    #[serde(default = "defaults::shutdown_timeout", deserialize_with = "duration")]
    shutdown_timeout: Duration,
    #[serde(default = "defaults::shutdown_spread", deserialize_with = "duration")]
    shutdown_spread: Duration,
    #[serde(default = "defaults::shutdown_close_code")]
    shutdown_close_code: u16,
    #[serde(default, deserialize_with = "log_level")]
    log_level: Option<LevelFilter>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    max_connections_per_ip: usize,
    #[serde(default)]
    listener: Option<Vec<RawListener>>,
    #[serde(default)]
    route: Option<Vec<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    #[serde(deserialize_with = "socket_addr")]
    address: SocketAddr,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    alpn: Option<bool>,
}

impl RawListener {
    /// `cert` and `key` are required with `tls = true` and refused without
    /// it, as is `alpn`, so a half-configured TLS listener never serves
    /// plain ws:// by mistake.
    fn into_listener(self) -> Result<ListenerConfig, ConfigError> {
        let address = self.address;
        if !self.tls {
            let set = [
                ("listener.cert", self.cert.is_some()),
                ("listener.key", self.key.is_some()),
                ("listener.alpn", self.alpn.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(ConfigError::invalid(
                    key,
                    format!("is set on listener {address}, which does not have tls = true"),
                ));
            }
            return Ok(ListenerConfig::plain(address));
        }
        let required = |value: Option<PathBuf>, key: &str| {
            value.filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    format!("is required on listener {address}, which has tls = true"),
                )
            })
        };
        let cert = required(self.cert, "listener.cert")?;
        let key = required(self.key, "listener.key")?;
        Ok(ListenerConfig {
            address,
            tls: Some(ListenerTls {
                cert,
                key,
                alpn: self.alpn.unwrap_or(true),
            }),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    kind: RouteKind,
    // `Option` so that setting an option on a route kind it does not apply
    // to can be reported, even when the value given equals the default.
    #[serde(default)]
    client_messages: Option<ClientMessages>,
    #[serde(default)]
    echo_to_sender: Option<bool>,
    #[serde(default)]
    subprotocols: Vec<String>,
    #[serde(default)]
    require_subprotocol: bool,
    #[serde(default)]
    compression: Option<Compression>,
    #[serde(default)]
    compression_level: Option<u32>,
    #[serde(default)]
    compression_min_size: Option<usize>,
}

impl RawRoute {
    /// Rejects options the route's kind does not use, naming the option.
    fn into_route(self) -> Result<RouteConfig, ConfigError> {
        if self.kind != RouteKind::Broadcast {
            let set = [
                ("route.client_messages", self.client_messages.is_some()),
                ("route.echo_to_sender", self.echo_to_sender.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "is set on route {:?}, which is kind {:?}; it only applies to kind \"broadcast\"",
                        self.path,
                        self.kind.as_str()
                    ),
                ));
            }
        }
        Ok(RouteConfig {
            client_messages: self.client_messages.unwrap_or(defaults::CLIENT_MESSAGES),
            echo_to_sender: self.echo_to_sender.unwrap_or(defaults::ECHO_TO_SENDER),
            path: self.path,
            kind: self.kind,
            subprotocols: self.subprotocols,
            require_subprotocol: self.require_subprotocol,
            compression: self.compression.unwrap_or(defaults::COMPRESSION),
            compression_level: self
                .compression_level
                .unwrap_or(defaults::COMPRESSION_LEVEL),
            compression_min_size: self
                .compression_min_size
                .unwrap_or(defaults::COMPRESSION_MIN_SIZE),
        })
    }
}

/// Parses `IP:port` with a message that says what is expected; serde's own
/// wording ("invalid socket address syntax") leaves people guessing whether
/// host names work (they do not: nothing is resolved at startup).
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {text:?}: expected an IP address and port such as \
             \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"
        ))
    })
}

/// The names `log_level` accepts, most to least verbose after "off".
const LOG_LEVELS: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

/// Parses a log level name; lowercase only, like every other value in the
/// file.
fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LevelFilter>, D::Error> {
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
fn log_level_name(level: LevelFilter) -> &'static str {
    LOG_LEVELS
        .iter()
        .find(|(_, l)| *l == level)
        .map_or("?", |(name, _)| *name)
}

/// Parses a duration ("30s", "500ms", "2m") with `humantime`, through a
/// visitor of our own so both a wrong type and a bad unit produce a message
/// that shows the expected form.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    /// Fails only on what the finished `Config` can no longer show: options
    /// written on a route kind they do not apply to.
    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let listeners = match raw.listener {
            Some(list) => list
                .into_iter()
                .map(RawListener::into_listener)
                .collect::<Result<_, _>>()?,
            None => default_listeners(),
        };
        let routes = match raw.route {
            Some(list) => list
                .into_iter()
                .map(RawRoute::into_route)
                .collect::<Result<_, _>>()?,
            None => default_routes(),
        };
        Ok(Config {
            listeners,
            routes,
            max_connections: raw.max_connections,
            max_message_size: raw.max_message_size,
            max_frame_size: raw.max_frame_size,
            max_backlog_bytes: raw.max_backlog_bytes,
            handshake_timeout: raw.handshake_timeout,
            ping_interval: raw.ping_interval,
            pong_timeout: raw.pong_timeout,
            close_timeout: raw.close_timeout,
            idle_timeout: raw.idle_timeout,
            publish_prefix: raw.publish_prefix,
            publish_token: raw.publish_token,
            max_channels_per_connection: raw.max_channels_per_connection,
            on_backlog: raw.on_backlog,
            shutdown_timeout: raw.shutdown_timeout,
            shutdown_spread: raw.shutdown_spread,
            shutdown_close_code: raw.shutdown_close_code,
            log_level: raw.log_level,
            allowed_origins: raw.allowed_origins,
            max_connections_per_ip: raw.max_connections_per_ip,
        })
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::plain(defaults::LISTENER)]
}

fn default_routes() -> Vec<RouteConfig> {
    vec![RouteConfig::new(defaults::ROUTE_PATH, RouteKind::Echo)]
}

impl Config {
    /// Parses and validates a config from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's report ends in a newline; callers add their own.
            ConfigError::Parse(e.to_string().trim_end().to_owned())
        })?;
        let config = Config::try_from(raw)?;
        config.validate()?;
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

    /// Checks the rules the type system cannot express. Parsing already
    /// calls this; it is public for configs built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "max_connections",
                "must be greater than 0",
            ));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::invalid(
                "max_message_size",
                "must be greater than 0",
            ));
        }
        if self.max_frame_size == 0 {
            return Err(ConfigError::invalid(
                "max_frame_size",
                "must be greater than 0",
            ));
        }
        if self.max_frame_size > self.max_message_size {
            // A frame bigger than the message limit could never be accepted,
            // so such a setting is a mistake rather than a preference.
            return Err(ConfigError::invalid(
                "max_frame_size",
                format!(
                    "{} is larger than max_message_size ({}); a frame can never exceed the message it belongs to",
                    self.max_frame_size, self.max_message_size
                ),
            ));
        }
        if self.max_backlog_bytes == 0 {
            return Err(ConfigError::invalid(
                "max_backlog_bytes",
                "must be greater than 0",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "handshake_timeout",
                "must be greater than 0",
            ));
        }
        if self.close_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "close_timeout",
                "must be greater than 0",
            ));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "pong_timeout",
                "must be greater than 0 while ping_interval is enabled",
            ));
        }
        if self.max_channels_per_connection == 0 {
            return Err(ConfigError::invalid(
                "max_channels_per_connection",
                "must be greater than 0",
            ));
        }
        for origin in &self.allowed_origins {
            check_origin(origin).map_err(|why| {
                ConfigError::invalid("allowed_origins", format!("{origin:?} {why}"))
            })?;
        }
        self.validate_shutdown()?;
        self.validate_publish_token()?;
        self.validate_listeners()?;
        self.validate_routes()?;
        self.validate_publish_prefix()
    }

    fn validate_shutdown(&self) -> Result<(), ConfigError> {
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "shutdown_timeout",
                "must be greater than 0",
            ));
        }
        if self.shutdown_spread > self.shutdown_timeout {
            return Err(ConfigError::invalid(
                "shutdown_spread",
                format!(
                    "{} is longer than shutdown_timeout ({}); every close must be sent before the server gives up waiting",
                    humantime::format_duration(self.shutdown_spread),
                    humantime::format_duration(self.shutdown_timeout)
                ),
            ));
        }
        if ![CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART].contains(&self.shutdown_close_code) {
            return Err(ConfigError::invalid(
                "shutdown_close_code",
                format!(
                    "{} is not allowed; use {CLOSE_GOING_AWAY} (going away) or {CLOSE_SERVICE_RESTART} (service restart)",
                    self.shutdown_close_code
                ),
            ));
        }
        Ok(())
    }

    fn validate_publish_token(&self) -> Result<(), ConfigError> {
        let Some(token) = &self.publish_token else {
            return Ok(());
        };
        // The messages never quote the token: it is a secret, and error
        // text ends up in logs and terminals.
        if token.is_empty() {
            return Err(ConfigError::invalid(
                "publish_token",
                "must not be empty; remove the setting to let only loopback clients publish",
            ));
        }
        // Visible ASCII only, so the token survives an HTTP header verbatim
        // and compares byte for byte with what clients send.
        if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ConfigError::invalid(
                "publish_token",
                "must consist of visible ASCII characters only (no spaces, control or non-ASCII characters)",
            ));
        }
        Ok(())
    }

    fn validate_publish_prefix(&self) -> Result<(), ConfigError> {
        let prefix = &self.publish_prefix;
        let invalid =
            |why: String| ConfigError::invalid("publish_prefix", format!("{prefix:?} {why}"));
        check_path_syntax(prefix).map_err(|why| invalid(why.to_owned()))?;
        if prefix == "/" {
            // The channel follows the prefix after a `/`, so "/" would make
            // publish paths start with "//" and claim the whole server.
            return Err(invalid(
                "must name a path such as \"/publish\", not the root".to_owned(),
            ));
        }
        for reserved in [HEALTH_CHECK_PATH, METRICS_PATH] {
            if is_path_prefix(prefix, reserved) {
                return Err(invalid(format!(
                    "would cover {reserved:?}, which the server answers itself"
                )));
            }
        }
        for r in &self.routes {
            if paths_overlap(prefix, &r.path) {
                return Err(invalid(format!(
                    "overlaps route {:?}; publish requests and WebSocket routes need separate paths",
                    r.path
                )));
            }
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listener",
                "at least one [[listener]] is required (omit the key entirely to use 127.0.0.1:8080)",
            ));
        }
        let mut seen = HashSet::new();
        for l in &self.listeners {
            // Port 0 asks the OS for a fresh port each time, so repeating it
            // yields distinct sockets rather than a bind conflict.
            if l.address.port() != 0 && !seen.insert(l.address) {
                return Err(ConfigError::invalid(
                    "listener.address",
                    format!("{} is listed more than once", l.address),
                ));
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Err(ConfigError::invalid(
                "route",
                "at least one [[route]] is required (omit the key entirely to use the /echo echo route)",
            ));
        }
        let mut seen = HashSet::new();
        for r in &self.routes {
            check_route_path(&r.path, r.kind)
                .map_err(|why| ConfigError::invalid("route.path", format!("{:?} {why}", r.path)))?;
            check_route_options(r)?;
            if !seen.insert(r.path.as_str()) {
                return Err(ConfigError::invalid(
                    "route.path",
                    format!("{:?} is listed more than once", r.path),
                ));
            }
        }
        // A broadcast route serves every path below its own, so it must not
        // share that space with any other route; two echo routes only ever
        // match exactly and cannot overlap once they differ.
        for (i, a) in self.routes.iter().enumerate() {
            for b in &self.routes[i + 1..] {
                let broadcast = a.kind == RouteKind::Broadcast || b.kind == RouteKind::Broadcast;
                if broadcast && paths_overlap(&a.path, &b.path) {
                    return Err(ConfigError::invalid(
                        "route.path",
                        format!(
                            "{:?} ({}) overlaps {:?} ({}); a broadcast route also serves every path below it",
                            a.path, a.kind, b.path, b.kind
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a route's per-kind options. Routes parsed from a file already had
/// options on the wrong kind rejected by name; this covers configs built in
/// code, and the options' dependency on each other.
/// zlib's highest compression level.
const MAX_COMPRESSION_LEVEL: u32 = 9;

fn check_route_options(r: &RouteConfig) -> Result<(), ConfigError> {
    let on_route = |what: String| format!("{what} (route {:?})", r.path);
    for (i, p) in r.subprotocols.iter().enumerate() {
        if !crate::protocol::http::is_token(p.as_bytes()) {
            return Err(ConfigError::invalid(
                "route.subprotocols",
                on_route(format!("{p:?} is not an HTTP token")),
            ));
        }
        if r.subprotocols[..i].contains(p) {
            return Err(ConfigError::invalid(
                "route.subprotocols",
                on_route(format!("{p:?} is listed twice")),
            ));
        }
    }
    if r.compression_level > MAX_COMPRESSION_LEVEL {
        return Err(ConfigError::invalid(
            "route.compression_level",
            on_route(format!(
                "is {}; it must be 0 (no compression) to {MAX_COMPRESSION_LEVEL} (smallest)",
                r.compression_level
            )),
        ));
    }
    if r.require_subprotocol && r.subprotocols.is_empty() {
        return Err(ConfigError::invalid(
            "route.require_subprotocol",
            on_route(
                "is true but subprotocols is empty, so every client would be refused".to_owned(),
            ),
        ));
    }
    if r.kind != RouteKind::Broadcast {
        if r.client_messages != defaults::CLIENT_MESSAGES {
            return Err(ConfigError::invalid(
                "route.client_messages",
                on_route("only applies to kind \"broadcast\"".to_owned()),
            ));
        }
        if r.echo_to_sender != defaults::ECHO_TO_SENDER {
            return Err(ConfigError::invalid(
                "route.echo_to_sender",
                on_route("only applies to kind \"broadcast\"".to_owned()),
            ));
        }
    }
    // Echoing only means something for messages that are relayed at all;
    // accepting it elsewhere would let a setting look active while it is not.
    if r.echo_to_sender && r.client_messages != ClientMessages::Broadcast {
        return Err(ConfigError::invalid(
            "route.echo_to_sender",
            on_route(format!(
                "only has an effect with client_messages = \"broadcast\", not {:?}",
                r.client_messages.as_str()
            )),
        ));
    }
    Ok(())
}

/// True if `prefix` equals `path` or is one of its ancestors at a `/`
/// boundary (`/live` covers `/live/a` but not `/lively`).
///
/// `/` counts only as a prefix of itself: only echo routes may be `/`, and
/// they match exactly, so treating it as everyone's ancestor would forbid
/// every other path for no reason.
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || (prefix != "/" && rest.starts_with('/')),
        None => false,
    }
}

/// True if either path covers the other.
fn paths_overlap(a: &str, b: &str) -> bool {
    is_path_prefix(a, b) || is_path_prefix(b, a)
}

/// Why `path` cannot be used as a request path (a route or the publish
/// prefix), if it cannot. Paths are matched against the request target's
/// path, so anything a path can't contain (query, fragment, raw whitespace
/// or control bytes) would make a dead entry. A trailing `/` is refused
/// because prefix matching treats `/` as the separator before the channel,
/// so `/live/` would expect channels after a double slash.
fn check_path_syntax(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with `/`");
    }
    if path.contains('?') {
        return Err("must not contain `?` (paths are matched without the query)");
    }
    if path.contains('#') {
        return Err("must not contain `#` (fragments are never sent to the server)");
    }
    if path.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("must not end with `/` (only \"/\" itself may)");
    }
    Ok(())
}

/// Why `path` cannot be a route of `kind`, if it cannot.
/// An origin as browsers send it: `null`, or `scheme://host[:port]` with no
/// path, in ASCII.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "null" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(
            "is not an origin: expected scheme://host[:port], e.g. \"https://app.example\"",
        );
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err("has an invalid scheme");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err("must be scheme://host[:port] with no path (browsers send no trailing slash)");
    }
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be ASCII without spaces (write internationalized hosts in punycode)");
    }
    Ok(())
}

fn check_route_path(path: &str, kind: RouteKind) -> Result<(), &'static str> {
    check_path_syntax(path)?;
    if path == HEALTH_CHECK_PATH {
        return Err("is reserved for the health check");
    }
    if path == METRICS_PATH {
        return Err("is reserved for the metrics endpoint");
    }
    if kind == RouteKind::Broadcast && path == "/" {
        return Err(
            "cannot be a broadcast route: a broadcast route serves every path below its own, \
             so \"/\" would take over the whole server; use a path such as \"/live\"",
        );
    }
    Ok(())
}

impl Default for Config {
    /// The embedded default config.
    fn default() -> Self {
        // The embedded text is a constant checked by a unit test; the
        // fallback only exists so that `default()` can never panic.
        Config::from_toml_str(DEFAULT_CONFIG_TOML).unwrap_or_else(|_| Config::builtin())
    }
}

impl Config {
    /// The defaults assembled directly, without parsing.
    fn builtin() -> Config {
        Config {
            listeners: default_listeners(),
            routes: default_routes(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_message_size: defaults::MAX_MESSAGE_SIZE,
            max_frame_size: defaults::MAX_FRAME_SIZE,
            max_backlog_bytes: defaults::MAX_BACKLOG_BYTES,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            ping_interval: defaults::PING_INTERVAL,
            pong_timeout: defaults::PONG_TIMEOUT,
            close_timeout: defaults::CLOSE_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            publish_prefix: DEFAULT_PUBLISH_PREFIX.to_owned(),
            publish_token: None,
            max_channels_per_connection: defaults::MAX_CHANNELS_PER_CONNECTION,
            on_backlog: defaults::ON_BACKLOG,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            shutdown_spread: defaults::SHUTDOWN_SPREAD,
            shutdown_close_code: defaults::SHUTDOWN_CLOSE_CODE,
            log_level: None,
            allowed_origins: Vec::new(),
            max_connections_per_ip: 0,
        }
    }
}

impl Config {
    /// The top-level settings that differ between `self` and `new`, one
    /// `name: old -> new` line each, for the reload log. Listeners and routes
    /// are left to the caller, which knows what it can apply. The token's
    /// value is never shown, only whether it was set, changed or removed.
    pub fn changed_settings(&self, new: &Config) -> Vec<String> {
        // Naming every field makes a new setting a compile error here until
        // it is compared below (or deliberately left to the caller).
        let Config {
            listeners: _,
            routes: _,
            max_connections: _,
            max_message_size: _,
            max_frame_size: _,
            max_backlog_bytes: _,
            handshake_timeout: _,
            ping_interval: _,
            pong_timeout: _,
            close_timeout: _,
            idle_timeout: _,
            publish_prefix: _,
            publish_token: _,
            max_channels_per_connection: _,
            on_backlog: _,
            shutdown_timeout: _,
            shutdown_spread: _,
            shutdown_close_code: _,
            log_level: _,
            allowed_origins: _,
            max_connections_per_ip: _,
        } = self;
        fn duration(d: Duration) -> String {
            humantime::format_duration(d).to_string()
        }
        fn level(l: Option<LevelFilter>) -> String {
            l.map_or_else(|| "unset".to_owned(), |l| log_level_name(l).to_owned())
        }
        let pairs = [
            (
                "max_connections",
                self.max_connections.to_string(),
                new.max_connections.to_string(),
            ),
            (
                "max_message_size",
                self.max_message_size.to_string(),
                new.max_message_size.to_string(),
            ),
            (
                "max_frame_size",
                self.max_frame_size.to_string(),
                new.max_frame_size.to_string(),
            ),
            (
                "max_backlog_bytes",
                self.max_backlog_bytes.to_string(),
                new.max_backlog_bytes.to_string(),
            ),
            (
                "handshake_timeout",
                duration(self.handshake_timeout),
                duration(new.handshake_timeout),
            ),
            (
                "ping_interval",
                duration(self.ping_interval),
                duration(new.ping_interval),
            ),
            (
                "pong_timeout",
                duration(self.pong_timeout),
                duration(new.pong_timeout),
            ),
            (
                "close_timeout",
                duration(self.close_timeout),
                duration(new.close_timeout),
            ),
            (
                "idle_timeout",
                duration(self.idle_timeout),
                duration(new.idle_timeout),
            ),
            (
                "publish_prefix",
                format!("{:?}", self.publish_prefix),
                format!("{:?}", new.publish_prefix),
            ),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection.to_string(),
                new.max_channels_per_connection.to_string(),
            ),
            (
                "on_backlog",
                self.on_backlog.to_string(),
                new.on_backlog.to_string(),
            ),
            (
                "shutdown_timeout",
                duration(self.shutdown_timeout),
                duration(new.shutdown_timeout),
            ),
            (
                "shutdown_spread",
                duration(self.shutdown_spread),
                duration(new.shutdown_spread),
            ),
            (
                "shutdown_close_code",
                self.shutdown_close_code.to_string(),
                new.shutdown_close_code.to_string(),
            ),
            ("log_level", level(self.log_level), level(new.log_level)),
            (
                "allowed_origins",
                format!("{:?}", self.allowed_origins),
                format!("{:?}", new.allowed_origins),
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.to_string(),
                new.max_connections_per_ip.to_string(),
            ),
        ];
        let mut changes: Vec<String> = pairs
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| format!("{name}: {old} -> {new}"))
            .collect();
        match (&self.publish_token, &new.publish_token) {
            (None, Some(_)) => changes.push("publish_token: set".to_owned()),
            (Some(_), None) => changes.push("publish_token: removed".to_owned()),
            (Some(a), Some(b)) if a != b => changes.push("publish_token: changed".to_owned()),
            _ => {}
        }
        changes
    }
}

/// The rule every publish token follows, wherever it comes from (the
/// config's `publish_token`, `wshub publish --token` or its environment
/// variable): non-empty visible ASCII, so it travels verbatim in an HTTP
/// header and compares byte for byte. The message never quotes the token.
pub fn check_publish_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("the publish token must not be empty".to_owned());
    }
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(
            "the publish token must consist of visible ASCII characters only \
             (no spaces, control or non-ASCII characters)"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults, written out literally so that a changed
    /// constant shows up as a failing test, not a silent behaviour change.
    fn documented_defaults() -> Config {
        Config {
            listeners: vec![ListenerConfig {
                address: "127.0.0.1:8080".parse().unwrap(),
                tls: None,
            }],
            routes: vec![RouteConfig {
                path: "/echo".into(),
                kind: RouteKind::Echo,
                client_messages: ClientMessages::Ignore,
                echo_to_sender: false,
                subprotocols: Vec::new(),
                require_subprotocol: false,
                compression: Compression::Off,
                compression_level: 6,
                compression_min_size: 128,
            }],
            max_connections: 100_000,
            max_message_size: 16_777_216,
            max_frame_size: 16_777_216,
            max_backlog_bytes: 1_048_576,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            publish_prefix: "/publish".into(),
            publish_token: None,
            max_channels_per_connection: 16,
            on_backlog: OnBacklog::Close,
            shutdown_timeout: Duration::from_secs(10),
            shutdown_spread: Duration::ZERO,
            shutdown_close_code: 1001,
            log_level: None,
            allowed_origins: Vec::new(),
            max_connections_per_ip: 0,
        }
    }

    fn parse_err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
            Err(ConfigError::Parse(msg)) => msg,
            Err(other) => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    /// Returns the key of the `Invalid` error `text` must produce.
    fn invalid_key(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(other) => panic!("expected a validation error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn embedded_default_parses_to_documented_defaults() {
        let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, documented_defaults());
        assert_eq!(Config::default(), documented_defaults());
        assert_eq!(Config::builtin(), documented_defaults());
    }

    #[test]
    fn empty_file_uses_all_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), documented_defaults());
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let example = Config::from_toml_str(include_str!("../config/wshub.toml")).unwrap();
        assert_eq!(example, documented_defaults());
    }

    #[test]
    fn example_file_commented_out_settings_are_valid() {
        // The commented examples are meant to be uncommented as they are.
        let example = include_str!("../config/wshub.toml");
        let route = "# [[route]]\n# path = \"/live\"\n# kind = \"broadcast\"\n\
                     # client_messages = \"ignore\"\n# echo_to_sender = false\n";
        let token = "# publish_token = \"change-me-to-a-long-random-string\"\n";
        let level = "# log_level = \"info\"\n";
        assert!(example.contains(route) && example.contains(token) && example.contains(level));
        let uncommented = example
            .replace(route, &route.replace("# ", ""))
            .replace(token, &token.replace("# ", ""))
            .replace(level, &level.replace("# ", ""));
        let c = Config::from_toml_str(&uncommented).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1], RouteConfig::new("/live", RouteKind::Broadcast));
        assert!(c.publish_token.is_some());
        assert_eq!(c.log_level, Some(LevelFilter::Info));
    }

    #[test]
    fn every_setting_can_be_overridden() {
        let text = r#"
            max_connections = 10
            max_message_size = 2048
            max_frame_size = 1024
            max_backlog_bytes = 4096
            handshake_timeout = "500ms"
            ping_interval = "0s"
            pong_timeout = "0s"
            close_timeout = "1s"
            idle_timeout = "2m"
            publish_prefix = "/api/publish"
            publish_token = "s3cret-Token_~"
            max_channels_per_connection = 4
            on_backlog = "drop"
            shutdown_timeout = "30s"
            shutdown_spread = "20s"
            shutdown_close_code = 1012
            log_level = "debug"

            [[listener]]
            address = "127.0.0.1:9000"

            [[listener]]
            address = "[::1]:9000"

            [[route]]
            path = "/a"
            kind = "echo"

            [[route]]
            path = "/b/c"
            kind = "echo"

            [[route]]
            path = "/live"
            kind = "broadcast"
            client_messages = "broadcast"
            echo_to_sender = true
        "#;
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.max_message_size, 2048);
        assert_eq!(c.max_frame_size, 1024);
        assert_eq!(c.max_backlog_bytes, 4096);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.ping_interval, Duration::ZERO);
        assert_eq!(c.pong_timeout, Duration::ZERO);
        assert_eq!(c.close_timeout, Duration::from_secs(1));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        let addrs: Vec<String> = c.listeners.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:9000", "[::1]:9000"]);
        assert_eq!(c.publish_prefix, "/api/publish");
        assert_eq!(c.publish_token.as_deref(), Some("s3cret-Token_~"));
        assert_eq!(c.max_channels_per_connection, 4);
        assert_eq!(c.on_backlog, OnBacklog::Drop);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_spread, Duration::from_secs(20));
        assert_eq!(c.shutdown_close_code, CLOSE_SERVICE_RESTART);
        assert_eq!(c.log_level, Some(LevelFilter::Debug));
        let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b/c", "/live"]);
        assert_eq!(
            c.routes[2],
            RouteConfig {
                path: "/live".into(),
                kind: RouteKind::Broadcast,
                client_messages: ClientMessages::Broadcast,
                echo_to_sender: true,
                subprotocols: Vec::new(),
                require_subprotocol: false,
                compression: Compression::Off,
                compression_level: 6,
                compression_min_size: 128,
            }
        );
    }

    #[test]
    fn tables_replace_defaults_rather_than_adding_to_them() {
        let c = Config::from_toml_str("[[route]]\npath = \"/x\"\nkind = \"echo\"\n").unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].path, "/x");
        assert_eq!(c.listeners, documented_defaults().listeners);
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let msg = parse_err("max_connections = 5\nmax_conections = 5\n");
        assert!(msg.contains("max_conections"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key_on_first_line() {
        let msg = parse_err("max_conections = 5");
        assert!(msg.contains("max_conections"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn unknown_listener_key_names_key_and_line() {
        let msg = parse_err("[[listener]]\naddress = \"127.0.0.1:1\"\nadress = \"x\"\n");
        assert!(msg.contains("adress"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn unknown_route_key_names_key_and_line() {
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n\n[[route]]\npath = \"/b\"\nkind = \"echo\"\ntopic = \"x\"\n";
        let msg = parse_err(text);
        assert!(msg.contains("topic"), "{msg}");
        assert!(msg.contains("line 8"), "{msg}");
    }

    #[test]
    fn unknown_route_kind_is_rejected() {
        let msg = parse_err("[[route]]\npath = \"/a\"\nkind = \"mirror\"\n");
        assert!(msg.contains("mirror"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn route_needs_path_and_kind() {
        let msg = parse_err("[[route]]\nkind = \"echo\"\n");
        assert!(msg.contains("path"), "{msg}");
        let msg = parse_err("[[route]]\npath = \"/a\"\n");
        assert!(msg.contains("kind"), "{msg}");
    }

    #[test]
    fn listener_needs_address() {
        let msg = parse_err("[[listener]]\n");
        assert!(msg.contains("address"), "{msg}");
    }

    #[test]
    fn bad_duration_is_rejected_with_line() {
        let msg = parse_err("idle_timeout = \"1s\"\nping_interval = \"10 parsecs\"\n");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("parsecs"), "{msg}");
    }

    #[test]
    fn duration_must_be_a_string() {
        let msg = parse_err("ping_interval = 30\n");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn bad_address_is_rejected_with_line() {
        for bad in [
            "localhost:8080",
            "127.0.0.1",
            "300.0.0.1:80",
            "::1:80",
            "127.0.0.1:99999",
        ] {
            let msg = parse_err(&format!("[[listener]]\naddress = \"{bad}\"\n"));
            assert!(msg.contains("line 2"), "{bad}: {msg}");
            assert!(msg.contains("IP address and port"), "{bad}: {msg}");
        }
    }

    #[test]
    fn wrong_types_are_rejected_with_line() {
        for text in [
            "max_connections = \"many\"",
            "max_connections = -1",
            "max_message_size = 1.5",
            "max_backlog_bytes = true",
            "listener = \"127.0.0.1:8080\"",
            "route = 3",
            "[[listener]]\naddress = 8080",
            "[[route]]\npath = 1\nkind = \"echo\"",
        ] {
            let msg = parse_err(text);
            assert!(msg.contains("line "), "{text}: {msg}");
        }
    }

    #[test]
    fn syntax_error_is_a_parse_error() {
        let msg = parse_err("max_connections = \n");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn zero_sizes_and_counts_are_rejected() {
        for key in [
            "max_connections",
            "max_message_size",
            "max_frame_size",
            "max_backlog_bytes",
        ] {
            assert_eq!(invalid_key(&format!("{key} = 0")), key);
        }
    }

    #[test]
    fn frame_size_may_not_exceed_message_size() {
        assert_eq!(
            invalid_key("max_message_size = 1000\nmax_frame_size = 1001"),
            "max_frame_size"
        );
        // Equal is the inclusive boundary and allowed.
        let c = Config::from_toml_str("max_message_size = 1000\nmax_frame_size = 1000").unwrap();
        assert_eq!(c.max_frame_size, 1000);
        // Lowering only the message limit below the default frame size trips it too.
        assert_eq!(invalid_key("max_message_size = 1000"), "max_frame_size");
    }

    #[test]
    fn zero_handshake_and_close_timeouts_are_rejected() {
        assert_eq!(
            invalid_key("handshake_timeout = \"0s\""),
            "handshake_timeout"
        );
        assert_eq!(invalid_key("close_timeout = \"0ms\""), "close_timeout");
    }

    #[test]
    fn pong_timeout_required_only_while_pinging() {
        assert_eq!(invalid_key("pong_timeout = \"0s\""), "pong_timeout");
        let c = Config::from_toml_str("ping_interval = \"0s\"\npong_timeout = \"0s\"").unwrap();
        assert!(c.ping_interval.is_zero());
    }

    #[test]
    fn zero_idle_timeout_disables_it() {
        let c = Config::from_toml_str("idle_timeout = \"0s\"").unwrap();
        assert!(c.idle_timeout.is_zero());
    }

    #[test]
    fn empty_table_lists_are_rejected() {
        assert_eq!(invalid_key("listener = []"), "listener");
        assert_eq!(invalid_key("route = []"), "route");
    }

    #[test]
    fn duplicate_listener_is_rejected() {
        let text = "[[listener]]\naddress = \"127.0.0.1:9000\"\n[[listener]]\naddress = \"127.0.0.1:9000\"\n";
        assert_eq!(invalid_key(text), "listener.address");
        // Same port on different addresses is fine.
        let text =
            "[[listener]]\naddress = \"127.0.0.1:9000\"\n[[listener]]\naddress = \"[::1]:9000\"\n";
        assert!(Config::from_toml_str(text).is_ok());
    }

    #[test]
    fn repeated_port_zero_listeners_are_allowed() {
        let text =
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n";
        assert_eq!(Config::from_toml_str(text).unwrap().listeners.len(), 2);
    }

    #[test]
    fn tls_listener_takes_cert_and_key() {
        let text = "[[listener]]\naddress = \"127.0.0.1:8080\"\n\
                    [[listener]]\naddress = \"127.0.0.1:8443\"\ntls = true\n\
                    cert = \"/etc/wshub/fullchain.pem\"\nkey = \"/etc/wshub/privkey.pem\"\n";
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.listeners[0].tls, None);
        assert_eq!(
            c.listeners[1].tls,
            Some(ListenerTls {
                cert: "/etc/wshub/fullchain.pem".into(),
                key: "/etc/wshub/privkey.pem".into(),
                alpn: true,
            })
        );
        let no_alpn = format!("{text}alpn = false\n");
        let c = Config::from_toml_str(&no_alpn).unwrap();
        assert!(c.listeners[1].tls.as_ref().is_some_and(|t| !t.alpn));
    }

    #[test]
    fn tls_settings_must_be_complete_and_only_on_tls_listeners() {
        let base = "[[listener]]\naddress = \"127.0.0.1:8443\"\n";
        for (extra, key) in [
            ("tls = true\nkey = \"k.pem\"\n", "listener.cert"),
            ("tls = true\ncert = \"c.pem\"\n", "listener.key"),
            (
                "tls = true\ncert = \"\"\nkey = \"k.pem\"\n",
                "listener.cert",
            ),
            ("cert = \"c.pem\"\nkey = \"k.pem\"\n", "listener.cert"),
            ("tls = false\nkey = \"k.pem\"\n", "listener.key"),
            ("alpn = true\n", "listener.alpn"),
        ] {
            match Config::from_toml_str(&format!("{base}{extra}")) {
                Err(ConfigError::Invalid { key: got, message }) => {
                    assert_eq!(got, key, "{extra}: {message}");
                    assert!(message.contains("127.0.0.1:8443"), "{message}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_route_paths_are_rejected() {
        // TOML basic-string spellings, so escapes reach the validator as
        // the raw characters.
        for bad in [
            r#""echo""#,
            r#""""#,
            r#""/a?b""#,
            r#""/a#b""#,
            r#""/a b""#,
            r#""/a\tb""#,
            r#""/a\u007f""#,
            r#""/a\u0000""#,
            r#""/a\u00a0""#,
            r#""/healthz""#,
        ] {
            let text = format!("[[route]]\npath = {bad}\nkind = \"echo\"\n");
            assert_eq!(invalid_key(&text), "route.path", "{bad}");
        }
    }

    #[test]
    fn healthz_subpaths_are_not_reserved() {
        let c = Config::from_toml_str("[[route]]\npath = \"/healthz/x\"\nkind = \"echo\"\n");
        assert!(c.is_ok());
    }

    #[test]
    fn duplicate_route_is_rejected() {
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n[[route]]\npath = \"/a\"\nkind = \"echo\"\n";
        assert_eq!(invalid_key(text), "route.path");
    }

    #[test]
    fn invalid_error_message_names_key() {
        let err = Config::from_toml_str("max_connections = 0").unwrap_err();
        assert!(err.to_string().contains("`max_connections`"), "{err}");
    }

    #[test]
    fn load_prefixes_parse_errors_with_path() {
        let dir = std::env::temp_dir().join(format!("wshub-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "max_conections = 5\n").unwrap();
        let err = Config::load(&file).unwrap_err();
        let msg = err.to_string();
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        assert!(msg.starts_with(&file.display().to_string()), "{msg}");
        assert!(
            msg.contains("max_conections") && msg.contains("line 1"),
            "{msg}"
        );
    }

    #[test]
    fn load_reports_missing_file() {
        let file = std::env::temp_dir().join("wshub-config-test-does-not-exist.toml");
        let err = Config::load(&file).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("does-not-exist"), "{err}");
    }

    #[test]
    fn route_kind_names_round_trip() {
        assert_eq!(RouteKind::Echo.to_string(), "echo");
        assert_eq!(RouteKind::Broadcast.to_string(), "broadcast");
    }

    /// A config with one broadcast route at `/live` and `options` added to
    /// its table.
    fn broadcast_route(options: &str) -> String {
        format!("[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n{options}\n")
    }

    /// `prefix` as the publish prefix next to the given routes.
    fn with_publish_prefix(prefix: &str, routes: &str) -> String {
        format!("publish_prefix = {prefix:?}\n{routes}")
    }

    #[test]
    fn compression_options_parse_on_any_route_kind() {
        let echo = "[[route]]\npath = \"/e\"\nkind = \"echo\"\ncompression = \"on\"\n\
                    compression_level = 1\ncompression_min_size = 0\n";
        let c = Config::from_toml_str(&format!(
            "{echo}{}",
            broadcast_route("compression = \"on\"")
        ))
        .unwrap();
        assert_eq!(c.routes[0].compression, Compression::On);
        assert_eq!(c.routes[0].compression_level, 1);
        assert_eq!(c.routes[0].compression_min_size, 0);
        assert_eq!(
            c.routes[0].deflate(),
            Some(crate::protocol::deflate::DeflateConfig {
                level: 1,
                min_size: 0
            })
        );
        assert_eq!(c.routes[1].compression, Compression::On);
        assert_eq!(c.routes[1].compression_level, 6);
        assert_eq!(c.routes[1].compression_min_size, 128);
        // Off by default, and the documented defaults are the built-in ones.
        let c = Config::from_toml_str(&broadcast_route(
            "compression = \"off\"\ncompression_level = 6\ncompression_min_size = 128",
        ))
        .unwrap();
        assert_eq!(c.routes[0], RouteConfig::new("/live", RouteKind::Broadcast));
        assert_eq!(c.routes[0].deflate(), None);
    }

    #[test]
    fn compression_options_are_checked() {
        assert_eq!(
            invalid_key(&broadcast_route("compression_level = 10")),
            "route.compression_level"
        );
        let msg = parse_err(&broadcast_route("compression = \"yes\""));
        assert!(msg.contains("off") && msg.contains("on"), "{msg}");
        let msg = parse_err(&broadcast_route("compression_min_size = -1"));
        assert!(msg.contains("compression_min_size"), "{msg}");
    }

    #[test]
    fn broadcast_route_defaults() {
        let c = Config::from_toml_str(&broadcast_route("")).unwrap();
        assert_eq!(
            c.routes,
            [RouteConfig {
                path: "/live".into(),
                kind: RouteKind::Broadcast,
                client_messages: ClientMessages::Ignore,
                echo_to_sender: false,
                subprotocols: Vec::new(),
                require_subprotocol: false,
                compression: Compression::Off,
                compression_level: 6,
                compression_min_size: 128,
            }]
        );
        assert_eq!(c.routes[0], RouteConfig::new("/live", RouteKind::Broadcast));
    }

    #[test]
    fn client_messages_values_parse() {
        for (text, want) in [
            ("ignore", ClientMessages::Ignore),
            ("broadcast", ClientMessages::Broadcast),
            ("reject", ClientMessages::Reject),
        ] {
            let c = Config::from_toml_str(&broadcast_route(&format!("client_messages = {text:?}")))
                .unwrap();
            assert_eq!(c.routes[0].client_messages, want);
            assert_eq!(want.as_str(), text);
            assert_eq!(want.to_string(), text);
        }
    }

    #[test]
    fn on_backlog_values_parse() {
        for (text, want) in [("close", OnBacklog::Close), ("drop", OnBacklog::Drop)] {
            let c = Config::from_toml_str(&format!("on_backlog = {text:?}")).unwrap();
            assert_eq!(c.on_backlog, want);
            assert_eq!(want.to_string(), text);
        }
    }

    #[test]
    fn unknown_enum_values_are_rejected_with_line() {
        let msg = parse_err("max_connections = 5\non_backlog = \"block\"\n");
        assert!(msg.contains("block") && msg.contains("line 2"), "{msg}");
        // Values are lowercase, like every other name in the file.
        let msg = parse_err("on_backlog = \"Close\"");
        assert!(msg.contains("line 1"), "{msg}");
        let msg = parse_err(&broadcast_route("client_messages = \"relay\""));
        assert!(msg.contains("relay") && msg.contains("line 4"), "{msg}");
        let msg = parse_err(&broadcast_route("echo_to_sender = \"yes\""));
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn unknown_key_in_broadcast_route_names_key_and_line() {
        let text = format!(
            "{}{}",
            broadcast_route("client_messages = \"broadcast\""),
            "echo_to_senders = true\n"
        );
        let msg = parse_err(&text);
        assert!(msg.contains("echo_to_senders"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn broadcast_options_on_echo_route_name_the_key() {
        // Even a value equal to the default is refused: the setting would
        // look meaningful while doing nothing.
        for (option, key) in [
            ("client_messages = \"broadcast\"", "route.client_messages"),
            ("client_messages = \"ignore\"", "route.client_messages"),
            ("echo_to_sender = true", "route.echo_to_sender"),
            ("echo_to_sender = false", "route.echo_to_sender"),
        ] {
            let text = format!("[[route]]\npath = \"/e\"\nkind = \"echo\"\n{option}\n");
            assert_eq!(invalid_key(&text), key, "{option}");
            let err = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains("\"/e\"") && err.contains("broadcast"), "{err}");
        }
    }

    #[test]
    fn broadcast_options_on_echo_route_built_in_code_are_rejected() {
        let mut c = Config::default();
        c.routes[0].client_messages = ClientMessages::Reject;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "route.client_messages")
        );
        let mut c = Config::default();
        c.routes[0].echo_to_sender = true;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "route.echo_to_sender")
        );
    }

    #[test]
    fn echo_to_sender_needs_broadcast_client_messages() {
        assert_eq!(
            invalid_key(&broadcast_route("echo_to_sender = true")),
            "route.echo_to_sender"
        );
        assert_eq!(
            invalid_key(&broadcast_route(
                "client_messages = \"reject\"\necho_to_sender = true"
            )),
            "route.echo_to_sender"
        );
        // Explicitly off is fine with any setting.
        let c = Config::from_toml_str(&broadcast_route("echo_to_sender = false")).unwrap();
        assert!(!c.routes[0].echo_to_sender);
    }

    #[test]
    fn trailing_slash_route_paths_are_rejected() {
        for bad in ["/a/", "/a/b/", "//"] {
            for kind in ["echo", "broadcast"] {
                let text = format!("[[route]]\npath = {bad:?}\nkind = {kind:?}\n");
                assert_eq!(invalid_key(&text), "route.path", "{bad} {kind}");
            }
        }
    }

    #[test]
    fn root_path_is_only_an_echo_route() {
        let c = Config::from_toml_str("[[route]]\npath = \"/\"\nkind = \"echo\"\n").unwrap();
        assert_eq!(c.routes[0].path, "/");
        assert_eq!(
            invalid_key("[[route]]\npath = \"/\"\nkind = \"broadcast\"\n"),
            "route.path"
        );
    }

    #[test]
    fn root_echo_route_overlaps_nothing() {
        // `/` matches only itself, so it leaves room for broadcast routes
        // and the publish prefix.
        let text = "[[route]]\npath = \"/\"\nkind = \"echo\"\n\
                    [[route]]\npath = \"/live\"\nkind = \"broadcast\"\n";
        assert_eq!(Config::from_toml_str(text).unwrap().routes.len(), 2);
    }

    #[test]
    fn metrics_path_is_reserved_for_routes() {
        for kind in ["echo", "broadcast"] {
            let text = format!("[[route]]\npath = \"/metrics\"\nkind = {kind:?}\n");
            assert_eq!(invalid_key(&text), "route.path", "{kind}");
        }
        assert_eq!(
            invalid_key("[[route]]\npath = \"/healthz\"\nkind = \"broadcast\"\n"),
            "route.path"
        );
    }

    #[test]
    fn broadcast_routes_may_not_overlap_other_routes() {
        for (a, b) in [
            (("/live", "broadcast"), ("/live/x", "echo")),
            (("/live/x", "echo"), ("/live", "broadcast")),
            (("/live", "broadcast"), ("/live/x", "broadcast")),
            (("/a/b", "broadcast"), ("/a", "echo")),
        ] {
            let text = format!(
                "[[route]]\npath = {:?}\nkind = {:?}\n[[route]]\npath = {:?}\nkind = {:?}\n",
                a.0, a.1, b.0, b.1
            );
            assert_eq!(invalid_key(&text), "route.path", "{a:?} {b:?}");
        }
        // Same spelling up to a non-boundary is no overlap.
        for (a, b) in [("/live", "/lively"), ("/live", "/liv"), ("/a/b", "/a/bc")] {
            let text = format!(
                "[[route]]\npath = {a:?}\nkind = \"broadcast\"\n[[route]]\npath = {b:?}\nkind = \"broadcast\"\n"
            );
            assert!(Config::from_toml_str(&text).is_ok(), "{a} {b}");
        }
        // Exact-match echo routes may nest freely, as before.
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n[[route]]\npath = \"/a/b\"\nkind = \"echo\"\n";
        assert!(Config::from_toml_str(text).is_ok());
    }

    #[test]
    fn overlap_error_names_both_routes() {
        let text = "[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n[[route]]\npath = \"/live/x\"\nkind = \"echo\"\n";
        let msg = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(
            msg.contains("\"/live\"") && msg.contains("\"/live/x\""),
            "{msg}"
        );
    }

    #[test]
    fn publish_prefix_syntax() {
        for good in [
            "/p",
            "/api/publish",
            "/publish-v2",
            "/healthz/pub",
            "/metricsx",
        ] {
            let c = Config::from_toml_str(&with_publish_prefix(good, "")).unwrap();
            assert_eq!(c.publish_prefix, good);
        }
        for bad in [
            "",
            "publish",
            "/",
            "/publish/",
            "/p?x",
            "/p#x",
            "/p q",
            "/p\t",
        ] {
            assert_eq!(
                invalid_key(&with_publish_prefix(bad, "")),
                "publish_prefix",
                "{bad:?}"
            );
        }
        // Spelled as TOML here: Rust's `{:?}` writes escapes like `\u{7f}`,
        // which TOML does not accept.
        for bad in [r#""/p\u007f""#, r#""/p\u0000""#, r#""/p\u00a0""#] {
            assert_eq!(
                invalid_key(&format!("publish_prefix = {bad}")),
                "publish_prefix",
                "{bad}"
            );
        }
    }

    #[test]
    fn publish_prefix_may_not_cover_server_paths() {
        for bad in ["/healthz", "/metrics"] {
            assert_eq!(
                invalid_key(&with_publish_prefix(bad, "")),
                "publish_prefix",
                "{bad}"
            );
        }
    }

    #[test]
    fn publish_prefix_may_not_overlap_routes() {
        for (prefix, route, kind) in [
            ("/echo", "/echo", "echo"),
            ("/echo/p", "/echo", "echo"),
            ("/api", "/api/ws", "echo"),
            ("/live", "/live", "broadcast"),
            ("/live/pub", "/live", "broadcast"),
            ("/x", "/x/live", "broadcast"),
        ] {
            let routes = format!("[[route]]\npath = {route:?}\nkind = {kind:?}\n");
            assert_eq!(
                invalid_key(&with_publish_prefix(prefix, &routes)),
                "publish_prefix",
                "{prefix} vs {route}"
            );
        }
        // The default prefix against a route that only shares letters.
        let routes = "[[route]]\npath = \"/publisher\"\nkind = \"broadcast\"\n";
        assert!(Config::from_toml_str(routes).is_ok());
        // The default prefix collides with a route placed under it.
        let routes = "[[route]]\npath = \"/publish/ws\"\nkind = \"echo\"\n";
        assert_eq!(invalid_key(routes), "publish_prefix");
    }

    #[test]
    fn publish_token_rules() {
        let c = Config::from_toml_str("publish_token = \"abc!~XYZ\"").unwrap();
        assert_eq!(c.publish_token.as_deref(), Some("abc!~XYZ"));
        for bad in [
            r#""""#,
            r#""two words""#,
            r#""tab\there""#,
            r#""new\nline""#,
            r#""del\u007f""#,
            r#""caf\u00e9""#,
        ] {
            assert_eq!(
                invalid_key(&format!("publish_token = {bad}")),
                "publish_token",
                "{bad}"
            );
        }
        let msg = parse_err("publish_token = 42");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn publish_token_is_never_shown() {
        let c = Config::from_toml_str("publish_token = \"hunter2hunter2\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("publish_token"), "{shown}");
        let err = Config::from_toml_str("publish_token = \"hunter2 hunter2\"").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn zero_channels_per_connection_is_rejected() {
        assert_eq!(
            invalid_key("max_channels_per_connection = 0"),
            "max_channels_per_connection"
        );
        let c = Config::from_toml_str("max_channels_per_connection = 1").unwrap();
        assert_eq!(c.max_channels_per_connection, 1);
    }

    #[test]
    fn shutdown_settings_are_checked() {
        assert_eq!(invalid_key("shutdown_timeout = \"0s\""), "shutdown_timeout");
        assert_eq!(
            invalid_key("shutdown_timeout = \"5s\"\nshutdown_spread = \"6s\""),
            "shutdown_spread"
        );
        // Spreading over the whole window is allowed.
        let c =
            Config::from_toml_str("shutdown_timeout = \"5s\"\nshutdown_spread = \"5s\"").unwrap();
        assert_eq!(c.shutdown_spread, Duration::from_secs(5));
        for code in [1000, 1002, 1011, 1013, 4000] {
            assert_eq!(
                invalid_key(&format!("shutdown_close_code = {code}")),
                "shutdown_close_code",
                "{code}"
            );
        }
        for code in [CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART] {
            let c = Config::from_toml_str(&format!("shutdown_close_code = {code}")).unwrap();
            assert_eq!(c.shutdown_close_code, code);
        }
        let msg = parse_err("shutdown_close_code = \"1001\"");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn log_level_names() {
        for (name, level) in LOG_LEVELS {
            let c = Config::from_toml_str(&format!("log_level = {name:?}")).unwrap();
            assert_eq!(c.log_level, Some(level));
            assert_eq!(log_level_name(level), name);
        }
        for bad in ["INFO", "verbose", ""] {
            let msg = parse_err(&format!("max_connections = 5\nlog_level = {bad:?}"));
            assert!(msg.contains("line 2") && msg.contains("log level"), "{msg}");
        }
    }

    #[test]
    fn changed_settings_lists_differences_without_the_token() {
        let old = Config::from_toml_str("publish_token = \"old-secret\"").unwrap();
        let new = Config::from_toml_str(
            "max_connections = 7\nidle_timeout = \"90s\"\npublish_token = \"new-secret\"\nlog_level = \"warn\"",
        )
        .unwrap();
        let changes = old.changed_settings(&new);
        assert_eq!(
            changes,
            [
                "max_connections: 100000 -> 7",
                "idle_timeout: 2m -> 1m 30s",
                "log_level: unset -> warn",
                "publish_token: changed",
            ]
        );
        assert!(old.changed_settings(&old).is_empty());
        assert!(!format!("{changes:?}").contains("secret"));
    }

    #[test]
    fn path_prefix_boundaries() {
        assert!(is_path_prefix("/a", "/a"));
        assert!(is_path_prefix("/a", "/a/b"));
        assert!(!is_path_prefix("/a", "/ab"));
        assert!(!is_path_prefix("/a/b", "/a"));
        assert!(is_path_prefix("/", "/"));
        assert!(!is_path_prefix("/", "/a"));
        assert!(paths_overlap("/a/b", "/a"));
        assert!(!paths_overlap("/a/b", "/a/c"));
    }

    #[test]
    fn origins_must_be_serialized_origins() {
        for good in [
            "https://app.example",
            "http://127.0.0.1:8080",
            "null",
            "app+x://h",
        ] {
            let text = format!("allowed_origins = [{good:?}]");
            let c = Config::from_toml_str(&text).unwrap();
            assert_eq!(c.allowed_origins, [good]);
        }
        for bad in [
            "app.example",
            "https://app.example/",
            "https://app.example/path",
            "https://",
            "1http://x",
            "https://a b",
            "https://bücher.example",
        ] {
            let text = format!("allowed_origins = [{bad:?}]");
            assert_eq!(invalid_key(&text), "allowed_origins", "{bad}");
        }
    }

    #[test]
    fn per_ip_limit_defaults_off_and_parses() {
        assert_eq!(Config::default().max_connections_per_ip, 0);
        let c = Config::from_toml_str("max_connections_per_ip = 4").unwrap();
        assert_eq!(c.max_connections_per_ip, 4);
    }

    #[test]
    fn subprotocols_are_tokens_listed_once() {
        let route =
            |extra: &str| format!("[[route]]\npath = \"/chat\"\nkind = \"echo\"\n{extra}\n");
        let c = Config::from_toml_str(&route(
            "subprotocols = [\"chat.v2\", \"chat.v1\"]\nrequire_subprotocol = true",
        ))
        .unwrap();
        assert_eq!(c.routes[0].subprotocols, ["chat.v2", "chat.v1"]);
        assert!(c.routes[0].require_subprotocol);
        for bad in [
            "subprotocols = [\"\"]",
            "subprotocols = [\"a b\"]",
            "subprotocols = [\"a,b\"]",
            "subprotocols = [\"x\", \"x\"]",
        ] {
            assert_eq!(invalid_key(&route(bad)), "route.subprotocols", "{bad}");
        }
        assert_eq!(
            invalid_key(&route("require_subprotocol = true")),
            "route.require_subprotocol"
        );
    }
}
