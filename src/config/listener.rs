//! `[[listener]]`: the sockets wshub accepts connections on.
//!
//! Owns: the listener types, turning a table as written into one (a TLS
//! listener needs both files; a plain one may name none; `reuse_port` needs
//! a fixed port), the rules across listeners, and what counts as the same
//! socket when a config is reloaded.
//! Must never: open a socket or read the certificate files (the server does,
//! at start, at `--check-config` and on reload).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, values};

/// Where wshub listens when the file has no `[[listener]]`.
pub(super) const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "ListenerTable")]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// `Some` for a wss:// (TLS) listener, `None` for plain ws://.
    pub tls: Option<ListenerTls>,
    /// Bind with `SO_REUSEPORT`, so that several processes share the
    /// address and the kernel spreads new connections among them.
    pub reuse_port: bool,
}

impl ListenerConfig {
    /// A plain (ws://) listener.
    pub fn plain(address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            address,
            tls: None,
            reuse_port: false,
        }
    }

    /// Whether `other` describes the same listening socket: the same
    /// address, TLS or not, and the same socket options. Anything else
    /// needs a new socket, which a reload does not make.
    pub fn same_socket(&self, other: &ListenerConfig) -> bool {
        self.address == other.address
            && self.tls.is_some() == other.tls.is_some()
            && self.reuse_port == other.reuse_port
    }
}

/// The socket as a log line shows it: `127.0.0.1:8080`, followed by
/// ` (tls, reuse_port)` for whichever of the two it has.
impl std::fmt::Display for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.address)?;
        match (self.tls.is_some(), self.reuse_port) {
            (false, false) => Ok(()),
            (true, false) => f.write_str(" (tls)"),
            (false, true) => f.write_str(" (reuse_port)"),
            (true, true) => f.write_str(" (tls, reuse_port)"),
        }
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
    /// After the handshake, hand the record layer to the kernel (kTLS)
    /// where it can take it; user-space TLS otherwise.
    pub ktls: bool,
}

/// A `[[listener]]` table as written: flat, with the TLS keys optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTable {
    #[serde(deserialize_with = "values::socket_addr")]
    address: SocketAddr,
    #[serde(default)]
    tls: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    alpn: Option<bool>,
    ktls: Option<bool>,
    #[serde(default)]
    reuse_port: bool,
}

impl TryFrom<ListenerTable> for ListenerConfig {
    type Error = ConfigError;

    /// `cert` and `key` are required with `tls = true` and refused without
    /// it, as are `alpn` and `ktls`, so a half-configured TLS listener never serves
    /// plain ws:// by mistake.
    ///
    /// `reuse_port` needs a fixed port: with port 0 every process would be
    /// given a port of its own, and nothing would be shared.
    fn try_from(table: ListenerTable) -> Result<ListenerConfig, ConfigError> {
        let address = table.address;
        let reuse_port = table.reuse_port;
        if reuse_port && address.port() == 0 {
            return Err(ConfigError::invalid(
                "listener.reuse_port",
                format!(
                    "needs a fixed port on listener {address}: with port 0 each process gets a port of its own"
                ),
            ));
        }
        if !table.tls {
            let set = [
                ("listener.cert", table.cert.is_some()),
                ("listener.key", table.key.is_some()),
                ("listener.alpn", table.alpn.is_some()),
                ("listener.ktls", table.ktls.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(ConfigError::invalid(
                    key,
                    format!("is set on listener {address}, which does not have tls = true"),
                ));
            }
            return Ok(ListenerConfig {
                reuse_port,
                ..ListenerConfig::plain(address)
            });
        }
        let required = |value: Option<PathBuf>, key: &str| {
            value.filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    format!("is required on listener {address}, which has tls = true"),
                )
            })
        };
        Ok(ListenerConfig {
            address,
            tls: Some(ListenerTls {
                cert: required(table.cert, "listener.cert")?,
                key: required(table.key, "listener.key")?,
                alpn: table.alpn.unwrap_or(true),
                ktls: table.ktls.unwrap_or(false),
            }),
            reuse_port,
        })
    }
}

