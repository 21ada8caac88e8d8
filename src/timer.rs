//! A hierarchical timer wheel: O(1) insert and remove, driven by the event
//! loop's clock, which it never reads itself.
//!
//! Owns: every pending deadline of the server (handshake, ping, pong, close,
//! idle), one entry per connection, in intrusive lists over an arena of
//! nodes.
//! Must never: read the clock, allocate per insert once warmed up, or fire an
//! entry before its deadline.
//!
//! Time is a plain `u64` count of milliseconds chosen by the caller.
//!
//! Layout: `LEVELS` levels of `SLOTS` slots; a slot at level `L` spans
//! `SLOTS^L` ms, so the levels together span `2^WHEEL_BITS` ms (about 2.2
//! years). An entry is filed at the level of the highest bit in which its
//! deadline differs from the wheel's current time, which keeps every filed
//! entry inside the current `2^WHEEL_BITS` block and strictly after the
//! current slot of its level. Deadlines in a later block are parked on an
//! overflow list (the "furthest slot") and re-filed when the clock reaches the
//! block of the earliest of them, so they fire at their deadline, not before.
//! Entries that are already due wait on a pending list until `poll` hands them
//! out one at a time.

use std::num::NonZeroU32;

/// Bits of time resolved by one level.
const LEVEL_BITS: u32 = 6;
/// Slots per level; one `u64` occupancy bitmap covers a level.
const SLOTS: usize = 1 << LEVEL_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const LEVELS: usize = 6;
/// The levels together cover `2^WHEEL_BITS` ms.
const WHEEL_BITS: u32 = LEVEL_BITS * LEVELS as u32;
const WHEEL_SPAN_MASK: u64 = (1 << WHEEL_BITS) - 1;

/// List ids: `0..LEVELS * SLOTS` are the slots, level-major; then the two
/// special lists. A `u16` keeps the node small.
const SLOT_LISTS: u16 = (LEVELS * SLOTS) as u16;
const PENDING: u16 = SLOT_LISTS;
const OVERFLOW: u16 = SLOT_LISTS + 1;
const LISTS: usize = SLOT_LISTS as usize + 2;
/// The list id of a free node (not a list with a head in `heads`).
const FREE: u16 = SLOT_LISTS + 2;

/// End-of-list marker for the `u32` links, so no node index may equal it.
const NIL: u32 = u32::MAX;

/// Handle to a scheduled entry; stays valid until the entry fires or is removed.
///
/// The generation makes a handle kept past its entry's life harmless: it can
/// never address a later entry that reuses the same node. Being non-zero
/// it also lets `Option<TimerKey>` stay 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimerKey {
    index: u32,
    generation: NonZeroU32,
}

/// One entry of the arena. A free node stays in place: it keeps its
/// generation, so keys to its earlier entries stay stale, and its `next`
/// links the free list. (The `slab` crate's entries are a tagged enum, 8
/// bytes more per node, and a vacant one cannot keep a generation.)
#[derive(Debug)]
struct Node<T> {
    deadline: u64,
    /// The entry's value; a free node keeps its last one, unread.
    value: T,
    prev: u32,
    next: u32,
    generation: NonZeroU32,
    /// The list the node is on, or [`FREE`].
    list: u16,
}

/// What comes due at the wheel's next expiration.
#[derive(Clone, Copy, Debug)]
enum Due {
    Slot { level: usize, slot: usize },
    Overflow,
}

