//! The channel registry: which subscribers each channel has.
//!
//! Owns: the mapping channel name → channel → subscribers, and the compact
//! per-connection list of [`Membership`]s a connection keeps to leave them.
//! Must never: scan all subscribers or all channels to subscribe or
//! unsubscribe, nor keep a channel that has no subscribers (an idle name must
//! not pin memory). A pure data structure: no sockets, no IO, no clock.
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

pub(crate) mod names;
#[allow(dead_code)] // positions are being wired in: remove once history uses them
pub(crate) mod position;
pub mod publish;

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

/// Identifies a live channel (valid while it has subscribers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChannelId(u32);

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
struct Channel<T> {
    /// Shared with the `by_name` key so each name is allocated once.
    name: Arc<str>,
    subscribers: Slab<T>,
}

/// The registry of channels and their subscribers.
#[derive(Debug)]
pub(crate) struct Hub<T> {
    channels: Slab<Channel<T>>,
    /// The default (randomly keyed) hasher is kept on purpose: names come
    /// from clients, who must not be able to pick colliding ones.
    by_name: HashMap<Arc<str>, u32>,
    subscriptions: usize,
}

impl<T> Default for Hub<T> {
    fn default() -> Self {
        Hub {
            channels: Slab::new(),
            by_name: HashMap::new(),
            subscriptions: 0,
        }
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

impl<T: Copy> Hub<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `who` to the channel named `name`, creating the channel if
    /// needed. O(1) amortized.
    pub(crate) fn subscribe(&mut self, name: &str, who: T) -> Membership {
        let channel = match self.by_name.get(name) {
            Some(&key) => key,
            None => {
                let name: Arc<str> = Arc::from(name);
                let key = key32(self.channels.insert(Channel {
                    name: Arc::clone(&name),
                    subscribers: Slab::new(),
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

    /// Removes that subscription; drops the channel (and its name) when its
    /// last subscriber leaves, and then returns the name (a cluster node
    /// unsubscribes in Redis). A stale membership is ignored (no panic).
    pub(crate) fn unsubscribe(&mut self, membership: Membership) -> Option<Arc<str>> {
        let key = membership.channel as usize;
        let channel = self.channels.get_mut(key)?;
        channel.subscribers.try_remove(membership.slot as usize)?;
        self.subscriptions -= 1;
        if channel.subscribers.is_empty() {
            let channel = self.channels.remove(key);
            self.by_name.remove(&*channel.name);
            return Some(channel.name);
        }
        None
    }

    /// The names of every live channel (each has a subscriber).
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.channels.iter().map(|(_, c)| &*c.name)
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

    /// Seeded so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
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
            if held.is_empty() || rng.below(100) < subscribe_odds {
                let name = format!("ch{}", rng.below(CHANNELS));
                let who = rng.below(SUBSCRIBERS) as u32;
                // One subscription per (channel, subscriber), as connections dedupe.
                if model.get(&name).is_some_and(|s| s.contains(&who)) {
                    continue;
                }
                let m = hub.subscribe(&name, who);
                assert_eq!(hub.lookup(&name), Some(m.channel()));
                model.entry(name.clone()).or_default().insert(who);
                held.push((name, who, m));
            } else {
                let (name, who, m) = held.swap_remove(rng.below(held.len()));
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
