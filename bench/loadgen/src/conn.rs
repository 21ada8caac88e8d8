//! Client WebSocket connections: dialing many of them, the opening
//! handshake, and moving frames in and out without allocating.
//!
//! Many connections to one server port need many source addresses: each
//! (source IP, source port) pair can be used once per destination, and a
//! source IP has fewer than 30,000 ephemeral ports. Sockets are therefore
//! bound to 127.0.0.2, 127.0.0.3, … in turn (`--conns-per-source` each),
//! which the loopback interface accepts without any setup.
//!
//! Those sockets set `IP_BIND_ADDRESS_NO_PORT`, so `bind` only fixes the
//! source address and `connect` picks the port knowing the destination.
//! Without it, `bind` must pick a port free for every destination: ports
//! still in TIME_WAIT from an earlier run are unusable, and the ports it
//! takes are withheld from every other socket's `connect` as well, so a few
//! large runs in a row exhaust the ephemeral range machine-wide.
//!
//! `wss://` connections run rustls sans-IO over the same non-blocking
//! sockets ([`Io::Tls`]): one `ClientConnection` each, fed from the socket
//! when it is readable and flushed to it on every write.
//!
//! With [`Sizing::sse`] a connection is a Server-Sent Events subscriber
//! instead: it asks for the channel's event stream (see [`crate::sse`]) and
//! its reads hand on the stream's messages exactly as a WebSocket
//! connection's hand on frames, on the same poller and sweeps.
//!
//! Dialing keeps a bounded number of handshakes in flight so the server's
//! listen backlog never overflows (an overflowing backlog shows up as
//! one-second SYN retransmits, which would distort connect times).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustls::ClientConnection;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Context, Deadline, Fail, Result};
use crate::sse;
use crate::stats::Rng;
use crate::target::{Target, TlsClient};
use crate::wire::{self, OutBuf};

/// Descriptors kept free for stdio, the poller, /proc reads and publishers.
const FD_RESERVE: u64 = 32;
/// Longest poll sleep, so deadlines and phase changes are noticed promptly.
pub const POLL_CAP: Duration = Duration::from_millis(100);
/// Read room for a handshake response head.
const HANDSHAKE_BUF: usize = 4096;

/// Raises the soft open-files limit to the hard limit and checks that
/// `connections` sockets fit under it.
pub fn raise_fd_limit(connections: usize) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)
            .map_err(|e| Fail::run(format!("cannot raise the open-files limit: {e}")))?;
    }
    let needed = connections as u64 + FD_RESERVE;
    match limit.maximum {
        Some(hard) if needed > hard => Err(Fail::usage(format!(
            "{connections} connections need about {needed} file descriptors, but this \
             process may open at most {hard} (hard limit, `ulimit -Hn`). Use fewer \
             connections, or raise the hard limit where that is allowed (as root: \
             `ulimit -Hn N` in the shell that starts loadgen, or `prlimit`)"
        ))),
        _ => Ok(()),
    }
}

/// Hands out source addresses `base`, `base + 1`, … `per_addr` times each
/// (127.0.0.2, 127.0.0.3, … by default). IPv6 has only one loopback
/// address, so there the kernel picks the source and one server port holds
/// at most one ephemeral port range of clients.
pub struct SourceAddrs {
    first: u32,
    per_addr: usize,
    used: usize,
    spread: bool,
}

impl SourceAddrs {
    pub fn new(target: SocketAddr, base: Ipv4Addr, per_addr: usize) -> SourceAddrs {
        SourceAddrs {
            first: u32::from(base),
            per_addr: per_addr.max(1),
            used: 0,
            spread: target.is_ipv4(),
        }
    }

    fn next(&mut self) -> Result<Option<SocketAddr>> {
        if !self.spread {
            return Ok(None);
        }
        let ip = u32::try_from(self.used / self.per_addr)
            .ok()
            .and_then(|k| self.first.checked_add(k))
            .map(Ipv4Addr::from)
            .filter(|ip| ip.is_loopback())
            .ok_or_else(|| {
                Fail::usage("source addresses would leave 127.0.0.0/8; lower --source-base")
            })?;
        self.used += 1;
        Ok(Some(SocketAddr::new(IpAddr::V4(ip), 0)))
    }
}

