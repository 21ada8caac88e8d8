//! Whole-message compression and bounded inflation (RFC 7692 §7.2).
//!
//! Every message is its own raw DEFLATE stream (no context takeover), so the
//! zlib states here are reset per message and shared by all connections.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::WindowBits;

/// The empty stored block a sync flush ends with; the sender strips it and
/// the receiver appends it back (RFC 7692 §7.2.1, §7.2.2).
const SYNC_TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Highest zlib level; higher configured values are clamped to it.
pub(super) const MAX_LEVEL: u32 = 9;
/// One compression stream per window size in `WindowBits::MIN..=MAX`.
const WINDOW_SIZES: usize = (WindowBits::MAX.get() - WindowBits::MIN.get() + 1) as usize;
/// The inflater always runs with DEFLATE's largest window: it reads streams
/// made with any smaller one, so the client's window size never matters here.
const INFLATE_WINDOW_BITS: u8 = WindowBits::MAX.get();
/// First output step of an inflate call: small messages stay cheap.
const MIN_INFLATE_STEP: usize = 4 * 1024;
/// Largest output step: how far inflation runs before the limit is checked.
const MAX_INFLATE_STEP: usize = 32 * 1024;
/// Compressed output is rarely larger than the input; stored blocks add 5
/// bytes per block of at most 64 KiB, plus the sync marker. This covers both
/// for the first try, and the loop grows the buffer if it ever is not enough.
const COMPRESS_SLACK: usize = 64;
const COMPRESS_SLACK_DIVISOR: usize = 1024;

/// Why a compressed message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InflateError {
    /// The inflated message grew past the size limit.
    #[error("inflated message exceeds the size limit")]
    TooBig,
    /// The payload is not a valid DEFLATE stream.
    #[error("compressed message is not valid DEFLATE data")]
    Corrupt,
}

/// The compression backend failed on our own input: a bug, not a peer's
/// doing. Send the message uncompressed instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deflate backend failed")]
pub(crate) struct CompressError;

/// Compresses whole messages for any window size; one per event loop.
///
/// Holds one zlib stream per window size it has been asked for (see the
/// module doc for the memory each costs), reset before every message.
pub(crate) struct Compressor {
    level: u32,
    streams: [Option<Compress>; WINDOW_SIZES],
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level)
            .field(
                "streams",
                &self.streams.iter().filter(|s| s.is_some()).count(),
            )
            .finish()
    }
}

impl Compressor {
    /// Allocates nothing until the first message. `level` above 9 counts as 9.
    pub(crate) fn new(level: u32) -> Self {
        Compressor {
            level: level.min(MAX_LEVEL),
            streams: Default::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn level(&self) -> u32 {
        self.level
    }

    /// Applies a reloaded level; existing streams are dropped and rebuilt on
    /// demand (a reload is rare, a per-message level switch would not be).
    pub(crate) fn set_level(&mut self, level: u32) {
        let level = level.min(MAX_LEVEL);
        if level != self.level {
            self.level = level;
            self.streams = Default::default();
        }
    }

    /// Appends `payload` compressed as one message with at most a
    /// `2^window` byte window, without the trailing `00 00 ff ff` (RFC 7692
    /// §7.2.1). An empty payload gives the single byte `00`.
    ///
    /// On error `out` is left as it was.
    pub(crate) fn compress(
        &mut self,
        window: WindowBits,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let start = out.len();
        let stream = self.stream(window);
        stream.reset();
        let result = sync_flush(stream, payload, out).and_then(|()| {
            let written = out.get(start..).unwrap_or_default();
            if written.ends_with(&SYNC_TRAILER) {
                out.truncate(out.len() - SYNC_TRAILER.len());
                Ok(())
            } else {
                Err(CompressError)
            }
        });
        if result.is_err() {
            out.truncate(start);
            stream.reset();
        }
        result
    }

    fn stream(&mut self, window: WindowBits) -> &mut Compress {
        let level = Compression::new(self.level);
        let index = usize::from(window.get() - WindowBits::MIN.get());
        // WindowBits keeps `index` below WINDOW_SIZES; `min` only makes the
        // index visibly in bounds.
        let slot = &mut self.streams[index.min(WINDOW_SIZES - 1)];
        // WindowBits guarantees 9..=15, the range flate2 accepts without panicking.
        slot.get_or_insert_with(|| Compress::new_with_window_bits(level, false, window.get()))
    }
}

/// Feeds all of `input` with a sync flush, growing `out` until zlib has
/// written everything.
fn sync_flush(stream: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
    out.reserve(input.len() + input.len() / COMPRESS_SLACK_DIVISOR + COMPRESS_SLACK);
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(COMPRESS_SLACK + out.len() / 2);
        }
        let room = out.capacity() - out.len();
        let rest = input.get(consumed..).ok_or(CompressError)?;
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        stream
            .compress_vec(rest, out, FlushCompress::Sync)
            .map_err(|_| CompressError)?;
        let used = usize::try_from(stream.total_in() - in_before).map_err(|_| CompressError)?;
        let written =
            usize::try_from(stream.total_out() - out_before).map_err(|_| CompressError)?;
        consumed += used;
        // zlib's rule: with all input given, a flush is complete once a call
        // returns with output room to spare.
        if consumed == input.len() && written < room {
            return Ok(());
        }
        if used == 0 && written == 0 {
            // No progress with input and room available: never expected.
            return Err(CompressError);
        }
    }
}

