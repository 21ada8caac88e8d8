//! The event loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! Owns: listeners, sockets, the shared receive buffer, the timer wheel and
//! the clock. Moves bytes between sockets and the sans-IO protocol machines.
//! Must never: parse protocol bytes itself, block, or let one connection's
//! failure reach another.

use crate::config::Config;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("event loop failure: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server, ready to run.
pub struct Server {
    _config: Config,
}

impl Server {
    /// Binds every configured listener.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        Ok(Server { _config: config })
    }
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }
    /// Runs the event loop until stopped.
    pub fn run(self) -> Result<(), ServerError> {
        Ok(())
    }
}
