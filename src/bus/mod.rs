//! The Redis bus of a cluster node, sans-IO: two links to Redis (commands,
//! subscriptions), what is published through one and read from the other,
//! and which channels this node is subscribed to in Redis.
//!
//! Owns: the meaning of every command and reply (login, the publish
//! scripts, the clock offset to Redis, liveness checks, SUBSCRIBE/UNSUBSCRIBE
//! batches and their confirmations, history reads), the answer to each
//! publish (accepted with its position, or refused with a reason no earlier
//! than it is safe to say so), the order of each channel's live feed, the
//! recovery reads, the node's health and counters.
//! Must never: touch a socket, a poller, a timer wheel or a clock (the
//! server's `bus` module does; bytes, events and `now` come in), block,
//! answer a publish "refused" while Redis could still accept it, hand out
//! a channel's positioned messages out of order or twice, or give a gap up
//! while the command link that would read it is still coming up (short of
//! the wait's bound).
//!
//! # Why a 503 is never a lie
//!
//! A publish runs in Redis as a small Lua script ([`PUBLISH_SCRIPT`]) that
//! refuses to publish once Redis's own clock (`TIME`) has passed a deadline
//! the node computed: its send time plus `command_timeout`, moved into
//! Redis's clock with an offset measured by `TIME` round trips (each check
//! of the command link is one). With `u` the measurement's uncertainty
//! (half a round trip), the script can only accept it before local time
//! `send + command_timeout + u`; the node answers 503 when no reply came by
//! `send + command_timeout + u + REPLY_MARGIN_MS`. A publish stuck in a
//! paused Redis's socket is thus refused by Redis itself after SIGCONT. The
//! one window left: Redis runs the script just before the deadline and its
//! reply is delayed past the margin; such a late acceptance is counted
//! (`wshub_cluster_publishes_late_total`) and logged.
//!
//! # Positions and history (a route with `history_size`)
//!
//! Publishes then run [`history::PUBLISH_HISTORY_SCRIPT`]: the same
//! deadline check first (a refused publish writes nothing and takes no
//! offset), then the channel's offset is incremented, the envelope gets
//! its position (envelope version 2), goes into the capped stream and is
//! published; the reply carries the position to the HTTP answer. Replies
//! still come in command order, so answers keep their order. Without
//! history nothing about positions reaches Redis.
//!
//! Each channel's live feed goes through a [`sequence::Sequencer`]: repeats
//! are dropped, a jump is filled from the stream before anything later is
//! delivered, and a re-confirmed SUBSCRIBE (after the subscription link was
//! lost) reads what was published meanwhile. Gap reads and recovery reads
//! share [`history::READ_SCRIPT`] and the command link; recovery reads are
//! coalesced per channel (see [`history::Coalescer`]) and bounded in number.
//!
//! A gap read asked for while the command link is still connecting or
//! logging in waits for it: a process that just started (after a handover
//! above all, whose feeds continue from the old process's positions) often
//! gets its subscription link's first messages before its command link is
//! up. The sequencer holds the live messages meanwhile (within its usual
//! bounds); the read goes out as soon as the link is up, and the gap is
//! given up (counted lost, order kept) only when the link goes down or
//! `command_timeout` plus [`REPLY_MARGIN_MS`] passes first. While the link
//! is down (failed, waiting out its backoff) a gap is given up at once.
//!
//! # The seam between a recovery and the live feed
//!
//! A recovery read is sent only after Redis confirmed this node's SUBSCRIBE
//! to the channel ([`Event::Subscribed`]); from then on every message of
//! the channel reaches the live feed, in order ([`Event::Message`], each
//! with its position). The read returns atomically the entries after the
//! client's position up to the channel's `top` at that moment
//! ([`Recovery::Recovered`]). So a client is served, with no gap and no
//! duplicate: the read's entries (up to `top`), then the messages the node
//! delivered live with offsets after `top`, which the node keeps in its
//! local history as it delivers them (the live messages up to `top` may
//! arrive before or after the read's reply; those are the read's, not
//! replayed twice). A recovery that the local history covers needs no read.

mod envelope;
pub(crate) mod history;
pub(crate) mod link;
#[cfg(test)]
mod redis_tests;
pub(crate) mod sequence;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use redis_protocol::resp2::types::OwnedFrame;

pub use envelope::Envelope;
pub(crate) use history::{Ask, Entry, Reason, Recovery};
use history::{
    Coalescer, PUBLISH_HISTORY_SCRIPT, PublishReply, READ_SCRIPT, ReadReply, Want,
    parse_publish_reply, parse_read_reply,
};
use link::{Backoff, Link, State};
use sequence::{Counts, Sequencer, Step};

use crate::config::{ClusterConfig, HistoryPolicy, Secret};
use crate::hub::position::{Epoch, Position};

/// The publish script: `ARGV[1]` the deadline in Redis's clock
/// (milliseconds since the epoch), `ARGV[2]` the channel, `ARGV[3]` the
/// envelope. Returns the number of Redis subscribers (nodes) it reached, or
/// -1 when the deadline has passed and nothing was published. With history
/// on, [`PUBLISH_HISTORY_SCRIPT`] runs instead.
pub(crate) const PUBLISH_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return -1 end
return redis.call('PUBLISH', ARGV[2], ARGV[3])
";

/// How long after the script's deadline (plus the clock uncertainty) a
/// publish without a reply is answered 503: room for the reply to travel.
pub(crate) const REPLY_MARGIN_MS: u64 = 250;

/// Publish commands not yet written to a Redis that reads too slowly
/// are capped here: past it, publishes get 503 and relays are dropped,
/// rather than memory growing without bound.
const MAX_UNSENT_BYTES: usize = 64 * 1024 * 1024;

/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1_000;

/// Entries one gap read asks for at most; a longer gap is read in parts.
const MAX_GAP_READ: u64 = 1_000;

/// The scripts the command link loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Publish,
    PublishHistory,
    Read,
}

impl Script {
    const ALL: [Script; 3] = [Script::Publish, Script::PublishHistory, Script::Read];

    /// Its SHA1 among `shas` (kept in `ALL` order).
    fn sha(self, shas: &[String; 3]) -> &str {
        let i = Script::ALL.iter().position(|&s| s == self).unwrap_or(0);
        shas.get(i).map_or("", String::as_str)
    }

    fn text(self) -> &'static str {
        match self {
            Script::Publish => PUBLISH_SCRIPT,
            Script::PublishHistory => PUBLISH_HISTORY_SCRIPT,
            Script::Read => READ_SCRIPT,
        }
    }
}

/// Which of the two links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Publishes and clock checks.
    Commands,
    /// SUBSCRIBE/UNSUBSCRIBE and the messages; checked with PING.
    Subscriptions,
}

/// A publish Redis accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    /// Redis subscribers (nodes) it reached.
    pub nodes: u64,
    /// Its position, when the channel keeps history.
    pub position: Option<Position>,
}

/// What the bus hands back to the server.
#[derive(Debug)]
pub(crate) enum Event<W, R = u64> {
    /// A message to deliver on `channel` (prefix removed). Messages with a
    /// position come in offset order, each once (see [`sequence`]).
    Message { channel: String, envelope: Vec<u8> },
    /// The answer to a publish: accepted, or why it was refused.
    Answer {
        waiter: W,
        outcome: Result<Published, &'static str>,
    },
    /// Redis confirmed the SUBSCRIBE to `channel`: from now on every
    /// message published to it reaches this node's live feed.
    Subscribed { channel: String },
    /// The outcome of [`Bus::recover`] for `who`.
    Recovered { who: R, outcome: Recovery },
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub publishes_confirmed: u64,
    pub publishes_refused: u64,
    pub publishes_late: u64,
    pub relays_dropped: u64,
    pub messages_received: u64,
    pub messages_undecodable: u64,
    pub reconnects: u64,
    /// Live messages put in order: repeats dropped, gaps filled or lost.
    pub sequence: Counts,
    /// Reads of a channel's stream to fill a gap in the live feed.
    pub gap_reads: u64,
    /// Recovery requests, and the reads that served them (coalesced).
    pub recovery_requests: u64,
    pub recovery_reads: u64,
    /// Recovery requests answered `unavailable` (Redis not asked in time).
    pub recoveries_unavailable: u64,
}

/// A publish sent to Redis and not yet answered.
#[derive(Debug)]
struct Pending<W> {
    /// Whom to answer; `None` for a relay, or once answered 503.
    waiter: Option<W>,
    /// Answered 503 before its reply came.
    timed_out: bool,
    /// When to answer 503 without a reply.
    answer_by: u64,
    /// Sent with the history script (its reply carries a position).
    history: bool,
}

/// Who waits for a read of a channel's stream.
#[derive(Debug)]
enum ReadFor<R> {
    /// The channel's sequencer, to fill a gap.
    Gap,
    /// Recovery requests (coalesced); taken out when answered 503-style
    /// at the read's deadline.
    Recovery(Vec<Want<R>>),
}

/// A read sent and not yet answered.
#[derive(Debug)]
struct Read<R> {
    channel: String,
    /// Entries asked for.
    count: u64,
    reader: ReadFor<R>,
    answer_by: u64,
    timed_out: bool,
}

/// A gap read asked for while the command link was still connecting or
/// logging in: it goes out once the link is up, or the gap is given up
/// when the link goes down or `deadline` passes first.
#[derive(Debug)]
struct UnsentGap {
    from: u64,
    count: u64,
    deadline: u64,
}

