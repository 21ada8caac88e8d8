//! Data framing (RFC 6455 §5): echo of text and binary messages however the
//! bytes are split, fragmentation with interleaved control frames, and the
//! protocol errors that fail a connection with a specific close code.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::support::client::{
    apply_mask, client_frame, code, encode_frame, frame_header, next_mask, op,
};
use crate::support::data::{XorShift, binary_payload, text_payload, timed};
use crate::support::server::TestServer;

// --- Echo ------------------------------------------------------------------

#[test]
fn text_messages_are_echoed_as_text_with_same_payload() {
    let server = TestServer::start();
    let mut client = server.client();
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 100_000] {
        let text = text_payload(len);
        client.send_text(&text);
        assert_eq!(client.expect_text(), text, "length {len}");
    }
}

#[test]
fn binary_messages_are_echoed_as_binary_with_same_payload() {
    let server = TestServer::start();
    let mut client = server.client();
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 100_000] {
        let data = binary_payload(len, len as u8);
        client.send_binary(&data);
        assert_eq!(client.expect_message(op::BINARY), data, "length {len}");
    }
}

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    let server = TestServer::start();
    let mut client = server.client();
    for payload in [Vec::new(), b"hello".to_vec(), binary_payload(125, 7)] {
        client.send_frame(true, op::PING, &payload);
        assert_eq!(client.expect_message(op::PONG), payload);
    }
}

#[test]
fn unsolicited_pong_gets_no_answer() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send_frame(true, op::PONG, b"heartbeat");
    client.send_text("after pong");
    assert_eq!(client.expect_text(), "after pong");
}

#[test]
fn many_frames_pipelined_in_one_write_are_all_echoed_in_order() {
    let server = TestServer::start();
    let mut client = server.client();
    let messages: Vec<(u8, Vec<u8>)> = (0..1000usize)
        .map(|i| {
            if i % 3 == 0 {
                (op::BINARY, binary_payload(i % 200, i as u8))
            } else {
                (
                    op::TEXT,
                    format!("message #{i} {}", "x".repeat(i % 50)).into_bytes(),
                )
            }
        })
        .collect();
    let mut bytes = Vec::new();
    for (opcode, payload) in &messages {
        bytes.extend(client_frame(true, *opcode, payload));
    }
    client.send(&bytes);
    for (i, (opcode, payload)) in messages.iter().enumerate() {
        let frame = client.read_server_frame();
        assert_eq!(
            (frame.opcode, &frame.payload),
            (*opcode, payload),
            "message {i}"
        );
    }
}

/// The fragments of "Hello, fragmented world!" with a ping after the first
/// and second fragment.
fn fragmented_text_with_pings() -> Vec<Vec<u8>> {
    vec![
        client_frame(false, op::TEXT, b"Hello, "),
        client_frame(true, op::PING, b"between 1"),
        client_frame(false, op::CONTINUATION, b"fragmented "),
        client_frame(true, op::PING, b"between 2"),
        client_frame(true, op::CONTINUATION, b"world!"),
    ]
}

#[test]
fn fragmented_text_in_one_write_yields_pongs_first_then_one_whole_message() {
    let server = TestServer::start();
    let mut client = server.client();
    client.send(&fragmented_text_with_pings().concat());
    assert_eq!(client.expect_message(op::PONG), b"between 1");
    assert_eq!(client.expect_message(op::PONG), b"between 2");
    assert_eq!(client.expect_text(), "Hello, fragmented world!");
    // Exactly one message: the next thing back is the echo of a new one.
    client.send_text("next");
    assert_eq!(client.expect_text(), "next");
}

#[test]
fn ping_inside_fragmented_message_is_answered_before_the_message_completes() {
    let server = TestServer::start();
    let mut client = server.client();
    let frames = fragmented_text_with_pings();
    client.send(&frames[0]);
    client.send(&frames[1]);
    assert_eq!(client.expect_message(op::PONG), b"between 1");
    client.send(&frames[2]);
    client.send(&frames[3]);
    assert_eq!(client.expect_message(op::PONG), b"between 2");
    client.send(&frames[4]);
    assert_eq!(client.expect_text(), "Hello, fragmented world!");
}

#[test]
fn fragmented_binary_message_with_empty_fragments_is_echoed_once_whole() {
    let server = TestServer::start();
    let mut client = server.client();
    let data = binary_payload(10_000, 3);
    let mut bytes = client_frame(false, op::BINARY, &data[..1]);
    bytes.extend(client_frame(false, op::CONTINUATION, b""));
    for chunk in data[1..].chunks(999) {
        bytes.extend(client_frame(false, op::CONTINUATION, chunk));
    }
    bytes.extend(client_frame(true, op::CONTINUATION, b""));
    client.send(&bytes);
    assert_eq!(client.expect_message(op::BINARY), data);
    client.send_binary(b"!");
    assert_eq!(client.expect_message(op::BINARY), b"!");
}

