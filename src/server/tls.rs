//! TLS (wss://) for one connection over a non-blocking socket, driven by the
//! edge-triggered loop.
//!
//! Owns: one rustls [`UnbufferedServerConnection`] and the TCP socket under
//! it; the bytes between them: a connection's own buffers, which exist only
//! while they hold bytes, and the loop-wide scratch buffers that records are
//! decrypted and encrypted in (the handshake is driven from
//! [`TlsStream::read`]); with kTLS, handing the record layer to the kernel
//! after the handshake (through [`ktls`]); loading certificate and key files
//! into a shareable [`ServerConfig`].
//! Must never: block, interpret the plaintext it carries, buffer without
//! bound, keep an empty buffer allocated, or report a short read while input
//! it could still deliver sits in the socket or in the stream (the loop only
//! reads again after a new edge).
//!
//! # Using it from the loop
//!
//! - At start, at `--check-config` and on SIGHUP: [`load_server_config`]
//!   builds an `Arc<ServerConfig>` from PEM files. Reloading is swapping that
//!   `Arc`: each [`TlsStream::new`] takes the one current at accept time, so
//!   new connections get the new certificate while established ones keep the
//!   config they were accepted with until they close. A failed reload leaves
//!   the old `Arc` in place.
//! - On accept: `TlsStream::new(config.clone(), stream)`, wrapped as
//!   `Transport::Tls(Box::new(..))`, registered through
//!   [`TlsStream::source`] like a plain socket.
//! - Reads: [`TlsStream::read`] keeps the plain-socket contract the loop
//!   relies on. A full read may leave more behind; a short read (or
//!   `WouldBlock`) means the socket was drained to `WouldBlock` and all
//!   decrypted input was handed over. `Ok(0)` is a clean end: close_notify,
//!   or TCP EOF once the handshake is done (WebSocket has its own close
//!   frame, so truncation is visible one level up). A TCP EOF during the
//!   handshake is `UnexpectedEof`; anything that is not TLS (plaintext HTTP,
//!   random bytes) or a TLS protocol violation is `InvalidData` after a best
//!   effort alert — drop the connection quietly. The one thing a short read
//!   cannot also say is "and then the stream ended": an end that arrives
//!   with the last data is reported by the next read, which the loop makes
//!   on the hang-up event (`read_to_end`); a close_notify without FIN is
//!   seen at the next readable edge or the close timeout.
//! - Writes: [`TlsStream::write_vectored`] encrypts plaintext (small slices
//!   gathered into one record) and sends what the socket takes; the rest of
//!   the records, at most about [`SEND_BUFFER_LIMIT`], waits in the stream.
//!   It returns `WouldBlock` only while such records wait, which means the
//!   socket is blocked, so a WRITABLE edge follows; during the handshake,
//!   plaintext waits (up to the same limit) until the handshake completes.
//! - Interest: keep WRITABLE while [`TlsStream::wants_write`] is true even
//!   if the outbound queue is empty (handshake records, the tail of the
//!   last write, close_notify), and call [`TlsStream::flush`] on WRITABLE.
//! - Close: [`TlsStream::shutdown_write`] queues close_notify and sends FIN
//!   once it is out; if the socket was full, the FIN goes from the
//!   [`TlsStream::flush`] that empties it. Under kTLS, only the FIN.
//! - Never write to the socket directly (e.g. the canned 503 for accepts
//!   over `max_connections`): a TLS client would take it for a broken
//!   record. Close such sockets without a word instead.
//!
//! # Memory per connection
//!
//! rustls's unbuffered API leaves every buffer to the caller. Ciphertext is
//! read into, and records are encrypted in, scratch buffers shared by every
//! connection of the loop's thread (a `thread_local!`: 64 KiB to receive,
//! up to about 80 KiB to send). A connection keeps bytes in `Vec`s of its
//! own only while there are some: the head of a record whose tail has not
//! arrived, records the socket did not take, decrypted input that did not
//! fit the caller's buffer, plaintext written during the handshake. Each is
//! freed (capacity 0) as soon as it is empty, so an idle connection holds
//! none. Our code allocates nothing per message in the steady state;
//! rustls 0.23 itself still copies each decrypted record into a `Vec` and
//! builds each encrypted record in one before copying it out, one
//! short-lived allocation per record each way.
//!
//! What an idle established connection holds (measured by
//! `tests::idle_connection_heap` with a counting allocator, after the shared
//! session cache is full; ring provider, SNI and ALPN `http/1.1` sent):
//!
//! | what | bytes | blocks |
//! |---|---:|---:|
//! | `TlsStream` in `Transport`'s box: socket, 4 empty `Vec`s, flags, the pointer below (136 in debug builds) | 128 | 1 |
//! | rustls's `UnbufferedServerConnection` (common state, record layer, handshake joiner), boxed so kTLS can drop it | 1,088 | 1 |
//! | rustls handshake deframer span table (16 spans, allocated at creation, kept for life) | 640 | 1 |
//! | record layer, send direction: ring's AES-GCM key (expanded AES key, GHASH table) and IV | 560 | 1 |
//! | record layer, receive direction: the same | 560 | 1 |
//! | state box: TLS 1.3 `ExpectTraffic` with the key schedule kept for key updates (traffic and exporter secrets); TLS 1.2: 120 | 224 | 1 |
//! | queue of records to send, 4 slots kept from the handshake | 96 | 1 |
//! | SNI name (here "localhost") and agreed ALPN ("http/1.1") | 17 | 2 |
//! | queue of received plaintext, 4 slots kept after the first message | 96 | 1 |
//!
//! Fresh after the handshake, beside the `TlsStream`: 3,185 heap bytes in 8
//! blocks (TLS 1.2: 3,081); after 100 messages each way, 3,281 in 9 (TLS
//! 1.2: 3,177), and no more after 200. With malloc's per-block overhead that
//! is about 3.6 KiB per idle wss:// connection on top of the ~170 B of a
//! ws:// one (measured: 3.9 KB of RSS per connection at 5,000 idle wss://
//! subscribers). Before this design (rustls's buffered `ServerConnection`)
//! an idle connection held about 8 KiB: the same state plus a 4 KiB record
//! reader buffer and send and receive queues.
//!
//! The target of 1 KiB per idle subscriber cannot be met with TLS
//! in user space: rustls's own state is 3.2 KB (the 1,088-byte connection
//! and 2.1 KB it allocates), of which the keys are 1,120 bytes and the span
//! table 640. A cipher suite with a smaller key state would not help: with
//! ring, AES-256-GCM and ChaCha20-Poly1305 keys take the same 560 bytes per
//! direction as AES-128-GCM (the key type is sized for the largest
//! algorithm), so preferring one changes nothing. Only handing the record
//! layer to the kernel does (below).
//!
//! Beside the connections: the TLS 1.3 session cache lives in the shared
//! `ServerConfig` (256 entries of about 170 bytes), and the scratch buffers
//! exist once per loop thread. `Transport` stays 16 bytes, so plain
//! connections do not pay for TLS.
//!
//! # Kernel TLS
//!
//! With `ktls = true` on the listener (the config then allows secret
//! extraction, which is how [`TlsStream::new`] knows), a connection whose
//! handshake is done and which holds no record either way (checked after
//! each read that drained the socket) attaches the kernel's `tls`
//! upper-layer protocol and hands it the traffic keys, IVs and sequence
//! numbers; rustls's connection is then dropped, and the stream reads and
//! writes the socket as plain TCP. An idle connection then holds only the
//! `TlsStream` box; the keys live in kernel memory, not in RSS. What the
//! kernel cannot do for us: a close_notify or a TLS 1.3 key update from the
//! peer makes its read fail (EIO), taken as the end of the peer's stream
//! (WebSocket has its own close frame); our own close sends no close_notify,
//! only the FIN. Where the module is absent (`setsockopt(TCP_ULP, "tls")`
//! fails with ENOENT) or the cipher suite is not one the kernel knows, the
//! connection stays in user space as above, logged once at info and counted
//! (`ktls::counts`). A kernel that takes the ULP but refuses the keys ends
//! that connection, as rustls has given its state up by then. Only the
//! fallback is exercised by the tests; the machines they run on lack the
//! module.

mod ktls;

use std::cell::Cell;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::debug;
use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
    UnbufferedStatus, WriteTraffic,
};

/// Cap on what one connection holds for sending beside the loop's own
/// queue: plaintext written before the handshake ends, and encrypted records
/// the socket has not taken. Four full records, so one `write_vectored` can
/// fill a socket buffer, while a stalled reader costs at most this much
/// (plus record overhead) beyond the connection's outbound queue.
pub(crate) const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// The ALPN name a WebSocket client offers (RFC 6455 runs over HTTP/1.1).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Plaintext per record we send: the TLS maximum (2^14), so a large write
/// costs one AEAD call and 22-29 bytes of overhead per 16 KiB.
const MAX_FRAGMENT_LEN: usize = 16 * 1024;

/// Room reserved per record when encrypting, above its plaintext: header
/// (5), TLS 1.2 explicit nonce (8), tag (16), TLS 1.3 content type (1), with
/// margin. rustls says so if it needs more, and the buffer grows.
const RECORD_OVERHEAD: usize = 64;

/// The largest record a peer may send: 5-byte header, 2^14 bytes of
/// plaintext and up to 2,048 bytes of expansion (RFC 5246 6.2.3; TLS 1.3
/// allows only 256). An incomplete record is never longer than this.
const MAX_RECORD_LEN: usize = 5 + 16 * 1024 + 2048;

