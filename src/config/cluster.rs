//! The `[cluster]` table: several wshub nodes sharing channels over Redis.
//!
//! Owns: the cluster settings, their defaults and rules, and the parsing of
//! `redis_url` (`redis://[user[:password]@]host[:port][/db]`, `rediss://`
//! for TLS) into a [`RedisUrl`].
//! Must never: resolve a host name (the server does, at start and reload
//! only), touch a socket, or let the password reach `Debug` or a log line
//! (it is a [`Secret`]; [`RedisUrl`]'s `Display` masks it).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::values::{self, Secret};

/// Redis's port when the URL names none.
const DEFAULT_REDIS_PORT: u16 = 6379;

/// Where the Redis bus is and how to log in. `Display` shows it with the
/// password masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS (rustls) to the server.
    pub tls: bool,
    /// A host name or an IP address (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// `AUTH user password` (Redis 6 ACL) when set, else `AUTH password`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `SELECT db` on the command link. Pub/sub ignores the database
    /// number: channels are shared by every database of a server, which is
    /// why `key_prefix` namespaces them.
    pub db: u32,
}

impl Default for RedisUrl {
    fn default() -> RedisUrl {
        RedisUrl {
            tls: false,
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_REDIS_PORT,
            username: None,
            password: None,
            db: 0,
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        write!(f, ":{}/{}", self.port, self.db)
    }
}

/// Decodes `%XX` escapes (user names and passwords may hold `@`, `:`, `/`).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` must be followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escapes must decode to UTF-8".to_owned())
}

impl RedisUrl {
    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://…`.
    /// Messages never quote the password.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("redis://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("rediss://") {
            (true, rest)
        } else {
            return Err("must start with redis:// or rediss://".to_owned());
        };
        if rest.contains(['?', '#']) {
            return Err("query strings and fragments are not supported".to_owned());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.find(':') {
                    Some(i) => (&info[..i], Some(&info[i + 1..])),
                    None => (info, None),
                };
                let user = percent_decode(user).map_err(|e| format!("user name: {e}"))?;
                if user.contains(char::is_control) {
                    return Err("the user name holds control characters".to_owned());
                }
                let pass = pass
                    .map(percent_decode)
                    .transpose()
                    .map_err(|e| format!("password: {e}"))?;
                // `redis://:password@host` is the usual form without ACLs.
                let user = (!user.is_empty()).then_some(user);
                (user, pass.filter(|p| !p.is_empty()).map(Secret::from))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or("an IPv6 address needs its closing `]`")?;
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("unexpected text after the IPv6 address".to_owned()),
            };
            (&v6[..end], port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("names no host".to_owned());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(format!("host {host:?} is not a host name or IP address"));
        }
        let port = match port {
            None => DEFAULT_REDIS_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
        };
        let db = match path {
            "" => 0,
            p => p
                .parse::<u32>()
                .map_err(|_| format!("database {p:?} is not a number"))?,
        };
        Ok(RedisUrl {
            tls,
            host: host.to_owned(),
            port,
            username,
            password,
            db,
        })
    }
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<RedisUrl, D::Error> {
    let text = String::deserialize(d)?;
    RedisUrl::parse(&text).map_err(|e| serde::de::Error::custom(format!("redis_url {e}")))
}

