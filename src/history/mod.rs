//! Bounded message history, sans-IO: per channel, the last messages in
//! offset order; across channels, one budget of bytes and one age limit,
//! the globally oldest message evicted first.
//!
//! Owns: each channel's [`Log`] (which offsets it still holds, and why the
//! older ones are gone), the global [`Store`] (a FIFO of every message kept,
//! in the order they were added, with their total size), and the rules that
//! trim them: `history_size` per channel, `history_max_bytes` overall,
//! `history_ttl` per message; and a log's state as a handover carries it
//! ([`LogState`]: ages, not times, as clocks differ between processes).
//! Must never: read a clock (`now` is passed in), copy a message (it holds
//! whatever shared handle `M` the caller gives it), scan all channels or all
//! messages to evict one, or decide positions (the hub assigns them on a
//! single node; a cluster node passes the ones Redis assigned).
//!
//! # Why one FIFO serves both the byte budget and the age limit
//!
//! Every message enters the FIFO when it is added, with the time it was
//! added; `now` never goes back and every channel keeps messages for the
//! same `history_ttl`, so the FIFO's front is at once the globally oldest
//! message (evicted first when over budget) and the first to expire. One
//! timer-wheel entry for the whole store (at the front's expiry) is thus
//! enough: a sweep pops expired messages from the front until one is still
//! young, O(1) each. The alternative, one wheel entry per channel, costs an
//! entry and a re-arm per channel and finds nothing the FIFO does not.
//!
//! A message leaves its channel's log from the front only (trimmed to
//! `history_size`, evicted, expired, or the whole log reset). A FIFO ticket
//! whose message already left that way is *stale*: a ticket is live exactly
//! when its sequence number is at or after its channel's oldest kept one
//! (sequence numbers grow across the whole store, so a channel key reused
//! by a new channel never makes an old ticket look live). Stale tickets at
//! the front are skipped; when they outnumber the live ones the FIFO is
//! compacted in one pass, so it never holds more than twice the messages
//! kept and every removal stays amortized O(1).

use std::collections::VecDeque;

/// Why a client's position can no longer be served from a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Loss {
    /// Trimmed to `history_size`, evicted for `history_max_bytes`, or never
    /// held (history started, or a gap reset it, after that position).
    Evicted,
    /// Older than `history_ttl`.
    Expired,
}

/// One message kept.
#[derive(Debug)]
struct Entry<M> {
    /// Store-wide sequence number, matching the message's FIFO ticket.
    seq: u64,
    /// When it was added (milliseconds on the caller's clock).
    at: u64,
    /// What it counts against `history_max_bytes`.
    size: usize,
    message: M,
}

/// One channel's history: consecutive offsets `next - len .. next`.
#[derive(Debug)]
pub(crate) struct Log<M> {
    entries: VecDeque<Entry<M>>,
    /// The offset the next message appended must have to continue the log.
    next: u64,
    /// Why offsets before the oldest kept one are gone; `None` while the log
    /// holds everything since its start.
    lost: Option<Loss>,
}

impl<M> Log<M> {
    /// An empty log whose first message will have offset `next`.
    pub(crate) fn new(next: u64) -> Log<M> {
        Log {
            entries: VecDeque::new(),
            next,
            lost: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The offset of the oldest message kept (or of the next one, when empty).
    pub(crate) fn first(&self) -> u64 {
        self.next.saturating_sub(self.entries.len() as u64)
    }

    /// The offset the next message must have to continue this log.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// The messages after `offset` up to the newest, in order, if the log
    /// still holds every one of them; otherwise why not. `offset + 1 ==
    /// next` gives an empty run.
    pub(crate) fn after(&self, offset: u64) -> Result<impl Iterator<Item = &M> + Clone + '_, Loss> {
        let start = offset.saturating_add(1);
        if start < self.first() || start > self.next {
            return Err(self.lost.unwrap_or(Loss::Evicted));
        }
        let skip = usize::try_from(start - self.first()).unwrap_or(usize::MAX);
        Ok(self.entries.iter().skip(skip).map(|e| &e.message))
    }

    /// Like [`Log::after`], but also refuses (`Expired`) when the first
    /// message to replay was added `ttl` or more before `now`: expiry is
    /// swept by one timer, which may run late (a reload that shortened
    /// `history_ttl`, timer granularity), and a message older than the TTL
    /// must never be replayed.
    pub(crate) fn after_fresh(
        &self,
        offset: u64,
        now: u64,
        ttl: u64,
    ) -> Result<impl Iterator<Item = &M> + Clone + '_, Loss> {
        let run = self.after(offset)?;
        let start = offset.saturating_add(1);
        let skip = usize::try_from(start - self.first()).unwrap_or(usize::MAX);
        match self.entries.get(skip) {
            Some(first) if first.at.saturating_add(ttl) <= now => Err(Loss::Expired),
            _ => Ok(run),
        }
    }