#[test]
fn utf8_character_split_across_fragments_is_accepted() {
    let server = TestServer::start();
    let mut client = server.client();
    let text = "a€b𝄞c";
    let bytes = text.as_bytes();
    // Split inside the 3-byte and the 4-byte characters.
    let mut out = client_frame(false, op::TEXT, &bytes[..2]);
    out.extend(client_frame(false, op::CONTINUATION, &bytes[2..6]));
    out.extend(client_frame(false, op::CONTINUATION, &bytes[6..7]));
    out.extend(client_frame(true, op::CONTINUATION, &bytes[7..]));
    client.send(&out);
    assert_eq!(client.expect_text(), text);
}

#[test]
fn message_sent_one_byte_per_write_is_echoed_intact() {
    let server = TestServer::start();
    let mut client = server.client();
    let data = binary_payload(64 * 1024, 9);
    let frame = client_frame(true, op::BINARY, &data);
    let ((), elapsed) = timed(|| client.send_bytewise(&frame, Duration::ZERO));
    eprintln!(
        "64 KiB frame in {} one-byte writes: {elapsed:?}",
        frame.len()
    );
    assert_eq!(client.expect_message(op::BINARY), data);

    let text = text_payload(1024 * 1024);
    let frame = client_frame(true, op::TEXT, text.as_bytes());
    let ((), elapsed) = timed(|| client.send_bytewise(&frame, Duration::ZERO));
    eprintln!(
        "1 MiB frame in {} one-byte writes: {elapsed:?}",
        frame.len()
    );
    assert_eq!(client.expect_text(), text);
}

#[test]
fn one_mib_messages_in_random_small_writes_are_echoed_intact() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut rng = XorShift::new(0x1234_5678_9ABC_DEF1);
    let text = text_payload(1024 * 1024);
    let data = binary_payload(1024 * 1024, 42);
    for (opcode, payload) in [(op::TEXT, text.as_bytes()), (op::BINARY, &data[..])] {
        let frame = client_frame(true, opcode, payload);
        let mut rest = &frame[..];
        let mut writes = 0;
        while !rest.is_empty() {
            let n = (1 + rng.below(3000) as usize).min(rest.len());
            client.send(&rest[..n]);
            rest = &rest[n..];
            writes += 1;
            if writes % 64 == 0 {
                // Let the server see partial reads too.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(client.expect_message(opcode), payload);
    }
}

// --- Protocol errors: 1002 -------------------------------------------------

/// Opens a connection, sends `bytes`, and expects close `code` then EOF.
fn assert_fails_with(server: &TestServer, bytes: &[u8], code: u16) {
    let mut client = server.client();
    client.expect_failure_after(bytes, code);
}

#[test]
fn unmasked_client_frame_is_1002() {
    let server = TestServer::start();
    assert_fails_with(
        &server,
        &encode_frame(true, 0, op::TEXT, None, b"unmasked"),
        code::PROTOCOL_ERROR,
    );
    assert_fails_with(
        &server,
        &encode_frame(true, 0, op::PING, None, b""),
        code::PROTOCOL_ERROR,
    );
}

#[test]
fn rsv_bits_without_negotiated_extension_are_1002() {
    let server = TestServer::start();
    for rsv in [0b100, 0b010, 0b001, 0b111] {
        let frame = encode_frame(true, rsv, op::TEXT, Some(next_mask()), b"rsv");
        assert_fails_with(&server, &frame, code::PROTOCOL_ERROR);
    }
    // On a control frame too.
    let frame = encode_frame(true, 0b100, op::PING, Some(next_mask()), b"");
    assert_fails_with(&server, &frame, code::PROTOCOL_ERROR);
}

#[test]
fn reserved_opcodes_are_1002() {
    let server = TestServer::start();
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        let mut client = server.client();
        client.send(&client_frame(true, opcode, b"x"));
        let frame = client.read_server_frame();
        assert_eq!(frame.opcode, op::CLOSE, "opcode {opcode:#x}: {frame:?}");
        assert_eq!(
            frame.close_code(),
            Some(code::PROTOCOL_ERROR),
            "opcode {opcode:#x}"
        );
        client.expect_eof();
    }
}

#[test]
fn control_frame_over_125_bytes_is_1002() {
    let server = TestServer::start();
    for opcode in [op::PING, op::PONG, op::CLOSE] {
        let mut payload = vec![b'c'; 126];
        if opcode == op::CLOSE {
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
        }
        assert_fails_with(
            &server,
            &client_frame(true, opcode, &payload),
            code::PROTOCOL_ERROR,
        );
    }
}

