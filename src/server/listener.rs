//! Listening sockets and admission.
//!
//! Owns: each listening socket together with the TLS config its new
//! connections get and the certificate files that config came from
//! ([`Listener`]); binding; the accept pause when the process is out of file
//! descriptors (and `SO_REUSEPORT` for a `reuse_port` listener, which lets
//! several processes share the address); the admission checks (`max_connections`,
//! `max_connections_per_ip`) with their canned refusals; and turning an
//! accepted socket into a slot in the slab.
//! Must never: read from an admitted connection or write to it (beyond the
//! best-effort refusal of one that is not admitted), or leave a per-address
//! count taken for a connection that did not make it into the slab.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::conn::Connection;
use super::slot::{FIRST_RESERVED_KEY, Slot, token_of};
use super::tls::{self, TlsConfigError, TlsStream};
use super::transport::Transport;
use super::{Server, ServerError};
use crate::config::{ListenerConfig, ListenerTls};
use crate::metrics::Refused;
use crate::protocol::http;

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// Linux errno values for "too many open files" (per process / system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// Connections the kernel may queue for `accept` per listener. The usual 128
/// overflows when thousands of clients reconnect at once (after a restart or
/// a network blip); the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// One listening socket.
pub(super) struct Listener {
    socket: TcpListener,
    /// The `[[listener]]` address this socket stands for: the configured
    /// one when we bound it, the socket's own when it was passed to us.
    address: SocketAddr,
    tls: Option<ListenerTlsState>,
}

/// What a wss:// listener serves with.
struct ListenerTlsState {
    /// The files the certificate is read from, on start and on reload.
    files: ListenerTls,
    /// The config new connections get; swapped on reload, while open
    /// connections keep the `Arc` they were accepted with.
    config: Arc<rustls::ServerConfig>,
}

impl Listener {
    /// Binds every listener `configs` describes, reading the certificate
    /// and key of each TLS one first (so a bad file is reported before an
    /// address that cannot be bound).
    pub(super) fn bind_all(configs: &[ListenerConfig]) -> Result<Vec<Listener>, ServerError> {
        let tls = configs
            .iter()
            .map(load_tls_state)
            .collect::<Result<Vec<_>, _>>()?;
        configs
            .iter()
            .zip(tls)
            .map(|(config, tls)| Listener::bind(config, tls))
            .collect()
    }

    /// Binds the one listener `config` describes, reading its certificate
    /// and key first if it is a TLS one.
    pub(super) fn bind_one(config: &ListenerConfig) -> Result<Listener, ServerError> {
        let tls = load_tls_state(config)?;
        Listener::bind(config, tls)
    }

    fn bind(
        config: &ListenerConfig,
        tls: Option<ListenerTlsState>,
    ) -> Result<Listener, ServerError> {
        let addr = config.address;
        let socket = listen(addr, config.reuse_port).map_err(|source| ServerError::Bind {
            addr,
            source: explain_bind_error(source),
        })?;
        Ok(Listener {
            socket,
            address: addr,
            tls,
        })
    }

    /// Wraps a socket passed by the service manager, or by the process this
    /// one took over from (`handed`: the `[[listener]]` address it was bound
    /// for, and whether it served TLS). A passed socket serves TLS when its
    /// own address equals that of a `tls = true` entry of `listeners`; a
    /// handed one when it did before, with the files of the `tls = true`
    /// entry for its address. Its socket options are the service manager's:
    /// a `reuse_port` entry for its address cannot add `SO_REUSEPORT`, so a
    /// socket without it is reported.
    pub(super) fn passed(
        socket: std::net::TcpListener,
        handed: Option<(SocketAddr, bool)>,
        listeners: &[ListenerConfig],
    ) -> Result<Listener, ServerError> {
        socket.set_nonblocking(true)?;
        let (address, tls) = match handed {
            Some((address, tls)) => (address, tls),
            None => {
                let address = socket.local_addr()?;
                (address, tls_entry_for(address, listeners).is_some())
            }
        };
        if lacks_reuse_port(&socket, address, listeners) {
            warn!(
                "listener {address}: reuse_port = true does not apply to a socket passed by the \
                 service manager; set ReusePort=yes in its socket unit, or give each process a \
                 socket unit of its own"
            );
        }
        let tls = match (tls, tls_entry_for(address, listeners)) {
            (false, _) => None,
            (true, Some(entry)) => load_tls_state(entry)?,
            (true, None) => {
                return Err(ServerError::Io(io::Error::other(format!(
                    "listener {address} served TLS, but the config has no tls = true listener at that address"
                ))));
            }
        };
        Ok(Listener {
            socket: TcpListener::from_std(socket),
            address,
            tls,
        })
    }

