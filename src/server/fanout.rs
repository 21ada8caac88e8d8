//! Hub work: subscriptions (with recovery), publishes and relays that
//! connections ask for, the fan-out that queues one shared frame on every
//! subscriber, and the history kept of what went out.
//!
//! Owns: carrying out a connection's [`Action`]s, giving each message its
//! position and keeping it in history, the per-turn list of connections
//! given frames (flushed once each before the next poll), the delivery
//! stamp that keeps a relay through several channels from reaching a
//! subscriber twice, the slow-consumer decision at `max_backlog_bytes`,
//! queueing a recovery (its answer, then its replay) and the history's one
//! timer-wheel entry.
//! Must never: frame a broadcast more than once per format and window size
//! (the [`FrameCache`] does it once and the frame is shared by `Rc`),
//! allocate per delivery or per replayed message, write to a socket itself
//! (that is the flush at the end of the turn: one vectored write per
//! subscriber), or reorder a subscriber's messages.
//!
//! # No gap and no duplicate at the seam of a recovery
//!
//! The loop is single-threaded and a connection's actions are carried out
//! in the turn it asked for them: subscribing to a channel and queueing its
//! recovery happen in one step, with no publish in between. Every message
//! up to the channel's current offset is in the replay; every later one
//! reaches the connection live, after it. A cluster node whose own history
//! cannot serve a recovery asks Redis and holds back that connection's live
//! messages of the channel until it answers ([`FanOut::deliver`] skips them;
//! the answer carries them): the join is the server's `bus` module's.

use std::collections::VecDeque;
use std::io::Cursor;
use std::rc::Rc;

use log::debug;
use slab::Slab;

use super::Server;
use super::bus::{Holds, Waiter};
use super::compress::{Broadcast, Codec, Delivery, FrameCache};
use super::conn::{Action, Notice};
use super::lifecycle::millis;
use super::outqueue::Flush;
use super::slot::{HISTORY_TIMER, Slot};
use crate::bus::Ask;
use crate::config::{Config, OnBacklog};
use crate::history::Limits;
use crate::hub::meta::{self, MAX_ANSWER_LEN};
use crate::hub::{ChannelId, NotRecovered, Position};
use crate::metrics::Metrics;
use crate::route::Routes;

/// Subscribers whose frames are written per loop turn. A write costs a few
/// microseconds (a system call each, the kernel's TCP work included), so a
/// fan-out to many subscribers is written in slices of a millisecond or two,
/// and between slices the loop polls and serves every other client (pings,
/// handshakes, echoes, other channels, publishes). Each subscriber's frames
/// stay in order: they are all in its own queue, written front to back.
pub(super) const FLUSHES_PER_TURN: usize = 256;

/// What happens to a frame for a subscriber whose queue holds `queued` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backlog {
    /// Room left: queue it.
    Queue,
    /// Over the limit with `on_backlog = "drop"`: this subscriber misses it.
    Skip,
    /// Over the limit with `on_backlog = "close"`: the subscriber is evicted
    /// (its frame in flight finished, the rest dropped, close 1013).
    Evict,
}

/// The slow-consumer rule: a frame goes on a subscriber's queue unless it
/// would take the queue past `limit` bytes; then `policy` decides.
pub(super) fn backlog(queued: usize, frame_len: usize, limit: usize, policy: OnBacklog) -> Backlog {
    if queued.saturating_add(frame_len) <= limit {
        Backlog::Queue
    } else {
        match policy {
            OnBacklog::Close => Backlog::Evict,
            OnBacklog::Drop => Backlog::Skip,
        }
    }
}

/// What a fan-out reads and updates besides the slots.
pub(super) struct Env<'a> {
    /// Milliseconds on the loop's clock.
    pub now: u64,
    pub config: &'a Config,
    pub routes: &'a Routes,
    pub codec: &'a mut Codec,
    pub metrics: &'a mut Metrics,
}

/// The [`Env`] of a loop that keeps `config`, `routes`, `codec` and
/// `metrics` as fields of `$owner` (the server, or a test's stand-in):
/// a macro rather than a method so that the borrows stay per field.
macro_rules! env_of {
    ($owner:expr, $now:expr) => {
        $crate::server::fanout::Env {
            now: $now,
            config: &$owner.config,
            routes: &$owner.routes,
            codec: &mut $owner.codec,
            metrics: &mut $owner.metrics,
        }
    };
}
pub(super) use env_of;

/// One message on its way to one channel's subscribers.
#[derive(Clone, Copy)]
pub(super) struct Outgoing<'a> {
    pub channel: &'a str,
    pub message: &'a Broadcast,
    /// Its position in that channel, when it has one.
    pub position: Option<Position>,
    /// Its frames, made by the first recipient that needs each.
    pub frames: &'a FrameCache,
    /// On a cluster node with recoveries in progress: those, and this
    /// channel's id (a connection held back for it misses this message
    /// here and gets it in its recovery's answer).
    pub held: Option<(&'a Holds, ChannelId)>,
}

impl<'a> Outgoing<'a> {
    fn of(channel: &'a str, delivery: &'a Delivery) -> Outgoing<'a> {
        Outgoing {
            channel,
            message: &delivery.message,
            position: delivery.position,
            frames: &delivery.frames,
            held: None,
        }
    }
}

