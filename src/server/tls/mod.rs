//! TLS (wss://) for one connection over a non-blocking socket, driven by the
//! edge-triggered loop.
//!
//! Owns: one connection's TLS: rustls's [`UnbufferedServerConnection`] for
//! the handshake, then our own record layer ([`record`]) or, with kTLS,
//! the kernel's ([`ktls`]); the TCP socket under it; the bytes between
//! them: a connection's own buffers, which exist only while they hold
//! bytes, and the loop-wide scratch buffers that records are decrypted and
//! encrypted in (the handshake is driven from [`TlsStream::read`]); loading
//! certificate and key files into a shareable [`ServerConfig`].
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
//! - On accept: `TlsStream::new(config.clone(), ktls, stream)`, wrapped as
//!   `Transport::Tls(Box::new(..))`, registered through
//!   [`TlsStream::source`] like a plain socket.
//! - Reads: [`TlsStream::read`] keeps the plain-socket contract the loop
//!   relies on. A full read may leave more behind, and so may
//!   `Interrupted` (retry, as for a plain socket): a read takes at most
//!   about four times its buffer of ciphertext from the socket, so records
//!   that carry a byte or none cannot hold the loop; a short read (or
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
//! none, and nothing is allocated per record.
//!
//! rustls's own state is about 3.2 KB per connection in traffic (its
//! 1,088-byte connection, a 640-byte deframer table kept for life, both
//! directions' expanded AES keys at 560 bytes each, the key schedule), and
//! none of it can be released while rustls protects the records. So it
//! protects them only during the handshake: once that is done and no
//! record is held either way (checked after each read that drained the
//! socket), [`record::Records`] takes over the keys, IVs, sequence numbers
//! and TLS 1.3 traffic secrets, and rustls's state is dropped. What an idle
//! established connection then holds (measured by
//! `tests::idle_connection_heap` with a counting allocator, after the
//! shared session cache is full; the same for TLS 1.3 and 1.2, AES-128-GCM,
//! AES-256-GCM and ChaCha20-Poly1305):
//!
//! | what | bytes | blocks |
//! |---|---:|---:|
//! | `TlsStream` in `Transport`'s box: socket, 4 empty `Vec`s, flags, the record layer's pointer (144 in debug builds, where mio's socket is 8 bytes bigger) | 136 | 1 |
//! | [`record::Records`]: per direction a 32-byte key, 12-byte IV, sequence number and 48-byte secret with its length (2 × 104); version, cipher, limit, counters | 224 | 1 |
//!
//! That is all, fresh and after any amount of traffic (a key update
//! replaces keys in place). With malloc's per-block overhead it is about
//! 380 B per idle wss:// connection on top of the ~170 B of a ws:// one.
//! Before, rustls's record layer kept 3,185 heap bytes in 8 blocks beside
//! the stream (3,281 in 9 after traffic), and its buffered
//! `ServerConnection` about 8 KiB. During the handshake a connection holds
//! rustls's state as before; the expanded AES key (544 bytes) exists only
//! within one read or write call.
//!
//! Beside the connections: the TLS 1.3 session cache lives in the shared
//! `ServerConfig` (256 entries of about 170 bytes), and the scratch buffers
//! exist once per loop thread. `Transport` stays 16 bytes, so plain
//! connections do not pay for TLS.
//!
//! # Kernel TLS
//!
//! With `ktls = true` on the listener ([`TlsStream::new`]'s `ktls`), the
//! record layer is offered to the kernel first, at the same moment: the
//! connection attaches the kernel's `tls` upper-layer protocol and hands it
//! the traffic keys, IVs and sequence numbers; rustls's connection is then
//! dropped, and the stream reads and writes the socket as plain TCP. An
//! idle connection then holds only the `TlsStream` box; the keys live in
//! kernel memory, not in RSS, and the kernel encrypts. What the kernel
//! cannot do for us: a close_notify or a TLS 1.3 key update from the peer
//! makes its read fail (EIO), taken as the end of the peer's stream
//! (WebSocket has its own close frame); our own close sends no
//! close_notify, only the FIN. Where the module is absent
//! (`setsockopt(TCP_ULP, "tls")` fails with ENOENT) or the cipher suite is
//! not one the kernel knows, the connection goes to [`record`] as without
//! kTLS, logged once at info and counted (`ktls::counts`). A kernel that
//! takes the ULP but refuses the keys ends that connection, as rustls has
//! given its state up by then. Only the fallback is exercised by the
//! tests; the machines they run on lack the module.

