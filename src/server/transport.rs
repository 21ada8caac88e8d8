//! The byte transport under a connection.
//!
//! Owns: the socket of one connection and the calls that move bytes through it.
//! Plain TCP today; TLS slots in here as another variant, so the connection
//! state machine and the protocol code never learn which one they run over.
//! Must never: interpret the bytes it carries.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;

#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
}

impl Transport {
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }

    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
        }
    }

    /// Sends FIN after what is already written, keeping the read side open so
    /// the peer's close frame or EOF can still be seen.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown(Shutdown::Write),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(s) => s.peer_addr(),
        }
    }

    /// The socket to register with the poller.
    pub fn source(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
        }
    }
}