/// Buffer sizes of one connection, fixed before dialing.
#[derive(Clone, Copy)]
pub struct Sizing {
    /// Largest message payload the run expects from the server.
    pub max_payload: usize,
    /// Output bytes the connection may hold at once (all its in-flight
    /// frames), allocated up front.
    pub out_capacity: usize,
    /// Offer permessage-deflate and require the server to accept it;
    /// compressed messages are inflated before `on_message` sees them.
    pub deflate: bool,
    /// Subscribe to the channel's event stream (Server-Sent Events) rather
    /// than open a WebSocket.
    pub sse: bool,
}

thread_local! {
    /// One inflater for every connection: messages are inflated whole, one
    /// at a time, so nothing is kept per connection.
    static INFLATER: std::cell::RefCell<wire::Inflater> =
        std::cell::RefCell::new(wire::Inflater::default());
    static COMPRESSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Compressed (RSV1) messages received so far by this thread's connections.
pub fn compressed_received() -> u64 {
    COMPRESSED.with(std::cell::Cell::get)
}

impl Sizing {
    /// The longest frame (or event) that carries a message: what a
    /// connection may carry over from one read to the next.
    fn max_unit(&self) -> usize {
        match self.sse {
            true => sse::max_event_len(self.max_payload),
            false => self.max_payload + wire::MAX_SERVER_HEADER,
        }
    }

    /// A shared read buffer big enough for any carried-over partial frame
    /// plus a useful amount of fresh input.
    pub fn scratch(&self) -> Vec<u8> {
        vec![0; 2 * self.max_unit() + 64 * 1024]
    }
}

/// Ciphertext rustls may hold for sending per connection.
const TLS_SEND_LIMIT: usize = 64 * 1024;

/// The byte stream under one client connection.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsIo>),
}

/// rustls driven by hand over a non-blocking socket.
pub struct TlsIo {
    conn: ClientConnection,
    tcp: TcpStream,
    eof: bool,
}

impl Io {
    fn new(tcp: TcpStream, tls: Option<&TlsClient>) -> Result<Io> {
        let Some(tls) = tls else {
            return Ok(Io::Plain(tcp));
        };
        let mut conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
            .map_err(|e| Fail::run(format!("TLS setup: {e}")))?;
        conn.set_buffer_limit(Some(TLS_SEND_LIMIT));
        Ok(Io::Tls(Box::new(TlsIo {
            conn,
            tcp,
            eof: false,
        })))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(t) => &t.tcp,
        }
    }

    /// Over TLS a short read does not mean the socket is drained (rustls
    /// hands out a record at a time), so callers read on to `WouldBlock`.
    fn is_tls(&self) -> bool {
        matches!(self, Io::Tls(_))
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(t) => t.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(t) => t.write(buf),
        }
    }

    /// Sends records rustls still holds (the socket was full before).
    fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(_) => Ok(()),
            Io::Tls(t) => t.flush(),
        }
    }

    fn wants_write(&self) -> bool {
        match self {
            Io::Plain(_) => false,
            Io::Tls(t) => t.conn.wants_write(),
        }
    }
}

impl TlsIo {
    /// Plaintext, pulling records from the socket as needed; `Ok(0)` at
    /// the end of the stream, `WouldBlock` once the socket is drained.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if self.conn.read_tls(&mut self.tcp)? == 0 {
                self.eof = true;
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Handshake messages (and plaintext written during it) go now.
            self.flush()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush()?;
        let n = self.conn.writer().write(buf)?;
        self.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes pending records until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An open WebSocket connection, or an event stream ([`Sizing::sse`]).
pub struct WsConn {
    stream: Io,
    /// A partial frame (or event) left over from the last read; capacity is
    /// one frame, so it never reallocates.
    carry: Vec<u8>,
    /// Frames waiting to be written (never any on an event stream).
    pub out: OutBuf,
    /// permessage-deflate was negotiated.
    deflate: bool,
    /// The connection is an event stream.
    sse: bool,
}

impl WsConn {
    fn new(stream: Io, early: &[u8], sizing: Sizing) -> WsConn {
        let mut carry = Vec::with_capacity(sizing.max_unit());
        carry.extend_from_slice(early);
        WsConn {
            stream,
            carry,
            out: OutBuf::with_capacity(sizing.out_capacity),
            deflate: sizing.deflate,
            sse: sizing.sse,
        }
    }