/// A reply the command link waits for, in order.
#[derive(Debug)]
enum Expect<W, R> {
    /// `+OK` (AUTH, SELECT, CLIENT SETNAME): anything else drops the link.
    Ok(&'static str),
    ScriptLoad(Script),
    Time {
        sent: u64,
    },
    Publish(Pending<W>),
    Read(Read<R>),
}

/// The bus's settings, in loop milliseconds.
#[derive(Clone, Debug)]
struct Settings {
    prefix: String,
    node_name: String,
    username: Option<String>,
    password: Option<Secret>,
    db: u32,
    connect_timeout: u64,
    command_timeout: u64,
    ping_interval: u64,
    ping_timeout: u64,
    /// `history_meta_ttl` in ms, at least the history's TTL.
    meta_ttl: u64,
    /// What the channels' history keeps (`Config::history`), in
    /// (entries, ms); `None` when no route keeps history.
    history: Option<(usize, u64)>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Settings {
    fn from(config: &ClusterConfig) -> Settings {
        let url = &config.redis_url;
        Settings {
            prefix: config.key_prefix.clone(),
            node_name: config.node_name.clone(),
            username: url.username.clone(),
            password: url.password.clone(),
            db: url.db,
            connect_timeout: ms(config.connect_timeout),
            command_timeout: ms(config.command_timeout),
            ping_interval: ms(config.ping_interval),
            ping_timeout: ms(config.ping_timeout),
            meta_ttl: ms(config.history_meta_ttl),
            history: None,
        }
    }
}

/// Redis's clock minus the loop's, as last measured.
#[derive(Clone, Copy, Debug)]
struct Offset {
    /// Redis milliseconds since the epoch minus loop milliseconds.
    offset: i64,
    /// Half the round trip of the measurement, rounded up, plus 1 ms for
    /// the clocks' millisecond resolution.
    uncertainty: u64,
}

/// The bus: both links and what flows through them.
#[derive(Debug)]
pub(crate) struct Bus<W, R = u64> {
    settings: Settings,
    pub cmd: Link,
    pub sub: Link,
    expect: VecDeque<Expect<W, R>>,
    /// Publishes whose link went down before their reply: answered 503 at
    /// their deadline, not before (Redis may still run them until then).
    limbo: VecDeque<Pending<W>>,
    offset: Option<Offset>,
    /// The SHA1 of each [`Script`], in `Script::ALL` order.
    shas: [String; 3],
    /// Channels (without prefix) SUBSCRIBE was sent for on the current
    /// subscription link, and not UNSUBSCRIBE since; `true` once Redis
    /// confirmed it.
    subscribed: HashMap<String, bool>,
    /// SUBSCRIBEs sent on the current link and not yet confirmed, per
    /// channel (an UNSUBSCRIBE does not cancel its confirmation).
    unconfirmed: HashMap<String, u32>,
    /// Per channel whose live messages carry positions: its order.
    sequencers: HashMap<String, Sequencer<Vec<u8>>>,
    /// Recovery requests waiting for a read.
    recoveries: Coalescer<R>,
    /// When to give up on each read in `expect` not yet timed out, oldest
    /// first.
    reads_waiting: VecDeque<u64>,
    /// Reads failed with their link, to hand back at the next
    /// [`Bus::issue_reads`].
    failed_reads: Vec<Read<R>>,
    /// Gap reads waiting for the command link to come up, per channel (a
    /// sequencer asks for one read at a time: a newer one replaces it).
    unsent_gaps: HashMap<String, UnsentGap>,
    /// Their deadlines with their channels, oldest first; an entry whose
    /// channel's read was sent, given up or replaced since is skipped.
    unsent_deadlines: VecDeque<(u64, String)>,
    /// Epoch candidates (splitmix64 state).
    rng: u64,
    /// What a sequencer asked for (kept for its capacity).
    steps: Vec<Step<Vec<u8>>>,
    /// Channels whose first subscriber came or last one left this turn.
    dirty: Vec<String>,
    /// This process's id in envelopes: random per start.
    pub node_id: u64,
    pub stats: Stats,
    /// Why the node is degraded, if it is: what `/healthz` says.
    health: Option<String>,
    /// The scratch buffer for one prefixed channel name.
    scratch: Vec<u8>,
    /// Replies decoded from one read (kept for its capacity).
    frames: Vec<OwnedFrame>,
    /// When to answer each publish in `expect` that still has a waiter,
    /// oldest first (replies and refusals both come in that order), so the
    /// next deadline is found without walking the queue.
    waiting: VecDeque<u64>,
}

impl<W, R> Bus<W, R> {
    pub(crate) fn new(config: &ClusterConfig, seed: u64) -> Bus<W, R> {
        let settings = Settings::from(config);
        let backoff = |salt: u64| {
            Backoff::new(
                ms(config.reconnect_min),
                ms(config.reconnect_max),
                seed ^ salt,
            )
        };
        let mut bus = Bus {
            settings,
            cmd: Link::new(backoff(0x9e37_79b9_7f4a_7c15)),
            sub: Link::new(backoff(0xc2b2_ae3d_27d4_eb4f)),
            expect: VecDeque::new(),
            limbo: VecDeque::new(),
            offset: None,
            shas: Script::ALL.map(|s| sha1_smol::Sha1::from(s.text()).digest().to_string()),
            subscribed: HashMap::new(),
            unconfirmed: HashMap::new(),
            sequencers: HashMap::new(),
            recoveries: Coalescer::default(),
            reads_waiting: VecDeque::new(),
            failed_reads: Vec::new(),
            unsent_gaps: HashMap::new(),
            unsent_deadlines: VecDeque::new(),
            rng: seed,
            steps: Vec::new(),
            dirty: Vec::new(),
            node_id: seed,
            stats: Stats::default(),
            health: None,
            scratch: Vec::new(),
            frames: Vec::new(),
            waiting: VecDeque::new(),
        };
        bus.refresh_health();
        bus
    }

    /// Applies reloaded settings: timeouts, backoff bounds and the login
    /// take effect from the next command or connection; a new key prefix
    /// or node name needs the links to be made again (the caller decides).
    pub(crate) fn reconfigure(&mut self, config: &ClusterConfig) {
        let history = self.settings.history;
        self.settings = Settings::from(config);
        self.settings.history = history;
        for link in [&mut self.cmd, &mut self.sub] {
            link.backoff.min = ms(config.reconnect_min).max(1);
            link.backoff.max = ms(config.reconnect_max).max(link.backoff.min);
        }
    }

    /// Sets what the channels' history keeps (`Config::history`): with it,
    /// publishes go through the history script and get positions.
    pub(crate) fn set_history(&mut self, policy: Option<HistoryPolicy>) {
        self.settings.history = policy.map(|p| (p.size, ms(p.ttl)));
    }

    /// Publishes keep history (and envelopes must be written unplaced).
    pub(crate) fn keeps_history(&self) -> bool {
        self.settings.history.is_some()
    }

    /// A random epoch for a channel Redis has no history of.
    fn epoch_candidate(&mut self) -> String {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Epoch::new(z ^ (z >> 31)).to_string()
    }

    pub(crate) fn link(&self, role: Role) -> &Link {
        match role {
            Role::Commands => &self.cmd,
            Role::Subscriptions => &self.sub,
        }
    }

    pub(crate) fn link_mut(&mut self, role: Role) -> &mut Link {
        match role {
            Role::Commands => &mut self.cmd,
            Role::Subscriptions => &mut self.sub,
        }
    }

    /// Why the node is degraded (a link is not up), or `None` when healthy.
    pub(crate) fn health(&self) -> Option<&str> {
        self.health.as_deref()
    }

    fn refresh_health(&mut self) {
        let describe = |what: &str, link: &Link| match link.state {
            State::Up => None,
            State::Down { .. } => Some(format!("redis {what} link down: {}", link.last_error)),
            State::Connecting { .. } | State::LoggingIn { .. } => Some(format!(
                "redis {what} link connecting (last error: {})",
                link.last_error
            )),
        };
        let health = describe("publish", &self.cmd).or_else(|| describe("subscription", &self.sub));
        if health != self.health {
            match &health {
                Some(why) if self.health.is_none() => warn!("cluster degraded: {why}"),
                None => info!("cluster link to redis up"),
                _ => {}
            }
            self.health = health;
        }
    }

    /// The link should start connecting now: it is down and its wait is over.
    pub(crate) fn due_to_connect(&self, role: Role, now: u64) -> bool {
        matches!(self.link(role).state, State::Down { retry_at } if now >= retry_at)
    }

    /// The server started a TCP connection for `role`.
    pub(crate) fn on_connecting(&mut self, role: Role, now: u64) {
        self.link_mut(role).state = State::Connecting { since: now };
        self.refresh_health();
    }

    /// The TCP (and TLS) connection is made: log in and set up. The
    /// subscription link subscribes to every channel in `wanted` and is up
    /// once Redis has answered the PING sent after them.
    pub(crate) fn on_connected<'a>(
        &mut self,
        role: Role,
        now: u64,
        wanted: impl Iterator<Item = &'a str>,
    ) {
        let name = format!("wshub-{}", self.settings.node_name);
        let settings = self.settings.clone();
        let link = self.link_mut(role);
        link.state = State::LoggingIn { since: now };
        match (&settings.username, &settings.password) {
            (Some(user), Some(pass)) => {
                link.command(&[b"AUTH", user.as_bytes(), pass.as_bytes()]);
            }
            (None, Some(pass)) => link.command(&[b"AUTH", pass.as_bytes()]),
            _ => {}
        }
        let authenticated = settings.password.is_some();
        link.command(&[b"CLIENT", b"SETNAME", name.as_bytes()]);
        match role {
            Role::Commands => {
                if authenticated {
                    self.expect.push_back(Expect::Ok("AUTH"));
                }
                self.expect.push_back(Expect::Ok("CLIENT SETNAME"));
                if settings.db != 0 {
                    let db = settings.db.to_string();
                    self.cmd.command(&[b"SELECT", db.as_bytes()]);
                    self.expect.push_back(Expect::Ok("SELECT"));
                }
                for script in Script::ALL {
                    self.cmd
                        .command(&[b"SCRIPT", b"LOAD", script.text().as_bytes()]);
                    self.expect.push_back(Expect::ScriptLoad(script));
                }
                self.send_time(now);
            }
            Role::Subscriptions => {
                self.subscribed.clear();
                self.unconfirmed.clear();
                self.dirty.clear();
                let names: Vec<&str> = wanted.collect();
                // Channels that lost their subscribers while the link was
                // down keep no order.
                let keep: HashSet<&str> = names.iter().copied().collect();
                self.sequencers
                    .retain(|name, _| keep.contains(name.as_str()));
                self.subscribe_batch(true, &names);
                self.sub.command(&[b"PING"]);
                self.sub.check_sent = Some(now);
            }
        }
        self.refresh_health();
    }

