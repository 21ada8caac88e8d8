//! wss:// on an in-process server: echo and broadcast over TLS beside a
//! plain listener, a handshake arriving one byte at a time, plaintext and
//! garbage on the TLS port, the handshake timeout, and the connection limit.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tungstenite::Message;
use wshub::config::ClientMessages;

use crate::support::client::{RawClient, connect_tcp, read_until_closed, upgrade_request};
use crate::support::server::{TestServer, broadcast_config, test_config};
use crate::support::tempdir::TempDir;
use crate::support::tls::{
    DualServer, Identity, Trickle, client_config, tls_listener, tls_over, wss_connect,
};

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

/// With `ktls = true` each connection tries the kernel after its
/// handshake; where the kernel lacks the `tls` module (the machines these
/// tests run on) it stays in user space and serves as without, TLS 1.3 and
/// 1.2 alike; where the kernel has it, the same exchange runs through kTLS.
#[test]
fn wss_with_ktls_asked_serves_either_way() {
    let dir = TempDir::new("ktls");
    let identity = Identity::new(&[0x4b]);
    let mut listener = tls_listener(&identity, &dir);
    if let Some(tls) = listener.tls.as_mut() {
        tls.ktls = true;
    }
    let mut config = test_config();
    config.listeners = vec![listener];
    let server = TestServer::with_config(config);
    let address = server.endpoints[0].0;
    for tls12_only in [false, true] {
        let config = client_config(&[&identity.der], tls12_only);
        let mut ws = wss_connect(connect_tcp(address), config, "/echo");
        for text in ["over ktls or not", ""] {
            ws.send(Message::text(text)).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(text));
        }
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 13) as u8).collect();
        ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(big));
        ws.close(None).unwrap();
        // The close handshake completes; the TLS close under it may be a
        // close_notify (user space) or a bare FIN (kernel).
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break;
                }
                Err(e) => panic!("unclean close: {e}"),
            }
        }
    }
}