    /// Reads what the socket has and hands each complete message to
    /// `on_message(out, opcode, payload)`; `out` is this connection's
    /// output buffer, for replies. Answers pings, fails on a close frame,
    /// fragmented messages, or the connection closing. An event stream's
    /// messages come as text or binary ones (see [`crate::sse`]).
    ///
    /// Stops after a short read: with edge-triggered readiness, data that
    /// arrives later raises a new event, so reading on until `WouldBlock`
    /// would only cost a syscall. `read_to_end` (the event reported a
    /// hang-up) reads on anyway to surface the EOF.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        max_payload: usize,
        read_to_end: bool,
        mut on_message: impl FnMut(&mut OutBuf, u8, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut filled = self.carry.len();
        scratch[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        let (deflate, sse, out) = (self.deflate, self.sse, &mut self.out);
        let mut take = |scratch: &mut [u8], filled| match sse {
            true => take_events(scratch, filled, max_payload, out, &mut on_message),
            false => take_frames(scratch, filled, max_payload, deflate, out, &mut on_message),
        };
        if filled > 0 {
            // Whole frames that came with the handshake's answer (or were
            // left by the last read) are delivered even if no more arrive.
            filled = take(scratch, filled)?;
        }
        let read_to_end = read_to_end || self.stream.is_tls();
        loop {
            let room = scratch.len() - filled;
            let n = match self.stream.read(&mut scratch[filled..]) {
                Ok(0) => return Err(Fail::run("server closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::run(format!("read failed: {e}"))),
            };
            filled = take(scratch, filled + n)?;
            if n < room && !read_to_end {
                break;
            }
        }
        self.carry.extend_from_slice(&scratch[..filled]);
        Ok(())
    }

    /// True while output is queued here or, over TLS, in rustls.
    pub fn wants_flush(&self) -> bool {
        !self.out.is_empty() || self.stream.wants_write()
    }

    /// Writes as much pending output as the socket takes.
    pub fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return self
                .stream
                .flush_pending()
                .map_err(|e| Fail::run(format!("write failed: {e}")));
        }
        while !self.out.is_empty() {
            match self.stream.write(self.out.pending()) {
                Ok(0) => return Err(Fail::run("connection accepts no more data")),
                Ok(n) => self.out.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::run(format!("write failed: {e}"))),
            }
        }
        Ok(())
    }
}

/// Walks the complete frames at the start of `buf`; returns the bytes used.
/// Hands the whole frames among the first `filled` bytes of `scratch` to
/// `on_message` (see [`parse_frames`]) and moves what is left of a partial
/// one to the front; returns its length.
fn take_frames(
    scratch: &mut [u8],
    filled: usize,
    max_payload: usize,
    deflate: bool,
    out: &mut OutBuf,
    on_message: &mut impl FnMut(&mut OutBuf, u8, &[u8]) -> Result<()>,
) -> Result<usize> {
    let used = parse_frames(&scratch[..filled], max_payload, deflate, out, |o, op, p| {
        on_message(o, op, p)
    })?;
    scratch.copy_within(used..filled, 0);
    Ok(filled - used)
}

/// Like [`take_frames`], for an event stream's events.
fn take_events(
    scratch: &mut [u8],
    filled: usize,
    max_payload: usize,
    out: &mut OutBuf,
    on_message: &mut impl FnMut(&mut OutBuf, u8, &[u8]) -> Result<()>,
) -> Result<usize> {
    let used = sse::parse_events(&scratch[..filled], max_payload, |op, p| {
        on_message(out, op, p)
    })?;
    scratch.copy_within(used..filled, 0);
    Ok(filled - used)
}

fn parse_frames(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
    out: &mut OutBuf,
    mut on_message: impl FnMut(&mut OutBuf, u8, &[u8]) -> Result<()>,
) -> Result<usize> {
    let mut pos = 0;
    while let Some(frame) = wire::decode_server(&buf[pos..], max_payload)? {
        let payload = &buf[pos + frame.payload_start..pos + frame.payload_end];
        if frame.compressed && !(deflate && matches!(frame.opcode, wire::OP_TEXT | wire::OP_BINARY))
        {
            return Err(Fail::run(
                "server set RSV1 on a frame that cannot be compressed here",
            ));
        }
        match frame.opcode {
            wire::OP_TEXT | wire::OP_BINARY if frame.fin && frame.compressed => {
                COMPRESSED.with(|c| c.set(c.get() + 1));
                INFLATER.with(|inflater| {
                    let mut inflater = inflater.borrow_mut();
                    let message = inflater.inflate(payload, max_payload)?;
                    on_message(out, frame.opcode, message)
                })?;
            }
            wire::OP_TEXT | wire::OP_BINARY if frame.fin => on_message(out, frame.opcode, payload)?,
            wire::OP_TEXT | wire::OP_BINARY | 0 => {
                return Err(Fail::run(
                    "server fragmented a message; loadgen expects each message in one frame",
                ));
            }
            // The benchmark config disables server pings, but answering one
            // is cheap and keeps a server with pings on from dropping us.
            wire::OP_PING => wire::encode_masked(out, wire::OP_PONG, [0; 4], &[payload]),
            wire::OP_PONG => {}
            wire::OP_CLOSE => {
                return Err(Fail::run(format!(
                    "server closed the connection ({})",
                    wire::describe_close(payload)
                )));
            }
            other => return Err(Fail::run(format!("server sent unknown opcode {other:#x}"))),
        }
        pos += frame.payload_end;
    }
    Ok(pos)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+) on an IPv4 socket; see the
/// module docs for why. Neither socket2 nor rustix wraps this option, hence
/// the one direct `setsockopt` call.
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor belongs to `socket`, which outlives the call;
    // the option value points to a live `c_int` and its exact size is
    // passed, so the kernel reads only valid memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A connection between socket creation and the 101 response.
struct Dialing {
    stream: Io,
    source: Option<SocketAddr>,
    request: Vec<u8>,
    sent: usize,
    /// The Sec-WebSocket-Accept expected; `None` for an event stream.
    accept: Option<String>,
    response: Vec<u8>,
    deflate: bool,
}

impl Dialing {
    fn start(
        target: &Target,
        source: Option<SocketAddr>,
        registry: &mio::Registry,
        token: Token,
        rng: &mut Rng,
        sizing: Sizing,
    ) -> Result<Dialing> {
        let socket = Socket::new(
            Domain::for_address(target.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(|e| {
            Fail::run(format!(
                "cannot create a socket: {e} (out of file descriptors? see `ulimit -Hn`)"
            ))
        })?;
        socket
            .set_nonblocking(true)
            .context(|| "set_nonblocking".to_owned())?;
        // Small frames must leave at once, not wait for Nagle.
        socket
            .set_tcp_nodelay(true)
            .context(|| "set TCP_NODELAY".to_owned())?;
        if let Some(source) = source {
            bind_address_no_port(&socket).context(|| "set IP_BIND_ADDRESS_NO_PORT".to_owned())?;
            socket
                .bind(&source.into())
                .map_err(|e| Fail::run(format!("cannot bind to source address {source}: {e}")))?;
        }
        match socket.connect(&target.addr.into()) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error())
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(Fail::run(format!(
                    "connect to {}: {e}{}",
                    target.addr,
                    if e.raw_os_error() == Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()) {
                        " (no free source port: lower --conns-per-source)"
                    } else {
                        ""
                    }
                )));
            }
        }
        let mut stream = TcpStream::from_std(socket.into());
        registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .context(|| "register socket".to_owned())?;
        let stream = Io::new(stream, target.tls.as_ref())?;
        let (request, accept) = match sizing.sse {
            true => (sse::request(&target.host, &target.path), None),
            false => {
                let (request, accept) = wire::handshake_request(
                    &target.host,
                    &target.path,
                    rng.nonce(),
                    sizing.deflate,
                );
                (request, Some(accept))
            }
        };
        Ok(Dialing {
            stream,
            source,
            request,
            sent: 0,
            accept,
            response: Vec::with_capacity(HANDSHAKE_BUF),
            deflate: sizing.deflate,
        })
    }

    /// Moves the handshake on; returns the response head length once the
    /// server has accepted.
    fn advance(&mut self, path: &str) -> Result<Option<usize>> {
        if self.sent < self.request.len() {
            if let Some(e) = self
                .stream
                .tcp()
                .take_error()
                .context(|| "SO_ERROR".to_owned())?
            {
                return Err(Fail::run(format!("connect failed: {e}")));
            }
            match self.stream.tcp().peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
                Err(e) => return Err(Fail::run(format!("connect failed: {e}"))),
            }
            while self.sent < self.request.len() {
                match self.stream.write(&self.request[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Fail::run(format!("sending the handshake: {e}"))),
                }
            }
        }
        let mut buf = [0u8; HANDSHAKE_BUF];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // Show whatever the server said before closing.
                    self.check_response(path)?;
                    return Err(Fail::run(
                        "server closed the connection during the handshake",
                    ));
                }
                Ok(n) => self.response.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::run(format!("reading the handshake: {e}"))),
            }
            if self.response.len() > 64 * 1024 {
                return Err(Fail::run("handshake response head is over 64 KiB"));
            }
        }
        self.check_response(path)
    }

    /// The response head's length once it is complete and accepts.
    fn check_response(&self, path: &str) -> Result<Option<usize>> {
        match &self.accept {
            Some(accept) => {
                wire::check_handshake_response(&self.response, accept, path, self.deflate)
            }
            None => sse::check_response(&self.response, path),
        }
    }
}