mod config;
mod ktls;
mod record;
#[cfg(test)]
pub(super) mod tests;

pub use config::TlsConfigError;
pub(crate) use config::load_server_config;

use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::net::Shutdown;
use std::sync::Arc;

use log::debug;
use mio::net::TcpStream;
use record::{MAX_FRAGMENT_LEN, MAX_RECORD_LEN};
use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
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

/// Room reserved per record when encrypting, above its plaintext: header
/// (5), TLS 1.2 explicit nonce (8), tag (16), TLS 1.3 content type (1), with
/// margin. rustls says so if it needs more, and the buffer grows.
const RECORD_OVERHEAD: usize = 64;

/// Size of the loop-wide receive scratch: a carried-over partial record plus
/// room for reads (at least `RECV_SCRATCH_LEN - MAX_RECORD_LEN`).
const RECV_SCRATCH_LEN: usize = 64 * 1024;

/// Socket reads ask for at least this much even when the caller's buffer is
/// nearly full; decrypted input that does not fit waits in the stream (at
/// most about one record plus this) for the next read.
const MIN_SOCKET_READ: usize = 4 * 1024;

// An incomplete record plus one socket read always fit the scratch.
const _: () = assert!(RECV_SCRATCH_LEN >= MAX_RECORD_LEN + MIN_SOCKET_READ);

/// Ciphertext one [`TlsStream::read`] may take from the socket per byte of
/// the caller's buffer. Ordinary traffic stays well below (full records
/// cost 1.002, one WebSocket frame of a few bytes per record under 4), so
/// its reads end full or drained; records that carry one byte or none
/// (up to 23 and ~750 bytes of ciphertext per byte delivered) would
/// otherwise keep one read decrypting while the rest of the loop waits.
const MAX_CIPHERTEXT_PER_BYTE: usize = 4;

/// The ciphertext one read into a buffer of `len` bytes may take from the
/// socket: [`MAX_CIPHERTEXT_PER_BYTE`] per byte, and always one whole
/// record, so every read makes progress.
fn read_budget(len: usize) -> usize {
    len.saturating_mul(MAX_CIPHERTEXT_PER_BYTE)
        .saturating_add(MAX_RECORD_LEN)
}

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
/// non-blocking socket for the handshake, then our own record layer (or
/// the kernel's), with buffers that exist only while they hold bytes.
pub(crate) struct TlsStream {
    engine: Engine,
    io: Io,
}

/// Who protects the records.
enum Engine {
    /// rustls: the handshake, and the records until they can be taken over
    /// (or for good, where they cannot).
    Rustls(Box<Handshake>),
    /// Our record layer ([`record`]): the keys and nothing else.
    Own(Box<record::Records>),
    /// The kernel (kTLS): the socket reads and writes plaintext.
    Kernel,
    /// rustls's state was given up and taking over failed; every call
    /// fails (the error was reported once).
    Gone,
}

/// rustls's connection, and the TLS 1.3 traffic secrets it reported during
/// the handshake, kept until the record layer is taken over.
struct Handshake {
    conn: UnbufferedServerConnection,
    secrets: Option<Box<record::Captured>>,
}

