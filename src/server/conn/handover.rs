//! One connection's state across a handover: what [`Connection::export`]
//! writes for the new process and [`Connection::import`] rebuilds there, and
//! the bytes that end it the ordinary way when it cannot be taken over
//! ([`Connection::farewell`]).
//!
//! Carried over: open WebSockets (plain, metadata, compressed) and event
//! streams with everything they are in the middle of (a frame or a
//! fragmented message half received, bytes not yet sent, input held back),
//! and idle HTTP keep-alive connections (a request head half received
//! included). Times travel as ages ("so long before the export"), the
//! token's expiry as wall-clock time, the route by its path.
//!
//! Owns: the [`ConnState`] format and the rules of what can be exported.
//! Must never: change a connection it exports (the export may be refused by
//! the new process, and the old one then serves on), or accept a state that
//! does not make sense (it is input from another process).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Connection, HttpState, Mode, Phase, SERVICE_RESTART_REASON};
use crate::config::Config;
use crate::config::RouteKind;
use crate::hub::names;
use crate::protocol::close::{self, CloseCode};
use crate::protocol::deflate::{self, Params};
use crate::protocol::frame::{self, MAX_CONTROL_PAYLOAD, OpCode};
use crate::protocol::http::HeadReader;
use crate::protocol::message::Limits;
use crate::protocol::message::{Receiver, ReceiverState};
use crate::protocol::sse;
use crate::route::Routes;
use crate::server::outqueue::OutQueue;

