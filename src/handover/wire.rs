//! The channel between the old and the new process on a direct upgrade
//! (`kill -USR2`): a blocking, message-oriented channel over a Unix stream
//! socket whose other end the new process inherited, with descriptors
//! passed by `SCM_RIGHTS`.
//!
//! Roles: the old process calls [`pair`], then [`spawn`] with the child
//! end; the new process finds its end with [`from_env`]. Both then
//! exchange [`Message`]s with [`Channel::send`] and [`Channel::recv`]; the
//! old side, whose event loop still serves while it waits for `HELLO`,
//! registers the channel with mio (it is [`AsFd`]/[`AsRawFd`]) and calls
//! [`Channel::try_recv`] when it is readable. [`memfd`] and [`read_memfd`]
//! carry the state through the service manager's fd store instead.
//!
//! Framing of one message (all integers little-endian):
//! 1. a header of [`HEADER_LEN`] bytes: `MAGIC`, the kind (u8), three zero
//!    bytes, the payload length (u64), the number of descriptors (u32);
//! 2. the payload;
//! 3. the descriptors, in chunks of at most [`FDS_PER_CHUNK`], each sent
//!    with one data byte holding the chunk's size, so the descriptors always
//!    ride on bytes of their own and none is lost.
//!
//! Every read asks for exactly the bytes the framing says come next, so a
//! read never runs into the next message and the kernel may split the
//! bytes as it likes. Received descriptors are close-on-exec
//! (`MSG_CMSG_CLOEXEC`); on a malformed message they are closed (dropped)
//! before the error returns.
//!
//! Owns: the framing, the socketpair, starting the new binary with its end,
//! and the sealed memfd that carries the state through the fd store.
//! Must never: interpret a payload (the state format is
//! [`crate::handover::state`]), block the old process's loop before a
//! message has begun to arrive, or leave a received descriptor open when the
//! message it came with is refused. After an error in the middle of a
//! message (a timeout, a garbage header) the stream is out of step: the
//! channel must be dropped, never read again.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The environment variable naming the new process's end of the channel.
pub const FD_ENV: &str = "WSHUB_HANDOVER_FD";

/// The first bytes of every header: a stray or out-of-step stream is caught
/// at once.
const MAGIC: [u8; 4] = *b"WSHO";

/// The size of a header: magic, kind, three reserved bytes, payload length
/// (u64), number of descriptors (u32).
pub const HEADER_LEN: usize = 4 + 1 + 3 + 8 + 4;

/// The largest payload accepted (and sent): far above any real state, low
/// enough that a garbage length cannot make the receiver allocate without
/// bound.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// The most descriptors one message may carry: above any open-files limit a
/// server runs with, so only a garbage header reaches it.
pub const MAX_FDS: u32 = 1 << 20;

/// Descriptors per `sendmsg`: Linux refuses more than `SCM_MAX_FD` (253) in
/// one control message.
pub const FDS_PER_CHUNK: usize = 250;

/// How much of the payload one read step asks for (and grows the buffer
/// by), so a claimed length is only allocated as the bytes arrive.
const READ_STEP: usize = 1 << 20;

/// What a message is; the roles are in the design of the handover.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New → old: the config is valid; payload: the state version (u32 LE).
    Hello = 1,
    /// Old → new: the state bytes, with listeners then connections.
    State = 2,
    /// Old → new: the versions differ; only the listeners, payload: their
    /// addresses.
    Listeners = 3,
    /// New → old: everything is registered; the old drops what it handed.
    Taken = 4,
    /// New → old: the new process cannot take over; the old keeps serving.
    Refused = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::State,
            3 => Kind::Listeners,
            4 => Kind::Taken,
            5 => Kind::Refused,
            _ => return None,
        })
    }
}

