//! One connection to Redis, sans-IO: its state, the bytes to send and the
//! bytes received, its liveness check and its reconnect backoff.
//!
//! Owns: the link's state (`Down → Connecting → LoggingIn → Up → Down`),
//! RESP encoding of commands into one output buffer (written once per loop
//! turn by the server) and decoding of replies with `redis-protocol`, the
//! time of the outstanding check, and the jittered exponential backoff.
//! Must never: touch a socket or a clock (bytes and `now` come in), block,
//! or hold more received bytes than one reply needs (a peer that sends more
//! than [`MAX_REPLY_BYTES`] of one reply is cut off).

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

/// The largest single reply a link buffers: a published message (up to
/// `max_message_size`, 16 MiB by default) plus its envelope and framing
/// fits many times over.
pub(crate) const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// No socket; the next attempt is at `retry_at` (loop milliseconds).
    Down { retry_at: u64 },
    /// The TCP connection is being made (since `since`).
    Connecting { since: u64 },
    /// Connected; login and setup commands are in flight (since `since`).
    LoggingIn { since: u64 },
    /// Ready for work.
    Up,
}

/// Jittered exponential backoff between `min` and `max` milliseconds.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    pub min: u64,
    pub max: u64,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: u64, max: u64, seed: u64) -> Backoff {
        Backoff {
            min: min.max(1),
            max: max.max(min.max(1)),
            failures: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// The wait before the next attempt: `min · 2^failures` capped at
    /// `max`, then a uniformly random point in its upper half, so nodes
    /// that lost Redis together do not come back in step.
    pub(crate) fn next_delay(&mut self) -> u64 {
        let base = self
            .min
            .saturating_mul(1u64 << self.failures.min(32))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        base - half + self.rng % (half + 1)
    }

    /// A link came up: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One link's buffers and state. `Debug` shows the buffers' sizes only:
/// the output may hold an `AUTH` command.
pub(crate) struct Link {
    pub state: State,
    /// Encoded commands not yet written to the socket.
    out: Vec<u8>,
    /// Received bytes that do not make a whole reply yet.
    partial: Vec<u8>,
    /// When the outstanding liveness check was sent.
    pub check_sent: Option<u64>,
    /// When the next liveness check is due (while up).
    pub next_check: u64,
    pub backoff: Backoff,
    /// Why the link last went down (for `/healthz` and logs).
    pub last_error: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("state", &self.state)
            .field("out_bytes", &self.out.len())
            .field("partial_bytes", &self.partial.len())
            .field("check_sent", &self.check_sent)
            .field("next_check", &self.next_check)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(backoff: Backoff) -> Link {
        Link {
            state: State::Down { retry_at: 0 },
            out: Vec::new(),
            partial: Vec::new(),
            check_sent: None,
            next_check: 0,
            backoff,
            last_error: "not connected yet".to_owned(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Has a socket (connecting, logging in or up).
    pub(crate) fn is_connected(&self) -> bool {
        !matches!(self.state, State::Down { .. })
    }

    /// Appends one command (an array of bulk strings) to the output.
    pub(crate) fn command(&mut self, args: &[&[u8]]) {
        const INLINE: usize = 12;
        if args.len() <= INLINE {
            let frames: [BorrowedFrame<'_>; INLINE] = std::array::from_fn(|i| match args.get(i) {
                Some(arg) => BorrowedFrame::BulkString(arg),
                None => BorrowedFrame::Null,
            });
            self.encode(&BorrowedFrame::Array(&frames[..args.len()]));
        } else {
            let frames: Vec<_> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
            self.encode(&BorrowedFrame::Array(&frames));
        }
    }

    fn encode(&mut self, frame: &BorrowedFrame<'_>) {
        let start = self.out.len();
        self.out.resize(start + frame.encode_len(false), 0);
        match encode_borrowed(&mut self.out[start..], frame, false) {
            Ok(n) => self.out.truncate(start + n),
            // The buffer was sized by the encoder itself; should it still
            // refuse, the command is dropped rather than sent garbled.
            Err(_) => self.out.truncate(start),
        }
    }

    /// Bytes waiting to be written.
    pub(crate) fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of the output were written.
    pub(crate) fn consume(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Decodes whole replies from `input` (after any partial one kept from
    /// before), handing each to `f`. A protocol error or an oversized reply
    /// is an error: the link must be dropped.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        mut f: impl FnMut(OwnedFrame),
    ) -> Result<(), String> {
        let mut kept = std::mem::take(&mut self.partial);
        let buf: &[u8] = if kept.is_empty() {
            input
        } else {
            kept.extend_from_slice(input);
            &kept
        };
        let mut at = 0;
        while at < buf.len() {
            match decode(&buf[at..]) {
                Ok(Some((frame, used))) => {
                    at += used;
                    f(frame);
                }
                Ok(None) => break,
                Err(e) => return Err(format!("bad reply from redis: {e:?}")),
            }
        }
        let rest = &buf[at..];
        if rest.len() > MAX_REPLY_BYTES {
            return Err("reply from redis too large".to_owned());
        }
        if rest.is_empty() {
            kept.clear();
            self.partial = kept;
        } else if kept.is_empty() {
            self.partial = rest.to_vec();
        } else {
            kept.drain(..at);
            self.partial = kept;
        }
        Ok(())
    }

    /// The socket is gone: drop buffers, wait out the backoff.
    pub(crate) fn down(&mut self, now: u64, reason: String) {
        let delay = self.backoff.next_delay();
        self.state = State::Down {
            retry_at: now.saturating_add(delay),
        };
        self.out = Vec::new();
        self.partial = Vec::new();
        self.check_sent = None;
        self.last_error = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 1_000, 42);
        let mut previous_base = 0;
        for i in 0..8u32 {
            let base = (100u64 << i).min(1_000);
            let d = b.next_delay();
            assert!(
                d >= base - base / 2 && d <= base,
                "attempt {i}: {d} for {base}"
            );
            assert!(base >= previous_base);
            previous_base = base;
        }
        b.reset();
        assert!(b.next_delay() <= 100);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let a: Vec<u64> = (0..6)
            .map({
                let mut b = Backoff::new(1000, 60_000, 1);
                move |_| b.next_delay()
            })
            .collect();
        let c: Vec<u64> = (0..6)
            .map({
                let mut b = Backoff::new(1000, 60_000, 7);
                move |_| b.next_delay()
            })
            .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut link = Link::new(Backoff::new(1, 1, 1));
        link.command(&[b"PING"]);
        link.command(&[b"SET", b"k", b"v"]);
        assert_eq!(
            link.output(),
            b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
        );
        link.consume(14);
        assert!(link.output().starts_with(b"*3"));
        let many: Vec<&[u8]> = vec![b"SUBSCRIBE"; 20];
        link.command(&many);
        assert!(link.output().ends_with(b"$9\r\nSUBSCRIBE\r\n"));
    }

    #[test]
    fn replies_split_anywhere_decode_once() {
        let wire = b"+OK\r\n:42\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for split in 0..wire.len() {
            let mut link = Link::new(Backoff::new(1, 1, 1));
            let mut got = Vec::new();
            link.decode(&wire[..split], |f| got.push(f)).unwrap();
            link.decode(&wire[split..], |f| got.push(f)).unwrap();
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[1], OwnedFrame::Integer(42));
        }
        let mut link = Link::new(Backoff::new(1, 1, 1));
        assert!(link.decode(b"?what\r\n", |_| {}).is_err());
    }
}
