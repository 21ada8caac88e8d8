//! The TLS stream over real loopback sockets: handshakes, echo of every
//! size, garbage, EOF and close_notify, a stalled reader, sizes and heap
//! held, and config errors.

use super::*;

use std::fs;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const LISTENER: Token = Token(0);
const CONN: Token = Token(1);
/// Every test gives up after this long instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

// Fixed test-only keys (generated with openssl for these tests, protect
// nothing): rcgen with ring cannot generate RSA keys, and ring signs only
// from PKCS#8, so each key is here in the form rcgen signs the test
// certificate with (PKCS#8) and the form the server loads (PKCS#1, SEC1).
const RSA_KEY_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIEoAIBAAKCAQEAwGjmat+zOO/4NIsTC0kzE4rp7IEPiPNnhjfFjox93vf9gUIq
boWBxC0RFn1/dZTtAn6yxyg2CVajx/PG7JzadE4J5ND7gsXJqJijlIv7UqdhJKQL
ONIPlYF12ddU0+MWAEIuEGX77UXVbq67HgKz5JWdPqe34AGBdb74sPLT1x4sfY4A
cxiolvHBJEASIAeXPX7T0/rimM01zljJ3+bSyWkW5G8HLlPmbC7G/MtrKoZy57Fl
gme022LeK6X5n9m87B50sTmLRYSgUlHH7pvjg4idr040W03cFppLGAQURlg7OvtQ
SWpy5m/8nVD+ctRtZpf5/A9q5EkORSx0BtkywwIDAQABAoIBAFWXFFCcXBxK2y18
ZCdUE41w8OgM7T0tkXKqIo5rvp5N0I4MQdXSO8xpg71ubCGA8wF2HM7s+0SiLs8G
iQm+KIsuH8aSlB8zHqaJ59JvhofY/ySOeJN5FgeahDM4T3rF/IZ26gjPZQbCVtQa
lBAggaeASmeRsgDKiq03G2eTTVrWQVdgZBzzyRYaQ8N8GOxBGjnfg/EUAh5w9rRU
w+VZOVlFM4+dkXGTrCezSiwJel2gR1XnSJCiIlMlz1/UWcSOdkSPl3ARpF/Xf3JY
uhqbiG4Js8CAhn+YBYHTWL7vFayaMz4yLbkdQAL5YOfnC84jJmTEKQWUIcNAxw+J
AZYQ65kCgYEA+0vVQHBbPUt2NIuR6WCWupQFbELXPlZib+3GjOAD8oh2LEIONbSm
w34gYQY6Wn62cPzGom11Z67EmHVE7TA7nRatZbBYtbVfDixgM0R3PB0bbKWLT2yN
kRFUSaf+9+X4njbwRzXba6PeBbT454K/lG9EI7efmAZheeHlyAGJTwUCgYEAxALk
weVJ2UE22Ie3VP5U/qwKZv2vTkl3u5m/DAsFEqdeX9AgnjNEZV2ZxEneZesuY4dM
CWTiihrewd1wx4NCY1pG5llkg5p1AyxTfN+N0WMWp3Obr5peEuRjkSzuwdgtYsrm
VtuzjGrEcLFAO8YJg9miGO/auUZcmI5ftwyj1ScCf3i89rj/QtcwaprUdEatIb6D
YBekBcbtul4M4FjPSRY+eojJNAqZwYYsE2KKm37fYsjmqolgDgjC77JQpc1QX1Qa
kTVKhVTIz+L/bzkyrBc15PdOkqCWh24r5VN+ZAK3e7yIqOmN9t7A3OvhB7Y0G9g1
nYeLsiJY7nyhDMYL9u0CgYBqD77EhFNPcZBB3j3/iZdoLqN6Uy72x544LttHovbd
vx677ZyYvdj2mI1Jv0bOE1IInP8x3hsO67c5Y59Q9d+IbyMKJbjT1VIXo3aRjU3p
zRpHBbFqdbcNtfOCbLPMxDLa0DuPKFahVmxxJhhBv8kKRUsG/1J1CnO0QOXd4MMN
5QKBgB8j5cz2l4q0Cg0glxSfEjbEM0qFG9QbXxC8qOETQvvdyG1saHM1qAulXXTP
GwZgFjpEcnRz4COS0f90RC88jQCqJTGkzL/27jVnirwW7wx6PVAaqWl4v7i8Cmv3
W2riPzLfuoPluxxBqjv8IjN6W8QhtgfYrV19WueVyIYQHi0e
-----END RSA PRIVATE KEY-----
";