    fn front_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Drops the oldest message; returns its size.
    fn pop_front(&mut self, why: Loss) -> Option<usize> {
        let entry = self.entries.pop_front()?;
        self.lost = Some(why);
        Some(entry.size)
    }
}

/// A log as a handover carries it to the next process: where it stands,
/// why older offsets are gone, and every message kept, oldest first, with
/// its age (milliseconds before the snapshot) instead of the old process's
/// clock.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LogState<X> {
    /// The offset the next message appended will have.
    pub(crate) next: u64,
    /// Why offsets before the oldest kept one are gone (`None`: never lost).
    pub(crate) lost: Option<Loss>,
    pub(crate) entries: Vec<EntryState<X>>,
}

/// One message of a [`LogState`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EntryState<X> {
    pub(crate) offset: u64,
    /// Milliseconds between when it was added and the snapshot.
    pub(crate) age: u64,
    /// What it counts against `history_max_bytes`.
    pub(crate) size: u64,
    pub(crate) message: X,
}

impl<X> LogState<X> {
    /// Checks what a log can be: consecutive offsets ending right before
    /// `next` (none below 0), oldest first.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let len = self.entries.len() as u64;
        if len > self.next {
            return Err("history holds more messages than offsets");
        }
        let first = self.next - len;
        let mut previous_age = u64::MAX;
        for (entry, offset) in self.entries.iter().zip(first..) {
            if entry.offset != offset {
                return Err("history offsets not consecutive up to the next one");
            }
            if entry.age > previous_age {
                return Err("history messages not oldest first");
            }
            if usize::try_from(entry.size).is_err() {
                return Err("history message size out of range");
            }
            previous_age = entry.age;
        }
        Ok(())
    }

    /// The offset of the oldest message (of the next one, when empty).
    pub(crate) fn first(&self) -> u64 {
        self.next.saturating_sub(self.entries.len() as u64)
    }
}

impl<M> Log<M> {
    /// The log's state at `now`, each message turned into `X` by `f`.
    pub(crate) fn export<X>(&self, now: u64, mut f: impl FnMut(&M) -> X) -> LogState<X> {
        LogState {
            next: self.next,
            lost: self.lost,
            entries: self
                .entries
                .iter()
                .zip(self.first()..)
                .map(|(entry, offset)| EntryState {
                    offset,
                    age: now.saturating_sub(entry.at),
                    size: entry.size as u64,
                    message: f(&entry.message),
                })
                .collect(),
        }
    }

    /// An empty log whose next message will have offset `first`, with the
    /// given reason for what lies before (a log being restored: its
    /// messages are appended next, through [`Store::append`]).
    pub(crate) fn restored(first: u64, lost: Option<Loss>) -> Log<M> {
        Log {
            entries: VecDeque::new(),
            next: first,
            lost,
        }
    }
}

/// A FIFO entry: which channel's log holds message `seq`.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    channel: u32,
    seq: u64,
}

/// Where the store finds a channel's log by key (the hub's channel table).
pub(crate) trait Logs<M> {
    fn log_mut(&mut self, channel: u32) -> Option<&mut Log<M>>;
    /// Called when a log is left empty by eviction or expiry, so the owner
    /// may free a channel that nothing else keeps alive.
    fn emptied(&mut self, channel: u32);
}

