//! The cluster node's Redis links inside the event loop: two non-blocking
//! sockets in the same poll, driven by the sans-IO [`Bus`].
//!
//! Owns: the links' sockets (connect, read, write, close), their poll
//! tokens and their one timer-wheel entry, the Redis addresses (resolved at
//! start and reload only), handing messages from Redis to the fan-out
//! (framed once per node, as for a local publish) and publish answers to
//! the connections that wait for them.
//! Also owns the join of Redis's positions with the node's own history: a
//! positioned message is accepted once, in order, delivered and kept in the
//! local log; a recovery the local log cannot serve is asked of Redis while
//! the connection's live messages of that channel are held back, and is
//! answered from Redis's entries up to the read's top followed by the local
//! log after it (see "Recovery on a cluster node" below).
//! Must never: resolve a name or block in the loop, read the command socket
//! before the subscription socket in a turn, keep state per idle
//! subscriber (only per recovery in progress), hold a client's live messages
//! past its recovery's deadline, hand a client a partial replay, or answer
//! a publish other than as the bus decides.
//!
//! # Recovery on a cluster node
//!
//! A client subscribing with a position is first served from the local log
//! ([`crate::hub::Hub::recover`]): success means the log holds every message
//! after the position up to the node's newest, and later ones follow live.
//! Otherwise its live messages of the channel are held back (the slot's
//! `held` flag, then the [`Holds`] entry) and Redis is asked; its answer
//! (entries after the position up to the read's `top`) is sent
//! - at once, when the node has no message of the channel yet: `top` then
//!   becomes the channel's position here, so live messages up to it still
//!   in flight are dropped as repeats (the subscription link is read before
//!   the command link, so such messages normally arrived already);
//! - once the node's live feed reached `top` in the same epoch: Redis's
//!   entries, then the local log's messages after `top` (or `evicted` if
//!   the log no longer has them: never a partial replay).
//!
//! Every hold has a deadline (`command_timeout` plus `ping_timeout`): past
//! it the client is told `unavailable` (or `epoch`, when the node's feed
//! never reached Redis's epoch) with a position, never held forever.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use log::{debug, error, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::Server;
use super::compress::{Broadcast, Delivery, FrameCache};
use super::fanout::{Recovery as Outcome, env_of};
use super::slot::{BUS_COMMAND_TOKEN, BUS_SUBSCRIPTION_TOKEN, BUS_TIMER};
use crate::bus::{Ask, Bus, Entry, Envelope, Event, Reason, Recovery, Role};
use crate::config::ClusterConfig;
use crate::hub::position::Position;
use crate::hub::{ChannelId, NotRecovered};
use crate::metrics::ClusterGauges;
use crate::protocol::frame::OpCode;
use crate::timer::TimerKey;

/// Reads per link per turn before the loop serves others (64 KiB each).
const READS_PER_TURN: usize = 256;

/// One link's socket.
#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    /// `rediss://`: the TLS session over the stream (made once TCP is).
    tls: Option<ClientConnection>,
    /// The TCP connection is made (the first writable event came).
    connected: bool,
    write_interest: bool,
}