const RSA_KEY_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEugIBADANBgkqhkiG9w0BAQEFAASCBKQwggSgAgEAAoIBAQDAaOZq37M47/g0
ixMLSTMTiunsgQ+I82eGN8WOjH3e9/2BQipuhYHELREWfX91lO0CfrLHKDYJVqPH
88bsnNp0Tgnk0PuCxcmomKOUi/tSp2EkpAs40g+VgXXZ11TT4xYAQi4QZfvtRdVu
rrseArPklZ0+p7fgAYF1vviw8tPXHix9jgBzGKiW8cEkQBIgB5c9ftPT+uKYzTXO
WMnf5tLJaRbkbwcuU+ZsLsb8y2sqhnLnsWWCZ7TbYt4rpfmf2bzsHnSxOYtFhKBS
Ucfum+ODiJ2vTjRbTdwWmksYBBRGWDs6+1BJanLmb/ydUP5y1G1ml/n8D2rkSQ5F
LHQG2TLDAgMBAAECggEAVZcUUJxcHErbLXxkJ1QTjXDw6AztPS2Rcqoijmu+nk3Q
jgxB1dI7zGmDvW5sIYDzAXYczuz7RKIuzwaJCb4oiy4fxpKUHzMeponn0m+Gh9j/
JI54k3kWB5qEMzhPesX8hnbqCM9lBsJW1BqUECCBp4BKZ5GyAMqKrTcbZ5NNWtZB
V2BkHPPJFhpDw3wY7EEaOd+D8RQCHnD2tFTD5Vk5WUUzj52RcZOsJ7NKLAl6XaBH
VedIkKIiUyXPX9RZxI52RI+XcBGkX9d/cli6GpuIbgmzwICGf5gFgdNYvu8VrJoz
PjItuR1AAvlg5+cLziMmZMQpBZQhw0DHD4kBlhDrmQKBgQD7S9VAcFs9S3Y0i5Hp
YJa6lAVsQtc+VmJv7caM4APyiHYsQg41tKbDfiBhBjpafrZw/MaibXVnrsSYdUTt
MDudFq1lsFi1tV8OLGAzRHc8HRtspYtPbI2REVRJp/735fieNvBHNdtro94FtPjn
gr+Ub0Qjt5+YBmF54eXIAYlPBQKBgQDEAuTB5UnZQTbYh7dU/lT+rApm/a9OSXe7
mb8MCwUSp15f0CCeM0RlXZnESd5l6y5jh0wJZOKKGt7B3XDHg0JjWkbmWWSDmnUD
LFN8343RYxanc5uvml4S5GORLO7B2C1iyuZW27OMasRwsUA7xgmD2aIY79q5RlyY
jl+3DKPVJwJ/eLz2uP9C1zBqmtR0Rq0hvoNgF6QFxu26XgzgWM9JFj56iMk0CpnB
hiwTYoqbft9iyOaqiWAOCMLvslClzVBfVBqRNUqFVMjP4v9vOTKsFzXk906SoJaH
bivlU35kArd7vIio6Y323sDc6+EHtjQb2DWdh4uyIljufKEMxgv27QKBgGoPvsSE
U09xkEHePf+Jl2guo3pTLvbHnjgu20ei9t2/HrvtnJi92PaYjUm/Rs4TUgic/zHe
Gw7rtzljn1D134hvIwoluNPVUhejdpGNTenNGkcFsWp1tw2184Jss8zEMtrQO48o
VqFWbHEmGEG/yQpFSwb/UnUKc7RA5d3gww3lAoGAHyPlzPaXirQKDSCXFJ8SNsQz
SoUb1BtfELyo4RNC+93IbWxoczWoC6VddM8bBmAWOkRydHPgI5LR/3RELzyNAKol
MaTMv/buNWeKvBbvDHo9UBqpaXi/uLwKa/dbauI/Mt+6g+W7HEGqO/wiM3pbxCG2
B9itXX1a55XIhhAeLR4=
-----END PRIVATE KEY-----
";

const EC_KEY_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIA7d5kkseEmASJpK5UrYQtgW1J+LH/hLrbnjsx6hZ2AmoAoGCCqGSM49
AwEHoUQDQgAENhRerpgRCNILbpaBbNAcVdJHUDesAnaiO22CR4VPOKj0uucoZxhS
5CVRLzK+pw6xsAezcJOR/g0cSU+SP8JNug==
-----END EC PRIVATE KEY-----
";

const EC_KEY_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDt3mSSx4SYBImkrl
SthC2BbUn4sf+EutueOzHqFnYCahRANCAAQ2FF6umBEI0gtuloFs0BxV0kdQN6wC
dqI7bYJHhU84qPS65yhnGFLkJVEvMr6nDrGwB7Nwk5H+DRxJT5I/wk26
-----END PRIVATE KEY-----
";

/// A fresh directory for one test's files, removed when dropped.
pub(in crate::server) struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wshub-tls-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Certificate and key files for "localhost", and the certificate for
/// the client's root store.
pub(in crate::server) struct Identity {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    der: CertificateDer<'static>,
}

/// A self-signed certificate with a fresh P-256 key (PKCS#8).
pub(in crate::server) fn ec_identity() -> Identity {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = TempDir::new("ec");
    Identity {
        cert: dir.write("cert.pem", &generated.cert.pem()),
        key: dir.write("key.pem", &generated.signing_key.serialize_pem()),
        der: generated.cert.der().clone(),
        _dir: dir,
    }
}

/// A self-signed certificate for a fixed key, the key file holding
/// `key_file_pem` (the same key in another encoding).
fn identity_for(signing_pkcs8: &str, key_file_pem: &str) -> Identity {
    let key = rcgen::KeyPair::from_pem(signing_pkcs8).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = TempDir::new("fixed");
    Identity {
        cert: dir.write("cert.pem", &cert.pem()),
        key: dir.write("key.pem", key_file_pem),
        der: cert.der().clone(),
        _dir: dir,
    }
}

fn client_config(
    root: &CertificateDer<'static>,
    alpn: bool,
    tls12_only: bool,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    }
    Arc::new(config)
}

/// The client's socket; with `trickle`, every write goes out one byte
/// per segment with a pause between, so the server sees the handshake
/// (and everything else) split at every possible point.
struct ClientSock {
    tcp: StdTcpStream,
    trickle: bool,
}

