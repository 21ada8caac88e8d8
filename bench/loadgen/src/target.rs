//! Target URLs (`ws://`, `wss://` and `http://`) and the loopback-only rule.
//!
//! The load generator only ever talks to servers on this machine: a host
//! that is not a loopback IP literal (127.0.0.0/8 or ::1) is refused before
//! any socket is opened. `localhost` is accepted and taken as 127.0.0.1
//! without asking a resolver, so no name lookup can lead elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use url::{Host, Url};

use crate::error::{Fail, Result};

/// A parsed URL of one of the two supported schemes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header value: the URL's host and port.
    pub host: String,
    /// The host alone (an IPv6 address without brackets): the name a TLS
    /// server's certificate must carry.
    pub server_name: String,
    /// Path (with query, if any), always starting with `/`.
    pub path: String,
    /// The URL was `wss://`: connections run over TLS.
    pub wss: bool,
    /// Set for `wss://` once the trusted certificate is known (`--ca`).
    pub tls: Option<TlsClient>,
}

/// What a TLS client connection needs: the trust anchors and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &TlsClient) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.name == other.name
    }
}

impl Eq for TlsClient {}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.name)
    }
}

impl TlsClient {
    /// Trusts exactly the certificates in the PEM file `ca` (the
    /// benchmark's self-signed one) for a server named `server_name`.
    pub fn load(ca: &Path, server_name: &str) -> Result<TlsClient> {
        let pem =
            std::fs::read(ca).map_err(|e| Fail::usage(format!("--ca {}: {e}", ca.display())))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| Fail::usage(format!("--ca {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| Fail::usage(format!("--ca {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(Fail::usage(format!(
                "--ca {}: no certificate in the file",
                ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Fail::usage(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| Fail::usage(format!("{server_name:?} is not a TLS server name: {e}")))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }
}

/// Parses `ws://HOST[:PORT]/PATH` or `wss://HOST[:PORT]/PATH` (the TLS
/// settings are added by the caller, see [`TlsClient::load`]).
pub fn parse_ws(url: &str) -> Result<Target> {
    parse(url, &["ws", "wss"])
}

/// Parses `http://HOST[:PORT]/PATH`.
pub fn parse_http(url: &str) -> Result<Target> {
    parse(url, &["http"])
}

/// Parses with the `url` crate, then applies the loopback rule.
fn parse(text: &str, schemes: &[&str]) -> Result<Target> {
    let expected = || format!("expected a {}:// URL", schemes.join(":// or "));
    let url =
        Url::parse(text).map_err(|e| Fail::usage(format!("{text:?}: {e}; {}", expected())))?;
    if !schemes.contains(&url.scheme()) {
        return Err(Fail::usage(format!("{text:?}: {}", expected())));
    }
    let off_machine = |what: String| {
        Fail::usage(format!(
            "{text:?}: {what}; loadgen never sends traffic off this machine"
        ))
    };
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        Some(Host::Domain(name)) => {
            return Err(off_machine(format!(
                "host {name:?} must be a loopback IP address (127.0.0.0/8 or ::1) or localhost"
            )));
        }
        None => return Err(Fail::usage(format!("{text:?}: no host"))),
    };
    if !ip.is_loopback() {
        return Err(off_machine(format!(
            "{ip} is not a loopback address (127.0.0.0/8 or ::1)"
        )));
    }
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        },
        server_name: match url.host() {
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => host.to_owned(),
        },
        path,
        wss: url.scheme() == "wss",
        tls: None,
    })
}

/// The publish URL that goes with a subscription URL: same server,
/// `/publish/<channel>` where the channel is the last path segment.
pub fn publish_url_for(ws: &Target) -> Target {
    let channel = ws.path.rsplit('/').next().unwrap_or_default();
    Target {
        addr: ws.addr,
        host: ws.host.clone(),
        server_name: ws.server_name.clone(),
        path: format!("/publish/{channel}"),
        wss: false,
        tls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = parse_ws("ws://127.0.0.1:9001/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path, "/echo");
        let t = parse_ws("ws://[::1]:9/live/x").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/live/x");
        let t = parse_http("http://127.8.9.10/publish/a").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = parse_ws("ws://localhost:1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:1".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = parse_ws("wss://[::1]:8443/live?channel=a").unwrap();
        assert_eq!(t.host, "[::1]:8443");
        assert_eq!(t.server_name, "::1");
        assert_eq!(t.path, "/live?channel=a");
        assert!(t.wss);
        assert_eq!(parse_ws("ws://127.0.0.1/").unwrap().host, "127.0.0.1");
    }

    #[test]
    fn refuses_anything_off_the_machine() {
        for url in [
            "ws://10.0.0.1:80/echo",
            "ws://192.168.1.1/echo",
            "ws://8.8.8.8:80/",
            "ws://example.com:80/",
            "ws://[2001:db8::1]:80/",
            "ws://[::ffff:127.0.0.1]:80/",
            "ws://0.0.0.0:80/",
        ] {
            let err = parse_ws(url).unwrap_err();
            assert_eq!(err.code, 2, "{url}");
        }
    }

    #[test]
    fn rejects_wrong_scheme_and_garbage() {
        assert!(parse_ws("http://127.0.0.1/").is_err());
        assert!(parse_ws("wss://127.0.0.1:9/").is_ok_and(|t| t.wss && t.tls.is_none()));
        assert!(parse_ws("wss://192.0.2.1:9/").is_err());
        assert!(parse_http("ws://127.0.0.1/").is_err());
        assert!(parse_ws("ws://127.0.0.1:notaport/").is_err());
        assert!(parse_ws("ws://:80/").is_err());
        // A bare IPv6 address is not split at a guessed port colon.
        assert!(parse_ws("ws://::1:80/").is_err());
        assert!(parse_ws("ws://127.0.0.1:65536/").is_err());
    }

    #[test]
    fn derives_publish_url() {
        let t = parse_ws("ws://127.0.0.1:5/live/bench").unwrap();
        let p = publish_url_for(&t);
        assert_eq!(p.path, "/publish/bench");
        assert_eq!(p.addr, t.addr);
    }
}