/// `[cluster]`: present only when wshub runs as one node of several.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis server every node shares.
    #[serde(deserialize_with = "redis_url")]
    pub redis_url: RedisUrl,
    /// This node's name in logs, `/metrics` and `CLIENT SETNAME`.
    pub node_name: String,
    /// Prepended to every channel name in Redis, so several deployments
    /// can share one Redis server.
    pub key_prefix: String,
    /// How long a TCP (and TLS) connection and its login may take.
    #[serde(deserialize_with = "values::duration")]
    pub connect_timeout: Duration,
    /// How long Redis has to accept a publish: past it, the publish is
    /// refused inside Redis and answered 503.
    #[serde(deserialize_with = "values::duration")]
    pub command_timeout: Duration,
    /// How often each idle link is checked with a command Redis must answer.
    #[serde(deserialize_with = "values::duration")]
    pub ping_interval: Duration,
    /// A link whose check is not answered within this is treated as down.
    #[serde(deserialize_with = "values::duration")]
    pub ping_timeout: Duration,
    /// First wait before reconnecting; doubled per failure (jittered).
    #[serde(deserialize_with = "values::duration")]
    pub reconnect_min: Duration,
    /// The longest wait between reconnection attempts.
    #[serde(deserialize_with = "values::duration")]
    pub reconnect_max: Duration,
    /// With `rediss://`: a PEM file of the certificate authorities to
    /// trust; `None` trusts the Mozilla roots (`webpki-roots`).
    pub tls_ca_file: Option<PathBuf>,
    /// With history on: how long Redis keeps a channel's epoch and last
    /// offset after its last publish (longer than `history_ttl`, so an up
    /// to date client of a quiet channel can continue).
    #[serde(deserialize_with = "values::duration")]
    pub history_meta_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            redis_url: RedisUrl::default(),
            node_name: "wshub".to_owned(),
            key_prefix: "wshub:".to_owned(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            tls_ca_file: None,
            history_meta_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl ClusterConfig {
    /// The rules of `[cluster]` its types cannot express.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("cluster.{name}");
        let zero = [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
            ("reconnect_min", self.reconnect_min),
            ("history_meta_ttl", self.history_meta_ttl),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::invalid(&key(name), "must be greater than 0"));
        }
        if self.tls_ca_file.is_some() && !self.redis_url.tls {
            return Err(ConfigError::invalid(
                &key("tls_ca_file"),
                "is only used with a rediss:// redis_url",
            ));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::invalid(
                &key("reconnect_max"),
                "must be at least reconnect_min",
            ));
        }
        if self.node_name.is_empty()
            || self.node_name.len() > 64
            || !self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::invalid(
                &key("node_name"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if self.key_prefix.len() > 64 || !self.key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                &key("key_prefix"),
                "must be at most 64 visible ASCII characters",
            ));
        }
        Ok(())
    }

    /// The settings that differ, one `cluster.name: old -> new` line each
    /// (the password is never shown).
    pub(super) fn changes(&self, new: &ClusterConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.redis_url != new.redis_url {
            out.push(format!(
                "cluster.redis_url: {} -> {}",
                self.redis_url, new.redis_url
            ));
        }
        let text = [
            ("node_name", &self.node_name, &new.node_name),
            ("key_prefix", &self.key_prefix, &new.key_prefix),
        ];
        for (name, old, new) in text {
            if old != new {
                out.push(format!("cluster.{name}: {old:?} -> {new:?}"));
            }
        }
        let durations = [
            ("connect_timeout", self.connect_timeout, new.connect_timeout),
            ("command_timeout", self.command_timeout, new.command_timeout),
            ("ping_interval", self.ping_interval, new.ping_interval),
            ("ping_timeout", self.ping_timeout, new.ping_timeout),
            ("reconnect_min", self.reconnect_min, new.reconnect_min),
            ("reconnect_max", self.reconnect_max, new.reconnect_max),
            (
                "history_meta_ttl",
                self.history_meta_ttl,
                new.history_meta_ttl,
            ),
        ];
        if self.tls_ca_file != new.tls_ca_file {
            out.push(format!(
                "cluster.tls_ca_file: {:?} -> {:?}",
                self.tls_ca_file, new.tls_ca_file
            ));
        }
        for (name, old, new) in durations {
            if old != new {
                out.push(format!(
                    "cluster.{name}: {} -> {}",
                    humantime::format_duration(old),
                    humantime::format_duration(new)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_credentials() {
        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(u, RedisUrl::default());
        let u = RedisUrl::parse("rediss://alice:p%40ss:w@redis.example:6380/3").unwrap();
        assert!(u.tls);
        assert_eq!(u.host, "redis.example");
        assert_eq!(u.port, 6380);
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w"));
        assert_eq!(u.db, 3);
        let u = RedisUrl::parse("redis://:secret@[::1]:7000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 7000, 0));
        assert_eq!(u.username, None);
        assert_eq!(u.to_string(), "redis://:***@[::1]:7000/0");
    }

    #[test]
    fn the_password_never_shows() {
        let u = RedisUrl::parse("redis://bob:hunter2@h:1/0").unwrap();
        assert!(!u.to_string().contains("hunter2"));
        assert!(!format!("{u:?}").contains("hunter2"));
        let err = RedisUrl::parse("redis://bob:hunter2@h:99999/0").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "http://h",
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h/x",
            "redis://h?db=1",
            "redis://[::1",
            "redis://a b",
            "redis://u:%4@h",
            "redis://a%00b:pw@h",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_table_uncommented_gives_the_defaults() {
        let example = include_str!("../../config/wshub.toml");
        let start = example
            .find("# [cluster]\n")
            .expect("a commented [cluster] table");
        let table: String = example[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let config = crate::config::Config::from_toml_str(&table).unwrap();
        assert_eq!(config.cluster, Some(ClusterConfig::default()));
        // An empty table is a cluster node with every default.
        let empty = crate::config::Config::from_toml_str("[cluster]\n").unwrap();
        assert_eq!(empty.cluster, Some(ClusterConfig::default()));
        let tls = crate::config::Config::from_toml_str(
            "[cluster]\nredis_url = \"rediss://h\"\ntls_ca_file = \"/etc/ca.pem\"\n",
        )
        .unwrap();
        assert!(tls.cluster.is_some_and(|c| c.redis_url.tls));
        let plain_with_ca = "[cluster]\ntls_ca_file = \"/etc/ca.pem\"\n";
        assert!(crate::config::Config::from_toml_str(plain_with_ca).is_err());
    }

    #[test]
    fn reload_changes_are_listed_without_the_password() {
        let old = ClusterConfig::default();
        let mut new = old.clone();
        new.redis_url = RedisUrl::parse("redis://:hunter2@10.0.0.1:6380/1").unwrap();
        new.ping_timeout = Duration::from_millis(1500);
        new.key_prefix = "staging:".into();
        let changes = old.changes(&new);
        assert_eq!(
            changes,
            [
                "cluster.redis_url: redis://127.0.0.1:6379/0 -> redis://:***@10.0.0.1:6380/1",
                "cluster.key_prefix: \"wshub:\" -> \"staging:\"",
                "cluster.ping_timeout: 2s -> 1s 500ms",
            ]
        );
        assert!(old.changes(&old).is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let ok = ClusterConfig::default();
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.ping_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.reconnect_max = Duration::from_millis(1);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.node_name = "a b".into();
        assert!(c.validate().is_err());
        let mut c = ok;
        c.key_prefix = "x y".into();
        assert!(c.validate().is_err());
    }
}