    /// The listening sockets `listeners` (a `[[listener]]` list) asks for,
    /// from sockets handed over by the process this one takes over from:
    /// each entry takes the handed socket that was bound for its address
    /// (preferring one that served TLS alike), so that the clients waiting
    /// in its queue carry over, or binds anew; a handed socket the list no
    /// longer names is closed. `handed` gives each socket's `[[listener]]`
    /// address and TLS flag when known (else its own address counts).
    pub(super) fn for_config(
        listeners: &[ListenerConfig],
        handed: Vec<(std::net::TcpListener, Option<(SocketAddr, bool)>)>,
    ) -> Result<Vec<Listener>, ServerError> {
        // Each handed socket: the address it stands for, and its TLS flag
        // when the old process said (`None`: only its own address is known).
        type Handed = Option<(std::net::TcpListener, SocketAddr, Option<bool>)>;
        let mut pool: Vec<Handed> = handed
            .into_iter()
            .filter_map(|(socket, known)| {
                let (address, tls) = match known {
                    Some((address, tls)) => (address, Some(tls)),
                    None => (socket.local_addr().ok()?, None),
                };
                Some(Some((socket, address, tls)))
            })
            .collect();
        let mut chosen = Vec::with_capacity(listeners.len());
        for entry in listeners {
            let wants_tls = entry.tls.is_some();
            // Exact: the address it was bound for, and TLS alike. Then the
            // address alone. Then, for an entry with port 0 ("any port"), a
            // socket whose own address has its IP (all that is known of a
            // socket handed by a binary of another state version).
            let rank = |h: &Handed| -> Option<u8> {
                let (_, address, tls) = h.as_ref()?;
                if *address == entry.address {
                    Some(if *tls == Some(wants_tls) { 0 } else { 1 })
                } else if tls.is_none()
                    && entry.address.port() == 0
                    && address.ip() == entry.address.ip()
                {
                    Some(2)
                } else {
                    None
                }
            };
            let found = (0..pool.len())
                .filter_map(|i| Some((rank(&pool[i])?, i)))
                .min()
                .map(|(_, i)| i);
            let listener = match found.and_then(|i| pool.get_mut(i)?.take()) {
                Some((socket, _, _)) => {
                    Listener::passed(socket, Some((entry.address, wants_tls)), listeners)?
                }
                None => {
                    info!("{} is new in [[listener]]: bound", entry.address);
                    Listener::bind_one(entry)?
                }
            };
            chosen.push(listener);
        }
        for (_, address, _) in pool.into_iter().flatten() {
            info!("{address} is no longer in [[listener]]: closed");
        }
        Ok(chosen)
    }

    /// The `[[listener]]` address this socket stands for.
    pub(super) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.socket, token, Interest::READABLE)
    }

    pub(super) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.socket);
    }

    /// The address actually bound (differs from the configured one with port 0).
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// The socket's descriptor (handed to a new process on a handover).
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Takes the certificate paths of a TLS listener from `listeners` (the
    /// config being applied): the `tls = true` entry with this listener's
    /// address. Whether it serves TLS at all does not change while running.
    pub(super) fn take_tls_files(&mut self, listeners: &[ListenerConfig]) {
        if let Some(state) = &mut self.tls
            && let Some(files) = tls_entry_for(self.address, listeners).and_then(|e| e.tls.as_ref())
        {
            state.files.clone_from(files);
        }
    }

    /// Reads a TLS listener's certificate and key again; new connections get
    /// them. A pair that cannot be used is reported and the current one stays.
    pub(super) fn reload_certificate(&mut self) {
        let addr = self.local_addr().unwrap_or(self.address);
        let Some(state) = &mut self.tls else {
            return;
        };
        let files = &state.files;
        match tls::load_server_config(&files.cert, &files.key, files.alpn) {
            Ok(config) => {
                info!(
                    "reload: wss://{addr}: certificate {} and key {} loaded; new connections use them",
                    files.cert.display(),
                    files.key.display()
                );
                state.config = config;
            }
            Err(e) => {
                warn!("reload: wss://{addr}: {e}; the certificate loaded before stays in use")
            }
        }
    }

    /// The certificate files a TLS listener reads (`None` for plain ws://).
    #[cfg(test)]
    pub(super) fn tls_files(&self) -> Option<&ListenerTls> {
        self.tls.as_ref().map(|s| &s.files)
    }

    /// The config new TLS connections get.
    #[cfg(test)]
    pub(super) fn tls_config(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref().map(|s| &s.config)
    }
}