enum Slot {
    Waiting,
    Dialing(Box<Dialing>),
    Open(WsConn),
}

/// What to dial.
pub struct DialPlan<'a> {
    pub target: &'a Target,
    pub count: usize,
    /// Connection `i` gets token `token_base + i`.
    pub token_base: usize,
    pub sizing: Sizing,
    /// Handshakes in flight at once.
    pub max_dialing: usize,
}

/// Where a scenario connects and how it spreads its sockets.
#[derive(Debug, PartialEq)]
pub struct DialOptions {
    pub url: Target,
    /// Further servers (broadcast only: the nodes of a cluster), each
    /// given an even share of the subscribers.
    pub more_urls: Vec<Target>,
    /// Client sockets per source address.
    pub per_source: usize,
    /// First source address (127.0.0.2 by default).
    pub source_base: Ipv4Addr,
    /// Handshakes in flight at once.
    pub max_dialing: usize,
}

/// Dials `count` connections to the scenario's URL, spread over source
/// addresses as the options say: how every scenario connects.
pub fn dial_scenario(
    poll: &mut Poll,
    events: &mut Events,
    dial: &DialOptions,
    count: usize,
    sizing: Sizing,
    rng: &mut Rng,
    deadline: &Deadline,
) -> Result<Vec<WsConn>> {
    let mut sources = SourceAddrs::new(dial.url.addr, dial.source_base, dial.per_source);
    let plan = DialPlan {
        target: &dial.url,
        count,
        token_base: 0,
        sizing,
        max_dialing: dial.max_dialing,
    };
    dial_all(poll, events, &plan, &mut sources, rng, deadline)
}

