//! Helpers for the hostile-client tests (`tests/hostile*.rs`): the real
//! daemon as a child process with its memory and CPU time read from `/proc`,
//! `GET /metrics`, sockets bound to chosen loopback source addresses, the
//! open-file limit, a seeded byte generator and latency percentiles.
//!
//! Everything stays on loopback: the daemon listens on 127.0.0.1 with an
//! ephemeral port, and clients connect from 127.0.0.x.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
/// Bound on any single blocking socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How many of the daemon's last log lines are kept for failure messages.
const LOG_TAIL: usize = 40;

/// A config file in the system temp dir, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(tag: &str, contents: &str) -> TempConfig {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "wshub-hostile-{}-{tag}-{nanos}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `wshub` binary running on a config of the test's own; killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    _config: TempConfig,
}

impl Daemon {
    /// Runs the daemon with `settings` (top-level TOML keys) plus one
    /// loopback listener on an ephemeral port and an echo route at `/echo`.
    pub fn start(tag: &str, settings: &str) -> Daemon {
        Daemon::spawn(tag, settings, None)
    }

    /// Like [`Daemon::start`], under an open-files limit of `nofile` (soft
    /// and hard alike, so the daemon cannot raise it).
    pub fn start_with_nofile(tag: &str, settings: &str, nofile: u64) -> Daemon {
        Daemon::spawn(tag, settings, Some(nofile))
    }

    fn spawn(tag: &str, settings: &str, nofile: Option<u64>) -> Daemon {
        let config = TempConfig::new(
            tag,
            &format!(
                "{settings}\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
                 [[route]]\npath = \"/echo\"\nkind = \"echo\"\n"
            ),
        );
        let mut command = match nofile {
            // `ulimit -n` without -S or -H sets both limits, in every POSIX
            // shell; `exec` keeps the pid, so the limit applies to wshub.
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .arg("--config")
            .arg(&config.0)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wshub");
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = watch_log(&mut child, Arc::clone(&log));
        Daemon {
            child,
            addr,
            pid,
            log,
            _config: config,
        }
    }

    /// The daemon's last log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Panics (with the log) if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("wshub exited with {status}; log:\n{}", self.log_tail());
        }
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.pid))
            .unwrap_or_else(|e| panic!("read /proc/{}/{name}: {e}", self.pid))
    }

    /// Resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// User plus system CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = self.proc_file("stat");
        // The command name may contain spaces; fields resume after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // After the name: state is field 3 of stat(5), utime 14, stime 15.
        let ticks = |n: usize| -> u64 { fields[n - 3].parse().expect("numeric CPU ticks") };
        let total = ticks(14) + ticks(15);
        Duration::from_millis(total * 1000 / clock_ticks_per_second())
    }

    /// The daemon's open-files limit as `(soft, hard)`.
    pub fn nofile_limit(&self) -> (String, String) {
        nofile_line(&self.proc_file("limits"))
    }

    /// Open descriptors of the daemon.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// A value from `GET /metrics` (asked from 127.0.0.1, which may read it
    /// without a token). The request's own connection counts in
    /// `wshub_connections`.
    pub fn metric(&self, name: &str) -> u64 {
        metric(self.addr, name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains the daemon's stderr on a thread, keeping the last lines, and waits
/// for its `listening on ws://ADDR` line.
fn watch_log(child: &mut Child, log: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, rest)) = line.split_once("listening on ws://") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            let mut log = log.lock().unwrap();
            if log.len() == LOG_TAIL {
                log.remove(0);
            }
            log.push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no `listening on` line from wshub");
    addr.parse()
        .unwrap_or_else(|_| panic!("cannot parse listening address {addr:?}"))
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// `(soft, hard)` from the "Max open files" line of a `/proc/PID/limits`.
fn nofile_line(limits: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap_or_default().to_owned(),
        values.next().unwrap_or_default().to_owned(),
    )
}

/// Makes sure this process may open `needed` descriptors, raising its soft
/// limit up to the hard one with `prlimit` if it must.
pub fn ensure_nofile(needed: u64) {
    let read = || nofile_line(&std::fs::read_to_string("/proc/self/limits").unwrap());
    let (soft, hard) = read();
    let parse = |v: &str| v.parse::<u64>().unwrap_or(u64::MAX);
    if parse(&soft) >= needed {
        return;
    }
    assert!(
        parse(&hard) >= needed,
        "this test needs {needed} open files but the hard limit is {hard}: raise `ulimit -Hn`"
    );
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status();
    let (soft, _) = read();
    assert!(
        parse(&soft) >= needed,
        "this test needs {needed} open files, the soft limit is {soft} and prlimit failed \
         ({status:?}): run `ulimit -n {needed}` first"
    );
}

/// A value from `GET /metrics` on `addr`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect for /metrics");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("read the /metrics answer");
    assert!(text.starts_with("HTTP/1.1 200 "), "metrics answer: {text}");
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Polls `metric` until it equals `want` or `within` passes; returns the
/// last value seen.
pub fn wait_for_metric(addr: SocketAddr, name: &str, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(addr, name);
        if value == want || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `i`-th of `count` loopback source addresses starting at 127.0.0.2.
pub fn source_address(i: usize, count: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % count) as u8)
}

/// A TCP connection to `addr` from `source` (any port), with timeouts and
/// `TCP_NODELAY`.
pub fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Drops `stream` with an RST instead of a FIN (`SO_LINGER` of zero).
pub fn reset(stream: TcpStream) {
    let socket = Socket::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// The opening handshake for `/echo` with the RFC 6455 sample key.
pub const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\n\
    Host: 127.0.0.1\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Sends [`UPGRADE`] and reads the answer's head; panics unless it is 101.
/// Nothing follows the head until the client speaks, so no read takes
/// bytes past it.
pub fn handshake(stream: &mut TcpStream) {
    stream.write_all(UPGRADE).expect("send the upgrade request");
    let head = read_head(stream);
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "handshake answer: {:?}",
        String::from_utf8_lossy(&head)
    );
}

/// Reads an HTTP response head (up to and including the blank line).
pub fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).expect("read a response head");
        assert!(n > 0, "EOF inside a response head: {head:?}");
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return head;
        }
        assert!(head.len() < 16 * 1024, "response head too long");
    }
}

/// A masked client frame with the length written as given (no checks), so
/// any 64-bit length can be announced.
pub fn masked_frame(b0: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x88];
    let mut out = vec![b0];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A small deterministic generator (xorshift64*), so garbage is the same on
/// every run.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The `p`-th percentile (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    assert!(!samples.is_empty());
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples[rank - 1]
}

/// Reads until EOF or reset; `Err` on a timeout.
pub fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(out),
            Err(_) => return Err(out),
        }
    }
}
