//! The channel registry: which subscribers each channel has, where its
//! messages stand (positions) and what it still remembers (history).
//!
//! Owns: the mapping channel name → channel → subscribers, each channel's
//! position state (epoch and last offset) and its history log (out of line,
//! through the [`crate::history`] store), and the compact per-connection
//! list of [`Membership`]s a connection keeps to leave them; and the
//! channels' state a handover carries to the next process
//! ([`Hub::export`], [`Hub::import`]).
//! Must never: scan all subscribers or all channels to subscribe or
//! unsubscribe, nor keep a channel that has neither subscribers nor history
//! (an idle name must not pin memory). A pure data structure: no sockets, no
//! IO, no clock (`now` is passed in).
//!
//! # Channel lifetime and positions
//!
//! A channel is created by its first subscriber, with a fresh random
//! [`Epoch`] and offset 0, and lives while it has subscribers or history
//! kept; then its name and state are freed. Its next incarnation gets a new
//! epoch, so a client holding a position from the old one is told its
//! history is gone rather than handed the wrong messages. A message
//! published to a channel that does not exist is kept nowhere and gets no
//! position.
//!
//! A handover carries every channel over with its epoch, last offset and
//! history, so clients' positions stay valid. [`Hub::import`] recreates
//! them before any subscriber arrives; the ones no restored connection
//! subscribes to and no history keeps are the only channels ever kept
//! without either, until [`Hub::finish_import`] frees them.
//!
//! # Subscriber storage
//!
//! Each channel keeps its subscribers in a `Slab<T>`. A subscription's slab
//! key is stable for its lifetime, so a [`Membership`] (channel key + slot) is
//! all a connection needs to leave in O(1), with no back-index. The
//! alternative — a dense `Vec<T>` with swap-remove — iterates a plain slice,
//! but a swap moves another subscriber's slot, so it needs two extra
//! indirection tables (about 12 more bytes per subscription) to keep
//! memberships valid. Slab iteration is already a linear walk over contiguous
//! entries that skips vacant ones; per subscriber, the fan-out's own work
//! (queueing the message, writing the socket) costs far more than that skip.
//! The slab's cost is that iteration walks the channel's peak size rather
//! than its current one until the channel empties and is dropped.
//!
//! # Stale memberships
//!
//! There is no generation check, because a membership held correctly is never
//! stale: while a connection holds it, its subscriber occupies the slot, so
//! neither the slot nor the channel (which has at least that subscriber) can
//! be reused. A membership only goes stale after it has been unsubscribed,
//! and a connection unsubscribes each one it holds exactly once — by
//! [`Memberships::take`]-ing its list when it leaves. A stale membership whose
//! channel or slot is vacant is ignored; one whose slot was reused would
//! remove the new occupant, which this usage rules out.

pub(crate) mod meta;
pub(crate) mod names;
pub(crate) mod position;
pub mod publish;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use slab::Slab;

use crate::history::{self, Limits, Log, LogState, Loss, Store};
pub(crate) use position::{Epoch, Position};

/// Identifies a live channel (valid while it has subscribers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChannelId(u32);

impl ChannelId {
    /// The smallest and largest ids, to bound a range of them.
    pub(crate) const MIN: ChannelId = ChannelId(0);
    pub(crate) const MAX: ChannelId = ChannelId(u32::MAX);
}

/// One subscription: which channel and which slot in its subscriber list;
/// what a connection stores to unsubscribe in O(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    channel: u32,
    slot: u32,
}

impl Membership {
    pub(crate) fn channel(self) -> ChannelId {
        ChannelId(self.channel)
    }
}

#[derive(Debug)]
struct Channel<T, M> {
    /// Shared with the `by_name` key so each name is allocated once.
    name: Arc<str>,
    subscribers: Slab<T>,
    /// The unbroken history this channel's offsets belong to.
    epoch: Epoch,
    /// The offset of the last message delivered (0: none yet).
    last: u64,
    /// Out of line: channels of routes without history pay one pointer.
    history: Option<Box<Log<M>>>,
}

impl<T, M> Channel<T, M> {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.history.as_ref().is_none_or(|h| h.is_empty())
    }
}

/// A channel as a handover carries it to the next process: its name, where
/// its messages stand, and what its history keeps (see [`Hub::export`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChannelState<X> {
    pub(crate) name: String,
    /// The [`Epoch`]'s value.
    pub(crate) epoch: u64,
    /// The offset of the last message delivered (0: none yet).
    pub(crate) last: u64,
    pub(crate) history: Option<LogState<X>>,
}

/// Why a recovery cannot be served: the reasons a client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotRecovered {
    /// The epoch differs (the channel's history was lost or restarted), or
    /// the offset is ahead of the channel.
    Epoch,
    /// Messages after the position were dropped for size.
    Evicted,
    /// Messages after the position outlived `history_ttl`.
    Expired,
    /// More messages were missed than `max_replay` allows.
    TooMany,
    /// The route keeps no history.
    NoHistory,
    /// A cluster node could not get the messages from Redis in time.
    Unavailable,
}

impl NotRecovered {
    /// The reason as clients read it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotRecovered::Epoch => "epoch",
            NotRecovered::Evicted => "evicted",
            NotRecovered::Expired => "expired",
            NotRecovered::TooMany => "too_many",
            NotRecovered::NoHistory => "no_history",
            NotRecovered::Unavailable => "unavailable",
        }
    }
}

/// The registry of channels and their subscribers.
#[derive(Debug)]
pub(crate) struct Hub<T, M = ()> {
    channels: Slab<Channel<T, M>>,
    /// The default (randomly keyed) hasher is kept on purpose: names come
    /// from clients, who must not be able to pick colliding ones.
    by_name: HashMap<Arc<str>, u32>,
    subscriptions: usize,
    /// Every message kept in any channel's history.
    store: Store,
    /// Epochs: a randomly keyed hash (keys from the OS, fresh per process)
    /// of a counter, so epochs differ across restarts and channels.
    epoch_keys: RandomState,
    epochs_made: u64,
}