#[test]
fn control_frame_of_exactly_125_bytes_is_accepted() {
    let server = TestServer::start();
    let mut client = server.client();
    let payload = binary_payload(125, 1);
    client.send_frame(true, op::PING, &payload);
    assert_eq!(client.expect_message(op::PONG), payload);
}

#[test]
fn fragmented_control_frame_is_1002() {
    let server = TestServer::start();
    assert_fails_with(
        &server,
        &client_frame(false, op::PING, b"part"),
        code::PROTOCOL_ERROR,
    );
    // Also inside a fragmented data message.
    let mut bytes = client_frame(false, op::TEXT, b"start");
    bytes.extend(client_frame(false, op::PING, b"part"));
    assert_fails_with(&server, &bytes, code::PROTOCOL_ERROR);
}

#[test]
fn continuation_without_a_started_message_is_1002() {
    let server = TestServer::start();
    assert_fails_with(
        &server,
        &client_frame(true, op::CONTINUATION, b"orphan"),
        code::PROTOCOL_ERROR,
    );
    // Also right after a complete message.
    let mut client = server.client();
    client.send_text("complete");
    assert_eq!(client.expect_text(), "complete");
    client.expect_failure_after(
        &client_frame(false, op::CONTINUATION, b"orphan"),
        code::PROTOCOL_ERROR,
    );
}

#[test]
fn new_data_frame_inside_a_fragmented_message_is_1002() {
    let server = TestServer::start();
    for (first, second) in [
        (op::TEXT, op::TEXT),
        (op::TEXT, op::BINARY),
        (op::BINARY, op::TEXT),
    ] {
        let mut bytes = client_frame(false, first, b"begun");
        bytes.extend(client_frame(true, second, b"intruder"));
        assert_fails_with(&server, &bytes, code::PROTOCOL_ERROR);
    }
}

#[test]
fn sixty_four_bit_length_with_top_bit_set_is_1002() {
    let server = TestServer::start();
    let mut bytes = vec![0x80 | op::BINARY, 0x80 | 127];
    bytes.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    bytes.extend_from_slice(&next_mask());
    bytes.extend_from_slice(b"hello");
    assert_fails_with(&server, &bytes, code::PROTOCOL_ERROR);
}

#[test]
fn non_minimal_length_encoding_is_1002() {
    let server = TestServer::start();
    // 5 bytes announced with the 16-bit form, then with the 64-bit form.
    let mask = next_mask();
    let mut payload = b"hello".to_vec();
    apply_mask(&mut payload, mask, 0);
    let mut short = vec![0x80 | op::BINARY, 0x80 | 126, 0, 5];
    short.extend_from_slice(&mask);
    short.extend_from_slice(&payload);
    assert_fails_with(&server, &short, code::PROTOCOL_ERROR);
    let mut long = vec![0x80 | op::BINARY, 0x80 | 127];
    long.extend_from_slice(&5u64.to_be_bytes());
    long.extend_from_slice(&mask);
    long.extend_from_slice(&payload);
    assert_fails_with(&server, &long, code::PROTOCOL_ERROR);
}

// --- Invalid UTF-8: 1007 ---------------------------------------------------

const INVALID_UTF8: &[&[u8]] = &[
    b"\xFF",
    b"ok\xC0\xAF",         // overlong '/'
    b"\xED\xA0\x80",       // UTF-16 surrogate
    b"\xF4\x90\x80\x80",   // above U+10FFFF
    b"abc\x80",            // lone continuation byte
    b"truncated \xE2\x82", // ends inside a character
];

#[test]
fn invalid_utf8_in_text_message_is_1007() {
    let server = TestServer::start();
    for bad in INVALID_UTF8 {
        let mut client = server.client();
        client.send_frame(true, op::TEXT, bad);
        let frame = client.read_server_frame();
        assert_eq!(frame.opcode, op::CLOSE, "payload {bad:?}: {frame:?}");
        assert_eq!(
            frame.close_code(),
            Some(code::INVALID_PAYLOAD),
            "payload {bad:?}"
        );
        client.expect_eof();
    }
}

#[test]
fn invalid_utf8_split_across_fragments_is_1007() {
    let server = TestServer::start();
    // "€" is E2 82 AC; here the sequence is broken in the second fragment.
    let mut bytes = client_frame(false, op::TEXT, b"price: \xE2\x82");
    bytes.extend(client_frame(true, op::CONTINUATION, b"(oops"));
    assert_fails_with(&server, &bytes, code::INVALID_PAYLOAD);
    // A message that ends inside a character whose start came earlier.
    let mut bytes = client_frame(false, op::TEXT, b"x\xF0\x9D");
    bytes.extend(client_frame(true, op::CONTINUATION, b"\x84"));
    assert_fails_with(&server, &bytes, code::INVALID_PAYLOAD);
}

