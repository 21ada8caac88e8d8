//! The live feed of one channel at a node, put in order: each message is
//! delivered once, in offset order, with no gap this node could fill.
//!
//! Owns: the last delivered position of a channel, the live messages held
//! while a gap is being read from Redis's stream, and the decision for each
//! arriving message (deliver, drop as a repeat, hold and read the gap).
//! Must never: do I/O or read a clock (the bus sends the reads it asks for
//! and hands back their entries), reorder messages, deliver one twice, or
//! hold more than [`MAX_HELD`] messages or [`MAX_HELD_BYTES`] bytes.
//!
//! Rules, for a message at `(epoch, offset)` after the last delivered
//! `(e, o)`:
//! - no message delivered yet: deliver (it sets the baseline);
//! - another epoch: the history was broken (a wiped Redis); deliver what is
//!   held, then this one, which starts the new baseline;
//! - `offset <= o`: a repeat, dropped and counted;
//! - `offset == o + 1`: delivered;
//! - `offset > o + 1`: a gap; held, and one read of `(o, offset)` asked
//!   for. While a read is out, every live message is held (in arrival
//!   order). When the entries come, those that fill the gap are delivered,
//!   the missing ones (trimmed or expired) counted as lost, then the held
//!   messages go through these rules again (a further gap asks for a
//!   further read). A read that fails (or that the bus cannot send: its
//!   command link is down, or did not come up in time), or more than
//!   [`MAX_HELD`] held messages (or [`MAX_HELD_BYTES`] bytes), gives the
//!   gap up: the loss is counted and the held messages are delivered as
//!   they are, in order. A read the bus sends later (waiting for its link
//!   to come up) is still "out": messages are held meanwhile.

use std::collections::VecDeque;

use crate::hub::position::Position;

/// Live messages held per channel while its gap is read; past it the gap
/// is given up rather than memory grown.
pub(crate) const MAX_HELD: usize = 4_096;

/// Bytes of live messages held per channel while its gap is read: messages
/// may be as large as `max_message_size`, so a count alone does not bound
/// the memory. Past it the gap is given up (a message larger than this is
/// still held when it is the only one).
pub(crate) const MAX_HELD_BYTES: usize = 32 * 1024 * 1024;

/// What a held message counts against [`MAX_HELD_BYTES`].
pub(crate) trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// What the sequencer asks of the bus.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<M> {
    /// Deliver this message, at this position, now (in this order).
    Deliver(Position, M),
    /// Read the entries after offset `from` (and before `to`, when given)
    /// from the channel's stream; hand them to [`Sequencer::on_entries`].
    Read { from: u64, to: Option<u64> },
}

/// Counters the sequencer adds to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Repeated or older offsets dropped.
    pub repeats: u64,
    /// Messages delivered from the stream to fill a gap.
    pub filled: u64,
    /// Offsets that were neither received live nor found in the stream.
    pub lost: u64,
}

/// One channel's sequencing state.
#[derive(Debug, Default)]
pub(crate) struct Sequencer<M> {
    last: Option<Position>,
    /// Live messages that arrived while a read was out, in arrival order.
    held: VecDeque<(Position, M)>,
    /// The bytes of `held`.
    held_bytes: usize,
    /// A read is out: its entries are awaited.
    reading: bool,
}

impl<M: Weight> Sequencer<M> {
    pub(crate) fn new() -> Sequencer<M> {
        Sequencer {
            last: None,
            held: VecDeque::new(),
            held_bytes: 0,
            reading: false,
        }
    }

    /// A sequencer whose last delivered message is at `last`.
    pub(crate) fn after(last: Position) -> Sequencer<M> {
        Sequencer {
            last: Some(last),
            ..Sequencer::new()
        }
    }

    fn hold(&mut self, position: Position, message: M) {
        self.held_bytes = self.held_bytes.saturating_add(message.weight());
        self.held.push_back((position, message));
    }