/// Whether a passed socket at `address` stands for a `reuse_port = true`
/// entry of `listeners` but was not given `SO_REUSEPORT` by whoever bound it.
fn lacks_reuse_port(
    socket: &impl std::os::fd::AsFd,
    address: SocketAddr,
    listeners: &[ListenerConfig],
) -> bool {
    listeners
        .iter()
        .any(|l| l.reuse_port && l.address == address)
        && !rustix::net::sockopt::socket_reuseport(socket).unwrap_or(false)
}

/// The `tls = true` entry of `listeners` for a socket at `address`.
fn tls_entry_for(address: SocketAddr, listeners: &[ListenerConfig]) -> Option<&ListenerConfig> {
    listeners
        .iter()
        .find(|l| l.tls.is_some() && l.address == address)
}

fn load_tls_state(listener: &ListenerConfig) -> Result<Option<ListenerTlsState>, ServerError> {
    let Some(files) = &listener.tls else {
        return Ok(None);
    };
    let config =
        tls::load_server_config(&files.cert, &files.key, files.alpn).map_err(|source| {
            ServerError::Tls {
                addr: listener.address,
                source: Box::new(source),
            }
        })?;
    Ok(Some(ListenerTlsState {
        files: files.clone(),
        config,
    }))
}

/// Reads and checks the certificate and key files of a `tls = true`
/// listener; `Ok(None)` for a plain listener. Touches nothing but the two
/// files, so `--check-config` can use it.
pub fn load_listener_tls(
    listener: &ListenerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsConfigError> {
    match &listener.tls {
        None => Ok(None),
        Some(tls) => tls::load_server_config(&tls.cert, &tls.key, tls.alpn).map(Some),
    }
}

/// Binds a non-blocking listening socket with [`LISTEN_BACKLOG`] (mio's own
/// `bind` uses 128), with `SO_REUSEPORT` when `reuse_port`.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&socket, true)?;
    // Lets other processes (of the same user) bind the same address as
    // well, each with this option; the kernel then spreads new connections
    // among the listening sockets by a hash of the client's address.
    if reuse_port {
        sockopt::set_socket_reuseport(&socket, true)?;
    }
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(std::net::TcpListener::from(socket)))
}

/// Adds to "address in use" what the operator can do about it; other
/// errors pass unchanged.
fn explain_bind_error(source: io::Error) -> io::Error {
    if source.kind() != io::ErrorKind::AddrInUse {
        return source;
    }
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{source}: another socket listens there (several wshub processes share an \
             address only when each of them sets reuse_port = true on it)"
        ),
    )
}

/// The listening sockets and the state of accepting.
pub(super) struct Listeners {
    /// Indexed by token: listener `i` is registered as `Token(i)`.
    pub list: Vec<Listener>,
    /// Accepting is paused until then (out of file descriptors).
    paused_until: Option<u64>,
    /// The canned answer for connections beyond `max_connections`.
    busy_response: Vec<u8>,
    /// The canned answer for connections beyond `max_connections_per_ip`.
    too_many_response: Vec<u8>,
}

impl Listeners {
    pub(super) fn new(list: Vec<Listener>) -> Listeners {
        let mut busy_response = Vec::new();
        http::write_response(
            503,
            &[("Retry-After", "5")],
            b"server is at its connection limit\n",
            true,
            &mut busy_response,
        );
        let mut too_many_response = Vec::new();
        http::write_response(
            429,
            &[("Retry-After", "5")],
            b"too many connections from this address\n",
            true,
            &mut too_many_response,
        );
        Listeners {
            list,
            paused_until: None,
            busy_response,
            too_many_response,
        }
    }