#[test]
fn invalid_utf8_is_detected_before_the_frame_is_complete() {
    let server = TestServer::start();
    let mut client = server.client();
    let mut payload = vec![b'a'; 1000];
    payload[5] = 0xFF;
    let frame = encode_frame(true, 0, op::TEXT, Some(next_mask()), &payload);
    let header_len = frame_header(true, 0, op::TEXT, Some([0; 4]), 1000).len();
    // Only the header and the first 10 payload bytes; the rest never comes.
    client.send(&frame[..header_len + 10]);
    let started = Instant::now();
    client.expect_close(code::INVALID_PAYLOAD);
    assert!(started.elapsed() < Duration::from_secs(2));
}

// --- Size limits: 1009 -----------------------------------------------------

fn small_limit_server() -> TestServer {
    TestServer::with(|c| {
        c.max_message_size = 1000;
        c.max_frame_size = 1000;
    })
}

#[test]
fn message_of_exactly_max_message_size_is_echoed() {
    let server = small_limit_server();
    let mut client = server.client();
    let data = binary_payload(1000, 5);
    client.send_binary(&data);
    assert_eq!(client.expect_message(op::BINARY), data);
    // Also when fragmented.
    let mut bytes = client_frame(false, op::TEXT, &[b'a'; 500]);
    bytes.extend(client_frame(true, op::CONTINUATION, &[b'b'; 500]));
    client.send(&bytes);
    assert_eq!(
        client.expect_text(),
        format!("{}{}", "a".repeat(500), "b".repeat(500))
    );
}

#[test]
fn message_over_max_message_size_is_1009() {
    let server = small_limit_server();
    assert_fails_with(
        &server,
        &client_frame(true, op::BINARY, &binary_payload(1001, 0)),
        code::MESSAGE_TOO_BIG,
    );
    assert_fails_with(
        &server,
        &client_frame(true, op::TEXT, text_payload(1001).as_bytes()),
        code::MESSAGE_TOO_BIG,
    );
    // Fragments that are each within the limit but not together.
    let mut bytes = client_frame(false, op::BINARY, &[1; 600]);
    bytes.extend(client_frame(true, op::CONTINUATION, &[2; 401]));
    assert_fails_with(&server, &bytes, code::MESSAGE_TOO_BIG);
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    let server = small_limit_server();
    let mut client = server.client();
    // Announce 1 MiB but send nothing of it.
    client.send(&frame_header(
        true,
        0,
        op::BINARY,
        Some(next_mask()),
        1 << 20,
    ));
    client.expect_close(code::MESSAGE_TOO_BIG);
}

// --- Any split of the byte stream --------------------------------------------

fn message_strategy() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b)),
        ".{0,100}".prop_map(|s: String| (true, s.into_bytes())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the split points of the write stream and however messages
    /// are fragmented, the echo is the same sequence of messages.
    #[test]
    fn echo_does_not_depend_on_write_boundaries_or_fragmentation(
        messages in proptest::collection::vec(
            (message_strategy(), 1usize..4),
            1..12,
        ),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let server = TestServer::start();
        let mut client = server.client();
        let mut stream = Vec::new();
        for ((is_text, payload), pieces) in &messages {
            let opcode = if *is_text { op::TEXT } else { op::BINARY };
            let step = payload.len().div_ceil(*pieces).max(1);
            let chunks: Vec<&[u8]> = if payload.is_empty() {
                vec![&[]]
            } else {
                payload.chunks(step).collect()
            };
            for (i, chunk) in chunks.iter().enumerate() {
                let first = i == 0;
                let last = i + 1 == chunks.len();
                let frame_op = if first { opcode } else { op::CONTINUATION };
                stream.extend(client_frame(last, frame_op, chunk));
            }
        }
        let mut rest = &stream[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            client.send(&rest[..n]);
            rest = &rest[n..];
        }
        for ((is_text, payload), _) in &messages {
            let opcode = if *is_text { op::TEXT } else { op::BINARY };
            let got = client.expect_message(opcode);
            prop_assert_eq!(&got, payload);
        }
        client.send_close(1000, b"");
        client.expect_close(1000);
    }
}

#[test]
fn protocol_error_on_one_connection_leaves_others_working() {
    let server = TestServer::start();
    let mut healthy = server.client();
    assert_fails_with(
        &server,
        &encode_frame(true, 0, op::TEXT, None, b"bad"),
        code::PROTOCOL_ERROR,
    );
    healthy.send_text("still here");
    assert_eq!(healthy.expect_text(), "still here");
}