impl<T, M> Default for Hub<T, M> {
    fn default() -> Self {
        Hub {
            channels: Slab::new(),
            by_name: HashMap::new(),
            subscriptions: 0,
            store: Store::default(),
            epoch_keys: RandomState::new(),
            epochs_made: 0,
        }
    }
}

/// The hub's channel table as the history store sees it.
struct Table<'a, T, M> {
    channels: &'a mut Slab<Channel<T, M>>,
    /// Channels whose log was emptied by eviction or expiry.
    emptied: &'a mut Vec<u32>,
}

impl<T, M> history::Logs<M> for Table<'_, T, M> {
    fn log_mut(&mut self, channel: u32) -> Option<&mut Log<M>> {
        self.channels
            .get_mut(channel as usize)
            .and_then(|c| c.history.as_deref_mut())
    }

    fn emptied(&mut self, channel: u32) {
        self.emptied.push(channel);
    }
}

/// A slab key as stored in ids and memberships.
///
/// Keys are dense (a slab reuses vacant ones), so a key reaching 2^32 would
/// need 2^32 live channels or subscribers of one channel — far more memory
/// than a process has long before. Not reachable from request input.
fn key32(key: usize) -> u32 {
    u32::try_from(key).expect("slab key exceeds u32: more live entries than memory allows")
}

