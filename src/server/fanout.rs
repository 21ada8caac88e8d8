//! Hub work: subscriptions, publishes and relays that connections ask for,
//! and the fan-out that queues one shared frame on every subscriber.
//!
//! Owns: carrying out a connection's [`Action`]s, the per-turn list of
//! connections given frames (flushed once each before the next poll), the
//! delivery stamp that keeps a relay through several channels from reaching
//! a subscriber twice, and the slow-consumer decision at
//! `max_backlog_bytes`.
//! Must never: frame a broadcast more than once per window size (the
//! [`FrameCache`] does it once and the frame is shared by `Rc`), allocate per
//! delivery, write to a socket itself (that is the flush at the end of the
//! turn: one vectored write per subscriber), or reorder a subscriber's
//! messages.

use log::debug;
use slab::Slab;

use super::Server;
use super::bus::Waiter;
use super::compress::{Broadcast, Codec, FrameCache};
use super::conn::Action;
use super::drive::ROUNDS_PER_TURN;
use super::slot::Slot;
use crate::config::{Config, OnBacklog};
use crate::hub::ChannelId;
use crate::metrics::Metrics;
use crate::route::Routes;

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

/// The fan-out's own state, kept between turns so its vectors keep their
/// capacity.
#[derive(Debug, Default)]
pub(super) struct FanOut {
    /// Slots given frames (or an eviction's close frame) this turn, to
    /// flush before polling.
    pub dirty: Vec<usize>,
    /// Tags each fan-out so a relay through several channels reaches a
    /// subscriber of more than one of them once.
    stamp: u32,
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

    /// Queues one shared frame on every open subscriber among `subscribers`
    /// (slab keys) not yet stamped with `stamp`, and lists them for a flush
    /// at the end of the turn. Returns the recipients.
    ///
    /// Subscribers that negotiated permessage-deflate share one compressed
    /// frame per server window size, made by the first of them (`cache`
    /// lives as long as the publish); the others share the plain frame.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver<T>(
        &mut self,
        slots: &mut Slab<Slot<T>>,
        subscribers: impl Iterator<Item = u32>,
        message: &Broadcast,
        cache: &mut FrameCache,
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
            if !slot.conn.is_open() || slot.delivery_stamp == stamp {
                continue;
            }
            slot.delivery_stamp = stamp;
            let conn = &mut slot.conn;
            let compression = env.routes.get(conn.route()).and_then(|r| r.deflate);
            let frame = cache.frame_for(message, conn.deflate(), compression, env.codec);
            match backlog(conn.queued(), frame.len(), limit, policy) {
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
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(key);
            }
        }
        let count = recipients as u64;
        env.metrics.deliveries += count;
        env.metrics.messages_out += count;
        env.metrics.bytes_out += bytes;
        recipients
    }
}

