//! A connection's outbound byte queue.
//!
//! Owns: bytes accepted for sending but not yet taken by the socket, in order.
//! Small frames produced for one connection are packed into one owned buffer;
//! frames broadcast to many connections are shared by reference count, never
//! copied per recipient.
//! The whole queue goes out in vectored writes to a [`Sink`]: the socket's
//! transport in the loop, a `Vec` in tests. For a handover, every unsent
//! byte can be taken out in order and a queue rebuilt from them.
//! Must never: hold memory of its own while empty (an idle connection owns
//! no buffer), keep any after the socket took everything (so a subscriber
//! that has received messages costs what a fresh one does), reorder bytes,
//! or cut a frame (what it drops, it drops as whole chunks).
//!
//! # Broadcast frames without a queue of their own
//!
//! A subscriber whose queue is empty when a broadcast frame comes keeps no
//! buffer for it: the frame is listed in the loop's [`TurnList`] (one
//! shared list for every connection, emptied when the last listed queue is
//! written), and the queue holds only where its entries start and end. The
//! flush at the end of the turn writes every frame listed for it in one
//! vectored write straight from the shared buffers. Only what the socket
//! does not take is moved into a queue of the connection's own, the same
//! queue that carries its own frames (handshake answer, pongs, close).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use crate::protocol::frame::{self, OpCode};

/// Most slices handed to one vectored write; Linux accepts 1024, but past a
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

/// A connection's queue: nothing at all while empty, two list indices while
/// it holds only broadcast frames of this turn, a queue of its own only
/// while the socket leaves bytes behind or the connection has frames of its
/// own to send.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Empty,
    /// Broadcast frames only, none written yet: entries `head` to `tail`
    /// of the [`TurnList`], `count` frames of `bytes` in all (kept here,
    /// in what the enum's size has room for anyway, so that neither is a
    /// walk of the run).
    Listed {
        head: u32,
        tail: u32,
        bytes: u32,
        count: u16,
    },
    Queued(Box<Inner>),
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
/// The turn list keeps the capacity of its vectors up to this many entries
/// between turns (64 Ki entries: 512 KiB of links), and frees the rest.
const TURN_LIST_KEPT: usize = 64 * 1024;
/// Most entries in the turn list. Past it, frames go into connections' own
/// queues until every listed run is written and the list starts afresh: a
/// loop that never catches up (a fan-out slice is still being written when
/// the next message comes, turn after turn) must not grow it without bound.
const TURN_LIST_LIMIT: usize = 1 << 20;
/// Marks the end of a listed run.
const NO_LINK: u32 = u32::MAX;

thread_local! {
    // Boxed on purpose: a spare is handed out as the very box a queue holds.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Inner>>> = const { RefCell::new(Vec::new()) };
    static TURN: RefCell<TurnList> = const { RefCell::new(TurnList::new()) };
}

/// The broadcast frames listed for connections this turn: each distinct
/// frame once, and one 8-byte link per delivery. Emptied as soon as no
/// queue is listed in it any more (the end of every turn's flush).
#[derive(Debug)]
struct TurnList {
    frames: Vec<Rc<[u8]>>,
    links: Vec<Link>,
    /// Queues in [`State::Listed`].
    listed: usize,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    frame: u32,
    next: u32,
}

impl TurnList {
    const fn new() -> TurnList {
        TurnList {
            frames: Vec::new(),
            links: Vec::new(),
            listed: 0,
        }
    }

    /// Appends `frame` after `tail` (or starts a run); the new entry, or
    /// `None` when the list is full.
    fn append(&mut self, frame: &Rc<[u8]>, tail: Option<u32>) -> Option<u32> {
        if self.links.len() >= TURN_LIST_LIMIT {
            return None;
        }
        // The same frame usually goes to many connections in a row (one
        // per format: look back two).
        let n = self.frames.len();
        let known = (n.saturating_sub(2)..n)
            .rev()
            .find(|&i| self.frames.get(i).is_some_and(|f| Rc::ptr_eq(f, frame)));
        let index = match known {
            Some(i) => i,
            None => {
                self.frames.push(Rc::clone(frame));
                n
            }
        };
        let at = u32::try_from(self.links.len())
            .ok()
            .filter(|&a| a != NO_LINK)?;
        let frame = u32::try_from(index).ok()?;
        self.links.push(Link {
            frame,
            next: NO_LINK,
        });
        match tail {
            Some(t) => {
                if let Some(link) = self.links.get_mut(t as usize) {
                    link.next = at;
                }
            }
            None => self.listed += 1,
        }
        Some(at)
    }

