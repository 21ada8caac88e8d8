//! The integration tests, one binary with one module per topic, so the
//! support code and the dependencies are compiled and linked once. Tests
//! here run in parallel threads of one process: none of them may change
//! process-wide state (resource limits, environment, signal handlers,
//! working directory, descriptor flags), need the machine to itself, or
//! hold more than a few thousand descriptors (the heaviest, a thousand
//! broadcast subscribers, holds about 2,000 with the server's side, far
//! below the 20,000 a process may hold even beside many others). Tests
//! that cannot keep to that live in `tests/serial`.

/// Helpers shared with `tests/serial`, one file per topic. This binary uses
/// every helper of the files it declares, so the compiler reports any that
/// nobody uses.
#[path = "../support"]
mod support {
    pub mod browser;
    pub mod client;
    pub mod daemon;
    pub mod data;
    pub mod http;
    pub mod jwt;
    pub mod positions;
    pub mod python;
    pub mod server;
    pub mod tempdir;
    pub mod tls;
}

mod auth;
mod binary;
mod broadcast;
mod browser;
mod cli_publish;
mod close;
mod deflate;
mod echo_tungstenite;
mod embedded_default;
mod frames;
mod fuzz_regressions;
mod handshake;
mod history;
mod hostile_garbage;
mod keepalive;
mod load;
mod metrics;
mod notify;
mod origin_protocols;
mod publish_http;
mod reuse_port;
mod signals;
mod sse;
mod tls;
mod tls_clients;
mod tls_reload;
mod units;