/// Size of the loop-wide receive scratch: a carried-over partial record plus
/// room for reads (at least `RECV_SCRATCH_LEN - MAX_RECORD_LEN`).
const RECV_SCRATCH_LEN: usize = 64 * 1024;

/// Socket reads ask for at least this much even when the caller's buffer is
/// nearly full; decrypted input that does not fit waits in the stream (at
/// most about one record plus this) for the next read.
const MIN_SOCKET_READ: usize = 4 * 1024;

// An incomplete record plus one socket read always fit the scratch.
const _: () = assert!(RECV_SCRATCH_LEN >= MAX_RECORD_LEN + MIN_SOCKET_READ);

thread_local! {
    /// Ciphertext being processed by a read: the connection's carried-over
    /// partial record, then what the socket gave. Shared by every
    /// connection of the loop's thread; a connection keeps only the
    /// incomplete tail, in a `Vec` of its own.
    static RECV_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// Plaintext gathered from several slices into one record, and the
    /// records encrypted from it before the socket takes them.
    static SEND_SCRATCH: Cell<SendScratch> = const {
        Cell::new(SendScratch { plain: Vec::new(), records: Vec::new() })
    };
}

#[derive(Default)]
struct SendScratch {
    plain: Vec<u8>,
    records: Vec<u8>,
}

/// One TLS connection: rustls's unbuffered state machine over a
/// non-blocking socket, with buffers that exist only while they hold bytes.
pub(crate) struct TlsStream {
    /// rustls's state, boxed so that it can go on its own: `None` once the
    /// kernel took the record layer (kTLS).
    conn: Option<Box<UnbufferedServerConnection>>,
    io: Io,
}

/// Where the record layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ktls {
    /// In rustls, for good.
    Off,
    /// In rustls; to be handed to the kernel once the handshake is done and
    /// no record is held in either direction.
    Wanted,
    /// In the kernel: the socket reads and writes plaintext.
    Kernel,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.is_handshaking())
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

/// Everything but the state machine, apart so the two can be borrowed
/// separately while a rustls state borrows the connection.
#[derive(Debug)]
struct Io {
    tcp: TcpStream,
    /// Ciphertext received and not yet processed: the head of a record
    /// whose tail has not arrived. Empty and unallocated between records.
    incoming: Vec<u8>,
    /// Records the socket has not taken: handshake messages, alerts, the
    /// tail of a write. Empty and unallocated unless the socket is full.
    outgoing: Vec<u8>,
    /// Decrypted input that did not fit the caller's buffer, handed over by
    /// the next read. Empty and unallocated unless a read ended full.
    plaintext: Vec<u8>,
    /// Plaintext written before the handshake completed; encrypted as soon
    /// as it has. Empty and unallocated otherwise.
    early: Vec<u8>,
    /// A socket error met after plaintext was already gathered for the
    /// caller; that plaintext is returned first, the error on the next read
    /// (socket errors such as ECONNRESET are reported by the kernel once).
    deferred_error: Option<io::Error>,
    /// The peer's stream ended (close_notify, or TCP EOF after the
    /// handshake): reads return what is left, then Ok(0).
    read_closed: bool,
    /// `shutdown_write` was called: close_notify, then FIN.
    closing: bool,
    /// close_notify is encoded (in `outgoing` or sent).
    close_notify_queued: bool,
    /// FIN was sent.
    write_shut: bool,
    ktls: Ktls,
}

/// Where processing the buffered ciphertext stopped.
enum Progress {
    /// Everything complete was processed; more input is needed.
    NeedInput,
    /// The peer sent close_notify; everything before it was delivered.
    PeerClosed,
}

