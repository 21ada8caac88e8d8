//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Owns: the few bytes of a code point split across chunks.
//! Must never: buffer message data or accept anything `std::str::from_utf8`
//! would reject once the message is whole.

/// Longest UTF-8 encoding of one code point.
const MAX_CHAR_LEN: usize = 4;

/// The bytes fed so far are not a prefix of any valid UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub(crate) struct Utf8Error;

/// Streaming validator that fails on the first byte that cannot start or
/// continue a valid sequence (overlong forms, surrogates, > U+10FFFF).
///
/// After an error every further `feed` fails too, until `finish` resets it,
/// so a caller that keeps feeding by mistake can never get a false `Ok`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Utf8Validator {
    /// Start of a code point whose remaining bytes have not arrived yet;
    /// always a valid-so-far prefix of one multi-byte sequence.
    pending: [u8; MAX_CHAR_LEN - 1],
    pending_len: u8,
    failed: bool,
}

/// Encoded length announced by a lead byte that `from_utf8` accepted as the
/// start of an incomplete sequence; `None` for anything else.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

impl Utf8Validator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Validates the next chunk of the stream.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.failed {
            return Err(Utf8Error);
        }
        let result = self.feed_inner(chunk);
        if result.is_err() {
            self.failed = true;
            self.pending_len = 0;
        }
        result
    }

    /// The stream ended: an incomplete trailing sequence is an error. Resets the validator.
    pub(crate) fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = !self.failed && self.pending_len == 0;
        *self = Self::default();
        if complete { Ok(()) } else { Err(Utf8Error) }
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let rest = self.complete_pending(chunk)?;
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the tail is a valid-so-far prefix
            // cut off by the chunk end, which is at most MAX_CHAR_LEN - 1 bytes.
            Err(e) if e.error_len().is_none() => self.store_pending(&rest[e.valid_up_to()..]),
            Err(_) => Err(Utf8Error),
        }
    }

    /// Finishes the code point left over from earlier chunks using the start
    /// of `chunk`; returns the part of `chunk` after it (empty if the code
    /// point is still incomplete).
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let held = usize::from(self.pending_len);
        if held == 0 {
            return Ok(chunk);
        }
        let width = sequence_len(self.pending[0]).ok_or(Utf8Error)?;
        let take = width.saturating_sub(held).min(chunk.len());
        let (head, rest) = chunk.split_at(take);
        let mut joined = [0u8; MAX_CHAR_LEN];
        let joined_len = held + take;
        joined[..held].copy_from_slice(&self.pending[..held]);
        joined[held..joined_len].copy_from_slice(head);
        match std::str::from_utf8(&joined[..joined_len]) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(rest)
            }
            Err(e) if e.error_len().is_none() => {
                // Only possible when the chunk ran out before the code point did.
                self.store_pending(&joined[..joined_len])?;
                Ok(rest)
            }
            Err(_) => Err(Utf8Error),
        }
    }

    fn store_pending(&mut self, tail: &[u8]) -> Result<(), Utf8Error> {
        let slot = self.pending.get_mut(..tail.len()).ok_or(Utf8Error)?;
        slot.copy_from_slice(tail);
        self.pending_len = u8::try_from(tail.len()).map_err(|_| Utf8Error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MULTILINGUAL: &str = "Hello, κόσμε! Привет мир. こんにちは世界 🦀🎉 مرحبا \u{10FFFF}\u{80}\u{7FF}\u{800}\u{FFFF}\u{10000}";

    /// Feeds `chunks` in order; returns the index of the first failing chunk,
    /// or `None` if all feeds succeeded (finish is left to the caller).
    fn first_failing_feed(v: &mut Utf8Validator, chunks: &[&[u8]]) -> Option<usize> {
        chunks.iter().position(|c| v.feed(c).is_err())
    }

    fn validate_whole(chunks: &[&[u8]]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for c in chunks {
            v.feed(c)?;
        }
        v.finish()
    }

    #[test]
    fn valid_text_split_at_every_boundary() {
        let bytes = MULTILINGUAL.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(validate_whole(&[a, b]), Ok(()), "cut at {cut}");
        }
        for first in 0..=bytes.len() {
            for second in first..=bytes.len() {
                let chunks = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                assert_eq!(validate_whole(&chunks), Ok(()), "cuts {first} {second}");
            }
        }
    }

    #[test]
    fn valid_text_byte_by_byte() {
        let chunks: Vec<&[u8]> = MULTILINGUAL.as_bytes().chunks(1).collect();
        assert_eq!(validate_whole(&chunks), Ok(()));
    }

    #[test]
    fn empty_stream_and_empty_chunks() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.finish(), Ok(()));
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(&[0xF0]), Ok(()));
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(&[0x9F]), Ok(()));
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(&[0xA6, 0x80]), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    /// Each case: bytes, and the index of the first byte that makes the
    /// stream impossible.
    const INVALID: &[(&[u8], usize)] = &[
        // Overlong 2-byte forms: C0 and C1 never start a valid sequence.
        (&[0xC0, 0x80], 0),
        (&[0xC1, 0xBF], 0),
        // Overlong 3-byte forms: E0 needs A0..BF next.
        (&[0xE0, 0x80, 0x80], 1),
        (&[0xE0, 0x9F, 0xBF], 1),
        // Overlong 4-byte forms: F0 needs 90..BF next.
        (&[0xF0, 0x80, 0x80, 0x80], 1),
        (&[0xF0, 0x8F, 0xBF, 0xBF], 1),
        // UTF-16 surrogates: ED needs 80..9F next.
        (&[0xED, 0xA0, 0x80], 1),
        (&[0xED, 0xBF, 0xBF], 1),
        // Above U+10FFFF.
        (&[0xF4, 0x90, 0x80, 0x80], 1),
        (&[0xF5, 0x80, 0x80, 0x80], 0),
        (&[0xF8, 0x88, 0x80, 0x80, 0x80], 0),
        (&[0xFF], 0),
        (&[0xFE], 0),
        // Lone continuation bytes.
        (&[0x80], 0),
        (&[0xBF], 0),
        (&[b'a', 0x80, b'b'], 1),
        // A sequence interrupted by a new lead or ASCII.
        (&[0xE2, 0x82, b'a'], 2),
        (&[0xF0, 0x9F, 0x98, 0xF0], 3),
        (&[0xC2, 0xC2], 1),
    ];

    #[test]
    fn invalid_classes_fail_at_first_impossible_byte() {
        for &(bytes, bad) in INVALID {
            // Whole, as one chunk.
            assert_eq!(validate_whole(&[bytes]), Err(Utf8Error), "{bytes:02X?}");
            // Byte by byte: every feed before `bad` succeeds, the one at `bad` fails.
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            let mut v = Utf8Validator::new();
            assert_eq!(
                first_failing_feed(&mut v, &chunks),
                Some(bad),
                "{bytes:02X?}"
            );
            assert_eq!(v.finish(), Err(Utf8Error));
            // Split right before and right after the bad byte.
            for cut in [bad, bad + 1] {
                let (a, b) = bytes.split_at(cut);
                let mut v = Utf8Validator::new();
                let expected = if cut > bad { 0 } else { 1 };
                assert_eq!(
                    first_failing_feed(&mut v, &[a, b]),
                    Some(expected),
                    "{bytes:02X?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn invalid_after_valid_text_in_same_and_later_chunk() {
        let mut bytes = "κόσμε".as_bytes().to_vec();
        bytes.extend_from_slice(&[0xED, 0xA0, 0x80]);
        assert_eq!(validate_whole(&[&bytes]), Err(Utf8Error));
        let (a, b) = bytes.split_at(11);
        let mut v = Utf8Validator::new();
        assert_eq!(first_failing_feed(&mut v, &[a, b]), Some(1));
    }

    #[test]
    fn truncated_sequence_at_end_fails_on_finish() {
        let truncated: &[&[u8]] = &[
            &[0xF4, 0x8F, 0xBF],
            &[0xE0, 0xA0],
            &[0xC2],
            &[0xF0],
            &[0xF0, 0x9F],
            &[0xEF, 0xBF],
        ];
        for tail in truncated {
            let mut bytes = "κόσμε".as_bytes().to_vec();
            bytes.extend_from_slice(tail);
            // Every prefix feed is fine: the bytes are valid so far.
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&bytes), Ok(()), "{tail:02X?}");
            assert_eq!(v.finish(), Err(Utf8Error), "{tail:02X?}");
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            let mut v = Utf8Validator::new();
            assert_eq!(first_failing_feed(&mut v, &chunks), None, "{tail:02X?}");
            assert_eq!(v.finish(), Err(Utf8Error), "{tail:02X?}");
        }
    }

    #[test]
    fn autobahn_surrogate_in_text_fails_at_second_byte() {
        let payload: &[u8] =
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";
        let ed = payload
            .iter()
            .position(|&b| b == 0xED)
            .unwrap_or(usize::MAX);
        assert_eq!(ed, 11);
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&payload[..=ed]), Ok(()));
        assert_eq!(v.feed(&payload[ed + 1..ed + 2]), Err(Utf8Error));
        // The same when everything arrives at once.
        assert_eq!(validate_whole(&[payload]), Err(Utf8Error));
    }

    #[test]
    fn autobahn_valid_kosme_fragmented() {
        let payload: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
        for size in 1..=payload.len() {
            let chunks: Vec<&[u8]> = payload.chunks(size).collect();
            assert_eq!(validate_whole(&chunks), Ok(()), "chunk size {size}");
        }
    }

    #[test]
    fn error_is_sticky_until_finish() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xFF]), Err(Utf8Error));
        assert_eq!(v.feed(b"fine"), Err(Utf8Error));
        assert_eq!(v.finish(), Err(Utf8Error));
        // finish reset it.
        assert_eq!(v.feed(b"fine"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn finish_resets_after_truncation() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xE2, 0x82]), Ok(()));
        assert_eq!(v.finish(), Err(Utf8Error));
        // The old pending bytes must not leak into the next message.
        assert_eq!(v.feed(&[0xAC]), Err(Utf8Error));
        assert_eq!(v.finish(), Err(Utf8Error));
        assert_eq!(v.feed("€".as_bytes()), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    /// Index of the first byte after which `bytes` can no longer be extended
    /// to valid UTF-8, found by brute force over prefixes.
    fn first_impossible_byte(bytes: &[u8]) -> Option<usize> {
        (0..bytes.len()).find(
            |&i| matches!(std::str::from_utf8(&bytes[..=i]), Err(e) if e.error_len().is_some()),
        )
    }

    /// The same index derived from one `Utf8Error` of std: a maximal valid
    /// prefix of `error_len` bytes starting at `valid_up_to`, whose next byte
    /// is the culprit — unless the byte at `valid_up_to` cannot start a
    /// sequence at all, in which case it is the culprit itself.
    fn first_impossible_from_std(bytes: &[u8]) -> Option<usize> {
        let err = std::str::from_utf8(bytes).err()?;
        let len = err.error_len()?;
        let start = err.valid_up_to();
        if sequence_len(bytes[start]).is_some() {
            Some(start + len)
        } else {
            Some(start)
        }
    }

    fn bytes_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            2 => 0x80u8..=0xBF,
            1 => prop::sample::select(vec![0xC2u8, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4]),
        ];
        let text = any::<String>().prop_map(String::into_bytes);
        let mixed =
            prop::collection::vec(prop_oneof![text, prop::collection::vec(byte, 0..6)], 0..6)
                .prop_map(|parts| parts.concat());
        mixed.prop_flat_map(|bytes| {
            let len = bytes.len();
            (Just(bytes), prop::collection::vec(0..=len, 0..8))
        })
    }

    proptest! {
        #[test]
        fn matches_std_and_fails_fast((bytes, mut cuts) in bytes_and_cuts()) {
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }

            let mut v = Utf8Validator::new();
            let failed_at = first_failing_feed(&mut v, &chunks);
            let all_ok = failed_at.is_none() && v.finish().is_ok();
            prop_assert_eq!(all_ok, std::str::from_utf8(&bytes).is_ok());

            let bad = first_impossible_byte(&bytes);
            prop_assert_eq!(bad, first_impossible_from_std(&bytes));
            // The failing feed is exactly the one delivering the bad byte.
            let expected_chunk = bad.map(|bad| {
                let mut end = 0;
                chunks.iter().position(|c| {
                    end += c.len();
                    bad < end
                }).unwrap_or(usize::MAX)
            });
            prop_assert_eq!(failed_at, expected_chunk);
        }
    }
}
