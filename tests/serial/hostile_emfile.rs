//! Out of file descriptors: the daemon runs under an open-files limit of 64
//! (soft and hard, so it cannot raise it) and gets 200 connections. Accept
//! fails with EMFILE; the server must back off instead of spinning on the
//! still-readable listener, keep serving the client it already has, and
//! accept again once descriptors free up.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::support::client::{IO_TIMEOUT, RawClient};
use crate::support::daemon::{BIN, Daemon, config_with};
use crate::support::http::wait_for_metric;
use crate::support::load::{percentile, source_address};
use crate::support::tempdir::TempDir;

const NOFILE: u64 = 64;
const CONNECTIONS: usize = 200;
/// Source addresses 127.0.0.2 ..= 127.0.0.5.
const SOURCE_ADDRESSES: usize = 4;
/// How long CPU use is watched while the daemon is out of descriptors.
const WATCH: Duration = Duration::from_secs(2);
/// Most CPU the daemon may use over `WATCH`.
const MAX_CPU: Duration = Duration::from_millis(500);
/// How long recovery may take once the connections are gone.
const RECOVERY: Duration = Duration::from_secs(10);

/// The daemon on `config` under an open-files limit of `nofile`, soft and
/// hard alike, so it cannot raise it.
fn start_with_nofile(config: &Path, nofile: u64) -> Daemon {
    // `ulimit -n` without -S or -H sets both limits, in every POSIX shell;
    // `exec` keeps the pid, so the limit applies to wshub.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .arg("--config")
        .arg(config);
    Daemon::spawn(sh, &[])
}

/// A connection attempt that does not wait for the TCP handshake: once the
/// listener's accept queue is full the kernel drops further SYNs, and a
/// blocking connect would hang on those.
fn start_connect(i: usize, addr: SocketAddr) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket
        .bind(&SocketAddrV4::new(source_address(i, SOURCE_ADDRESSES), 0).into())
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
        Err(e) => panic!("connect {i}: {e}"),
    }
    socket
}

/// A handshake on `/echo`, retried until `within` passes.
fn open_with_retry(addr: SocketAddr, within: Duration) -> RawClient {
    let deadline = Instant::now() + within;
    loop {
        match std::panic::catch_unwind(|| RawClient::open(addr, "/echo")) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[test]
fn out_of_descriptors_the_server_backs_off_and_recovers() {
    let _alone = crate::alone();
    let dir = TempDir::new("emfile");
    let mut daemon = start_with_nofile(&dir.write("wshub.toml", &config_with("")), NOFILE);
    let addr = daemon.listening_address();
    let limit = daemon.nofile_limit();
    assert_eq!(
        limit,
        (NOFILE.to_string(), NOFILE.to_string()),
        "daemon's open-files limit (soft, hard)"
    );
    let mut resident = RawClient::open(addr, "/echo");
    resident.send_text("before");
    assert_eq!(resident.expect_text(), "before");
    let fds_before = daemon.open_fds();

    let pending: Vec<Socket> = (0..CONNECTIONS).map(|i| start_connect(i, addr)).collect();
    // Let the daemon take what it can until accept fails.
    std::thread::sleep(Duration::from_millis(300));
    let fds_full = daemon.open_fds();

    let cpu_start = daemon.cpu_time();
    let watch_start = Instant::now();
    let mut round_trips = Vec::new();
    while watch_start.elapsed() < WATCH {
        let begin = Instant::now();
        resident.send_text("while out of descriptors");
        assert_eq!(resident.expect_text(), "while out of descriptors");
        round_trips.push(begin.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    let watched = watch_start.elapsed();
    let cpu = daemon.cpu_time() - cpu_start;
    daemon.assert_running();
    let p99 = percentile(&mut round_trips, 99);
    eprintln!(
        "limit {limit:?}: {fds_before} fds open before, {fds_full} with {CONNECTIONS} \
         connections pending; {cpu:?} CPU over {watched:?}; resident client: {} echoes, \
         p99 {p99:?}",
        round_trips.len()
    );
    assert!(
        fds_full as u64 >= NOFILE - 2,
        "the daemon never ran out of descriptors ({fds_full} open)"
    );
    assert!(cpu < MAX_CPU, "the daemon used {cpu:?} CPU in {watched:?}");

    drop(pending);
    let recovery_start = Instant::now();
    let mut fresh = open_with_retry(addr, RECOVERY);
    fresh.send_text("after");
    assert_eq!(fresh.expect_text(), "after");
    drop(fresh);
    resident.send_text("still here");
    assert_eq!(resident.expect_text(), "still here");
    drop(resident);
    // Only the metrics request's own connection remains.
    let held = wait_for_metric(addr, "wshub_connections", 1, RECOVERY);
    eprintln!(
        "recovered in {:?}; wshub_connections back to {held}; {} fds open",
        recovery_start.elapsed(),
        daemon.open_fds()
    );
    assert_eq!(held, 1, "connections still held after recovery");
    assert!(IO_TIMEOUT < RECOVERY);
}