    fn send_time(&mut self, now: u64) {
        self.cmd.command(&[b"TIME"]);
        self.expect.push_back(Expect::Time { sent: now });
        self.cmd.check_sent = Some(now);
    }

    /// The socket of `role` failed or closed (or the bus gave up on it).
    pub(crate) fn on_closed(&mut self, role: Role, now: u64, reason: String) {
        if !self.link(role).is_connected() {
            return;
        }
        warn!("cluster: redis {role:?} link lost: {reason}");
        self.link_mut(role).down(now, reason);
        match role {
            Role::Commands => {
                self.offset = None;
                self.waiting.clear();
                self.reads_waiting.clear();
                for expect in self.expect.drain(..) {
                    match expect {
                        Expect::Publish(p) if p.waiter.is_some() => self.limbo.push_back(p),
                        // Reads are answered at the next turn.
                        Expect::Read(read) => self.failed_reads.push(read),
                        _ => {}
                    }
                }
            }
            Role::Subscriptions => {
                // Sequencers stay: the messages missed meanwhile are read
                // from the stream once the channel is confirmed again.
                self.subscribed.clear();
                self.unconfirmed.clear();
                self.dirty.clear();
            }
        }
        self.refresh_health();
    }

    /// Publishes `envelope` to `channel` with the script; the answer comes
    /// as an [`Event::Answer`] for `waiter` (none for a relay). Refused at
    /// once, with nothing sent, while the command link is not up. With
    /// history on ([`Bus::keeps_history`]) `envelope` is a version 2
    /// envelope without its position, which Redis inserts.
    pub(crate) fn publish(
        &mut self,
        channel: &str,
        envelope: &[u8],
        waiter: Option<W>,
        now: u64,
    ) -> Result<(), &'static str> {
        let refuse = |stats: &mut Stats, reason| {
            if waiter.is_some() {
                stats.publishes_refused += 1;
            } else {
                stats.relays_dropped += 1;
            }
            Err(reason)
        };
        let Some(offset) = self.offset.filter(|_| self.cmd.is_up()) else {
            return refuse(&mut self.stats, "redis is unreachable");
        };
        if self.cmd.output().len() > MAX_UNSENT_BYTES {
            return refuse(&mut self.stats, "redis is not keeping up");
        }
        let timeout = self.settings.command_timeout;
        let deadline = now
            .saturating_add(timeout)
            .saturating_add_signed(offset.offset);
        let deadline = deadline.to_string();
        self.scratch.clear();
        self.scratch
            .extend_from_slice(self.settings.prefix.as_bytes());
        self.scratch.extend_from_slice(channel.as_bytes());
        let history = self.settings.history;
        if let Some((size, ttl)) = history {
            let (meta, stream) = history::keys(&self.settings.prefix, channel);
            let candidate = self.epoch_candidate();
            let size = size.to_string();
            let ttl = ttl.max(1).to_string();
            let meta_ttl = self.settings.meta_ttl.max(ttl_ms(history)).to_string();
            self.cmd.command(&[
                b"EVALSHA",
                Script::PublishHistory.sha(&self.shas).as_bytes(),
                b"2",
                meta.as_bytes(),
                stream.as_bytes(),
                deadline.as_bytes(),
                &self.scratch,
                envelope,
                candidate.as_bytes(),
                size.as_bytes(),
                ttl.as_bytes(),
                meta_ttl.as_bytes(),
            ]);
        } else {
            self.cmd.command(&[
                b"EVALSHA",
                Script::Publish.sha(&self.shas).as_bytes(),
                b"0",
                deadline.as_bytes(),
                &self.scratch,
                envelope,
            ]);
        }
        let answer_by = now
            .saturating_add(timeout)
            .saturating_add(offset.uncertainty)
            .saturating_add(REPLY_MARGIN_MS);
        if waiter.is_some() {
            self.waiting.push_back(answer_by);
        }
        self.expect.push_back(Expect::Publish(Pending {
            waiter,
            timed_out: false,
            answer_by,
            history: history.is_some(),
        }));
        Ok(())
    }

    /// Asks for the messages of `channel` after `ask.position` (see
    /// [`Recovery`]); the outcome comes as an [`Event::Recovered`] for
    /// `who`. The read goes out once Redis has confirmed this node's
    /// SUBSCRIBE to the channel (the caller subscribes first), coalesced
    /// with the other requests for the channel; `unavailable` when no read
    /// answered within `command_timeout` (plus the reply margin).
    pub(crate) fn recover(
        &mut self,
        channel: &str,
        who: R,
        ask: Ask,
        now: u64,
        events: &mut Vec<Event<W, R>>,
    ) {
        self.stats.recovery_requests += 1;
        if self.settings.history.is_none() {
            self.stats.recoveries_unavailable += 1;
            events.push(Event::Recovered {
                who,
                outcome: Recovery::NotRecovered {
                    reason: Reason::Unavailable,
                    current: None,
                },
            });
            return;
        }
        let deadline = self.read_deadline(now);
        let confirmed = self.subscribed.get(channel).copied().unwrap_or(false);
        self.recoveries
            .add(channel, Want { who, ask, deadline }, confirmed);
    }

    fn read_deadline(&self, now: u64) -> u64 {
        now.saturating_add(self.settings.command_timeout)
            .saturating_add(REPLY_MARGIN_MS)
    }

    /// Sends the recovery reads that may go out now (once per turn, so the
    /// requests of a turn coalesce), answers the reads lost with the
    /// command link, and sends or gives up the gap reads that waited for
    /// it.
    pub(crate) fn issue_reads(&mut self, now: u64, events: &mut Vec<Event<W, R>>) {
        for read in std::mem::take(&mut self.failed_reads) {
            self.fail_read(read, now, events);
        }
        self.issue_unsent_gaps(now, events);
        while self.cmd.is_up() && self.offset.is_some() {
            let Some(group) = self.recoveries.next_group() else {
                break;
            };
            self.stats.recovery_reads += 1;
            self.send_read(
                group.channel,
                group.from,
                group.count,
                ReadFor::Recovery(group.wants),
                now,
            );
        }
    }

    /// The gap reads that waited for the command link: sent once it is up,
    /// given up once it is down (each sequencer then counts its gap lost
    /// and delivers what it held, in order); while it is still connecting
    /// or logging in they wait on (up to their deadlines, see
    /// [`Bus::on_timer`]).
    fn issue_unsent_gaps(&mut self, now: u64, events: &mut Vec<Event<W, R>>) {
        if self.unsent_gaps.is_empty() {
            self.unsent_deadlines.clear();
            return;
        }
        let up = self.cmd.is_up() && self.offset.is_some();
        if !up && self.cmd.is_connected() {
            return;
        }
        for (deadline, channel) in std::mem::take(&mut self.unsent_deadlines) {
            let Some(gap) = self.take_unsent_gap(&channel, deadline) else {
                continue;
            };
            if !up {
                self.give_up_gap(&channel, now, events);
            } else if self
                .sequencers
                .get(&channel)
                .is_some_and(Sequencer::is_reading)
            {
                self.send_gap_read(channel, gap.from, gap.count, now);
            }
        }
    }

    /// Takes `channel`'s unsent gap read out, if it is the one that was
    /// due at `deadline` (and not replaced since).
    fn take_unsent_gap(&mut self, channel: &str, deadline: u64) -> Option<UnsentGap> {
        if self.unsent_gaps.get(channel)?.deadline != deadline {
            return None;
        }
        self.unsent_gaps.remove(channel)
    }

    /// Gives `channel`'s outstanding gap up: the sequencer counts what is
    /// missing as lost and delivers what it held, in order.
    fn give_up_gap(&mut self, channel: &str, now: u64, events: &mut Vec<Event<W, R>>) {
        self.sequence(channel, now, events, |s, c, out| {
            s.on_entries(None::<Vec<(Position, Vec<u8>)>>, false, c, out);
        });
    }

    /// Sends one read to fill a gap of `channel`'s live feed.
    fn send_gap_read(&mut self, channel: String, from: u64, count: u64, now: u64) {
        self.stats.gap_reads += 1;
        self.send_read(channel, from, count, ReadFor::Gap, now);
    }

    /// Sends one read of `channel`'s stream: up to `count` entries after
    /// offset `from`.
    fn send_read(&mut self, channel: String, from: u64, count: u64, reader: ReadFor<R>, now: u64) {
        let (meta, stream) = history::keys(&self.settings.prefix, &channel);
        let candidate = self.epoch_candidate();
        let meta_ttl = self
            .settings
            .meta_ttl
            .max(ttl_ms(self.settings.history))
            .to_string();
        let from_text = from.to_string();
        let count_text = count.to_string();
        self.cmd.command(&[
            b"EVALSHA",
            Script::Read.sha(&self.shas).as_bytes(),
            b"2",
            meta.as_bytes(),
            stream.as_bytes(),
            from_text.as_bytes(),
            count_text.as_bytes(),
            candidate.as_bytes(),
            meta_ttl.as_bytes(),
        ]);
        let answer_by = self.read_deadline(now);
        self.reads_waiting.push_back(answer_by);
        self.expect.push_back(Expect::Read(Read {
            channel,
            count,
            reader,
            answer_by,
            timed_out: false,
        }));
    }