impl TlsStream {
    /// Wraps an accepted socket. `config` is the `Arc` current at accept
    /// time; the connection keeps it for its whole life, so swapping the
    /// loop's `Arc` (certificate reload) affects only later connections.
    /// Fails only for a config rustls cannot serve with (e.g. no protocol
    /// versions), never because of the peer.
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        tcp: TcpStream,
    ) -> Result<TlsStream, rustls::Error> {
        // Secret extraction is enabled only for listeners with `ktls = true`.
        let ktls = if config.enable_secret_extraction {
            Ktls::Wanted
        } else {
            Ktls::Off
        };
        Ok(TlsStream {
            conn: Some(Box::new(UnbufferedServerConnection::new(config)?)),
            io: Io {
                tcp,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                plaintext: Vec::new(),
                early: Vec::new(),
                deferred_error: None,
                read_closed: false,
                closing: false,
                close_notify_queued: false,
                write_shut: false,
                ktls,
            },
        })
    }

    /// Reads plaintext, pulling ciphertext from the socket until it would
    /// block (or `buf` is full) and answering the handshake on the way.
    ///
    /// Ok(n == buf.len()): there may be more; call again. Ok(n < buf.len())
    /// or `WouldBlock`: the socket is drained and nothing decrypted is left,
    /// so the next input comes with a new readiness edge. Ok(0) for a
    /// non-empty `buf`: clean end of the peer's stream.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.io.deferred_error.take() {
            return Err(e);
        }
        if self.conn.is_none() {
            return self.io.read_kernel(buf);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let mut filled = take_front(&mut self.io.plaintext, buf);
        if filled == buf.len() || self.io.read_closed {
            return Ok(filled);
        }
        let mut scratch = RECV_SCRATCH.take();
        if scratch.len() < RECV_SCRATCH_LEN {
            scratch.resize(RECV_SCRATCH_LEN, 0);
        }
        let mut held = self.io.incoming.len();
        let result = match scratch.get_mut(..held) {
            Some(head) => {
                head.copy_from_slice(&self.io.incoming);
                self.io.incoming = Vec::new();
                self.read_via(&mut scratch, &mut held, buf, &mut filled)
            }
            // Cannot happen: `incoming` is shorter than one record.
            None => Err(io::Error::other("TLS input buffer overrun")),
        };
        if let Some(tail) = scratch.get(..held) {
            self.io.incoming = tail.to_vec();
        }
        RECV_SCRATCH.set(scratch);
        let drained = match &result {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        if drained && self.io.ktls == Ktls::Wanted {
            self.try_kernel();
        }
        match result {
            Ok(()) => Ok(filled),
            Err(e) => self.io.fail_after(filled, e),
        }
    }

    /// Hands the record layer to the kernel once the handshake is done and
    /// nothing is held in either direction; tried once. Where the kernel
    /// cannot take it, the connection stays in user space (counted).
    fn try_kernel(&mut self) {
        let Some(conn) = self.conn.as_deref() else {
            return;
        };
        let io = &self.io;
        let idle = io.incoming.is_empty()
            && io.outgoing.is_empty()
            && io.plaintext.is_empty()
            && io.early.is_empty();
        if conn.is_handshaking() || !idle || io.closing || io.read_closed {
            // Tried again after a later read (not at all once closing).
            return;
        }
        self.io.ktls = Ktls::Off;
        if let Some(why) = ktls::unsuitable(conn) {
            ktls::fall_back(why);
            return;
        }
        if let Err(e) = ktls::attach(&self.io.tcp) {
            ktls::fall_back(format_args!("cannot attach the kernel's tls protocol: {e}"));
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        match ktls::install(&self.io.tcp, *conn) {
            Ok(()) => self.io.ktls = Ktls::Kernel,
            Err(e) => {
                // rustls's state is gone: the connection ends here.
                debug!("handing TLS to the kernel failed: {e}");
                self.io.deferred_error = Some(e);
            }
        }
    }

    /// The body of [`TlsStream::read`]: `rx[..*held]` is unprocessed
    /// ciphertext; on return it holds at most one incomplete record.
    fn read_via(
        &mut self,
        rx: &mut [u8],
        held: &mut usize,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<()> {
        loop {
            match self.process(rx, held, buf, filled)? {
                Progress::PeerClosed => {
                    self.io.read_closed = true;
                    return Ok(());
                }
                Progress::NeedInput => {}
            }
            if *filled == buf.len() {
                return Ok(());
            }
            let want = (buf.len() - *filled).max(MIN_SOCKET_READ);
            let end = held.saturating_add(want).min(rx.len());
            let Some(space) = rx.get_mut(*held..end).filter(|s| !s.is_empty()) else {
                return Err(io::Error::other("TLS input buffer overrun"));
            };
            match self.io.tcp.read(space) {
                Ok(0) => {
                    if self.is_handshaking() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection during the TLS handshake",
                        ));
                    }
                    // WebSocket has its own close frame: a truncation
                    // shows one level up.
                    self.io.read_closed = true;
                    return Ok(());
                }
                Ok(n) => *held += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if *filled > 0 { Ok(()) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs every complete record in `rx[..*held]` through rustls: answers
    /// the handshake, delivers plaintext into `buf[*filled..]` (the rest into
    /// `io.plaintext`), sends what becomes sendable. Leaves the incomplete
    /// tail at the front of `rx`.
    fn process(
        &mut self,
        rx: &mut [u8],
        held: &mut usize,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<Progress> {
        let TlsStream { conn, io } = self;
        let Some(conn) = conn.as_deref_mut() else {
            return Err(gone());
        };
        // Processed bytes are skipped, not moved: the tail is moved to the
        // front once, when processing stops (a read can hold hundreds of
        // small records).
        let mut start = 0;
        let result = loop {
            let Some(input) = rx.get_mut(start..*held) else {
                break Err(io::Error::other("TLS input buffer overrun"));
            };
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(input);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    start += discard;
                    discard_front(rx, held, start);
                    io.send_alert(conn, rx, held);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(traffic) => {
                    let rest = buf.get_mut(*filled..).unwrap_or_default();
                    match io.deliver(traffic, rest) {
                        Ok((n, extra)) => {
                            *filled += n;
                            discard += extra;
                            None
                        }
                        Err(e) => Some(Err(e)),
                    }
                }
                ConnectionState::EncodeTlsData(data) => io.encode(data).err().map(Err),
                ConnectionState::TransmitTlsData(transmit) => {
                    // Ours to send from here on, whether or not the socket
                    // takes it all now.
                    transmit.done();
                    io.flush_outgoing().err().map(Err)
                }
                ConnectionState::WriteTraffic(mut traffic) => Some(
                    io.on_write_traffic(&mut traffic)
                        .and_then(|()| io.flush_outgoing())
                        .map(|_| Progress::NeedInput),
                ),
                ConnectionState::BlockedHandshake => Some(Ok(Progress::NeedInput)),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    Some(Ok(Progress::PeerClosed))
                }
                // The config never accepts 0-RTT data.
                ConnectionState::ReadEarlyData(_) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS early data",
                ))),
                _ => Some(Ok(Progress::NeedInput)),
            };
            start += discard;
            if let Some(stop) = stop {
                break stop;
            }
        };
        discard_front(rx, held, start);
        result
    }

    /// Takes plaintext, encrypts it and sends what the socket takes.
    /// Returns how much plaintext was taken; `WouldBlock` when records of an
    /// earlier write still wait for the socket (so it is full and a WRITABLE
    /// edge follows), or, during the handshake, when [`SEND_BUFFER_LIMIT`]
    /// bytes already wait for it to finish (reads drive it). Taken bytes the
    /// socket did not accept show as [`TlsStream::wants_write`]; at most
    /// about [`SEND_BUFFER_LIMIT`] of them.
    pub(crate) fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        if self.conn.is_none() {
            return self.io.write_kernel(bufs);
        }
        if !self.io.flush_outgoing()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.io.closing {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            ));
        }
        if self.is_handshaking() {
            return self.io.hold_early(bufs);
        }
        let mut scratch = SEND_SCRATCH.take();
        let result = self.encrypt_and_send(bufs, &mut scratch);
        scratch.plain.clear();
        scratch.records.clear();
        SEND_SCRATCH.set(scratch);
        result
    }

    /// Encrypts `bufs` batch by batch (about [`SEND_BUFFER_LIMIT`] of
    /// records each) into the scratch and writes each batch straight to the
    /// socket, keeping what it does not take and stopping there.
    fn encrypt_and_send(
        &mut self,
        bufs: &[IoSlice<'_>],
        scratch: &mut SendScratch,
    ) -> io::Result<usize> {
        let mut cursor = Cursor::default();
        let mut taken = 0;
        loop {
            scratch.records.clear();
            let batch = self.with_write_traffic(|traffic, io| {
                io.on_write_traffic(traffic)?;
                if !io.outgoing.is_empty() {
                    // Early data or close_notify queued ahead: send in order.
                    return Ok(0);
                }
                encrypt_batch(traffic, bufs, &mut cursor, scratch)
            })?;
            let Some(batch) = batch else {
                // The handshake is not complete after all.
                return if taken > 0 {
                    Ok(taken)
                } else {
                    self.io.hold_early(bufs)
                };
            };
            taken += batch;
            // Records rustls queued, or plaintext held from the handshake,
            // go before this batch; the closure encrypted nothing then.
            if !self.io.flush_outgoing()? {
                return if taken > 0 {
                    Ok(taken)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            if !self.io.send_records(&scratch.records)? || cursor.current(bufs).is_none() {
                return Ok(taken);
            }
        }
    }

    /// Drives rustls to the state where application data may be encrypted
    /// (sending handshake or key-update records it queued on the way) and
    /// runs `f` there. `None`: the handshake is still going on.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Io) -> io::Result<R>,
    ) -> io::Result<Option<R>> {
        let TlsStream { conn, io } = self;
        let Some(conn) = conn.as_deref_mut() else {
            // The kernel has the record layer: no close_notify from us.
            return Ok(None);
        };
        // `incoming` holds less than a record, so nothing is decrypted here;
        // passing it keeps rustls's view of the input consistent.
        let mut incoming = mem::take(&mut io.incoming);
        let mut f = Some(f);
        let result = loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming);
            let mut extra = 0;
            let step = match state {
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Ok(ConnectionState::EncodeTlsData(data)) => io.encode(data).map(|()| None),
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    io.flush_outgoing().map(|_| None)
                }
                Ok(ConnectionState::ReadTraffic(traffic)) => {
                    io.deliver(traffic, &mut []).map(|(_, more)| {
                        extra = more;
                        None
                    })
                }
                Ok(ConnectionState::PeerClosed) => {
                    io.read_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match f.take() {
                    Some(f) => f(&mut traffic, io).map(|r| Some(Some(r))),
                    None => Ok(Some(None)),
                },
                Ok(_) => Ok(Some(None)),
            };
            let n = (discard + extra).min(incoming.len());
            incoming.drain(..n);
            match step {
                Ok(None) => {}
                Ok(Some(r)) => break Ok(r),
                Err(e) => break Err(e),
            }
        };
        io.incoming = if incoming.is_empty() {
            Vec::new()
        } else {
            incoming
        };
        result
    }

    /// True while records are waiting for the socket; the loop keeps
    /// WRITABLE interest until this is false.
    pub(crate) fn wants_write(&self) -> bool {
        !self.io.outgoing.is_empty()
    }

    /// Writes pending records until done (Ok(true)) or the socket is full
    /// (Ok(false)); after [`TlsStream::shutdown_write`], also sends the FIN
    /// once everything is out.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        if !self.io.flush_outgoing()? {
            return Ok(false);
        }
        if self.io.closing && !self.io.write_shut {
            self.io.write_shut = true;
            self.io.tcp.shutdown(Shutdown::Write)?;
        }
        Ok(true)
    }

    /// Ends our direction: close_notify, then FIN once it is flushed (now,
    /// or from a later [`TlsStream::flush`]). Reading goes on, so the peer's
    /// close frame and close_notify can still arrive. Before the handshake
    /// has keys to protect it, only the FIN is sent.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.io.closing {
            self.io.closing = true;
            // After any plaintext held from the handshake.
            self.with_write_traffic(|traffic, io| io.on_write_traffic(traffic))?;
        }
        self.flush().map(drop)
    }

    /// The socket to register with the poller.
    pub(crate) fn source(&mut self) -> &mut TcpStream {
        &mut self.io.tcp
    }

    /// True until the handshake is complete (never once the kernel has the
    /// record layer).
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// The protocol agreed through ALPN, once the handshake got that far.
    #[cfg(test)]
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.as_ref().and_then(|c| c.alpn_protocol())
    }
}

/// A handover to the kernel failed after rustls gave up its keys.
fn gone() -> io::Error {
    io::Error::other("TLS state lost handing the connection to the kernel")
}