/// What `rediss://` needs to start a session: the client config (trust
/// roots) and the name the certificate must carry.
#[derive(Debug)]
struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// The TLS client for a `rediss://` URL (none for `redis://`); the error
/// names what is wrong (it keeps the links down and shows in `/healthz`).
fn tls_client(config: &ClusterConfig) -> Result<Option<TlsClient>, String> {
    if !config.redis_url.tls {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match &config.tls_ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read tls_ca_file {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "tls_ca_file {} holds no certificate",
                    path.display()
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(config.redis_url.host.clone())
        .map_err(|e| format!("{} is not a TLS server name: {e}", config.redis_url.host))?;
    Ok(Some(TlsClient {
        config: Arc::new(client),
        name,
    }))
}

/// The TLS client, or the reason there is none, logged.
fn load_tls(config: &ClusterConfig) -> Result<Option<TlsClient>, String> {
    let tls = tls_client(config);
    if let Err(e) = &tls {
        error!("cluster: {e}");
    }
    tls
}

/// Who waits for a publish's answer: the connection (by token, so a
/// closed one is never answered) and what the answer says.
#[derive(Debug)]
pub(super) struct Waiter {
    pub token: Token,
    /// The publish's place among its connection's responses.
    pub seq: u32,
    pub channel: String,
    pub keep_alive: bool,
}

/// Who waits for a recovery read: the connection (by token, so a closed
/// one is never answered) and the channel it recovers.
#[derive(Debug)]
pub(super) struct Reader {
    pub token: Token,
    pub channel: ChannelId,
}

/// Redis's answer to a held recovery: the read's top and the messages after
/// the client's position up to it (`range` of the read's deliveries).
#[derive(Debug)]
struct Answer {
    top: Position,
    deliveries: Rc<[Rc<Delivery>]>,
    range: Range<usize>,
}

/// One recovery in progress on a cluster node.
#[derive(Debug)]
struct Held {
    /// The connection (its generation too: a reused slot is not it).
    token: Token,
    from: Position,
    max_replay: usize,
    /// When it is answered whatever the state.
    deadline: u64,
    /// Only the channel's position is wanted (a subscription without a
    /// position to recover from).
    tell: bool,
    /// Redis answered; the node's live feed has not reached `top` yet.
    answer: Option<Answer>,
}

/// The recoveries in progress, by (slab key, channel): their connections'
/// live messages of those channels are held back until they are answered.
/// Empty on a node nobody recovers on; a few dozen bytes per recovery
/// while it lasts.
#[derive(Debug, Default)]
pub(super) struct Holds {
    held: BTreeMap<(usize, ChannelId), Held>,
    /// Deadlines in arrival order (answered ones linger until due).
    deadlines: VecDeque<(u64, usize, ChannelId)>,
    /// Holds that have Redis's answer and wait for the live feed.
    waiting: Vec<(usize, ChannelId)>,
}

impl Holds {
    /// Whether connection `key`'s live messages of `channel` are held back.
    pub(super) fn holds(&self, key: usize, channel: ChannelId) -> bool {
        self.held.contains_key(&(key, channel))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether connection `key` has any recovery in progress.
    fn any_of(&self, key: usize) -> bool {
        self.held
            .range((key, ChannelId::MIN)..=(key, ChannelId::MAX))
            .next()
            .is_some()
    }

    fn remove(&mut self, key: usize, channel: ChannelId) -> Option<Held> {
        let held = self.held.remove(&(key, channel))?;
        if held.answer.is_some() {
            self.waiting.retain(|&w| w != (key, channel));
        }
        Some(held)
    }

    /// The earliest deadline still to come.
    fn next_deadline(&self) -> Option<u64> {
        self.deadlines.front().map(|&(at, ..)| at)
    }
}

/// The deliveries made from the last read's entries, shared by every
/// recovery that read served (its outcomes arrive together).
#[derive(Debug)]
struct Converted {
    entries: Arc<[Entry]>,
    deliveries: Rc<[Rc<Delivery>]>,
}

impl Converted {
    /// The deliveries of a read's `entries`: made once per read, however
    /// many recoveries it serves (`cache` holds the last read's).
    fn of(cache: &mut Option<Converted>, entries: &Arc<[Entry]>) -> Rc<[Rc<Delivery>]> {
        if let Some(c) = cache
            && Arc::ptr_eq(&c.entries, entries)
        {
            return Rc::clone(&c.deliveries);
        }
        let deliveries: Rc<[Rc<Delivery>]> = entries
            .iter()
            .map(|e| {
                let opcode = if e.binary {
                    OpCode::Binary
                } else {
                    OpCode::Text
                };
                let message = Broadcast::new(opcode, e.payload());
                Rc::new(Delivery::new(message, Some(e.position)))
            })
            .collect();
        *cache = Some(Converted {
            entries: Arc::clone(entries),
            deliveries: Rc::clone(&deliveries),
        });
        deliveries
    }
}

/// A bus refusal as the client reads it.
fn not_recovered(reason: Reason) -> NotRecovered {
    match reason {
        Reason::Epoch => NotRecovered::Epoch,
        Reason::Evicted => NotRecovered::Evicted,
        Reason::Expired => NotRecovered::Expired,
        Reason::TooMany => NotRecovered::TooMany,
        Reason::Unavailable => NotRecovered::Unavailable,
    }
}

/// What a held recovery's Redis answer allows now, given the channel's
/// position `local` at this node (pure: the rules of the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    /// The node has nothing of the channel yet: take `top` as its position
    /// and send Redis's entries alone.
    Adopt,
    /// The node's feed reached `top`: Redis's entries, then the local log's
    /// after `top`.
    Join,
    /// Wait for the live feed (messages up to `top` are in flight, or the
    /// node's feed is in another epoch).
    Wait,
}

fn settle_rule(local: Position, top: Position) -> Settle {
    if local.epoch == top.epoch {
        if local.offset >= top.offset {
            Settle::Join
        } else {
            Settle::Wait
        }
    } else if local.offset == 0 {
        Settle::Adopt
    } else {
        Settle::Wait
    }
}

/// The loop's side of the bus.
#[derive(Debug)]
pub(super) struct Cluster {
    pub bus: Bus<Waiter, Reader>,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    command: Option<Socket>,
    subscription: Option<Socket>,
    timer: Option<TimerKey>,
    events: Vec<Event<Waiter, Reader>>,
    /// A link's read budget ran out: read it again next turn.
    pub again: bool,
    /// The envelope being written for a publish (kept for its capacity).
    scratch: Vec<u8>,
    /// `rediss://`: how to start TLS sessions (or why it cannot).
    tls: Result<Option<TlsClient>, String>,
    /// Recoveries in progress.
    pub holds: Holds,
    /// The last read's entries as deliveries (dropped after each batch of
    /// events).
    converted: Option<Converted>,
    /// How long a recovery may be held, in ms.
    hold_for: u64,
}

/// The addresses of the Redis host, resolved now (start or reload).
fn resolve(config: &ClusterConfig) -> Vec<SocketAddr> {
    let url = &config.redis_url;
    match (url.host.as_str(), url.port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                error!("cluster: {} resolves to no address", url.host);
            }
            addrs
        }
        Err(e) => {
            error!("cluster: cannot resolve {}: {e}", url.host);
            Vec::new()
        }
    }
}

