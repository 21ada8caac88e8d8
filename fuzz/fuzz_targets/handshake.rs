//! Request heads split anywhere, read the way a keep-alive connection reads
//! them (one `HeadReader`, any number of heads in a row), then the opening
//! handshake's verdict and the response it produces.
//!
//! Invariants: no panic; `used` never exceeds the input handed in; no head
//! longer than `MAX_HEAD_LEN` is accepted; the reader holds nothing once a
//! head is complete or refused, and never more than about twice the limit
//! while waiting; reading the payload whole or in chunks gives the same heads
//! at the same offsets and the same errors; every response is well formed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::fuzzing::handshake;
use wshub::fuzzing::http::{HeadError, HeadReader, MAX_HEAD_LEN, RequestHead};
use wshub_fuzz::{Input, check_response};

/// Heads read from one payload before stopping; enough to cover a reader
/// reused after a complete head.
const MAX_HEADS: usize = 8;
/// Most a reader may hold while a head is incomplete: the limit plus the one
/// byte that proves an overflow, with room for the vector's growth.
const MAX_HELD: usize = 2 * (MAX_HEAD_LEN + 1);

#[derive(Debug, PartialEq)]
enum Outcome {
    /// A head that ended at this offset of the payload.
    Head(RequestHead, usize),
    Refused(HeadError),
}

/// Every outcome in order, and whether bytes of an incomplete head are held
/// at the end.
fn read_heads(payload: &[u8], bounds: &[usize]) -> (Vec<Outcome>, bool) {
    let mut reader = HeadReader::new();
    let mut outcomes = Vec::new();
    let mut head_start = 0;
    for window in bounds.windows(2) {
        let (mut at, end) = (window[0], window[1]);
        loop {
            let chunk = &payload[at..end];
            match reader.feed(chunk) {
                Ok(None) => {
                    assert!(
                        reader.buffered_bytes() <= MAX_HELD,
                        "reader holds {} bytes",
                        reader.buffered_bytes()
                    );
                    break;
                }
                Ok(Some((head, used))) => {
                    assert!(used <= chunk.len(), "used {used} of {}", chunk.len());
                    let head_end = at + used;
                    assert!(
                        head_end - head_start <= MAX_HEAD_LEN,
                        "accepted a head of {} bytes",
                        head_end - head_start
                    );
                    assert!(head_end > head_start, "empty head accepted");
                    assert_eq!(reader.buffered_bytes(), 0, "buffer kept after a head");
                    outcomes.push(Outcome::Head(head, head_end));
                    if outcomes.len() == MAX_HEADS {
                        return (outcomes, false);
                    }
                    head_start = head_end;
                    at = head_end;
                    if at == end {
                        break;
                    }
                }
                Err(error) => {
                    assert_eq!(reader.buffered_bytes(), 0, "buffer kept after {error}");
                    outcomes.push(Outcome::Refused(error));
                    return (outcomes, false);
                }
            }
        }
    }
    (outcomes, reader.buffered_bytes() > 0)
}

fn answer(head: &RequestHead) {
    let mut out = Vec::new();
    match handshake::validate(head) {
        Ok(upgrade) => {
            assert_eq!(
                upgrade.accept.len(),
                28,
                "accept value {:?}",
                upgrade.accept
            );
            let protocol = upgrade.protocols.first().map(String::as_str);
            handshake::write_accept(&upgrade, protocol, None, &mut out);
            check_response(&out, 101);
        }
        Err(rejection) => {
            assert!(
                matches!(rejection.status, 400 | 405 | 426),
                "unexpected status {rejection}"
            );
            rejection.write_response(&mut out);
            check_response(&out, rejection.status);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::<0>::parse(data) else {
        return;
    };
    let split = read_heads(input.payload, &input.bounds);
    let whole = read_heads(input.payload, &input.whole());
    assert_eq!(split, whole, "split at {:?}", input.bounds);
    for outcome in &split.0 {
        match outcome {
            Outcome::Head(head, _) => answer(head),
            Outcome::Refused(error) => assert!(matches!(error.status(), 400 | 431)),
        }
    }
});
