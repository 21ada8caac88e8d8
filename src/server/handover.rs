//! The server's side of a handover: everything a new process needs to
//! carry on serving, exported from this one ([`Server::export_state`]) and
//! rebuilt there ([`Server::import_state`]).
//!
//! The state lists the listening sockets (by address), every channel with
//! its position and kept history, and each connection that can be carried
//! over (see [`super::conn::ConnState`]) with its socket's local and peer
//! address. The sockets themselves travel beside it, as descriptors: in the
//! state's order over the upgrade channel, in no particular order through
//! the service manager's store, where the addresses pair them up again.
//!
//! Owns: [`ServerState`], which connections are handed over, and turning
//! descriptors back into slots.
//! Must never: write to, shut down or close a socket that was handed over
//! (the old process only forgets it), or let one connection that cannot be
//! taken over stop the others: it is ended the ordinary way instead.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::Interest;
use serde::{Deserialize, Serialize};

use super::Server;
use super::compress::{Broadcast, Delivery, MessageState};
use super::conn::{Clocks, ConnState, Connection};
use super::listener::Listener;
use super::slot::{FIRST_RESERVED_KEY, Slot, token_of};
use super::transport::Transport;
use crate::handover::state::{self, Farewell};
use crate::hub::{ChannelState, Epoch, Position};
use crate::timer::TimerWheel;

/// Everything but the sockets.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ServerState {
    /// Listening sockets, in the order their descriptors come.
    listeners: Vec<ListenerRecord>,
    /// They belong to a socket unit of the service manager, which keeps
    /// them itself across restarts.
    socket_activated: bool,
    channels: Vec<ChannelState<KeptMessage>>,
    /// The connections handed over, in the order their descriptors come.
    conns: Vec<ConnRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ConnRecord {
    local: SocketAddr,
    peer: SocketAddr,
    conn: ConnState,
}

impl ServerState {
    /// The listening sockets, in the order their descriptors come first
    /// among those of the state.
    pub(super) fn listeners(&self) -> &[ListenerRecord] {
        &self.listeners
    }

    pub(super) fn socket_activated(&self) -> bool {
        self.socket_activated
    }
}

/// One listening socket handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ListenerRecord {
    /// Its own address (how a descriptor from the service manager's store,
    /// which keeps no order, is recognised).
    pub bound: SocketAddr,
    /// The `[[listener]]` address it was bound for (may have port 0).
    pub configured: SocketAddr,
    pub tls: bool,
}

/// A message kept in history, with its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct KeptMessage {
    message: MessageState,
    epoch: u64,
    offset: u64,
}

/// A state ready to send: the bytes, and which sockets go with it.
pub(super) struct Export {
    pub bytes: Vec<u8>,
    /// Slab keys of the connections handed over, in the state's order.
    pub keys: Vec<usize>,
}

/// What an import did.
#[derive(Debug, Default)]
pub(super) struct Imported {
    /// Slab keys of the connections taken over, to be resumed once the old
    /// process has let go of them.
    pub keys: Vec<usize>,
    /// Connections ended the ordinary way (their state could not be used).
    pub ended: usize,
    /// Those connections with their farewells, not yet written: on the
    /// upgrade channel the old process may still serve them until it
    /// confirms ([`Imported::say_farewells`]).
    farewells: Vec<(std::net::TcpStream, Option<Vec<u8>>)>,
}

impl Imported {
    /// Ends the connections that could not be taken over the ordinary way.
    pub(super) fn say_farewells(&mut self) {
        for (socket, bytes) in self.farewells.drain(..) {
            say_farewell(socket, bytes.as_deref());
        }
    }
}

