//! The cluster node's Redis links inside the event loop: two non-blocking
//! sockets in the same poll, driven by the sans-IO [`Bus`].
//!
//! Owns: the links' sockets (connect, read, write, close), their poll
//! tokens and their one timer-wheel entry, the Redis addresses (resolved at
//! start and reload only), handing messages from Redis to the fan-out
//! (framed once per node, as for a local publish) and publish answers to
//! the connections that wait for them.
//! Must never: resolve a name or block in the loop, read the command socket
//! before the subscription socket in a turn, keep state per subscriber, or
//! answer a publish other than as the bus decides.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use log::{debug, error, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::Server;
use super::compress::{Broadcast, FrameCache};
use super::slot::{BUS_COMMAND_TOKEN, BUS_SUBSCRIPTION_TOKEN, BUS_TIMER};
use crate::bus::{Ask, Bus, Envelope, Event, Recovery, Role};
use crate::config::ClusterConfig;
use crate::hub::ChannelId;
use crate::hub::position::Position;
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
    /// when history is off). The one call to switch to the position-aware
    /// fan-out (and the local history store's append) when the single-node
    /// history joins: until then the position goes no further.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_positioned(
        &mut self,
        id: ChannelId,
        message: &Broadcast,
        _position: Option<Position>,
        cache: &mut FrameCache,
        exclude: Option<usize>,
        stamp: u32,
        now: u64,
    ) -> usize {
        self.fan_out(id, message, cache, exclude, stamp, now)
    }

    /// Redis confirmed this node's SUBSCRIBE to `channel`: from here on,
    /// every message of the channel reaches the live feed in order (the
    /// seam a recovery for a newly subscribed channel relies on, see the
    /// bus's module doc). Recovery reads for the channel wait for this
    /// inside the bus; nothing else in the loop needs it yet.
    fn on_bus_subscribed(&mut self, channel: &str) {
        debug!("cluster: subscription to {channel} confirmed");
    }

    /// Asks Redis for the messages of `channel` after `ask.position`, for
    /// connection `token`, which must already be subscribed to the channel
    /// (so the read goes out once Redis confirmed the SUBSCRIBE, and
    /// whatever comes after the read's top arrives on the live feed). The
    /// outcome comes to [`Server::on_bus_recovery`]; requests for the same
    /// channel are coalesced into few reads.
    #[expect(dead_code, reason = "called by the subscribe path's recovery")]
    pub(super) fn recover_from_bus(&mut self, token: Token, channel: &str, ask: Ask, now: u64) {
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

    /// The outcome of a recovery read for `reader`: every message after
    /// its position up to the read's top (then the live feed continues), or
    /// why not with the current position. The subscribe path's recovery
    /// answer takes it from here (a closed connection gets nothing).
    fn on_bus_recovery(&mut self, reader: Reader, outcome: Recovery, _now: u64) {
        if self.live_key(reader.token).is_none() {
            return;
        }
        match outcome {
            Recovery::Recovered { top, replay } => debug!(
                "cluster: recovered {} messages ({} bytes) up to {}:{}",
                replay.entries().len(),
                replay
                    .entries()
                    .iter()
                    .map(|e| e.payload().len())
                    .sum::<usize>(),
                top.epoch,
                top.offset
            ),
            Recovery::NotRecovered { reason, current } => debug!(
                "cluster: not recovered ({}), current {current:?}",
                reason.as_str()
            ),
        }
        let _ = reader.channel;
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
        let deadline = cluster.bus.next_deadline();
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