impl Io {
    /// Reads once the kernel decrypts (kTLS): a plain socket read. The
    /// kernel hands over only data records; a control record (the peer's
    /// close_notify, or a TLS 1.3 key update it cannot follow) fails the
    /// read with EIO, taken here as the end of the peer's stream.
    fn read_kernel(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ktls != Ktls::Kernel {
            return Err(gone());
        }
        if self.read_closed || buf.is_empty() {
            return Ok(0);
        }
        match self.tcp.read(buf) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                self.read_closed = true;
                Ok(0)
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EBADMSG) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
            other => other,
        }
    }

    /// Writes once the kernel encrypts (kTLS): one `writev`.
    fn write_kernel(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.ktls != Ktls::Kernel {
            return Err(gone());
        }
        if self.closing {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            ));
        }
        self.tcp.write_vectored(bufs)
    }

    /// Returns what was gathered and keeps `e` for the next call, so no
    /// plaintext is lost to a socket error met later in the same read.
    fn fail_after(&mut self, filled: usize, e: io::Error) -> io::Result<usize> {
        if filled > 0 {
            self.deferred_error = Some(e);
            Ok(filled)
        } else {
            Err(e)
        }
    }

    /// Hands every decrypted record to `buf`, the overflow to `plaintext`.
    /// Returns the bytes put in `buf` and the extra ciphertext to discard.
    fn deliver(
        &mut self,
        mut traffic: ReadTraffic<'_, '_, ServerConnectionData>,
        buf: &mut [u8],
    ) -> io::Result<(usize, usize)> {
        let mut filled = 0;
        let mut discard = 0;
        while let Some(record) = traffic.next_record() {
            let record = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            discard += record.discard;
            let rest = buf.get_mut(filled..).unwrap_or_default();
            let n = rest.len().min(record.payload.len());
            let (now, later) = record.payload.split_at(n);
            if let Some(dst) = rest.get_mut(..n) {
                dst.copy_from_slice(now);
            }
            filled += n;
            self.plaintext.extend_from_slice(later);
        }
        Ok((filled, discard))
    }

    /// Appends a handshake record or alert to `outgoing`. Handshakes
    /// allocate anyway; `outgoing` is freed once the socket took it.
    fn encode(&mut self, mut data: EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
        let start = self.outgoing.len();
        let mut room = 0;
        loop {
            self.outgoing.resize(start + room, 0);
            let dst = self.outgoing.get_mut(start..).unwrap_or_default();
            match data.encode(dst) {
                Ok(n) => {
                    self.outgoing.truncate(start + n);
                    return Ok(());
                }
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                    if required_size > room =>
                {
                    room = required_size;
                }
                Err(e) => {
                    self.outgoing.truncate(start);
                    return Err(io::Error::other(e));
                }
            }
        }
    }

    /// In the state that may encrypt: sends plaintext held from the
    /// handshake, then close_notify once `shutdown_write` asked for it.
    fn on_write_traffic(
        &mut self,
        traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    ) -> io::Result<()> {
        if !self.early.is_empty() {
            let early = mem::take(&mut self.early);
            encrypt_append(traffic, &early, &mut self.outgoing)?;
        }
        if self.closing && !self.close_notify_queued {
            self.close_notify_queued = true;
            let start = self.outgoing.len();
            let mut room = RECORD_OVERHEAD;
            loop {
                self.outgoing.resize(start + room, 0);
                let dst = self.outgoing.get_mut(start..).unwrap_or_default();
                match traffic.queue_close_notify(dst) {
                    Ok(n) => {
                        self.outgoing.truncate(start + n);
                        break;
                    }
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) if required_size > room => room = required_size,
                    Err(e) => {
                        self.outgoing.truncate(start);
                        return Err(io::Error::other(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps plaintext written during the handshake, up to
    /// [`SEND_BUFFER_LIMIT`].
    fn hold_early(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut taken = 0;
        for b in bufs {
            let room = SEND_BUFFER_LIMIT.saturating_sub(self.early.len());
            let n = room.min(b.len());
            self.early.extend_from_slice(b.get(..n).unwrap_or_default());
            taken += n;
            if n < b.len() {
                break;
            }
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes `outgoing` until it is empty (Ok(true), and its memory freed)
    /// or the socket is full (Ok(false)).
    fn flush_outgoing(&mut self) -> io::Result<bool> {
        let mut sent = 0;
        let result = loop {
            let Some(rest) = self.outgoing.get(sent..).filter(|r| !r.is_empty()) else {
                break Ok(true);
            };
            match self.tcp.write(rest) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if sent >= self.outgoing.len() {
            self.outgoing = Vec::new();
        } else if sent > 0 {
            self.outgoing.drain(..sent);
        }
        result
    }

    /// Writes freshly encrypted records straight from the scratch; what the
    /// socket does not take is copied to `outgoing`. Ok(false): the socket
    /// is full. Call with `outgoing` empty, so order is kept.
    fn send_records(&mut self, records: &[u8]) -> io::Result<bool> {
        let mut sent = 0;
        while let Some(rest) = records.get(sent..).filter(|r| !r.is_empty()) {
            match self.tcp.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.outgoing.extend_from_slice(rest);
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// After a protocol error: rustls queued an alert; send it if the socket
    /// takes it at once, and give up on the connection either way.
    fn send_alert(&mut self, conn: &mut UnbufferedServerConnection, rx: &mut [u8], held: &usize) {
        let Some(input) = rx.get_mut(..*held) else {
            return;
        };
        let UnbufferedStatus { state, .. } = conn.process_tls_records(input);
        if let Ok(ConnectionState::EncodeTlsData(data)) = state
            && self.encode(data).is_ok()
        {
            let _ = self.flush_outgoing();
        }
    }
}

/// How far `write_vectored` got through its slices.
#[derive(Default)]
struct Cursor {
    slice: usize,
    offset: usize,
}

impl Cursor {
    /// The unread rest of the current slice, moving past finished ones.
    fn current<'b>(&mut self, bufs: &'b [IoSlice<'_>]) -> Option<&'b [u8]> {
        loop {
            let b = bufs.get(self.slice)?;
            match b.get(self.offset..).filter(|r| !r.is_empty()) {
                Some(rest) => return Some(rest),
                None => {
                    self.slice += 1;
                    self.offset = 0;
                }
            }
        }
    }
}

/// Encrypts plaintext from `bufs` at `cursor` into `scratch.records` until
/// about [`SEND_BUFFER_LIMIT`] of records are there or the plaintext ends.
/// Small slices (frame headers, short messages) are gathered into one
/// record through `scratch.plain`; long ones are encrypted in place.
fn encrypt_batch(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    bufs: &[IoSlice<'_>],
    cursor: &mut Cursor,
    scratch: &mut SendScratch,
) -> io::Result<usize> {
    let mut taken = 0;
    while scratch.records.len() < SEND_BUFFER_LIMIT {
        let Some(rest) = cursor.current(bufs) else {
            break;
        };
        if rest.len() >= MAX_FRAGMENT_LEN {
            let budget = SEND_BUFFER_LIMIT - scratch.records.len();
            let n = rest.len().min(budget.max(MAX_FRAGMENT_LEN));
            encrypt_append(
                traffic,
                rest.get(..n).unwrap_or_default(),
                &mut scratch.records,
            )?;
            cursor.offset += n;
            taken += n;
            continue;
        }
        scratch.plain.clear();
        while scratch.plain.len() < MAX_FRAGMENT_LEN {
            let Some(rest) = cursor.current(bufs) else {
                break;
            };
            let n = rest.len().min(MAX_FRAGMENT_LEN - scratch.plain.len());
            scratch
                .plain
                .extend_from_slice(rest.get(..n).unwrap_or_default());
            cursor.offset += n;
        }
        taken += scratch.plain.len();
        encrypt_append(traffic, &scratch.plain, &mut scratch.records)?;
    }
    Ok(taken)
}

/// Encrypts `plain` into records appended to `out`.
fn encrypt_append(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = plain.len() + (plain.len() / MAX_FRAGMENT_LEN + 1) * RECORD_OVERHEAD;
    loop {
        out.resize(start + room, 0);
        let dst = out.get_mut(start..).unwrap_or_default();
        match traffic.encrypt(plain, dst) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

/// Moves the front of `held` into `buf`; frees `held` once it is empty.
fn take_front(held: &mut Vec<u8>, buf: &mut [u8]) -> usize {
    if held.is_empty() {
        return 0;
    }
    let n = held.len().min(buf.len());
    if let (Some(dst), Some(src)) = (buf.get_mut(..n), held.get(..n)) {
        dst.copy_from_slice(src);
    }
    if n == held.len() {
        *held = Vec::new();
    } else {
        held.drain(..n);
    }
    n
}

/// Drops the first `n` of the `*held` bytes at the front of `rx`.
fn discard_front(rx: &mut [u8], held: &mut usize, n: usize) {
    let n = n.min(*held);
    if n > 0 {
        rx.copy_within(n..*held, 0);
        *held -= n;
    }
}

/// Why certificate or key files cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{}: no certificate (PEM \"CERTIFICATE\" section) in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no private key in the file (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"; encrypted keys are not supported)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: private key not usable: {source}", path.display())]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: first certificate not usable: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "private key {} does not match the certificate {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "cannot build a TLS configuration from {} and {}: {source}",
        cert.display(),
        key.display()
    )]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Builds a server configuration from PEM files: `cert_path` holds the chain,
/// leaf first (every certificate in the file is sent); `key_path` holds the
/// leaf's private key as PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Both may be the
/// same file. TLS 1.3 and 1.2, no client certificates; with `alpn_http11`
/// the server agrees to ALPN `http/1.1` (a client that offers ALPN without
/// it is then refused, as RFC 7301 asks). With `ktls`, connections hand
/// their record layer to the kernel after the handshake where it can take
/// it (see [`TlsStream`]).
///
/// Pure apart from reading the two files, so it serves start-up,
/// `--check-config` and SIGHUP reload alike.
pub(crate) fn load_server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn_http11: bool,
    ktls: bool,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    // Named explicitly rather than taken from the process default, which
    // would panic at run time if another crate ever enabled a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = certified_key(&provider, certs, key, cert_path, key_path)?;
    let rustls_error = |source| TlsConfigError::Rustls {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    if alpn_http11 {
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    }
    // Lets a connection hand its keys to the kernel; only then does
    // `TlsStream` try to (the flag is how it knows).
    config.enable_secret_extraction = ktls;
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem_bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem_bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsConfigError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Pairs chain and key, refusing a key that is not the leaf's: a mismatch
/// would otherwise only show as every handshake failing.
fn certified_key(
    provider: &CryptoProvider,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsConfigError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsConfigError::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsConfigError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        // The key cannot tell its public half; rustls accepts that too, and
        // a wrong key then fails at the first handshake.
        Err(rustls::Error::InconsistentKeys(_)) => Ok(certified),
        Err(source) => Err(TlsConfigError::BadCertificate {
            path: cert_path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use std::net::{SocketAddr, TcpStream as StdTcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    const LISTENER: Token = Token(0);
    const CONN: Token = Token(1);
    /// Every test gives up after this long instead of hanging.
    const DEADLINE: Duration = Duration::from_secs(30);

    // Fixed test-only keys (generated with openssl for these tests, protect
    // nothing): rcgen with ring cannot generate RSA keys, and ring signs only
    // from PKCS#8, so each key is here in the form rcgen signs the test
    // certificate with (PKCS#8) and the form the server loads (PKCS#1, SEC1).
    const RSA_KEY_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIEoAIBAAKCAQEAwGjmat+zOO/4NIsTC0kzE4rp7IEPiPNnhjfFjox93vf9gUIq
boWBxC0RFn1/dZTtAn6yxyg2CVajx/PG7JzadE4J5ND7gsXJqJijlIv7UqdhJKQL
ONIPlYF12ddU0+MWAEIuEGX77UXVbq67HgKz5JWdPqe34AGBdb74sPLT1x4sfY4A
cxiolvHBJEASIAeXPX7T0/rimM01zljJ3+bSyWkW5G8HLlPmbC7G/MtrKoZy57Fl
gme022LeK6X5n9m87B50sTmLRYSgUlHH7pvjg4idr040W03cFppLGAQURlg7OvtQ
SWpy5m/8nVD+ctRtZpf5/A9q5EkORSx0BtkywwIDAQABAoIBAFWXFFCcXBxK2y18
ZCdUE41w8OgM7T0tkXKqIo5rvp5N0I4MQdXSO8xpg71ubCGA8wF2HM7s+0SiLs8G
iQm+KIsuH8aSlB8zHqaJ59JvhofY/ySOeJN5FgeahDM4T3rF/IZ26gjPZQbCVtQa
lBAggaeASmeRsgDKiq03G2eTTVrWQVdgZBzzyRYaQ8N8GOxBGjnfg/EUAh5w9rRU
w+VZOVlFM4+dkXGTrCezSiwJel2gR1XnSJCiIlMlz1/UWcSOdkSPl3ARpF/Xf3JY
uhqbiG4Js8CAhn+YBYHTWL7vFayaMz4yLbkdQAL5YOfnC84jJmTEKQWUIcNAxw+J
AZYQ65kCgYEA+0vVQHBbPUt2NIuR6WCWupQFbELXPlZib+3GjOAD8oh2LEIONbSm
w34gYQY6Wn62cPzGom11Z67EmHVE7TA7nRatZbBYtbVfDixgM0R3PB0bbKWLT2yN
kRFUSaf+9+X4njbwRzXba6PeBbT454K/lG9EI7efmAZheeHlyAGJTwUCgYEAxALk
weVJ2UE22Ie3VP5U/qwKZv2vTkl3u5m/DAsFEqdeX9AgnjNEZV2ZxEneZesuY4dM
CWTiihrewd1wx4NCY1pG5llkg5p1AyxTfN+N0WMWp3Obr5peEuRjkSzuwdgtYsrm
VtuzjGrEcLFAO8YJg9miGO/auUZcmI5ftwyj1ScCf3i89rj/QtcwaprUdEatIb6D
YBekBcbtul4M4FjPSRY+eojJNAqZwYYsE2KKm37fYsjmqolgDgjC77JQpc1QX1Qa
kTVKhVTIz+L/bzkyrBc15PdOkqCWh24r5VN+ZAK3e7yIqOmN9t7A3OvhB7Y0G9g1
nYeLsiJY7nyhDMYL9u0CgYBqD77EhFNPcZBB3j3/iZdoLqN6Uy72x544LttHovbd
vx677ZyYvdj2mI1Jv0bOE1IInP8x3hsO67c5Y59Q9d+IbyMKJbjT1VIXo3aRjU3p
zRpHBbFqdbcNtfOCbLPMxDLa0DuPKFahVmxxJhhBv8kKRUsG/1J1CnO0QOXd4MMN
5QKBgB8j5cz2l4q0Cg0glxSfEjbEM0qFG9QbXxC8qOETQvvdyG1saHM1qAulXXTP
GwZgFjpEcnRz4COS0f90RC88jQCqJTGkzL/27jVnirwW7wx6PVAaqWl4v7i8Cmv3
W2riPzLfuoPluxxBqjv8IjN6W8QhtgfYrV19WueVyIYQHi0e
-----END RSA PRIVATE KEY-----
";

    const RSA_KEY_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEugIBADANBgkqhkiG9w0BAQEFAASCBKQwggSgAgEAAoIBAQDAaOZq37M47/g0
ixMLSTMTiunsgQ+I82eGN8WOjH3e9/2BQipuhYHELREWfX91lO0CfrLHKDYJVqPH
88bsnNp0Tgnk0PuCxcmomKOUi/tSp2EkpAs40g+VgXXZ11TT4xYAQi4QZfvtRdVu
rrseArPklZ0+p7fgAYF1vviw8tPXHix9jgBzGKiW8cEkQBIgB5c9ftPT+uKYzTXO
WMnf5tLJaRbkbwcuU+ZsLsb8y2sqhnLnsWWCZ7TbYt4rpfmf2bzsHnSxOYtFhKBS
Ucfum+ODiJ2vTjRbTdwWmksYBBRGWDs6+1BJanLmb/ydUP5y1G1ml/n8D2rkSQ5F
LHQG2TLDAgMBAAECggEAVZcUUJxcHErbLXxkJ1QTjXDw6AztPS2Rcqoijmu+nk3Q
jgxB1dI7zGmDvW5sIYDzAXYczuz7RKIuzwaJCb4oiy4fxpKUHzMeponn0m+Gh9j/
JI54k3kWB5qEMzhPesX8hnbqCM9lBsJW1BqUECCBp4BKZ5GyAMqKrTcbZ5NNWtZB
V2BkHPPJFhpDw3wY7EEaOd+D8RQCHnD2tFTD5Vk5WUUzj52RcZOsJ7NKLAl6XaBH
VedIkKIiUyXPX9RZxI52RI+XcBGkX9d/cli6GpuIbgmzwICGf5gFgdNYvu8VrJoz
PjItuR1AAvlg5+cLziMmZMQpBZQhw0DHD4kBlhDrmQKBgQD7S9VAcFs9S3Y0i5Hp
YJa6lAVsQtc+VmJv7caM4APyiHYsQg41tKbDfiBhBjpafrZw/MaibXVnrsSYdUTt
MDudFq1lsFi1tV8OLGAzRHc8HRtspYtPbI2REVRJp/735fieNvBHNdtro94FtPjn
gr+Ub0Qjt5+YBmF54eXIAYlPBQKBgQDEAuTB5UnZQTbYh7dU/lT+rApm/a9OSXe7
mb8MCwUSp15f0CCeM0RlXZnESd5l6y5jh0wJZOKKGt7B3XDHg0JjWkbmWWSDmnUD
LFN8343RYxanc5uvml4S5GORLO7B2C1iyuZW27OMasRwsUA7xgmD2aIY79q5RlyY
jl+3DKPVJwJ/eLz2uP9C1zBqmtR0Rq0hvoNgF6QFxu26XgzgWM9JFj56iMk0CpnB
hiwTYoqbft9iyOaqiWAOCMLvslClzVBfVBqRNUqFVMjP4v9vOTKsFzXk906SoJaH
bivlU35kArd7vIio6Y323sDc6+EHtjQb2DWdh4uyIljufKEMxgv27QKBgGoPvsSE
U09xkEHePf+Jl2guo3pTLvbHnjgu20ei9t2/HrvtnJi92PaYjUm/Rs4TUgic/zHe
Gw7rtzljn1D134hvIwoluNPVUhejdpGNTenNGkcFsWp1tw2184Jss8zEMtrQO48o
VqFWbHEmGEG/yQpFSwb/UnUKc7RA5d3gww3lAoGAHyPlzPaXirQKDSCXFJ8SNsQz
SoUb1BtfELyo4RNC+93IbWxoczWoC6VddM8bBmAWOkRydHPgI5LR/3RELzyNAKol
MaTMv/buNWeKvBbvDHo9UBqpaXi/uLwKa/dbauI/Mt+6g+W7HEGqO/wiM3pbxCG2
B9itXX1a55XIhhAeLR4=
-----END PRIVATE KEY-----
";

    const EC_KEY_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIA7d5kkseEmASJpK5UrYQtgW1J+LH/hLrbnjsx6hZ2AmoAoGCCqGSM49
AwEHoUQDQgAENhRerpgRCNILbpaBbNAcVdJHUDesAnaiO22CR4VPOKj0uucoZxhS
5CVRLzK+pw6xsAezcJOR/g0cSU+SP8JNug==
-----END EC PRIVATE KEY-----
";

    const EC_KEY_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDt3mSSx4SYBImkrl
SthC2BbUn4sf+EutueOzHqFnYCahRANCAAQ2FF6umBEI0gtuloFs0BxV0kdQN6wC
dqI7bYJHhU84qPS65yhnGFLkJVEvMr6nDrGwB7Nwk5H+DRxJT5I/wk26
-----END PRIVATE KEY-----
";

    /// A fresh directory for one test's files, removed when dropped.
    pub(in crate::server) struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wshub-tls-{}-{name}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Certificate and key files for "localhost", and the certificate for
    /// the client's root store.
    pub(in crate::server) struct Identity {
        _dir: TempDir,
        pub cert: PathBuf,
        pub key: PathBuf,
        der: CertificateDer<'static>,
    }

    /// A self-signed certificate with a fresh P-256 key (PKCS#8).
    pub(in crate::server) fn ec_identity() -> Identity {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = TempDir::new("ec");
        Identity {
            cert: dir.write("cert.pem", &generated.cert.pem()),
            key: dir.write("key.pem", &generated.signing_key.serialize_pem()),
            der: generated.cert.der().clone(),
            _dir: dir,
        }
    }

    /// A self-signed certificate for a fixed key, the key file holding
    /// `key_file_pem` (the same key in another encoding).
    fn identity_for(signing_pkcs8: &str, key_file_pem: &str) -> Identity {
        let key = rcgen::KeyPair::from_pem(signing_pkcs8).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = TempDir::new("fixed");
        Identity {
            cert: dir.write("cert.pem", &cert.pem()),
            key: dir.write("key.pem", key_file_pem),
            der: cert.der().clone(),
            _dir: dir,
        }
    }

    fn client_config(
        root: &CertificateDer<'static>,
        alpn: bool,
        tls12_only: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        }
        Arc::new(config)
    }

    /// The client's socket; with `trickle`, every write goes out one byte
    /// per segment with a pause between, so the server sees the handshake
    /// (and everything else) split at every possible point.
    struct ClientSock {
        tcp: StdTcpStream,
        trickle: bool,
    }

    impl Read for ClientSock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.tcp.read(buf)
        }
    }

    impl io::Write for ClientSock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.trickle {
                return self.tcp.write(buf);
            }
            for byte in buf {
                self.tcp.write_all(std::slice::from_ref(byte))?;
                thread::sleep(Duration::from_micros(300));
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.tcp.flush()
        }
    }

    type Client = StreamOwned<ClientConnection, ClientSock>;

    fn connect_tcp(addr: SocketAddr) -> StdTcpStream {
        let tcp = StdTcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tcp.set_write_timeout(Some(DEADLINE)).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    fn connect(addr: SocketAddr, config: Arc<ClientConfig>, trickle: bool) -> Client {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        let tcp = connect_tcp(addr);
        StreamOwned::new(conn, ClientSock { tcp, trickle })
    }

    fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// What the server side saw of its one connection.
    #[derive(Debug, Default)]
    struct Report {
        /// Plaintext bytes read (and echoed).
        received: usize,
        /// A read returned Ok(0).
        clean_eof: bool,
        alpn: Option<Vec<u8>>,
        /// The error that ended the connection, if any.
        error: Option<io::Error>,
    }

    /// Accepts one connection and runs it the way the event loop does:
    /// edge-triggered, driven only when the poller reports it, reads until
    /// WouldBlock or a short read (to the end after a hang-up), WRITABLE
    /// interest only while something is pending. Echoes what it reads; on
    /// EOF, shuts down its side and ends once that is flushed.
    fn serve_echo(mut listener: TcpListener, config: Arc<ServerConfig>) -> Report {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(16);
        let mut report = Report::default();
        let mut stream: Option<TlsStream> = None;
        let mut writable_interest = false;
        let mut out: Vec<u8> = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        let mut eof = false;
        let started = Instant::now();
        loop {
            if started.elapsed() > DEADLINE {
                report.error = Some(io::ErrorKind::TimedOut.into());
                return report;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for event in events.iter() {
                if event.token() == LISTENER {
                    while let Ok((tcp, _)) = listener.accept() {
                        if stream.is_some() {
                            continue;
                        }
                        let mut tls = TlsStream::new(config.clone(), tcp).unwrap();
                        poll.registry()
                            .register(tls.source(), CONN, Interest::READABLE)
                            .unwrap();
                        stream = Some(tls);
                    }
                    continue;
                }
                let Some(tls) = stream.as_mut() else {
                    continue;
                };
                let read_to_end = event.is_read_closed() || event.is_error();
                if (event.is_readable() || read_to_end) && !eof {
                    loop {
                        match tls.read(&mut buf) {
                            Ok(0) => {
                                report.clean_eof = true;
                                eof = true;
                                break;
                            }
                            Ok(n) => {
                                out.extend_from_slice(&buf[..n]);
                                report.received += n;
                                if n < buf.len() && !read_to_end {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                report.error = Some(e);
                                return report;
                            }
                        }
                    }
                }
                if report.alpn.is_none() && !tls.is_handshaking() {
                    report.alpn = Some(tls.alpn_protocol().unwrap_or_default().to_vec());
                }
                let written = write_all_possible(tls, &mut out).and_then(|()| {
                    if out.is_empty() {
                        tls.flush()
                    } else {
                        Ok(false)
                    }
                });
                if let Err(e) = written {
                    report.error = Some(e);
                    return report;
                }
                if eof && out.is_empty() {
                    if let Err(e) = tls.shutdown_write() {
                        report.error = Some(e);
                        return report;
                    }
                    if !tls.wants_write() {
                        return report;
                    }
                }
                let want_write = !out.is_empty() || tls.wants_write();
                if want_write != writable_interest {
                    let interest = if want_write {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    poll.registry()
                        .reregister(tls.source(), CONN, interest)
                        .unwrap();
                    writable_interest = want_write;
                }
            }
        }
    }

    /// Hands `out` to the stream until it is empty or the stream blocks.
    fn write_all_possible(tls: &mut TlsStream, out: &mut Vec<u8>) -> io::Result<()> {
        while !out.is_empty() {
            match tls.write_vectored(&[IoSlice::new(out)]) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs `client` against `serve_echo` and returns both outcomes.
    fn with_echo_server<T: Send + 'static>(
        config: Arc<ServerConfig>,
        client: impl FnOnce(SocketAddr) -> T + Send + 'static,
    ) -> (Report, T) {
        let (listener, addr) = listen();
        let client = thread::spawn(move || client(addr));
        let report = serve_echo(listener, config);
        (report, client.join().unwrap())
    }

    /// Sends `data`, reads the echo back, closes with close_notify and
    /// expects the server's close_notify in return.
    fn echo_round_trip(client: &mut Client, data: &[u8]) -> Vec<u8> {
        client.write_all(data).unwrap();
        client.flush().unwrap();
        let mut echoed = vec![0; data.len()];
        client.read_exact(&mut echoed).unwrap();
        client.conn.send_close_notify();
        client.flush().unwrap();
        let mut rest = Vec::new();
        // Errors with UnexpectedEof unless the server sent close_notify.
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        echoed
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn assert_echo(identity: &Identity, len: usize, trickle: bool, tls12_only: bool) {
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let client_config = client_config(&identity.der, false, tls12_only);
        let data = pattern(len);
        let sent = data.clone();
        let (report, echoed) = with_echo_server(config, move |addr| {
            let mut client = connect(addr, client_config, trickle);
            echo_round_trip(&mut client, &sent)
        });
        assert!(report.error.is_none(), "server failed: {:?}", report.error);
        assert_eq!(report.received, len);
        assert!(report.clean_eof);
        assert!(echoed == data, "echo differs");
    }

    #[test]
    fn echoes_one_byte() {
        assert_echo(&ec_identity(), 1, false, false);
    }

    #[test]
    fn echoes_16_kib() {
        assert_echo(&ec_identity(), 16 * 1024, false, false);
    }

    #[test]
    fn echoes_1_mib() {
        assert_echo(&ec_identity(), 1024 * 1024, false, false);
    }

    #[test]
    fn echoes_over_tls12() {
        assert_echo(&ec_identity(), 16 * 1024, false, true);
    }

    #[test]
    fn handshake_split_into_single_bytes() {
        assert_echo(&ec_identity(), 5, true, false);
    }

    #[test]
    fn serves_rsa_pkcs1_key() {
        assert_echo(
            &identity_for(RSA_KEY_PKCS8, RSA_KEY_PKCS1),
            100,
            false,
            false,
        );
    }

    #[test]
    fn serves_ec_sec1_key() {
        assert_echo(&identity_for(EC_KEY_PKCS8, EC_KEY_SEC1), 100, false, false);
    }

    #[test]
    fn negotiates_http11_alpn() {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, true, false).unwrap();
        let client_config = client_config(&identity.der, true, false);
        let (report, client_alpn) = with_echo_server(config, move |addr| {
            let mut client = connect(addr, client_config, false);
            echo_round_trip(&mut client, b"x");
            client.conn.alpn_protocol().map(<[u8]>::to_vec)
        });
        assert!(report.error.is_none(), "server failed: {:?}", report.error);
        assert_eq!(client_alpn.as_deref(), Some(ALPN_HTTP11));
        assert_eq!(report.alpn.as_deref(), Some(ALPN_HTTP11));
    }

    /// With `ktls = true` the connection tries the kernel after the
    /// handshake. Where the kernel lacks the `tls` module (as on the
    /// machines the tests run on) it stays in user space, counted, and
    /// serves exactly as without; where the kernel takes it, the echo works
    /// all the same, though our close then has no close_notify.
    #[test]
    fn ktls_falls_back_or_hands_over_and_echoes() {
        let identity = ec_identity();
        let client_config = client_config(&identity.der, true, false);
        for tls12_only in [false, true] {
            let config = load_server_config(&identity.cert, &identity.key, true, true).unwrap();
            assert!(config.enable_secret_extraction);
            let client_config = if tls12_only {
                super::tests::client_config(&identity.der, true, true)
            } else {
                client_config.clone()
            };
            let (fallbacks, handed_over) = ktls::counts();
            let data = pattern(100_000);
            let sent = data.clone();
            let (report, echoed) = with_echo_server(config, move |addr| {
                let mut client = connect(addr, client_config, false);
                client.write_all(&sent).unwrap();
                client.flush().unwrap();
                let mut echoed = vec![0; sent.len()];
                client.read_exact(&mut echoed).unwrap();
                client.conn.send_close_notify();
                client.flush().unwrap();
                // close_notify back in user space, a bare FIN from the kernel.
                let _ = client.read_to_end(&mut Vec::new());
                echoed
            });
            assert!(report.error.is_none(), "server failed: {:?}", report.error);
            assert!(report.clean_eof);
            assert!(echoed == data, "echo differs");
            let (fallbacks_now, handed_over_now) = ktls::counts();
            // Other tests run in parallel, so only "at least one more".
            assert!(
                fallbacks_now + handed_over_now > fallbacks + handed_over,
                "no kTLS attempt was made"
            );
        }
    }

    /// Sends `garbage` in the clear and returns what the server made of it.
    fn send_garbage(garbage: &'static [u8]) -> Report {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let (report, ()) = with_echo_server(config, move |addr| {
            let mut tcp = connect_tcp(addr);
            tcp.write_all(garbage).unwrap();
            // An alert, then the end, or a reset; either is fine.
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer);
        });
        report
    }

    #[test]
    fn plaintext_http_is_invalid_data() {
        let report =
            send_garbage(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n");
        let error = report.error.expect("the server accepted plaintext HTTP");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert_eq!(report.received, 0);
    }

    #[test]
    fn random_bytes_are_invalid_data() {
        static GARBAGE: [u8; 200] = {
            let mut bytes = [0; 200];
            let mut i = 0;
            while i < bytes.len() {
                bytes[i] = (i * 37 + 11) as u8;
                i += 1;
            }
            bytes
        };
        let report = send_garbage(&GARBAGE);
        let error = report.error.expect("the server accepted garbage");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[test]
    fn close_notify_reads_as_eof() {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let client_config = client_config(&identity.der, false, false);
        let (report, ()) = with_echo_server(config, move |addr| {
            let mut client = connect(addr, client_config, false);
            while client.conn.is_handshaking() {
                client.conn.complete_io(&mut client.sock).unwrap();
            }
            client.conn.send_close_notify();
            client.flush().unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap();
        });
        assert!(report.error.is_none(), "server failed: {:?}", report.error);
        assert!(report.clean_eof);
        assert_eq!(report.received, 0);
    }

    #[test]
    fn tcp_eof_after_handshake_reads_as_eof() {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let client_config = client_config(&identity.der, false, false);
        let (report, ()) = with_echo_server(config, move |addr| {
            let mut client = connect(addr, client_config, false);
            client.write_all(b"ping").unwrap();
            client.flush().unwrap();
            client.sock.tcp.shutdown(Shutdown::Write).unwrap();
            let mut echoed = Vec::new();
            client.read_to_end(&mut echoed).unwrap();
            assert_eq!(echoed, b"ping");
        });
        assert!(report.error.is_none(), "server failed: {:?}", report.error);
        assert!(report.clean_eof);
        assert_eq!(report.received, 4);
    }

    #[test]
    fn tcp_eof_during_handshake_is_unexpected() {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let (report, ()) = with_echo_server(config, move |addr| {
            let tcp = connect_tcp(addr);
            // Half a record header, then FIN.
            (&tcp).write_all(&[0x16, 0x03]).unwrap();
            tcp.shutdown(Shutdown::Write).unwrap();
            let _ = (&tcp).read_to_end(&mut Vec::new());
        });
        let error = report.error.expect("a cut handshake passed");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        assert!(!report.clean_eof);
    }

    /// A reader that stops reading: the server's writes block within a
    /// bounded amount, the unsent records show as `wants_write`, and
    /// flushing on WRITABLE delivers every accepted byte once the reader
    /// resumes.
    #[test]
    fn stalled_reader_blocks_writes_and_flush_finishes_them() {
        let identity = ec_identity();
        let config = load_server_config(&identity.cert, &identity.key, false, false).unwrap();
        let client_config = client_config(&identity.der, false, false);
        let (mut listener, addr) = listen();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut client = connect(addr, client_config, false);
            client.write_all(b"!").unwrap();
            client.flush().unwrap();
            go_rx.recv().unwrap();
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received.len()
        });

        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(16);
        let started = Instant::now();
        let poll_once = |poll: &mut Poll, events: &mut Events| {
            assert!(started.elapsed() < DEADLINE, "timed out");
            poll.poll(events, Some(Duration::from_millis(100))).unwrap();
        };
        let mut tls = loop {
            poll_once(&mut poll, &mut events);
            if let Ok((tcp, _)) = listener.accept() {
                break TlsStream::new(config, tcp).unwrap();
            }
        };
        poll.registry()
            .register(tls.source(), CONN, Interest::READABLE)
            .unwrap();
        let mut buf = [0; 64];
        loop {
            poll_once(&mut poll, &mut events);
            if events.iter().any(|e| e.token() == CONN) {
                match tls.read(&mut buf) {
                    Ok(1) => break,
                    Ok(n) => panic!("read {n} bytes"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(!tls.is_handshaking());

        let chunk = pattern(256 * 1024);
        let mut accepted = 0;
        loop {
            match tls.write_vectored(&[IoSlice::new(&chunk)]) {
                Ok(n) => accepted += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(accepted < 256 * 1024 * 1024, "writes never blocked");
        }
        assert!(tls.wants_write());
        eprintln!("{accepted} bytes accepted before the stalled reader blocked writes");

        // Only the transport's own records are pending now, as when the
        // loop's queue is empty: WRITABLE interest and flush must finish.
        poll.registry()
            .reregister(tls.source(), CONN, Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        go_tx.send(()).unwrap();
        loop {
            poll_once(&mut poll, &mut events);
            if events.iter().any(|e| e.token() == CONN && e.is_writable()) && tls.flush().unwrap() {
                break;
            }
        }
        assert!(!tls.wants_write());
        tls.shutdown_write().unwrap();
        while !tls.flush().unwrap() {
            poll_once(&mut poll, &mut events);
        }
        assert_eq!(client.join().unwrap(), accepted);
    }

    #[test]
    fn reports_sizes() {
        // Printed for the memory notes in the module doc.
        eprintln!(
            "TlsStream {} B, UnbufferedServerConnection {} B, Transport {} B",
            size_of::<TlsStream>(),
            size_of::<UnbufferedServerConnection>(),
            size_of::<super::super::Transport>(),
        );
        // The boxed variant must not make plain connections bigger.
        assert!(size_of::<super::super::Transport>() <= 16);
    }

    /// Counts every allocation of the lib's test binary (a few atomic adds
    /// each), so [`idle_connection_heap`] can tell what a connection holds.
    #[global_allocator]
    static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

    /// Handshakes that fill the server's session cache (256 entries; up to
    /// two per TLS 1.3 handshake, one per TLS 1.2 full handshake).
    const SESSION_CACHE_FILL: usize = 300;

    /// What an idle connection may hold on the heap besides the
    /// `TlsStream` itself: rustls's boxed connection and what it allocates.
    const IDLE_HEAP_BUDGET: isize = 3584;

    /// Set in the child process that runs [`idle_connection_heap`] alone.
    const HEAP_PROBE_ENV: &str = "WSHUB_TLS_HEAP_PROBE";

    /// Heap the server side holds: bytes and blocks allocated minus freed
    /// while server code ran. The client runs on the same thread between
    /// those calls, so its allocations do not count.
    #[derive(Clone, Copy, Debug, Default)]
    struct Held {
        bytes: isize,
        blocks: isize,
    }

    fn server_side<R>(held: &mut Held, f: impl FnOnce() -> R) -> R {
        let region = stats_alloc::Region::new(HEAP);
        let result = f();
        let change = region.change();
        // stats_alloc already counts a realloc's growth or shrinkage in
        // these two; its `bytes_reallocated` is the same change again.
        held.bytes += change.bytes_allocated as isize - change.bytes_deallocated as isize;
        held.blocks += change.allocations as isize - change.deallocations as isize;
        result
    }

    /// One connection driven by a single thread: the rustls client over a
    /// non-blocking std socket, our server over the accepted mio socket.
    struct Pair {
        client: ClientConnection,
        sock: StdTcpStream,
        server: TlsStream,
        held: Held,
        /// Plaintext the client received while pumping.
        client_received: Vec<u8>,
    }

    impl Pair {
        fn open(
            listener: &TcpListener,
            server_config: &Arc<ServerConfig>,
            client_config: &Arc<ClientConfig>,
        ) -> Pair {
            let mut pair = Pair::accept(listener, server_config, client_config);
            pair.handshake();
            pair
        }

        /// Connected, the handshake not started.
        fn accept(
            listener: &TcpListener,
            server_config: &Arc<ServerConfig>,
            client_config: &Arc<ClientConfig>,
        ) -> Pair {
            let sock = connect_tcp(listener.local_addr().unwrap());
            sock.set_nonblocking(true).unwrap();
            let started = Instant::now();
            let tcp = loop {
                match listener.accept() {
                    Ok((tcp, _)) => break tcp,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(started.elapsed() < DEADLINE, "accept timed out");
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let mut held = Held::default();
            let server = server_side(&mut held, || {
                TlsStream::new(server_config.clone(), tcp).unwrap()
            });
            let name = ServerName::try_from("localhost").unwrap();
            let client = ClientConnection::new(client_config.clone(), name).unwrap();
            Pair {
                client,
                sock,
                server,
                held,
                client_received: Vec::new(),
            }
        }

        fn handshake(&mut self) {
            let mut sink = Vec::new();
            self.pump(&mut sink, |p| {
                !p.client.is_handshaking() && !p.server.is_handshaking()
            });
            // The server's last flight (TLS 1.3 tickets) read by the client.
            self.pump(&mut sink, |_| true);
            assert!(sink.is_empty());
        }

        /// Everything the client can read within a short while.
        fn client_reads(&mut self, want: usize) -> Vec<u8> {
            let mut got = mem::take(&mut self.client_received);
            let started = Instant::now();
            while got.len() < want {
                assert!(started.elapsed() < DEADLINE, "client read timed out");
                match self.client.read_tls(&mut self.sock) {
                    Ok(0) => break,
                    Ok(_) => {
                        self.client.process_new_packets().unwrap();
                        let _ = self.client.reader().read_to_end(&mut got);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }

        /// Moves bytes both ways until `done` holds after a round with no
        /// progress left, collecting what the server reads.
        fn pump(&mut self, received: &mut Vec<u8>, done: impl Fn(&Pair) -> bool) {
            let started = Instant::now();
            let mut buf = vec![0; 64 * 1024];
            loop {
                assert!(started.elapsed() < DEADLINE, "pump timed out");
                let mut progress = false;
                while self.client.wants_write() {
                    self.client.write_tls(&mut self.sock).unwrap();
                    progress = true;
                }
                let Pair { server, held, .. } = self;
                loop {
                    match server_side(held, || server.read(&mut buf)) {
                        Ok(0) => panic!("server read EOF"),
                        Ok(n) => {
                            received.extend_from_slice(&buf[..n]);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                assert!(server_side(held, || server.flush()).unwrap());
                match self.client.read_tls(&mut self.sock) {
                    Ok(0) => panic!("client read EOF"),
                    Ok(_) => {
                        self.client.process_new_packets().unwrap();
                        let _ = self.client.reader().read_to_end(&mut self.client_received);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                if !progress && done(self) {
                    return;
                }
                if !progress {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        }

        /// `count` messages of `size` bytes each way, one record each.
        fn exchange(&mut self, count: usize, size: usize) {
            let message = pattern(size);
            let mut received = Vec::new();
            for _ in 0..count {
                self.client.writer().write_all(&message).unwrap();
                self.pump(&mut received, |_| true);
            }
            assert_eq!(received.len(), count * size);
            let Pair { server, held, .. } = self;
            for _ in 0..count {
                let n = server_side(held, || {
                    server.write_vectored(&[IoSlice::new(&message)]).unwrap()
                });
                assert_eq!(n, size);
            }
            let mut echoed = Vec::new();
            let started = Instant::now();
            while echoed.len() < count * size {
                assert!(started.elapsed() < DEADLINE, "client read timed out");
                match self.client.read_tls(&mut self.sock) {
                    Ok(_) => {
                        self.client.process_new_packets().unwrap();
                        self.client.reader().read_to_end(&mut echoed).ok();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(echoed.len(), count * size);
        }
    }

    /// Heap held per connection by `conns` established connections, fresh,
    /// after 100 messages each way and after 100 more.
    fn heap_per_connection(
        server_config: &Arc<ServerConfig>,
        client_config: &Arc<ClientConfig>,
        conns: usize,
    ) -> [Held; 3] {
        let (listener, _) = listen();
        // The loop-wide scratch buffers are allocated by the first
        // connection that uses them, and the config's session cache (TLS 1.3
        // tickets, TLS 1.2 session IDs) grows to its 256 entries and then
        // replaces old ones: neither is per connection, so both are filled
        // before counting.
        let mut warm = Pair::open(&listener, server_config, client_config);
        warm.exchange(10, 64);
        for _ in 0..SESSION_CACHE_FILL {
            drop(Pair::open(&listener, server_config, client_config));
        }
        let mut pairs: Vec<Pair> = (0..conns)
            .map(|_| Pair::open(&listener, server_config, client_config))
            .collect();
        let per_conn = |pairs: &[Pair]| Held {
            bytes: pairs.iter().map(|p| p.held.bytes).sum::<isize>() / conns as isize,
            blocks: pairs.iter().map(|p| p.held.blocks).sum::<isize>() / conns as isize,
        };
        let fresh = per_conn(&pairs);
        for pair in &mut pairs {
            pair.exchange(100, 64);
        }
        let after = per_conn(&pairs);
        for pair in &mut pairs {
            pair.exchange(100, 64);
        }
        [fresh, after, per_conn(&pairs)]
    }

    fn client_config_with(
        root: &CertificateDer<'static>,
        suite: Option<rustls::SupportedCipherSuite>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // As browsers do for wss://.
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Arc::new(config)
    }

    /// Plaintext written before the handshake completes waits (bounded) and
    /// goes out, in order, once it has.
    #[test]
    fn writes_during_the_handshake_wait_for_it() {
        let identity = ec_identity();
        let server_config = load_server_config(&identity.cert, &identity.key, true, false).unwrap();
        for tls12_only in [false, true] {
            let client_config = client_config(&identity.der, true, tls12_only);
            let (listener, _) = listen();
            let mut pair = Pair::accept(&listener, &server_config, &client_config);
            let first = pattern(1000);
            let second = pattern(SEND_BUFFER_LIMIT);
            assert_eq!(
                pair.server.write_vectored(&[IoSlice::new(&first)]).unwrap(),
                1000
            );
            // Only up to the limit is held; the rest must wait.
            let taken = pair
                .server
                .write_vectored(&[IoSlice::new(&second)])
                .unwrap();
            assert_eq!(taken, SEND_BUFFER_LIMIT - 1000);
            let blocked = pair.server.write_vectored(&[IoSlice::new(&second)]);
            assert_eq!(blocked.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            assert!(!pair.server.wants_write());
            pair.handshake();
            let mut expected = first.clone();
            expected.extend_from_slice(&second[..taken]);
            assert!(pair.client_reads(expected.len()) == expected);
            assert!(pair.server.io.early.capacity() == 0);
        }
    }

    /// A read into a small buffer returns it full while decrypted input is
    /// left (the rest waits in the stream, not in the socket), and short
    /// only once everything is handed over.
    #[test]
    fn small_reads_are_full_until_the_input_is_drained() {
        let identity = ec_identity();
        let server_config = load_server_config(&identity.cert, &identity.key, true, false).unwrap();
        let client_config = client_config(&identity.der, true, false);
        let (listener, _) = listen();
        let mut pair = Pair::open(&listener, &server_config, &client_config);
        // Within what the client buffers for sending.
        let data = pattern(60_000);
        pair.client.writer().write_all(&data).unwrap();
        while pair.client.wants_write() {
            pair.client.write_tls(&mut pair.sock).unwrap();
        }
        // Let every record reach the server's socket.
        thread::sleep(Duration::from_millis(50));
        let mut received = Vec::new();
        let mut buf = [0; 1000];
        loop {
            match pair.server.read(&mut buf) {
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            received == data,
            "{} of {} bytes",
            received.len(),
            data.len()
        );
        assert_eq!(pair.server.io.plaintext.capacity(), 0);
        assert_eq!(pair.server.io.incoming.capacity(), 0);
    }

    /// What an idle established connection holds on the heap, for the
    /// numbers in the module doc. Runs in a child process of its own, as
    /// the allocation counters are process-wide.
    #[test]
    fn idle_connection_heap() {
        if std::env::var_os(HEAP_PROBE_ENV).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "server::tls::tests::idle_connection_heap",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HEAP_PROBE_ENV, "1")
                .output()
                .unwrap();
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "the heap probe failed");
            return;
        }
        let identity = ec_identity();
        let server_config = load_server_config(&identity.cert, &identity.key, true, false).unwrap();
        use rustls::crypto::ring::cipher_suite as cs;
        let cases = [
            (
                "TLS 1.3 AES-128-GCM",
                Some(cs::TLS13_AES_128_GCM_SHA256),
                &rustls::version::TLS13,
            ),
            (
                "TLS 1.3 AES-256-GCM",
                Some(cs::TLS13_AES_256_GCM_SHA384),
                &rustls::version::TLS13,
            ),
            (
                "TLS 1.3 CHACHA20-POLY1305",
                Some(cs::TLS13_CHACHA20_POLY1305_SHA256),
                &rustls::version::TLS13,
            ),
            (
                "TLS 1.2 ECDHE-ECDSA-AES-128-GCM",
                Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
                &rustls::version::TLS12,
            ),
            (
                "TLS 1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
                Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
                &rustls::version::TLS12,
            ),
        ];
        for (name, suite, version) in cases {
            let client_config = client_config_with(&identity.der, suite, version);
            let [fresh, after, later] = heap_per_connection(&server_config, &client_config, 20);
            eprintln!(
                "{name}: fresh {} B in {} blocks, after 100 messages each way {} B in {} blocks",
                fresh.bytes, fresh.blocks, after.bytes, after.blocks
            );
            // Traffic leaves nothing behind once rustls's own queues have
            // their first few slots: every buffer of ours is freed once empty.
            assert!(
                later.bytes <= after.bytes && later.blocks <= after.blocks,
                "{name}: {later:?} after 200 messages, {after:?} after 100"
            );
            // rustls's own state (see the module doc); with its buffered API
            // this was about 4 KiB more.
            assert!(after.bytes <= IDLE_HEAP_BUDGET, "{name}: {after:?}");
        }
    }

    #[test]
    fn config_errors_name_the_problem() {
        let identity = ec_identity();
        let dir = TempDir::new("errors");
        let missing = dir.0.join("missing.pem");
        let empty = dir.write("empty.pem", "");

        match load_server_config(&missing, &identity.key, false, false) {
            Err(TlsConfigError::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        match load_server_config(&identity.cert, &missing, false, false) {
            Err(TlsConfigError::Read { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        match load_server_config(&empty, &identity.key, false, false) {
            Err(TlsConfigError::NoCertificate { path }) => assert_eq!(path, empty),
            other => panic!("{other:?}"),
        }
        // A key file where the certificate should be: no certificate in it.
        match load_server_config(&identity.key, &identity.key, false, false) {
            Err(TlsConfigError::NoCertificate { .. }) => {}
            other => panic!("{other:?}"),
        }
        // The certificate file given as the key file: a certificate without key.
        match load_server_config(&identity.cert, &identity.cert, false, false) {
            Err(TlsConfigError::NoKey { path }) => assert_eq!(path, identity.cert),
            other => panic!("{other:?}"),
        }
        match load_server_config(&identity.cert, &empty, false, false) {
            Err(TlsConfigError::NoKey { .. }) => {}
            other => panic!("{other:?}"),
        }
        let other = ec_identity();
        match load_server_config(&identity.cert, &other.key, false, false) {
            Err(e @ TlsConfigError::KeyMismatch { .. }) => {
                let message = e.to_string();
                assert!(message.contains("does not match"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let broken = dir.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        match load_server_config(&broken, &identity.key, false, false) {
            Err(TlsConfigError::Pem { path, .. }) => assert_eq!(path, broken),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_takes_cert_and_key_from_one_file() {
        let identity = ec_identity();
        let dir = TempDir::new("combined");
        let combined = format!(
            "{}{}",
            fs::read_to_string(&identity.cert).unwrap(),
            fs::read_to_string(&identity.key).unwrap()
        );
        let both = dir.write("both.pem", &combined);
        let config = load_server_config(&both, &both, true, false).unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
    }
}