/// Where the current message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No message in progress; the next `feed` starts one.
    Idle,
    /// Inside a message, with this many bytes inflated so far.
    Inflating { produced: usize },
    /// The message was refused; every call repeats it until `begin`.
    Failed(InflateError),
}

/// Inflates one message at a time under a hard size limit; one per event
/// loop (see the module doc on interleaving).
pub(crate) struct Decompressor {
    /// Created on first use, then reset per message (keeping its window).
    stream: Option<Decompress>,
    state: State,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("allocated", &self.stream.is_some())
            .field("state", &self.state)
            .finish()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    /// Allocates nothing until the first message.
    pub(crate) fn new() -> Self {
        Decompressor {
            stream: None,
            state: State::Idle,
        }
    }

    /// Starts a new message, dropping whatever the last one left (including
    /// a failure or a message abandoned midway).
    pub(crate) fn begin(&mut self) {
        match &mut self.stream {
            Some(stream) => stream.reset(false),
            None => {
                self.stream = Some(Decompress::new_with_window_bits(false, INFLATE_WINDOW_BITS));
            }
        }
        self.state = State::Inflating { produced: 0 };
    }

    /// Inflates the next chunk of the message's payload, appending to `out`.
    ///
    /// `limit` is the largest inflated message allowed (inclusive), counted
    /// over the whole message, not over `out`. Output is produced in bounded
    /// steps and checked as it grows: past the limit this fails with
    /// [`InflateError::TooBig`] having appended at most `limit + 1` bytes of
    /// this message, and without growing `out`'s capacity beyond that. On an
    /// error `out` holds partial output to discard.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        if self.state == State::Idle {
            self.begin();
        }
        let result = self.inflate(chunk, out, limit);
        if let Err(err) = result {
            self.state = State::Failed(err);
        }
        result
    }

    /// Ends the message: appends the stripped `00 00 ff ff` (RFC 7692 §7.2.2)
    /// so the last block's output is flushed into `out`.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        if self.state == State::Idle {
            self.begin();
        }
        let result = self.inflate(&SYNC_TRAILER, out, limit);
        self.state = match result {
            Ok(()) => State::Idle,
            Err(err) => State::Failed(err),
        };
        result
    }

    /// `begin`, `feed` and `finish` for a message already in one slice.
    pub(crate) fn inflate_message(
        &mut self,
        compressed: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        self.begin();
        self.feed(compressed, out, limit)?;
        self.finish(out, limit)
    }

    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        let mut produced = match self.state {
            State::Inflating { produced } => produced,
            State::Failed(err) => return Err(err),
            // `feed` and `finish` begin a message first.
            State::Idle => return Err(InflateError::Corrupt),
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(InflateError::Corrupt);
        };
        loop {
            // One byte past the limit is enough to tell that it was exceeded.
            let allowance = limit.saturating_sub(produced).saturating_add(1);
            let step = produced.clamp(MIN_INFLATE_STEP, MAX_INFLATE_STEP);
            let space = step.min(allowance);
            reserve_within(out, space, allowance);
            let start = out.len();
            out.resize(start + space, 0);
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            let status = stream.decompress(input, &mut out[start..], FlushDecompress::None);
            let used = to_usize(stream.total_in() - in_before)?;
            let written = to_usize(stream.total_out() - out_before)?;
            out.truncate(start + written);
            produced = produced.saturating_add(written);
            input = input.get(used..).ok_or(InflateError::Corrupt)?;
            let status = status.map_err(|_| InflateError::Corrupt)?;
            if produced > limit {
                return Err(InflateError::TooBig);
            }
            self.state = State::Inflating { produced };
            if status == Status::StreamEnd {
                // A block with BFINAL set ends the DEFLATE stream, but RFC
                // 7692 §7.2.1 lets more blocks follow it (at least the rest of
                // the appended empty stored block, §7.2.3.4). They are read
                // as a fresh stream: one that refers back across the final
                // block fails as Corrupt, never as wrong data.
                stream.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if written == space {
                // The output step filled up: more may be pending.
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if used == 0 && written == 0 {
                // Input and room both available, yet no progress.
                return Err(InflateError::Corrupt);
            }
        }
    }
}

