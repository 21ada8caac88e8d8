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
use std::path::Path;
use std::time::Duration;

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

/// Built-in defaults, used for every setting a file leaves out.
///
/// These are the single source of truth for default values; tests check
/// that `DEFAULT_CONFIG_TOML` and `config/wshub.toml` agree with them.
mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

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
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
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
    /// consumer.
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
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
}

/// One request path and what happens to connections made on it.
///
/// A struct rather than a bare kind so that kinds needing extra settings can
/// add optional fields here without changing the file layout.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    /// Exact request path, starting with `/`.
    pub path: String,
    pub kind: RouteKind,
}

/// What a route does with messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Sends every message back to its sender.
    Echo,
}

impl RouteKind {
    /// The name used for this kind in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Echo => "echo",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    kind: RouteKind,
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

/// Parses a humantime duration ("30s", "500ms", "2m"). Hand-rolled rather
/// than `humantime_serde` so both a wrong type and a bad unit produce a
/// message that shows the expected form and names the supported units.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"30s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime_serde::re::humantime::parse_duration(text).map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?}: {e}; write it like \"30s\" or \"500ms\""
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
}

impl From<RawConfig> for Config {
    fn from(raw: RawConfig) -> Config {
        let listeners = match raw.listener {
            Some(list) => list
                .into_iter()
                .map(|l| ListenerConfig { address: l.address })
                .collect(),
            None => default_listeners(),
        };
        let routes = match raw.route {
            Some(list) => list
                .into_iter()
                .map(|r| RouteConfig {
                    path: r.path,
                    kind: r.kind,
                })
                .collect(),
            None => default_routes(),
        };
        Config {
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
        }
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        address: defaults::LISTENER,
    }]
}

fn default_routes() -> Vec<RouteConfig> {
    vec![RouteConfig {
        path: defaults::ROUTE_PATH.to_owned(),
        kind: RouteKind::Echo,
    }]
}

impl Config {
    /// Parses and validates a config from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's report ends in a newline; callers add their own.
            ConfigError::Parse(e.to_string().trim_end().to_owned())
        })?;
        let config = Config::from(raw);
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
        self.validate_listeners()?;
        self.validate_routes()
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
            check_route_path(&r.path)
                .map_err(|why| ConfigError::invalid("route.path", format!("{:?} {why}", r.path)))?;
            if !seen.insert(r.path.as_str()) {
                return Err(ConfigError::invalid(
                    "route.path",
                    format!("{:?} is listed more than once", r.path),
                ));
            }
        }
        Ok(())
    }
}

/// Why `path` cannot be a route, if it cannot. Routes are matched against
/// the request target's path, so anything a path can't contain (query,
/// fragment, raw whitespace or control bytes) would make a dead route.
fn check_route_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with `/`");
    }
    if path.contains('?') {
        return Err("must not contain `?` (routes match the path, not the query)");
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
    if path == HEALTH_CHECK_PATH {
        return Err("is reserved for the health check");
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
        }
    }
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
            }],
            routes: vec![RouteConfig {
                path: "/echo".into(),
                kind: RouteKind::Echo,
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
        let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b/c"]);
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
    }
}