/// At least one listener, and no address twice.
pub(super) fn check_listeners(listeners: &[ListenerConfig]) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return Err(ConfigError::invalid(
            "listener",
            format!(
                "at least one [[listener]] is required (omit the key entirely to use {DEFAULT_ADDRESS})"
            ),
        ));
    }
    let mut seen = HashSet::new();
    for l in listeners {
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

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::{invalid_key, parse_err};
    use super::*;

    #[test]
    fn listener_needs_address() {
        let msg = parse_err("[[listener]]\n");
        assert!(msg.contains("address"), "{msg}");
    }

    #[test]
    fn unknown_listener_key_names_key_and_line() {
        let msg = parse_err("[[listener]]\naddress = \"127.0.0.1:1\"\nadress = \"x\"\n");
        assert!(msg.contains("adress"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
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
                ktls: false,
            })
        );
        let no_alpn = format!("{text}alpn = false\n");
        let c = Config::from_toml_str(&no_alpn).unwrap();
        assert!(c.listeners[1].tls.as_ref().is_some_and(|t| !t.alpn));
        let ktls = format!("{text}ktls = true\n");
        let c = Config::from_toml_str(&ktls).unwrap();
        assert!(c.listeners[1].tls.as_ref().is_some_and(|t| t.ktls));
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
            ("ktls = true\n", "listener.ktls"),
        ] {
            // Reported while parsing, so the message also has the line.
            let msg = parse_err(&format!("{base}{extra}"));
            assert!(msg.contains(&format!("`{key}`")), "{extra}: {msg}");
            assert!(msg.contains("127.0.0.1:8443"), "{msg}");
            assert!(msg.contains("line 1"), "{msg}");
        }
    }

    #[test]
    fn reuse_port_is_off_unless_set() {
        let base = "[[listener]]\naddress = \"127.0.0.1:9000\"\n";
        let c = Config::from_toml_str(base).unwrap();
        assert!(!c.listeners[0].reuse_port);
        let c = Config::from_toml_str(&format!("{base}reuse_port = true\n")).unwrap();
        assert!(c.listeners[0].reuse_port);
        assert_eq!(c.listeners[0].tls, None);
        let tls =
            format!("{base}reuse_port = true\ntls = true\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
        let c = Config::from_toml_str(&tls).unwrap();
        assert!(c.listeners[0].reuse_port && c.listeners[0].tls.is_some());
    }

    #[test]
    fn reuse_port_needs_a_fixed_port_and_a_boolean() {
        let msg = parse_err("[[listener]]\naddress = \"127.0.0.1:0\"\nreuse_port = true\n");
        assert!(msg.contains("`listener.reuse_port`"), "{msg}");
        assert!(msg.contains("fixed port"), "{msg}");
        // Port 0 without it stays fine.
        let c =
            Config::from_toml_str("[[listener]]\naddress = \"127.0.0.1:0\"\nreuse_port = false\n");
        assert!(c.is_ok());
        let msg = parse_err("[[listener]]\naddress = \"127.0.0.1:1\"\nreuse_port = \"yes\"\n");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn same_socket_compares_address_tls_and_reuse_port_only() {
        let plain = ListenerConfig::plain("127.0.0.1:9000".parse().unwrap());
        let tls = |cert: &str| ListenerConfig {
            tls: Some(ListenerTls {
                cert: cert.into(),
                key: "k.pem".into(),
                alpn: true,
                ktls: false,
            }),
            ..plain.clone()
        };
        assert!(plain.same_socket(&plain));
        // New certificate files are the same socket (they reload live).
        assert!(tls("a.pem").same_socket(&tls("b.pem")));
        assert!(!plain.same_socket(&tls("a.pem")));
        let shared = ListenerConfig {
            reuse_port: true,
            ..plain.clone()
        };
        assert!(!plain.same_socket(&shared));
        let moved = ListenerConfig::plain("127.0.0.1:9001".parse().unwrap());
        assert!(!plain.same_socket(&moved));
    }

    #[test]
    fn listener_shows_address_and_options() {
        let plain = ListenerConfig::plain("127.0.0.1:9000".parse().unwrap());
        assert_eq!(plain.to_string(), "127.0.0.1:9000");
        let shared = ListenerConfig {
            reuse_port: true,
            ..plain.clone()
        };
        assert_eq!(shared.to_string(), "127.0.0.1:9000 (reuse_port)");
        let both = ListenerConfig {
            tls: Some(ListenerTls {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                alpn: true,
                ktls: false,
            }),
            ..shared
        };
        assert_eq!(both.to_string(), "127.0.0.1:9000 (tls, reuse_port)");
    }
}