/// What happens to the record layer once the handshake is done and no
/// record is held in either direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handoff {
    /// Taken over by [`record`].
    Own,
    /// Offered to the kernel first (`ktls = true`), else taken over.
    Kernel,
    /// Done, or not possible: nothing more to try.
    Done,
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
    handoff: Handoff,
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
    /// With `ktls`, the record layer is offered to the kernel after the
    /// handshake. Fails only for a config rustls cannot serve with (e.g. no
    /// protocol versions), never because of the peer.
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        ktls: bool,
        tcp: TcpStream,
    ) -> Result<TlsStream, rustls::Error> {
        let handoff = if ktls { Handoff::Kernel } else { Handoff::Own };
        Ok(TlsStream {
            engine: Engine::Rustls(Box::new(Handshake {
                conn: UnbufferedServerConnection::new(config)?,
                secrets: None,
            })),
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
                handoff,
            },
        })
    }

    /// Reads plaintext, pulling ciphertext from the socket until it would
    /// block (or `buf` is full) and answering the handshake on the way.
    ///
    /// Ok(n == buf.len()) or `Interrupted` (a read's work is bounded, see
    /// [`read_budget`]; nothing is lost): there may be more; call again.
    /// Ok(n < buf.len()) or `WouldBlock`: the socket is drained and nothing
    /// decrypted is left, so the next input comes with a new readiness
    /// edge. Ok(0) for a non-empty `buf`: clean end of the peer's stream.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.io.deferred_error.take() {
            return Err(e);
        }
        match self.engine {
            Engine::Kernel => return self.io.read_kernel(buf),
            Engine::Gone => return Err(gone()),
            Engine::Rustls(_) | Engine::Own(_) => {}
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
        if drained && self.io.handoff != Handoff::Done {
            self.hand_off();
        }
        match result {
            Ok(()) => Ok(filled),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // Over budget: what was gathered goes first next time (the
                // held plaintext is empty, as `buf` is not full).
                let mut gathered = buf.get(..filled).unwrap_or_default().to_vec();
                gathered.append(&mut self.io.plaintext);
                self.io.plaintext = gathered;
                Err(e)
            }
            Err(e) => self.io.fail_after(filled, e),
        }
    }

    /// Takes the record layer from rustls once the handshake is done and
    /// nothing is held in either direction: to the kernel first where
    /// asked and possible, else to [`record`]. Tried once; where neither
    /// can take it, rustls keeps it.
    fn hand_off(&mut self) {
        let Engine::Rustls(handshake) = &self.engine else {
            return;
        };
        let io = &self.io;
        let idle = io.incoming.is_empty()
            && io.outgoing.is_empty()
            && io.plaintext.is_empty()
            && io.early.is_empty();
        if handshake.conn.is_handshaking() || !idle || io.closing || io.read_closed {
            // Tried again after a later read (not at all once closing).
            return;
        }
        let kernel = self.io.handoff == Handoff::Kernel;
        self.io.handoff = Handoff::Done;
        if kernel && self.try_kernel() {
            return;
        }
        let Engine::Rustls(handshake) = &mut self.engine else {
            return;
        };
        if let Some(why) = record::unsuitable(&handshake.conn, handshake.secrets.as_deref()) {
            debug!("TLS records stay with rustls: {why}");
            handshake.secrets = None;
            return;
        }
        let Engine::Rustls(handshake) = mem::replace(&mut self.engine, Engine::Gone) else {
            return;
        };
        let Handshake { conn, secrets } = *handshake;
        match record::Records::take_over(conn, secrets) {
            Ok(records) => self.engine = Engine::Own(Box::new(records)),
            Err(e) => {
                // rustls's state is gone: the connection ends here.
                debug!("{e}");
                self.io.deferred_error = Some(e);
            }
        }
    }

    /// Hands the record layer to the kernel; false where it cannot take it
    /// (counted), with rustls's state untouched.
    fn try_kernel(&mut self) -> bool {
        let Engine::Rustls(handshake) = &self.engine else {
            return false;
        };
        if let Some(why) = ktls::unsuitable(&handshake.conn) {
            ktls::fall_back(why);
            return false;
        }
        if let Err(e) = ktls::attach(&self.io.tcp) {
            ktls::fall_back(format_args!("cannot attach the kernel's tls protocol: {e}"));
            return false;
        }
        let Engine::Rustls(handshake) = mem::replace(&mut self.engine, Engine::Gone) else {
            return false;
        };
        match ktls::install(&self.io.tcp, handshake.conn) {
            Ok(()) => self.engine = Engine::Kernel,
            Err(e) => {
                // rustls's state is gone: the connection ends here.
                debug!("handing TLS to the kernel failed: {e}");
                self.io.deferred_error = Some(e);
            }
        }
        true
    }

    /// The body of [`TlsStream::read`]: `rx[..*held]` is unprocessed
    /// ciphertext; on return it holds at most one incomplete record.
    /// `Interrupted` once [`read_budget`] of ciphertext was taken from the
    /// socket with `buf` still not full (more may be waiting there).
    fn read_via(
        &mut self,
        rx: &mut [u8],
        held: &mut usize,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<()> {
        let mut budget = read_budget(buf.len());
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
            if budget == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let want = (buf.len() - *filled).max(MIN_SOCKET_READ).min(budget);
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
                Ok(n) => {
                    *held += n;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if *filled > 0 { Ok(()) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs every complete record in `rx[..*held]` through the record
    /// layer: delivers plaintext into `buf[*filled..]` (the rest into
    /// `io.plaintext`) and sends what becomes sendable (handshake, alerts,
    /// key updates). Leaves the incomplete tail at the front of `rx`.
    fn process(
        &mut self,
        rx: &mut [u8],
        held: &mut usize,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<Progress> {
        let TlsStream { engine, io } = self;
        match engine {
            Engine::Rustls(handshake) => {
                let result = process_rustls(&mut handshake.conn, io, rx, held, buf, filled);
                record::keep_captured(&mut handshake.secrets);
                result
            }
            Engine::Own(records) => process_own(records, io, rx, held, buf, filled),
            Engine::Kernel | Engine::Gone => Err(gone()),
        }
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
        match self.engine {
            Engine::Kernel => return self.io.write_kernel(bufs),
            Engine::Gone => return Err(gone()),
            Engine::Rustls(_) | Engine::Own(_) => {}
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
        let result = match &mut self.engine {
            Engine::Own(records) => {
                let mut keys = records.keys();
                send_own(&mut self.io, &mut keys, bufs, &mut scratch)
            }
            _ => self.encrypt_and_send(bufs, &mut scratch),
        };
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
                encrypt_batch(
                    &mut |plain, out| encrypt_append(traffic, plain, out),
                    bufs,
                    &mut cursor,
                    scratch,
                )
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
        let TlsStream { engine, io } = self;
        let Engine::Rustls(handshake) = engine else {
            // Not rustls's records (any more).
            return Ok(None);
        };
        let Handshake { conn, secrets } = &mut **handshake;
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
        record::keep_captured(secrets);
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
        if self.io.handoff != Handoff::Done {
            // The handshake's last records were what held the hand-off up.
            self.hand_off();
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
            if let Engine::Own(records) = &mut self.engine {
                self.io.close_notify_queued = true;
                records
                    .keys()
                    .seal_alert(record::CLOSE_NOTIFY, &mut self.io.outgoing)?;
            } else {
                // After any plaintext held from the handshake; none under
                // kTLS (the kernel sends no close_notify for us).
                self.with_write_traffic(|traffic, io| io.on_write_traffic(traffic))?;
            }
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
        match &self.engine {
            Engine::Rustls(handshake) => handshake.conn.is_handshaking(),
            Engine::Own(_) | Engine::Kernel | Engine::Gone => false,
        }
    }

    /// Who protects the records now, for the tests.
    #[cfg(test)]
    pub(crate) fn record_layer(&self) -> &'static str {
        match &self.engine {
            Engine::Rustls(_) => "rustls",
            Engine::Own(_) => "own",
            Engine::Kernel => "kernel",
            Engine::Gone => "gone",
        }
    }
}

/// [`TlsStream::process`] while rustls has the records: answers the
/// handshake, delivers plaintext, sends what rustls queues.
fn process_rustls(
    conn: &mut UnbufferedServerConnection,
    io: &mut Io,
    rx: &mut [u8],
    held: &mut usize,
    buf: &mut [u8],
    filled: &mut usize,
) -> io::Result<Progress> {
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
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Ok(Progress::PeerClosed)),
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

/// [`TlsStream::process`] once [`record`] has the records.
fn process_own(
    records: &mut record::Records,
    io: &mut Io,
    rx: &mut [u8],
    held: &mut usize,
    buf: &mut [u8],
    filled: &mut usize,
) -> io::Result<Progress> {
    let mut keys = records.keys();
    // As above: processed records are skipped and the tail moved once.
    let mut start = 0;
    let result = loop {
        let Some(input) = rx.get_mut(start..*held) else {
            break Err(record::Fatal {
                alert: None,
                error: io::Error::other("TLS input buffer overrun"),
            });
        };
        let len = match record::record_len(input) {
            Ok(Some(len)) => len,
            Ok(None) => break Ok(Progress::NeedInput),
            Err(fatal) => break Err(fatal),
        };
        let Some(one) = input.get_mut(..len) else {
            break Ok(Progress::NeedInput);
        };
        let opened = keys.open(one, &mut io.outgoing);
        start += len;
        match opened {
            Ok(record::Input::Data(plain)) => {
                let rest = buf.get_mut(*filled..).unwrap_or_default();
                let n = rest.len().min(plain.len());
                let (now, later) = plain.split_at(n);
                if let Some(dst) = rest.get_mut(..n) {
                    dst.copy_from_slice(now);
                }
                *filled += n;
                io.plaintext.extend_from_slice(later);
            }
            Ok(record::Input::Nothing) => {}
            Ok(record::Input::Closed) => break Ok(Progress::PeerClosed),
            Err(fatal) => break Err(fatal),
        }
    };
    discard_front(rx, held, start);
    match result {
        Ok(progress) => {
            // Answers to key updates or a renegotiation.
            io.flush_outgoing()?;
            Ok(progress)
        }
        Err(record::Fatal { alert, error }) => {
            if let Some(alert) = alert
                && keys.seal_alert(alert, &mut io.outgoing).is_ok()
            {
                let _ = io.flush_outgoing();
            }
            Err(error)
        }
    }
}

/// Taking the records from rustls (to our record layer or the kernel)
/// failed after rustls gave up its keys.
fn gone() -> io::Error {
    io::Error::other("TLS state lost taking the records from rustls")
}

impl Io {
    /// Reads once the kernel decrypts (kTLS): a plain socket read. The
    /// kernel hands over only data records; a control record (the peer's
    /// close_notify, or a TLS 1.3 key update it cannot follow) fails the
    /// read with EIO, taken here as the end of the peer's stream.
    fn read_kernel(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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

/// [`TlsStream::write_vectored`] once [`record`] has the records:
/// seals `bufs` batch by batch into the scratch and writes each batch
/// straight to the socket, keeping what it does not take and stopping
/// there. Call with `io.outgoing` empty, so order is kept.
fn send_own(
    io: &mut Io,
    keys: &mut record::Keys<'_>,
    bufs: &[IoSlice<'_>],
    scratch: &mut SendScratch,
) -> io::Result<usize> {
    let mut cursor = Cursor::default();
    let mut taken = 0;
    loop {
        scratch.records.clear();
        taken += encrypt_batch(
            &mut |plain, out| keys.seal_data(plain, out),
            bufs,
            &mut cursor,
            scratch,
        )?;
        if !io.send_records(&scratch.records)? || cursor.current(bufs).is_none() {
            return Ok(taken);
        }
    }
}

/// Seals plaintext into records appended to the `Vec`.
type Seal<'a> = dyn FnMut(&[u8], &mut Vec<u8>) -> io::Result<()> + 'a;

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
    seal: &mut Seal<'_>,
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
            seal(rest.get(..n).unwrap_or_default(), &mut scratch.records)?;
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
        seal(&scratch.plain, &mut scratch.records)?;
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
