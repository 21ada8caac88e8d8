//! The one launcher of the real `wshub` binary as a daemon: a config with a
//! loopback listener, a child process whose log lines can be awaited,
//! signals, and a `NOTIFY_SOCKET` to receive service-manager notifications.
//!
//! Every wait has a deadline, so a daemon that misbehaves fails the test
//! with what it logged instead of hanging it. A daemon never outlives its
//! test: it is killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

pub const BIN: &str = env!("CARGO_BIN_EXE_wshub");

/// How long a daemon may take to log something it is expected to log.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

use super::tempdir::TempDir;

/// A config listening on an ephemeral loopback port with an echo route at
/// `/echo`, with `extra` settings placed before the tables.
pub fn config_with(extra: &str) -> String {
    format!(
        "{extra}\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nkind = \"echo\"\n"
    )
}

/// What the daemon logs, before the address, once a listener is bound.
const PLAIN_LISTENING: &str = "listening on ws://";
const TLS_LISTENING: &str = "listening on wss://";

/// The address that follows `marker` in a log `line`.
fn address_after(line: &str, marker: &str) -> SocketAddr {
    let rest = line
        .split_once(marker)
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let addr = rest.split_whitespace().next().unwrap_or_default();
    addr.parse()
        .unwrap_or_else(|_| panic!("cannot parse the address in {line:?}"))
}

/// The log lines a daemon wrote to stderr so far, and a channel of new ones.
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    new: Receiver<String>,
    /// The thread reading the pipe; done once every line is in `lines`.
    reader: std::thread::JoinHandle<()>,
}

/// The `wshub` binary (or a wrapper that execs it) running as a child
/// process; killed on drop if still running.
pub struct Daemon {
    pub child: Child,
    log: Log,
    /// Set once the daemon has been seen to exit.
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Runs `wshub --config CONFIG` with `env` added to the environment.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config);
        Daemon::spawn(command, env)
    }

    /// Runs `command` (which must end up exec'ing wshub in the same process)
    /// with stderr captured. `RUST_LOG` defaults to `info`; variables that
    /// would change the daemon's behaviour are cleared unless given.
    pub fn spawn(command: Command, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_with(command, env, false)
    }

    /// Like [`Daemon::spawn`], but stderr is announced as the journal's
    /// stream through `JOURNAL_STREAM` (the pipe's device and inode, as
    /// systemd sets it for `StandardError=journal`).
    pub fn spawn_journal(command: Command, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_with(command, env, true)
    }

    fn spawn_with(mut command: Command, env: &[(&str, &str)], journal: bool) -> Daemon {
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "JOURNAL_STREAM",
        ] {
            command.env_remove(var);
        }
        command.env("RUST_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        let (reader, writer) = std::io::pipe().expect("create a pipe");
        if journal {
            let stat = rustix::fs::fstat(&writer).expect("fstat the pipe");
            command.env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(writer)
            .spawn()
            .expect("start the daemon");
        // The command holds the pipe's write end: drop it so that the reader
        // sees the end when the daemon exits.
        drop(command);
        let log = collect_lines(reader);
        Daemon {
            child,
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        kill_process(self.pid(), signal).expect("send a signal to the daemon");
    }

    /// Waits for a log line containing `needle` that was not yet awaited,
    /// and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.new.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no log line containing {needle:?} within {LOG_TIMEOUT:?}; log so far:\n{}",
                    self.log_text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the daemon closed stderr before logging {needle:?}; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Waits for the `listening on ws://ADDR` line and returns ADDR.
    pub fn listening_address(&mut self) -> SocketAddr {
        let line = self.wait_for_log(PLAIN_LISTENING);
        address_after(&line, PLAIN_LISTENING)
    }

    /// Waits for the `listening on wss://ADDR` line and returns ADDR.
    pub fn tls_listening_address(&mut self) -> SocketAddr {
        let line = self.wait_for_log(TLS_LISTENING);
        address_after(&line, TLS_LISTENING)
    }

    /// The ADDR of a `listening on ws://ADDR` line.
    pub fn listening_address_from(&self, line: &str) -> SocketAddr {
        address_after(line, PLAIN_LISTENING)
    }

    /// Everything logged so far, one line each.
    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Waits at most `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                self.status = Some(status);
                // Let the reader catch up with the last lines before anyone
                // looks at the log.
                let drained = Instant::now() + Duration::from_secs(2);
                while !self.log.reader.is_finished() && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the daemon did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts the daemon is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.status = Some(status);
            panic!("the daemon exited ({status}); log:\n{}", self.log_text());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads lines from `stream` on a thread, keeping them all and passing each
/// on; the thread keeps draining so the child never blocks on a full pipe.
fn collect_lines(stream: impl Read + Send + 'static) -> Log {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, new) = mpsc::channel();
    let kept = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    Log { lines, new, reader }
}

/// A datagram socket standing in for the service manager's notification
/// socket. A thread drains it continually, as the manager does: the daemon
/// would block on a full socket queue otherwise.
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Receiver<(Instant, String)>,
    /// Everything received so far, for failure messages.
    seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &TempDir) -> NotifySocket {
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            messages,
            seen: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }

    /// Waits for a datagram with a line equal to `line` (or starting with it
    /// when it ends in `=`), skipping others; returns the whole datagram
    /// and when it arrived.
    pub fn expect(&mut self, line: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok((at, message)) => {
                    self.seen.push(message.clone());
                    let hit = message.lines().any(|l| {
                        if line.ends_with('=') {
                            l.starts_with(line)
                        } else {
                            l == line
                        }
                    });
                    if hit {
                        return (at, message);
                    }
                }
                Err(_) => panic!(
                    "no {line:?} notification within {timeout:?}; received: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Everything that arrives within `wait`.
    pub fn collect(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok((_, message)) = self
            .messages
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(message.clone());
            out.push(message);
        }
        out
    }
}

/// Fails with a clear message when a tool the test needs is missing; tests
/// never skip silently.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed; it comes with Debian's `systemd` package \
         (`apt-get install --no-install-recommends systemd`; `bash .ci/test` installs it)"
    );
}