/// One message received whole.
#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// Close-on-exec, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// One end of the channel; owns the socket.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Maps a receive/send timeout (`EAGAIN` under `SO_RCVTIMEO`/`SO_SNDTIMEO`)
/// to [`io::ErrorKind::TimedOut`].
fn timed_out(e: Errno) -> io::Error {
    if e == Errno::AGAIN {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the handover peer did not answer in time",
        )
    } else {
        e.into()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Channel {
    /// Wraps a connected Unix stream socket.
    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    /// Sends one message: `payload` and `fds` (which stay open here; the
    /// peer gets its own copies). Blocks until everything is with the
    /// kernel, or the send timeout expires ([`io::ErrorKind::TimedOut`]).
    pub fn send(&self, kind: Kind, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        if len > MAX_PAYLOAD {
            return Err(invalid(format!(
                "a handover payload of {len} bytes is above the limit of {MAX_PAYLOAD}"
            )));
        }
        let count = u32::try_from(fds.len())
            .ok()
            .filter(|&n| n <= MAX_FDS)
            .ok_or_else(|| {
                invalid(format!(
                    "{} descriptors are above the limit of {MAX_FDS} per message",
                    fds.len()
                ))
            })?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4] = kind as u8;
        header[8..16].copy_from_slice(&len.to_le_bytes());
        header[16..20].copy_from_slice(&count.to_le_bytes());
        self.send_all(&header)?;
        self.send_all(payload)?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_CHUNK))];
        for chunk in fds.chunks(FDS_PER_CHUNK) {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
                return Err(io::Error::other("the control buffer is too small"));
            }
            // A chunk holds at most FDS_PER_CHUNK (< 256) descriptors.
            let marker = [u8::try_from(chunk.len()).unwrap_or(u8::MAX)];
            loop {
                match rustix::net::sendmsg(
                    &self.socket,
                    &[IoSlice::new(&marker)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                ) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => break,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(timed_out(e)),
                }
            }
        }
        Ok(())
    }

    fn send_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match rustix::net::send(&self.socket, bytes, SendFlags::NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(timed_out(e)),
            }
        }
        Ok(())
    }

    /// Receives one whole message, blocking (up to the receive timeout, if
    /// set: [`io::ErrorKind::TimedOut`]). The peer closing before a whole
    /// message arrived is [`io::ErrorKind::UnexpectedEof`].
    pub fn recv(&self) -> io::Result<Message> {
        // Descriptors that arrive where the framing has none are collected
        // here and make the message malformed; dropping them closes them.
        let mut stray = Vec::new();
        let mut header = [0u8; HEADER_LEN];
        self.recv_exact(&mut header, &mut stray)?;
        if header[..4] != MAGIC || header[5..8] != [0, 0, 0] {
            return Err(invalid(format!(
                "not a handover message header: {:02x?}",
                &header[..8]
            )));
        }
        let kind = Kind::from_byte(header[4])
            .ok_or_else(|| invalid(format!("unknown handover message kind {}", header[4])))?;
        let len = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(header[16..20].try_into().unwrap_or_default());
        if len > MAX_PAYLOAD {
            return Err(invalid(format!(
                "a handover payload of {len} bytes is above the limit of {MAX_PAYLOAD}"
            )));
        }
        if count > MAX_FDS {
            return Err(invalid(format!(
                "{count} descriptors are above the limit of {MAX_FDS} per message"
            )));
        }
        // Both fit: len ≤ 1 GiB, count ≤ 2^20.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let mut payload = Vec::with_capacity(len.min(READ_STEP));
        while payload.len() < len {
            let start = payload.len();
            let step = (len - start).min(READ_STEP);
            payload.resize(start + step, 0);
            self.recv_exact(&mut payload[start..], &mut stray)?;
        }
        if !stray.is_empty() {
            return Err(invalid(format!(
                "{} descriptors arrived with the payload of a handover message",
                stray.len()
            )));
        }
        let mut fds = Vec::with_capacity(count.min(READ_STEP));
        while fds.len() < count {
            let before = fds.len();
            let mut marker = [0u8; 1];
            self.recv_exact(&mut marker, &mut fds)?;
            let got = fds.len() - before;
            let expected = (count - before).min(FDS_PER_CHUNK);
            if got != usize::from(marker[0]) || got != expected {
                return Err(invalid(format!(
                    "a handover chunk announced {} descriptors, {got} arrived, {expected} were due",
                    marker[0]
                )));
            }
        }
        Ok(Message { kind, payload, fds })
    }

    /// Fills `buf` exactly; descriptors that come along go to `fds`.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut filled = 0;
        while filled < buf.len() {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut buf[filled..])],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            let got = match received {
                Ok(got) => got,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(timed_out(e)),
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(invalid(
                    "handover descriptors were lost (control message truncated)".into(),
                ));
            }
            if got.bytes == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the handover peer closed the channel in the middle of a message",
                ));
            }
            filled += got.bytes;
        }
        Ok(())
    }

    /// For the old process's loop: `None` when no message has begun to
    /// arrive (never blocks then); otherwise reads the whole message as
    /// [`Channel::recv`] does (the rest follows at once from a peer that
    /// started it; the receive timeout bounds it). The peer having closed
    /// the channel is [`io::ErrorKind::UnexpectedEof`].
    pub fn try_recv(&self) -> io::Result<Option<Message>> {
        let mut probe = [0u8; 1];
        loop {
            match rustix::net::recv(
                &self.socket,
                &mut probe,
                RecvFlags::PEEK | RecvFlags::DONTWAIT,
            ) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the handover peer closed the channel",
                    ));
                }
                Ok(_) => return self.recv().map(Some),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Bounds every later blocking send and receive (`SO_SNDTIMEO`,
    /// `SO_RCVTIMEO`); `None` waits for ever.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        use rustix::net::sockopt::{Timeout, set_socket_timeout};
        // A zero timeout means "for ever" to the kernel: round it up.
        let timeout = timeout.map(|t| t.max(Duration::from_micros(1)));
        set_socket_timeout(&self.socket, Timeout::Recv, timeout)?;
        set_socket_timeout(&self.socket, Timeout::Send, timeout)?;
        Ok(())
    }
}