/// How long a recovery may hold a client's live messages: long enough for
/// the bus to answer it (`command_timeout` plus its margin) and for the
/// live feed to catch up with the read.
fn hold_for(config: &ClusterConfig) -> u64 {
    u64::try_from((config.command_timeout + config.ping_timeout).as_millis()).unwrap_or(u64::MAX)
}

fn seed() -> u64 {
    use std::hash::BuildHasher as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now))
}

impl Cluster {
    pub(super) fn new(config: &ClusterConfig) -> Cluster {
        Cluster {
            bus: Bus::new(config, seed()),
            addrs: resolve(config),
            next_addr: 0,
            command: None,
            subscription: None,
            timer: None,
            events: Vec::new(),
            again: false,
            scratch: Vec::new(),
            tls: load_tls(config),
            holds: Holds::default(),
            converted: None,
            hold_for: hold_for(config),
        }
    }

    fn socket(&mut self, role: Role) -> &mut Option<Socket> {
        match role {
            Role::Commands => &mut self.command,
            Role::Subscriptions => &mut self.subscription,
        }
    }

    fn gauges(&self) -> ClusterGauges {
        ClusterGauges {
            publish_link_up: self.bus.cmd.is_up(),
            subscription_link_up: self.bus.sub.is_up(),
            channels_subscribed: self.bus.subscribed_count() as u64,
            recoveries_held: self.holds.held.len() as u64,
            stats: self.bus.stats.clone(),
        }
    }
}

fn token_of(role: Role) -> Token {
    match role {
        Role::Commands => BUS_COMMAND_TOKEN,
        Role::Subscriptions => BUS_SUBSCRIPTION_TOKEN,
    }
}

/// The link a poll token names, if it is one of the bus's.
pub(super) fn role_of(token: Token) -> Option<Role> {
    match token {
        BUS_COMMAND_TOKEN => Some(Role::Commands),
        BUS_SUBSCRIPTION_TOKEN => Some(Role::Subscriptions),
        _ => None,
    }
}