/// The limits in force, read from the configuration on every call so a
/// reload applies at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Messages kept per channel; above 0.
    pub per_channel: usize,
    /// Bytes kept across all channels.
    pub max_bytes: usize,
    /// Milliseconds a message is kept.
    pub ttl: u64,
}

/// Across all channels: every message kept, oldest first, and their size.
#[derive(Debug, Default)]
pub(crate) struct Store {
    fifo: VecDeque<Ticket>,
    /// Tickets in `fifo` whose message is gone.
    stale: usize,
    bytes: usize,
    messages: usize,
    next_seq: u64,
}

/// Below this many tickets the FIFO is never compacted (not worth a pass).
const COMPACT_MIN: usize = 64;

impl Store {
    /// Messages kept across all channels.
    pub(crate) fn messages(&self) -> usize {
        self.messages
    }

    /// Bytes kept across all channels (as counted at [`Store::append`]).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `message` (of `size` bytes) with `offset` to the log of
    /// `channel` at `now`, then applies the limits: the channel's log is
    /// trimmed to `per_channel` and the oldest messages of any channel are
    /// evicted while over `max_bytes` (the new one too, if it alone is over).
    ///
    /// `offset` must be at least `log.next()`. When it is past it (a gap: a
    /// cluster node that missed messages, or history switched on after
    /// messages went out), the log cannot vouch for what lies between: it
    /// is emptied first, and a client whose position falls in the gap is
    /// told its messages were evicted. An `offset` below `log.next()` is a
    /// repeat and is not added (returns false).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append<M>(
        &mut self,
        logs: &mut impl Logs<M>,
        channel: u32,
        offset: u64,
        message: M,
        size: usize,
        now: u64,
        limits: Limits,
    ) -> bool {
        let Some(log) = logs.log_mut(channel) else {
            return false;
        };
        if offset < log.next {
            return false;
        }
        if offset > log.next {
            self.reset_log(log, offset, Loss::Evicted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        log.entries.push_back(Entry {
            seq,
            at: now,
            size,
            message,
        });
        log.next = offset.saturating_add(1);
        self.fifo.push_back(Ticket { channel, seq });
        self.bytes = self.bytes.saturating_add(size);
        self.messages += 1;
        self.trim(log, limits.per_channel);
        self.fit(logs, limits.max_bytes);
        true
    }

    /// Trims `log` to its newest `per_channel` messages (at least one).
    pub(crate) fn trim<M>(&mut self, log: &mut Log<M>, per_channel: usize) {
        while log.entries.len() > per_channel.max(1) {
            if let Some(size) = log.pop_front(Loss::Evicted) {
                self.forget(size);
                self.stale += 1;
            }
        }
    }

    /// Evicts the oldest messages of any channel while over `max_bytes`.
    pub(crate) fn fit<M>(&mut self, logs: &mut impl Logs<M>, max_bytes: usize) {
        while self.bytes > max_bytes {
            if !self.pop_oldest(logs, Loss::Evicted) {
                break;
            }
        }
        self.maybe_compact(logs);
    }

    /// Empties `log` (its messages become stale tickets) and restarts it at
    /// `next`; `why` is what a client behind it is told.
    pub(crate) fn reset_log<M>(&mut self, log: &mut Log<M>, next: u64, why: Loss) {
        let dropped = log.entries.len();
        for entry in log.entries.drain(..) {
            self.bytes = self.bytes.saturating_sub(entry.size);
        }
        self.messages -= dropped;
        self.stale += dropped;
        if dropped > 0 || log.next != next {
            log.lost = Some(why);
        }
        log.next = next;
    }

    /// A log is dropped with its channel: its tickets go stale.
    pub(crate) fn drop_log<M>(&mut self, log: &Log<M>) {
        for entry in &log.entries {
            self.forget(entry.size);
            self.stale += 1;
        }
    }

    /// Drops every message whose age reached `ttl`. Returns how many.
    pub(crate) fn expire<M>(&mut self, logs: &mut impl Logs<M>, now: u64, ttl: u64) -> usize {
        let mut expired = 0;
        while let Some(&ticket) = self.fifo.front() {
            let Some(log) = logs.log_mut(ticket.channel) else {
                self.pop_stale();
                continue;
            };
            let Some(front) = log.entries.front() else {
                self.pop_stale();
                continue;
            };
            if front.seq != ticket.seq {
                self.pop_stale();
                continue;
            }
            if front.at.saturating_add(ttl) > now {
                break;
            }
            self.pop_oldest(logs, Loss::Expired);
            expired += 1;
        }
        self.maybe_compact(logs);
        expired
    }

    /// When the oldest message kept expires, if any is kept.
    pub(crate) fn next_expiry<M>(&mut self, logs: &mut impl Logs<M>, ttl: u64) -> Option<u64> {
        while let Some(&ticket) = self.fifo.front() {
            match logs
                .log_mut(ticket.channel)
                .and_then(|l| l.entries.front())
                .filter(|e| e.seq == ticket.seq)
            {
                Some(entry) => return Some(entry.at.saturating_add(ttl)),
                None => self.pop_stale(),
            }
        }
        None
    }

    /// Drops the FIFO's oldest live message from its log. False when the
    /// store is empty.
    fn pop_oldest<M>(&mut self, logs: &mut impl Logs<M>, why: Loss) -> bool {
        while let Some(ticket) = self.fifo.pop_front() {
            let Some(log) = logs.log_mut(ticket.channel) else {
                self.stale = self.stale.saturating_sub(1);
                continue;
            };
            if log.front_seq() != Some(ticket.seq) {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            if let Some(size) = log.pop_front(why) {
                self.forget(size);
            }
            if log.is_empty() {
                logs.emptied(ticket.channel);
            }
            return true;
        }
        false
    }

    fn pop_stale(&mut self) {
        self.fifo.pop_front();
        self.stale = self.stale.saturating_sub(1);
    }

    fn forget(&mut self, size: usize) {
        self.bytes = self.bytes.saturating_sub(size);
        self.messages = self.messages.saturating_sub(1);
    }

    /// Removes stale tickets in one pass once they are the majority.
    fn maybe_compact<M>(&mut self, logs: &mut impl Logs<M>) {
        if self.fifo.len() < COMPACT_MIN || self.stale * 2 <= self.fifo.len() {
            return;
        }
        self.fifo.retain(|t| {
            logs.log_mut(t.channel)
                .and_then(|l| l.front_seq())
                .is_some_and(|front| t.seq >= front)
        });
        self.stale = 0;
        if self.fifo.capacity() > 4 * self.fifo.len().max(COMPACT_MIN) {
            self.fifo.shrink_to(2 * self.fifo.len());
        }
    }

    /// Forgets everything (history switched off by a reload); the logs
    /// themselves are dropped by their owner.
    pub(crate) fn clear(&mut self) {
        *self = Store {
            next_seq: self.next_seq,
            ..Store::default()
        };
    }

    #[cfg(test)]
    fn fifo_len(&self) -> usize {
        self.fifo.len()
    }
}

#[cfg(test)]
mod tests {
    //! The store against a brute-force model, and each rule on the virtual
    //! clock (times are plain numbers handed in).

    use crate::testing::XorShift;

    use std::collections::HashMap;

    use super::*;

    /// Logs by channel key, freed when emptied (as the hub frees a channel
    /// without subscribers).
    #[derive(Default)]
    struct Table {
        logs: HashMap<u32, Log<u64>>,
        emptied: Vec<u32>,
    }

    impl Logs<u64> for Table {
        fn log_mut(&mut self, channel: u32) -> Option<&mut Log<u64>> {
            self.logs.get_mut(&channel)
        }
        fn emptied(&mut self, channel: u32) {
            self.emptied.push(channel);
        }
    }

    fn limits(per_channel: usize, max_bytes: usize, ttl: u64) -> Limits {
        Limits {
            per_channel,
            max_bytes,
            ttl,
        }
    }

    fn kept(table: &Table, channel: u32) -> Vec<u64> {
        table.logs[&channel]
            .entries
            .iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn a_log_keeps_the_last_history_size_messages() {
        let mut table = Table::default();
        table.logs.insert(0, Log::new(1));
        let mut store = Store::default();
        let l = limits(3, 1000, 100);
        for offset in 1..=5 {
            assert!(store.append(&mut table, 0, offset, offset * 10, 10, 0, l));
        }
        assert_eq!(kept(&table, 0), [30, 40, 50]);
        assert_eq!((store.messages(), store.bytes()), (3, 30));
        let log = &table.logs[&0];
        assert_eq!((log.first(), log.next()), (3, 6));
        assert_eq!(
            log.after(2).map(|i| i.copied().collect::<Vec<_>>()),
            Ok(vec![30, 40, 50])
        );
        assert_eq!(
            log.after(4).map(|i| i.copied().collect::<Vec<_>>()),
            Ok(vec![50])
        );
        assert_eq!(log.after(5).map(|i| i.count()), Ok(0));
        assert_eq!(log.after(1).err(), Some(Loss::Evicted));
        assert_eq!(log.after(6).err(), Some(Loss::Evicted), "a future offset");
        // A repeat is refused.
        assert!(!store.append(&mut table, 0, 5, 0, 10, 0, l));
    }

    #[test]
    fn the_byte_budget_evicts_the_globally_oldest_first() {
        let mut table = Table::default();
        table.logs.insert(0, Log::new(1));
        table.logs.insert(1, Log::new(1));
        let mut store = Store::default();
        let l = limits(100, 30, 1000);
        store.append(&mut table, 0, 1, 1, 10, 0, l);
        store.append(&mut table, 1, 1, 2, 10, 1, l);
        store.append(&mut table, 0, 2, 3, 10, 2, l);
        store.append(&mut table, 1, 2, 4, 10, 3, l);
        assert_eq!(kept(&table, 0), [3]);
        assert_eq!(kept(&table, 1), [2, 4]);
        assert_eq!(store.bytes(), 30);
        assert_eq!(table.logs[&0].after(0).err(), Some(Loss::Evicted));
        // One message larger than the whole budget does not stay.
        store.append(&mut table, 0, 3, 5, 40, 4, l);
        assert_eq!((store.messages(), store.bytes()), (0, 0));
        assert_eq!(table.emptied, [1, 0]);
    }

    #[test]
    fn messages_expire_at_their_ttl_oldest_first() {
        let mut table = Table::default();
        table.logs.insert(7, Log::new(1));
        let mut store = Store::default();
        let l = limits(100, 1 << 20, 1000);
        for (offset, at) in [(1, 0), (2, 400), (3, 900)] {
            store.append(&mut table, 7, offset, offset, 1, at, l);
        }
        assert_eq!(store.next_expiry(&mut table, 1000), Some(1000));
        assert_eq!(store.expire(&mut table, 999, 1000), 0);
        assert_eq!(store.expire(&mut table, 1000, 1000), 1);
        assert_eq!(store.next_expiry(&mut table, 1000), Some(1400));
        assert_eq!(table.logs[&7].after(0).err(), Some(Loss::Expired));
        assert_eq!(table.logs[&7].after(1).map(|i| i.count()), Ok(2));
        assert_eq!(store.expire(&mut table, 5000, 1000), 2);
        assert_eq!(store.next_expiry(&mut table, 1000), None);
        assert_eq!(table.emptied, [7]);
        let log = &table.logs[&7];
        assert_eq!(
            log.after(3).map(|i| i.count()),
            Ok(0),
            "up to date: nothing to replay"
        );
        assert_eq!(log.after(2).err(), Some(Loss::Expired));
    }

    #[test]
    fn a_gap_or_a_reset_empties_the_log() {
        let mut table = Table::default();
        table.logs.insert(0, Log::new(1));
        let mut store = Store::default();
        let l = limits(100, 1 << 20, 1000);
        store.append(&mut table, 0, 1, 1, 1, 0, l);
        store.append(&mut table, 0, 2, 2, 1, 0, l);
        // Offset 5 after 2: 3 and 4 are unknown.
        store.append(&mut table, 0, 5, 5, 1, 0, l);
        assert_eq!(kept(&table, 0), [5]);
        assert_eq!(table.logs[&0].after(2).err(), Some(Loss::Evicted));
        assert_eq!(table.logs[&0].after(4).map(|i| i.count()), Ok(1));
        assert_eq!(store.messages(), 1);
        let log = table.logs.get_mut(&0).unwrap();
        store.reset_log(log, 1, Loss::Evicted);
        assert_eq!((store.messages(), store.bytes()), (0, 0));
        assert_eq!(store.next_expiry(&mut table, 1000), None);
    }

    #[test]
    fn stale_tickets_are_compacted_so_the_fifo_stays_bounded() {
        let mut table = Table::default();
        table.logs.insert(0, Log::new(1));
        let mut store = Store::default();
        let l = limits(2, usize::MAX, 1_000_000);
        for offset in 1..=10_000 {
            store.append(&mut table, 0, offset, offset, 1, offset, l);
        }
        assert_eq!(store.messages(), 2);
        assert!(store.fifo_len() <= 2 * COMPACT_MIN, "{}", store.fifo_len());
    }

    /// Random appends, resets, drops and sweeps against a model that keeps
    /// every message with its channel, time and size and recomputes what
    /// must survive the hard way.
    #[test]
    fn randomized_against_a_brute_force_model() {
        const CHANNELS: u32 = 8;
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut table = Table::default();
        let mut store = Store::default();
        // Model: (seq, channel, offset, at, size), oldest first.
        let mut model: Vec<(u64, u32, u64, u64, usize)> = Vec::new();
        let mut next: HashMap<u32, u64> = HashMap::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        let l = limits(5, 400, 300);
        for _ in 0..20_000 {
            now += rng.below(20);
            let channel = rng.below(u64::from(CHANNELS)) as u32;
            match rng.below(100) {
                0..=79 => {
                    let log = table.logs.entry(channel).or_insert_with(|| Log::new(1));
                    let offset = log.next() + u64::from(rng.below(50) == 0);
                    let size = 1 + rng.below(60) as usize;
                    if offset > *next.get(&channel).unwrap_or(&1) {
                        model.retain(|m| m.1 != channel);
                    }
                    store.append(&mut table, channel, offset, offset, size, now, l);
                    next.insert(channel, offset + 1);
                    model.push((seq, channel, offset, now, size));
                    seq += 1;
                    // Per-channel cap, then the byte budget, oldest first.
                    let mine: Vec<u64> = model
                        .iter()
                        .filter(|m| m.1 == channel)
                        .map(|m| m.0)
                        .collect();
                    if mine.len() > l.per_channel {
                        let cut = &mine[..mine.len() - l.per_channel];
                        model.retain(|m| !cut.contains(&m.0));
                    }
                    while model.iter().map(|m| m.4).sum::<usize>() > l.max_bytes {
                        model.remove(0);
                    }
                }
                80..=89 => {
                    store.expire(&mut table, now, l.ttl);
                    model.retain(|m| m.3 + l.ttl > now);
                }
                _ => {
                    if let Some(log) = table.logs.remove(&channel) {
                        store.drop_log(&log);
                        model.retain(|m| m.1 != channel);
                        next.remove(&channel);
                    }
                }
            }
            assert_eq!(store.messages(), model.len());
            assert_eq!(store.bytes(), model.iter().map(|m| m.4).sum::<usize>());
            for c in 0..CHANNELS {
                let want: Vec<u64> = model.iter().filter(|m| m.1 == c).map(|m| m.2).collect();
                let got = table.logs.get(&c).map_or(Vec::new(), |_| kept(&table, c));
                assert_eq!(got, want, "channel {c}");
            }
            let oldest = model.first().map(|m| m.3 + l.ttl);
            assert_eq!(store.next_expiry(&mut table, l.ttl), oldest);
            assert!(store.fifo_len() <= 2 * model.len().max(COMPACT_MIN));
        }
    }
}