    /// A read that got no usable reply: its requests are answered
    /// `unavailable`, its gap is given up.
    fn fail_read(&mut self, read: Read<R>, now: u64, events: &mut Vec<Event<W, R>>) {
        match read.reader {
            ReadFor::Gap => {
                if !read.timed_out {
                    self.give_up_gap(&read.channel, now, events);
                }
            }
            ReadFor::Recovery(wants) => {
                self.answer_unavailable(wants, events);
                let confirmed = self.subscribed.get(&read.channel).copied().unwrap_or(false);
                self.recoveries.done(&read.channel, confirmed);
            }
        }
    }

    fn answer_unavailable(
        &mut self,
        wants: impl IntoIterator<Item = Want<R>>,
        events: &mut Vec<Event<W, R>>,
    ) {
        for want in wants {
            self.stats.recoveries_unavailable += 1;
            events.push(Event::Recovered {
                who: want.who,
                outcome: Recovery::NotRecovered {
                    reason: Reason::Unavailable,
                    current: None,
                },
            });
        }
    }

    /// The reply to a read.
    fn on_read_reply(
        &mut self,
        read: Read<R>,
        reply: OwnedFrame,
        now: u64,
        events: &mut Vec<Event<W, R>>,
    ) -> Result<(), String> {
        if !read.timed_out {
            self.reads_waiting.pop_front();
        }
        let parsed = match reply {
            OwnedFrame::Error(e) => {
                if e.starts_with("NOSCRIPT") {
                    self.cmd
                        .command(&[b"SCRIPT", b"LOAD", READ_SCRIPT.as_bytes()]);
                    self.expect.push_back(Expect::ScriptLoad(Script::Read));
                } else {
                    warn!("cluster: history read failed in redis: {e}");
                }
                None
            }
            other => Some(parse_read_reply(other).ok_or("history read answered nonsense")?),
        };
        let Some(reply) = parsed else {
            self.fail_read(read, now, events);
            return Ok(());
        };
        match read.reader {
            ReadFor::Gap => {
                if !read.timed_out {
                    let more = reply.entries.len() as u64 >= read.count;
                    let entries = reply.entries.into_iter().map(|e| (e.position, e.envelope));
                    self.sequence(&read.channel, now, events, |s, c, out| {
                        s.on_entries(Some(entries), more, c, out);
                    });
                }
            }
            ReadFor::Recovery(wants) => {
                let ttl = ttl_ms(self.settings.history);
                let ReadReply {
                    current,
                    now_ms,
                    entries,
                } = reply;
                let shared: Arc<[Entry]> = entries.into();
                let reply = ReadReply {
                    current,
                    now_ms,
                    entries: Vec::new(),
                };
                for want in wants {
                    let outcome = history::decide(want.ask, &reply, &shared, ttl);
                    events.push(Event::Recovered {
                        who: want.who,
                        outcome,
                    });
                }
                let confirmed = self.subscribed.get(&read.channel).copied().unwrap_or(false);
                self.recoveries.done(&read.channel, confirmed);
            }
        }
        Ok(())
    }

    /// Runs `f` on `channel`'s sequencer and carries out what it asks:
    /// messages to deliver, a gap to read. A read goes out at once while
    /// the command link is up; while it is connecting or logging in the
    /// read waits for it (the sequencer holds the live messages meanwhile)
    /// until `command_timeout` plus the reply margin has passed; while it
    /// is down the gap is given up at once.
    fn sequence(
        &mut self,
        channel: &str,
        now: u64,
        events: &mut Vec<Event<W, R>>,
        f: impl FnOnce(&mut Sequencer<Vec<u8>>, &mut Counts, &mut Vec<Step<Vec<u8>>>),
    ) {
        let Some(sequencer) = self.sequencers.get_mut(channel) else {
            return;
        };
        // Kept between calls for its capacity: no allocation per message.
        let mut steps = std::mem::take(&mut self.steps);
        f(sequencer, &mut self.stats.sequence, &mut steps);
        while !steps.is_empty() {
            let mut unread = false;
            for step in steps.drain(..) {
                match step {
                    Step::Deliver(_, envelope) => events.push(Event::Message {
                        channel: channel.to_owned(),
                        envelope,
                    }),
                    Step::Read { from, to } => {
                        let count = to
                            .map_or(MAX_GAP_READ, |to| to.saturating_sub(from + 1))
                            .min(MAX_GAP_READ);
                        if self.cmd.is_up() && self.offset.is_some() {
                            self.send_gap_read(channel.to_owned(), from, count, now);
                        } else if self.cmd.is_connected() {
                            let deadline = self.read_deadline(now);
                            let gap = UnsentGap {
                                from,
                                count,
                                deadline,
                            };
                            self.unsent_gaps.insert(channel.to_owned(), gap);
                            self.unsent_deadlines
                                .push_back((deadline, channel.to_owned()));
                        } else {
                            unread = true;
                        }
                    }
                }
            }
            if unread && let Some(sequencer) = self.sequencers.get_mut(channel) {
                sequencer.on_entries(
                    None::<Vec<(Position, Vec<u8>)>>,
                    false,
                    &mut self.stats.sequence,
                    &mut steps,
                );
            }
        }
        self.steps = steps;
    }

    /// Bytes read from the `role` socket: replies are matched and turned
    /// into events. A reply that makes no sense drops the link.
    pub(crate) fn on_input(
        &mut self,
        role: Role,
        input: &[u8],
        now: u64,
        events: &mut Vec<Event<W, R>>,
    ) {
        // Kept between calls for its capacity: no allocation per read.
        let mut frames = std::mem::take(&mut self.frames);
        let result = self.link_mut(role).decode(input, |f| frames.push(f));
        let mut failure = result.err();
        for frame in frames.drain(..) {
            if failure.is_some() {
                break;
            }
            failure = match role {
                Role::Commands => self.on_command_reply(frame, now, events),
                Role::Subscriptions => self.on_subscription_frame(frame, now, events),
            }
            .err();
        }
        self.frames = frames;
        if let Some(reason) = failure {
            self.on_closed(role, now, reason);
        }
        self.refresh_health();
    }

    fn on_command_reply(
        &mut self,
        frame: OwnedFrame,
        now: u64,
        events: &mut Vec<Event<W, R>>,
    ) -> Result<(), String> {
        let Some(expect) = self.expect.pop_front() else {
            return Err("redis sent a reply nobody asked for".to_owned());
        };
        match (expect, frame) {
            (Expect::Ok(_), OwnedFrame::SimpleString(_)) => {}
            (Expect::Ok(what), OwnedFrame::Error(e)) => return Err(format!("{what}: {e}")),
            (Expect::Ok(what), other) => return Err(format!("{what} answered {other:?}")),
            (Expect::ScriptLoad(script), OwnedFrame::BulkString(sha))
                if sha == script.sha(&self.shas).as_bytes() => {}
            (Expect::ScriptLoad(_), other) => {
                return Err(format!("SCRIPT LOAD answered {other:?}"));
            }
            (Expect::Read(read), reply) => return self.on_read_reply(read, reply, now, events),
            (Expect::Time { sent }, OwnedFrame::Array(parts)) => {
                let redis_ms = time_reply_ms(&parts).ok_or("TIME answered nonsense")?;
                let rtt = now.saturating_sub(sent);
                let sample = Offset {
                    offset: i64::try_from(redis_ms)
                        .unwrap_or(i64::MAX)
                        .saturating_sub(i64::try_from(sent + rtt / 2).unwrap_or(i64::MAX)),
                    uncertainty: rtt.div_ceil(2) + 1,
                };
                // A slow round trip measures badly: keep the better sample
                // unless the new one is good enough.
                let keep_old = self
                    .offset
                    .is_some_and(|o| sample.uncertainty > 2 * o.uncertainty + 5);
                if !keep_old {
                    self.offset = Some(sample);
                }
                self.cmd.check_sent = None;
                self.cmd.next_check = now.saturating_add(self.settings.ping_interval);
                if !self.cmd.is_up() {
                    self.cmd.state = State::Up;
                    self.cmd.backoff.reset();
                    info!("cluster: redis publish link up");
                }
            }
            (Expect::Time { .. }, other) => return Err(format!("TIME answered {other:?}")),
            (Expect::Publish(mut p), reply) => {
                let outcome = match reply {
                    OwnedFrame::Integer(n) if n >= 0 && !p.history => Ok(Published {
                        nodes: n as u64,
                        position: None,
                    }),
                    OwnedFrame::Integer(-1) => Err("redis got the publish after its deadline"),
                    OwnedFrame::Error(e) if e.starts_with("NOSCRIPT") => {
                        // Flushed by an operator: load it again; the
                        // publisher retries (sending it again here could
                        // reorder it behind later publishes).
                        let script = if p.history {
                            Script::PublishHistory
                        } else {
                            Script::Publish
                        };
                        self.cmd
                            .command(&[b"SCRIPT", b"LOAD", script.text().as_bytes()]);
                        self.expect.push_back(Expect::ScriptLoad(script));
                        Err("the publish script was missing in redis")
                    }
                    ref array @ OwnedFrame::Array(_) if p.history => {
                        match parse_publish_reply(array) {
                            Some(PublishReply::Published { nodes, position }) => Ok(Published {
                                nodes,
                                position: Some(position),
                            }),
                            Some(PublishReply::TooLate) | None => {
                                return Err(format!("publish answered {array:?}"));
                            }
                        }
                    }
                    OwnedFrame::Error(e) => {
                        warn!("cluster: publish failed in redis: {e}");
                        Err("redis refused the publish")
                    }
                    other => return Err(format!("publish answered {other:?}")),
                };
                match (p.waiter.take(), outcome) {
                    (Some(waiter), outcome) => {
                        self.waiting.pop_front();
                        if outcome.is_ok() {
                            self.stats.publishes_confirmed += 1;
                        } else {
                            self.stats.publishes_refused += 1;
                        }
                        events.push(Event::Answer { waiter, outcome });
                    }
                    (None, Ok(_)) if p.timed_out => {
                        self.stats.publishes_late += 1;
                        warn!(
                            "cluster: redis accepted a publish already answered 503 (its reply came too late)"
                        );
                    }
                    (None, Err(_)) if !p.timed_out => self.stats.relays_dropped += 1,
                    (None, _) => {}
                }
            }
        }
        Ok(())
    }