/// Timer wheel holding values of type `T` (a small `Copy` value: a free
/// node keeps its last one).
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    /// Every node, live or free; it never shrinks, so once warmed up an
    /// insert allocates nothing.
    nodes: Vec<Node<T>>,
    /// Head of the free nodes, linked through `next`.
    free: u32,
    heads: [u32; LISTS],
    occupied: [u64; LEVELS],
    /// The wheel's notion of now: every slot entry is later than this, every
    /// pending entry is at or before it.
    elapsed: u64,
    /// Lower bound of the pending deadlines (exact until a removal).
    pending_min: u64,
    /// Lower bound of the overflow deadlines (exact until a removal); a stale
    /// bound only makes the overflow list be re-filed earlier than needed.
    overflow_min: u64,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel whose clock starts at `now`.
    pub(crate) fn new(now: u64) -> Self {
        Self::with_capacity(now, 0)
    }

    /// A wheel whose clock starts at `now`, with room for `capacity` entries
    /// before it allocates.
    pub(crate) fn with_capacity(now: u64, capacity: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(capacity),
            free: NIL,
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            elapsed: now,
            pending_min: u64::MAX,
            overflow_min: u64::MAX,
        }
    }

    /// Schedules `value` to fire at `deadline` (a deadline at or before the
    /// wheel's current time fires on the next `poll`).
    ///
    /// # Panics
    /// If the wheel already holds `u32::MAX` entries (hundreds of GiB), the
    /// limit of its `u32` links.
    pub(crate) fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        // `list` stays off FREE until `file` puts the node on its real list.
        let (index, generation) = match self.nodes.get_mut(self.free as usize) {
            Some(node) => {
                let index = self.free;
                self.free = node.next;
                node.deadline = deadline;
                node.value = value;
                node.prev = NIL;
                node.next = NIL;
                node.list = PENDING;
                (index, node.generation)
            }
            None => {
                let index = self.nodes.len();
                assert!(index < NIL as usize, "timer wheel is full");
                self.nodes.push(Node {
                    deadline,
                    value,
                    prev: NIL,
                    next: NIL,
                    generation: NonZeroU32::MIN,
                    list: PENDING,
                });
                (index as u32, NonZeroU32::MIN)
            }
        };
        self.file(index);
        TimerKey { index, generation }
    }

    /// Cancels an entry, returning its value; `None` if it already fired or was removed.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        if !self.is_live(key) {
            return None;
        }
        self.take(key.index).map(|(_, value)| value)
    }

    /// Moves an existing entry to a new deadline, keeping its key. Returns false for a stale key.
    pub(crate) fn reschedule(&mut self, key: TimerKey, deadline: u64) -> bool {
        if !self.is_live(key) {
            return false;
        }
        self.unlink(key.index);
        if let Some(node) = self.nodes.get_mut(key.index as usize) {
            node.deadline = deadline;
        }
        self.file(key.index);
        true
    }

    /// The deadline of an entry, if it is still pending.
    pub(crate) fn deadline(&self, key: TimerKey) -> Option<u64> {
        if !self.is_live(key) {
            return None;
        }
        self.nodes.get(key.index as usize).map(|node| node.deadline)
    }

    /// When the loop must next call `poll`: never later than the earliest
    /// deadline (it may be earlier, at a wheel-level boundary). `None` when empty.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        if self.heads[PENDING as usize] != NIL {
            return Some(self.pending_min);
        }
        self.next_due().map(|(time, _)| time)
    }

    /// Advances the wheel to `now` and pops one entry whose deadline is `<= now`.
    /// Call until it returns `None`.
    ///
    /// A `now` earlier than a previous one moves nothing backwards; it only
    /// returns entries due by that earlier time.
    pub(crate) fn poll(&mut self, now: u64) -> Option<(TimerKey, T)> {
        loop {
            if let Some(index) = self.first_pending_due(now) {
                return self.take(index);
            }
            match self.next_due() {
                Some((time, due)) if time <= now => self.expire(time, due),
                _ => break,
            }
        }
        // Nothing comes due in (elapsed, now], so moving the clock keeps every
        // filed entry in its slot.
        self.elapsed = self.elapsed.max(now);
        None
    }

    #[cfg(test)]
    /// Number of entries not yet fired or removed.
    pub(crate) fn len(&self) -> usize {
        self.nodes.iter().filter(|node| node.list != FREE).count()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_live(&self, key: TimerKey) -> bool {
        self.nodes
            .get(key.index as usize)
            .is_some_and(|node| node.list != FREE && node.generation == key.generation)
    }

    /// The earliest slot (or overflow block) that comes due, with its start time.
    fn next_due(&self) -> Option<(u64, Due)> {
        // Every entry of level L lies in the current SLOTS^(L+1) block and after
        // its current slot, so all of it is later than anything on a lower
        // level: the first occupied level decides, at its lowest occupied slot.
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                let shift = LEVEL_BITS * level as u32;
                let block_mask = (1u64 << (shift + LEVEL_BITS)) - 1;
                let start = (self.elapsed & !block_mask) + ((slot as u64) << shift);
                return Some((start, Due::Slot { level, slot }));
            }
        }
        if self.heads[OVERFLOW as usize] != NIL {
            return Some((self.overflow_min & !WHEEL_SPAN_MASK, Due::Overflow));
        }
        None
    }

    /// Moves the clock to `time`, where `due` starts, and re-files its entries:
    /// those at `time` become pending, the rest drop to lower levels.
    fn expire(&mut self, time: u64, due: Due) {
        self.elapsed = time;
        let list = match due {
            Due::Slot { level, slot } => {
                self.occupied[level] &= !(1u64 << slot);
                list_id(level, slot)
            }
            Due::Overflow => {
                self.overflow_min = u64::MAX;
                OVERFLOW
            }
        };
        let mut index = std::mem::replace(&mut self.heads[list as usize], NIL);
        while index != NIL {
            let Some(node) = self.nodes.get(index as usize) else {
                break;
            };
            let next = node.next;
            self.file(index);
            index = next;
        }
    }

    /// The first pending entry due by `now`; the head whenever the clock only
    /// moves forwards.
    fn first_pending_due(&self, now: u64) -> Option<u32> {
        let mut index = self.heads[PENDING as usize];
        while index != NIL {
            let node = self.nodes.get(index as usize)?;
            if node.deadline <= now {
                return Some(index);
            }
            index = node.next;
        }
        None
    }

    /// Links an unlinked node into the list its deadline belongs to.
    fn file(&mut self, index: u32) {
        let Some(node) = self.nodes.get(index as usize) else {
            return;
        };
        let deadline = node.deadline;
        let list = if deadline <= self.elapsed {
            self.pending_min = self.pending_min.min(deadline);
            PENDING
        } else {
            let level = level_for(self.elapsed, deadline);
            if level >= LEVELS {
                self.overflow_min = self.overflow_min.min(deadline);
                OVERFLOW
            } else {
                let slot = ((deadline >> (LEVEL_BITS * level as u32)) & SLOT_MASK) as usize;
                self.occupied[level] |= 1u64 << slot;
                list_id(level, slot)
            }
        };
        let head = self.heads[list as usize];
        if let Some(node) = self.nodes.get_mut(index as usize) {
            node.prev = NIL;
            node.next = head;
            node.list = list;
        }
        if let Some(old_head) = self.nodes.get_mut(head as usize) {
            old_head.prev = index;
        }
        self.heads[list as usize] = index;
    }

    /// Unlinks a node from its list, leaving it live.
    fn unlink(&mut self, index: u32) {
        let Some(node) = self.nodes.get(index as usize) else {
            return;
        };
        let (prev, next, list) = (node.prev, node.next, node.list);
        match self.nodes.get_mut(prev as usize) {
            Some(before) => before.next = next,
            None => self.heads[list as usize] = next,
        }
        if let Some(after) = self.nodes.get_mut(next as usize) {
            after.prev = prev;
        }
        if self.heads[list as usize] == NIL {
            match list {
                PENDING => self.pending_min = u64::MAX,
                OVERFLOW => self.overflow_min = u64::MAX,
                _ => {
                    let level = usize::from(list) / SLOTS;
                    let slot = usize::from(list) % SLOTS;
                    self.occupied[level] &= !(1u64 << slot);
                }
            }
        }
    }

    /// Unlinks and frees a live node, retiring its key.
    fn take(&mut self, index: u32) -> Option<(TimerKey, T)> {
        self.unlink(index);
        let free = self.free;
        let node = self
            .nodes
            .get_mut(index as usize)
            .filter(|node| node.list != FREE)?;
        let key = TimerKey {
            index,
            generation: node.generation,
        };
        node.generation = node.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        node.list = FREE;
        node.prev = NIL;
        node.next = free;
        self.free = index;
        Some((key, node.value))
    }
}

