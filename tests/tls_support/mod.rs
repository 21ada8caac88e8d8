//! Helpers for the wss:// tests: self-signed certificates generated with
//! rcgen, written to a temporary directory, and clients that trust them
//! (rustls under tungstenite, or rustls under a raw stream).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;

/// Bound for any single blocking socket operation in these tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The name every test certificate is issued for.
pub const SERVER_NAME: &str = "localhost";

/// Where a test's certificates and keys are written.
pub use crate::tempdir::TempDir as CertDir;

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
    pub fn write_to(&self, dir: &CertDir) -> (PathBuf, PathBuf) {
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

pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
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

/// Reads until the server closes; returns what came, or panics if the
/// connection is still open after `IO_TIMEOUT`.
pub fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
}
