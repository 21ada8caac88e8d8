//! The byte transport under a connection.
//!
//! Owns: the socket of one connection and the calls that move bytes through it.
//! Plain TCP, or TLS ([`TlsStream`]) as another variant, so the
//! connection state machine and the protocol code never learn which one they
//! run over.
//! Must never: interpret the bytes it carries.

use std::io::{self, IoSlice, Read};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::outqueue::Sink;
use super::tls::TlsStream;

#[derive(Debug)]
pub(super) enum Transport {
    Plain(TcpStream),
    // Boxed: rustls state is over a kilobyte, and plain connections must not pay
    // for it in the slab.
    Tls(Box<TlsStream>),
}

impl Transport {
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }

    /// Sends FIN after what is already written, keeping the read side open so
    /// the peer's close frame or EOF can still be seen. Over TLS a
    /// close_notify goes first; if the socket is full, the FIN follows from
    /// [`Transport::flush_pending`] once it has drained.
    pub(super) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown(Shutdown::Write),
            Transport::Tls(s) => s.shutdown_write(),
        }
    }

    /// The socket to register with the poller.
    pub(super) fn source(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.source(),
        }
    }

    /// True while the transport itself holds bytes the socket has not taken
    /// (TLS records: handshake, encrypted data, alerts). The loop keeps
    /// WRITABLE interest while this is true, even with an empty outbound
    /// queue. Never true for plain TCP, which buffers nothing.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(s) => s.wants_write(),
        }
    }

    /// Pushes the transport's own pending bytes to the socket; Ok(true) when
    /// nothing is left, Ok(false) when the socket is full (wait for WRITABLE).
    pub(super) fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(s) => s.flush(),
        }
    }
}

impl Sink for Transport {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => Sink::write_vectored(s, bufs),
            Transport::Tls(s) => Sink::write_vectored(&mut **s, bufs),
        }
    }
}

/// Plain TCP: `send` for one slice, `sendmsg` for several. Both go to the
/// socket layer directly, without the file layer that `write`/`writev`
/// pass through first (measurably cheaper per delivery), and never raise
/// SIGPIPE.
impl Sink for TcpStream {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use rustix::net::{SendAncillaryBuffer, SendFlags, send, sendmsg};
        let sent = match bufs {
            [one] => send(&*self, one, SendFlags::NOSIGNAL),
            _ => sendmsg(
                &*self,
                bufs,
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            ),
        };
        sent.map_err(io::Error::from)
    }
}

/// TLS: plaintext in, records out (see [`TlsStream::write_vectored`]).
impl Sink for TlsStream {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TlsStream::write_vectored(self, bufs)
    }
}