impl Read for ClientSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl io::Write for ClientSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.trickle {
            return self.tcp.write(buf);
        }
        for byte in buf {
            self.tcp.write_all(std::slice::from_ref(byte))?;
            thread::sleep(Duration::from_micros(300));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

type Client = StreamOwned<ClientConnection, ClientSock>;

fn connect_tcp(addr: SocketAddr) -> StdTcpStream {
    let tcp = StdTcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.set_write_timeout(Some(DEADLINE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

fn connect(addr: SocketAddr, config: Arc<ClientConfig>, trickle: bool) -> Client {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let tcp = connect_tcp(addr);
    StreamOwned::new(conn, ClientSock { tcp, trickle })
}

fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// What the server side saw of its one connection.
#[derive(Debug, Default)]
struct Report {
    /// Plaintext bytes read (and echoed).
    received: usize,
    /// A read returned Ok(0).
    clean_eof: bool,
    /// The error that ended the connection, if any.
    error: Option<io::Error>,
}

/// Accepts one connection and runs it the way the event loop does:
/// edge-triggered, driven only when the poller reports it, reads until
/// WouldBlock or a short read (to the end after a hang-up), WRITABLE
/// interest only while something is pending. Echoes what it reads; on
/// EOF, shuts down its side and ends once that is flushed.
fn serve_echo(mut listener: TcpListener, config: Arc<ServerConfig>, ktls: bool) -> Report {
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(16);
    let mut report = Report::default();
    let mut stream: Option<TlsStream> = None;
    let mut writable_interest = false;
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let mut eof = false;
    let started = Instant::now();
    loop {
        if started.elapsed() > DEADLINE {
            report.error = Some(io::ErrorKind::TimedOut.into());
            return report;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((tcp, _)) = listener.accept() {
                    if stream.is_some() {
                        continue;
                    }
                    let mut tls = TlsStream::new(config.clone(), ktls, tcp).unwrap();
                    poll.registry()
                        .register(tls.source(), CONN, Interest::READABLE)
                        .unwrap();
                    stream = Some(tls);
                }
                continue;
            }
            let Some(tls) = stream.as_mut() else {
                continue;
            };
            let read_to_end = event.is_read_closed() || event.is_error();
            if (event.is_readable() || read_to_end) && !eof {
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) => {
                            report.clean_eof = true;
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            out.extend_from_slice(&buf[..n]);
                            report.received += n;
                            if n < buf.len() && !read_to_end {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            report.error = Some(e);
                            return report;
                        }
                    }
                }
            }
            let written = write_all_possible(tls, &mut out).and_then(|()| {
                if out.is_empty() {
                    tls.flush()
                } else {
                    Ok(false)
                }
            });
            if let Err(e) = written {
                report.error = Some(e);
                return report;
            }
            if eof && out.is_empty() {
                if let Err(e) = tls.shutdown_write() {
                    report.error = Some(e);
                    return report;
                }
                if !tls.wants_write() {
                    return report;
                }
            }
            let want_write = !out.is_empty() || tls.wants_write();
            if want_write != writable_interest {
                let interest = if want_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                poll.registry()
                    .reregister(tls.source(), CONN, interest)
                    .unwrap();
                writable_interest = want_write;
            }
        }
    }
}

/// Hands `out` to the stream until it is empty or the stream blocks.
fn write_all_possible(tls: &mut TlsStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match tls.write_vectored(&[IoSlice::new(out)]) {
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs `client` against `serve_echo` and returns both outcomes.
fn with_echo_server<T: Send + 'static>(
    config: Arc<ServerConfig>,
    client: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> (Report, T) {
    with_echo_server_ktls(config, false, client)
}

/// [`with_echo_server`], offering the records to the kernel or not.
fn with_echo_server_ktls<T: Send + 'static>(
    config: Arc<ServerConfig>,
    ktls: bool,
    client: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> (Report, T) {
    let (listener, addr) = listen();
    let client = thread::spawn(move || client(addr));
    let report = serve_echo(listener, config, ktls);
    (report, client.join().unwrap())
}

/// Sends `data`, reads the echo back, closes with close_notify and
/// expects the server's close_notify in return.
fn echo_round_trip(client: &mut Client, data: &[u8]) -> Vec<u8> {
    client.write_all(data).unwrap();
    client.flush().unwrap();
    let mut echoed = vec![0; data.len()];
    client.read_exact(&mut echoed).unwrap();
    client.conn.send_close_notify();
    client.flush().unwrap();
    let mut rest = Vec::new();
    // Errors with UnexpectedEof unless the server sent close_notify.
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    echoed
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn assert_echo(identity: &Identity, len: usize, trickle: bool, tls12_only: bool) {
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let client_config = client_config(&identity.der, false, tls12_only);
    let data = pattern(len);
    let sent = data.clone();
    let (report, echoed) = with_echo_server(config, move |addr| {
        let mut client = connect(addr, client_config, trickle);
        echo_round_trip(&mut client, &sent)
    });
    assert!(report.error.is_none(), "server failed: {:?}", report.error);
    assert_eq!(report.received, len);
    assert!(report.clean_eof);
    assert!(echoed == data, "echo differs");
}

#[test]
fn echoes_one_byte() {
    assert_echo(&ec_identity(), 1, false, false);
}

#[test]
fn echoes_16_kib() {
    assert_echo(&ec_identity(), 16 * 1024, false, false);
}

#[test]
fn echoes_1_mib() {
    assert_echo(&ec_identity(), 1024 * 1024, false, false);
}

#[test]
fn echoes_over_tls12() {
    assert_echo(&ec_identity(), 16 * 1024, false, true);
}

#[test]
fn handshake_split_into_single_bytes() {
    assert_echo(&ec_identity(), 5, true, false);
}

#[test]
fn serves_rsa_pkcs1_key() {
    assert_echo(
        &identity_for(RSA_KEY_PKCS8, RSA_KEY_PKCS1),
        100,
        false,
        false,
    );
}

#[test]
fn serves_ec_sec1_key() {
    assert_echo(&identity_for(EC_KEY_PKCS8, EC_KEY_SEC1), 100, false, false);
}

#[test]
fn negotiates_http11_alpn() {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    let client_config = client_config(&identity.der, true, false);
    let (report, client_alpn) = with_echo_server(config, move |addr| {
        let mut client = connect(addr, client_config, false);
        echo_round_trip(&mut client, b"x");
        client.conn.alpn_protocol().map(<[u8]>::to_vec)
    });
    assert!(report.error.is_none(), "server failed: {:?}", report.error);
    // The client has it only if the server agreed to it.
    assert_eq!(client_alpn.as_deref(), Some(ALPN_HTTP11));
}

/// With `ktls = true` the connection tries the kernel after the
/// handshake. Where the kernel lacks the `tls` module (as on the
/// machines the tests run on) it stays in user space, counted, and
/// serves exactly as without; where the kernel takes it, the echo works
/// all the same, though our close then has no close_notify.
#[test]
fn ktls_falls_back_or_hands_over_and_echoes() {
    let identity = ec_identity();
    let client_config = client_config(&identity.der, true, false);
    for tls12_only in [false, true] {
        let config = load_server_config(&identity.cert, &identity.key, true).unwrap();
        let client_config = if tls12_only {
            super::tests::client_config(&identity.der, true, true)
        } else {
            client_config.clone()
        };
        let (fallbacks, handed_over) = ktls::counts();
        let data = pattern(100_000);
        let sent = data.clone();
        let (report, echoed) = with_echo_server_ktls(config, true, move |addr| {
            let mut client = connect(addr, client_config, false);
            client.write_all(&sent).unwrap();
            client.flush().unwrap();
            let mut echoed = vec![0; sent.len()];
            client.read_exact(&mut echoed).unwrap();
            client.conn.send_close_notify();
            client.flush().unwrap();
            // close_notify back in user space, a bare FIN from the kernel.
            let _ = client.read_to_end(&mut Vec::new());
            echoed
        });
        assert!(report.error.is_none(), "server failed: {:?}", report.error);
        assert!(report.clean_eof);
        assert!(echoed == data, "echo differs");
        let (fallbacks_now, handed_over_now) = ktls::counts();
        // Other tests run in parallel, so only "at least one more".
        assert!(
            fallbacks_now + handed_over_now > fallbacks + handed_over,
            "no kTLS attempt was made"
        );
    }
}

/// Sends `garbage` in the clear and returns what the server made of it.
fn send_garbage(garbage: &'static [u8]) -> Report {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let (report, ()) = with_echo_server(config, move |addr| {
        let mut tcp = connect_tcp(addr);
        tcp.write_all(garbage).unwrap();
        // An alert, then the end, or a reset; either is fine.
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
    });
    report
}

#[test]
fn plaintext_http_is_invalid_data() {
    let report = send_garbage(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n");
    let error = report.error.expect("the server accepted plaintext HTTP");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert_eq!(report.received, 0);
}

#[test]
fn random_bytes_are_invalid_data() {
    static GARBAGE: [u8; 200] = {
        let mut bytes = [0; 200];
        let mut i = 0;
        while i < bytes.len() {
            bytes[i] = (i * 37 + 11) as u8;
            i += 1;
        }
        bytes
    };
    let report = send_garbage(&GARBAGE);
    let error = report.error.expect("the server accepted garbage");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}

#[test]
fn close_notify_reads_as_eof() {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let client_config = client_config(&identity.der, false, false);
    let (report, ()) = with_echo_server(config, move |addr| {
        let mut client = connect(addr, client_config, false);
        while client.conn.is_handshaking() {
            client.conn.complete_io(&mut client.sock).unwrap();
        }
        client.conn.send_close_notify();
        client.flush().unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
    });
    assert!(report.error.is_none(), "server failed: {:?}", report.error);
    assert!(report.clean_eof);
    assert_eq!(report.received, 0);
}

#[test]
fn tcp_eof_after_handshake_reads_as_eof() {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let client_config = client_config(&identity.der, false, false);
    let (report, ()) = with_echo_server(config, move |addr| {
        let mut client = connect(addr, client_config, false);
        client.write_all(b"ping").unwrap();
        client.flush().unwrap();
        client.sock.tcp.shutdown(Shutdown::Write).unwrap();
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).unwrap();
        assert_eq!(echoed, b"ping");
    });
    assert!(report.error.is_none(), "server failed: {:?}", report.error);
    assert!(report.clean_eof);
    assert_eq!(report.received, 4);
}

#[test]
fn tcp_eof_during_handshake_is_unexpected() {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let (report, ()) = with_echo_server(config, move |addr| {
        let tcp = connect_tcp(addr);
        // Half a record header, then FIN.
        (&tcp).write_all(&[0x16, 0x03]).unwrap();
        tcp.shutdown(Shutdown::Write).unwrap();
        let _ = (&tcp).read_to_end(&mut Vec::new());
    });
    let error = report.error.expect("a cut handshake passed");
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    assert!(!report.clean_eof);
}

/// A reader that stops reading: the server's writes block within a
/// bounded amount, the unsent records show as `wants_write`, and
/// flushing on WRITABLE delivers every accepted byte once the reader
/// resumes.
#[test]
fn stalled_reader_blocks_writes_and_flush_finishes_them() {
    let identity = ec_identity();
    let config = load_server_config(&identity.cert, &identity.key, false).unwrap();
    let client_config = client_config(&identity.der, false, false);
    let (mut listener, addr) = listen();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let mut client = connect(addr, client_config, false);
        client.write_all(b"!").unwrap();
        client.flush().unwrap();
        go_rx.recv().unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).unwrap();
        received.len()
    });

    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(16);
    let started = Instant::now();
    let poll_once = |poll: &mut Poll, events: &mut Events| {
        assert!(started.elapsed() < DEADLINE, "timed out");
        poll.poll(events, Some(Duration::from_millis(100))).unwrap();
    };
    let mut tls = loop {
        poll_once(&mut poll, &mut events);
        if let Ok((tcp, _)) = listener.accept() {
            break TlsStream::new(config, false, tcp).unwrap();
        }
    };
    poll.registry()
        .register(tls.source(), CONN, Interest::READABLE)
        .unwrap();
    let mut buf = [0; 64];
    loop {
        poll_once(&mut poll, &mut events);
        if events.iter().any(|e| e.token() == CONN) {
            match tls.read(&mut buf) {
                Ok(1) => break,
                Ok(n) => panic!("read {n} bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(!tls.is_handshaking());

    let chunk = pattern(256 * 1024);
    let mut accepted = 0;
    loop {
        match tls.write_vectored(&[IoSlice::new(&chunk)]) {
            Ok(n) => accepted += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 256 * 1024 * 1024, "writes never blocked");
    }
    assert!(tls.wants_write());
    eprintln!("{accepted} bytes accepted before the stalled reader blocked writes");

    // Only the transport's own records are pending now, as when the
    // loop's queue is empty: WRITABLE interest and flush must finish.
    poll.registry()
        .reregister(tls.source(), CONN, Interest::READABLE | Interest::WRITABLE)
        .unwrap();
    go_tx.send(()).unwrap();
    loop {
        poll_once(&mut poll, &mut events);
        if events.iter().any(|e| e.token() == CONN && e.is_writable()) && tls.flush().unwrap() {
            break;
        }
    }
    assert!(!tls.wants_write());
    tls.shutdown_write().unwrap();
    while !tls.flush().unwrap() {
        poll_once(&mut poll, &mut events);
    }
    assert_eq!(client.join().unwrap(), accepted);
}

#[test]
fn reports_sizes() {
    // Printed for the memory notes in the module doc.
    eprintln!(
        "TlsStream {} B, UnbufferedServerConnection {} B, Transport {} B",
        size_of::<TlsStream>(),
        size_of::<UnbufferedServerConnection>(),
        size_of::<super::super::Transport>(),
    );
    // The boxed variant must not make plain connections bigger.
    assert!(size_of::<super::super::Transport>() <= 16);
}

/// Counts every allocation of the lib's test binary (a few atomic adds
/// each), so [`idle_connection_heap`] can tell what a connection holds.
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Handshakes that fill the server's session cache (256 entries; up to
/// two per TLS 1.3 handshake, one per TLS 1.2 full handshake).
const SESSION_CACHE_FILL: usize = 300;

/// What an idle connection may hold on the heap besides the
/// `TlsStream` itself: the record layer's keys (224 bytes in one block).
/// With rustls's record layer this was 3,281 bytes in 9 blocks; with its
/// buffered API about 4 KiB more.
const IDLE_HEAP_BUDGET: isize = 256;

/// Set in the child process that runs [`idle_connection_heap`] alone.
const HEAP_PROBE_ENV: &str = "WSHUB_TLS_HEAP_PROBE";

/// Heap the server side holds: bytes and blocks allocated minus freed
/// while server code ran. The client runs on the same thread between
/// those calls, so its allocations do not count.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    bytes: isize,
    blocks: isize,
}

fn server_side<R>(held: &mut Held, f: impl FnOnce() -> R) -> R {
    let region = stats_alloc::Region::new(HEAP);
    let result = f();
    let change = region.change();
    // stats_alloc already counts a realloc's growth or shrinkage in
    // these two; its `bytes_reallocated` is the same change again.
    held.bytes += change.bytes_allocated as isize - change.bytes_deallocated as isize;
    held.blocks += change.allocations as isize - change.deallocations as isize;
    result
}

/// One connection driven by a single thread: the rustls client over a
/// non-blocking std socket, our server over the accepted mio socket.
struct Pair {
    client: ClientConnection,
    sock: StdTcpStream,
    server: TlsStream,
    held: Held,
    /// Plaintext the client received while pumping.
    client_received: Vec<u8>,
}

impl Pair {
    fn open(
        listener: &TcpListener,
        server_config: &Arc<ServerConfig>,
        client_config: &Arc<ClientConfig>,
    ) -> Pair {
        let mut pair = Pair::accept(listener, server_config, client_config);
        pair.handshake();
        pair
    }

    /// Connected, the handshake not started.
    fn accept(
        listener: &TcpListener,
        server_config: &Arc<ServerConfig>,
        client_config: &Arc<ClientConfig>,
    ) -> Pair {
        let sock = connect_tcp(listener.local_addr().unwrap());
        sock.set_nonblocking(true).unwrap();
        let started = Instant::now();
        let tcp = loop {
            match listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(started.elapsed() < DEADLINE, "accept timed out");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let mut held = Held::default();
        let server = server_side(&mut held, || {
            TlsStream::new(server_config.clone(), false, tcp).unwrap()
        });
        let name = ServerName::try_from("localhost").unwrap();
        let client = ClientConnection::new(client_config.clone(), name).unwrap();
        Pair {
            client,
            sock,
            server,
            held,
            client_received: Vec::new(),
        }
    }

    fn handshake(&mut self) {
        let mut sink = Vec::new();
        self.pump(&mut sink, |p| {
            !p.client.is_handshaking() && !p.server.is_handshaking()
        });
        // The server's last flight (TLS 1.3 tickets) read by the client.
        self.pump(&mut sink, |_| true);
        assert!(sink.is_empty());
    }

    /// Everything the client can read within a short while.
    fn client_reads(&mut self, want: usize) -> Vec<u8> {
        let mut got = mem::take(&mut self.client_received);
        let started = Instant::now();
        while got.len() < want {
            assert!(started.elapsed() < DEADLINE, "client read timed out");
            match self.client.read_tls(&mut self.sock) {
                Ok(0) => break,
                Ok(_) => {
                    self.client.process_new_packets().unwrap();
                    let _ = self.client.reader().read_to_end(&mut got);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    /// Moves bytes both ways until `done` holds after a round with no
    /// progress left, collecting what the server reads.
    fn pump(&mut self, received: &mut Vec<u8>, done: impl Fn(&Pair) -> bool) {
        let started = Instant::now();
        let mut buf = vec![0; 64 * 1024];
        loop {
            assert!(started.elapsed() < DEADLINE, "pump timed out");
            let mut progress = false;
            while self.client.wants_write() {
                self.client.write_tls(&mut self.sock).unwrap();
                progress = true;
            }
            let Pair { server, held, .. } = self;
            loop {
                match server_side(held, || server.read(&mut buf)) {
                    Ok(0) => panic!("server read EOF"),
                    Ok(n) => {
                        received.extend_from_slice(&buf[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(server_side(held, || server.flush()).unwrap());
            match self.client.read_tls(&mut self.sock) {
                Ok(0) => panic!("client read EOF"),
                Ok(_) => {
                    self.client.process_new_packets().unwrap();
                    let _ = self.client.reader().read_to_end(&mut self.client_received);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if !progress && done(self) {
                return;
            }
            if !progress {
                thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// `count` messages of `size` bytes each way, one record each.
    fn exchange(&mut self, count: usize, size: usize) {
        let message = pattern(size);
        let mut received = Vec::new();
        for _ in 0..count {
            self.client.writer().write_all(&message).unwrap();
            self.pump(&mut received, |_| true);
        }
        assert_eq!(received.len(), count * size);
        let Pair { server, held, .. } = self;
        for _ in 0..count {
            let n = server_side(held, || {
                server.write_vectored(&[IoSlice::new(&message)]).unwrap()
            });
            assert_eq!(n, size);
        }
        let mut echoed = Vec::new();
        let started = Instant::now();
        while echoed.len() < count * size {
            assert!(started.elapsed() < DEADLINE, "client read timed out");
            match self.client.read_tls(&mut self.sock) {
                Ok(_) => {
                    self.client.process_new_packets().unwrap();
                    self.client.reader().read_to_end(&mut echoed).ok();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(echoed.len(), count * size);
    }
}

/// Heap held per connection by `conns` established connections, fresh,
/// after 100 messages each way and after 100 more.
fn heap_per_connection(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
    conns: usize,
) -> [Held; 3] {
    let (listener, _) = listen();
    // The loop-wide scratch buffers are allocated by the first
    // connection that uses them, and the config's session cache (TLS 1.3
    // tickets, TLS 1.2 session IDs) grows to its 256 entries and then
    // replaces old ones: neither is per connection, so both are filled
    // before counting.
    let mut warm = Pair::open(&listener, server_config, client_config);
    warm.exchange(10, 64);
    for _ in 0..SESSION_CACHE_FILL {
        drop(Pair::open(&listener, server_config, client_config));
    }
    let mut pairs: Vec<Pair> = (0..conns)
        .map(|_| Pair::open(&listener, server_config, client_config))
        .collect();
    let per_conn = |pairs: &[Pair]| Held {
        bytes: pairs.iter().map(|p| p.held.bytes).sum::<isize>() / conns as isize,
        blocks: pairs.iter().map(|p| p.held.blocks).sum::<isize>() / conns as isize,
    };
    for pair in &pairs {
        assert_eq!(pair.server.record_layer(), "own");
    }
    let fresh = per_conn(&pairs);
    for pair in &mut pairs {
        pair.exchange(100, 64);
    }
    let after = per_conn(&pairs);
    for pair in &mut pairs {
        pair.exchange(100, 64);
    }
    [fresh, after, per_conn(&pairs)]
}

fn client_config_with(
    root: &CertificateDer<'static>,
    suite: Option<rustls::SupportedCipherSuite>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![suite];
    }
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // As browsers do for wss://.
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(config)
}

/// Plaintext written before the handshake completes waits (bounded) and
/// goes out, in order, once it has.
#[test]
fn writes_during_the_handshake_wait_for_it() {
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    for tls12_only in [false, true] {
        let client_config = client_config(&identity.der, true, tls12_only);
        let (listener, _) = listen();
        let mut pair = Pair::accept(&listener, &server_config, &client_config);
        let first = pattern(1000);
        let second = pattern(SEND_BUFFER_LIMIT);
        assert_eq!(
            pair.server.write_vectored(&[IoSlice::new(&first)]).unwrap(),
            1000
        );
        // Only up to the limit is held; the rest must wait.
        let taken = pair
            .server
            .write_vectored(&[IoSlice::new(&second)])
            .unwrap();
        assert_eq!(taken, SEND_BUFFER_LIMIT - 1000);
        let blocked = pair.server.write_vectored(&[IoSlice::new(&second)]);
        assert_eq!(blocked.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(!pair.server.wants_write());
        pair.handshake();
        let mut expected = first.clone();
        expected.extend_from_slice(&second[..taken]);
        assert!(pair.client_reads(expected.len()) == expected);
        assert!(pair.server.io.early.capacity() == 0);
    }
}

/// A read into a small buffer returns it full while decrypted input is
/// left (the rest waits in the stream, not in the socket), and short
/// only once everything is handed over.
#[test]
fn small_reads_are_full_until_the_input_is_drained() {
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    let client_config = client_config(&identity.der, true, false);
    let (listener, _) = listen();
    let mut pair = Pair::open(&listener, &server_config, &client_config);
    // Within what the client buffers for sending.
    let data = pattern(60_000);
    pair.client.writer().write_all(&data).unwrap();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut pair.sock).unwrap();
    }
    // Let every record reach the server's socket.
    thread::sleep(Duration::from_millis(50));
    let mut received = Vec::new();
    let mut buf = [0; 1000];
    loop {
        match pair.server.read(&mut buf) {
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        received == data,
        "{} of {} bytes",
        received.len(),
        data.len()
    );
    assert_eq!(pair.server.io.plaintext.capacity(), 0);
    assert_eq!(pair.server.io.incoming.capacity(), 0);
}

/// A TLS 1.3 client may ask for a key update (update_requested); the
/// server's own `key_update`, encrypted under its old key, must reach the
/// client before any record under the new one, or the client cannot
/// decrypt what follows. Several writes, one slice and several at once.
#[test]
fn a_key_update_the_client_asks_for_goes_before_the_next_records() {
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    let client_config = client_config(&identity.der, true, false);
    let (listener, _) = listen();
    let mut pair = Pair::open(&listener, &server_config, &client_config);
    assert_eq!(pair.server.record_layer(), "own");
    for round in 0..3u8 {
        pair.client.refresh_traffic_keys().unwrap();
        pair.client.writer().write_all(&[round]).unwrap();
        let mut received = Vec::new();
        pair.pump(&mut received, |_| true);
        assert_eq!(received, [round]);
        let first = pattern(100);
        let second = pattern(40_000);
        let n = pair.server.write_vectored(&[IoSlice::new(&first)]).unwrap();
        assert_eq!(n, first.len());
        let slices = [IoSlice::new(&second), IoSlice::new(b"end")];
        let n = pair.server.write_vectored(&slices).unwrap();
        assert_eq!(n, second.len() + 3, "round {round}");
        assert!(pair.server.flush().unwrap());
        let want = first.len() + second.len() + 3;
        let got = pair.client_reads(want);
        assert_eq!(got.len(), want, "round {round}");
        assert!(got.ends_with(b"end"));
    }
}

/// A peer whose records carry next to no plaintext (one byte each here;
/// empty records are worse) cannot make one read decrypt without bound
/// while the rest of the loop waits: past its budget a read says
/// `Interrupted` (call again), losing nothing and reordering nothing.
#[test]
fn one_read_decrypts_a_bounded_amount_of_tiny_records() {
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    let client_config = client_config(&identity.der, true, false);
    let (listener, _) = listen();
    let mut pair = Pair::open(&listener, &server_config, &client_config);
    // Each one-byte write is one record of 22 or more bytes.
    let sent: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
    let mut queued = 0;
    'send: for byte in &sent {
        pair.client.writer().write_all(&[*byte]).unwrap();
        queued += 1;
        while pair.client.wants_write() {
            match pair.client.write_tls(&mut pair.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 'send,
                Err(e) => panic!("{e}"),
            }
        }
    }
    thread::sleep(Duration::from_millis(50));
    let mut buf = [0; 4000];
    let budget_records = read_budget(buf.len()) / 22 + 1;
    assert!(queued > 2 * budget_records, "only {queued} records sent");
    let mut received = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 10_000, "no progress");
        let before = received.len() + pair.server.io.plaintext.len();
        match pair.server.read(&mut buf) {
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                let decrypted = received.len() + pair.server.io.plaintext.len() - before;
                assert!(
                    decrypted <= budget_records,
                    "{decrypted} records in one read"
                );
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                let decrypted = received.len() + pair.server.io.plaintext.len() - before;
                assert!(
                    decrypted <= budget_records,
                    "{decrypted} records in one read"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        received.len(),
        queued,
        "every record read once the socket is drained"
    );
    assert_eq!(received, sent[..queued]);
    assert_eq!(pair.server.io.plaintext.capacity(), 0);
}

/// What an idle established connection holds on the heap, for the
/// numbers in the module doc. Runs in a child process of its own, as
/// the allocation counters are process-wide.
#[test]
fn idle_connection_heap() {
    if std::env::var_os(HEAP_PROBE_ENV).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server::tls::tests::idle_connection_heap",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HEAP_PROBE_ENV, "1")
            .output()
            .unwrap();
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the heap probe failed");
        return;
    }
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    use rustls::crypto::ring::cipher_suite as cs;
    let cases = [
        (
            "TLS 1.3 AES-128-GCM",
            Some(cs::TLS13_AES_128_GCM_SHA256),
            &rustls::version::TLS13,
        ),
        (
            "TLS 1.3 AES-256-GCM",
            Some(cs::TLS13_AES_256_GCM_SHA384),
            &rustls::version::TLS13,
        ),
        (
            "TLS 1.3 CHACHA20-POLY1305",
            Some(cs::TLS13_CHACHA20_POLY1305_SHA256),
            &rustls::version::TLS13,
        ),
        (
            "TLS 1.2 ECDHE-ECDSA-AES-128-GCM",
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            &rustls::version::TLS12,
        ),
        (
            "TLS 1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
            Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            &rustls::version::TLS12,
        ),
    ];
    for (name, suite, version) in cases {
        let client_config = client_config_with(&identity.der, suite, version);
        let [fresh, after, later] = heap_per_connection(&server_config, &client_config, 20);
        eprintln!(
            "{name}: fresh {} B in {} blocks, after 100 messages each way {} B in {} blocks",
            fresh.bytes, fresh.blocks, after.bytes, after.blocks
        );
        // Traffic leaves nothing behind: every buffer is freed once empty.
        assert!(
            later.bytes <= after.bytes && later.blocks <= after.blocks,
            "{name}: {later:?} after 200 messages, {after:?} after 100"
        );
        assert!(after.bytes <= IDLE_HEAP_BUDGET, "{name}: {after:?}");
        assert!(fresh.bytes <= IDLE_HEAP_BUDGET, "{name}: {fresh:?}");
        assert_eq!(after.blocks, 1, "{name}: {after:?}");
    }
}

#[test]
fn config_errors_name_the_problem() {
    let identity = ec_identity();
    let dir = TempDir::new("errors");
    let missing = dir.0.join("missing.pem");
    let empty = dir.write("empty.pem", "");

    match load_server_config(&missing, &identity.key, false) {
        Err(TlsConfigError::Read { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    match load_server_config(&identity.cert, &missing, false) {
        Err(TlsConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    match load_server_config(&empty, &identity.key, false) {
        Err(TlsConfigError::NoCertificate { path }) => assert_eq!(path, empty),
        other => panic!("{other:?}"),
    }
    // A key file where the certificate should be: no certificate in it.
    match load_server_config(&identity.key, &identity.key, false) {
        Err(TlsConfigError::NoCertificate { .. }) => {}
        other => panic!("{other:?}"),
    }
    // The certificate file given as the key file: a certificate without key.
    match load_server_config(&identity.cert, &identity.cert, false) {
        Err(TlsConfigError::NoKey { path }) => assert_eq!(path, identity.cert),
        other => panic!("{other:?}"),
    }
    match load_server_config(&identity.cert, &empty, false) {
        Err(TlsConfigError::NoKey { .. }) => {}
        other => panic!("{other:?}"),
    }
    let other = ec_identity();
    match load_server_config(&identity.cert, &other.key, false) {
        Err(e @ TlsConfigError::KeyMismatch { .. }) => {
            let message = e.to_string();
            assert!(message.contains("does not match"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let broken = dir.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    match load_server_config(&broken, &identity.key, false) {
        Err(TlsConfigError::Pem { path, .. }) => assert_eq!(path, broken),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_takes_cert_and_key_from_one_file() {
    let identity = ec_identity();
    let dir = TempDir::new("combined");
    let combined = format!(
        "{}{}",
        fs::read_to_string(&identity.cert).unwrap(),
        fs::read_to_string(&identity.key).unwrap()
    );
    let both = dir.write("both.pem", &combined);
    let config = load_server_config(&both, &both, true).unwrap();
    assert_eq!(config.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
}

/// Once our record layer has the connection, a record that fails
/// authentication ends it with a bad_record_mac alert the client reads,
/// and the read says why.
#[test]
fn a_forged_record_after_the_handshake_gets_bad_record_mac() {
    let identity = ec_identity();
    let server_config = load_server_config(&identity.cert, &identity.key, true).unwrap();
    for tls12_only in [false, true] {
        let client_config = client_config(&identity.der, true, tls12_only);
        let (listener, _) = listen();
        let mut pair = Pair::open(&listener, &server_config, &client_config);
        pair.exchange(2, 64);
        assert_eq!(pair.server.record_layer(), "own");
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        pair.sock.write_all(&forged).unwrap();
        let started = Instant::now();
        let mut buf = [0; 256];
        let err = loop {
            assert!(started.elapsed() < DEADLINE, "no error from the server");
            match pair.server.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => break e,
                Ok(n) => panic!("read {n} bytes of a forged record"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("authentication"), "{err}");
        let alert = loop {
            assert!(started.elapsed() < DEADLINE, "no alert at the client");
            match pair.client.read_tls(&mut pair.sock) {
                Ok(_) => {
                    if let Err(e) = pair.client.process_new_packets() {
                        break e;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            alert,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        );
    }
}