    /// Takes every held message out.
    fn take_held(&mut self) -> VecDeque<(Position, M)> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }

    /// The last position delivered.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Position> {
        self.last
    }

    /// A read is out (or waits to go out) for this channel.
    pub(crate) fn is_reading(&self) -> bool {
        self.reading
    }

    /// A live message arrived.
    pub(crate) fn on_live(
        &mut self,
        position: Position,
        message: M,
        counts: &mut Counts,
        out: &mut Vec<Step<M>>,
    ) {
        if self.reading {
            let full = self.held.len() >= MAX_HELD
                || (!self.held.is_empty()
                    && self.held_bytes.saturating_add(message.weight()) > MAX_HELD_BYTES);
            if full {
                self.give_up(counts, out);
                self.on_live(position, message, counts, out);
            } else {
                self.hold(position, message);
            }
            return;
        }
        let Some(last) = self.last else {
            self.deliver(position, message, out);
            return;
        };
        if position.epoch != last.epoch {
            self.deliver(position, message, out);
        } else if position.offset <= last.offset {
            counts.repeats += 1;
        } else if position.offset == last.offset + 1 {
            self.deliver(position, message, out);
        } else {
            self.hold(position, message);
            self.reading = true;
            out.push(Step::Read {
                from: last.offset,
                to: Some(position.offset),
            });
        }
    }

    /// The subscription was (re)confirmed after messages may have been
    /// missed: read everything after the last delivered position.
    pub(crate) fn catch_up(&mut self, out: &mut Vec<Step<M>>) {
        if let (Some(last), false) = (self.last, self.reading) {
            self.reading = true;
            out.push(Step::Read {
                from: last.offset,
                to: None,
            });
        }
    }

    /// The read's entries came: `entries` in offset order, all of one
    /// epoch (what the stream holds after the read's `from`), or `None`
    /// when the read failed. `more`: the read returned as many entries as
    /// it asked for, so the stream may hold more of the gap: if any were
    /// delivered and the gap is not closed, the next part is read.
    pub(crate) fn on_entries(
        &mut self,
        entries: Option<impl IntoIterator<Item = (Position, M)>>,
        more: bool,
        counts: &mut Counts,
        out: &mut Vec<Step<M>>,
    ) {
        if !self.reading {
            return;
        }
        self.reading = false;
        let bound = self.held.front().map(|(p, _)| *p);
        let mut delivered = false;
        if let (Some(entries), Some(last)) = (entries, self.last) {
            for (position, message) in entries {
                let current = self.last.unwrap_or(last);
                let in_gap = position.epoch == current.epoch
                    && position.offset > current.offset
                    && bound.is_none_or(|b| b.epoch != current.epoch || position.offset < b.offset);
                if in_gap {
                    counts.lost += position.offset - current.offset - 1;
                    counts.filled += 1;
                    delivered = true;
                    self.deliver(position, message, out);
                }
            }
        }
        if let (true, true, Some(last)) = (more, delivered, self.last) {
            let open = bound.is_none_or(|b| b.epoch == last.epoch && b.offset > last.offset + 1);
            if open {
                self.reading = true;
                out.push(Step::Read {
                    from: last.offset,
                    to: bound.map(|b| b.offset),
                });
                return;
            }
        }
        self.count_gap(counts);
        let mut held = self.take_held();
        // The first held message ends the gap just read, whatever it
        // lacked: it goes out now; the rest follow the rules again.
        if let Some((position, message)) = held.pop_front() {
            if self.is_repeat(position) {
                counts.repeats += 1;
            } else {
                self.deliver(position, message, out);
            }
        }
        for (position, message) in held {
            self.on_live(position, message, counts, out);
        }
    }

    fn is_repeat(&self, position: Position) -> bool {
        self.last
            .is_some_and(|l| l.epoch == position.epoch && position.offset <= l.offset)
    }

    /// Counts as lost what lies between the last delivered message and the
    /// first held one.
    fn count_gap(&self, counts: &mut Counts) {
        if let (Some(last), Some((first, _))) = (self.last, self.held.front())
            && first.epoch == last.epoch
            && first.offset > last.offset + 1
        {
            counts.lost += first.offset - last.offset - 1;
        }
    }

    /// Gives the outstanding gap up: delivers what is held, in order, with
    /// the loss counted; the read's entries will be ignored.
    fn give_up(&mut self, counts: &mut Counts, out: &mut Vec<Step<M>>) {
        self.reading = false;
        let mut held = self.take_held();
        while let Some((position, message)) = held.pop_front() {
            if self.is_repeat(position) {
                counts.repeats += 1;
                continue;
            }
            if let Some(last) = self.last
                && last.epoch == position.epoch
            {
                counts.lost += position.offset - last.offset - 1;
            }
            self.deliver(position, message, out);
        }
    }

    fn deliver(&mut self, position: Position, message: M, out: &mut Vec<Step<M>>) {
        self.last = Some(position);
        out.push(Step::Deliver(position, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::at;

    fn delivered(out: &[Step<u64>]) -> Vec<u64> {
        out.iter()
            .filter_map(|s| match s {
                Step::Deliver(p, m) => {
                    assert_eq!(p.offset, *m, "delivered with its own position");
                    Some(*m)
                }
                Step::Read { .. } => None,
            })
            .collect()
    }

    impl Weight for u64 {
        fn weight(&self) -> usize {
            size_of::<u64>()
        }
    }

    fn live(s: &mut Sequencer<u64>, c: &mut Counts, offset: u64) -> Vec<Step<u64>> {
        let mut out = Vec::new();
        s.on_live(at(1, offset), offset, c, &mut out);
        out
    }

    #[test]
    fn in_order_is_delivered_and_repeats_dropped() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = Vec::new();
        for o in [5, 6, 6, 4, 7] {
            out.extend(live(&mut s, &mut c, o));
        }
        assert_eq!(delivered(&out), [5, 6, 7]);
        assert_eq!(c.repeats, 2);
    }

    #[test]
    fn a_feed_taken_over_reads_what_was_published_in_between() {
        let mut s = Sequencer::after(at(1, 5));
        let mut c = Counts::default();
        assert!(live(&mut s, &mut c, 5).is_empty(), "delivered before");
        assert_eq!(
            live(&mut s, &mut c, 8),
            [Step::Read {
                from: 5,
                to: Some(8)
            }]
        );
        let mut out = Vec::new();
        s.on_entries(
            Some((6..=7).map(|o| (at(1, o), o))),
            false,
            &mut c,
            &mut out,
        );
        assert_eq!(delivered(&out), [6, 7, 8]);
    }

    #[test]
    fn a_jump_holds_reads_the_gap_and_delivers_in_order_once() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 1);
        let read = live(&mut s, &mut c, 4);
        assert_eq!(
            read,
            [Step::Read {
                from: 1,
                to: Some(4)
            }]
        );
        // More live messages (and a repeat of a held one) while reading.
        assert!(live(&mut s, &mut c, 5).is_empty());
        assert!(live(&mut s, &mut c, 4).is_empty());
        // The stream answers with more than the gap: the overlap is not
        // delivered twice.
        let entries = (2..=5).map(|o| (at(1, o), o));
        s.on_entries(Some(entries), false, &mut c, &mut out);
        assert_eq!(delivered(&out), [1, 2, 3, 4, 5]);
        assert_eq!((c.filled, c.lost, c.repeats), (2, 0, 1));
        assert!(!s.is_reading());
    }

    #[test]
    fn what_the_stream_lost_is_counted_and_order_kept() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 10);
        out.extend(live(&mut s, &mut c, 20));
        // Trimmed: only 15..19 left.
        let entries = (15..20).map(|o| (at(1, o), o));
        s.on_entries(Some(entries), false, &mut c, &mut out);
        assert_eq!(delivered(&out), [10, 15, 16, 17, 18, 19, 20]);
        assert_eq!(c.lost, 4);
        // A failed read: the held message goes out, the gap is counted.
        let mut out = live(&mut s, &mut c, 25);
        s.on_entries(None::<Vec<(Position, u64)>>, false, &mut c, &mut out);
        assert_eq!(delivered(&out), [25]);
        assert_eq!(c.lost, 8);
    }

    #[test]
    fn a_second_gap_among_held_messages_asks_for_a_second_read() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 1);
        out.extend(live(&mut s, &mut c, 3));
        out.extend(live(&mut s, &mut c, 6));
        s.on_entries(Some([(at(1, 2), 2)]), false, &mut c, &mut out);
        assert_eq!(delivered(&out), [1, 2, 3]);
        assert_eq!(
            out.last(),
            Some(&Step::Read {
                from: 3,
                to: Some(6)
            })
        );
        out.clear();
        s.on_entries(
            Some([(at(1, 4), 4), (at(1, 5), 5)]),
            false,
            &mut c,
            &mut out,
        );
        assert_eq!(delivered(&out), [4, 5, 6]);
    }

    #[test]
    fn a_new_epoch_resets_and_flushes_what_was_held() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 7);
        out.extend(live(&mut s, &mut c, 9));
        s.on_live(at(2, 1), 1, &mut c, &mut out);
        // The read for 8 is out: the new epoch waits behind it.
        s.on_entries(Some([(at(1, 8), 8)]), false, &mut c, &mut out);
        assert_eq!(delivered(&out), [7, 8, 9, 1]);
        assert_eq!(s.last(), Some(at(2, 1)));
        let mut out = Vec::new();
        s.on_live(at(2, 2), 2, &mut c, &mut out);
        assert_eq!(delivered(&out), [2]);
    }

    #[test]
    fn too_much_held_gives_the_gap_up_without_reordering() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 1);
        for o in 3..(3 + MAX_HELD as u64 + 1) {
            out.extend(live(&mut s, &mut c, o));
        }
        let got = delivered(&out);
        assert_eq!(got.len(), MAX_HELD + 2);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.lost, 1);
        // The late entries are ignored.
        s.on_entries(Some([(at(1, 2), 2)]), false, &mut c, &mut out);
        assert_eq!(delivered(&out).len(), MAX_HELD + 2);
    }

    #[test]
    fn too_many_held_bytes_give_the_gap_up_without_reordering() {
        let mut s: Sequencer<Vec<u8>> = Sequencer::new();
        let mut c = Counts::default();
        let big = MAX_HELD_BYTES / 3 + 1;
        let mut out = Vec::new();
        s.on_live(at(1, 1), vec![1], &mut c, &mut out);
        // Offset 2 is missing: 3 and 4 are held while it is read...
        for o in [3u8, 4] {
            s.on_live(at(1, u64::from(o)), vec![o; big], &mut c, &mut out);
        }
        assert!(s.is_reading());
        assert_eq!(out.len(), 2, "delivered 1, asked for a read");
        // ...a third would pass the byte bound: the gap is given up.
        s.on_live(at(1, 5), vec![5; big], &mut c, &mut out);
        assert!(!s.is_reading());
        let got: Vec<u64> = out
            .iter()
            .filter_map(|s| match s {
                Step::Deliver(p, _) => Some(p.offset),
                Step::Read { .. } => None,
            })
            .collect();
        assert_eq!(got, [1, 3, 4, 5]);
        assert_eq!(c.lost, 1);
        // One message over the bound alone is still held (never dropped).
        let mut out = Vec::new();
        s.on_live(at(1, 7), vec![0; MAX_HELD_BYTES + 1], &mut c, &mut out);
        assert!(s.is_reading());
    }

    #[test]
    fn a_long_gap_is_read_in_parts() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = live(&mut s, &mut c, 1);
        out.extend(live(&mut s, &mut c, 10));
        // The read was capped at 3 entries: more is read.
        s.on_entries(Some((2..=4).map(|o| (at(1, o), o))), true, &mut c, &mut out);
        assert_eq!(
            out.last(),
            Some(&Step::Read {
                from: 4,
                to: Some(10)
            })
        );
        s.on_entries(Some((5..=9).map(|o| (at(1, o), o))), true, &mut c, &mut out);
        assert_eq!(delivered(&out), (1..=10).collect::<Vec<_>>());
        assert_eq!((c.filled, c.lost), (8, 0));
        // A catch-up that found nothing new stops.
        let mut out = Vec::new();
        s.catch_up(&mut out);
        s.on_entries(Some(Vec::new()), true, &mut c, &mut out);
        assert!(!s.is_reading());
    }

    #[test]
    fn catch_up_reads_everything_after_the_last_delivered() {
        let mut s = Sequencer::new();
        let mut c = Counts::default();
        let mut out = Vec::new();
        s.catch_up(&mut out);
        assert!(out.is_empty(), "nothing delivered yet: nothing to catch up");
        out.extend(live(&mut s, &mut c, 3));
        s.catch_up(&mut out);
        assert_eq!(out.last(), Some(&Step::Read { from: 3, to: None }));
        out.extend(live(&mut s, &mut c, 6));
        s.on_entries(
            Some((4..=6).map(|o| (at(1, o), o))),
            false,
            &mut c,
            &mut out,
        );
        assert_eq!(delivered(&out), [3, 4, 5, 6]);
        assert_eq!((c.filled, c.repeats, c.lost), (2, 0, 0));
    }
}