/// A connected socketpair: our end (close-on-exec) and the end the child
/// inherits (not close-on-exec). Until [`spawn`] closes it, any process
/// started meanwhile inherits that end too; the daemon starts no other.
pub fn pair() -> io::Result<(Channel, OwnedFd)> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty())?;
    Ok((Channel::from_fd(ours), theirs))
}

/// Starts `exe` with `args`, `FD_ENV` naming `child_end`, stdin null and
/// stdout/stderr inherited. Our copy of `child_end` is closed once the
/// child runs (or failed to). Inherited `LISTEN_*` variables are removed:
/// they described this process's start, not the child's.
pub fn spawn(exe: &Path, args: &[OsString], child_end: OwnedFd) -> io::Result<Child> {
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(FD_ENV, child_end.as_raw_fd().to_string())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null());
    let child = command.spawn();
    drop(child_end);
    child
}

/// In the new process: the channel named by `FD_ENV`; `None` when the
/// variable is unset (or was taken already), `Err` when it does not name a
/// Unix stream socket.
///
/// The descriptor is taken over (a close-on-exec copy; the inherited
/// number is closed), so no grandchild inherits the channel. The variable
/// itself stays in the environment (removing it needs `unsafe` in this
/// edition): it names nothing any more, and [`spawn`] sets its own.
pub fn from_env() -> Option<Result<Channel, String>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let value = std::env::var_os(FD_ENV)?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    Some(channel_from(&value))
}

fn channel_from(value: &std::ffi::OsStr) -> Result<Channel, String> {
    let raw = value
        .to_str()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("{FD_ENV}={value:?} is not a descriptor number above 2"))?;
    let socket = crate::daemon::listenfd::adopt(raw)
        .map_err(|e| format!("{FD_ENV}={raw}: cannot take the descriptor: {e}"))?;
    let not_socket = || format!("{FD_ENV}={raw} does not name a Unix stream socket");
    match rustix::net::sockopt::socket_type(&socket) {
        Ok(SocketType::STREAM) => {}
        _ => return Err(not_socket()),
    }
    match rustix::net::getsockname(&socket) {
        Ok(addr) if addr.address_family() == AddressFamily::UNIX => {}
        _ => return Err(not_socket()),
    }
    Ok(Channel::from_fd(socket))
}

/// A sealed memfd (close-on-exec) holding `bytes`: nothing can change it
/// any more, so whoever reads it reads what was written.
pub fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// The seals [`memfd`] sets and [`read_memfd`] requires.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE)
    .union(SealFlags::SEAL);