impl Server {
    /// Exports the state of this server for a new process, with at most
    /// `max_conns` connections (what the receiving side can hold). The
    /// server is left as it was: it serves on if the handover fails.
    pub(super) fn export_state(&mut self, max_conns: usize, now: u64) -> Result<Export, String> {
        let clocks = Clocks {
            now,
            unix_ms: crate::auth::unix_ms(),
        };
        // One record per listener, in the order of their descriptors.
        let listeners = self
            .listeners
            .list
            .iter()
            .map(|l| ListenerRecord {
                bound: l.local_addr().unwrap_or(l.address()),
                configured: l.address(),
                tls: l.is_tls(),
            })
            .collect();
        let channels = self.hub.export(now, |delivery: &Rc<Delivery>| KeptMessage {
            message: delivery.message.export(),
            epoch: delivery.position.map_or(0, |p| p.epoch.get()),
            offset: delivery.position.map_or(0, |p| p.offset),
        });
        let mut conns = Vec::new();
        let mut farewells = Vec::new();
        let mut keys = Vec::new();
        for (key, slot) in &mut self.conns {
            if conns.len() >= max_conns || slot.held {
                continue;
            }
            let Transport::Plain(stream) = &slot.io else {
                continue;
            };
            let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
                continue;
            };
            let names = slot
                .conn
                .memberships
                .iter()
                .filter_map(|m| self.hub.name(m.channel()).map(str::to_owned))
                .collect();
            let Some(conn) = slot.conn.export(names, &self.routes, clocks) else {
                continue;
            };
            farewells.push(Farewell {
                local,
                peer,
                bytes: slot.conn.farewell(),
            });
            conns.push(ConnRecord { local, peer, conn });
            keys.push(key);
        }
        let state = ServerState {
            listeners,
            socket_activated: self.life.socket_activated,
            channels,
            conns,
        };
        let bytes = state::encode(&farewells, &state).map_err(|e| e.to_string())?;
        Ok(Export { bytes, keys })
    }

    /// The descriptors of the listening sockets, in the state's order.
    pub(super) fn listener_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listeners.list.iter().map(Listener::fd).collect()
    }

    /// The descriptors of the connections `keys` names, in that order.
    pub(super) fn conn_fds(&self, keys: &[usize]) -> Vec<BorrowedFd<'_>> {
        keys.iter()
            .filter_map(|&key| match &self.conns.get(key)?.io {
                Transport::Plain(stream) => Some(stream.as_fd()),
                Transport::Tls(_) => None,
            })
            .collect()
    }

    /// Forgets the connections handed over: out of the poller, the hub and
    /// the slab, their descriptors closed here, without a byte written or
    /// a shutdown (the socket lives on in the new process).
    pub(super) fn forget(&mut self, keys: &[usize]) {
        for &key in keys {
            self.remove(key);
        }
    }

    /// Rebuilds what `state` describes: channels first, then each
    /// connection on its descriptor from `fds` (in the state's order when
    /// `by_address` is false; matched by the sockets' addresses otherwise).
    /// A connection whose state cannot be used gets its farewell, from
    /// [`Imported::say_farewells`]; when no channel can be rebuilt, every
    /// connection from the store gets its farewell here.
    pub(super) fn import_state(
        &mut self,
        state: ServerState,
        farewells: Vec<Farewell>,
        fds: Vec<OwnedFd>,
        by_address: bool,
    ) -> Result<Imported, String> {
        // A kept message comes with its age; restored as "added that long
        // ago" it needs a clock that reads at least the longest age kept.
        // A fresh server's clock starts at 0: it is started earlier instead
        // (nothing is on the timer wheel yet).
        let ttl = self.history_limits().ttl;
        if ttl > 0
            && self.conns.is_empty()
            && self.timers.next_expiry().is_none()
            && let Some(earlier) = Instant::now().checked_sub(Duration::from_millis(ttl))
        {
            self.clock = earlier;
            self.timers = TimerWheel::new(self.now());
        }
        let now = self.now();
        let clocks = Clocks {
            now,
            unix_ms: crate::auth::unix_ms(),
        };
        let limits = self.history_limits();
        let channels = self
            .hub
            .import(state.channels, now, limits, |kept: KeptMessage| {
                let message = Broadcast::import(kept.message)?;
                let position = (kept.offset != 0).then(|| Position {
                    epoch: Epoch::new(kept.epoch),
                    offset: kept.offset,
                });
                Ok(Rc::new(Delivery::new(message, position)))
            });
        if let Err(e) = channels {
            // From the store nobody serves these connections any more: they
            // are ended the ordinary way. Over the upgrade channel the old
            // process serves them on.
            if by_address {
                farewell_all(farewells, fds, true);
            }
            return Err(e);
        }
        // A cluster node's feed of each channel continues where the old
        // process left it: what was published in between is read from
        // Redis like any gap.
        if let Some(cluster) = self.cluster.as_deref_mut() {
            for name in self.hub.names() {
                if let Some(position) = self.hub.lookup(name).and_then(|id| self.hub.position(id))
                    && position.offset > 0
                {
                    cluster.bus.resume_after(name, position);
                }
            }
        }
        let mut sockets = pair_sockets(&state.conns, fds, by_address);
        let mut farewells: HashMap<(SocketAddr, SocketAddr), Vec<u8>> = farewells
            .into_iter()
            .map(|f| ((f.local, f.peer), f.bytes))
            .collect();
        let mut done = Imported::default();
        for (index, record) in state.conns.into_iter().enumerate() {
            let Some(socket) = sockets.remove(&index) else {
                // Gone while in the store (its peer left), or not passed.
                continue;
            };
            let farewell = farewells.remove(&(record.local, record.peer));
            match self.adopt(socket, record, clocks) {
                Ok(key) => done.keys.push(key),
                Err((socket, why)) => {
                    debug!("cannot take over {}: {why}", record_peer(&socket));
                    done.farewells.push((socket, farewell));
                    done.ended += 1;
                }
            }
        }
        // Channels no connection came back to and without history go.
        self.hub.finish_import();
        self.update_hub_gauges();
        self.reapply_history(now);
        Ok(done)
    }

    /// One connection of the state on its socket: into the slab, the
    /// poller and the hub. Nothing is read or written yet.
    fn adopt(
        &mut self,
        socket: std::net::TcpStream,
        record: ConnRecord,
        clocks: Clocks,
    ) -> Result<usize, (std::net::TcpStream, String)> {
        let (conn, channels) = match Connection::import(
            record.conn,
            record.peer,
            (&self.config, &self.routes),
            clocks,
        ) {
            Ok(imported) => imported,
            Err(why) => return Err((socket, why)),
        };
        if let Err(e) = socket.set_nonblocking(true) {
            return Err((socket, e.to_string()));
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= FIRST_RESERVED_KEY {
            return Err((socket, "no room in the slab".into()));
        }
        let Ok(who) = u32::try_from(key) else {
            return Err((socket, "no room in the slab".into()));
        };
        let generation = self.next_generation;
        self.next_generation = match self.next_generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let mut stream = mio::net::TcpStream::from_std(socket);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token_of(key, generation),
            Interest::READABLE,
        ) {
            return Err((
                std::net::TcpStream::from(OwnedFd::from(stream)),
                e.to_string(),
            ));
        }
        let limit = Some(self.config.max_connections_per_ip)
            .filter(|&max| max > 0)
            .map(|_| usize::MAX);
        let ip_slot = self
            .per_ip
            .claim(record.peer.ip(), limit)
            .and_then(|claim| claim.keep());
        if let Some(gauge) = conn.counted_gauge() {
            self.metrics.opened(gauge);
        }
        entry.insert(Slot::new(
            Transport::Plain(stream),
            conn,
            generation,
            ip_slot,
        ));
        self.metrics.connections += 1;
        for name in channels {
            if self.hub.lookup(&name).is_none()
                && let Some(cluster) = self.cluster.as_deref_mut()
            {
                cluster.bus.channel_changed(&name);
            }
            let membership = self.hub.subscribe(&name, who);
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.memberships.push(membership);
            }
        }
        Ok(key)
    }

    /// Drives each connection taken over once: input that arrived during
    /// the handover is read, bytes it had not yet been sent go out, and its
    /// timer is set.
    pub(super) fn resume_imported(&mut self, keys: &[usize], now: u64) {
        for &key in keys {
            self.drive(key, true, false, now);
        }
    }
}