impl<T: Copy, M> Hub<T, M> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn new_epoch(&mut self) -> Epoch {
        self.epochs_made += 1;
        Epoch::new(self.epoch_keys.hash_one(self.epochs_made))
    }

    /// Adds `who` to the channel named `name`, creating the channel if
    /// needed. O(1) amortized.
    pub(crate) fn subscribe(&mut self, name: &str, who: T) -> Membership {
        let channel = match self.by_name.get(name) {
            Some(&key) => key,
            None => {
                let name: Arc<str> = Arc::from(name);
                let epoch = self.new_epoch();
                let key = key32(self.channels.insert(Channel {
                    name: Arc::clone(&name),
                    subscribers: Slab::new(),
                    epoch,
                    last: 0,
                    history: None,
                }));
                self.by_name.insert(name, key);
                key
            }
        };
        // `by_name` and `channels` change together, so a named key is live.
        let entry = &mut self.channels[channel as usize];
        let slot = key32(entry.subscribers.insert(who));
        self.subscriptions += 1;
        Membership { channel, slot }
    }

    /// Removes that subscription; when the channel's last subscriber leaves,
    /// returns its name (a cluster node unsubscribes in Redis), and drops
    /// the channel (and its name) unless it keeps history, which then keeps
    /// it until that expires. A stale membership is ignored (no panic).
    pub(crate) fn unsubscribe(&mut self, membership: Membership) -> Option<Arc<str>> {
        let key = membership.channel as usize;
        let channel = self.channels.get_mut(key)?;
        channel.subscribers.try_remove(membership.slot as usize)?;
        self.subscriptions -= 1;
        if !channel.subscribers.is_empty() {
            return None;
        }
        let name = Arc::clone(&channel.name);
        self.free_if_unused(membership.channel);
        Some(name)
    }

    /// Drops channel `key` if nothing keeps it alive any more; returns its
    /// name then.
    fn free_if_unused(&mut self, key: u32) -> Option<Arc<str>> {
        if self
            .channels
            .get(key as usize)
            .is_some_and(Channel::is_unused)
        {
            let channel = self.channels.remove(key as usize);
            self.by_name.remove(&*channel.name);
            if let Some(log) = &channel.history {
                self.store.drop_log(log);
            }
            return Some(channel.name);
        }
        None
    }

    /// The names of every live channel (with subscribers or history).
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.channels.iter().map(|(_, c)| &*c.name)
    }

    /// Where the channel stands: its epoch and the offset of its last
    /// message.
    pub(crate) fn position(&self, channel: ChannelId) -> Option<Position> {
        self.channels.get(channel.0 as usize).map(|c| Position {
            epoch: c.epoch,
            offset: c.last,
        })
    }

    /// The position of a new message on a single node: the next offset in
    /// the channel's epoch. `None` for an id no longer live.
    pub(crate) fn next_position(&mut self, channel: ChannelId) -> Option<Position> {
        let c = self.channels.get_mut(channel.0 as usize)?;
        c.last += 1;
        Some(Position {
            epoch: c.epoch,
            offset: c.last,
        })
    }

    /// Takes a position assigned elsewhere (a cluster node: by Redis) as the
    /// channel's newest. A new epoch replaces the channel's and empties its
    /// history (kept messages belong to the old one); an offset at or below
    /// the last one in the same epoch is a repeat: false, deliver nothing.
    pub(crate) fn accept_position(&mut self, channel: ChannelId, position: Position) -> bool {
        let Some(c) = self.channels.get_mut(channel.0 as usize) else {
            return false;
        };
        if c.epoch != position.epoch {
            c.epoch = position.epoch;
            if let Some(log) = c.history.as_deref_mut() {
                // Restarted at this message, which the caller remembers next.
                self.store.reset_log(log, position.offset, Loss::Evicted);
            }
        } else if position.offset <= c.last {
            return false;
        }
        c.last = position.offset;
        true
    }

    /// Keeps `message` (of `size` bytes) at `position` in the channel's
    /// history, under `limits`; the caller has made `position` the
    /// channel's newest ([`Hub::next_position`] or [`Hub::accept_position`]).
    /// Channels whose history is evicted to make room and that have no
    /// subscribers are freed, `freed` called with each name (a cluster node
    /// drops its Redis subscription).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn remember(
        &mut self,
        channel: ChannelId,
        position: Position,
        message: M,
        size: usize,
        now: u64,
        limits: Limits,
        mut freed: impl FnMut(&str),
    ) {
        let Some(c) = self.channels.get_mut(channel.0 as usize) else {
            return;
        };
        if c.epoch != position.epoch {
            return;
        }
        c.history
            .get_or_insert_with(|| Box::new(Log::new(position.offset)));
        let mut emptied = Vec::new();
        let mut table = Table {
            channels: &mut self.channels,
            emptied: &mut emptied,
        };
        self.store.append(
            &mut table,
            channel.0,
            position.offset,
            message,
            size,
            now,
            limits,
        );
        for key in emptied {
            if let Some(name) = self.free_if_unused(key) {
                freed(&name);
            }
        }
    }

    /// Drops the messages whose age reached `ttl` milliseconds at `now`,
    /// frees the channels kept only by them (calling `freed` with each
    /// name), and returns when the next one expires.
    pub(crate) fn expire(
        &mut self,
        now: u64,
        ttl: u64,
        mut freed: impl FnMut(&str),
    ) -> Option<u64> {
        let mut emptied = Vec::new();
        let mut table = Table {
            channels: &mut self.channels,
            emptied: &mut emptied,
        };
        self.store.expire(&mut table, now, ttl);
        let next = self.store.next_expiry(&mut table, ttl);
        for key in emptied {
            if let Some(name) = self.free_if_unused(key) {
                freed(&name);
            }
        }
        next
    }

    /// Applies `limits` (changed by a reload) to everything kept now: each
    /// log trimmed to `per_channel`, the oldest evicted while over
    /// `max_bytes`, and what is older than `ttl` at `now` expired. Frees
    /// the channels kept only by what went (calling `freed` with each
    /// name) and returns when the next message expires. One pass over the
    /// channels: for a reload, never per message.
    pub(crate) fn apply_limits(
        &mut self,
        limits: Limits,
        now: u64,
        mut freed: impl FnMut(&str),
    ) -> Option<u64> {
        for (_, c) in self.channels.iter_mut() {
            if let Some(log) = c.history.as_deref_mut() {
                self.store.trim(log, limits.per_channel);
            }
        }
        let mut emptied = Vec::new();
        let mut table = Table {
            channels: &mut self.channels,
            emptied: &mut emptied,
        };
        self.store.fit(&mut table, limits.max_bytes);
        for key in emptied {
            if let Some(name) = self.free_if_unused(key) {
                freed(&name);
            }
        }
        self.expire(now, limits.ttl, freed)
    }

    /// Forgets all history (a reload switched it off); channels kept only
    /// by it are freed, `freed` called with each name.
    pub(crate) fn clear_history(&mut self, mut freed: impl FnMut(&str)) {
        if self.store.messages() == 0 && self.channels.iter().all(|(_, c)| c.history.is_none()) {
            return;
        }
        self.store.clear();
        let mut unused = Vec::new();
        for (key, c) in self.channels.iter_mut() {
            c.history = None;
            if c.is_unused() {
                unused.push(key32(key));
            }
        }
        for key in unused {
            if let Some(name) = self.free_if_unused(key) {
                freed(&name);
            }
        }
    }

    /// The messages after `from` in the channel's history, oldest first,
    /// if every one of them is still kept, younger than `ttl` at `now`, and
    /// there are at most `max_replay`; otherwise why not. Also returns the
    /// channel's current position.
    pub(crate) fn recover(
        &self,
        channel: ChannelId,
        from: Position,
        max_replay: usize,
        now: u64,
        ttl: u64,
    ) -> Result<(Position, impl Iterator<Item = &M> + Clone + '_), (NotRecovered, Position)> {
        let Some(c) = self.channels.get(channel.0 as usize) else {
            return Err((NotRecovered::Epoch, from));
        };
        let current = Position {
            epoch: c.epoch,
            offset: c.last,
        };
        if from.epoch != c.epoch || from.offset > c.last {
            return Err((NotRecovered::Epoch, current));
        }
        let missed = c.last - from.offset;
        let log = match c.history.as_deref() {
            Some(log) if log.next() == c.last + 1 => Some(log),
            _ => None,
        };
        let messages = match log {
            Some(log) => log
                .after_fresh(from.offset, now, ttl)
                .map_err(|loss| match loss {
                    Loss::Evicted => NotRecovered::Evicted,
                    Loss::Expired => NotRecovered::Expired,
                }),
            None if missed == 0 => Err(NotRecovered::NoHistory),
            None => Err(NotRecovered::Evicted),
        };
        let messages = match messages {
            Ok(m) => Some(m),
            // Up to date with nothing kept: nothing to replay.
            Err(NotRecovered::NoHistory) => None,
            Err(reason) => return Err((reason, current)),
        };
        if usize::try_from(missed).map_or(true, |n| n > max_replay) {
            return Err((NotRecovered::TooMany, current));
        }
        Ok((current, messages.into_iter().flatten()))
    }

    /// Every live channel (with subscribers or history) with its position
    /// and its history at `now`, each kept message turned into `X` by `f`.
    #[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
    pub(crate) fn export<X>(&self, now: u64, mut f: impl FnMut(&M) -> X) -> Vec<ChannelState<X>> {
        self.channels
            .iter()
            .map(|(_, c)| ChannelState {
                name: c.name.to_string(),
                epoch: c.epoch.get(),
                last: c.last,
                history: c.history.as_deref().map(|log| log.export(now, &mut f)),
            })
            .collect()
    }

    /// Recreates exported channels, before any subscriber arrives: each with
    /// its epoch and last offset, and its history (every message turned back
    /// into `M` by `f`) under `limits` at `now`: a message whose age reached
    /// `limits.ttl` is dropped (clients behind it are told `expired`), each
    /// log is trimmed to `per_channel` and the oldest messages across all
    /// channels are evicted while over `max_bytes`, as [`Hub::remember`]
    /// would have.
    ///
    /// A later [`Hub::subscribe`] by name finds the channel. Channels that
    /// neither a subscriber nor history keeps (all subscribers stayed
    /// behind, or the history went at import) live until
    /// [`Hub::finish_import`], which the caller runs once every restored
    /// connection has subscribed.
    ///
    /// Everything is checked (and converted) before the hub changes: a
    /// name that is invalid or already present (twice in `channels`, or in
    /// the hub), a log that is not consecutive up to its next offset, oldest
    /// first, or ahead of the channel's last offset, or a message `f`
    /// refuses, fails the whole import and leaves the hub as it was.
    ///
    /// A message added `age` before the snapshot is restored as added at
    /// `now - age` (saturating at 0): the clock must read at least the
    /// largest age kept (`history_ttl`) for ages to stay exact.
    #[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
    pub(crate) fn import<X>(
        &mut self,
        channels: Vec<ChannelState<X>>,
        now: u64,
        limits: Limits,
        mut f: impl FnMut(X) -> Result<M, String>,
    ) -> Result<(), String> {
        let mut names = HashSet::with_capacity(channels.len());
        for c in &channels {
            if !names::is_valid_channel_name(&c.name) {
                let shown: String = c.name.chars().take(names::MAX_CHANNEL_NAME_LEN).collect();
                return Err(format!("channel state: invalid channel name {shown:?}"));
            }
            if self.by_name.contains_key(c.name.as_str()) || !names.insert(c.name.as_str()) {
                return Err(format!("channel state: channel {} twice", c.name));
            }
            if let Some(log) = &c.history {
                log.check()
                    .map_err(|why| format!("channel state: channel {}: {why}", c.name))?;
                if log.next > c.last.saturating_add(1) {
                    return Err(format!(
                        "channel state: channel {}: history ahead of the last offset",
                        c.name
                    ));
                }
            }
        }
        drop(names);
        // Messages to restore: (channel index, offset, age, size, message).
        let mut kept = Vec::new();
        let mut restored = Vec::with_capacity(channels.len());
        for (index, c) in channels.into_iter().enumerate() {
            let history = match c.history {
                Some(log) => {
                    // Oldest first, so the expired ones are a prefix.
                    let expired = log
                        .entries
                        .iter()
                        .take_while(|e| e.age >= limits.ttl)
                        .count();
                    let lost = if expired > 0 {
                        Some(Loss::Expired)
                    } else {
                        log.lost
                    };
                    let first = log.first().saturating_add(expired as u64);
                    for entry in log.entries.into_iter().skip(expired) {
                        let message = f(entry.message).map_err(|why| {
                            format!(
                                "channel state: channel {}: message {}: {why}",
                                c.name, entry.offset
                            )
                        })?;
                        // `check` made sure the size fits.
                        let size = usize::try_from(entry.size).unwrap_or(usize::MAX);
                        kept.push((index, entry.offset, entry.age, size, message));
                    }
                    Some(Box::new(Log::restored(first, lost)))
                }
                None => None,
            };
            restored.push(Channel {
                name: Arc::from(c.name),
                subscribers: Slab::new(),
                epoch: Epoch::new(c.epoch),
                last: c.last,
                history,
            });
        }
        // Nothing fails from here on.
        let keys: Vec<u32> = restored
            .into_iter()
            .map(|channel| {
                let name = Arc::clone(&channel.name);
                let key = key32(self.channels.insert(channel));
                self.by_name.insert(name, key);
                key
            })
            .collect();
        // Into the store in the order they were first added (oldest first
        // across channels, stable within one), so its FIFO stays in age order.
        kept.sort_by_key(|&(_, _, age, _, _)| std::cmp::Reverse(age));
        let mut emptied = Vec::new();
        let mut table = Table {
            channels: &mut self.channels,
            emptied: &mut emptied,
        };
        for (index, offset, age, size, message) in kept {
            if let Some(&key) = keys.get(index) {
                let at = now.saturating_sub(age);
                self.store
                    .append(&mut table, key, offset, message, size, at, limits);
            }
        }
        // Channels this emptied are left for `finish_import`.
        Ok(())
    }

    /// Frees the channels an import recreated that nothing keeps alive: no
    /// restored connection subscribed and no history is kept. Returns how
    /// many. One pass over the channels, once after a handover.
    #[cfg_attr(not(test), allow(dead_code))] // until the server's handover uses it
    pub(crate) fn finish_import(&mut self) -> usize {
        let unused: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, c)| c.is_unused())
            .map(|(key, _)| key32(key))
            .collect();
        unused
            .into_iter()
            .filter(|&key| self.free_if_unused(key).is_some())
            .count()
    }

    /// Messages kept in history across all channels, and their bytes.
    pub(crate) fn history_totals(&self) -> (usize, usize) {
        (self.store.messages(), self.store.bytes())
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).map(|&key| ChannelId(key))
    }

    pub(crate) fn name(&self, channel: ChannelId) -> Option<&str> {
        self.channels.get(channel.0 as usize).map(|c| &*c.name)
    }

    /// The subscribers of a channel, in no particular order; nothing for an
    /// id that is no longer live.
    pub(crate) fn subscribers(&self, channel: ChannelId) -> impl Iterator<Item = T> + '_ {
        self.channels
            .get(channel.0 as usize)
            .into_iter()
            .flat_map(|c| c.subscribers.iter().map(|(_, &who)| who))
    }

    #[cfg(test)]
    pub(crate) fn subscriber_count(&self, channel: ChannelId) -> usize {
        self.channels
            .get(channel.0 as usize)
            .map_or(0, |c| c.subscribers.len())
    }

    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Subscriptions across all channels.
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions
    }
}

