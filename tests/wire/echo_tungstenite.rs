//! The echo route as seen by an independent client implementation
//! (tungstenite): boundary message sizes up to the default 16 MiB limit,
//! the limit itself, ping/pong, and a clean closing handshake.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error, Message, WebSocket};

use crate::support::client::{
    IO_TIMEOUT, RawClient, apply_mask, assert_switching_protocols, client_frame, code,
    frame_header, fresh_key, next_mask, op, upgrade_request,
};
use crate::support::data::{binary_payload, text_payload};
use crate::support::server::TestServer;

const MIB: usize = 1024 * 1024;
const DEFAULT_LIMIT: usize = 16 * MIB;

/// A tungstenite client on `/echo`, able to receive messages over 16 MiB.
fn connect(server: &TestServer) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap();
    // Generous: a 16 MiB round trip through unoptimised builds takes a while.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(32 * MIB))
        .max_frame_size(Some(32 * MIB));
    let (ws, response) =
        tungstenite::client::client_with_config(server.url("/echo"), stream, Some(config))
            .expect("tungstenite handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Reads the next data message, skipping nothing: any other message fails.
fn read_data(ws: &mut WebSocket<TcpStream>) -> Message {
    match ws.read().expect("read echo") {
        m @ (Message::Text(_) | Message::Binary(_)) => m,
        other => panic!("expected a data message, got {other:?}"),
    }
}

/// Sends our close and reads until tungstenite reports the handshake done.
fn close_cleanly(mut ws: WebSocket<TcpStream>) {
    ws.close(None).expect("send close");
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                if let Some(frame) = frame {
                    assert_eq!(frame.code, CloseCode::Normal);
                }
            }
            Ok(other) => panic!("unexpected message during close: {other:?}"),
            Err(Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    // The server also closed TCP.
    let mut stream = ws.into_inner();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut stream, &mut byte).expect("read after close");
    assert_eq!(n, 0, "server must close TCP after the closing handshake");
}

const SIZES: [usize; 6] = [0, 125, 126, 65_535, 65_536, DEFAULT_LIMIT];

#[test]
fn text_messages_of_boundary_sizes_up_to_16_mib_are_echoed() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    for len in SIZES {
        let text = text_payload(len);
        ws.send(Message::text(text.clone())).unwrap();
        match read_data(&mut ws) {
            Message::Text(echo) => {
                assert_eq!(echo.len(), len);
                assert!(echo.as_str() == text, "text of length {len} differs");
            }
            other => panic!("expected text, got {:?}", other.len()),
        }
    }
    close_cleanly(ws);
}

#[test]
fn binary_messages_of_boundary_sizes_up_to_16_mib_are_echoed() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    for len in SIZES {
        let data = binary_payload(len, 11);
        ws.send(Message::binary(data.clone())).unwrap();
        match read_data(&mut ws) {
            Message::Binary(echo) => {
                assert_eq!(echo.len(), len);
                assert!(echo[..] == data[..], "binary of length {len} differs");
            }
            other => panic!("expected binary, got {:?}", other.len()),
        }
    }
    close_cleanly(ws);
}

#[test]
fn ping_from_tungstenite_gets_matching_pong() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
    close_cleanly(ws);
}

#[test]
fn close_from_tungstenite_completes_cleanly() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(read_data(&mut ws), Message::text("hello"));
    close_cleanly(ws);
}

#[test]
fn message_one_byte_over_16_mib_is_refused_by_tungstenite_client() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    let data = binary_payload(DEFAULT_LIMIT + 1, 0);
    // The server may fail the connection before the whole frame is written,
    // in which case the write itself reports the broken connection.
    let sent = ws.send(Message::binary(data));
    let mut observed_code = None;
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                observed_code = frame.map(|f| u16::from(f.code));
            }
            Ok(other) => panic!("nothing but a close may follow: {:?}", other.len()),
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => break,
            Err(Error::Io(e))
                if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
            {
                break;
            }
            Err(e) => panic!("unexpected error after oversized message: {e} (send: {sent:?})"),
        }
    }
    eprintln!("send result: {sent:?}; close code seen by tungstenite: {observed_code:?}");
    if let Some(code) = observed_code {
        assert_eq!(code, code::MESSAGE_TOO_BIG);
    } else {
        assert!(sent.is_err(), "the server must not accept the message");
    }
}

#[test]
fn frame_one_byte_over_16_mib_is_1009_for_raw_client() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    let key = fresh_key();
    client.send(upgrade_request("/echo", "localhost", &key).as_bytes());
    assert_switching_protocols(&client.read_http_response(), &key);
    let len = (DEFAULT_LIMIT + 1) as u64;
    let mask = next_mask();
    let header = frame_header(true, 0, op::BINARY, Some(mask), len);
    // Write the whole frame from a second thread so the outcome does not
    // depend on whether the server decides from the header or the payload.
    let mut writer = client.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let mut payload = binary_payload(DEFAULT_LIMIT + 1, 0);
        apply_mask(&mut payload, mask, 0);
        let _ = writer.write_all(&header);
        let _ = writer.write_all(&payload);
    });
    client.set_read_timeout(Duration::from_secs(20));
    let frame = client.read_server_frame();
    assert_eq!(frame.opcode, op::CLOSE, "{frame:?}");
    assert_eq!(frame.close_code(), Some(code::MESSAGE_TOO_BIG));
    client.expect_eof();
    sender.join().unwrap();
}

#[test]
fn fragmented_message_of_exactly_16_mib_is_echoed() {
    let server = TestServer::start();
    let mut client = server.client();
    client.set_read_timeout(Duration::from_secs(30));
    let data = binary_payload(DEFAULT_LIMIT, 77);
    let mut writer = client.stream.try_clone().unwrap();
    let frames: Vec<Vec<u8>> = data
        .chunks(MIB)
        .enumerate()
        .map(|(i, chunk)| {
            let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
            client_frame((i + 1) * MIB >= DEFAULT_LIMIT, opcode, chunk)
        })
        .collect();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        for frame in frames {
            writer.write_all(&frame).unwrap();
        }
    });
    let echo = client.expect_message(op::BINARY);
    sender.join().unwrap();
    assert_eq!(echo.len(), DEFAULT_LIMIT);
    assert!(echo == data, "16 MiB echo differs");
}

#[test]
fn fragmented_message_one_byte_over_16_mib_is_1009() {
    let server = TestServer::start();
    let mut client = server.client();
    client.set_read_timeout(Duration::from_secs(30));
    let mut writer = client.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![0x5A; MIB];
        for i in 0..16 {
            let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
            if writer
                .write_all(&client_frame(false, opcode, &chunk))
                .is_err()
            {
                return;
            }
        }
        let _ = writer.write_all(&client_frame(true, op::CONTINUATION, b"!"));
    });
    client.expect_close(code::MESSAGE_TOO_BIG);
    sender.join().unwrap();
}