/// Pairs each record with its socket: by position, or by the socket's own
/// addresses. Sockets that match no record are closed.
fn pair_sockets(
    records: &[ConnRecord],
    fds: Vec<OwnedFd>,
    by_address: bool,
) -> HashMap<usize, std::net::TcpStream> {
    let sockets = fds.into_iter().map(std::net::TcpStream::from);
    if !by_address {
        return sockets.enumerate().collect();
    }
    let index: HashMap<(SocketAddr, SocketAddr), usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.local, r.peer), i))
        .collect();
    let mut paired = HashMap::with_capacity(records.len());
    for socket in sockets {
        let addrs = socket
            .local_addr()
            .and_then(|l| Ok((l, socket.peer_addr()?)));
        match addrs.ok().and_then(|a| index.get(&a)) {
            Some(&i) => {
                paired.insert(i, socket);
            }
            None => debug!("a passed connection matches no entry of the state; closed"),
        }
    }
    paired
}

fn record_peer(socket: &std::net::TcpStream) -> String {
    socket
        .peer_addr()
        .map_or_else(|_| "a connection".to_owned(), |a| a.to_string())
}

/// Ends a connection the ordinary way: its farewell bytes, best effort,
/// then the socket is closed.
pub(super) fn say_farewell(mut socket: std::net::TcpStream, bytes: Option<&[u8]>) {
    if let Some(bytes) = bytes.filter(|b| !b.is_empty()) {
        let _ = socket.set_nonblocking(true);
        let _ = socket.write(bytes);
    }
}

