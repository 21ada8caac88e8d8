//! wss:// on an in-process server: echo and broadcast over TLS beside a
//! plain listener, a handshake arriving one byte at a time, plaintext and
//! garbage on the TLS port, the handshake timeout, and the connection limit.

mod common;
mod tempdir;
mod tls_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{RawClient, broadcast_config, test_config, upgrade_request};
use tls_support::{
    CertDir, Identity, Trickle, client_config, connect_tcp, read_until_closed, tls_over,
    wss_connect,
};
use tungstenite::Message;
use wshub::config::{ClientMessages, Config, ListenerConfig, ListenerTls};
use wshub::server::{Server, ServerHandle};

/// A server with a plain listener and a TLS one, on its own thread.
struct DualServer {
    plain: SocketAddr,
    tls: SocketAddr,
    identity: Identity,
    handle: ServerHandle,
    done: mpsc::Receiver<()>,
    _dir: CertDir,
}

impl DualServer {
    fn start(mut config: Config) -> DualServer {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = CertDir::new("server");
        let identity = Identity::new(&[0x01, 0x23]);
        let (cert, key) = identity.write_to(&dir);
        config.listeners = vec![
            ListenerConfig::plain("127.0.0.1:0".parse().unwrap()),
            ListenerConfig {
                address: "127.0.0.1:0".parse().unwrap(),
                tls: Some(ListenerTls {
                    cert,
                    key,
                    alpn: true,
                }),
            },
        ];
        config.validate().unwrap();
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let server = Server::bind(config).expect("bind the test server");
            let _ = ready_tx.send((server.local_endpoints(), server.handle()));
            server.run().expect("server loop failed");
            let _ = done_tx.send(());
        });
        let (endpoints, handle) = ready.recv().expect("the test server did not start");
        assert_eq!(endpoints.len(), 2);
        assert!(!endpoints[0].1 && endpoints[1].1, "{endpoints:?}");
        DualServer {
            plain: endpoints[0].0,
            tls: endpoints[1].0,
            identity,
            handle,
            done,
            _dir: dir,
        }
    }

    fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        client_config(&[&self.identity.der], false)
    }
}

impl Drop for DualServer {
    fn drop(&mut self) {
        self.handle.stop();
        let stopped = self.done.recv_timeout(Duration::from_secs(10));
        if !std::thread::panicking() {
            stopped.expect("the server loop did not stop");
        }
    }
}

#[test]
fn wss_echo_with_tungstenite_beside_plain_ws() {
    let server = DualServer::start(test_config());
    let mut ws = wss_connect(connect_tcp(server.tls), server.client_config(), "/echo");
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for text in ["hello over tls", "", "second"] {
        ws.send(Message::text(text)).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
    }
    // Bigger than one TLS record and than the server's read buffer.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));

    // The plain listener serves ws:// at the same time.
    let mut plain = RawClient::open(server.plain, "/echo");
    plain.send_text("plain");
    assert_eq!(plain.expect_text(), "plain");

    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

#[test]
fn wss_echo_over_tls12() {
    let server = DualServer::start(test_config());
    let config = client_config(&[&server.identity.der], true);
    let mut ws = wss_connect(connect_tcp(server.tls), config, "/echo");
    assert_eq!(
        ws.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    ws.send(Message::text("twelve")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("twelve"));
}

#[test]
fn broadcast_over_tls_reaches_tls_and_plain_subscribers() {
    let server = DualServer::start(broadcast_config(ClientMessages::Broadcast, false));
    let mut tls_subscribers: Vec<_> = (0..4)
        .map(|_| {
            wss_connect(
                connect_tcp(server.tls),
                server.client_config(),
                "/live/news",
            )
        })
        .collect();
    let mut plain_subscriber = RawClient::open(server.plain, "/live/news");
    let mut sender = wss_connect(
        connect_tcp(server.tls),
        server.client_config(),
        "/live/news",
    );
    // Subscriptions are in place once each handshake answered; the sender's
    // message goes to everyone but itself.
    for i in 0..20 {
        let text = format!("message {i}");
        sender.send(Message::text(text.clone())).unwrap();
        for (n, ws) in tls_subscribers.iter_mut().enumerate() {
            assert_eq!(ws.read().unwrap(), Message::text(text.clone()), "tls {n}");
        }
        assert_eq!(plain_subscriber.expect_text(), text);
    }
    // A large message is shared as one frame and encrypted per connection.
    let big = "x".repeat(100_000);
    sender.send(Message::text(big.clone())).unwrap();
    for ws in &mut tls_subscribers {
        assert_eq!(ws.read().unwrap(), Message::text(big.clone()));
    }
    assert_eq!(plain_subscriber.expect_text(), big);
}

#[test]
fn tls_handshake_in_one_byte_writes() {
    let server = DualServer::start(test_config());
    let mut ws = wss_connect(
        Trickle(connect_tcp(server.tls)),
        server.client_config(),
        "/echo",
    );
    ws.send(Message::text("one byte at a time")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("one byte at a time"));
}

#[test]
fn plaintext_on_the_tls_port_is_dropped_without_an_http_answer() {
    let server = DualServer::start(test_config());
    let request = upgrade_request("/echo", "localhost", "dGhlIHNhbXBsZSBub25jZQ==");
    let mut tcp = connect_tcp(server.tls);
    tcp.write_all(request.as_bytes()).unwrap();
    let answer = read_until_closed(&mut tcp);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // At most a TLS alert record.
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");

    let mut tcp = connect_tcp(server.tls);
    let garbage: Vec<u8> = (0..500u32).map(|i| (i * 131 + 17) as u8).collect();
    let _ = tcp.write_all(&garbage);
    read_until_closed(&mut tcp);

    // The server carries on.
    let mut ws = wss_connect(connect_tcp(server.tls), server.client_config(), "/echo");
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
}

#[test]
fn handshake_timeout_covers_the_tls_handshake() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = DualServer::start(config);
    // Silent after connecting.
    let started = Instant::now();
    let mut silent = connect_tcp(server.tls);
    assert!(read_until_closed(&mut silent).is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));

    // Half a ClientHello, then nothing.
    let mut half = connect_tcp(server.tls);
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    read_until_closed(&mut half);
    assert!(started.elapsed() < Duration::from_secs(3));

    // A TLS handshake done, but no HTTP request after it.
    let mut idle = tls_over(connect_tcp(server.tls), server.client_config());
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn over_capacity_tls_connections_are_closed_without_plaintext() {
    let mut config = test_config();
    config.max_connections = 1;
    let server = DualServer::start(config);
    let mut first = wss_connect(connect_tcp(server.tls), server.client_config(), "/echo");
    first.send(Message::text("first")).unwrap();
    assert_eq!(first.read().unwrap(), Message::text("first"));

    let mut refused = connect_tcp(server.tls);
    let answer = read_until_closed(&mut refused);
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));

    first.send(Message::text("unaffected")).unwrap();
    assert_eq!(first.read().unwrap(), Message::text("unaffected"));
}
