//! The server under test in this process: the default config on an
//! ephemeral loopback port (and variants of it), run on a thread of its own
//! and stopped when the test lets go of it.
//!
//! Only loopback addresses are ever bound. Clients live in `client`.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use wshub::config::{ClientMessages, Config, RouteConfig, RouteKind};
use wshub::server::{Server, ServerError, ServerHandle};

use super::client::{ECHO_PATH, RawClient};

/// The default config, listening on an ephemeral loopback port.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    config
}

/// How long a stopped server may take to leave its loop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server running on its own thread; stopped on drop, which waits (at
/// most `STOP_TIMEOUT`) for the loop to exit.
pub struct TestServer {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order, and whether it serves TLS.
    pub endpoints: Vec<(SocketAddr, bool)>,
    handle: ServerHandle,
    /// Receives the loop's result when it exits (or a disconnect if it panicked).
    done: mpsc::Receiver<Result<(), ServerError>>,
}

impl TestServer {
    /// A server with the default config (echo route at `/echo`).
    pub fn start() -> TestServer {
        TestServer::with_config(test_config())
    }

    /// A server with the default config adjusted by `adjust`. The listener
    /// stays on an ephemeral loopback port whatever `adjust` does.
    pub fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        adjust(&mut config);
        TestServer::with_config(config)
    }

    pub fn with_config(mut config: Config) -> TestServer {
        // Output only shows with RUST_LOG set, and only for failing tests.
        let _ = env_logger::builder().is_test(true).try_init();
        for listener in &mut config.listeners {
            assert!(
                listener.address.ip().is_loopback(),
                "tests listen on loopback only"
            );
        }
        config.validate().expect("test config must be valid");
        // The server is bound inside its thread: it shares frames between
        // connections by non-atomic reference count, so it is not `Send`.
        let (ready_tx, ready) = mpsc::channel();
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("wshub-server".into())
            .spawn(move || {
                let server = Server::bind(config).expect("bind test server");
                let _ = ready_tx.send((server.local_endpoints(), server.handle()));
                let _ = tx.send(server.run());
            })
            .unwrap();
        let (endpoints, handle) = ready.recv().expect("test server failed to start");
        TestServer {
            addr: endpoints[0].0,
            endpoints,
            handle,
            done,
        }
    }

    /// `ws://` URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A raw client that completed the handshake on `/echo`.
    pub fn client(&self) -> RawClient {
        RawClient::open(self.addr, ECHO_PATH)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.stop();
        // A loop that does not stop is left behind rather than hanging the test.
        let result = self.done.recv_timeout(STOP_TIMEOUT);
        if std::thread::panicking() {
            return;
        }
        match result {
            Ok(outcome) => outcome.expect("server loop failed"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("server loop did not stop within {STOP_TIMEOUT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("server thread panicked"),
        }
    }
}

/// The broadcast route `broadcast_config` serves.
pub const LIVE_PATH: &str = "/live";

/// The default config plus a broadcast route at `/live` with the given
/// options for subscribers' own messages.
pub fn broadcast_config(client_messages: ClientMessages, echo_to_sender: bool) -> Config {
    let mut config = test_config();
    let mut live = RouteConfig::new(LIVE_PATH, RouteKind::Broadcast);
    live.client_messages = client_messages;
    live.echo_to_sender = echo_to_sender;
    config.routes.push(live);
    config
}