    /// The listener registered as `token`, if it is one.
    pub(super) fn index_of(&self, token: Token) -> Option<usize> {
        (token.0 < self.list.len()).then_some(token.0)
    }

    /// When a paused accept resumes, for the poll timeout.
    pub(super) fn paused_until(&self) -> Option<u64> {
        self.paused_until
    }

    /// Stops listening for good (shutdown).
    pub(super) fn close_all(&mut self, registry: &Registry) {
        for listener in &mut self.list {
            listener.deregister(registry);
        }
        self.list.clear();
        self.paused_until = None;
    }
}

impl Server {
    /// Accepts on every listener once a pause for lack of descriptors is over.
    pub(super) fn resume_accepting(&mut self, now: u64) {
        if self.listeners.paused_until.is_some_and(|t| t <= now) {
            self.listeners.paused_until = None;
            for index in 0..self.listeners.list.len() {
                self.accept(index, now);
            }
        }
    }

    /// Accepts until the listener's queue is empty.
    pub(super) fn accept(&mut self, index: usize, now: u64) {
        if self.listeners.paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.list.get(index) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => self.admit(index, stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    // Pending connections stay in the backlog; retrying at
                    // once would spin, so wait for descriptors to free up.
                    warn!("out of file descriptors, pausing accept: {e}");
                    self.listeners.paused_until = Some(now + ACCEPT_PAUSE_MS);
                    return;
                }
                // A connection that died in the backlog, or a transient
                // failure: it concerns that one connection only.
                Err(e) => debug!("accept failed: {e}"),
            }
        }
    }

    fn admit(&mut self, listener: usize, mut stream: TcpStream, peer: SocketAddr, now: u64) {
        if self.life.shutdown.is_some() {
            return;
        }
        let tls = self
            .listeners
            .list
            .get(listener)
            .and_then(|l| l.tls.as_ref())
            .map(|t| (Arc::clone(&t.config), t.files.ktls));
        if self.conns.len() >= self.config.max_connections {
            // Best effort: a refused client gets a reason if its socket has
            // room. A TLS client would take plaintext for a broken record,
            // so it is just closed.
            if tls.is_none() {
                let _ = io::Write::write(&mut stream, &self.listeners.busy_response);
            }
            self.metrics.refuse(Refused::OverCapacity);
            debug!("refused {peer}: connection limit reached");
            return;
        }
        let limit = Some(self.config.max_connections_per_ip).filter(|&max| max > 0);
        // Given back on every early return below; kept only once the
        // connection is in the slab.
        let Some(claim) = self.per_ip.claim(peer.ip(), limit) else {
            if tls.is_none() {
                let _ = io::Write::write(&mut stream, &self.listeners.too_many_response);
            }
            self.metrics.refuse(Refused::TooManyFromAddress);
            debug!("refused {peer}: max_connections_per_ip reached");
            return;
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= FIRST_RESERVED_KEY {
            return;
        }
        let generation = self.next_generation;
        self.next_generation = match self.next_generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let token = token_of(key, generation);
        // Small frames must not wait for ACKs of earlier ones.
        let _ = stream.set_nodelay(true);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            debug!("cannot register {peer}: {e}");
            return;
        }
        let transport = match tls {
            None => Transport::Plain(stream),
            Some((config, ktls)) => match TlsStream::new(config, ktls, stream) {
                Ok(tls) => Transport::Tls(Box::new(tls)),
                Err(e) => {
                    // The socket was closed with the failed stream, which
                    // also took it out of the poller.
                    warn!("cannot start TLS for {peer}: {e}");
                    return;
                }
            },
        };
        entry.insert(Slot::new(
            transport,
            Connection::new(peer, now),
            generation,
            claim.keep(),
        ));
        self.metrics.connections += 1;
        debug!("connection {key} from {peer}");
        self.sync_timer(key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    /// Accepts the one pending connection of listener 0 (bounded wait).
    fn accept_one(server: &Server) -> (TcpStream, SocketAddr) {
        for _ in 0..500 {
            match server.listeners.list[0].socket.accept() {
                Ok(accepted) => return accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        panic!("no connection to accept");
    }

    /// Admission that fails after the per-address count was taken (here the
    /// poller refuses the socket) must give the count back.
    #[test]
    fn a_socket_the_poller_refuses_gives_its_per_address_count_back() {
        let config = Config {
            listeners: vec![ListenerConfig::plain("127.0.0.1:0".parse().unwrap())],
            max_connections_per_ip: 1,
            ..Config::default()
        };
        let mut server = Server::bind(config).unwrap();
        let addr = server.local_addrs()[0];
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (mut stream, peer) = accept_one(&server);
        // Registered already: registering it again fails inside admit.
        server
            .poll
            .registry()
            .register(&mut stream, Token(1 << 40), Interest::READABLE)
            .unwrap();
        server.admit(0, stream, peer, 0);
        assert_eq!(server.conns.len(), 0);
        assert!(server.per_ip.is_empty(), "the count leaked");

        // The address may still connect.
        let _again = std::net::TcpStream::connect(addr).unwrap();
        let (stream, peer) = accept_one(&server);
        server.admit(0, stream, peer, 0);
        assert_eq!(server.conns.len(), 1);
    }

    /// A free loopback port: bound once with port 0 and released.
    fn free_port() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    #[test]
    fn reuse_port_listeners_share_an_address() {
        let addr = free_port();
        let shared = ListenerConfig {
            reuse_port: true,
            ..ListenerConfig::plain(addr)
        };
        let first = Listener::bind_all(std::slice::from_ref(&shared)).unwrap();
        let second = Listener::bind_all(std::slice::from_ref(&shared)).unwrap();
        assert_eq!(first[0].local_addr(), Some(addr));
        assert_eq!(second[0].local_addr(), Some(addr));
        for listener in first.iter().chain(&second) {
            assert!(rustix::net::sockopt::socket_reuseport(&listener.socket).unwrap());
            assert!(rustix::net::sockopt::socket_reuseaddr(&listener.socket).unwrap());
        }
        // A socket without the option is refused beside them.
        let Err(err) = Listener::bind_all(&[ListenerConfig::plain(addr)]) else {
            panic!("bound {addr} twice without reuse_port");
        };
        let message = err.to_string();
        assert!(message.contains("in use"), "{message}");
        assert!(message.contains("reuse_port = true"), "{message}");
    }

    #[test]
    fn without_reuse_port_a_second_bind_is_address_in_use() {
        let addr = free_port();
        let plain = [ListenerConfig::plain(addr)];
        let first = Listener::bind_all(&plain).unwrap();
        assert!(!rustix::net::sockopt::socket_reuseport(&first[0].socket).unwrap());
        let Err(ServerError::Bind {
            addr: failed,
            source,
        }) = Listener::bind_all(&plain)
        else {
            panic!("bound {addr} twice");
        };
        assert_eq!(failed, addr);
        assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        // The second one asking for it does not get in either.
        let shared = ListenerConfig {
            reuse_port: true,
            ..ListenerConfig::plain(addr)
        };
        assert!(Listener::bind_all(&[shared]).is_err());
    }

    #[test]
    fn a_passed_socket_without_so_reuseport_is_noticed_under_a_reuse_port_entry() {
        let addr = free_port();
        let plain = ListenerConfig::plain(addr);
        let shared = ListenerConfig {
            reuse_port: true,
            ..plain.clone()
        };
        let without = std::net::TcpListener::bind(addr).unwrap();
        assert!(lacks_reuse_port(
            &without,
            addr,
            std::slice::from_ref(&shared)
        ));
        // Not asked for, or for another address: nothing to say.
        assert!(!lacks_reuse_port(
            &without,
            addr,
            std::slice::from_ref(&plain)
        ));
        let elsewhere = ListenerConfig {
            address: free_port(),
            ..shared.clone()
        };
        assert!(!lacks_reuse_port(&without, addr, &[elsewhere]));
        drop(without);
        // Bound with the option (as `ReusePort=yes` in a socket unit does).
        let with = listen(addr, true).unwrap();
        assert!(!lacks_reuse_port(&with, addr, &[shared]));
    }
}
