//! A connection's outbound byte queue.
//!
//! Owns: bytes accepted for sending but not yet taken by the socket, in order.
//! Small frames produced for one connection are packed into one owned buffer;
//! frames broadcast to many connections are shared by reference count, never
//! copied per recipient.
//! The whole queue goes out in vectored writes to a [`Sink`]: the socket's
//! transport in the loop, a `Vec` in tests.
//! Must never: hold memory while empty (an idle connection owns no buffer),
//! reorder bytes, or cut a frame (what it drops, it drops as whole chunks).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use crate::protocol::frame::{self, OpCode};

/// Most slices handed to one `writev` call; Linux accepts 1024, but past a
/// few dozen the call is no cheaper per byte.
const MAX_IOVECS: usize = 64;
/// Owned buffers are not grown past this for packing small frames; a larger
/// frame gets a buffer of its own.
const PACK_LIMIT: usize = 64 * 1024;

/// A sealed run of bytes: this connection's own, or a broadcast frame shared
/// by reference count with every other recipient.
#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// A connection's queue: nothing at all while empty, so an idle connection
/// pays one pointer for it.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    inner: Option<Box<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sealed chunks, oldest first.
    chunks: VecDeque<Chunk>,
    /// The buffer small frames are packed into; logically after `chunks`.
    tail: Vec<u8>,
    /// Bytes of the front of the queue (first chunk, else `tail`) already written.
    sent: usize,
    /// Unsent bytes in the whole queue.
    len: usize,
    /// Unsent bytes at the front of the queue that the slow-consumer rule
    /// does not count: a recovery's replay (and whatever preceded it).
    exempt: usize,
}

/// Emptied queues kept for reuse by the loop's thread, so a connection that
/// sends a burst and drains it again costs no allocation in steady state.
const SPARE_QUEUES: usize = 256;
/// A spare keeps its packing buffer only up to this capacity.
const SPARE_TAIL_CAPACITY: usize = 16 * 1024;

thread_local! {
    // Boxed on purpose: a spare is handed out as the very box a queue holds.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Inner>>> = const { RefCell::new(Vec::new()) };
}

fn take_spare() -> Box<Inner> {
    SPARE
        .with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .unwrap_or_default()
}

fn give_back(mut inner: Box<Inner>) {
    if inner.tail.capacity() > SPARE_TAIL_CAPACITY {
        inner.tail = Vec::new();
    }
    inner.tail.clear();
    inner.chunks.clear();
    inner.sent = 0;
    inner.len = 0;
    inner.exempt = 0;
    SPARE.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < SPARE_QUEUES
        {
            spare.push(inner);
        }
    });
}

/// Where queued bytes go: anything that takes vectored writes without
/// blocking (a `WouldBlock` error means "full, try later").
pub(super) trait Sink {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// The result of trying to empty the queue into the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flush {
    /// Everything was written.
    Done,
    /// The socket is full; wait for WRITABLE.
    Blocked,
}