/// What a recovery found for one channel of one connection: the contract
/// between whoever looks up history (the hub on a single node, Redis on a
/// cluster node) and [`FanOut::recover`].
pub(super) enum Recovery<I> {
    /// Every message after the client's position `from`, oldest first, each
    /// with its position in its [`Delivery`]; possibly none.
    Recovered { from: Position, messages: I },
    /// The client cannot get what it missed; `current` is where the channel
    /// stands now, so it can start again from there.
    NotRecovered {
        reason: NotRecovered,
        current: Position,
    },
}

impl Recovery<std::iter::Empty<&Rc<Delivery>>> {
    /// A [`Recovery::NotRecovered`], typed for [`FanOut::recover`].
    pub(super) fn refused(reason: NotRecovered, current: Position) -> Self {
        Recovery::NotRecovered { reason, current }
    }
}

/// The fan-out's own state, kept between turns so its vectors keep their
/// capacity.
#[derive(Debug, Default)]
pub(super) struct FanOut {
    /// Slots given frames (or an eviction's close frame), oldest first,
    /// to flush before polling ([`FLUSHES_PER_TURN`] of them per turn).
    pub dirty: VecDeque<usize>,
    /// Tags each fan-out so a relay through several channels reaches a
    /// subscriber of more than one of them once.
    stamp: u32,
    /// The history's one timer-wheel entry, armed while any message is
    /// kept (at the oldest one's expiry, or earlier: then it re-arms).
    pub history_timer: Option<crate::timer::TimerKey>,
}

impl FanOut {
    /// A fresh stamp for one publish or relay.
    pub(super) fn next_stamp(&mut self) -> u32 {
        // Zero is what new slots start with, so it is never used.
        self.stamp = match self.stamp.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        self.stamp
    }

    /// The next slot to flush this turn, when `flushed` were already: the
    /// oldest listed, while the turn's slice has room.
    pub(super) fn next_dirty(&mut self, flushed: usize) -> Option<usize> {
        if flushed < FLUSHES_PER_TURN {
            self.dirty.pop_front()
        } else {
            None
        }
    }

    fn mark_dirty<T>(&mut self, slot: &mut Slot<T>, key: usize) {
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push_back(key);
        }
    }

    /// Queues one shared frame on every open subscriber among `subscribers`
    /// (slab keys) not yet stamped with `stamp` nor held back for this
    /// channel by a recovery in progress (`out.held`), and lists them for a
    /// flush at the end of the turn. Returns the recipients.
    ///
    /// Each subscriber gets the message in its format (plain, or with
    /// metadata) and compressed as it negotiated; each such frame is made
    /// once, by the first recipient that needs it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver<T>(
        &mut self,
        slots: &mut Slab<Slot<T>>,
        subscribers: impl Iterator<Item = u32>,
        out: Outgoing<'_>,
        exclude: Option<usize>,
        stamp: u32,
        env: Env<'_>,
    ) -> usize {
        let limit = env.config.max_backlog_bytes;
        let policy = env.config.on_backlog;
        let mut recipients = 0usize;
        let mut bytes = 0u64;
        for who in subscribers {
            let key = who as usize;
            if exclude == Some(key) {
                continue;
            }
            let Some(slot) = slots.get_mut(key) else {
                continue;
            };
            // Before the stamp: a relay's copy for another channel is not
            // held back.
            if slot.held && out.held.is_some_and(|(h, id)| h.holds(key, id)) {
                continue;
            }
            // A metadata client gets a relay once per channel: each copy
            // names its channel and carries that channel's position, which
            // the client must see to keep its place in every channel.
            if !slot.conn.is_open() || (slot.delivery_stamp == stamp && !slot.conn.meta()) {
                continue;
            }
            slot.delivery_stamp = stamp;
            let conn = &mut slot.conn;
            let compression = env.routes.get(conn.route()).and_then(|r| r.deflate);
            let format = conn.format(out.channel, out.position, env.routes);
            let frame =
                out.frames
                    .frame_for(out.message, format, conn.deflate(), compression, env.codec);
            match backlog(conn.backlog(), frame.len(), limit, policy) {
                Backlog::Queue => {}
                Backlog::Skip => {
                    env.metrics.slow_consumer_drops += 1;
                    continue;
                }
                Backlog::Evict => {
                    env.metrics.slow_consumer_closes += 1;
                    debug!("connection {key}: slow consumer over max_backlog_bytes, closing");
                    conn.evict_slow(env.now);
                }
            }
            if slot.conn.is_open() {
                bytes = bytes.saturating_add(frame.len() as u64);
                slot.conn.deliver(frame);
                recipients += 1;
            }
            self.mark_dirty(slot, key);
        }
        let count = recipients as u64;
        env.metrics.deliveries += count;
        env.metrics.messages_out += count;
        env.metrics.bytes_out += bytes;
        recipients
    }

    /// Queues a recovery on connection `key` for `channel`, which it has
    /// just subscribed to: a text frame saying whether it is recovered,
    /// then, if so, every message of the replay in order (with metadata,
    /// shared frames: nothing is copied), all before any live message of
    /// that channel. Returns how many messages were replayed.
    ///
    /// Contract: call it in the same loop turn as the subscription, before
    /// anything else is delivered to that channel (a single node does,
    /// synchronously), or — a cluster node answering later, after reading
    /// Redis — with messages up to the last one this connection would
    /// otherwise have missed, having held back the channel's live messages
    /// for it meanwhile. `messages` must be exactly the messages after
    /// `from`: never a partial replay (say `NotRecovered` instead). The
    /// replay is exempt from `max_backlog_bytes` until written; what comes
    /// after it is counted as usual.
    pub(super) fn recover<'m, T, I>(
        &mut self,
        slots: &mut Slab<Slot<T>>,
        key: usize,
        channel: &str,
        outcome: Recovery<I>,
        env: Env<'_>,
    ) -> usize
    where
        I: Iterator<Item = &'m Rc<Delivery>> + Clone,
    {
        let Some(slot) = slots.get_mut(key) else {
            return 0;
        };
        if !slot.conn.is_open() {
            return 0;
        }
        let queued_before = slot.conn.queued();
        let mut answer = [0u8; MAX_ANSWER_LEN];
        let mut cursor = Cursor::new(&mut answer[..]);
        let replayed = match outcome {
            Recovery::NotRecovered { reason, current } => {
                meta::write_not_recovered(channel, reason, current, &mut cursor);
                env.metrics.count_not_recovered(reason);
                let notice = Notice::NotRecovered { reason, current };
                slot.conn.send_notice(notice, written(&cursor));
                0
            }
            Recovery::Recovered { from, messages } => {
                let count = messages.clone().count();
                meta::write_recovered(channel, from, count, &mut cursor);
                slot.conn.send_notice(Notice::Recovered, written(&cursor));
                let compression = env.routes.get(slot.conn.route()).and_then(|r| r.deflate);
                let mut bytes = 0u64;
                for delivery in messages {
                    let out = Outgoing::of(channel, delivery);
                    let format = slot.conn.format(channel, out.position, env.routes);
                    let frame = out.frames.frame_for(
                        out.message,
                        format,
                        slot.conn.deflate(),
                        compression,
                        env.codec,
                    );
                    bytes = bytes.saturating_add(frame.len() as u64);
                    slot.conn.deliver(frame);
                }
                env.metrics.history_recovered += 1;
                env.metrics.history_replayed += count as u64;
                env.metrics.messages_out += count as u64;
                env.metrics.bytes_out += bytes;
                count
            }
        };
        // Only this recovery's bytes: live messages of other channels
        // queued before it still count.
        let replay_bytes = slot.conn.queued().saturating_sub(queued_before);
        slot.conn.exempt(replay_bytes);
        self.mark_dirty(slot, key);
        replayed
    }

    /// Tells a metadata client where `channel` stands as it subscribes
    /// without recovering, so it holds a position to recover from even if
    /// it loses the connection before the next message.
    pub(super) fn tell_position<T>(
        &mut self,
        slots: &mut Slab<Slot<T>>,
        key: usize,
        channel: &str,
        current: Position,
    ) {
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let mut answer = [0u8; MAX_ANSWER_LEN];
        let mut cursor = Cursor::new(&mut answer[..]);
        meta::write_subscribed(channel, current, &mut cursor);
        slot.conn
            .send_notice(Notice::Subscribed(current), written(&cursor));
        self.mark_dirty(slot, key);
    }
}

