//! A chat room with messages half received when the handover comes: the new
//! process finishes receiving each one where the old one stopped (inside a
//! UTF-8 character, inside a frame header, inside a frame's payload, inside
//! a compressed message) and relays it whole.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use crate::common::{CHAT, start};
use crate::support::client::{
    RawClient, assert_switching_protocols, client_frame, encode_frame, fresh_key, next_mask, op,
    upgrade_request_with,
};
use crate::support::handover::upgrade;
use crate::support::tempdir::TempDir;

/// Time for the server to read what a client sent before the signal.
const SETTLE: Duration = Duration::from_millis(300);
const ROOM: &str = "room";
/// The RSV1 bit of `encode_frame`: a compressed message's first frame.
const RSV1: u8 = 0b100;
/// What every deflate block ends with and permessage-deflate leaves out.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Raw DEFLATE of `data` as one permessage-deflate message.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert!(
        out.ends_with(&TAIL),
        "a sync flush ends with the empty block"
    );
    out.truncate(out.len() - TAIL.len());
    out
}

/// Inflates a permessage-deflate payload, growing the output until every
/// input byte is consumed with room to spare.
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let consumed = d.total_in() as usize;
        d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .expect("inflate");
        if d.total_in() as usize == input.len() && out.capacity() > out.len() {
            return out;
        }
    }
}

/// A member of the room that offers permessage-deflate (and must get it).
fn open_compressed(addr: std::net::SocketAddr, path: &str) -> RawClient {
    let mut client = RawClient::connect(addr);
    let key = fresh_key();
    client.send(
        upgrade_request_with(
            path,
            &addr.to_string(),
            &key,
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        )
        .as_bytes(),
    );
    let response = client.read_http_response();
    assert_switching_protocols(&response, &key);
    assert!(
        response
            .header("Sec-WebSocket-Extensions")
            .is_some_and(|v| v.starts_with("permessage-deflate")),
        "{response:?}"
    );
    client
}

/// Reads one text message on `client`, inflating it if compressed.
fn text_message(client: &mut RawClient) -> String {
    let frame = client.read_frame();
    assert!(frame.fin && frame.opcode == op::TEXT, "{frame:?}");
    let payload = if frame.rsv == RSV1 {
        inflate(&frame.payload)
    } else {
        assert_eq!(frame.rsv, 0, "{frame:?}");
        frame.payload
    };
    String::from_utf8(payload).expect("relayed text is UTF-8")
}

/// One message sent in two parts, the handover between them.
struct Split {
    client: RawClient,
    before: Vec<u8>,
    after: Vec<u8>,
    text: String,
}

#[test]
fn messages_half_received_at_the_handover_are_relayed_whole() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-chat");
    let (mut daemon, addr) = start(&dir, "");
    let path = format!("{CHAT}/{ROOM}");
    let mut plain = RawClient::open(addr, &path);
    let mut compressed = open_compressed(addr, &path);

    let mut splits = Vec::new();
    // A fragmented message cut inside the two bytes of "é".
    let text = "Ça commence à l'été, 𝄞 fin".to_owned();
    let cut = text.find('é').expect("an é") + 1;
    splits.push(Split {
        client: RawClient::open(addr, &path),
        before: client_frame(false, op::TEXT, &text.as_bytes()[..cut]),
        after: client_frame(true, op::CONTINUATION, &text.as_bytes()[cut..]),
        text,
    });
    // A fragmented message whose last frame's header is cut in half (the
    // masked header is six bytes), its first fragment cut inside "𝄞".
    let text = "deux fragments, clé 𝄞 et la suite".to_owned();
    let cut = text.find('𝄞').expect("a clef") + 2;
    let mut before = client_frame(false, op::TEXT, &text.as_bytes()[..cut]);
    let last = client_frame(true, op::CONTINUATION, &text.as_bytes()[cut..]);
    before.extend_from_slice(&last[..3]);
    splits.push(Split {
        client: RawClient::open(addr, &path),
        before,
        after: last[3..].to_vec(),
        text,
    });
    // One frame cut in the middle of its payload.
    let text = "une seule trame coupée au milieu de sa charge".to_owned();
    let frame = client_frame(true, op::TEXT, text.as_bytes());
    let (head, tail) = frame.split_at(frame.len() / 2);
    splits.push(Split {
        client: RawClient::open(addr, &path),
        before: head.to_vec(),
        after: tail.to_vec(),
        text,
    });
    // A compressed message in two fragments, the deflate stream cut too.
    let text = "compressé, compressé, compressé: le même texte ".repeat(8);
    let packed = deflate(text.as_bytes());
    let (head, tail) = packed.split_at(packed.len() / 2);
    let mut before = encode_frame(false, RSV1, op::TEXT, Some(next_mask()), head);
    let last = encode_frame(true, 0, op::CONTINUATION, Some(next_mask()), tail);
    before.extend_from_slice(&last[..1]);
    splits.push(Split {
        client: open_compressed(addr, &path),
        before,
        after: last[1..].to_vec(),
        text,
    });

    for split in &mut splits {
        split.client.send(&split.before);
    }
    std::thread::sleep(SETTLE);
    plain.expect_silence(Duration::from_millis(100));
    let handover = upgrade(&daemon, daemon.pid());
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(handover.connections_taken(), 2 + splits.len() as u64);

    for (i, split) in splits.iter_mut().enumerate() {
        split.client.send(&split.after);
        assert_eq!(text_message(&mut plain), split.text, "message {i}, plain");
        assert_eq!(
            text_message(&mut compressed),
            split.text,
            "message {i}, compressed"
        );
    }
    // Every member is still in the room, on the new process: each got the
    // others' messages, then one more.
    let texts: Vec<String> = splits.iter().map(|split| split.text.clone()).collect();
    splits[0].client.send_text("après");
    for (j, member) in splits.iter_mut().enumerate().skip(1) {
        for (i, text) in texts.iter().enumerate().filter(|(i, _)| *i != j) {
            assert_eq!(
                &text_message(&mut member.client),
                text,
                "member {j}, message {i}"
            );
        }
        assert_eq!(text_message(&mut member.client), "après", "member {j}");
    }
    for client in [&mut plain, &mut compressed] {
        client.send_close(1000, b"");
        // Relayed messages came before the close; skip them.
        loop {
            let frame = client.read_frame();
            if frame.opcode == op::CLOSE {
                assert_eq!(frame.close_code(), Some(1000));
                break;
            }
        }
    }
    let mut successor = handover.successor;
    successor.signal(rustix::process::Signal::TERM);
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
}
