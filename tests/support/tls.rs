//! wss:// for the tests: self-signed certificates generated with rcgen and
//! written to a temporary directory, clients that trust them (rustls under
//! tungstenite, or rustls under a raw stream), and an in-process server with
//! a plain and a TLS listener.
//!
//! Certificates are made for `localhost` only and trusted by nothing but
//! the test's own clients.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;
use wshub::config::{Config, ListenerConfig, ListenerTls};

use super::server::TestServer;
use super::tempdir::TempDir;

/// The name every test certificate is issued for.
pub const SERVER_NAME: &str = "localhost";

/// A self-signed certificate for `localhost` and its key, as PEM and DER.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: Vec<u8>,
}

impl Identity {
    /// A new key and certificate with the given serial number.
    pub fn new(serial: &[u8]) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        let cert = params.self_signed(&key).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: serial.to_vec(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write_to(&self, dir: &TempDir) -> (PathBuf, PathBuf) {
        (
            dir.write("cert.pem", &self.cert_pem),
            dir.write("key.pem", &self.key_pem),
        )
    }
}

/// A client config trusting exactly `roots`, offering ALPN `http/1.1`.
pub fn client_config(roots: &[&CertificateDer<'static>], tls12_only: bool) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A socket that sends every write one byte at a time, each in its own
/// segment with a pause after it, so the server sees the TLS handshake
/// (and everything after) arrive in 1-byte pieces.
pub struct Trickle(pub TcpStream);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(first) = buf.first() else {
            return Ok(0);
        };
        self.0.write_all(&[*first])?;
        std::thread::sleep(Duration::from_micros(200));
        Ok(1)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

pub type TlsStream<S> = StreamOwned<ClientConnection, S>;

/// TLS over `sock` to `localhost`, handshake completed.
pub fn tls_over<S: Read + Write>(sock: S, config: Arc<ClientConfig>) -> TlsStream<S> {
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// A WebSocket over TLS on `path`, opened with tungstenite's client.
pub fn wss_connect<S: Read + Write>(
    sock: S,
    config: Arc<ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream<S>> {
    let stream = tls_over(sock, config);
    let url = format!("wss://{SERVER_NAME}{path}");
    let (socket, response) = tungstenite::client(url.as_str(), stream).unwrap();
    assert_eq!(response.status().as_u16(), 101);
    socket
}

/// The certificate the server presented on `socket`.
pub fn peer_cert<S: Read + Write>(stream: &TlsStream<S>) -> CertificateDer<'static> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server sent a certificate")
        .clone()
        .into_owned()
}

/// A loopback TLS listener on a free port serving `identity`, whose files
/// are written to `dir`.
pub fn tls_listener(identity: &Identity, dir: &TempDir) -> ListenerConfig {
    let (cert, key) = identity.write_to(dir);
    ListenerConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        tls: Some(ListenerTls {
            cert,
            key,
            alpn: true,
            ktls: false,
        }),
        reuse_port: false,
    }
}

/// An in-process server with a plain listener and a TLS one, serving a
/// certificate of its own; stopped on drop like any `TestServer`.
pub struct DualServer {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub identity: Identity,
    _server: TestServer,
    _dir: TempDir,
}

impl DualServer {
    /// Runs `config` with its listeners replaced by a plain and a TLS one,
    /// both on ephemeral loopback ports.
    pub fn start(mut config: Config) -> DualServer {
        let dir = TempDir::new("server");
        let identity = Identity::new(&[0x01, 0x23]);
        config.listeners = vec![
            ListenerConfig::plain("127.0.0.1:0".parse().unwrap()),
            tls_listener(&identity, &dir),
        ];
        let server = TestServer::with_config(config);
        let endpoints = &server.endpoints;
        assert_eq!(endpoints.len(), 2);
        assert!(!endpoints[0].1 && endpoints[1].1, "{endpoints:?}");
        DualServer {
            plain: endpoints[0].0,
            tls: endpoints[1].0,
            identity,
            _server: server,
            _dir: dir,
        }
    }

    /// A client config trusting this server's certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&[&self.identity.der], false)
    }
}