/// A connection's subscriptions, stored compactly: nothing for none, inline
/// for one, boxed beyond. At most 16 bytes because every connection holds
/// one; the `Vec` is boxed because inline it would make this 32.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(clippy::box_collection)] // the point: one word instead of three
pub(crate) enum Memberships {
    #[default]
    None,
    One(Membership),
    Many(Box<Vec<Membership>>),
}

impl Memberships {
    pub(crate) fn push(&mut self, m: Membership) {
        match self {
            Memberships::None => *self = Memberships::One(m),
            Memberships::One(first) => *self = Memberships::Many(Box::new(vec![*first, m])),
            Memberships::Many(list) => list.push(m),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Membership> + '_ {
        self.as_slice().iter().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Takes all out, leaving `None`.
    pub(crate) fn take(&mut self) -> Memberships {
        std::mem::take(self)
    }

    fn as_slice(&self) -> &[Membership] {
        match self {
            Memberships::None => &[],
            Memberships::One(m) => std::slice::from_ref(m),
            Memberships::Many(list) => list,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::XorShift;
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn sorted(hub: &Hub<u32>, channel: ChannelId) -> Vec<u32> {
        let mut v: Vec<u32> = hub.subscribers(channel).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn sizes() {
        assert_eq!(size_of::<Membership>(), 8);
        assert!(size_of::<Memberships>() <= 16);
    }

    #[test]
    fn subscribe_and_unsubscribe_bookkeeping() {
        let mut hub = Hub::new();
        assert_eq!((hub.channel_count(), hub.subscription_count()), (0, 0));
        let a1 = hub.subscribe("a", 1);
        let a2 = hub.subscribe("a", 2);
        let b1 = hub.subscribe("b", 1);
        let a = hub.lookup("a").expect("channel a");
        let b = hub.lookup("b").expect("channel b");
        assert_ne!(a, b);
        assert_eq!((a1.channel(), a2.channel(), b1.channel()), (a, a, b));
        assert_eq!((hub.name(a), hub.name(b)), (Some("a"), Some("b")));
        assert_eq!((hub.channel_count(), hub.subscription_count()), (2, 3));
        assert_eq!(sorted(&hub, a), [1, 2]);
        assert_eq!(sorted(&hub, b), [1]);
        assert_eq!((hub.subscriber_count(a), hub.subscriber_count(b)), (2, 1));

        hub.unsubscribe(a1);
        assert_eq!(sorted(&hub, a), [2]);
        assert_eq!((hub.channel_count(), hub.subscription_count()), (2, 2));
        // Unsubscribing a vacant slot is ignored.
        hub.unsubscribe(a1);
        assert_eq!(sorted(&hub, a), [2]);
        assert_eq!(hub.subscription_count(), 2);
        assert_eq!(hub.lookup("nope"), None);
    }

    #[test]
    fn last_subscriber_drops_channel_and_name() {
        let mut hub = Hub::new();
        let m = hub.subscribe("room", 7);
        let old = m.channel();
        hub.unsubscribe(m);
        assert_eq!(hub.lookup("room"), None);
        assert_eq!(hub.name(old), None);
        assert_eq!(hub.subscriber_count(old), 0);
        assert_eq!(hub.subscribers(old).count(), 0);
        assert_eq!((hub.channel_count(), hub.subscription_count()), (0, 0));

        // A new subscribe creates a fresh, empty-but-for-it channel.
        let again = hub.subscribe("room", 8);
        let fresh = hub.lookup("room").expect("recreated");
        assert_eq!(again.channel(), fresh);
        assert_eq!(sorted(&hub, fresh), [8]);
        assert_eq!(hub.channel_count(), 1);
    }

    #[test]
    fn stale_membership_of_dropped_channel_is_ignored() {
        let mut hub = Hub::new();
        let stale = hub.subscribe("x", 1);
        let keep = hub.subscribe("y", 2);
        hub.unsubscribe(stale);
        // Vacant channel: ignored.
        hub.unsubscribe(stale);
        assert_eq!(hub.subscription_count(), 1);
        assert_eq!(sorted(&hub, keep.channel()), [2]);
    }

    #[test]
    fn memberships_held_by_a_connection_are_never_stale() {
        // The documented usage: each connection keeps its memberships and
        // takes them all out exactly once when it leaves. Churn through
        // channel drop and id reuse, and check nobody loses another's place.
        let mut hub = Hub::new();
        let mut conns: Vec<Memberships> = (0..3).map(|_| Memberships::default()).collect();
        for round in 0..50u32 {
            for (who, held) in (0u32..).zip(conns.iter_mut()) {
                for m in held.take().iter() {
                    hub.unsubscribe(m);
                }
                let name = format!("c{}", (round + who) % 4);
                held.push(hub.subscribe(&name, who));
                held.push(hub.subscribe("shared", who));
            }
            assert_eq!(hub.subscription_count(), 6);
            let shared = hub.lookup("shared").expect("shared");
            assert_eq!(sorted(&hub, shared), [0, 1, 2]);
            for (who, held) in (0u32..).zip(&conns) {
                for m in held.iter() {
                    assert!(hub.subscribers(m.channel()).any(|w| w == who));
                }
            }
        }
    }

    #[test]
    fn memberships_grow_and_take() {
        let m = |channel, slot| Membership { channel, slot };
        let mut ms = Memberships::default();
        assert!(ms.is_empty());
        assert_eq!(ms.iter().count(), 0);
        ms.push(m(1, 1));
        assert_eq!(ms, Memberships::One(m(1, 1)));
        ms.push(m(2, 2));
        ms.push(m(3, 3));
        assert_eq!(ms.len(), 3);
        assert_eq!(ms.iter().collect::<Vec<_>>(), [m(1, 1), m(2, 2), m(3, 3)]);
        let taken = ms.take();
        assert_eq!(ms, Memberships::None);
        assert_eq!(taken.len(), 3);
    }

    const LIMITS: Limits = Limits {
        per_channel: 5,
        max_bytes: 1000,
        ttl: 100,
    };

    /// Publishes `n` messages (numbered from their offsets) to `name` at `now`.
    fn publish(hub: &mut Hub<u32, u64>, name: &str, n: u64, now: u64) -> Position {
        let id = hub.lookup(name).expect("live channel");
        let mut last = hub.position(id).expect("position");
        for _ in 0..n {
            last = hub.next_position(id).expect("position");
            hub.remember(id, last, last.offset, 10, now, LIMITS, |_| {});
        }
        last
    }

    fn replay(
        hub: &Hub<u32, u64>,
        name: &str,
        from: Position,
        max: usize,
    ) -> Result<Vec<u64>, NotRecovered> {
        let id = hub.lookup(name).expect("live channel");
        hub.recover(id, from, max, 0, LIMITS.ttl)
            .map(|(_, m)| m.copied().collect())
            .map_err(|(reason, _)| reason)
    }

    /// Where each channel stands and what `recover` says from every offset
    /// of its epoch at `now`, by name.
    fn standing(hub: &Hub<u32, u64>, now: u64) -> Vec<(String, Position, Vec<String>)> {
        let mut out: Vec<_> = hub
            .names()
            .map(|name| {
                let id = hub.lookup(name).expect("live channel");
                let here = hub.position(id).expect("position");
                let answers = (0..=here.offset + 1)
                    .map(|offset| {
                        let from = Position { offset, ..here };
                        match hub.recover(id, from, 100, now, LIMITS.ttl) {
                            Ok((p, m)) => format!("{p:?} {:?}", m.collect::<Vec<_>>()),
                            Err((why, p)) => format!("{p:?} {why:?}"),
                        }
                    })
                    .collect();
                (name.to_owned(), here, answers)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The hub's channels through an encoded handover.
    fn carried(hub: &Hub<u32, u64>, then: u64) -> Vec<ChannelState<u64>> {
        let bytes = postcard::to_allocvec(&hub.export(then, |&m| m)).expect("encodes");
        postcard::from_bytes(&bytes).expect("decodes")
    }

    #[test]
    fn a_handover_keeps_positions_recovery_and_history_totals() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let a = hub.subscribe("a", 1);
        hub.subscribe("a", 2);
        publish(&mut hub, "a", 7, 10); // five kept: 1 and 2 evicted
        let b = hub.subscribe("b", 3);
        publish(&mut hub, "b", 2, 20);
        hub.unsubscribe(b); // kept by its history alone
        let c = hub.subscribe("c", 4);
        hub.next_position(c.channel()); // no history: a position only
        hub.subscribe("gone", 5); // nobody comes back for it
        let before = standing(&hub, 50);
        let totals = hub.history_totals();

        // The new process's clock reads 1000 where the old one read 50.
        let mut next: Hub<u32, u64> = Hub::new();
        next.import(carried(&hub, 50), 1000, LIMITS, Ok).unwrap();
        next.subscribe("a", 1);
        next.subscribe("c", 4);
        assert_eq!(next.finish_import(), 1, "the unclaimed channel is freed");
        assert!(next.lookup("gone").is_none());
        let mut expected = before.clone();
        expected.retain(|(name, ..)| name != "gone");
        assert_eq!(standing(&next, 1000), expected);
        assert_eq!(next.history_totals(), totals);
        assert_eq!(next.subscription_count(), 2);
        // Expiry runs on the new clock from the ages carried: "a" was
        // published at 10 (age 40), so it expires at 1000 + 60.
        assert_eq!(next.expire(1000, LIMITS.ttl, |_| {}), Some(1060));
        next.expire(1070, LIMITS.ttl, |_| {});
        assert_eq!(next.history_totals(), (0, 0));
        // And the epochs carried over go on: the next offset follows.
        let id = next.lookup("a").unwrap();
        assert_eq!(
            next.next_position(id),
            Some(Position {
                offset: 8,
                ..hub.position(a.channel()).unwrap()
            })
        );
    }

    #[test]
    fn import_drops_expired_messages_and_applies_the_limits() {
        let mut hub: Hub<u32, u64> = Hub::new();
        hub.subscribe("old", 1);
        hub.subscribe("new", 2);
        let start = hub.position(hub.lookup("old").unwrap()).unwrap();
        publish(&mut hub, "old", 3, 0);
        publish(&mut hub, "new", 3, 60);
        let state = carried(&hub, 100); // "old" aged 100: expired
        let mut next: Hub<u32, u64> = Hub::new();
        next.import(state.clone(), 5000, LIMITS, Ok).unwrap();
        assert_eq!(next.history_totals(), (3, 30));
        next.subscribe("old", 1);
        let id = next.lookup("old").unwrap();
        let answer = next.recover(id, start, 100, 5000, LIMITS.ttl).map(|_| ());
        assert_eq!(answer.unwrap_err().0, NotRecovered::Expired);

        // Two kept per channel, 30 bytes overall: the oldest go first.
        let tight = Limits {
            per_channel: 2,
            max_bytes: 30,
            ttl: 1000,
        };
        let mut next: Hub<u32, u64> = Hub::new();
        next.import(state, 5000, tight, Ok).unwrap();
        assert_eq!(next.history_totals(), (3, 30));
        let old = next.lookup("old").unwrap();
        let new = next.lookup("new").unwrap();
        let from = |id, offset| Position {
            offset,
            ..next.position(id).unwrap()
        };
        let kept = |id, offset| {
            next.recover(id, from(id, offset), 100, 5000, tight.ttl)
                .map(|(_, m)| m.copied().collect::<Vec<_>>())
                .map_err(|(why, _)| why)
        };
        assert_eq!(kept(old, 2), Ok(vec![3]));
        assert_eq!(kept(old, 1), Err(NotRecovered::Evicted));
        assert_eq!(kept(new, 1), Ok(vec![2, 3]));
        assert_eq!(kept(new, 0), Err(NotRecovered::Evicted));
    }

    #[test]
    fn import_refuses_inconsistent_channels_and_changes_nothing() {
        let mut hub: Hub<u32, u64> = Hub::new();
        hub.subscribe("a", 1);
        publish(&mut hub, "a", 3, 0);
        let good = carried(&hub, 0);
        let mut bad_cases: Vec<(&str, Vec<ChannelState<u64>>)> = Vec::new();
        bad_cases.push(("twice", [good.clone(), good.clone()].concat()));
        let mut c = good.clone();
        c[0].name = "no spaces".into();
        bad_cases.push(("invalid name", c));
        let mut c = good.clone();
        c[0].last = 1;
        bad_cases.push(("history ahead", c));
        let mut c = good.clone();
        c[0].history.as_mut().unwrap().entries[1].offset = 9;
        bad_cases.push(("gap", c));
        let mut c = good.clone();
        c[0].history.as_mut().unwrap().next = 2;
        bad_cases.push(("more messages than offsets", c));
        let mut c = good.clone();
        c[0].history.as_mut().unwrap().entries[2].age = 50;
        bad_cases.push(("not oldest first", c));
        for (name, channels) in bad_cases {
            let mut next: Hub<u32, u64> = Hub::new();
            assert!(next.import(channels, 0, LIMITS, Ok).is_err(), "{name}");
            assert_eq!(next.channel_count(), 0, "{name}: nothing changed");
        }
        let mut next: Hub<u32, u64> = Hub::new();
        let refused = next.import(good.clone(), 0, LIMITS, |m| {
            if m == 2 { Err("no".into()) } else { Ok(m) }
        });
        assert!(refused.unwrap_err().contains("message 2"));
        assert_eq!((next.channel_count(), next.history_totals()), (0, (0, 0)));
        next.import(good.clone(), 0, LIMITS, Ok).unwrap();
        assert!(next.import(good, 0, LIMITS, Ok).is_err(), "already there");
    }

    #[test]
    fn positions_grow_by_one_and_epochs_differ_per_incarnation() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let m = hub.subscribe("a", 1);
        let id = m.channel();
        let start = hub.position(id).unwrap();
        assert_eq!(start.offset, 0);
        assert_eq!(hub.next_position(id).unwrap().offset, 1);
        assert_eq!(hub.next_position(id).unwrap().offset, 2);
        hub.unsubscribe(m);
        let again = hub.subscribe("a", 1).channel();
        let fresh = hub.position(again).unwrap();
        assert_eq!(fresh.offset, 0);
        assert_ne!(fresh.epoch, start.epoch, "a new incarnation, a new epoch");
    }

    #[test]
    fn recovery_serves_exactly_what_was_missed_or_says_why_not() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let keep = hub.subscribe("a", 1);
        let at0 = hub.position(keep.channel()).unwrap();
        let at3 = publish(&mut hub, "a", 3, 0);
        assert_eq!(replay(&hub, "a", at0, 10), Ok(vec![1, 2, 3]));
        assert_eq!(replay(&hub, "a", at3, 10), Ok(vec![]), "up to date");
        assert_eq!(replay(&hub, "a", at0, 2), Err(NotRecovered::TooMany));
        let other = Position {
            epoch: Epoch::new(at0.epoch.get() ^ 1),
            offset: 1,
        };
        assert_eq!(replay(&hub, "a", other, 10), Err(NotRecovered::Epoch));
        let ahead = Position { offset: 4, ..at3 };
        assert_eq!(replay(&hub, "a", ahead, 10), Err(NotRecovered::Epoch));
        // Five kept per channel: offsets 1 and 2 go.
        publish(&mut hub, "a", 4, 0);
        assert_eq!(replay(&hub, "a", at0, 100), Err(NotRecovered::Evicted));
        assert_eq!(replay(&hub, "a", at3, 100), Ok(vec![4, 5, 6, 7]));
        // Everything expires at 100.
        let (_, messages) = (0, hub.history_totals().0);
        assert_eq!(messages, 5);
        assert_eq!(hub.expire(99, LIMITS.ttl, |_| {}), Some(100));
        assert_eq!(hub.expire(100, LIMITS.ttl, |_| {}), None);
        assert_eq!(replay(&hub, "a", at3, 100), Err(NotRecovered::Expired));
        let now = hub.position(keep.channel()).unwrap();
        assert_eq!(replay(&hub, "a", now, 100), Ok(vec![]));
    }

    #[test]
    fn a_channel_with_history_outlives_its_subscribers_until_it_expires() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let m = hub.subscribe("a", 1);
        let at0 = hub.position(m.channel()).unwrap();
        publish(&mut hub, "a", 2, 10);
        assert_eq!(hub.unsubscribe(m).as_deref(), Some("a"));
        assert_eq!(hub.channel_count(), 1, "kept by its history");
        assert_eq!(hub.subscription_count(), 0);
        // Published to while nobody listens: still kept.
        publish(&mut hub, "a", 1, 50);
        let back = hub.subscribe("a", 2);
        assert_eq!(replay(&hub, "a", at0, 10), Ok(vec![1, 2, 3]));
        hub.unsubscribe(back);
        let mut freed = Vec::new();
        assert_eq!(
            hub.expire(110, LIMITS.ttl, |n| freed.push(n.to_owned())),
            Some(150)
        );
        assert_eq!(hub.channel_count(), 1);
        assert_eq!(
            hub.expire(150, LIMITS.ttl, |n| freed.push(n.to_owned())),
            None
        );
        assert_eq!(freed, ["a"]);
        assert_eq!((hub.channel_count(), hub.history_totals()), (0, (0, 0)));
        assert_eq!(hub.lookup("a"), None);
    }

    #[test]
    fn a_message_past_its_ttl_is_never_replayed_even_before_the_sweep() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let id = hub.subscribe("a", 1).channel();
        let at0 = hub.position(id).unwrap();
        publish(&mut hub, "a", 2, 0);
        let at1 = Position { offset: 1, ..at0 };
        publish(&mut hub, "a", 1, 40);
        let get = |hub: &Hub<u32, u64>, from, now, ttl| {
            hub.recover(id, from, 10, now, ttl)
                .map(|(_, m)| m.copied().collect::<Vec<_>>())
                .map_err(|(reason, _)| reason)
        };
        assert_eq!(get(&hub, at0, 99, 100), Ok(vec![1, 2, 3]));
        // A reload shortened history_ttl to 50 while the sweep is still
        // armed for the old one: messages 1 and 2 are too old to replay.
        assert_eq!(get(&hub, at0, 60, 50), Err(NotRecovered::Expired));
        assert_eq!(get(&hub, at1, 60, 50), Err(NotRecovered::Expired));
        let at2 = Position { offset: 2, ..at0 };
        assert_eq!(get(&hub, at2, 60, 50), Ok(vec![3]));
        assert_eq!(hub.history_totals().0, 3, "the sweep alone drops them");
    }

    #[test]
    fn a_reload_applies_new_limits_to_what_is_kept_at_once() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let a = hub.subscribe("a", 1);
        let at0 = hub.position(a.channel()).unwrap();
        publish(&mut hub, "a", 5, 0);
        hub.subscribe("b", 2);
        publish(&mut hub, "b", 5, 30);
        hub.unsubscribe(a);
        assert_eq!(hub.history_totals(), (10, 100));
        // history_size 5 -> 3: each log keeps its newest 3.
        let smaller = Limits {
            per_channel: 3,
            ..LIMITS
        };
        let mut freed = Vec::new();
        let next = hub.apply_limits(smaller, 10, |n| freed.push(n.to_owned()));
        assert_eq!((next, hub.history_totals()), (Some(100), (6, 60)));
        let at1 = Position { offset: 1, ..at0 };
        assert_eq!(replay(&hub, "a", at1, 10), Err(NotRecovered::Evicted));
        let at2 = Position { offset: 2, ..at0 };
        assert_eq!(replay(&hub, "a", at2, 10), Ok(vec![3, 4, 5]));
        // history_max_bytes 60 -> 30: the oldest (all of "a") go, and "a",
        // kept only by its history, is freed.
        let tight = Limits {
            max_bytes: 30,
            ..smaller
        };
        hub.apply_limits(tight, 10, |n| freed.push(n.to_owned()));
        assert_eq!(hub.history_totals(), (3, 30));
        assert_eq!(freed, ["a"]);
        // history_ttl 100 -> 20: at 50, "b" (kept at 30) is not yet due...
        let short = Limits { ttl: 20, ..tight };
        assert_eq!(hub.apply_limits(short, 49, |_| {}), Some(50));
        // ...and at 50 it is.
        assert_eq!(hub.apply_limits(short, 50, |_| {}), None);
        assert_eq!(hub.history_totals(), (0, 0));
    }

    #[test]
    fn the_byte_budget_frees_channels_kept_only_by_history() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let gone = hub.subscribe("old", 1);
        publish(&mut hub, "old", 1, 0);
        hub.unsubscribe(gone);
        hub.subscribe("new", 2);
        // 1000 bytes hold 100 messages of 10: the old one is evicted first.
        let id = hub.lookup("new").unwrap();
        let wide = Limits {
            per_channel: 1000,
            ..LIMITS
        };
        let mut freed = Vec::new();
        for _ in 0..100 {
            let p = hub.next_position(id).unwrap();
            hub.remember(id, p, p.offset, 10, 1, wide, |n| freed.push(n.to_owned()));
        }
        assert_eq!(hub.history_totals(), (100, 1000));
        assert_eq!(hub.lookup("old"), None);
        assert_eq!(freed, ["old"], "told, so a cluster node unsubscribes");
        assert_eq!(hub.channel_count(), 1);
        // Switched off: a channel kept only by its history goes, and is told.
        let gone = hub.subscribe("kept", 3);
        let k = hub.lookup("kept").unwrap();
        let p = hub.next_position(k).unwrap();
        hub.remember(k, p, p.offset, 10, 1, wide, |n| freed.push(n.to_owned()));
        hub.unsubscribe(gone);
        hub.clear_history(|n| freed.push(n.to_owned()));
        assert_eq!(hub.history_totals(), (0, 0));
        assert_eq!(freed, ["old", "kept"]);
        assert_eq!(hub.channel_count(), 1);
    }

    #[test]
    fn positions_from_elsewhere_reset_history_on_a_new_epoch_and_drop_repeats() {
        let mut hub: Hub<u32, u64> = Hub::new();
        let id = hub.subscribe("a", 1).channel();
        let e1 = Epoch::new(1);
        let at = |epoch, offset| Position { epoch, offset };
        for offset in [10, 11] {
            assert!(hub.accept_position(id, at(e1, offset)));
            hub.remember(id, at(e1, offset), offset, 1, 0, LIMITS, |_| {});
        }
        assert!(!hub.accept_position(id, at(e1, 11)), "a repeat");
        assert_eq!(replay(&hub, "a", at(e1, 10), 10), Ok(vec![11]));
        assert_eq!(replay(&hub, "a", at(e1, 8), 10), Err(NotRecovered::Evicted));
        let e2 = Epoch::new(2);
        assert!(hub.accept_position(id, at(e2, 1)));
        hub.remember(id, at(e2, 1), 1, 1, 0, LIMITS, |_| {});
        assert_eq!(replay(&hub, "a", at(e1, 11), 10), Err(NotRecovered::Epoch));
        assert_eq!(replay(&hub, "a", at(e2, 0), 10), Ok(vec![1]));
        assert_eq!(hub.history_totals().0, 1);
    }

    #[test]
    fn randomized_against_brute_force_model() {
        const CHANNELS: usize = 30;
        const SUBSCRIBERS: usize = 300;
        const OPS: usize = 20_000;

        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut hub: Hub<u32> = Hub::new();
        let mut model: HashMap<String, HashSet<u32>> = HashMap::new();
        // Live subscriptions as the event loop holds them: (name, who, membership).
        let mut held: Vec<(String, u32, Membership)> = Vec::new();

        for op in 0..OPS {
            // Alternate growing and draining phases so channels fill up,
            // empty out (and are dropped) and get recreated along the way.
            let phase_grows = (op / 2_000) % 2 == 0;
            let subscribe_odds = if phase_grows { 60 } else { 35 };
            if held.is_empty() || rng.index(100) < subscribe_odds {
                let name = format!("ch{}", rng.index(CHANNELS));
                let who = rng.index(SUBSCRIBERS) as u32;
                // One subscription per (channel, subscriber), as connections dedupe.
                if model.get(&name).is_some_and(|s| s.contains(&who)) {
                    continue;
                }
                let m = hub.subscribe(&name, who);
                assert_eq!(hub.lookup(&name), Some(m.channel()));
                model.entry(name.clone()).or_default().insert(who);
                held.push((name, who, m));
            } else {
                let (name, who, m) = held.swap_remove(rng.index(held.len()));
                hub.unsubscribe(m);
                let set = model.get_mut(&name).expect("model has it");
                assert!(set.remove(&who));
                if set.is_empty() {
                    model.remove(&name);
                }
            }

            if op % 97 == 0 || op + 1 == OPS {
                assert_eq!(hub.channel_count(), model.len());
                assert_eq!(hub.subscription_count(), held.len());
                for i in 0..CHANNELS {
                    let name = format!("ch{i}");
                    match (hub.lookup(&name), model.get(&name)) {
                        (None, None) => {}
                        (Some(id), Some(set)) => {
                            assert_eq!(hub.name(id), Some(name.as_str()));
                            assert_eq!(hub.subscriber_count(id), set.len());
                            let got: HashSet<u32> = hub.subscribers(id).collect();
                            assert_eq!(&got, set, "{name}");
                        }
                        (got, want) => panic!("{name}: hub {got:?}, model {want:?}"),
                    }
                }
            }
        }
    }
}