    fn on_subscription_frame(
        &mut self,
        frame: OwnedFrame,
        now: u64,
        events: &mut Vec<Event<W, R>>,
    ) -> Result<(), String> {
        match frame {
            OwnedFrame::Array(mut parts) => {
                let kind = match parts.first() {
                    Some(OwnedFrame::BulkString(k)) => k.as_slice(),
                    _ => return Err("unexpected push from redis".to_owned()),
                };
                match kind {
                    b"message" if parts.len() == 3 => {
                        let (
                            Some(OwnedFrame::BulkString(envelope)),
                            Some(OwnedFrame::BulkString(channel)),
                        ) = (parts.pop(), parts.pop())
                        else {
                            return Err("malformed message push".to_owned());
                        };
                        let prefix = self.settings.prefix.as_bytes();
                        if !channel.starts_with(prefix) {
                            self.stats.messages_undecodable += 1;
                            return Ok(());
                        }
                        // The name reuses the reply's buffer.
                        let mut channel = channel;
                        channel.drain(..prefix.len());
                        let Ok(channel) = String::from_utf8(channel) else {
                            self.stats.messages_undecodable += 1;
                            return Ok(());
                        };
                        self.stats.messages_received += 1;
                        match Envelope::peek_position(&envelope) {
                            Some(position) if self.subscribed.contains_key(&channel) => {
                                if !self.sequencers.contains_key(&channel) {
                                    self.sequencers.insert(channel.clone(), Sequencer::new());
                                }
                                self.sequence(&channel, now, events, |s, c, out| {
                                    s.on_live(position, envelope, c, out);
                                });
                            }
                            Some(_) => {}
                            None => events.push(Event::Message { channel, envelope }),
                        }
                    }
                    b"pong" => self.on_pong(now),
                    b"subscribe" => {
                        let Some(OwnedFrame::BulkString(channel)) = parts.get(1) else {
                            return Err("malformed subscribe confirmation".to_owned());
                        };
                        let channel = channel
                            .strip_prefix(self.settings.prefix.as_bytes())
                            .and_then(|c| std::str::from_utf8(c).ok());
                        if let Some(channel) = channel {
                            self.on_confirmed(channel, now, events);
                        }
                    }
                    b"unsubscribe" => {}
                    _ => return Err("unexpected push from redis".to_owned()),
                }
            }
            OwnedFrame::SimpleString(s) if s == b"PONG" => self.on_pong(now),
            OwnedFrame::SimpleString(_) => {}
            OwnedFrame::Error(e) => return Err(format!("redis refused: {e}")),
            other => return Err(format!("unexpected reply {other:?}")),
        }
        Ok(())
    }

    /// Redis confirmed the SUBSCRIBE to `channel` (if it is still wanted):
    /// recovery reads may go out, and a channel that had a live order
    /// before reads what it missed meanwhile.
    fn on_confirmed(&mut self, channel: &str, now: u64, events: &mut Vec<Event<W, R>>) {
        // A confirmation answers the oldest SUBSCRIBE of the channel: with
        // an UNSUBSCRIBE and a new SUBSCRIBE behind it, only the last one
        // confirms the subscription that holds now.
        match self.unconfirmed.get_mut(channel) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                self.unconfirmed.remove(channel);
            }
            None => return,
        }
        let Some(confirmed) = self.subscribed.get_mut(channel) else {
            return;
        };
        *confirmed = true;
        events.push(Event::Subscribed {
            channel: channel.to_owned(),
        });
        self.recoveries.confirmed(channel);
        self.sequence(channel, now, events, |s, _, out| s.catch_up(out));
    }

    fn on_pong(&mut self, now: u64) {
        self.sub.check_sent = None;
        self.sub.next_check = now.saturating_add(self.settings.ping_interval);
        if !self.sub.is_up() {
            self.sub.state = State::Up;
            self.sub.backoff.reset();
            self.stats.reconnects += 1;
            info!("cluster: redis subscription link up");
        }
    }

    /// A channel taken over from a process that had delivered up to `last`:
    /// its feed continues from there, so what was published while neither
    /// process listened is read from the stream like any other gap.
    pub(crate) fn resume_after(&mut self, channel: &str, last: Position) {
        self.sequencers
            .entry(channel.to_owned())
            .or_insert_with(|| Sequencer::after(last));
    }

    /// `channel` got its first local subscriber or lost its last one; the
    /// change goes to Redis with the others of this turn.
    pub(crate) fn channel_changed(&mut self, channel: &str) {
        self.dirty.push(channel.to_owned());
    }

    /// Sends this turn's subscription changes: SUBSCRIBE for channels that
    /// have local subscribers and are not subscribed in Redis, UNSUBSCRIBE
    /// for the reverse. While the link is not connected nothing is sent:
    /// connecting subscribes every wanted channel.
    pub(crate) fn flush_subscriptions(&mut self, wanted: impl Fn(&str) -> bool) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        if !self.sub.is_connected() || matches!(self.sub.state, State::Connecting { .. }) {
            return;
        }
        let mut add: Vec<&str> = Vec::new();
        let mut remove: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for name in &dirty {
            if !seen.insert(name.as_str()) {
                continue;
            }
            let want = wanted(name);
            let have = self.subscribed.contains_key(name.as_str());
            if want && !have {
                add.push(name);
            } else if !want && have {
                remove.push(name);
            }
        }
        self.subscribe_batch(true, &add);
        self.subscribe_batch(false, &remove);
    }

    fn subscribe_batch(&mut self, subscribe: bool, names: &[&str]) {
        let verb: &[u8] = if subscribe {
            b"SUBSCRIBE"
        } else {
            b"UNSUBSCRIBE"
        };
        for chunk in names.chunks(CHANNELS_PER_COMMAND) {
            let prefixed: Vec<Vec<u8>> = chunk
                .iter()
                .map(|n| [self.settings.prefix.as_bytes(), n.as_bytes()].concat())
                .collect();
            let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
            args.push(verb);
            args.extend(prefixed.iter().map(Vec::as_slice));
            self.sub.command(&args);
            for name in chunk {
                if subscribe {
                    *self.unconfirmed.entry((*name).to_owned()).or_insert(0) += 1;
                    self.subscribed.insert((*name).to_owned(), false);
                } else {
                    self.subscribed.remove(*name);
                    self.sequencers.remove(*name);
                }
            }
        }
    }

    /// Channels subscribed in Redis on the current link.
    pub(crate) fn subscribed_count(&self) -> usize {
        self.subscribed.len()
    }

    /// The earliest time [`Bus::on_timer`] has work.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for link in [&self.cmd, &self.sub] {
            match link.state {
                State::Down { retry_at } => at(retry_at),
                State::Connecting { since } | State::LoggingIn { since } => {
                    at(since.saturating_add(self.settings.connect_timeout));
                }
                State::Up => match link.check_sent {
                    Some(sent) => at(sent.saturating_add(self.settings.ping_timeout)),
                    None => at(link.next_check),
                },
            }
        }
        if let Some(p) = self.limbo.front() {
            at(p.answer_by);
        }
        if let Some(&answer_by) = self.waiting.front() {
            at(answer_by);
        }
        if let Some(&answer_by) = self.reads_waiting.front() {
            at(answer_by);
        }
        if let Some(&(deadline, _)) = self.unsent_deadlines.front() {
            at(deadline);
        }
        if let Some(deadline) = self.recoveries.next_deadline() {
            at(deadline);
        }
        next
    }

    /// Acts on whatever is due at `now`: publishes to answer 503, reads
    /// and gap reads that waited too long (given up), links whose check or
    /// login went unanswered (dropped: the server closes their sockets),
    /// checks to send.
    pub(crate) fn on_timer(&mut self, now: u64, events: &mut Vec<Event<W, R>>) {
        while self.limbo.front().is_some_and(|p| now >= p.answer_by) {
            if let Some(waiter) = self.limbo.pop_front().and_then(|p| p.waiter) {
                self.stats.publishes_refused += 1;
                events.push(Event::Answer {
                    waiter,
                    outcome: Err("redis did not accept it in time"),
                });
            }
        }
        let mut due = self.waiting.iter().take_while(|&&t| now >= t).count();
        for expect in &mut self.expect {
            if due == 0 {
                break;
            }
            if let Expect::Publish(p) = expect {
                if p.waiter.is_some() && now >= p.answer_by {
                    due -= 1;
                    self.waiting.pop_front();
                    if let Some(waiter) = p.waiter.take() {
                        p.timed_out = true;
                        self.stats.publishes_refused += 1;
                        events.push(Event::Answer {
                            waiter,
                            outcome: Err("redis did not accept it in time"),
                        });
                    }
                } else if p.waiter.is_some() {
                    break;
                }
            }
        }
        let mut due = self.reads_waiting.iter().take_while(|&&t| now >= t).count();
        let mut gaps = Vec::new();
        let mut expired = Vec::new();
        for expect in &mut self.expect {
            if due == 0 {
                break;
            }
            if let Expect::Read(read) = expect
                && !read.timed_out
            {
                if now < read.answer_by {
                    break;
                }
                due -= 1;
                self.reads_waiting.pop_front();
                read.timed_out = true;
                match &mut read.reader {
                    ReadFor::Gap => gaps.push(read.channel.clone()),
                    ReadFor::Recovery(wants) => expired.append(wants),
                }
            }
        }
        self.recoveries.expire(now, &mut expired);
        self.answer_unavailable(expired, events);
        for channel in gaps {
            self.give_up_gap(&channel, now, events);
        }
        // Gap reads that waited too long for the command link to come up.
        while let Some((deadline, channel)) = self
            .unsent_deadlines
            .pop_front_if(|(deadline, _)| now >= *deadline)
        {
            if self.take_unsent_gap(&channel, deadline).is_some() {
                self.give_up_gap(&channel, now, events);
            }
        }
        for role in [Role::Commands, Role::Subscriptions] {
            let s = &self.settings;
            let link = self.link(role);
            let failure = match link.state {
                State::Connecting { since } | State::LoggingIn { since }
                    if now >= since.saturating_add(s.connect_timeout) =>
                {
                    Some(format!(
                        "no connection and login within connect_timeout ({} ms)",
                        s.connect_timeout
                    ))
                }
                State::Up
                    if link
                        .check_sent
                        .is_some_and(|t| now >= t.saturating_add(s.ping_timeout)) =>
                {
                    Some(format!(
                        "no answer within ping_timeout ({} ms)",
                        s.ping_timeout
                    ))
                }
                _ => None,
            };
            if let Some(reason) = failure {
                self.on_closed(role, now, reason);
                continue;
            }
            if self.link(role).is_up()
                && self.link(role).check_sent.is_none()
                && now >= self.link(role).next_check
            {
                match role {
                    Role::Commands => self.send_time(now),
                    Role::Subscriptions => {
                        self.sub.command(&[b"PING"]);
                        self.sub.check_sent = Some(now);
                    }
                }
            }
        }
        self.refresh_health();
    }
}

