//! Load and measurement helpers for the tests that push the server hard:
//! sockets bound to chosen loopback source addresses, this process's
//! open-file limit, the daemon's memory, CPU time and descriptors read from
//! `/proc`, latency percentiles, and a free port for tools that must be
//! told one up front.
//!
//! Everything stays on loopback: clients connect from 127.0.0.x. Only the
//! tests that run one at a time (`tests/serial`) use these; a test that
//! runs beside others must not.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::time::Duration;

use rustix::process::{Resource, getrlimit};
use socket2::{Domain, Protocol, Socket, Type};
use wshub::daemon::rlimit::raise_nofile;

use super::client::IO_TIMEOUT;
use super::daemon::Daemon;

/// Measurements of a running daemon, read from `/proc`.
impl Daemon {
    fn proc_file(&self, name: &str) -> String {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/{name}"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/{name}: {e}"))
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
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
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
/// limit to the hard one if it must (the daemon's own code does that).
pub fn ensure_nofile(needed: u64) {
    if getrlimit(Resource::Nofile)
        .current
        .is_none_or(|soft| soft >= needed)
    {
        return;
    }
    let limit =
        raise_nofile().unwrap_or_else(|e| panic!("this test needs {needed} open files: {e}"));
    assert!(
        limit.soft.is_none_or(|soft| soft >= needed),
        "this test needs {needed} open files but the {limit}: raise `ulimit -Hn`"
    );
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

/// A loopback port that was free a moment ago (for tools that need a port
/// number up front).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The `p`-th percentile (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    assert!(!samples.is_empty());
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples[rank - 1]
}
