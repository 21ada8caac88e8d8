//! What the handover tests share: the daemon's config (an echo route, a
//! broadcast hub, a chat room, keep-alive pings off so that only the
//! handover talks to the clients), and a publisher that rides through a
//! handover the way a careful HTTP client would.
//!
//! Must never: count a message as published without the server's `200`,
//! or retry one that the server may already have taken (only a `503`, or
//! a connection lost before any byte of the answer, is retried).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::http::publish_request;
use crate::support::tempdir::TempDir;

/// The broadcast hub and the chat room every config here serves.
pub const LIVE: &str = "/live";
pub const CHAT: &str = "/chat";

/// How long a publish may wait for its answer: the loop is stopped during
/// a handover, and a debug build hands over ten thousand connections.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The config: `extra` top-level settings first, then one plain loopback
/// listener (`listeners` more tables after it), an echo route, a broadcast
/// hub at `/live` and a chat room at `/chat`, and `routes` further route
/// settings for `/live`.
pub fn config(extra: &str, listeners: &str, live: &str) -> String {
    format!(
        "ping_interval = \"0s\"\nidle_timeout = \"0s\"\nshutdown_timeout = \"5s\"\n{extra}\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n{listeners}\n\
         [[route]]\npath = \"/echo\"\nkind = \"echo\"\n\n\
         [[route]]\npath = \"{LIVE}\"\nkind = \"broadcast\"\n{live}\n\n\
         [[route]]\npath = \"{CHAT}\"\nkind = \"broadcast\"\nclient_messages = \"broadcast\"\n\
         compression = \"on\"\ncompression_min_size = 0\n"
    )
}

/// Writes `text` as the config file in `dir`.
pub fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    dir.write("wshub.toml", text)
}

/// Starts the daemon on the default config of these tests; returns it and
/// its plain address.
pub fn start(dir: &TempDir, extra: &str) -> (Daemon, SocketAddr) {
    let path = write_config(dir, &config(extra, "", ""));
    let mut daemon = Daemon::start(&path, &[]);
    let addr = daemon.listening_address();
    (daemon, addr)
}

/// What one attempt at publishing came to.
enum Attempt {
    /// The server answered `200` with this JSON body.
    Published(serde_json::Value),
    /// Safe to send again: a `503`, or no byte of an answer came.
    Retry(String),
}

/// A publisher on one keep-alive HTTP connection, opened again when the
/// server closes it.
pub struct Publisher {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Attempts that had to be repeated, with why.
    pub retries: Vec<String>,
}

impl Publisher {
    pub fn new(addr: SocketAddr) -> Publisher {
        Publisher {
            addr,
            stream: None,
            retries: Vec::new(),
        }
    }

    /// Publishes `body` as text to `channel`, retrying what may be retried
    /// until `ANSWER_TIMEOUT` passes; returns the answer's JSON.
    pub fn publish(&mut self, channel: &str, body: &str) -> serde_json::Value {
        let request = publish_request(channel, Some("text/plain"), body.as_bytes());
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.attempt(&request) {
                Attempt::Published(answer) => return answer,
                Attempt::Retry(why) => {
                    assert!(
                        Instant::now() < deadline,
                        "publishing {body:?} kept failing; last: {why}"
                    );
                    self.retries.push(why);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Publishes and returns the recipient count.
    pub fn publish_count(&mut self, channel: &str, body: &str) -> u64 {
        let answer = self.publish(channel, body);
        answer["recipients"]
            .as_u64()
            .unwrap_or_else(|| panic!("no recipients in {answer}"))
    }

    fn attempt(&mut self, request: &[u8]) -> Attempt {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => match TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
                    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    stream
                }
                Err(e) => return Attempt::Retry(format!("connect: {e}")),
            },
        };
        if let Err(e) = stream.write_all(request) {
            return Attempt::Retry(format!("send: {e}"));
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = response.parse(&buf) {
                let status = response.code.unwrap_or_default();
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let body_len: usize = header("Content-Length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let closes = header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if buf.len() >= head_len + body_len {
                    let body = &buf[head_len..head_len + body_len];
                    assert_eq!(buf.len(), head_len + body_len, "bytes after the answer");
                    return match status {
                        200 => {
                            if !closes {
                                self.stream = Some(stream);
                            }
                            Attempt::Published(
                                serde_json::from_slice(body).expect("a JSON publish answer"),
                            )
                        }
                        503 => Attempt::Retry(format!(
                            "503 {}",
                            String::from_utf8_lossy(body).trim_end()
                        )),
                        other => panic!(
                            "publish answered {other}: {}",
                            String::from_utf8_lossy(body)
                        ),
                    };
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) if buf.is_empty() => return Attempt::Retry("closed before answering".into()),
                Ok(0) => panic!(
                    "the connection closed in the middle of an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if buf.is_empty() && e.kind() != ErrorKind::WouldBlock => {
                    if e.kind() == ErrorKind::TimedOut {
                        panic!("no answer to a publish within {ANSWER_TIMEOUT:?}");
                    }
                    return Attempt::Retry(format!("read: {e}"));
                }
                Err(e) => panic!("reading a publish answer: {e}"),
            }
        }
    }
}