/// The history's TTL in ms (0 without history).
fn ttl_ms(history: Option<(usize, u64)>) -> u64 {
    history.map_or(0, |(_, ttl)| ttl)
}

/// Milliseconds since the epoch from a `TIME` reply (`[seconds, micros]`).
fn time_reply_ms(parts: &[OwnedFrame]) -> Option<u64> {
    let field = |i: usize| match parts.get(i) {
        Some(OwnedFrame::BulkString(b)) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        _ => None,
    };
    Some(field(0)?.checked_mul(1000)? + field(1)? / 1000)
}

#[cfg(test)]
mod tests {
    //! The bus on a virtual clock, Redis played by byte strings: every test
    //! moves time explicitly and checks the exact millisecond something
    //! happens.

    use super::*;

    /// Redis's clock at the first `TIME` reply: 1,700,000,000 s.
    const REDIS_EPOCH_MS: u64 = 1_700_000_000_000;

    fn bus() -> Bus<u32> {
        // Defaults: command_timeout 1 s, ping_interval 1 s, ping_timeout
        // 2 s, connect_timeout 2 s.
        Bus::new(&ClusterConfig::default(), 7)
    }

    fn time_reply(ms: u64) -> Vec<u8> {
        let secs = (ms / 1000).to_string();
        let micros = ((ms % 1000) * 1000).to_string();
        format!(
            "*2\r\n${}\r\n{secs}\r\n${}\r\n{micros}\r\n",
            secs.len(),
            micros.len()
        )
        .into_bytes()
    }

    fn take_output(bus: &mut Bus<u32>, role: Role) -> String {
        let link = bus.link_mut(role);
        let text = String::from_utf8_lossy(link.output()).into_owned();
        let n = link.output().len();
        link.consume(n);
        text
    }

    /// The command link up at `t = 10`, its `TIME` sent at 0 and answered
    /// with Redis's clock at `REDIS_EPOCH_MS`: offset `REDIS_EPOCH_MS - 5`,
    /// uncertainty 6 ms.
    fn command_link_up(bus: &mut Bus<u32>) {
        bus.on_connecting(Role::Commands, 0);
        bus.on_connected(Role::Commands, 0, std::iter::empty());
        let sent = take_output(bus, Role::Commands);
        assert!(sent.contains("SETNAME") && sent.contains("SCRIPT") && sent.contains("TIME"));
        let mut events = Vec::new();
        bus.on_input(Role::Commands, &login_reply(bus), 10, &mut events);
        assert!(events.is_empty());
        assert!(bus.cmd.is_up());
    }

    /// Redis's answers to the command link's login (without AUTH or
    /// SELECT): CLIENT SETNAME, the scripts, then `TIME` at
    /// `REDIS_EPOCH_MS`.
    fn login_reply(bus: &Bus<u32>) -> Vec<u8> {
        let mut reply = b"+OK\r\n".to_vec();
        for sha in &bus.shas {
            reply.extend(format!("$40\r\n{sha}\r\n").as_bytes());
        }
        reply.extend(time_reply(REDIS_EPOCH_MS));
        reply
    }

    fn subscription_link_up(bus: &mut Bus<u32>, wanted: &[&str], now: u64) -> String {
        bus.on_connecting(Role::Subscriptions, now);
        bus.on_connected(Role::Subscriptions, now, wanted.iter().copied());
        let sent = take_output(bus, Role::Subscriptions);
        let mut events = Vec::new();
        bus.on_input(
            Role::Subscriptions,
            b"+OK\r\n+PONG\r\n",
            now + 1,
            &mut events,
        );
        assert!(bus.sub.is_up());
        sent
    }