/// A state this binary cannot read: every connection gets its farewell.
pub(super) fn farewell_all(farewells: Vec<Farewell>, fds: Vec<OwnedFd>, by_address: bool) -> usize {
    let mut bytes: HashMap<(SocketAddr, SocketAddr), Vec<u8>> = HashMap::new();
    let mut ordered = Vec::new();
    for f in farewells {
        ordered.push((f.local, f.peer));
        bytes.insert((f.local, f.peer), f.bytes);
    }
    let mut count = 0;
    for (i, fd) in fds.into_iter().enumerate() {
        let socket = std::net::TcpStream::from(fd);
        let key = if by_address {
            socket
                .local_addr()
                .and_then(|l| Ok((l, socket.peer_addr()?)))
                .ok()
        } else {
            ordered.get(i).copied()
        };
        let farewell = key.and_then(|k| bytes.remove(&k));
        say_farewell(socket, farewell.as_deref());
        count += 1;
    }
    if count > 0 {
        info!("handover: ended {count} connection(s) the ordinary way");
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    use crate::config::Config;
    use crate::daemon::fdstore;
    use crate::daemon::listenfd::Inherited;
    use crate::handover::wire;

    /// A stored state whose channels cannot be rebuilt (one is named
    /// twice): nobody else serves its connections any more, so each still
    /// gets its farewell, as with a state of another version, instead of
    /// being cut.
    #[test]
    fn a_stored_state_that_fails_to_import_still_ends_its_connections_properly() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let served = listener.try_clone().unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let channel = || ChannelState {
            name: "a".to_owned(),
            epoch: 1,
            last: 0,
            history: None,
        };
        let body = ServerState {
            listeners: Vec::new(),
            socket_activated: false,
            channels: vec![channel(), channel()],
            conns: Vec::new(),
        };
        let farewell = Farewell {
            local: conn.local_addr().unwrap(),
            peer: conn.peer_addr().unwrap(),
            bytes: b"bye".to_vec(),
        };
        let bytes = state::encode(&[farewell], &body).unwrap();
        let memfd = wire::memfd(fdstore::STATE_NAME, &bytes).unwrap();
        let inherited = Inherited {
            listeners: vec![served],
            socket_activated: true,
            state: Some(memfd),
            conns: vec![OwnedFd::from(conn)],
        };
        let _server = Server::start_inherited(Config::default(), inherited).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
    }
}