impl Server {
    /// A readiness event on a link's socket.
    pub(super) fn on_bus_event(&mut self, role: Role, now: u64) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let slot = match role {
            Role::Commands => &mut cluster.command,
            Role::Subscriptions => &mut cluster.subscription,
        };
        let Some(socket) = slot.as_mut() else {
            return;
        };
        if !socket.connected {
            let made = match socket.stream.take_error() {
                Ok(None) => match socket.stream.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
                Ok(Some(e)) | Err(e) => Err(e),
            };
            match made {
                Ok(false) => return,
                Ok(true) => {
                    socket.connected = true;
                    if let Ok(Some(tls)) = &cluster.tls {
                        match ClientConnection::new(Arc::clone(&tls.config), tls.name.clone()) {
                            Ok(mut session) => {
                                // Commands queue before the handshake ends;
                                // the link's own limits bound them.
                                session.set_buffer_limit(None);
                                socket.tls = Some(session);
                            }
                            Err(e) => {
                                cluster.bus.on_closed(role, now, format!("TLS: {e}"));
                                self.bus_turn(now);
                                return;
                            }
                        }
                    }
                    let hub = &self.hub;
                    cluster.bus.on_connected(role, now, hub.names());
                }
                Err(e) => {
                    cluster.bus.on_closed(role, now, format!("connect: {e}"));
                }
            }
        } else {
            self.read_link(role, now);
        }
        self.bus_turn(now);
    }

    fn read_link(&mut self, role: Role, now: u64) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let mut failure = None;
        for i in 0..=READS_PER_TURN {
            let Some(socket) = cluster.socket(role).as_mut() else {
                break;
            };
            if i == READS_PER_TURN {
                cluster.again = true;
                break;
            }
            let read = match &mut socket.tls {
                None => socket.stream.read(&mut self.recv_buf),
                Some(session) => read_tls(session, &mut socket.stream, &mut self.recv_buf),
            };
            match read {
                Ok(0) => {
                    failure = Some("redis closed the connection".to_owned());
                    break;
                }
                Ok(n) => {
                    let input = self.recv_buf.get(..n).unwrap_or_default();
                    cluster.bus.on_input(role, input, now, &mut cluster.events);
                    if !cluster.bus.link(role).is_connected() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("read: {e}"));
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            cluster.bus.on_closed(role, now, reason);
        }
        self.bus_events(now);
    }

    /// Reads the links whose budget ran out last turn (subscriptions first).
    pub(super) fn bus_again(&mut self, now: u64) {
        if let Some(cluster) = self.cluster.as_deref_mut() {
            if !std::mem::take(&mut cluster.again) {
                return;
            }
            for role in [Role::Subscriptions, Role::Commands] {
                self.read_link(role, now);
            }
        }
    }

    /// Carries out what the bus handed back: messages to fan out, answers
    /// to publishers.
    fn bus_events(&mut self, now: u64) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        if cluster.events.is_empty() {
            return;
        }
        let mut events = std::mem::take(&mut cluster.events);
        let node_id = cluster.bus.node_id;
        for event in events.drain(..) {
            match event {
                Event::Message { channel, envelope } => {
                    self.deliver_from_bus(&channel, &envelope, node_id, now);
                }
                Event::Subscribed { channel } => self.on_bus_subscribed(&channel),
                Event::Recovered { who, outcome } => self.on_bus_recovery(who, outcome, now),
                Event::Answer { waiter, outcome } => {
                    let Some(key) = self.live_key(waiter.token) else {
                        continue;
                    };
                    if let Some(slot) = self.conns.get_mut(key) {
                        slot.conn.answer_bus_publish(
                            waiter.seq,
                            &waiter.channel,
                            waiter.keep_alive,
                            outcome,
                        );
                    }
                    // Input may have arrived while the answer was awaited.
                    self.drive(key, true, true, now);
                }
            }
        }
        if let Some(cluster) = self.cluster.as_deref_mut() {
            cluster.events = events;
            // A read's outcomes arrive in one batch: its deliveries are
            // kept by the recoveries that need them, not here.
            cluster.converted = None;
        }
    }

    fn deliver_from_bus(&mut self, channel: &str, envelope: &[u8], node_id: u64, now: u64) {
        let Some(id) = self.hub.lookup(channel) else {
            return;
        };
        let envelope = match Envelope::parse(envelope) {
            Ok(e) => e,
            Err(e) => {
                debug!("cluster: message on {channel} refused: {e}");
                if let Some(cluster) = self.cluster.as_deref_mut() {
                    cluster.bus.stats.messages_undecodable += 1;
                }
                return;
            }
        };
        let opcode = if envelope.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        let exclude = envelope
            .exclude
            .filter(|_| envelope.origin == node_id)
            .and_then(|t| usize::try_from(t).ok())
            .and_then(|t| self.live_key(Token(t)));
        let message = Broadcast::new(opcode, envelope.payload);
        let stamp = self.fanout.next_stamp();
        let mut cache = FrameCache::default();
        self.fan_out_positioned(
            id,
            &message,
            envelope.position,
            &mut cache,
            exclude,
            stamp,
            now,
        );
    }

    /// The fan-out of a message from the bus, with its position (`None`
    /// when history is off): accepted as the channel's newest (a repeat is
    /// dropped), delivered, kept in the local log, and then the recoveries
    /// waiting for the live feed to reach their read's top are looked at.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_positioned(
        &mut self,
        id: ChannelId,
        message: &Broadcast,
        position: Option<Position>,
        cache: &mut FrameCache,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        let Some(position) = position else {
            return self.fan_out(id, message, cache, exclude, stamp, now);
        };
        if !self.hub.accept_position(id, position) {
            return 0;
        }
        let delivery = Rc::new(Delivery::new(message.clone(), Some(position)));
        let recipients = self.fan_out_at(id, &delivery, exclude, stamp, now);
        self.remember(id, position, delivery, now);
        self.settle_waiting(id, now);
        recipients
    }

    /// Redis confirmed this node's SUBSCRIBE to `channel`: from here on,
    /// every message of the channel reaches the live feed in order (the
    /// seam a recovery for a newly subscribed channel relies on, see the
    /// bus's module doc). Recovery reads for the channel wait for this
    /// inside the bus; nothing else in the loop needs it.
    fn on_bus_subscribed(&mut self, channel: &str) {
        debug!("cluster: subscription to {channel} confirmed");
    }

    /// Holds back connection `key`'s live messages of `channel` (named
    /// `name`, which it has just subscribed to) and asks Redis for the
    /// messages after `ask.position`; the answer comes to
    /// [`Server::on_bus_recovery`]. False on a node without a cluster.
    pub(super) fn hold_recovery(
        &mut self,
        key: usize,
        channel: ChannelId,
        name: &str,
        ask: Ask,
        now: u64,
    ) -> bool {
        self.hold(key, channel, name, ask, false, now)
    }

    /// A metadata connection subscribed without a position to `channel`,
    /// of which this node has no message yet (its position here is the
    /// node's own epoch, which no other node knows): it is told Redis's
    /// position instead, once Redis answered, its live messages held back
    /// meanwhile. False on a node without a cluster.
    pub(super) fn hold_position(
        &mut self,
        key: usize,
        channel: ChannelId,
        name: &str,
        local: Position,
        now: u64,
    ) -> bool {
        // The node's own epoch is never Redis's: the read answers `epoch`
        // with the channel's current position, and reads no entry.
        let ask = Ask {
            position: local,
            max_replay: 0,
        };
        self.hold(key, channel, name, ask, true, now)
    }

    fn hold(
        &mut self,
        key: usize,
        channel: ChannelId,
        name: &str,
        ask: Ask,
        tell: bool,
        now: u64,
    ) -> bool {
        let Some(slot) = self.conns.get_mut(key) else {
            return false;
        };
        let token = slot.token(key);
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return false;
        };
        slot.held = true;
        let deadline = now.saturating_add(cluster.hold_for);
        let holds = &mut cluster.holds;
        if let Some(old) = holds.remove(key, channel) {
            debug!("connection {key}: a second recovery of {name} replaces the first");
            drop(old);
        }
        holds.held.insert(
            (key, channel),
            Held {
                token,
                from: ask.position,
                max_replay: ask.max_replay,
                deadline,
                tell,
                answer: None,
            },
        );
        holds.deadlines.push_back((deadline, key, channel));
        self.recover_from_bus(token, name, ask, now);
        true
    }

    /// Asks Redis for the messages of `channel` after `ask.position`, for
    /// connection `token`, which must already be subscribed to the channel
    /// (so the read goes out once Redis confirmed the SUBSCRIBE, and
    /// whatever comes after the read's top arrives on the live feed). The
    /// outcome comes to [`Server::on_bus_recovery`]; requests for the same
    /// channel are coalesced into few reads.
    fn recover_from_bus(&mut self, token: Token, channel: &str, ask: Ask, now: u64) {
        let Some(id) = self.hub.lookup(channel) else {
            return;
        };
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let who = Reader { token, channel: id };
        cluster
            .bus
            .recover(channel, who, ask, now, &mut cluster.events);
        self.bus_events(now);
    }

    /// The outcome of a recovery read for `reader`: answered now, or kept
    /// until the live feed reaches the read's top (a closed connection's
    /// hold is gone already, and it gets nothing).
    fn on_bus_recovery(&mut self, reader: Reader, outcome: Recovery, now: u64) {
        let Some(key) = self.live_key(reader.token) else {
            return;
        };
        let id = reader.channel;
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(held) = cluster.holds.held.get(&(key, id)) else {
            return;
        };
        if held.token != reader.token || held.answer.is_some() {
            return;
        }
        if held.tell {
            let redis = match outcome {
                Recovery::Recovered { top, .. } => Some(top),
                Recovery::NotRecovered { current, .. } => current,
            };
            self.tell_held(key, id, redis, now);
            return;
        }
        match outcome {
            Recovery::NotRecovered { reason, current } => {
                debug!(
                    "connection {key}: redis cannot recover it: {}",
                    reason.as_str()
                );
                let current = current.or_else(|| self.hub.position(id));
                self.answer_refusal(key, id, not_recovered(reason), current, now);
            }
            Recovery::Recovered { top, replay } => {
                let (entries, range) = replay.shared();
                let deliveries = Converted::of(&mut cluster.converted, entries);
                if let Some(held) = cluster.holds.held.get_mut(&(key, id)) {
                    held.answer = Some(Answer {
                        top,
                        deliveries,
                        range,
                    });
                    cluster.holds.waiting.push((key, id));
                }
                self.settle(key, id, now);
            }
        }
    }

    /// The holds waiting for `channel`'s live feed: those it has reached
    /// are answered.
    fn settle_waiting(&mut self, channel: ChannelId, now: u64) {
        let Some(cluster) = self.cluster.as_deref() else {
            return;
        };
        if cluster.holds.waiting.is_empty() {
            return;
        }
        let mut i = 0;
        while let Some(&(key, id)) = self.cluster.as_deref().and_then(|c| c.holds.waiting.get(i)) {
            // An answered hold leaves the list: the same index is next.
            if id != channel || !self.settle(key, id, now) {
                i += 1;
            }
        }
    }

    /// Answers hold (`key`, `channel`) if Redis's answer and the node's live
    /// feed allow it now; true when answered.
    fn settle(&mut self, key: usize, channel: ChannelId, now: u64) -> bool {
        let ttl = self.history_ttl();
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return false;
        };
        let Some(local) = self.hub.position(channel) else {
            release(&mut self.conns, &mut cluster.holds, key, channel);
            return true;
        };
        let Some(held) = cluster.holds.held.get(&(key, channel)) else {
            return false;
        };
        let Some(answer) = &held.answer else {
            return false;
        };
        let (from, max_replay, top) = (held.from, held.max_replay, answer.top);
        match settle_rule(local, top) {
            Settle::Wait => return false,
            Settle::Adopt => {
                self.hub.accept_position(channel, top);
            }
            Settle::Join => {
                let missed = local.offset.saturating_sub(from.offset);
                if usize::try_from(missed).map_or(true, |m| m > max_replay) {
                    self.answer_refusal(key, channel, NotRecovered::TooMany, Some(local), now);
                    return true;
                }
            }
        }
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return false;
        };
        let Some(held) = release(&mut self.conns, &mut cluster.holds, key, channel) else {
            return false;
        };
        let Some(answer) = held.answer else {
            return false;
        };
        let name = self.hub.name(channel).unwrap_or_default();
        let env = env_of!(self, now);
        let redis = answer.deliveries.get(answer.range.clone());
        match (redis, self.hub.recover(channel, top, usize::MAX, now, ttl)) {
            (Some(redis), Ok((_, later))) => {
                let outcome = Outcome::Recovered {
                    from,
                    messages: redis.iter().chain(later),
                };
                self.fanout
                    .recover(&mut self.conns, key, name, outcome, env);
            }
            // The log lost what came after the read's top (or the read's
            // range is not in it): never a partial replay.
            (redis, later) => {
                let (reason, current) = match later {
                    Err(refused) if redis.is_some() => refused,
                    _ => (
                        NotRecovered::Evicted,
                        self.hub.position(channel).unwrap_or(local),
                    ),
                };
                let outcome = Outcome::refused(reason, current);
                self.fanout
                    .recover(&mut self.conns, key, name, outcome, env);
            }
        }
        true
    }

    /// Tells hold (`key`, `channel`) it is not recovered, with `current`
    /// (the node's position when none is known), and releases it.
    fn answer_refusal(
        &mut self,
        key: usize,
        channel: ChannelId,
        reason: NotRecovered,
        current: Option<Position>,
        now: u64,
    ) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        if release(&mut self.conns, &mut cluster.holds, key, channel).is_none() {
            return;
        }
        let Some(current) = current.or_else(|| self.hub.position(channel)) else {
            return;
        };
        let name = self.hub.name(channel).unwrap_or_default();
        let env = env_of!(self, now);
        let outcome = Outcome::refused(reason, current);
        self.fanout
            .recover(&mut self.conns, key, name, outcome, env);
    }

    /// Answers a hold that wants only the channel's position: Redis's
    /// (`redis`, when known) becomes the channel's here if the node has no
    /// message of it yet; the client is told the node's position then.
    fn tell_held(&mut self, key: usize, channel: ChannelId, redis: Option<Position>, _now: u64) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        if release(&mut self.conns, &mut cluster.holds, key, channel).is_none() {
            return;
        }
        let Some(local) = self.hub.position(channel) else {
            return;
        };
        if let Some(redis) = redis
            && settle_rule(local, redis) == Settle::Adopt
        {
            self.hub.accept_position(channel, redis);
        }
        let (Some(current), Some(name)) = (self.hub.position(channel), self.hub.name(channel))
        else {
            return;
        };
        self.fanout
            .tell_position(&mut self.conns, key, name, current);
    }

    /// Answers the holds whose deadline has come: `epoch` when Redis's
    /// answer is in another epoch than the node's feed ever reached (with
    /// Redis's position), else `unavailable` (with the node's).
    fn expire_holds(&mut self, now: u64) {
        loop {
            let Some(cluster) = self.cluster.as_deref_mut() else {
                return;
            };
            let Some(&(at, key, channel)) = cluster.holds.deadlines.front() else {
                return;
            };
            if at > now {
                return;
            }
            cluster.holds.deadlines.pop_front();
            let Some(held) = cluster.holds.held.get(&(key, channel)) else {
                continue;
            };
            if held.deadline != at {
                continue;
            }
            if held.tell {
                self.tell_held(key, channel, None, now);
                continue;
            }
            let local = self.hub.position(channel);
            let (reason, current) = match &held.answer {
                Some(a) if local.is_some_and(|l| l.epoch != a.top.epoch) => {
                    (NotRecovered::Epoch, Some(a.top))
                }
                _ => (NotRecovered::Unavailable, local),
            };
            debug!(
                "connection {key}: recovery held too long, answered {}",
                reason.as_str()
            );
            self.answer_refusal(key, channel, reason, current, now);
        }
    }

    /// Connection `key` is going away: its holds go with it.
    pub(super) fn drop_holds(&mut self, key: usize) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let holds = &mut cluster.holds;
        let keys: Vec<(usize, ChannelId)> = holds
            .held
            .range((key, ChannelId::MIN)..=(key, ChannelId::MAX))
            .map(|(&k, _)| k)
            .collect();
        for (key, channel) in keys {
            holds.remove(key, channel);
        }
    }

    /// Sends a publish (`waiter` set: an HTTP publish of connection
    /// `waiter`) or a relay to Redis. The encoded envelope excludes
    /// `exclude` at this node.
    pub(super) fn bus_publish(
        &mut self,
        channel: &str,
        message: &Broadcast,
        exclude: Option<Token>,
        waiter: Option<Waiter>,
        now: u64,
    ) -> Result<(), &'static str> {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return Err("no cluster");
        };
        let mut scratch = std::mem::take(&mut cluster.scratch);
        scratch.clear();
        let envelope = Envelope {
            binary: message.opcode() == OpCode::Binary,
            origin: cluster.bus.node_id,
            position: None,
            exclude: exclude.map(|t| t.0 as u64),
            payload: message.payload(),
        };
        if cluster.bus.keeps_history() {
            envelope.write_unplaced(&mut scratch);
        } else {
            envelope.write(&mut scratch);
        }
        let result = cluster.bus.publish(channel, &scratch, waiter, now);
        cluster.scratch = scratch;
        result
    }

    /// The end of a loop turn (and of every bus event): this turn's
    /// subscription changes, sockets to open or close, output to write,
    /// the timer to re-arm, the gauges.
    pub(super) fn bus_turn(&mut self, now: u64) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let hub = &self.hub;
        cluster.bus.set_history(self.config.history());
        cluster
            .bus
            .flush_subscriptions(|name| hub.lookup(name).is_some());
        cluster.bus.issue_reads(now, &mut cluster.events);
        if !cluster.events.is_empty() {
            self.bus_events(now);
        }
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        for role in [Role::Subscriptions, Role::Commands] {
            let connected = cluster.bus.link(role).is_connected();
            if !connected {
                if let Some(mut socket) = cluster.socket(role).take() {
                    let _ = self.poll.registry().deregister(&mut socket.stream);
                }
                if cluster.bus.due_to_connect(role, now) {
                    open_link(cluster, role, now, &self.poll);
                }
            }
            write_link(cluster, role, now, &self.poll);
        }
        let deadline = match (cluster.bus.next_deadline(), cluster.holds.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (cluster.timer, deadline) {
            (Some(timer), Some(at)) => {
                if self.timers.deadline(timer) != Some(at) && !self.timers.reschedule(timer, at) {
                    cluster.timer = Some(self.timers.insert(at, BUS_TIMER));
                }
            }
            (None, Some(at)) => cluster.timer = Some(self.timers.insert(at, BUS_TIMER)),
            (Some(timer), None) => {
                self.timers.remove(timer);
                cluster.timer = None;
            }
            (None, None) => {}
        }
        self.metrics.cluster = Some(cluster.gauges());
    }

    /// The bus's timer-wheel entry fired.
    pub(super) fn on_bus_timer(&mut self, now: u64) {
        if let Some(cluster) = self.cluster.as_deref_mut() {
            cluster.timer = None;
            cluster.bus.on_timer(now, &mut cluster.events);
        }
        self.bus_events(now);
        self.expire_holds(now);
        self.bus_turn(now);
    }

    /// A reloaded `[cluster]`: timeouts and backoff apply at once; a new
    /// Redis URL, key prefix or node name makes both links again.
    pub(super) fn reload_cluster(&mut self, old: Option<&ClusterConfig>, now: u64) {
        match (old, self.config.cluster.as_ref()) {
            (Some(old), Some(new)) => {
                let Some(cluster) = self.cluster.as_deref_mut() else {
                    return;
                };
                cluster.bus.reconfigure(new);
                cluster.hold_for = hold_for(new);
                cluster.addrs = resolve(new);
                cluster.tls = load_tls(new);
                if old.redis_url != new.redis_url
                    || old.tls_ca_file != new.tls_ca_file
                    || old.key_prefix != new.key_prefix
                    || old.node_name != new.node_name
                {
                    for role in [Role::Commands, Role::Subscriptions] {
                        cluster
                            .bus
                            .on_closed(role, now, "reload: reconnecting".to_owned());
                    }
                }
            }
            (None, Some(_)) | (Some(_), None) => {
                // What runs is what the config says.
                self.config.cluster = old.cloned();
                warn!(
                    "reload: [cluster] was added or removed; a node cannot join or leave a cluster while running, restart wshub to apply it"
                );
            }
            (None, None) => {}
        }
        self.bus_turn(now);
    }
}

