//! A `redis-server` of the test's own on a free loopback port, with
//! persistence off, that the test can kill, pause (SIGSTOP), resume and
//! restart on the same port. No mocks: the cluster tests talk to real Redis.
//!
//! `.ci/test` installs `redis-server`; a missing one fails the test, never
//! skips it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) Redis; killed on drop.
pub struct Redis {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// A TLS port beside the plain one, and its certificate and key files.
    tls: Option<(u16, PathBuf, PathBuf)>,
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Redis {
    /// Starts a server on a free loopback port.
    pub fn start() -> Redis {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut redis = Redis {
            addr,
            child: None,
            tls: None,
        };
        redis.restart();
        redis
    }

    /// Starts a server that also serves TLS (`rediss://`) with `cert` and
    /// `key` on a port of its own; clients need no certificate.
    pub fn start_tls(cert: &Path, key: &Path) -> Redis {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut redis = Redis {
            addr,
            child: None,
            tls: Some((free_port(), cert.to_owned(), key.to_owned())),
        };
        redis.restart();
        redis
    }

    /// `rediss://localhost:PORT/0` for a server started with [`Redis::start_tls`].
    pub fn tls_url(&self) -> String {
        let (port, _, _) = self.tls.as_ref().expect("started with TLS");
        format!("rediss://localhost:{port}/0")
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// (Re)starts the server on its port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        let mut command = Command::new("redis-server");
        if let Some((port, cert, key)) = &self.tls {
            command
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert)
                .args(["--tls-auth-clients", "no"]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (bash .ci/test installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while self.try_command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(start.elapsed() < START_TIMEOUT, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: gone at once, sockets reset by the kernel.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// SIGSTOP: sockets stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Sends one inline command, returns the first line of the reply.
    pub fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(command.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// Subscribers of `channel` in Redis (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> usize {
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let command = format!(
            "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        stream.write_all(command.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        for _ in 0..4 {
            let mut line = String::new();
            reader.read_line(&mut line).expect("reply");
            lines.push(line.trim_end().to_owned());
        }
        lines[3].trim_start_matches(':').parse().expect("count")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server must be resumed to die of SIGKILL promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}