impl OutQueue {
    pub(super) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unsent bytes the slow-consumer rule counts: all but the exempt front.
    pub(super) fn counted_len(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.len.saturating_sub(i.exempt))
    }

    /// Exempts `bytes` more of what is queued from the slow-consumer rule
    /// until written: a recovery's replay, bounded by `max_replay` and the
    /// history's own size, is not a sign of a slow reader. The exemption is
    /// an amount, used up by the first bytes written whatever they are, so
    /// it never covers more than the replay itself (queued live messages
    /// ahead of it only make it end sooner).
    pub(super) fn exempt(&mut self, bytes: usize) {
        if let Some(inner) = self.inner.as_mut() {
            inner.exempt = inner.exempt.saturating_add(bytes).min(inner.len);
        }
    }

    fn inner(&mut self) -> &mut Inner {
        self.inner.get_or_insert_with(take_spare)
    }

    /// Appends one unmasked, final frame, packed with its neighbours.
    pub(super) fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let inner = self.inner();
        inner.make_room(payload.len() + frame::MAX_HEADER_LEN);
        let before = inner.tail.len();
        frame::write_frame(&mut inner.tail, true, 0, opcode, payload);
        inner.len += inner.tail.len() - before;
    }

    /// Lets `write` append bytes (an HTTP response) straight into the queue.
    pub(super) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.push_sized(256, write);
    }

    /// Like [`OutQueue::push_with`] for output of at most about `size`
    /// bytes, so a large frame gets a buffer of its own instead of growing
    /// (and copying) the one small frames are packed into.
    pub(super) fn push_sized(&mut self, size: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let inner = self.inner();
        inner.make_room(size);
        let before = inner.tail.len();
        write(&mut inner.tail);
        inner.len += inner.tail.len() - before;
    }

    /// Appends a frame shared with other connections: no copy, one more
    /// reference.
    pub(super) fn push_shared(&mut self, frame: Rc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        let inner = self.inner();
        inner.seal_tail();
        inner.len += frame.len();
        inner.chunks.push_back(Chunk::Shared(frame));
    }

    /// Drops every broadcast frame not yet started, keeping the one partly
    /// written (so the peer gets it whole) and the connection's own bytes
    /// (handshake answer, control frames), which are whole frames packed in
    /// order. Used before a final close frame for a slow consumer.
    pub(super) fn drop_unsent_broadcasts(&mut self) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        // `sent` counts into the front chunk, which is kept when it is nonzero.
        let started = inner.sent > 0;
        let mut index = 0usize;
        inner.chunks.retain(|chunk| {
            let keep = matches!(chunk, Chunk::Owned(_)) || (index == 0 && started);
            index += 1;
            keep
        });
        let total: usize =
            inner.chunks.iter().map(|c| c.bytes().len()).sum::<usize>() + inner.tail.len();
        inner.len = total.saturating_sub(inner.sent);
        inner.exempt = inner.exempt.min(inner.len);
    }

    /// Writes as much as the sink takes, in vectored writes.
    pub(super) fn flush(&mut self, sink: &mut impl Sink) -> io::Result<Flush> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Flush::Done);
        };
        let result = inner.flush(sink);
        if inner.len == 0 {
            // Give every buffer back: idle connections hold nothing.
            if let Some(inner) = self.inner.take() {
                give_back(inner);
            }
        }
        result
    }
}

