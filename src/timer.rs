//! A hierarchical timer wheel: O(1) insert and remove, driven by the event
//! loop's clock, which it never reads itself.
//!
//! Owns: every pending deadline of the server (handshake, ping, pong, close,
//! idle), one entry per connection, in slab-backed intrusive lists.
//! Must never: read the clock, allocate per insert once warmed up, or fire an
//! entry before its deadline.
//!
//! Time is a plain `u64` count of milliseconds chosen by the caller.

/// Handle to a scheduled entry; stays valid until the entry fires or is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey(u32);

/// Timer wheel holding values of type `T`.
#[derive(Debug)]
pub struct TimerWheel<T> {
    _values: Vec<T>,
}

impl<T> TimerWheel<T> {
    /// A wheel whose clock starts at `now`.
    pub fn new(now: u64) -> Self {
        todo!("{now}")
    }
    /// Schedules `value` to fire at `deadline` (a deadline at or before the
    /// wheel's current time fires on the next `poll`).
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let _ = (deadline, value);
        todo!()
    }
    /// Cancels an entry, returning its value; `None` if it already fired or was removed.
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        todo!("{key:?}")
    }
    /// Moves an existing entry to a new deadline, keeping its key. Returns false for a stale key.
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> bool {
        todo!("{key:?} {deadline}")
    }
    /// The deadline of an entry, if it is still pending.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        todo!("{key:?}")
    }
    /// When the loop must next call `poll`: never later than the earliest
    /// deadline (it may be earlier, at a wheel-level boundary). `None` when empty.
    pub fn next_expiry(&self) -> Option<u64> {
        todo!()
    }
    /// Advances the wheel to `now` and pops one entry whose deadline is `<= now`.
    /// Call until it returns `None`.
    pub fn poll(&mut self, now: u64) -> Option<(TimerKey, T)> {
        todo!("{now}")
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