impl Server {
    /// Carries out what connection `key` asked for while processing input.
    pub(super) fn run_actions(&mut self, key: usize, now: u64) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Subscribe(channels) => {
                    let Ok(who) = u32::try_from(key) else {
                        continue;
                    };
                    for name in &channels {
                        if self.hub.lookup(name).is_none()
                            && let Some(cluster) = self.cluster.as_deref_mut()
                        {
                            cluster.bus.channel_changed(name);
                        }
                        let membership = self.hub.subscribe(name, who);
                        if let Some(slot) = self.conns.get_mut(key) {
                            slot.conn.memberships.push(membership);
                        }
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
                    let mut cache = FrameCache::default();
                    let recipients = match self.hub.lookup(&channel) {
                        Some(id) => self.fan_out(id, &message, &mut cache, None, stamp, now),
                        None => 0,
                    };
                    if let Some(slot) = self.conns.get_mut(key) {
                        slot.conn.answer_publish(&channel, recipients, keep_alive);
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
                    let mut cache = FrameCache::default();
                    // Indexed rather than collected: no allocation per relayed
                    // message (a connection holds at most a few memberships,
                    // and fan-out never removes a connection).
                    let count = self.conns.get(key).map_or(0, |s| s.conn.memberships.len());
                    for i in 0..count {
                        let Some(id) = self
                            .conns
                            .get(key)
                            .filter(|s| s.conn.may_relay(i))
                            .and_then(|s| s.conn.memberships.iter().nth(i))
                            .map(|m| m.channel())
                        else {
                            break;
                        };
                        self.fan_out(id, &message, &mut cache, exclude, stamp, now);
                    }
                }
            }
        }
        // Keep the vector's capacity for the next connection.
        self.actions = actions;
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
            let Some(name) = self
                .conns
                .get(key)
                .filter(|s| s.conn.may_relay(i))
                .and_then(|s| s.conn.memberships.iter().nth(i))
                .and_then(|m| self.hub.name(m.channel()))
                .map(str::to_owned)
            else {
                break;
            };
            // A refusal is counted by the bus; a relay has no one to answer.
            let _ = self.bus_publish(&name, message, exclude, None, now);
        }
    }

    pub(super) fn fan_out(
        &mut self,
        channel: ChannelId,
        message: &Broadcast,
        cache: &mut FrameCache,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        let env = Env {
            now,
            config: &self.config,
            routes: &self.routes,
            codec: &mut self.codec,
            metrics: &mut self.metrics,
        };
        self.fanout.deliver(
            &mut self.conns,
            self.hub.subscribers(channel),
            message,
            cache,
            exclude,
            stamp,
            env,
        )
    }

    /// Writes out what fan-outs queued this turn, one vectored write per
    /// connection however many frames it got.
    pub(super) fn flush_dirty(&mut self, now: u64) {
        for _ in 0..ROUNDS_PER_TURN {
            if self.fanout.dirty.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.fanout.dirty);
            for key in batch.drain(..) {
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.dirty = false;
                    self.drive(key, false, false, now);
                }
            }
            // Driving can resume held-back input that relays further; those
            // recipients are in `self.fanout.dirty` now. Otherwise keep the
            // capacity.
            if self.fanout.dirty.is_empty() {
                self.fanout.dirty = batch;
            }
        }
    }

    pub(super) fn update_hub_gauges(&mut self) {
        self.metrics.channels = self.hub.channel_count() as u64;
        self.metrics.subscriptions = self.hub.subscription_count() as u64;
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
        hub: Hub<u32>,
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
            let mut slot = open_slot(&mut self.env, "/live/feed");
            slot.io.room = room;
            let key = self.slots.insert(slot);
            for action in self.env.actions.drain(..) {
                let Action::Subscribe(channels) = action else {
                    panic!("unexpected {action:?}");
                };
                for name in &channels {
                    let membership = self.hub.subscribe(name, key as u32);
                    self.slots[key].conn.memberships.push(membership);
                }
            }
            key
        }

        /// Publishes message `seq` to `feed`; returns its recipients.
        fn publish(&mut self, seq: u8) -> usize {
            let stamp = self.fanout.next_stamp();
            let channel = self.hub.lookup("feed").expect("channel");
            let env = Env {
                now: self.env.now,
                config: &self.env.config,
                routes: &self.env.routes,
                codec: &mut self.env.codec,
                metrics: &mut self.env.metrics,
            };
            self.fanout.deliver(
                &mut self.slots,
                self.hub.subscribers(channel),
                &Broadcast::new(OpCode::Binary, &[seq; PAYLOAD]),
                &mut FrameCache::default(),
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
        room.fanout.dirty.push(stuck);
        room.flush();
        assert_eq!(room.publish(5), 2);
        room.flush();
        assert_eq!(room.received(stuck), [0, 1, 2, 5]);
        assert!(room.slots[stuck].conn.is_open());
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
        let mut cache = FrameCache::default();
        let mut total = 0;
        for _ in 0..2 {
            let env = Env {
                now: room.env.now,
                config: &room.env.config,
                routes: &room.env.routes,
                codec: &mut room.env.codec,
                metrics: &mut room.env.metrics,
            };
            total += room.fanout.deliver(
                &mut room.slots,
                room.hub.subscribers(channel),
                &message,
                &mut cache,
                None,
                stamp,
                env,
            );
        }
        assert_eq!(total, 1);
        room.flush();
        assert_eq!(room.received(key), [7]);
    }
}