impl Inner {
    /// Seals the packing buffer when `extra` more bytes would grow it past
    /// the packing limit, so one huge frame never reallocates many small ones.
    fn make_room(&mut self, extra: usize) {
        if !self.tail.is_empty() && self.tail.len() + extra > PACK_LIMIT {
            self.seal_tail();
        }
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(extra.clamp(256, PACK_LIMIT));
        }
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let full = std::mem::take(&mut self.tail);
            self.chunks.push_back(Chunk::Owned(full));
        }
    }

    fn flush(&mut self, sink: &mut impl Sink) -> io::Result<Flush> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let pieces = self
                .chunks
                .iter()
                .map(Chunk::bytes)
                .chain(std::iter::once(self.tail.as_slice()))
                .filter(|b| !b.is_empty());
            for (i, bytes) in pieces.take(MAX_IOVECS).enumerate() {
                let start = if i == 0 {
                    self.sent.min(bytes.len())
                } else {
                    0
                };
                slices[count] = IoSlice::new(&bytes[start..]);
                count += 1;
            }
            match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }

    fn consume(&mut self, mut n: usize) {
        self.len = self.len.saturating_sub(n);
        self.exempt = self.exempt.saturating_sub(n);
        while n > 0 {
            let front_len = match self.chunks.front() {
                Some(chunk) => chunk.bytes().len(),
                None => self.tail.len(),
            };
            let left = front_len.saturating_sub(self.sent);
            if n < left {
                self.sent += n;
                break;
            }
            n -= left;
            self.sent = 0;
            if self.chunks.pop_front().is_none() {
                self.tail.clear();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::harness::Wire;

    #[test]
    fn an_exempt_front_is_not_counted_until_written() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 100]));
        let queued = queue.len();
        queue.exempt(queued);
        queue.push_shared(Rc::from(vec![2u8; 10]));
        assert_eq!((queue.len(), queue.counted_len()), (110, 10));
        let mut wire = Wire {
            room: 60,
            ..Wire::default()
        };
        queue.flush(&mut wire).unwrap();
        assert_eq!((queue.len(), queue.counted_len()), (50, 10));
        wire.room = usize::MAX;
        queue.flush(&mut wire).unwrap();
        assert_eq!((queue.len(), queue.counted_len()), (0, 0));
    }

    #[test]
    fn an_exemption_covers_only_its_own_bytes() {
        // Live bytes already queued (40), then a replay of 100 exempted:
        // the 40 still count, and the exemption is used up by whatever is
        // written first, so it never hides more than the replay.
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 40]));
        queue.push_shared(Rc::from(vec![2u8; 100]));
        queue.exempt(100);
        assert_eq!((queue.len(), queue.counted_len()), (140, 40));
        queue.exempt(1_000);
        assert_eq!(queue.counted_len(), 0, "never more than what is queued");
        let mut wire = Wire {
            room: 40,
            ..Wire::default()
        };
        let mut queue2 = OutQueue::default();
        queue2.push_shared(Rc::from(vec![1u8; 40]));
        queue2.push_shared(Rc::from(vec![2u8; 100]));
        queue2.exempt(100);
        queue2.flush(&mut wire).unwrap();
        assert_eq!((queue2.len(), queue2.counted_len()), (100, 40));
    }

    #[test]
    fn flushes_in_order_across_a_full_sink_and_frees_when_empty() {
        let mut queue = OutQueue::default();
        queue.push_frame(OpCode::Text, b"ab");
        queue.push_shared(Rc::from(vec![7u8; 5]));
        queue.push_frame(OpCode::Pong, b"");
        let mut sink = Wire {
            room: 3,
            ..Wire::default()
        };
        assert_eq!(queue.flush(&mut sink).unwrap(), Flush::Blocked);
        assert_eq!(queue.len(), 4 + 5 + 2 - 3);
        sink.room = 100;
        assert_eq!(queue.flush(&mut sink).unwrap(), Flush::Done);
        assert_eq!(
            sink.bytes,
            [0x81, 2, b'a', b'b', 7, 7, 7, 7, 7, 0x8A, 0].to_vec()
        );
        assert!(queue.inner.is_none(), "an empty queue holds no buffer");
    }

    #[test]
    fn dropping_unsent_broadcasts_keeps_the_frame_in_flight_and_own_bytes() {
        let mut queue = OutQueue::default();
        let a: Rc<[u8]> = Rc::from(vec![1u8; 10]);
        let b: Rc<[u8]> = Rc::from(vec![2u8; 10]);
        queue.push_shared(Rc::clone(&a));
        queue.push_shared(Rc::clone(&b));
        let mut sink = Wire {
            room: 4,
            ..Wire::default()
        };
        assert_eq!(queue.flush(&mut sink).unwrap(), Flush::Blocked);
        queue.push_frame(OpCode::Pong, b"");
        queue.drop_unsent_broadcasts();
        assert_eq!(queue.len(), 6 + 2, "rest of `a` and the pong");
        sink.room = usize::MAX / 2;
        assert_eq!(queue.flush(&mut sink).unwrap(), Flush::Done);
        let mut expected = vec![1u8; 10];
        expected.extend_from_slice(&[0x8A, 0]);
        assert_eq!(sink.bytes, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_broadcast_not_yet_started_is_dropped_whole() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 10]));
        queue.drop_unsent_broadcasts();
        assert!(queue.is_empty());
    }
}