/// Opens the planned WebSocket connections (or event streams) and returns
/// them once every handshake has completed. Events for other tokens that arrive meanwhile
/// are dropped, so callers sweep their older connections afterwards.
pub fn dial_all(
    poll: &mut Poll,
    events: &mut Events,
    plan: &DialPlan<'_>,
    sources: &mut SourceAddrs,
    rng: &mut Rng,
    deadline: &Deadline,
) -> Result<Vec<WsConn>> {
    let DialPlan {
        target,
        count,
        token_base,
        sizing,
        max_dialing,
    } = *plan;
    let streams;
    let target = match sizing.sse {
        true => {
            streams = sse::stream_target(target);
            &streams
        }
        false => target,
    };
    let mut slots: Vec<Slot> = (0..count).map(|_| Slot::Waiting).collect();
    let (mut next, mut dialing, mut open) = (0, 0, 0);
    while open < count {
        while dialing < max_dialing.max(1) && next < count {
            let source = sources.next()?;
            let d = Dialing::start(
                target,
                source,
                poll.registry(),
                Token(token_base + next),
                rng,
                sizing,
            )
            .map_err(|e| {
                Fail::run(format!(
                    "connection {next} of {count} to {}: {}",
                    target.addr, e.message
                ))
            })?;
            slots[next] = Slot::Dialing(Box::new(d));
            next += 1;
            dialing += 1;
        }
        let now = Instant::now();
        deadline.check(now, &format!("connecting ({open} of {count} open)"))?;
        poll_once(poll, events, deadline.poll_timeout(now, POLL_CAP))?;
        for event in events.iter() {
            let Some(i) = event
                .token()
                .0
                .checked_sub(token_base)
                .filter(|&i| i < count)
            else {
                continue;
            };
            let Slot::Dialing(d) = &mut slots[i] else {
                continue;
            };
            let head = d.advance(&target.path).map_err(|e| {
                let from = d
                    .source
                    .map(|s| format!(" from {}", s.ip()))
                    .unwrap_or_default();
                Fail::run(format!(
                    "connection {i} of {count}{from} to {}: {} ({open} were open)",
                    target.addr, e.message
                ))
            })?;
            if let Some(head) = head {
                let Slot::Dialing(d) = std::mem::replace(&mut slots[i], Slot::Waiting) else {
                    unreachable!("slot checked above");
                };
                let d = *d;
                slots[i] = Slot::Open(WsConn::new(d.stream, &d.response[head..], sizing));
                dialing -= 1;
                open += 1;
            }
        }
    }
    Ok(slots
        .into_iter()
        .filter_map(|s| match s {
            Slot::Open(c) => Some(c),
            _ => None,
        })
        .collect())
}