/// One connection, as the new process needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(in crate::server) struct ConnState {
    /// Milliseconds between the last input and the export.
    last_recv_age: u64,
    /// Milliseconds between the start of the current wait and the export.
    since_age: u64,
    /// Bytes queued and not yet written, in order.
    unsent: Vec<u8>,
    /// How many of the first `unsent` bytes the slow-consumer rule exempts.
    exempt: usize,
    /// Input read but not yet processed (held back by backpressure).
    pending_in: Vec<u8>,
    phase: PhaseState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PhaseState {
    /// A keep-alive HTTP connection between requests: the raw bytes of a
    /// request head not yet complete, and whether a request was answered.
    Http {
        head: Vec<u8>,
        served: bool,
    },
    Open(Box<OpenState>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenState {
    /// The route's path and kind: the new config must have the same.
    route: String,
    broadcast: bool,
    mode: ModeState,
    /// Channel names in subscription order (a relay grant is indexed by it).
    channels: Vec<String>,
    deflate: Option<Params>,
    ping_outstanding: bool,
    /// When the token that bounds the connection expires (ms since the Unix
    /// epoch), if one does.
    token_expires_unix_ms: Option<u64>,
    relay_mask: u32,
    receiver: ReceiverState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ModeState {
    Plain,
    Meta,
    Sse,
}

/// The clocks of one side of a handover: the loop's (ms) and the wall's (ms
/// since the Unix epoch), read at the same moment.
#[derive(Clone, Copy, Debug)]
pub(in crate::server) struct Clocks {
    pub now: u64,
    pub unix_ms: u64,
}

impl Connection {
    /// This connection's state for a new process, or `None` when it cannot
    /// be carried over: closing, a request in progress or an answer still
    /// owed, a recovery held for Redis (the caller knows), a broken
    /// receiver. `channels` are the names of its memberships, in order.
    /// The connection itself is left as it was.
    pub(in crate::server) fn export(
        &mut self,
        channels: Vec<String>,
        routes: &Routes,
        clocks: Clocks,
    ) -> Option<ConnState> {
        if self.write_shut || self.outstanding != 0 {
            return None;
        }
        let phase = match self.phase {
            Phase::AwaitingHandshake => {
                let http = self.http.as_deref()?;
                if http.body.is_some() || !http.responses.is_empty() || http.deferred.is_some() {
                    return None;
                }
                PhaseState::Http {
                    head: http.head.buffered().to_vec(),
                    served: http.served,
                }
            }
            Phase::Open => {
                let route = routes.get(self.route)?;
                let token_expires_unix_ms = (self.token_expires != 0).then(|| {
                    let at = u64::from(self.token_expires).saturating_mul(1000);
                    clocks.unix_ms.saturating_add(at.saturating_sub(clocks.now))
                });
                PhaseState::Open(Box::new(OpenState {
                    route: route.path.clone(),
                    broadcast: route.kind == RouteKind::Broadcast,
                    mode: match self.mode {
                        Mode::Plain => ModeState::Plain,
                        Mode::Meta => ModeState::Meta,
                        Mode::Sse => ModeState::Sse,
                    },
                    channels,
                    deflate: self.deflate,
                    ping_outstanding: self.ping_outstanding,
                    token_expires_unix_ms,
                    relay_mask: self.relay_mask,
                    receiver: self.receiver.export()?,
                }))
            }
            Phase::Closing { .. } => return None,
        };
        let (unsent, exempt) = self.out.unsent();
        Some(ConnState {
            last_recv_age: clocks.now.saturating_sub(self.last_recv),
            since_age: clocks.now.saturating_sub(self.since),
            unsent,
            exempt,
            pending_in: self.pending_in.as_deref().cloned().unwrap_or_default(),
            phase,
        })
    }

    /// Rebuilds a connection from `state` for a socket whose peer is
    /// `peer`. Returns it with the channels it must be subscribed to (in
    /// this order), or why it cannot be taken over (its route is gone or
    /// changed kind, or the state is inconsistent).
    pub(in crate::server) fn import(
        state: ConnState,
        peer: SocketAddr,
        (config, routes): (&Config, &Routes),
        clocks: Clocks,
    ) -> Result<(Connection, Vec<String>), String> {
        let mut conn = Connection::new(peer, clocks.now);
        conn.last_recv = clocks.now.saturating_sub(state.last_recv_age);
        conn.since = clocks.now.saturating_sub(state.since_age);
        if state.exempt > state.unsent.len() {
            return Err("more bytes exempt than queued".into());
        }
        if !state.unsent.is_empty() {
            conn.out = OutQueue::with_unsent(state.unsent, state.exempt);
        }
        if !state.pending_in.is_empty() {
            conn.pending_in = Some(Box::new(state.pending_in));
        }
        let channels = match state.phase {
            PhaseState::Http { head, served } => {
                let mut reader = HeadReader::default();
                // By construction the bytes do not complete a head: one that
                // did would have been processed before the export.
                match reader.feed(&head) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        return Err("a complete request head was left unprocessed".into());
                    }
                    Err(e) => return Err(format!("a request head that fails: {e}")),
                }
                conn.http = Some(Box::new(HttpState {
                    head: reader,
                    served,
                    ..HttpState::default()
                }));
                Vec::new()
            }
            PhaseState::Open(open) => {
                let OpenState {
                    route,
                    broadcast,
                    mode,
                    channels,
                    deflate: params,
                    ping_outstanding,
                    token_expires_unix_ms,
                    relay_mask,
                    receiver,
                } = *open;
                let kind = if broadcast {
                    RouteKind::Broadcast
                } else {
                    RouteKind::Echo
                };
                conn.route = routes
                    .find(&route, kind)
                    .ok_or_else(|| format!("route {route} is not in the new config"))?;
                conn.mode = match mode {
                    ModeState::Plain => Mode::Plain,
                    ModeState::Meta => Mode::Meta,
                    ModeState::Sse => Mode::Sse,
                };
                if mode == ModeState::Sse && channels.len() != 1 {
                    return Err("an event stream follows exactly one channel".into());
                }
                if !broadcast && !channels.is_empty() {
                    return Err("an echo connection with channels".into());
                }
                let mut seen = std::collections::HashSet::with_capacity(channels.len());
                for name in &channels {
                    if !names::is_valid_channel_name(name) {
                        return Err("an invalid channel name".into());
                    }
                    if !seen.insert(name.as_str()) {
                        return Err(format!("channel {name} listed twice"));
                    }
                }
                let limits = Limits {
                    max_frame_size: config.max_frame_size,
                    max_message_size: config.max_message_size,
                };
                conn.receiver = Receiver::import(receiver, &limits)?;
                // What the extension allows follows what was negotiated.
                conn.receiver.set_allowed_rsv(if params.is_some() {
                    deflate::RSV_COMPRESSED
                } else {
                    0
                });
                conn.deflate = params;
                conn.ping_outstanding = ping_outstanding;
                conn.token_expires = match token_expires_unix_ms {
                    None => 0,
                    Some(at) => {
                        let left = at.saturating_sub(clocks.unix_ms);
                        let at = clocks.now.saturating_add(left).div_ceil(1000).max(1);
                        u32::try_from(at).unwrap_or(u32::MAX)
                    }
                };
                conn.relay_mask = relay_mask;
                conn.upgraded = true;
                conn.set_phase(Phase::Open);
                channels
            }
        };
        Ok((conn, channels))
    }

    /// What ends this connection the ordinary way when a new process cannot
    /// take it over: everything it has not yet been sent, then a close frame
    /// 1012 (a WebSocket) or a `shutdown` event (an event stream). Nothing
    /// for an idle HTTP connection.
    pub(in crate::server) fn farewell(&mut self) -> Vec<u8> {
        let (mut bytes, _) = self.out.unsent();
        if matches!(self.phase, Phase::Open) {
            if self.mode == Mode::Sse {
                let data = sse::Data::Text(sse::SHUTDOWN_DATA.as_bytes());
                sse::write_event(None, Some(sse::EVENT_SHUTDOWN), data, &mut bytes);
            } else {
                let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                let len = close::encode_close_payload(
                    CloseCode::SERVICE_RESTART,
                    SERVICE_RESTART_REASON,
                    &mut payload,
                );
                frame::write_frame(&mut bytes, true, 0, OpCode::Close, &payload[..len]);
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RouteConfig};

    fn routes() -> Routes {
        let config = Config {
            routes: vec![
                RouteConfig::new("/echo", RouteKind::Echo),
                RouteConfig::new("/live", RouteKind::Broadcast),
            ],
            ..Config::default()
        };
        Routes::new(&config)
    }

    const PEER: &str = "127.0.0.2:5000";

    #[test]
    fn an_idle_http_connection_keeps_its_half_received_head() {
        let routes = routes();
        let clocks = Clocks {
            now: 10_000,
            unix_ms: 1_700_000_000_000,
        };
        let mut conn = Connection::new(PEER.parse().unwrap(), 9_000);
        conn.http
            .as_deref_mut()
            .unwrap()
            .head
            .feed(b"GET /hea")
            .unwrap();
        let state = conn.export(Vec::new(), &routes, clocks).unwrap();
        let bytes = postcard::to_allocvec(&state).unwrap();
        let state: ConnState = postcard::from_bytes(&bytes).unwrap();
        let later = Clocks {
            now: 50,
            unix_ms: clocks.unix_ms + 5,
        };
        let (back, channels) = Connection::import(
            state,
            PEER.parse().unwrap(),
            (&Config::default(), &routes),
            later,
        )
        .unwrap();
        assert!(channels.is_empty());
        assert_eq!(back.http.as_deref().unwrap().head.buffered(), b"GET /hea");
        // The wait began 1 s before the export: it did so in the new clock too.
        assert_eq!(back.since, 0);
        let mut back = back;
        assert!(back.farewell().is_empty());
    }

    /// A subscriber's channels as a state lists them: each a valid name,
    /// each once (twice would deliver every message twice).
    #[test]
    fn channels_that_no_subscription_could_have_are_refused() {
        let open = |channels: &[&str]| ConnState {
            last_recv_age: 0,
            since_age: 0,
            unsent: Vec::new(),
            exempt: 0,
            pending_in: Vec::new(),
            phase: PhaseState::Open(Box::new(OpenState {
                route: "/live".into(),
                broadcast: true,
                mode: ModeState::Plain,
                channels: channels.iter().map(|&c| c.to_owned()).collect(),
                deflate: None,
                ping_outstanding: false,
                token_expires_unix_ms: None,
                relay_mask: u32::MAX,
                receiver: Receiver::new().export().unwrap(),
            })),
        };
        let import = |state| {
            Connection::import(
                state,
                PEER.parse().unwrap(),
                (&Config::default(), &routes()),
                Clocks { now: 0, unix_ms: 0 },
            )
        };
        let (_, channels) = import(open(&["a", "b"])).unwrap();
        assert_eq!(channels, ["a", "b"]);
        for bad in [&["a", "a"][..], &["a", "b", "a"], &[""], &["a b"]] {
            assert!(import(open(bad)).is_err(), "{bad:?}");
        }
    }

    /// An export may be refused by the new process, and this one then
    /// serves on: its queue must be as it was, broadcast frames still
    /// shared (not a copy per connection) and still dropped whole for a
    /// slow consumer.
    #[test]
    fn exporting_leaves_the_queue_as_it_was() {
        let frame: std::rc::Rc<[u8]> = std::rc::Rc::from(vec![0x81, 2, b'h', b'i']);
        let mut conn = Connection::new(PEER.parse().unwrap(), 0);
        conn.out.push_frame(OpCode::Pong, b"");
        conn.out.push_shared(std::rc::Rc::clone(&frame));
        let clocks = Clocks {
            now: 10,
            unix_ms: 1,
        };
        let state = conn.export(Vec::new(), &routes(), clocks).unwrap();
        assert_eq!(state.unsent, [0x8a, 0, 0x81, 2, b'h', b'i']);
        assert_eq!(conn.farewell(), [0x8a, 0, 0x81, 2, b'h', b'i']);
        assert_eq!(std::rc::Rc::strong_count(&frame), 2, "still shared");
        conn.out.drop_unsent_broadcasts();
        assert_eq!(conn.out.len(), 2, "the broadcast is still droppable");
    }

    #[test]
    fn a_route_gone_from_the_config_is_refused() {
        let state = ConnState {
            last_recv_age: 0,
            since_age: 0,
            unsent: Vec::new(),
            exempt: 0,
            pending_in: Vec::new(),
            phase: PhaseState::Open(Box::new(OpenState {
                route: "/gone".into(),
                broadcast: true,
                mode: ModeState::Plain,
                channels: vec!["a".into()],
                deflate: None,
                ping_outstanding: false,
                token_expires_unix_ms: None,
                relay_mask: u32::MAX,
                receiver: Receiver::new().export().unwrap(),
            })),
        };
        let clocks = Clocks { now: 0, unix_ms: 0 };
        let err = Connection::import(
            state,
            PEER.parse().unwrap(),
            (&Config::default(), &routes()),
            clocks,
        )
        .unwrap_err();
        assert!(err.contains("/gone"), "{err}");
    }
}