    /// The frames of the run starting at `head`, in order.
    fn run(&self, head: u32) -> impl Iterator<Item = &Rc<[u8]>> + '_ {
        let mut at = head;
        std::iter::from_fn(move || {
            let link = self.links.get(at as usize)?;
            at = link.next;
            self.frames.get(link.frame as usize)
        })
    }

    /// A run is no longer listed; the last one empties the list.
    fn release(&mut self) {
        self.listed = self.listed.saturating_sub(1);
        if self.listed == 0 {
            for_reuse(&mut self.links);
            for_reuse(&mut self.frames);
        }
    }
}

/// Empties `v`, keeping its capacity only up to [`TURN_LIST_KEPT`].
fn for_reuse<T>(v: &mut Vec<T>) {
    if v.capacity() > TURN_LIST_KEPT {
        *v = Vec::new();
    } else {
        v.clear();
    }
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

impl Drop for OutQueue {
    fn drop(&mut self) {
        if matches!(self.state, State::Listed { .. }) {
            // Not during the thread's own teardown, when the list is gone.
            let _ = TURN.try_with(|t| {
                if let Ok(mut t) = t.try_borrow_mut() {
                    t.release();
                }
            });
        }
    }
}

impl OutQueue {
    pub(super) fn len(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Listed { bytes, .. } => *bytes as usize,
            State::Queued(inner) => inner.len,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self.state, State::Empty)
    }

    /// Unsent bytes the slow-consumer rule counts: all but the exempt front.
    pub(super) fn counted_len(&self) -> usize {
        match &self.state {
            State::Queued(inner) => inner.len.saturating_sub(inner.exempt),
            _ => self.len(),
        }
    }

    /// Exempts `bytes` more of what is queued from the slow-consumer rule
    /// until written: a recovery's replay, bounded by `max_replay` and the
    /// history's own size, is not a sign of a slow reader. The exemption is
    /// an amount, used up by the first bytes written whatever they are, so
    /// it never covers more than the replay itself (queued live messages
    /// ahead of it only make it end sooner).
    pub(super) fn exempt(&mut self, bytes: usize) {
        if self.is_empty() {
            return;
        }
        let inner = self.inner();
        inner.exempt = inner.exempt.saturating_add(bytes).min(inner.len);
    }

    /// The queue of the connection's own, made from what is listed (if
    /// anything) when first needed.
    fn inner(&mut self) -> &mut Inner {
        if !matches!(self.state, State::Queued(_)) {
            let mut inner = take_spare();
            if let State::Listed { head, .. } = std::mem::take(&mut self.state) {
                TURN.with(|t| {
                    let mut t = t.borrow_mut();
                    for frame in t.run(head) {
                        inner.len += frame.len();
                        inner.chunks.push_back(Chunk::Shared(Rc::clone(frame)));
                    }
                    t.release();
                });
            }
            self.state = State::Queued(inner);
        }
        match &mut self.state {
            State::Queued(inner) => inner,
            // Just set above.
            _ => unreachable!("the queue was just made"),
        }
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
    /// reference; and while the queue holds nothing of its own, not even a
    /// buffer (the frame is listed for this turn's flush).
    pub(super) fn push_shared(&mut self, frame: Rc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        let added = u32::try_from(frame.len()).ok();
        let (tail, count, bytes) = match self.state {
            State::Empty => (None, 0, 0),
            // A run is written in one call: longer ones go into a queue.
            State::Listed {
                tail, count, bytes, ..
            } if usize::from(count) < MAX_IOVECS => (Some(tail), count, bytes),
            State::Listed { .. } => return self.queue_shared(frame),
            State::Queued(ref mut inner) => {
                inner.seal_tail();
                inner.len += frame.len();
                inner.chunks.push_back(Chunk::Shared(frame));
                return;
            }
        };
        let Some(bytes) = added.and_then(|a| bytes.checked_add(a)) else {
            return self.queue_shared(frame);
        };
        // `None` when the list is full.
        let Some(at) = TURN.with(|t| t.borrow_mut().append(&frame, tail)) else {
            return self.queue_shared(frame);
        };
        let head = match self.state {
            State::Listed { head, .. } => head,
            _ => at,
        };
        self.state = State::Listed {
            head,
            tail: at,
            bytes,
            count: count + 1,
        };
    }

    /// Appends a shared frame to the queue of the connection's own.
    fn queue_shared(&mut self, frame: Rc<[u8]>) {
        let inner = self.inner();
        inner.len += frame.len();
        inner.chunks.push_back(Chunk::Shared(frame));
    }

    /// Drops every broadcast frame not yet started, keeping the one partly
    /// written (so the peer gets it whole) and the connection's own bytes
    /// (handshake answer, control frames), which are whole frames packed in
    /// order. Used before a final close frame for a slow consumer.
    pub(super) fn drop_unsent_broadcasts(&mut self) {
        let inner = match &mut self.state {
            State::Empty => return,
            State::Listed { .. } => {
                // Nothing of it was written: all of it goes.
                self.state = State::Empty;
                TURN.with(|t| t.borrow_mut().release());
                return;
            }
            State::Queued(inner) => inner,
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

    /// Every byte not yet written, in order (the connection's own and shared
    /// chunks, and the broadcast frames listed for this turn), and how many
    /// of the first of them are exempt from the slow-consumer rule. Leaves
    /// the queue as it was: for a handover, the bytes go to the next
    /// process as they are, and if it does not take over this one serves on
    /// with its shared frames still shared (and still droppable).
    pub(super) fn unsent(&self) -> (Vec<u8>, usize) {
        match &self.state {
            State::Empty => (Vec::new(), 0),
            State::Listed { head, bytes, .. } => {
                let mut out = Vec::with_capacity(*bytes as usize);
                TURN.with(|t| {
                    for frame in t.borrow().run(*head) {
                        out.extend_from_slice(frame);
                    }
                });
                (out, 0)
            }
            State::Queued(inner) => {
                let mut out = Vec::with_capacity(inner.len);
                let pieces = inner
                    .chunks
                    .iter()
                    .map(Chunk::bytes)
                    .chain(std::iter::once(inner.tail.as_slice()));
                // `sent` counts into the front of the queue: the first chunk,
                // else the packing buffer.
                let mut skip = inner.sent;
                for bytes in pieces {
                    let start = skip.min(bytes.len());
                    out.extend_from_slice(&bytes[start..]);
                    skip = 0;
                }
                let exempt = inner.exempt.min(out.len());
                (out, exempt)
            }
        }
    }

    /// A queue holding `bytes` (whole frames, sent before anything queued
    /// later), the first `exempt` of them exempt from the slow-consumer rule:
    /// what [`OutQueue::unsent`] gave in the process before a handover.
    pub(super) fn with_unsent(bytes: Vec<u8>, exempt: usize) -> OutQueue {
        if bytes.is_empty() {
            return OutQueue::default();
        }
        let mut inner = take_spare();
        inner.len = bytes.len();
        inner.exempt = exempt.min(bytes.len());
        inner.chunks.push_back(Chunk::Owned(bytes));
        OutQueue {
            state: State::Queued(inner),
        }
    }

    /// Writes as much as the sink takes, in vectored writes.
    pub(super) fn flush(&mut self, sink: &mut impl Sink) -> io::Result<Flush> {
        if let State::Listed { head, .. } = self.state {
            // Straight from the shared frames, in one write when they fit
            // the slices; then nothing is left to keep.
            match TURN.with(|t| write_run(&t.borrow(), head, sink)) {
                Ok(Some(())) => {
                    self.state = State::Empty;
                    TURN.with(|t| t.borrow_mut().release());
                    return Ok(Flush::Done);
                }
                Ok(None) => {
                    self.inner();
                }
                Err((written, e)) => {
                    self.inner().consume(written);
                    if let Some(e) = e {
                        return Err(e);
                    }
                }
            }
        }
        let result = match &mut self.state {
            State::Queued(inner) => inner.flush(sink),
            _ => return Ok(Flush::Done),
        };
        if let State::Queued(inner) = &self.state
            && inner.len == 0
        {
            // Give every buffer back: idle connections hold nothing.
            if let State::Queued(inner) = std::mem::take(&mut self.state) {
                give_back(inner);
            }
        }
        result
    }
}

/// Writes the listed run at `head` in one vectored write. `Ok(Some(()))`
/// when all of it went; `Ok(None)` when it is too long for one write (the
/// caller queues it); `Err((n, error))` when only `n` bytes went, with the
/// error if the write failed (`None` for a short write or a full socket).
fn write_run(
    turn: &TurnList,
    head: u32,
    sink: &mut impl Sink,
) -> Result<Option<()>, (usize, Option<io::Error>)> {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut count = 0;
    let mut total = 0usize;
    for frame in turn.run(head) {
        let Some(slot) = slices.get_mut(count) else {
            return Ok(None);
        };
        *slot = IoSlice::new(frame);
        count += 1;
        total += frame.len();
    }
    loop {
        match sink.write_vectored(&slices[..count]) {
            Ok(n) if n == total => return Ok(Some(())),
            Ok(0) => return Err((0, Some(io::ErrorKind::WriteZero.into()))),
            Ok(n) => return Err((n, None)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err((0, None)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((0, Some(e))),
        }
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
        assert!(
            matches!(queue.state, State::Empty),
            "an empty queue holds no buffer"
        );
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

    fn listed_links() -> (usize, usize) {
        TURN.with(|t| {
            let t = t.borrow();
            (t.links.len(), t.listed)
        })
    }

    #[test]
    fn broadcast_frames_are_written_in_one_write_and_leave_nothing_behind() {
        let frame: Rc<[u8]> = Rc::from(vec![5u8; 10]);
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        for _ in 0..3 {
            a.push_shared(Rc::clone(&frame));
            b.push_shared(Rc::clone(&frame));
        }
        assert!(
            matches!(a.state, State::Listed { .. }),
            "no queue of its own"
        );
        assert_eq!((a.len(), a.counted_len()), (30, 30));
        assert_eq!(listed_links(), (6, 2));
        TURN.with(|t| assert_eq!(t.borrow().frames.len(), 1, "the frame is listed once"));
        let mut wire = Wire::default();
        assert_eq!(a.flush(&mut wire).unwrap(), Flush::Done);
        assert_eq!((wire.bytes.len(), wire.writes), (30, 1));
        assert!(matches!(a.state, State::Empty));
        assert_eq!(listed_links(), (6, 1), "b is still listed");
        assert_eq!(b.flush(&mut wire).unwrap(), Flush::Done);
        assert_eq!(listed_links(), (0, 0), "the last write empties the list");
        assert_eq!(Rc::strong_count(&frame), 1, "no reference is kept");
    }

    #[test]
    fn what_the_socket_leaves_goes_into_a_queue_of_its_own_in_order() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 4]));
        queue.push_shared(Rc::from(vec![2u8; 4]));
        let mut wire = Wire {
            room: 6,
            ..Wire::default()
        };
        assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Blocked);
        assert!(matches!(queue.state, State::Queued(_)));
        assert_eq!(queue.len(), 2);
        assert_eq!(listed_links(), (0, 0));
        queue.push_frame(OpCode::Pong, b"");
        wire.room = 100;
        assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Done);
        assert_eq!(wire.bytes, [1, 1, 1, 1, 2, 2, 2, 2, 0x8A, 0]);
        assert!(matches!(queue.state, State::Empty));
    }

    #[test]
    fn an_own_frame_after_listed_ones_keeps_its_place() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 3]));
        queue.push_frame(OpCode::Pong, b"");
        queue.push_shared(Rc::from(vec![2u8; 3]));
        assert_eq!(listed_links(), (0, 0), "moved into the queue");
        let mut wire = Wire::default();
        assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Done);
        assert_eq!(wire.bytes, [1, 1, 1, 0x8A, 0, 2, 2, 2]);
    }

    #[test]
    fn a_failed_write_keeps_the_frames_and_reports_the_error() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 3]));
        let mut broken = Broken;
        assert!(queue.flush(&mut broken).is_err());
        assert_eq!(queue.len(), 3);
        assert_eq!(listed_links(), (0, 0));
    }

    #[test]
    fn dropping_or_evicting_a_listed_queue_releases_the_list() {
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        a.push_shared(Rc::from(vec![1u8; 3]));
        b.push_shared(Rc::from(vec![1u8; 3]));
        drop(a);
        assert_eq!(listed_links(), (2, 1));
        b.drop_unsent_broadcasts();
        assert!(b.is_empty());
        assert_eq!(listed_links(), (0, 0));
    }

    #[test]
    fn more_frames_than_one_write_takes_go_through_the_queue() {
        let mut queue = OutQueue::default();
        for i in 0..(MAX_IOVECS + 3) {
            queue.push_shared(Rc::from(vec![i as u8; 2]));
        }
        let mut wire = Wire::default();
        assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Done);
        assert_eq!(wire.bytes.len(), 2 * (MAX_IOVECS + 3));
        assert!(
            wire.bytes
                .chunks(2)
                .enumerate()
                .all(|(i, c)| c == [i as u8; 2])
        );
        assert_eq!(listed_links(), (0, 0));
    }

    #[test]
    fn a_run_longer_than_one_write_moves_into_a_queue_of_its_own() {
        let mut queue = OutQueue::default();
        for i in 0..MAX_IOVECS {
            queue.push_shared(Rc::from(vec![i as u8; 1]));
        }
        assert!(matches!(queue.state, State::Listed { .. }));
        queue.push_shared(Rc::from(vec![0xFFu8; 1]));
        assert!(matches!(queue.state, State::Queued(_)));
        assert_eq!(queue.len(), MAX_IOVECS + 1);
        assert_eq!(listed_links(), (0, 0));
    }

    #[test]
    fn a_full_turn_list_sends_frames_to_queues_until_it_starts_afresh() {
        let frame: Rc<[u8]> = Rc::from(vec![1u8; 2]);
        let per_queue = MAX_IOVECS;
        let mut queues: Vec<OutQueue> = (0..TURN_LIST_LIMIT / per_queue)
            .map(|_| OutQueue::default())
            .collect();
        for queue in &mut queues {
            for _ in 0..per_queue {
                queue.push_shared(Rc::clone(&frame));
            }
        }
        assert_eq!(listed_links().0, TURN_LIST_LIMIT);
        let mut late = OutQueue::default();
        late.push_shared(Rc::clone(&frame));
        assert!(matches!(late.state, State::Queued(_)), "the list is full");
        let mut wire = Wire::default();
        for queue in &mut queues {
            assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Done);
        }
        assert_eq!(listed_links(), (0, 0), "every run written: afresh");
        let mut next = OutQueue::default();
        next.push_shared(frame);
        assert!(matches!(next.state, State::Listed { .. }));
    }

    struct Broken;

    impl Sink for Broken {
        fn write_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    /// Flushes `queue` whole into a fresh wire; the bytes written.
    fn drain(queue: &mut OutQueue) -> Vec<u8> {
        let mut wire = Wire::default();
        assert_eq!(queue.flush(&mut wire).unwrap(), Flush::Done);
        assert!(queue.is_empty());
        wire.bytes
    }

    /// Builds the same queue twice (same shared frames), writes `room`
    /// bytes of each, then drains one and carries the other over through
    /// `unsent` / `with_unsent`: both must give the same bytes.
    fn check_carried(name: &str, build: impl Fn(&mut OutQueue, &[Rc<[u8]>]), room: usize) {
        let shared: Vec<Rc<[u8]>> = (0..5u8)
            .map(|i| Rc::from(vec![0x10 + i; 7 + usize::from(i)]))
            .collect();
        let mut original = OutQueue::default();
        let mut carried = OutQueue::default();
        build(&mut original, &shared);
        build(&mut carried, &shared);
        let mut first = Wire {
            room,
            ..Wire::default()
        };
        let mut second = Wire {
            room,
            ..Wire::default()
        };
        let _ = original.flush(&mut first).unwrap();
        let _ = carried.flush(&mut second).unwrap();
        assert_eq!(first.bytes, second.bytes);
        let (len, counted) = (carried.len(), carried.counted_len());
        let (bytes, exempt) = carried.unsent();
        assert_eq!(
            (carried.len(), carried.counted_len()),
            (len, counted),
            "copying leaves the queue as it was"
        );
        drop(carried);
        assert_eq!((bytes.len(), bytes.len() - exempt), (len, counted));
        let mut rebuilt = OutQueue::with_unsent(bytes, exempt);
        assert_eq!((rebuilt.len(), rebuilt.counted_len()), (len, counted));
        // Frames queued after the handover go after what was carried.
        original.push_frame(OpCode::Pong, b"late");
        rebuilt.push_frame(OpCode::Pong, b"late");
        first.bytes.extend(drain(&mut original));
        second.bytes.extend(drain(&mut rebuilt));
        assert_eq!(first.bytes, second.bytes, "{name}, room {room}");
        assert_eq!(listed_links(), (0, 0), "the turn list is left consistent");
        assert!(
            shared.iter().all(|f| Rc::strong_count(f) == 1),
            "no reference kept"
        );
    }

    /// Fills a queue from a few shared frames.
    type Build = fn(&mut OutQueue, &[Rc<[u8]>]);

    #[test]
    fn unsent_bytes_carried_over_flush_as_the_original_would() {
        let builds: [(&str, Build); 4] = [
            ("listed run", |q, s| {
                for f in s {
                    q.push_shared(Rc::clone(f));
                }
            }),
            ("mixed own and shared", |q, s| {
                q.push_frame(OpCode::Text, b"own one");
                q.push_shared(Rc::clone(&s[0]));
                q.push_shared(Rc::clone(&s[1]));
                q.push_frame(OpCode::Ping, b"p");
                q.push_shared(Rc::clone(&s[2]));
                q.push_with(|out| out.extend_from_slice(b"raw tail"));
            }),
            ("exempt replay behind live frames", |q, s| {
                q.push_shared(Rc::clone(&s[0]));
                q.push_shared(Rc::clone(&s[1]));
                q.push_shared(Rc::clone(&s[2]));
                q.exempt(20);
                q.push_shared(Rc::clone(&s[3]));
            }),
            ("own bytes only", |q, _| {
                q.push_frame(OpCode::Binary, &[3; 40]);
                q.push_frame(OpCode::Pong, b"");
            }),
        ];
        for (name, build) in builds {
            // Nothing written, a chunk half sent, a chunk boundary, all sent.
            for room in [0, 1, 5, 7, 9, 12, 16, 30, 1000] {
                check_carried(name, build, room);
            }
        }
    }

    #[test]
    fn an_empty_queue_carries_nothing() {
        let queue = OutQueue::default();
        assert_eq!(queue.unsent(), (Vec::new(), 0));
        let rebuilt = OutQueue::with_unsent(Vec::new(), 10);
        assert!(rebuilt.is_empty(), "no buffer for nothing");
        let rebuilt = OutQueue::with_unsent(vec![1, 2, 3], 10);
        assert_eq!((rebuilt.len(), rebuilt.counted_len()), (3, 0));
    }

    #[test]
    fn copying_a_listed_run_leaves_every_run_listed() {
        let frame: Rc<[u8]> = Rc::from(vec![4u8; 6]);
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        a.push_shared(Rc::clone(&frame));
        b.push_shared(Rc::clone(&frame));
        b.push_shared(Rc::clone(&frame));
        assert_eq!(listed_links(), (3, 2));
        assert_eq!(b.unsent(), (vec![4u8; 12], 0));
        assert_eq!(listed_links(), (3, 2), "both are still listed");
        assert_eq!(drain(&mut b), vec![4u8; 12]);
        assert_eq!(listed_links(), (3, 1), "a is still listed");
        assert_eq!(drain(&mut a), vec![4u8; 6]);
        assert_eq!(listed_links(), (0, 0));
    }

    #[test]
    fn a_broadcast_not_yet_started_is_dropped_whole() {
        let mut queue = OutQueue::default();
        queue.push_shared(Rc::from(vec![1u8; 10]));
        queue.drop_unsent_broadcasts();
        assert!(queue.is_empty());
    }
}