/// Ends hold (`key`, `channel`): the connection's live messages of the
/// channel flow again (and its flag is cleared when it was its last hold).
fn release<T>(
    conns: &mut slab::Slab<super::slot::Slot<T>>,
    holds: &mut Holds,
    key: usize,
    channel: ChannelId,
) -> Option<Held> {
    let held = holds.remove(key, channel)?;
    if !holds.any_of(key)
        && let Some(slot) = conns.get_mut(key)
    {
        slot.held = false;
    }
    Some(held)
}

fn open_link(cluster: &mut Cluster, role: Role, now: u64, poll: &mio::Poll) {
    let Some(&addr) = cluster
        .addrs
        .get(cluster.next_addr % cluster.addrs.len().max(1))
    else {
        cluster.bus.on_connecting(role, now);
        cluster
            .bus
            .on_closed(role, now, "the redis host has no address".to_owned());
        return;
    };
    cluster.next_addr = cluster.next_addr.wrapping_add(1);
    cluster.bus.on_connecting(role, now);
    if let Err(e) = &cluster.tls {
        let reason = e.clone();
        cluster.bus.on_closed(role, now, reason);
        return;
    }
    let opened = TcpStream::connect(addr).and_then(|mut stream| {
        poll.registry().register(
            &mut stream,
            token_of(role),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    });
    match opened {
        Ok(stream) => {
            *cluster.socket(role) = Some(Socket {
                stream,
                tls: None,
                connected: false,
                write_interest: true,
            });
        }
        Err(e) => cluster
            .bus
            .on_closed(role, now, format!("connect {addr}: {e}")),
    }
}

/// Writes what the link has queued; keeps WRITABLE interest only while
/// bytes are left over.
fn write_link(cluster: &mut Cluster, role: Role, now: u64, poll: &mio::Poll) {
    let Cluster {
        bus,
        command,
        subscription,
        ..
    } = cluster;
    let slot = match role {
        Role::Commands => command,
        Role::Subscriptions => subscription,
    };
    let Some(socket) = slot.as_mut().filter(|s| s.connected) else {
        return;
    };
    let link = bus.link_mut(role);
    let mut failure = None;
    if let Some(session) = &mut socket.tls {
        // rustls takes all of it (no buffer limit) and encrypts it as the
        // handshake allows; what is left to send is its TLS records.
        match session.writer().write(link.output()) {
            Ok(n) => link.consume(n),
            Err(e) => failure = Some(format!("TLS write: {e}")),
        }
        while failure.is_none() && session.wants_write() {
            match session.write_tls(&mut socket.stream) {
                Ok(0) => failure = Some("redis connection closed on write".to_owned()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => failure = Some(format!("write: {e}")),
            }
        }
    }
    while failure.is_none() && !link.output().is_empty() {
        match socket.stream.write(link.output()) {
            Ok(0) => {
                failure = Some("redis connection closed on write".to_owned());
                break;
            }
            Ok(n) => link.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                failure = Some(format!("write: {e}"));
                break;
            }
        }
    }
    if let Some(reason) = failure {
        bus.on_closed(role, now, reason);
        if let Some(mut socket) = slot.take() {
            let _ = poll.registry().deregister(&mut socket.stream);
        }
        return;
    }
    let want_write = match &socket.tls {
        Some(session) => session.wants_write(),
        None => !link.output().is_empty(),
    };
    if want_write != socket.write_interest {
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if poll
            .registry()
            .reregister(&mut socket.stream, token_of(role), interest)
            .is_ok()
        {
            socket.write_interest = want_write;
        }
    }
}

/// Reads TLS records from `stream` into `session` and hands out the
/// plaintext they carry: `Ok(0)` at the end of the stream, `WouldBlock`
/// when nothing more is there.
fn read_tls(
    session: &mut ClientConnection,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match session.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if session.read_tls(stream)? == 0 {
            return Ok(0);
        }
        session
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::at;

    #[test]
    fn a_held_recovery_joins_once_the_feed_reached_the_read_and_adopts_on_a_fresh_channel() {
        use Settle::*;
        // Same epoch: wait for the feed up to the read's top, then join.
        assert_eq!(settle_rule(at(1, 4), at(1, 5)), Wait);
        assert_eq!(settle_rule(at(1, 5), at(1, 5)), Join);
        assert_eq!(settle_rule(at(1, 9), at(1, 5)), Join);
        // Nothing here yet (the node's own epoch, offset 0): adopt the top.
        assert_eq!(settle_rule(at(7, 0), at(1, 5)), Adopt);
        assert_eq!(settle_rule(at(7, 0), at(1, 0)), Adopt);
        // The node's feed is in another epoch: wait for it to follow.
        assert_eq!(settle_rule(at(7, 3), at(1, 5)), Wait);
    }

    #[test]
    fn holds_are_found_per_connection_and_leave_the_waiting_list_when_removed() {
        let mut holds = Holds::default();
        let (a, b) = (ChannelId::MIN, ChannelId::MAX);
        let held = |answered: bool| Held {
            token: Token(1),
            from: at(1, 0),
            max_replay: 10,
            deadline: 5,
            tell: false,
            answer: answered.then(|| Answer {
                top: at(1, 2),
                deliveries: Rc::from(Vec::new()),
                range: 0..0,
            }),
        };
        holds.held.insert((3, a), held(false));
        holds.held.insert((3, b), held(true));
        holds.waiting.push((3, b));
        holds.held.insert((4, a), held(false));
        assert!(holds.holds(3, a) && holds.holds(3, b) && !holds.holds(5, a));
        assert!(holds.any_of(3) && holds.any_of(4) && !holds.any_of(2) && !holds.any_of(5));
        assert!(holds.remove(3, b).is_some());
        assert!(holds.waiting.is_empty());
        assert!(holds.any_of(3));
        assert!(holds.remove(3, a).is_some());
        assert!(!holds.any_of(3) && holds.any_of(4));
        assert!(holds.remove(3, a).is_none());
    }

    #[test]
    fn a_read_is_made_into_deliveries_once_for_every_recovery_it_serves() {
        let entries: Arc<[Entry]> = vec![
            Entry::new(at(1, 4), false, b"four"),
            Entry::new(at(1, 5), true, &[5, 5]),
        ]
        .into();
        let mut cache = None;
        let first = Converted::of(&mut cache, &entries);
        let again = Converted::of(&mut cache, &Arc::clone(&entries));
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].position, Some(at(1, 4)));
        assert_eq!(first[0].message.payload(), b"four");
        assert_eq!(first[0].message.opcode(), OpCode::Text);
        assert_eq!(first[1].message.payload(), [5, 5]);
        assert_eq!(first[1].message.opcode(), OpCode::Binary);
        // Another read (equal entries, another allocation) is made anew.
        let other: Arc<[Entry]> = entries.to_vec().into();
        let made = Converted::of(&mut cache, &other);
        assert!(!Rc::ptr_eq(&first, &made));
    }
}