/// The level whose span holds the highest bit in which `deadline` differs
/// from `now`; `LEVELS` or more means beyond the wheel.
fn level_for(now: u64, deadline: u64) -> usize {
    let masked = (now ^ deadline) | SLOT_MASK;
    let highest_bit = 63 - masked.leading_zeros();
    (highest_bit / LEVEL_BITS) as usize
}

fn list_id(level: usize, slot: usize) -> u16 {
    (level * SLOTS + slot) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift;
    use std::collections::BTreeMap;

    /// Drives the wheel the way the event loop does: sleep until
    /// `next_expiry`, then poll until `None`. Returns `(fire time, value)`.
    fn drive_to_empty<T: Copy>(wheel: &mut TimerWheel<T>, max_wakeups: usize) -> Vec<(u64, T)> {
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(at) = wheel.next_expiry() {
            wakeups += 1;
            assert!(wakeups <= max_wakeups, "too many wakeups");
            while let Some((_, value)) = wheel.poll(at) {
                fired.push((at, value));
            }
        }
        fired
    }

    #[test]
    fn node_and_key_stay_small() {
        // With its generation and free-list role, a node holding a poll
        // token is all an entry costs.
        assert_eq!(std::mem::size_of::<Node<u64>>(), 32);
        assert_eq!(std::mem::size_of::<Option<TimerKey>>(), 8);
    }

    #[test]
    fn empty_wheel() {
        let mut wheel: TimerWheel<u32> = TimerWheel::new(5);
        assert_eq!(wheel.next_expiry(), None);
        assert_eq!(wheel.poll(u64::MAX), None);
        assert!(wheel.is_empty());
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn fires_exactly_at_level_boundaries() {
        const SPAN: u64 = 1 << WHEEL_BITS;
        let offsets = [
            1,
            2,
            63,
            64,
            65,
            4095,
            4096,
            4097,
            (1 << 18) - 1,
            1 << 18,
            (1 << 18) + 1,
            1 << 24,
            (1 << 30) + 7,
            SPAN - 1,
            SPAN,
            SPAN + 1,
            3 * SPAN + 12345,
        ];
        for start in [0, 1, 63, 4095, 12_345_678, SPAN - 1, u64::MAX / 2] {
            for &offset in &offsets {
                let deadline = start + offset;
                let mut wheel = TimerWheel::new(start);
                let key = wheel.insert(deadline, offset);
                assert!(
                    wheel
                        .next_expiry()
                        .is_some_and(|t| t <= deadline && t > start)
                );
                assert_eq!(wheel.poll(deadline - 1), None, "{start} + {offset}");
                assert_eq!(wheel.deadline(key), Some(deadline));
                assert_eq!(wheel.next_expiry(), Some(deadline));
                assert_eq!(wheel.poll(deadline), Some((key, offset)));
                assert_eq!(wheel.poll(deadline), None);
                assert!(wheel.is_empty());
            }
            let mut wheel = TimerWheel::new(start);
            for &offset in offsets.iter().rev() {
                wheel.insert(start + offset, offset);
            }
            let fired = drive_to_empty(&mut wheel, 200);
            let expect: Vec<_> = offsets.iter().map(|&o| (start + o, o)).collect();
            assert_eq!(fired, expect, "start {start}");
        }
    }

    #[test]
    fn stale_keys_after_fire_remove_and_reuse() {
        let mut wheel = TimerWheel::new(0);
        let fired_key = wheel.insert(10, "a");
        assert_eq!(wheel.poll(10), Some((fired_key, "a")));
        assert_eq!(wheel.remove(fired_key), None);
        assert!(!wheel.reschedule(fired_key, 20));
        assert_eq!(wheel.deadline(fired_key), None);

        // The freed slot is reused; the old key must not reach the new entry.
        let reused = wheel.insert(30, "b");
        assert_eq!(reused.index, fired_key.index);
        assert_ne!(reused, fired_key);
        assert_eq!(wheel.remove(fired_key), None);
        assert!(!wheel.reschedule(fired_key, 11));
        assert_eq!(wheel.deadline(fired_key), None);
        assert_eq!(wheel.deadline(reused), Some(30));

        assert_eq!(wheel.remove(reused), Some("b"));
        assert_eq!(wheel.remove(reused), None);
        assert!(!wheel.reschedule(reused, 40));
        let again = wheel.insert(50, "c");
        assert_eq!(again.index, reused.index);
        assert_eq!(wheel.remove(reused), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.poll(49), None);
        assert_eq!(wheel.poll(50), Some((again, "c")));
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn reschedule_earlier_and_later() {
        let mut wheel = TimerWheel::new(0);
        let early = wheel.insert(100_000, 1);
        let late = wheel.insert(1_000, 2);
        assert!(wheel.reschedule(early, 10));
        assert!(wheel.reschedule(late, 5_000));
        assert_eq!(wheel.deadline(early), Some(10));
        assert_eq!(wheel.next_expiry(), Some(10));
        assert_eq!(wheel.poll(9), None);
        assert_eq!(wheel.poll(10), Some((early, 1)));
        assert_eq!(wheel.poll(4_999), None);
        assert_eq!(wheel.poll(5_000), Some((late, 2)));

        // Rescheduling into the past fires on the next poll.
        let past = wheel.insert(9_000, 3);
        assert!(wheel.reschedule(past, 1));
        assert_eq!(wheel.next_expiry(), Some(1));
        assert_eq!(wheel.poll(5_000), Some((past, 3)));
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_deadlines_are_clamped_not_fired_early() {
        let far = u64::MAX / 2;
        let mut wheel = TimerWheel::new(0);
        let key = wheel.insert(far, ());
        let near = wheel.insert(1 << 40, ());
        for now in [1, 1 << 36, (1 << 40) - 1] {
            assert_eq!(wheel.poll(now), None);
            assert!(wheel.next_expiry().is_some_and(|t| t > now && t <= 1 << 40));
        }
        assert_eq!(wheel.poll(1 << 40), Some((near, ())));
        for now in [1 << 41, 1 << 60, far - (1 << 36), far - 1] {
            assert_eq!(wheel.poll(now), None);
            assert!(wheel.next_expiry().is_some_and(|t| t > now && t <= far));
        }
        assert_eq!(wheel.poll(far), Some((key, ())));

        let mut wheel = TimerWheel::new(7);
        wheel.insert(u64::MAX, 1);
        wheel.insert(far, 2);
        wheel.insert(far + 1, 3);
        let fired = drive_to_empty(&mut wheel, 100);
        assert_eq!(fired, vec![(far, 2), (far + 1, 3), (u64::MAX, 1)]);
    }

    #[test]
    fn past_insert_fires_on_next_poll() {
        let mut wheel = TimerWheel::new(1_000);
        let old = wheel.insert(10, 'a');
        let now = wheel.insert(1_000, 'b');
        assert_eq!(wheel.next_expiry(), Some(10));
        let mut got = vec![wheel.poll(1_000), wheel.poll(1_000)];
        got.sort_by_key(|entry| entry.map(|(_, v)| v));
        assert_eq!(got, vec![Some((old, 'a')), Some((now, 'b'))]);
        assert_eq!(wheel.poll(1_000), None);
    }

    #[test]
    fn earlier_now_never_fires_later_entries() {
        let mut wheel = TimerWheel::new(0);
        assert_eq!(wheel.poll(1_000), None);
        let late = wheel.insert(900, 1);
        let early = wheel.insert(100, 2);
        assert_eq!(wheel.poll(500), Some((early, 2)));
        assert_eq!(wheel.poll(500), None);
        assert_eq!(wheel.poll(900), Some((late, 1)));
    }

    #[test]
    fn len_bookkeeping() {
        let mut wheel = TimerWheel::new(0);
        let keys: Vec<_> = (0..100u64).map(|i| wheel.insert(i * 97, i)).collect();
        assert_eq!(wheel.len(), 100);
        assert_eq!(wheel.remove(keys[3]), Some(3));
        assert!(wheel.reschedule(keys[4], 1 << 50));
        assert_eq!(wheel.len(), 99);
        let mut fired = 0;
        while wheel.poll(97 * 50).is_some() {
            fired += 1;
        }
        assert_eq!(fired, 49);
        assert_eq!(wheel.len(), 50);
        assert!(!wheel.is_empty());
        while wheel.poll(u64::MAX).is_some() {}
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn many_entries_fire_in_deadline_order_at_their_deadline() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut wheel = TimerWheel::new(0);
        let mut expect = Vec::new();
        for i in 0..5_000u64 {
            let bits = rng.below(40);
            let deadline = rng.below(1 << bits);
            wheel.insert(deadline, i);
            expect.push((deadline, i));
        }
        let fired = drive_to_empty(&mut wheel, 200_000);
        assert_eq!(fired.len(), expect.len());
        assert!(fired.windows(2).all(|w| w[0].0 <= w[1].0));
        for (at, i) in fired {
            assert_eq!(at, expect[i as usize].0);
        }
    }

    /// Brute-force model: id -> (deadline, key, due when set).
    struct Model {
        live: BTreeMap<u64, (u64, TimerKey, bool)>,
        dead: Vec<TimerKey>,
    }

    impl Model {
        fn earliest(&self) -> Option<u64> {
            self.live.values().map(|&(d, _, _)| d).min()
        }
    }

    fn pick_deadline(rng: &mut XorShift, now: u64) -> u64 {
        match rng.below(8) {
            0 => now.saturating_add(rng.below(200)),
            1 => now.saturating_add(rng.below(1 << 20)),
            2 => rng.below(1 << 40),
            3 => {
                let boundaries = [63, 64, 65, 4095, 4096, 1 << 18, 1 << 24, 1 << 30, 1 << 36];
                let step = boundaries[rng.below(boundaries.len() as u64) as usize];
                now.saturating_add(step).saturating_sub(rng.below(2))
            }
            4 => now.saturating_sub(rng.below(100)),
            5 => (u64::MAX / 2).saturating_add(rng.below(1 << 20)),
            _ => {
                let bits = rng.below(41);
                now.saturating_add(rng.below(1 << bits))
            }
        }
    }

    fn run_model(seed: u64, start: u64, ops: usize) {
        let mut rng = XorShift(seed);
        let mut wheel = TimerWheel::new(start);
        let mut model = Model {
            live: BTreeMap::new(),
            dead: Vec::new(),
        };
        let mut now = start;
        let mut next_id = 0u64;
        for _ in 0..ops {
            match rng.below(10) {
                0..=3 => {
                    let deadline = pick_deadline(&mut rng, now);
                    let key = wheel.insert(deadline, next_id);
                    model.live.insert(next_id, (deadline, key, deadline <= now));
                    next_id += 1;
                }
                4 => {
                    if let Some(key) = pick_dead(&mut rng, &model) {
                        assert_eq!(wheel.remove(key), None);
                        assert_eq!(wheel.deadline(key), None);
                    } else if let Some(id) = pick_live(&mut rng, &model) {
                        let (_, key, _) = model.live[&id];
                        assert_eq!(wheel.remove(key), Some(id));
                        model.live.remove(&id);
                        model.dead.push(key);
                    }
                }
                5 => {
                    let deadline = pick_deadline(&mut rng, now);
                    if let Some(key) = pick_dead(&mut rng, &model) {
                        assert!(!wheel.reschedule(key, deadline));
                    } else if let Some(id) = pick_live(&mut rng, &model) {
                        let entry = model.live.get_mut(&id).expect("picked live");
                        assert!(wheel.reschedule(entry.1, deadline));
                        assert_eq!(wheel.deadline(entry.1), Some(deadline));
                        *entry = (deadline, entry.1, deadline <= now);
                    }
                }
                step => {
                    let prev = now;
                    now = match step {
                        6 => now.saturating_add(rng.below(100)),
                        7 => now.saturating_add(rng.below(1 << 16)),
                        8 => now.saturating_add(rng.below(1 << 40)),
                        _ => wheel.next_expiry().map_or(now, |t| t.max(now)),
                    };
                    while let Some((key, id)) = wheel.poll(now) {
                        let (deadline, model_key, due_when_set) =
                            model.live.remove(&id).expect("fired entry is live");
                        assert_eq!(key, model_key);
                        assert!(deadline <= now, "fired early");
                        assert!(deadline > prev || due_when_set, "fired late");
                        model.dead.push(key);
                    }
                    if let Some(earliest) = model.earliest() {
                        assert!(earliest > now, "missed a due entry");
                    }
                }
            }
            assert_eq!(wheel.len(), model.live.len());
            match (wheel.next_expiry(), model.earliest()) {
                (None, None) => {}
                (Some(next), Some(earliest)) => {
                    assert!(next <= earliest, "next_expiry after earliest deadline");
                    if earliest > now {
                        assert!(next > now, "next_expiry would busy-loop");
                    }
                }
                other => panic!("next_expiry mismatch: {other:?}"),
            }
        }
        while let Some(at) = wheel.next_expiry() {
            assert!(at >= now || model.earliest().is_some_and(|e| e <= now));
            now = now.max(at);
            while let Some((_, id)) = wheel.poll(now) {
                let (deadline, _, due_when_set) = model.live.remove(&id).expect("live");
                assert!(deadline == now || due_when_set && deadline <= now);
            }
        }
        assert!(model.live.is_empty());
        assert!(wheel.is_empty());
    }

    fn pick_live(rng: &mut XorShift, model: &Model) -> Option<u64> {
        let n = model.live.len() as u64;
        if n == 0 {
            return None;
        }
        model.live.keys().nth(rng.below(n) as usize).copied()
    }

    fn pick_dead(rng: &mut XorShift, model: &Model) -> Option<TimerKey> {
        if model.dead.is_empty() || rng.below(4) != 0 {
            return None;
        }
        model
            .dead
            .get(rng.below(model.dead.len() as u64) as usize)
            .copied()
    }

    #[test]
    fn matches_reference_model() {
        let starts = [
            0,
            1,
            4095,
            (1 << 36) - 50,
            123_456_789_012,
            u64::MAX / 2 - 1000,
            u64::MAX - (1 << 42),
        ];
        for seed in 1..=40u64 {
            let start = starts[seed as usize % starts.len()];
            run_model(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), start, 5_000);
        }
    }
}