fn to_usize(n: u64) -> Result<usize, InflateError> {
    usize::try_from(n).map_err(|_| InflateError::Corrupt)
}

/// Makes room for `additional` more bytes, growing geometrically as `Vec`
/// would but never past `max_additional` beyond the current length: a bomb
/// must not get a doubling past the limit for free.
fn reserve_within(out: &mut Vec<u8>, additional: usize, max_additional: usize) {
    let needed = out.len().saturating_add(additional);
    if needed <= out.capacity() {
        return;
    }
    let ceiling = out.len().saturating_add(max_additional).max(needed);
    let target = out.capacity().saturating_mul(2).clamp(needed, ceiling);
    out.reserve_exact(target - out.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::deflate::reference_inflate;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    /// RFC 7692 §7.2.3.1: "Hello" in one compressed block.
    const HELLO: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    /// xorshift64*: reproducible data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    /// Word salad: compressible like real text, with matches at all distances.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "lazy",
            "dog",
            "message",
            "frame",
            "window",
            "deflate",
            "subscriber",
            "broadcast",
            "{\"id\":",
            "\"price\":",
            "12.5,",
            "\n",
        ];
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            out.push(b' ');
        }
        out.truncate(len);
        out
    }

    fn window(bits: u8) -> WindowBits {
        WindowBits::new(bits).unwrap()
    }

    fn compress(level: u32, bits: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::new(level)
            .compress(window(bits), payload, &mut out)
            .unwrap();
        out
    }

    fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        Decompressor::new().inflate_message(compressed, &mut out, limit)?;
        Ok(out)
    }

    #[test]
    fn hello_compresses_to_the_rfc_bytes() {
        let mut compressor = Compressor::new(6);
        for bits in 9..=15 {
            let mut out = Vec::new();
            compressor
                .compress(window(bits), b"Hello", &mut out)
                .unwrap();
            assert_eq!(out, HELLO, "window {bits}");
        }
    }

    #[test]
    fn rfc_examples_inflate() {
        // §7.2.3.1, whole and split as in the fragmented variant.
        assert_eq!(inflate(HELLO, 5).unwrap(), b"Hello");
        let mut decompressor = Decompressor::new();
        let mut out = Vec::new();
        decompressor.begin();
        decompressor.feed(&[0xf2, 0x48, 0xcd], &mut out, 5).unwrap();
        decompressor
            .feed(&[0xc9, 0xc9, 0x07, 0x00], &mut out, 5)
            .unwrap();
        decompressor.finish(&mut out, 5).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.3: a stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored, 5).unwrap(), b"Hello");
        // §7.2.3.4: BFINAL set, then the stripped empty block's first byte.
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&last, 5).unwrap(), b"Hello");
        assert_eq!(inflate(&last[..7], 5).unwrap(), b"Hello");
        // §7.2.3.5: two blocks with a sync flush between them.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(inflate(&two, 5).unwrap(), b"Hello");
    }

    #[test]
    fn blocks_after_a_final_block_form_a_fresh_stream() {
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        // Another whole message's blocks after the final one.
        let twice = [&last[..], HELLO].concat();
        assert_eq!(inflate(&twice, 10).unwrap(), b"HelloHello");
        // The limit spans both streams.
        assert_eq!(inflate(&twice, 9), Err(InflateError::TooBig));
        // A sender whose only block is a final, empty fixed one.
        assert_eq!(inflate(&[0x03, 0x00], 0).unwrap(), b"");
        // Split anywhere, the result is the same.
        let message = [&last[..], &[0x00]].concat();
        for at in 0..=message.len() {
            let mut decompressor = Decompressor::new();
            let mut out = Vec::new();
            decompressor.feed(&message[..at], &mut out, 5).unwrap();
            decompressor.feed(&message[at..], &mut out, 5).unwrap();
            decompressor.finish(&mut out, 5).unwrap();
            assert_eq!(out, b"Hello", "split at {at}");
        }
        // Garbage, or a reference back across the final block, is refused.
        for tail in [&[0xff][..], &[0x06], &[0x02, 0x02, 0x00]] {
            let message = [&last[..], tail].concat();
            assert_eq!(
                inflate(&message, 100),
                Err(InflateError::Corrupt),
                "{tail:02x?}"
            );
        }
    }

    #[test]
    fn empty_message_is_one_zero_byte() {
        for level in [0, 1, 6, 9] {
            for bits in 9..=15 {
                assert_eq!(
                    compress(level, bits, b""),
                    [0x00],
                    "level {level} window {bits}"
                );
            }
        }
        assert_eq!(inflate(&[0x00], 0).unwrap(), b"");
        // An empty payload with RSV1 set inflates to nothing as well.
        assert_eq!(inflate(&[], 0).unwrap(), b"");
    }

    #[test]
    fn round_trips_across_sizes_windows_and_levels() {
        let sizes = [0, 1, 125, 126, 65535, 65536];
        let mut compressor = Compressor::new(0);
        let mut decompressor = Decompressor::new();
        let mut compressed = Vec::new();
        let mut inflated = Vec::new();
        let mut case = 0u64;
        for level in [0, 1, 6, 9] {
            compressor.set_level(level);
            for bits in 9..=15 {
                for &size in &sizes {
                    case += 1;
                    // Alternate kinds so every pair sees both over the sizes.
                    let payload = if case.is_multiple_of(2) {
                        text(size, case)
                    } else {
                        random_bytes(size, case)
                    };
                    compressed.clear();
                    compressor
                        .compress(window(bits), &payload, &mut compressed)
                        .unwrap();
                    inflated.clear();
                    decompressor
                        .inflate_message(&compressed, &mut inflated, size)
                        .unwrap();
                    assert!(
                        inflated == payload,
                        "level {level} window {bits} size {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn round_trips_one_mebibyte() {
        let cases = [(1, 9, true), (6, 15, true), (9, 12, false), (0, 15, false)];
        for (level, bits, is_text) in cases {
            let payload = if is_text {
                text(MIB, 7)
            } else {
                random_bytes(MIB, 7)
            };
            let compressed = compress(level, bits, &payload);
            if is_text {
                assert!(compressed.len() < payload.len() / 2);
            }
            let inflated = inflate(&compressed, MIB).unwrap();
            assert!(inflated == payload, "level {level} window {bits}");
        }
    }

    #[test]
    fn every_split_point_inflates_the_same() {
        let payload = text(300, 3);
        let compressed = compress(6, 15, &payload);
        let mut decompressor = Decompressor::new();
        for at in 0..=compressed.len() {
            let (a, b) = compressed.split_at(at);
            let mut out = Vec::new();
            decompressor.begin();
            decompressor.feed(a, &mut out, payload.len()).unwrap();
            decompressor.feed(b, &mut out, payload.len()).unwrap();
            decompressor.finish(&mut out, payload.len()).unwrap();
            assert!(out == payload, "split at {at}");
        }
        let mut out = Vec::new();
        decompressor.begin();
        for byte in &compressed {
            decompressor
                .feed(std::slice::from_ref(byte), &mut out, payload.len())
                .unwrap();
        }
        decompressor.finish(&mut out, payload.len()).unwrap();
        assert!(out == payload);
    }

    #[test]
    fn random_chunks_inflate_the_same() {
        let mut rng = Rng(11);
        for (bits, payload) in [(15, text(256 * KIB, 5)), (10, random_bytes(100 * KIB, 6))] {
            let compressed = compress(6, bits, &payload);
            let mut decompressor = Decompressor::new();
            let mut out = Vec::new();
            let mut rest = &compressed[..];
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at((1 + rng.below(5000)).min(rest.len()));
                decompressor.feed(chunk, &mut out, payload.len()).unwrap();
                rest = after;
            }
            decompressor.finish(&mut out, payload.len()).unwrap();
            assert!(out == payload, "window {bits}");
        }
    }

    #[test]
    fn a_bomb_fails_before_growing_past_the_limit() {
        let zeros = vec![0u8; 10 * MIB];
        let bomb = compress(9, 15, &zeros);
        assert!(bomb.len() < 16 * KIB, "bomb is {} bytes", bomb.len());
        let limit = MIB;
        let mut decompressor = Decompressor::new();

        let mut out = Vec::new();
        let result = decompressor.inflate_message(&bomb, &mut out, limit);
        assert_eq!(result, Err(InflateError::TooBig));
        assert!(out.len() <= limit + 1, "wrote {}", out.len());
        assert!(out.capacity() <= limit + 1, "allocated {}", out.capacity());

        // Fed in chunks, the limit still counts over the whole message.
        let mut out = Vec::new();
        decompressor.begin();
        let mut result = Ok(());
        for chunk in bomb.chunks(100) {
            result = decompressor.feed(chunk, &mut out, limit);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(InflateError::TooBig));
        assert!(out.capacity() <= limit + 1, "allocated {}", out.capacity());

        // The next message starts clean.
        assert_eq!(inflate(HELLO, 5).unwrap(), b"Hello");
        let mut out = Vec::new();
        decompressor.inflate_message(HELLO, &mut out, 5).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn limit_is_inclusive_and_counts_the_message_only() {
        let payload = text(100 * KIB, 9);
        let compressed = compress(6, 15, &payload);
        assert!(inflate(&compressed, payload.len()).unwrap() == payload);
        assert_eq!(
            inflate(&compressed, payload.len() - 1).map(|_| ()),
            Err(InflateError::TooBig)
        );
        // Bytes already in `out` do not count.
        let mut out = vec![1u8; 200 * KIB];
        Decompressor::new()
            .inflate_message(&compressed, &mut out, payload.len())
            .unwrap();
        assert!(out[200 * KIB..] == payload[..]);
        // The trailer flushes the last bytes, and those count too.
        assert_eq!(inflate(HELLO, 4), Err(InflateError::TooBig));
        assert_eq!(inflate(HELLO, 0), Err(InflateError::TooBig));
    }

    #[test]
    fn corrupt_input_is_refused() {
        let cases: &[&[u8]] = &[
            // BTYPE 11 is reserved.
            &[0x06],
            &[0xff, 0xff, 0xff, 0xff],
            // A stored block whose NLEN is not the complement of LEN.
            &[0x00, 0x05, 0x00, 0x00, 0x00, b'H'],
            // A fixed block whose first symbol copies from 1 byte back,
            // before the start of the message.
            &[0x02, 0x02, 0x00],
        ];
        for &case in cases {
            assert_eq!(
                inflate(case, MIB),
                Err(InflateError::Corrupt),
                "{case:02x?}"
            );
        }
    }

    #[test]
    fn failure_sticks_until_begin() {
        let mut decompressor = Decompressor::new();
        let mut out = Vec::new();
        assert_eq!(
            decompressor.feed(&[0x06], &mut out, 100),
            Err(InflateError::Corrupt)
        );
        assert_eq!(
            decompressor.feed(HELLO, &mut out, 100),
            Err(InflateError::Corrupt)
        );
        assert_eq!(
            decompressor.finish(&mut out, 100),
            Err(InflateError::Corrupt)
        );
        decompressor.begin();
        out.clear();
        decompressor.feed(HELLO, &mut out, 100).unwrap();
        decompressor.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // After `finish` the next `feed` starts a new message by itself.
        out.clear();
        decompressor.feed(HELLO, &mut out, 100).unwrap();
        decompressor.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn compressor_keeps_no_context_between_messages() {
        let first = text(10 * KIB, 1);
        let second = [&first[..2 * KIB], &text(KIB, 2)[..]].concat();
        let mut shared = Compressor::new(6);
        for bits in [15, 9, 15, 12] {
            let mut out = Vec::new();
            shared.compress(window(bits), &first, &mut out).unwrap();
            out.clear();
            shared.compress(window(bits), &second, &mut out).unwrap();
            assert!(out == compress(6, bits, &second), "window {bits}");
            assert!(
                inflate(&out, second.len()).unwrap() == second,
                "window {bits}"
            );
        }
    }

    #[test]
    fn output_stays_within_the_negotiated_window() {
        // Repeats 4 KiB apart: a 32 KiB window reaches back for them.
        let block = random_bytes(4 * KIB, 21);
        let payload = block.repeat(8);
        for bits in 9..=15 {
            let compressed = compress(6, bits, &payload);
            let decoded = reference_inflate::decode(&[&compressed[..], &SYNC_TRAILER].concat());
            let decoded = decoded.unwrap();
            assert!(decoded.data == payload, "window {bits}");
            assert!(
                decoded.max_distance <= 1 << bits,
                "window {bits} reached back {}",
                decoded.max_distance
            );
            if bits >= 13 {
                // Big enough to see the repeats, and it does use them.
                assert!(decoded.max_distance > 1 << 9, "window {bits}");
                assert!(compressed.len() < payload.len() / 4, "window {bits}");
            }
        }
    }

    #[test]
    fn levels_are_clamped_and_reloadable() {
        let payload = text(4 * KIB, 4);
        let mut compressor = Compressor::new(42);
        assert_eq!(compressor.level(), MAX_LEVEL);
        let mut best = Vec::new();
        compressor
            .compress(WindowBits::MAX, &payload, &mut best)
            .unwrap();
        compressor.set_level(0);
        let mut stored = Vec::new();
        compressor
            .compress(WindowBits::MAX, &payload, &mut stored)
            .unwrap();
        assert!(stored.len() > payload.len(), "level 0 only stores");
        assert!(best.len() < payload.len() / 2);
        assert!(inflate(&stored, payload.len()).unwrap() == payload);
    }

    #[test]
    fn compress_appends_to_out() {
        let mut out = b"header".to_vec();
        Compressor::new(6)
            .compress(WindowBits::MAX, b"Hello", &mut out)
            .unwrap();
        assert_eq!(&out[..6], b"header");
        assert_eq!(&out[6..], HELLO);
    }

    #[test]
    fn reserve_within_never_passes_the_ceiling() {
        let ceiling = 5000;
        let mut out = Vec::new();
        while out.len() < ceiling {
            let max = ceiling - out.len();
            reserve_within(&mut out, max.min(1000), max);
            assert!(out.capacity() <= ceiling, "capacity {}", out.capacity());
            out.resize(out.len() + max.min(700), 0);
        }
    }
}