/// Reads a memfd made by [`memfd`] whole, from its start (its file position
/// does not matter). Fails when it is not sealed against changes or is
/// larger than [`MAX_PAYLOAD`].
pub fn read_memfd(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(SEALS) {
        return Err(invalid("the state memfd is not sealed".into()));
    }
    let size = u64::try_from(rustix::fs::fstat(fd)?.st_size).unwrap_or(u64::MAX);
    if size > MAX_PAYLOAD {
        return Err(invalid(format!(
            "a state of {size} bytes is above the limit of {MAX_PAYLOAD}"
        )));
    }
    let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::io::pread(fd, &mut bytes[filled..], filled as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn connected() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::from_fd(a.into()), Channel::from_fd(b.into()))
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Sends `count` pipe write ends with a payload of `len` bytes while a
    /// thread receives; then checks each received descriptor is the same
    /// pipe by writing through it.
    fn round_trip(count: usize, len: usize) {
        let (tx, rx) = connected();
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..count {
            let (r, w) = std::io::pipe().unwrap();
            readers.push(r);
            writers.push(OwnedFd::from(w));
        }
        let sent = payload(len);
        let receiver = std::thread::spawn(move || rx.recv());
        let borrowed: Vec<_> = writers.iter().map(|w| w.as_fd()).collect();
        tx.send(Kind::State, &sent, &borrowed).unwrap();
        drop(writers);
        let message = receiver.join().unwrap().unwrap();
        assert_eq!(message.kind, Kind::State);
        assert!(message.payload == sent, "payload differs ({len} bytes)");
        assert_eq!(message.fds.len(), count);
        for (i, (fd, mut reader)) in message.fds.into_iter().zip(readers).enumerate() {
            let flags = rustix::io::fcntl_getfd(&fd).unwrap();
            assert!(flags.contains(FdFlags::CLOEXEC), "fd {i} not close-on-exec");
            let mut writer = File::from(fd);
            writer.write_all(&(i as u32).to_le_bytes()).unwrap();
            drop(writer);
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            assert_eq!(got, (i as u32).to_le_bytes(), "fd {i} is another pipe");
        }
    }

    #[test]
    fn round_trips_keep_payload_and_descriptor_identity() {
        round_trip(0, 0);
        round_trip(1, 10);
        round_trip(253, 3 << 20);
        round_trip(254, 5 << 20);
        round_trip(1000, (4 << 20) + 7);
    }

    #[test]
    fn messages_follow_each_other_and_try_recv_does_not_block() {
        let (a, b) = connected();
        assert!(b.try_recv().unwrap().is_none());
        a.send(Kind::Hello, &7u32.to_le_bytes(), &[]).unwrap();
        a.send(Kind::Taken, b"", &[]).unwrap();
        let hello = b.try_recv().unwrap().unwrap();
        assert_eq!(
            (hello.kind, hello.payload),
            (Kind::Hello, 7u32.to_le_bytes().to_vec())
        );
        assert_eq!(b.recv().unwrap().kind, Kind::Taken);
        assert!(b.try_recv().unwrap().is_none());
        drop(a);
        let eof = b.try_recv().unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn eof_in_the_middle_of_a_message() {
        let (a, b) = connected();
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4] = Kind::State as u8;
        header[8..16].copy_from_slice(&100u64.to_le_bytes());
        header[16..20].copy_from_slice(&2u32.to_le_bytes());
        a.send_all(&header).unwrap();
        a.send_all(&[1; 100]).unwrap();
        let (_r, w) = std::io::pipe().unwrap();
        let w = OwnedFd::from(w);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [w.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        // One descriptor where the chunk announces two, then the end.
        rustix::net::sendmsg(
            &a.socket,
            &[IoSlice::new(&[2])],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        drop(a);
        let e = b.recv().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        let (a, b) = connected();
        a.send_all(&header[..10]).unwrap();
        drop(a);
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, b) = connected();
        b.set_timeout(Some(Duration::from_millis(50))).unwrap();
        let start = Instant::now();
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn garbage_is_refused_and_its_descriptors_closed() {
        let (a, b) = connected();
        a.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::InvalidData);

        // A header claiming more than the limit.
        let (a, b) = connected();
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4] = Kind::State as u8;
        header[8..16].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        a.send_all(&header).unwrap();
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::InvalidData);

        // Descriptors riding on payload bytes: refused, and closed, so the
        // pipe's reader sees the end once the sender's copy is gone too.
        let (a, b) = connected();
        header[8..16].copy_from_slice(&1u64.to_le_bytes());
        a.send_all(&header).unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        let w = OwnedFd::from(w);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [w.as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &a.socket,
            &[IoSlice::new(&[9])],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        drop(w);
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn the_child_end_is_inherited_and_ours_is_not() {
        let (ours, theirs) = pair().unwrap();
        let flags = rustix::io::fcntl_getfd(&ours).unwrap();
        assert!(flags.contains(FdFlags::CLOEXEC));
        let flags = rustix::io::fcntl_getfd(&theirs).unwrap();
        assert!(!flags.contains(FdFlags::CLOEXEC));
        let theirs = Channel::from_fd(theirs);
        ours.send(Kind::Hello, b"x", &[]).unwrap();
        assert_eq!(theirs.recv().unwrap().payload, b"x");
    }

    #[test]
    fn from_env_values_that_name_no_socket_are_refused() {
        assert!(channel_from("x".as_ref()).is_err());
        assert!(channel_from("1".as_ref()).is_err());
        let file = File::open("/dev/null").unwrap();
        let raw = OwnedFd::from(file);
        // A copy, so the test keeps owning its descriptor whatever happens.
        let copy = rustix::io::fcntl_dupfd_cloexec(&raw, 3).unwrap();
        let number = copy.as_raw_fd().to_string();
        std::mem::forget(copy);
        let e = channel_from(number.as_ref()).unwrap_err();
        assert!(e.contains("does not name a Unix stream socket"), "{e}");
    }

    #[test]
    fn memfd_round_trip_and_seals() {
        let bytes = payload(3 << 20);
        let fd = memfd("wshub-state", &bytes).unwrap();
        assert!(read_memfd(&fd).unwrap() == bytes);
        // Sealed: writing fails.
        let mut file = File::from(rustix::io::fcntl_dupfd_cloexec(&fd, 3).unwrap());
        assert!(file.write_all(b"x").is_err());
        let empty = memfd("empty", b"").unwrap();
        assert!(read_memfd(&empty).unwrap().is_empty());
        let unsealed = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        assert!(read_memfd(&unsealed).is_err());
    }
}