/// One `poll` call; an interrupted poll just returns no events.
pub fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Duration) -> Result<()> {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(Fail::run(format!("poll failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sources_over_loopback_addresses() {
        let base = Ipv4Addr::new(127, 0, 0, 2);
        let mut s = SourceAddrs::new("127.0.0.1:80".parse().unwrap(), base, 2);
        let ips: Vec<_> = (0..5).map(|_| s.next().unwrap().unwrap().ip()).collect();
        let want: Vec<IpAddr> = [
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.4",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(ips, want);
        let mut many = SourceAddrs::new("127.0.0.1:80".parse().unwrap(), base, 1);
        many.used = 300;
        let ip = many.next().unwrap().unwrap().ip();
        assert_eq!(ip, "127.0.1.46".parse::<IpAddr>().unwrap());
        let top = Ipv4Addr::new(127, 255, 255, 254);
        let mut edge = SourceAddrs::new("127.0.0.1:80".parse().unwrap(), top, 1);
        assert!(edge.next().unwrap().is_some());
        assert!(
            edge.next().unwrap().is_some(),
            "127.255.255.255 is still loopback"
        );
        assert!(edge.next().is_err(), "128.0.0.0 is not");
        let mut v6 = SourceAddrs::new("[::1]:80".parse().unwrap(), base, 2);
        assert_eq!(v6.next().unwrap(), None);
    }

    #[test]
    fn frames_are_split_into_messages_and_pings_answered() {
        let mut buf = vec![0x82, 2, 1, 2, 0x89, 1, 9, 0x81, 1, b'x', 0x82];
        let mut out = OutBuf::with_capacity(0);
        let mut seen = Vec::new();
        let used = parse_frames(&buf, 100, false, &mut out, |_, op, p| {
            seen.push((op, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(used, 10, "the lone trailing byte waits for more");
        assert_eq!(seen, vec![(2, vec![1, 2]), (1, vec![b'x'])]);
        assert_eq!(
            out.pending(),
            [0x8a, 0x81, 0, 0, 0, 0, 9],
            "pong with zero mask"
        );
        buf = vec![0x88, 2, 0x03, 0xe8];
        let err = parse_frames(&buf, 100, false, &mut out, |_, _, _| Ok(())).unwrap_err();
        assert!(err.message.contains("1000"), "{}", err.message);
        buf = vec![0x02, 1, 0];
        assert!(parse_frames(&buf, 100, false, &mut out, |_, _, _| Ok(())).is_err());
    }

    #[test]
    fn compressed_messages_are_inflated_only_when_negotiated() {
        let data = b"abcabcabcabcabcabcabcabc".repeat(8);
        let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
        let mut packed = Vec::with_capacity(1024);
        c.compress_vec(&data, &mut packed, flate2::FlushCompress::Sync)
            .unwrap();
        packed.truncate(packed.len() - 4);
        let mut buf = vec![0xc2, packed.len() as u8];
        buf.extend_from_slice(&packed);
        let mut out = OutBuf::with_capacity(0);
        let mut seen = Vec::new();
        let before = compressed_received();
        parse_frames(&buf, 1000, true, &mut out, |_, op, p| {
            seen.push((op, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(2, data.clone())]);
        assert_eq!(compressed_received(), before + 1);
        assert!(parse_frames(&buf, 1000, false, &mut out, |_, _, _| Ok(())).is_err());
        // RSV1 on a control frame is never valid.
        assert!(parse_frames(&[0xc9, 0], 1000, true, &mut out, |_, _, _| Ok(())).is_err());
    }
}
