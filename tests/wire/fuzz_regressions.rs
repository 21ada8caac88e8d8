//! Findings of the fuzz targets under `fuzz/`, replayed through the public
//! API so they stay fixed.

use wshub::fuzzing::message::{Event, Flow, Limits, Receiver};

use crate::support::client::client_frame;

/// What `buffered_bytes` may count for a control frame split across reads.
const CONTROL_BUFFER: usize = 126;
/// Slack for the smallest allocation a byte vector makes.
const MIN_ALLOCATION: usize = 8;

/// Feeds `chunks` one call each, checking after every call that the
/// receiver holds no more than the message limit allows, and returns the
/// binary messages delivered.
fn feed_checked(limits: &Limits, chunks: &mut [Vec<u8>]) -> Vec<usize> {
    let bound = limits.max_message_size as usize + CONTROL_BUFFER + MIN_ALLOCATION;
    let mut rx = Receiver::new();
    let mut delivered = Vec::new();
    for (i, chunk) in chunks.iter_mut().enumerate() {
        let used = rx
            .feed(chunk, limits, |event| {
                if let Event::Binary(data) = event {
                    delivered.push(data.len());
                }
                Flow::Continue
            })
            .expect("valid frames");
        assert_eq!(used, chunk.len());
        assert!(
            rx.buffered_bytes() <= bound,
            "after chunk {i}: the receiver holds {} bytes for a message limited to {} \
             (bound {bound})",
            rx.buffered_bytes(),
            limits.max_message_size
        );
    }
    delivered
}

/// Fuzz target `frames`: a fragmented message whose second fragment arrives
/// in two reads. The buffer grew by doubling (`Vec::reserve`) to 1,800
/// bytes for a message capped at 1,000.
///
/// Fuzz input (hex): `01 06 00 <cut: 2 bytes LE> <frames>`, see
/// `fuzz/README.md`; limits 1000/1000, one cut 50 bytes before the end.
#[test]
fn fragmented_message_buffer_stays_within_max_message_size() {
    let limits = Limits {
        max_frame_size: 1000,
        max_message_size: 1000,
    };
    let mut stream = client_frame(false, 0x2, &[b'a'; 900]);
    stream.extend(client_frame(true, 0x0, &[b'b'; 100]));
    let cut = stream.len() - 50;
    let mut chunks = vec![stream[..cut].to_vec(), stream[cut..].to_vec()];
    assert_eq!(feed_checked(&limits, &mut chunks), [1000]);
}

/// The same growth on one large frame read in 64 KiB pieces (the server's
/// receive buffer size): with a 10 MiB limit the buffer reaches 16 MiB.
#[test]
fn large_message_read_in_pieces_stays_within_max_message_size() {
    const LIMIT: usize = 10 * 1024 * 1024;
    let limits = Limits {
        max_frame_size: LIMIT as u64,
        max_message_size: LIMIT as u64,
    };
    let stream = client_frame(true, 0x2, &vec![7u8; LIMIT]);
    let mut chunks: Vec<Vec<u8>> = stream.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    assert_eq!(feed_checked(&limits, &mut chunks), [LIMIT]);
}