/// What was written into a fixed buffer.
fn written<'a>(cursor: &'a Cursor<&mut [u8]>) -> &'a [u8] {
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    cursor.get_ref().get(..len).unwrap_or_default()
}

impl Server {
    /// Carries out what connection `key` asked for while processing input.
    pub(super) fn run_actions(&mut self, key: usize, now: u64) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Subscribe(wanted) => {
                    let Ok(who) = u32::try_from(key) else {
                        continue;
                    };
                    for w in &wanted {
                        if self.hub.lookup(&w.name).is_none()
                            && let Some(cluster) = self.cluster.as_deref_mut()
                        {
                            cluster.bus.channel_changed(&w.name);
                        }
                        let membership = self.hub.subscribe(&w.name, who);
                        if let Some(slot) = self.conns.get_mut(key) {
                            slot.conn.memberships.push(membership);
                        }
                        self.after_subscribe(key, membership.channel(), w, now);
                    }
                    self.update_hub_gauges();
                }
                Action::Publish {
                    channel,
                    message,
                    keep_alive,
                } => {
                    self.metrics.publishes += 1;
                    if self.cluster.is_some() {
                        self.publish_through_bus(key, channel, &message, keep_alive, now);
                        continue;
                    }
                    let stamp = self.fanout.next_stamp();
                    let (recipients, position) = match self.hub.lookup(&channel) {
                        Some(id) => self.publish_local(id, message, None, stamp, now),
                        None => (0, None),
                    };
                    if let Some(slot) = self.conns.get_mut(key) {
                        slot.conn
                            .answer_publish(&channel, recipients, position, keep_alive);
                    }
                }
                Action::Relay { message, to_sender } => {
                    self.metrics.publishes += 1;
                    if self.cluster.is_some() {
                        self.relay_through_bus(key, &message, to_sender, now);
                        continue;
                    }
                    let stamp = self.fanout.next_stamp();
                    let exclude = (!to_sender).then_some(key);
                    // Indexed rather than collected: no allocation per relayed
                    // message (a connection holds at most a few memberships,
                    // and fan-out never removes a connection).
                    let count = self.conns.get(key).map_or(0, |s| s.conn.memberships.len());
                    for i in 0..count {
                        let Some(conn) = self.conns.get(key).map(|s| &s.conn) else {
                            break;
                        };
                        // A relay claim may leave out some of its channels.
                        if !conn.may_relay(i) {
                            continue;
                        }
                        let Some(id) = conn.memberships.iter().nth(i).map(|m| m.channel()) else {
                            break;
                        };
                        self.publish_local(id, message.clone(), exclude, stamp, now);
                    }
                }
            }
        }
        // Keep the vector's capacity for the next connection.
        self.actions = actions;
    }

    /// A metadata connection just subscribed to `channel`: it is told where
    /// the channel stands, or gets its recovery.
    fn after_subscribe(
        &mut self,
        key: usize,
        channel: ChannelId,
        w: &crate::hub::names::Wanted,
        now: u64,
    ) {
        let Some(slot) = self.conns.get(key) else {
            return;
        };
        if !slot.conn.meta() {
            return;
        }
        let route = self.routes.get(slot.conn.route());
        let history = route.is_some_and(|r| r.history().is_some());
        let max_replay = route.map_or(0, |r| r.max_replay);
        let Some(current) = self.hub.position(channel) else {
            return;
        };
        let Some(from) = w.from else {
            // An event stream is told its position only where it can resume.
            if slot.conn.sse() && !history {
                return;
            }
            // A cluster node with nothing of the channel yet knows only its
            // own epoch: Redis's position is asked for.
            if !(history
                && current.offset == 0
                && self.hold_position(key, channel, &w.name, current, now))
            {
                self.fanout
                    .tell_position(&mut self.conns, key, &w.name, current);
            }
            return;
        };
        // A cluster node's log holds only what it delivered: Redis may have
        // the rest. The answer comes later; meanwhile this connection's live
        // messages of the channel are held back.
        let ttl = self.history_ttl();
        if history
            && self.cluster.is_some()
            && self
                .hub
                .recover(channel, from, max_replay, now, ttl)
                .is_err()
        {
            let ask = Ask {
                position: from,
                max_replay,
            };
            self.hold_recovery(key, channel, &w.name, ask, now);
            return;
        }
        let env = env_of!(self, now);
        if !history {
            let outcome = Recovery::refused(NotRecovered::NoHistory, current);
            self.fanout
                .recover(&mut self.conns, key, &w.name, outcome, env);
            return;
        }
        match self.hub.recover(channel, from, max_replay, now, ttl) {
            Ok((_, messages)) => {
                let outcome = Recovery::Recovered { from, messages };
                self.fanout
                    .recover(&mut self.conns, key, &w.name, outcome, env);
            }
            Err((reason, current)) => {
                let outcome = Recovery::refused(reason, current);
                self.fanout
                    .recover(&mut self.conns, key, &w.name, outcome, env);
            }
        }
    }

    /// A single node's publish (or relay) to a live channel: the message
    /// gets the channel's next position, goes to every subscriber, and is
    /// kept in history when a route keeps any. Returns the recipients and
    /// the position.
    fn publish_local(
        &mut self,
        channel: ChannelId,
        message: Broadcast,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> (usize, Option<Position>) {
        let position = self.hub.next_position(channel);
        let delivery = Rc::new(Delivery::new(message, position));
        let recipients = self.fan_out_at(channel, &delivery, exclude, stamp, now);
        if let Some(position) = position {
            self.remember(channel, position, delivery, now);
        }
        (recipients, position)
    }

    /// Keeps a delivered message in the channel's history (when a route
    /// keeps any; history switched off by a reload is dropped here).
    /// `position` must be the channel's newest.
    pub(super) fn remember(
        &mut self,
        channel: ChannelId,
        position: Position,
        delivery: Rc<Delivery>,
        now: u64,
    ) {
        let keeps = self.config.history().is_some();
        let limits = self.history_limits();
        let cluster = &mut self.cluster;
        let freed = |name: &str| {
            if let Some(cluster) = cluster.as_deref_mut() {
                cluster.bus.channel_changed(name);
            }
        };
        if !keeps {
            self.hub.clear_history(freed);
            return;
        }
        let size = delivery.message.frame.len();
        self.hub
            .remember(channel, position, delivery, size, now, limits, freed);
        if self.fanout.history_timer.is_none() {
            self.fanout.history_timer = Some(
                self.timers
                    .insert(now.saturating_add(limits.ttl), HISTORY_TIMER),
            );
        }
        self.update_hub_gauges();
    }

    /// How long history keeps a message, in milliseconds on the loop's
    /// clock (0 while no route keeps history: nothing is kept then).
    pub(super) fn history_ttl(&self) -> u64 {
        self.history_limits().ttl
    }

    /// History limits as the config sets them (all zero while no route keeps
    /// history).
    pub(super) fn history_limits(&self) -> Limits {
        match self.config.history() {
            Some(policy) => Limits {
                per_channel: policy.size,
                max_bytes: self.config.history_max_bytes,
                ttl: millis(policy.ttl),
            },
            None => Limits {
                per_channel: 0,
                max_bytes: 0,
                ttl: 0,
            },
        }
    }

    /// The history's timer fired: drop what expired, free the channels kept
    /// only by it, and re-arm at the next expiry.
    pub(super) fn on_history_timer(&mut self, now: u64) {
        self.fanout.history_timer = None;
        self.sweep_history(false, now);
    }

    /// A reload may have changed the history settings: what is kept now
    /// follows them at once (a lower `history_size` or `history_max_bytes`
    /// trims, a shorter `history_ttl` expires, history switched off drops
    /// everything), and the timer is re-armed for the new TTL.
    pub(super) fn reapply_history(&mut self, now: u64) {
        if let Some(timer) = self.fanout.history_timer.take() {
            self.timers.remove(timer);
        }
        self.sweep_history(true, now);
    }

    /// Expires history (with every limit applied again when `reload`),
    /// frees the channels kept only by what went, and arms the timer at the
    /// next expiry. The timer must not be armed.
    fn sweep_history(&mut self, reload: bool, now: u64) {
        let limits = self.history_limits();
        let cluster = &mut self.cluster;
        let freed = |name: &str| {
            if let Some(cluster) = cluster.as_deref_mut() {
                cluster.bus.channel_changed(name);
            }
        };
        let next = match self.config.history() {
            None => {
                self.hub.clear_history(freed);
                None
            }
            Some(_) if reload => self.hub.apply_limits(limits, now, freed),
            Some(_) => self.hub.expire(now, limits.ttl, freed),
        };
        if let Some(at) = next {
            self.fanout.history_timer = Some(self.timers.insert(at, HISTORY_TIMER));
        }
        self.update_hub_gauges();
    }

    /// Cluster mode: the publish goes to Redis only; the connection is
    /// answered when Redis has accepted it (or 503 when it cannot).
    fn publish_through_bus(
        &mut self,
        key: usize,
        channel: String,
        message: &Broadcast,
        keep_alive: bool,
        now: u64,
    ) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let token = slot.token(key);
        // Its place among the connection's responses, kept whatever the
        // outcome.
        let seq = slot.conn.await_answer();
        let waiter = Waiter {
            token,
            seq,
            channel,
            keep_alive,
        };
        // The channel name is needed both in the waiter and in the command.
        let name = waiter.channel.clone();
        let result = self.bus_publish(&name, message, None, Some(waiter), now);
        if let Err(reason) = result
            && let Some(slot) = self.conns.get_mut(key)
        {
            slot.conn
                .answer_bus_publish(seq, &name, keep_alive, Err(reason));
        }
    }

    /// Cluster mode: a chat message goes to Redis once per channel of the
    /// sender; every node delivers it from there (the sender's node leaves
    /// the sender out unless the route echoes). Dropped and counted while
    /// Redis is unreachable.
    fn relay_through_bus(&mut self, key: usize, message: &Broadcast, to_sender: bool, now: u64) {
        let Some(token) = self.conns.get(key).map(|s| s.token(key)) else {
            return;
        };
        let exclude = (!to_sender).then_some(token);
        let count = self.conns.get(key).map_or(0, |s| s.conn.memberships.len());
        for i in 0..count {
            let Some(conn) = self.conns.get(key).map(|s| &s.conn) else {
                break;
            };
            // A relay claim may leave out some of its channels.
            if !conn.may_relay(i) {
                continue;
            }
            let Some(name) = conn
                .memberships
                .iter()
                .nth(i)
                .and_then(|m| self.hub.name(m.channel()))
                .map(str::to_owned)
            else {
                break;
            };
            // A refusal is counted by the bus; a relay has no one to answer.
            let _ = self.bus_publish(&name, message, exclude, None, now);
        }
    }

    /// Delivers a message that carries no position (a cluster delivery
    /// when no route keeps history, so Redis assigns none): metadata
    /// clients get it without `epoch` and `offset`. Nothing is kept in
    /// history.
    pub(super) fn fan_out(
        &mut self,
        channel: ChannelId,
        message: &Broadcast,
        cache: &mut FrameCache,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        self.deliver_to(channel, message, None, cache, exclude, stamp, now)
    }

    /// Delivers `delivery` to the subscribers of `channel`.
    ///
    /// Contract: `delivery.position` is the message's position in that
    /// channel, already made the channel's newest — by
    /// [`crate::hub::Hub::next_position`] on a single node, or, on a
    /// cluster node, the position Redis assigned, accepted with
    /// [`crate::hub::Hub::accept_position`] (which refuses a repeat: then
    /// deliver nothing). Keeping it for recovery is [`Server::remember`].
    pub(super) fn fan_out_at(
        &mut self,
        channel: ChannelId,
        delivery: &Delivery,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        let Delivery {
            message,
            position,
            frames,
        } = delivery;
        self.deliver_to(channel, message, *position, frames, exclude, stamp, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_to(
        &mut self,
        channel: ChannelId,
        message: &Broadcast,
        position: Option<Position>,
        frames: &FrameCache,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        let env = env_of!(self, now);
        let held = self
            .cluster
            .as_deref()
            .map(|c| &c.holds)
            .filter(|h| !h.is_empty())
            .map(|h| (h, channel));
        let out = Outgoing {
            channel: self.hub.name(channel).unwrap_or_default(),
            message,
            position,
            frames,
            held,
        };
        self.fanout.deliver(
            &mut self.conns,
            self.hub.subscribers(channel),
            out,
            exclude,
            stamp,
            env,
        )
    }

    /// Writes out what fan-outs queued, one vectored write per connection
    /// however many frames it got, oldest first and at most
    /// [`FLUSHES_PER_TURN`] connections per turn: the rest wait for the
    /// next turn, after the loop has polled and served everyone else.
    /// Driving can resume held-back input that relays further; those
    /// recipients join the end of the list.
    pub(super) fn flush_dirty(&mut self, now: u64) {
        for flushed in 0.. {
            let Some(key) = self.fanout.next_dirty(flushed) else {
                return;
            };
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            slot.dirty = false;
            // The common case: an open subscriber with nothing else to do
            // takes all it was given. Nothing about it changed then (no
            // interest, no deadline), so there is nothing more to settle.
            if slot.conn.is_open()
                && !slot.write_interest
                && !slot.io.wants_write()
                && !slot.conn.has_pending_input()
                && matches!(slot.conn.flush(&mut slot.io), Ok(Flush::Done))
            {
                continue;
            }
            // Otherwise (a full socket, an error, a closing connection):
            // the whole turn of the connection settles it.
            self.drive(key, false, false, now);
        }
    }

    pub(super) fn update_hub_gauges(&mut self) {
        self.metrics.channels = self.hub.channel_count() as u64;
        self.metrics.subscriptions = self.hub.subscription_count() as u64;
        let (messages, bytes) = self.hub.history_totals();
        self.metrics.history_messages = messages as u64;
        self.metrics.history_bytes = bytes as u64;
    }
}

#[cfg(test)]
mod tests {
    //! The slow-consumer rule on the virtual clock: subscribers are slots
    //! over in-memory wires, one of which takes nothing.

    use super::*;
    use crate::config::{RouteConfig, RouteKind};
    use crate::hub::Hub;
    use crate::protocol::frame::OpCode;
    use crate::server::harness::{self, Wire, open_slot, server_frames};

    /// Payload of each test message; its frame has a 2-byte header.
    const PAYLOAD: usize = 100;
    const FRAME: usize = PAYLOAD + 2;

    struct Room {
        env: harness::Env,
        hub: Hub<u32, Rc<Delivery>>,
        slots: Slab<Slot<Wire>>,
        fanout: FanOut,
    }

    impl Room {
        /// A broadcast route at `/live` whose subscribers may hold three
        /// frames in their queues.
        fn new(policy: OnBacklog) -> Room {
            let mut config = Config::default();
            config
                .routes
                .push(RouteConfig::new("/live", RouteKind::Broadcast));
            config.max_backlog_bytes = 3 * FRAME;
            config.on_backlog = policy;
            Room {
                env: harness::Env::new(config),
                hub: Hub::new(),
                slots: Slab::new(),
                fanout: FanOut::default(),
            }
        }

        /// A subscriber of `feed` whose wire takes `room` bytes.
        fn subscribe(&mut self, room: usize) -> usize {
            self.subscribe_at("/live/feed", room)
        }

        fn subscribe_at(&mut self, path: &str, room: usize) -> usize {
            let mut slot = open_slot(&mut self.env, path);
            slot.io.room = room;
            let key = self.slots.insert(slot);
            for action in self.env.actions.drain(..) {
                let Action::Subscribe(channels) = action else {
                    panic!("unexpected {action:?}");
                };
                for name in &channels {
                    let membership = self.hub.subscribe(&name.name, key as u32);
                    self.slots[key].conn.memberships.push(membership);
                }
            }
            key
        }

        /// Publishes message `seq` to `feed`; returns its recipients.
        fn publish(&mut self, seq: u8) -> usize {
            let stamp = self.fanout.next_stamp();
            let channel = self.hub.lookup("feed").expect("channel");
            let env = env_of!(self.env, self.env.now);
            let message = Broadcast::new(OpCode::Binary, &[seq; PAYLOAD]);
            let out = Outgoing {
                channel: "feed",
                message: &message,
                position: None,
                frames: &FrameCache::default(),
                held: None,
            };
            self.fanout.deliver(
                &mut self.slots,
                self.hub.subscribers(channel),
                out,
                None,
                stamp,
                env,
            )
        }

        /// The end of the turn: every slot given frames is flushed once.
        fn flush(&mut self) {
            for key in self.fanout.dirty.drain(..) {
                let slot = &mut self.slots[key];
                slot.dirty = false;
                slot.conn.flush(&mut slot.io).expect("in-memory wire");
            }
        }

        /// The message numbers a subscriber's wire holds (taken).
        fn received(&mut self, key: usize) -> Vec<u8> {
            let bytes = std::mem::take(&mut self.slots[key].io.bytes);
            let (frames, partial) = server_frames(&bytes);
            assert_eq!(partial, 0);
            frames
                .iter()
                .map(|(op, payload)| {
                    assert_eq!(*op, OpCode::Binary);
                    payload[0]
                })
                .collect()
        }
    }

    /// A replay twice as large as `max_backlog_bytes`, to a client that has
    /// read nothing yet, is queued whole; a live message right after it is
    /// counted alone and queued too; the client then reads the answer, the
    /// replay in order and the live message, each with its position.
    #[test]
    fn a_replay_is_not_taken_for_a_slow_consumer_and_live_follows_it() {
        let mut room = Room::new(OnBacklog::Close);
        let key = room.subscribe_at("/live/feed?meta=1", 0);
        let channel = room.hub.lookup("feed").expect("channel");
        let from = room.hub.position(channel).expect("position");
        let missed: Vec<Rc<Delivery>> = (1..=6u8)
            .map(|seq| {
                let position = room.hub.next_position(channel);
                let message = Broadcast::new(OpCode::Binary, &[seq; PAYLOAD]);
                Rc::new(Delivery::new(message, position))
            })
            .collect();
        let outcome = Recovery::Recovered {
            from,
            messages: missed.iter(),
        };
        let env = env_of!(room.env, room.env.now);
        let replayed = room
            .fanout
            .recover(&mut room.slots, key, "feed", outcome, env);
        assert_eq!(replayed, 6);
        assert!(room.slots[key].conn.queued() > room.env.config.max_backlog_bytes);
        assert!(room.slots[key].conn.is_open());
        let live = room.hub.next_position(channel);
        let message = Broadcast::new(OpCode::Binary, &[7; PAYLOAD]);
        let delivery = Delivery::new(message, live);
        let stamp = room.fanout.next_stamp();
        let env = env_of!(room.env, room.env.now);
        let out = Outgoing::of("feed", &delivery);
        let subscribers = room.hub.subscribers(channel);
        assert_eq!(
            room.fanout
                .deliver(&mut room.slots, subscribers, out, None, stamp, env),
            1
        );
        assert_eq!(room.env.metrics.slow_consumer_closes, 0);

        room.slots[key].io.room = usize::MAX;
        room.flush();
        let bytes = std::mem::take(&mut room.slots[key].io.bytes);
        let (frames, partial) = server_frames(&bytes);
        assert_eq!(partial, 0);
        assert_eq!(frames.len(), 8);
        let answer = String::from_utf8(frames[0].1.clone()).expect("text");
        let epoch = from.epoch;
        assert_eq!(
            answer,
            format!(
                r#"{{"channel":"feed","recovered":true,"epoch":"{epoch}","offset":0,"replayed":6}}"#
            )
        );
        for (i, (opcode, payload)) in frames[1..].iter().enumerate() {
            let offset = i + 1;
            assert_eq!(*opcode, OpCode::Binary);
            let header = format!(r#"{{"channel":"feed","epoch":"{epoch}","offset":{offset}}}"#);
            let len = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
            assert_eq!(&payload[2..2 + len], header.as_bytes());
            assert_eq!(payload[2 + len..], [offset as u8; PAYLOAD]);
        }
    }

    #[test]
    fn a_client_that_cannot_recover_is_told_why_and_where_the_channel_stands() {
        let mut room = Room::new(OnBacklog::Close);
        let key = room.subscribe_at("/live/feed?meta=1", usize::MAX);
        let channel = room.hub.lookup("feed").expect("channel");
        let current = room.hub.position(channel).expect("position");
        let outcome = Recovery::refused(NotRecovered::Expired, current);
        let env = env_of!(room.env, room.env.now);
        assert_eq!(
            room.fanout
                .recover(&mut room.slots, key, "feed", outcome, env),
            0
        );
        room.flush();
        let bytes = std::mem::take(&mut room.slots[key].io.bytes);
        let (frames, _) = server_frames(&bytes);
        let epoch = current.epoch;
        assert_eq!(
            frames,
            [(
                OpCode::Text,
                format!(r#"{{"channel":"feed","recovered":false,"reason":"expired","epoch":"{epoch}","offset":0}}"#)
                    .into_bytes()
            )]
        );
    }

    #[test]
    fn the_rule_queues_up_to_the_limit_then_applies_the_policy() {
        use Backlog::*;
        assert_eq!(backlog(0, 10, 10, OnBacklog::Close), Queue);
        assert_eq!(backlog(5, 5, 10, OnBacklog::Drop), Queue);
        assert_eq!(backlog(5, 6, 10, OnBacklog::Drop), Skip);
        assert_eq!(backlog(5, 6, 10, OnBacklog::Close), Evict);
        assert_eq!(backlog(usize::MAX, 1, 10, OnBacklog::Close), Evict);
    }

    #[test]
    fn with_drop_a_stuck_subscriber_misses_messages_until_it_drains() {
        let mut room = Room::new(OnBacklog::Drop);
        let stuck = room.subscribe(0);
        let fast = room.subscribe(usize::MAX);
        let mut recipients = Vec::new();
        for seq in 0..5 {
            recipients.push(room.publish(seq));
            room.flush();
        }
        assert_eq!(recipients, [2, 2, 2, 1, 1]);
        assert_eq!(room.env.metrics.slow_consumer_drops, 2);
        assert_eq!(room.env.metrics.slow_consumer_closes, 0);
        assert_eq!(room.received(fast), [0, 1, 2, 3, 4]);
        assert_eq!(room.slots[stuck].conn.queued(), 3 * FRAME);
        // It reads again: what was queued arrives, in order, then new ones.
        room.slots[stuck].io.room = usize::MAX;
        room.fanout.dirty.push_back(stuck);
        room.flush();
        assert_eq!(room.publish(5), 2);
        room.flush();
        assert_eq!(room.received(stuck), [0, 1, 2, 5]);
        assert!(room.slots[stuck].conn.is_open());
    }

    #[test]
    fn a_big_fan_out_is_flushed_in_slices_oldest_first() {
        let mut fanout = FanOut::default();
        let total = FLUSHES_PER_TURN * 2 + 7;
        fanout.dirty.extend(0..total);
        let mut turns = Vec::new();
        while !fanout.dirty.is_empty() {
            let mut slice = Vec::new();
            let mut flushed = 0;
            while let Some(key) = fanout.next_dirty(flushed) {
                slice.push(key);
                flushed += 1;
            }
            turns.push(slice);
        }
        let sizes: Vec<usize> = turns.iter().map(Vec::len).collect();
        assert_eq!(sizes, [FLUSHES_PER_TURN, FLUSHES_PER_TURN, 7]);
        let order: Vec<usize> = turns.concat();
        assert_eq!(order, (0..total).collect::<Vec<_>>());
    }

    /// RFC 6455 §7.1.7: the frame in flight is finished, the frames queued
    /// behind it are dropped, a close 1013 follows, then `close_timeout`.
    #[test]
    fn with_close_a_stuck_subscriber_gets_whole_frames_then_close_1013() {
        let mut room = Room::new(OnBacklog::Close);
        room.env.config.close_timeout = std::time::Duration::from_millis(700);
        // Takes message 0 and the first 10 bytes of message 1, then nothing.
        let stuck = room.subscribe(FRAME + 10);
        let fast = room.subscribe(usize::MAX);
        let mut recipients = Vec::new();
        for seq in 0..6 {
            room.env.now = u64::from(seq) * 10;
            recipients.push(room.publish(seq));
            room.flush();
        }
        // 92 bytes of message 1 and messages 2 and 3 fill the 306-byte
        // backlog; message 4 evicts.
        assert_eq!(recipients, [2, 2, 2, 2, 1, 1]);
        assert_eq!(room.env.metrics.slow_consumer_closes, 1);
        assert_eq!(room.env.metrics.slow_consumer_drops, 0);
        assert_eq!(room.received(fast), [0, 1, 2, 3, 4, 5]);
        let slot = &mut room.slots[stuck];
        assert!(!slot.conn.is_open());
        // Messages 2 and 3 were dropped; the close frame is queued.
        assert_eq!(
            slot.conn.queued(),
            FRAME - 10 + 2 + 2 + "slow consumer".len()
        );

        // It reads again: message 1 completes, then the close frame.
        slot.io.room = usize::MAX;
        slot.conn.flush(&mut slot.io).unwrap();
        assert!(slot.conn.poll_shutdown_write(), "FIN after the close frame");
        let bytes = std::mem::take(&mut slot.io.bytes);
        let (frames, partial) = server_frames(&bytes);
        assert_eq!(partial, 0, "no frame is cut");
        let seqs: Vec<u8> = frames[..2].iter().map(|(_, p)| p[0]).collect();
        assert_eq!(seqs, [0, 1]);
        assert_eq!(frames.len(), 3);
        let (opcode, payload) = &frames[2];
        assert_eq!(*opcode, OpCode::Close);
        assert_eq!(harness::close_code(payload), Some(1013));
        assert_eq!(&payload[2..], b"slow consumer");

        // No close reply: dropped at eviction (t=40) + close_timeout.
        let config = &room.env.config;
        assert_eq!(slot.conn.next_deadline(config), Some(40 + 700));
        let metrics = &mut room.env.metrics;
        assert!(slot.conn.on_timer(config, metrics, 739));
        assert!(!slot.conn.on_timer(config, metrics, 740));
    }

    #[test]
    fn an_evicted_subscriber_whose_frames_never_started_gets_only_the_close() {
        let mut room = Room::new(OnBacklog::Close);
        let stuck = room.subscribe(0);
        for seq in 0..4 {
            room.publish(seq);
            room.flush();
        }
        let slot = &mut room.slots[stuck];
        slot.io.room = usize::MAX;
        slot.conn.flush(&mut slot.io).unwrap();
        let (frames, partial) = server_frames(&slot.io.bytes);
        assert_eq!(partial, 0);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, OpCode::Close);
        assert_eq!(harness::close_code(&frames[0].1), Some(1013));
    }

    #[test]
    fn a_relay_through_several_channels_reaches_a_subscriber_once() {
        let mut room = Room::new(OnBacklog::Drop);
        let key = room.subscribe(usize::MAX);
        let stamp = room.fanout.next_stamp();
        let channel = room.hub.lookup("feed").expect("channel");
        let message = Broadcast::new(OpCode::Binary, &[7; PAYLOAD]);
        let cache = FrameCache::default();
        let mut total = 0;
        for _ in 0..2 {
            let env = env_of!(room.env, room.env.now);
            let out = Outgoing {
                channel: "feed",
                message: &message,
                position: None,
                frames: &cache,
                held: None,
            };
            total += room.fanout.deliver(
                &mut room.slots,
                room.hub.subscribers(channel),
                out,
                None,
                stamp,
                env,
            );
        }
        assert_eq!(total, 1);
        room.flush();
        assert_eq!(room.received(key), [7]);
    }

    #[test]
    fn a_metadata_client_gets_a_relay_once_per_channel_with_each_position() {
        let mut room = Room::new(OnBacklog::Drop);
        let key = room.subscribe_at("/live?channel=a&channel=b&meta=1", usize::MAX);
        let stamp = room.fanout.next_stamp();
        let message = Broadcast::new(OpCode::Text, b"hi");
        let mut total = 0;
        for name in ["a", "b"] {
            let channel = room.hub.lookup(name).expect("channel");
            let delivery = Delivery::new(message.clone(), room.hub.next_position(channel));
            let env = env_of!(room.env, room.env.now);
            let out = Outgoing::of(name, &delivery);
            let subscribers = room.hub.subscribers(channel);
            total += room
                .fanout
                .deliver(&mut room.slots, subscribers, out, None, stamp, env);
        }
        assert_eq!(total, 2);
        room.flush();
        let bytes = std::mem::take(&mut room.slots[key].io.bytes);
        let (frames, _) = server_frames(&bytes);
        let texts: Vec<String> = frames
            .iter()
            .map(|(_, p)| String::from_utf8(p.clone()).expect("text"))
            .collect();
        assert_eq!(texts.len(), 2);
        assert!(
            texts[0].starts_with(r#"{"channel":"a","#)
                && texts[0].contains(r#""offset":1,"text":"hi"}"#)
        );
        assert!(
            texts[1].starts_with(r#"{"channel":"b","#)
                && texts[1].contains(r#""offset":1,"text":"hi"}"#)
        );
    }
}