    #[test]
    fn a_publish_carries_a_deadline_in_redis_time_and_is_answered_from_the_reply() {
        let mut bus = bus();
        command_link_up(&mut bus);
        bus.publish("news", b"envelope", Some(1), 100).unwrap();
        let sent = take_output(&mut bus, Role::Commands);
        // 100 + 1000 ms timeout, in Redis's clock (offset EPOCH - 5).
        let deadline = (REDIS_EPOCH_MS + 1095).to_string();
        assert!(sent.contains("EVALSHA"), "{sent}");
        assert!(sent.contains(&deadline), "{sent}");
        assert!(sent.contains("wshub:news"), "{sent}");
        let mut events = Vec::new();
        bus.on_input(Role::Commands, b":3\r\n", 120, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                waiter: 1,
                outcome: Ok(Published {
                    nodes: 3,
                    position: None
                })
            }]
        ));
        assert_eq!(bus.stats.publishes_confirmed, 1);
    }

    #[test]
    fn a_publish_past_its_deadline_in_redis_is_refused() {
        let mut bus = bus();
        command_link_up(&mut bus);
        bus.publish("news", b"e", Some(1), 100).unwrap();
        let mut events = Vec::new();
        bus.on_input(Role::Commands, b":-1\r\n", 900, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                outcome: Err(_),
                ..
            }]
        ));
        assert_eq!(bus.stats.publishes_refused, 1);
    }

    #[test]
    fn without_a_reply_503_comes_only_after_deadline_uncertainty_and_margin() {
        let mut bus = bus();
        command_link_up(&mut bus);
        bus.publish("news", b"e", Some(1), 100).unwrap();
        // 100 + 1000 (timeout) + 6 (uncertainty) + 250 (margin).
        let answer_by = 1356;
        let mut events = Vec::new();
        bus.on_timer(answer_by - 1, &mut events);
        assert!(events.is_empty());
        bus.on_timer(answer_by, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                waiter: 1,
                outcome: Err(_)
            }]
        ));
        // Redis accepted it after all (its reply was late): counted, and
        // no second answer.
        events.clear();
        bus.on_input(Role::Commands, b":1\r\n", answer_by + 5, &mut events);
        assert!(events.is_empty());
        assert_eq!(bus.stats.publishes_late, 1);
    }

    #[test]
    fn a_lost_link_refuses_new_publishes_at_once_and_pending_ones_at_their_deadline() {
        let mut bus = bus();
        command_link_up(&mut bus);
        bus.publish("news", b"e", Some(1), 100).unwrap();
        let mut events = Vec::new();
        bus.on_closed(Role::Commands, 200, "reset".to_owned());
        assert!(
            bus.health().is_some_and(|h| h.contains("reset")),
            "{:?}",
            bus.health()
        );
        assert_eq!(
            bus.publish("news", b"e", Some(2), 200),
            Err("redis is unreachable")
        );
        // Redis may still run what it read before the reset: no answer
        // until the deadline has passed.
        bus.on_timer(1355, &mut events);
        assert!(events.is_empty());
        bus.on_timer(1356, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                waiter: 1,
                outcome: Err(_)
            }]
        ));
        // Relays are dropped and counted while down.
        assert!(bus.publish("chat", b"e", None, 300).is_err());
        assert_eq!(bus.stats.relays_dropped, 1);
    }

    #[test]
    fn relays_ahead_of_a_publish_neither_delay_nor_steal_its_answer() {
        let mut bus = bus();
        command_link_up(&mut bus);
        for _ in 0..3 {
            bus.publish("chat", b"e", None, 100).unwrap();
        }
        bus.publish("news", b"e", Some(9), 200).unwrap();
        assert_eq!(bus.waiting, [1456]);
        let mut events = Vec::new();
        // Two relays are answered; the publish is still out.
        bus.on_input(Role::Commands, b":1\r\n:1\r\n", 300, &mut events);
        bus.on_timer(1455, &mut events);
        assert!(events.is_empty());
        bus.on_timer(1456, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                waiter: 9,
                outcome: Err(_)
            }]
        ));
        assert!(bus.waiting.is_empty());
        events.clear();
        bus.on_input(Role::Commands, b":-1\r\n:-1\r\n", 1500, &mut events);
        assert!(events.is_empty());
        // The third relay came too late (dropped); the publish was refused
        // in Redis too, so nothing was accepted late.
        assert_eq!((bus.stats.relays_dropped, bus.stats.publishes_late), (1, 0));
    }

    #[test]
    fn publishes_are_refused_while_too_much_waits_unsent() {
        let mut bus = bus();
        command_link_up(&mut bus);
        let big = vec![0u8; MAX_UNSENT_BYTES];
        bus.publish("news", &big, Some(1), 100).unwrap();
        assert_eq!(
            bus.publish("news", b"e", Some(2), 100),
            Err("redis is not keeping up")
        );
        assert!(bus.publish("chat", b"e", None, 100).is_err());
        assert_eq!(
            (bus.stats.publishes_refused, bus.stats.relays_dropped),
            (1, 1)
        );
        // Written out: publishing works again.
        take_output(&mut bus, Role::Commands);
        assert!(bus.publish("news", b"e", Some(3), 100).is_ok());
    }

    #[test]
    fn a_missing_script_is_loaded_again_and_the_publish_refused() {
        let mut bus = bus();
        command_link_up(&mut bus);
        bus.publish("news", b"e", Some(1), 100).unwrap();
        take_output(&mut bus, Role::Commands);
        let mut events = Vec::new();
        bus.on_input(
            Role::Commands,
            b"-NOSCRIPT No matching script.\r\n",
            110,
            &mut events,
        );
        assert!(matches!(
            events[..],
            [Event::Answer {
                outcome: Err(_),
                ..
            }]
        ));
        assert!(take_output(&mut bus, Role::Commands).contains("SCRIPT"));
        let reply = format!("$40\r\n{}\r\n", Script::Publish.sha(&bus.shas));
        bus.on_input(Role::Commands, reply.as_bytes(), 120, &mut events);
        assert!(bus.cmd.is_up());
    }

    fn history_bus() -> Bus<u32> {
        let mut bus = bus();
        bus.set_history(Some(HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(60),
        }));
        bus
    }

    #[test]
    fn with_history_a_publish_runs_the_history_script_and_answers_its_position() {
        let mut bus = history_bus();
        command_link_up(&mut bus);
        bus.publish("news", b"unplaced", Some(1), 100).unwrap();
        let sent = take_output(&mut bus, Role::Commands);
        assert!(
            sent.contains(Script::PublishHistory.sha(&bus.shas)),
            "{sent}"
        );
        for arg in [
            "wshub:meta:news",
            "wshub:history:news",
            "wshub:news",
            "60000",
            "86400000",
        ] {
            assert!(sent.contains(arg), "{arg} in {sent}");
        }
        let mut events = Vec::new();
        let reply = b"*3\r\n:2\r\n$16\r\n00000000000000ab\r\n:7\r\n";
        bus.on_input(Role::Commands, reply, 120, &mut events);
        let position = Position {
            epoch: Epoch::new(0xab),
            offset: 7,
        };
        assert!(matches!(
            events[..],
            [Event::Answer {
                waiter: 1,
                outcome: Ok(Published {
                    nodes: 2,
                    position: Some(p)
                })
            }] if p == position
        ));
        // Past the deadline in Redis: refused, as without history.
        bus.publish("news", b"unplaced", Some(2), 200).unwrap();
        events.clear();
        bus.on_input(Role::Commands, b":-1\r\n", 220, &mut events);
        assert!(matches!(
            events[..],
            [Event::Answer {
                outcome: Err(_),
                ..
            }]
        ));
    }

    #[test]
    fn recoveries_wait_for_the_subscription_and_are_unavailable_after_the_timeout() {
        let mut bus = history_bus();
        command_link_up(&mut bus);
        subscription_link_up(&mut bus, &["news"], 0);
        let mut events = Vec::new();
        let ask = Ask {
            position: Position {
                epoch: Epoch::new(1),
                offset: 3,
            },
            max_replay: 10,
        };
        bus.recover("news", 1, ask, 100, &mut events);
        bus.recover("news", 2, ask, 100, &mut events);
        bus.issue_reads(100, &mut events);
        assert!(
            !take_output(&mut bus, Role::Commands).contains("EVALSHA"),
            "no read before the SUBSCRIBE is confirmed"
        );
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$10\r\nwshub:news\r\n:1\r\n";
        bus.on_input(Role::Subscriptions, confirm, 110, &mut events);
        assert!(matches!(&events[..], [Event::Subscribed { channel }] if channel == "news"));
        events.clear();
        bus.issue_reads(110, &mut events);
        let sent = take_output(&mut bus, Role::Commands);
        assert_eq!(
            sent.matches("EVALSHA").count(),
            1,
            "one read for both: {sent}"
        );
        assert_eq!(bus.stats.recovery_reads, 1);
        // No reply: unavailable at 110 + 1000 + 250, not before.
        bus.on_timer(1359, &mut events);
        assert!(events.is_empty());
        assert_eq!(bus.next_deadline().map(|t| t <= 1360), Some(true));
        bus.on_timer(1360, &mut events);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| matches!(
            e,
            Event::Recovered {
                outcome: Recovery::NotRecovered {
                    reason: Reason::Unavailable,
                    current: None
                },
                ..
            }
        )));
        // The late reply is read and ignored.
        events.clear();
        let reply = b"*4\r\n$16\r\n0000000000000001\r\n:3\r\n:5\r\n*0\r\n";
        bus.on_input(Role::Commands, reply, 1400, &mut events);
        assert!(events.is_empty());
        assert!(bus.cmd.is_up());
    }

    #[test]
    fn only_the_last_subscribe_of_a_channel_confirms_it() {
        let mut bus = history_bus();
        subscription_link_up(&mut bus, &[], 0);
        bus.channel_changed("news");
        bus.flush_subscriptions(|_| true);
        bus.channel_changed("news");
        bus.flush_subscriptions(|_| false);
        bus.channel_changed("news");
        bus.flush_subscriptions(|_| true);
        let mut events = Vec::new();
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$10\r\nwshub:news\r\n:1\r\n";
        let unconfirm = b"*3\r\n$11\r\nunsubscribe\r\n$10\r\nwshub:news\r\n:0\r\n";
        bus.on_input(Role::Subscriptions, confirm, 5, &mut events);
        bus.on_input(Role::Subscriptions, unconfirm, 5, &mut events);
        assert!(events.is_empty());
        assert_eq!(bus.subscribed.get("news"), Some(&false));
        bus.on_input(Role::Subscriptions, confirm, 6, &mut events);
        assert_eq!(events.len(), 1);
        assert_eq!(bus.subscribed.get("news"), Some(&true));
    }

    /// Redis confirming the subscription link's SUBSCRIBE to `news`.
    const CONFIRM_NEWS: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$10\r\nwshub:news\r\n:1\r\n";

    /// The envelope of a message of `news` at `offset` in epoch 9.
    fn positioned(offset: u64) -> Vec<u8> {
        let mut envelope = Vec::new();
        Envelope {
            binary: true,
            origin: 1,
            position: Some(crate::testing::at(9, offset)),
            exclude: None,
            payload: b"x",
        }
        .write(&mut envelope);
        envelope
    }

    fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend(bytes);
        out.extend(b"\r\n");
    }

    /// Redis pushing the message of `news` at `offset` on the
    /// subscription link.
    fn message_push(offset: u64) -> Vec<u8> {
        let mut push = b"*3\r\n".to_vec();
        bulk(&mut push, b"message");
        bulk(&mut push, b"wshub:news");
        bulk(&mut push, &positioned(offset));
        push
    }

    /// The read script's reply for `news`: epoch 9 up to `top`, with the
    /// entries at `offsets`.
    fn read_reply(top: u64, offsets: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut reply = b"*4\r\n".to_vec();
        bulk(&mut reply, b"0000000000000009");
        reply.extend(format!(":{top}\r\n:{REDIS_EPOCH_MS}\r\n").as_bytes());
        reply.extend(format!("*{}\r\n", offsets.clone().count()).as_bytes());
        for offset in offsets {
            reply.extend(b"*2\r\n");
            bulk(&mut reply, format!("{offset}-0").as_bytes());
            reply.extend(b"*4\r\n");
            bulk(&mut reply, b"t");
            bulk(&mut reply, REDIS_EPOCH_MS.to_string().as_bytes());
            bulk(&mut reply, b"d");
            bulk(&mut reply, &positioned(offset));
        }
        reply
    }

    /// The offsets of the messages among `events`, in order.
    fn delivered(events: &[Event<u32>]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message { envelope, .. } => {
                    Envelope::peek_position(envelope).map(|p| p.offset)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_is_given_up_when_its_read_cannot_be_sent() {
        let mut bus = history_bus();
        subscription_link_up(&mut bus, &["news"], 0);
        let mut events = Vec::new();
        bus.on_input(Role::Subscriptions, CONFIRM_NEWS, 1, &mut events);
        events.clear();
        for offset in [1, 2, 2, 5] {
            bus.on_input(Role::Subscriptions, &message_push(offset), 5, &mut events);
        }
        // The command link is down: 5 goes out at once, 3 and 4 are lost.
        assert_eq!(delivered(&events), [1, 2, 5]);
        assert_eq!(
            bus.stats.sequence,
            Counts {
                repeats: 1,
                filled: 0,
                lost: 2
            }
        );
    }

    /// A process that took `news` over at offset 5 starts both links at 0;
    /// the subscription link is up first and delivers 9 and 10 live at 3
    /// while the command link is still logging in (6..=8 were published
    /// while neither process listened). Nothing is delivered yet.
    fn resumed_with_the_command_link_logging_in() -> (Bus<u32>, Vec<Event<u32>>) {
        let mut bus = history_bus();
        bus.resume_after("news", crate::testing::at(9, 5));
        bus.on_connecting(Role::Commands, 0);
        bus.on_connected(Role::Commands, 0, std::iter::empty());
        take_output(&mut bus, Role::Commands);
        subscription_link_up(&mut bus, &["news"], 0);
        let mut events = Vec::new();
        bus.on_input(Role::Subscriptions, CONFIRM_NEWS, 2, &mut events);
        for offset in [9, 10] {
            bus.on_input(Role::Subscriptions, &message_push(offset), 3, &mut events);
        }
        bus.issue_reads(3, &mut events);
        assert!(delivered(&events).is_empty(), "held: {events:?}");
        assert_eq!(bus.stats.sequence, Counts::default());
        assert!(!take_output(&mut bus, Role::Commands).contains("EVALSHA"));
        assert_eq!(bus.stats.gap_reads, 0);
        events.clear();
        (bus, events)
    }

    #[test]
    fn a_gap_read_waits_for_a_command_link_still_logging_in() {
        let (mut bus, mut events) = resumed_with_the_command_link_logging_in();
        // The login completes: the read goes out in the same turn.
        let login = login_reply(&bus);
        bus.on_input(Role::Commands, &login, 20, &mut events);
        assert!(bus.cmd.is_up());
        bus.issue_reads(20, &mut events);
        let sent = take_output(&mut bus, Role::Commands);
        assert_eq!(sent.matches("EVALSHA").count(), 1, "{sent}");
        assert!(sent.contains("wshub:history:news"), "{sent}");
        assert_eq!(bus.stats.gap_reads, 1);
        assert!(events.is_empty());
        // Its entries fill the gap before the held messages go out.
        bus.on_input(Role::Commands, &read_reply(10, 6..=10), 25, &mut events);
        assert_eq!(delivered(&events), [6, 7, 8, 9, 10]);
        assert_eq!(
            bus.stats.sequence,
            Counts {
                repeats: 0,
                filled: 3,
                lost: 0
            }
        );
        // The feed goes on live.
        events.clear();
        bus.on_input(Role::Subscriptions, &message_push(11), 30, &mut events);
        assert_eq!(delivered(&events), [11]);
    }

    #[test]
    fn a_gap_waiting_for_the_command_link_is_given_up_when_the_link_fails() {
        let (mut bus, mut events) = resumed_with_the_command_link_logging_in();
        bus.on_closed(Role::Commands, 30, "connection reset".to_owned());
        bus.issue_reads(30, &mut events);
        assert_eq!(delivered(&events), [9, 10], "held messages, in order");
        assert_eq!(bus.stats.sequence.lost, 3);
        assert_eq!(bus.stats.gap_reads, 0);
        // Nothing is left waiting: the link coming back sends no read.
        events.clear();
        bus.on_connecting(Role::Commands, 200);
        bus.on_connected(Role::Commands, 200, std::iter::empty());
        take_output(&mut bus, Role::Commands);
        let login = login_reply(&bus);
        bus.on_input(Role::Commands, &login, 210, &mut events);
        bus.issue_reads(210, &mut events);
        assert!(!take_output(&mut bus, Role::Commands).contains("EVALSHA"));
        assert!(events.is_empty());
    }

    #[test]
    fn a_gap_waiting_for_the_command_link_is_given_up_after_the_command_timeout() {
        let (mut bus, mut events) = resumed_with_the_command_link_logging_in();
        // Asked for at 2 (the confirmation's catch-up read): it waits
        // command_timeout (1 s) plus the reply margin, no longer.
        assert!(bus.next_deadline().is_some_and(|t| t <= 1252));
        bus.on_timer(1251, &mut events);
        assert!(delivered(&events).is_empty());
        bus.on_timer(1252, &mut events);
        assert_eq!(delivered(&events), [9, 10], "held messages, in order");
        assert_eq!(bus.stats.sequence.lost, 3);
        // The link is still given its connect_timeout (2 s); coming up
        // later, it sends no stale read.
        assert!(bus.cmd.is_connected());
        events.clear();
        let login = login_reply(&bus);
        bus.on_input(Role::Commands, &login, 1500, &mut events);
        bus.issue_reads(1500, &mut events);
        assert!(!take_output(&mut bus, Role::Commands).contains("EVALSHA"));
        assert_eq!(bus.stats.gap_reads, 0);
    }

    #[test]
    fn a_silent_link_is_down_within_ping_interval_plus_timeout() {
        let mut bus = bus();
        command_link_up(&mut bus);
        subscription_link_up(&mut bus, &[], 0);
        assert_eq!(bus.health(), None);
        let mut events = Vec::new();
        // Checks go out at 1001 (subscriptions) and 1010 (commands) ...
        bus.on_timer(1001, &mut events);
        assert!(take_output(&mut bus, Role::Subscriptions).contains("PING"));
        bus.on_timer(1010, &mut events);
        assert!(take_output(&mut bus, Role::Commands).contains("TIME"));
        // ... and are never answered (Redis paused).
        bus.on_timer(3000, &mut events);
        assert!(
            bus.sub.is_up(),
            "2 s after its ping the link is still given time"
        );
        bus.on_timer(3001, &mut events);
        assert!(!bus.sub.is_connected());
        assert!(bus.health().is_some());
        bus.on_timer(3010, &mut events);
        assert!(!bus.cmd.is_connected());
        // Reconnection waits out the backoff (50-100 ms the first time).
        assert!(!bus.due_to_connect(Role::Commands, 3010 + 49));
        assert!(bus.due_to_connect(Role::Commands, 3010 + 100));
    }

    #[test]
    fn an_answered_check_keeps_the_link_up() {
        let mut bus = bus();
        subscription_link_up(&mut bus, &[], 0);
        let mut events = Vec::new();
        for round in 1..5u64 {
            let now = round * 1001;
            bus.on_timer(now, &mut events);
            bus.on_input(
                Role::Subscriptions,
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
                now + 5,
                &mut events,
            );
        }
        assert!(bus.sub.is_up());
    }

    #[test]
    fn subscription_changes_go_out_once_per_turn_in_batches() {
        let mut bus = bus();
        subscription_link_up(&mut bus, &[], 0);
        for name in ["a", "b", "a"] {
            bus.channel_changed(name);
        }
        bus.flush_subscriptions(|_| true);
        let sent = take_output(&mut bus, Role::Subscriptions);
        assert_eq!(sent.matches("SUBSCRIBE").count(), 1, "{sent}");
        assert!(sent.contains("wshub:a") && sent.contains("wshub:b"));
        assert_eq!(bus.subscribed_count(), 2);
        // "a" lost its last subscriber and "c" came and went in one turn.
        bus.channel_changed("a");
        bus.channel_changed("c");
        bus.flush_subscriptions(|name| name == "b");
        let sent = take_output(&mut bus, Role::Subscriptions);
        assert!(
            sent.contains("UNSUBSCRIBE") && sent.contains("wshub:a"),
            "{sent}"
        );
        assert!(!sent.contains("wshub:c"), "{sent}");
        assert_eq!(bus.subscribed_count(), 1);
    }

    #[test]
    fn a_new_subscription_link_resubscribes_every_wanted_channel() {
        let mut bus = bus();
        subscription_link_up(&mut bus, &["x"], 0);
        bus.on_closed(Role::Subscriptions, 10, "reset".to_owned());
        assert_eq!(bus.subscribed_count(), 0);
        // Changes while down are not sent: connecting covers them.
        bus.channel_changed("y");
        bus.flush_subscriptions(|_| true);
        assert!(bus.sub.output().is_empty());
        let sent = subscription_link_up(&mut bus, &["x", "y"], 500);
        let subscribe = sent.find("SUBSCRIBE").expect("subscribes");
        let ping = sent.find("PING").expect("pings");
        assert!(
            subscribe < ping,
            "up only once the subscriptions are in place"
        );
        assert!(sent.contains("wshub:x") && sent.contains("wshub:y"));
        assert_eq!(bus.subscribed_count(), 2);
    }

    #[test]
    fn messages_lose_their_prefix_and_foreign_ones_are_ignored() {
        let mut bus = bus();
        subscription_link_up(&mut bus, &["news"], 0);
        let mut events = Vec::new();
        let push = b"*3\r\n$7\r\nmessage\r\n$10\r\nwshub:news\r\n$2\r\nhi\r\n*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$2\r\nhi\r\n";
        bus.on_input(Role::Subscriptions, push, 5, &mut events);
        assert_eq!(events.len(), 1);
        let Event::Message { channel, envelope } = &events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(
            (channel.as_str(), envelope.as_slice()),
            ("news", &b"hi"[..])
        );
        assert_eq!(bus.stats.messages_received, 1);
        assert_eq!(bus.stats.messages_undecodable, 1);
    }

    #[test]
    fn login_uses_the_url_credentials_and_a_refusal_drops_the_link() {
        let mut config = ClusterConfig::default();
        config.redis_url =
            crate::config::RedisUrl::parse("redis://alice:s3cret@127.0.0.1/2").unwrap();
        let mut bus: Bus<u32> = Bus::new(&config, 1);
        bus.on_connecting(Role::Commands, 0);
        bus.on_connected(Role::Commands, 0, std::iter::empty());
        let sent = take_output(&mut bus, Role::Commands);
        let auth = sent.find("AUTH").unwrap();
        let select = sent.find("SELECT").unwrap();
        assert!(auth < select && sent.contains("alice") && sent.contains("s3cret"));
        bus.cmd.command(&[b"AUTH", b"s3cret"]);
        let shown = format!("{bus:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("115, 51, 99"),
            "{shown}"
        );
        let mut events = Vec::new();
        bus.on_input(Role::Commands, b"-WRONGPASS invalid\r\n", 3, &mut events);
        assert!(!bus.cmd.is_connected());
        assert!(bus.health().is_some_and(|h| h.contains("WRONGPASS")));
    }
}
