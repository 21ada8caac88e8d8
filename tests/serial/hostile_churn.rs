//! Connection churn against the real binary: 50,000 connections opened and
//! dropped (half of them after completing the handshake; some closing
//! cleanly, some with an RST, some without sending a byte, some halfway
//! through a request) leave `wshub_connections` back at its baseline and
//! the daemon's resident memory near its post-warm-up baseline.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::client::{ECHO_PATH, RFC_KEY, RawClient, code, reset, upgrade_request};
use crate::support::daemon::{Daemon, config_with};
use crate::support::http::{metric, wait_for_metric};
use crate::support::load::connect_from;
use crate::support::tempdir::TempDir;

const CONNECTIONS: usize = 50_000;
const WARM_UP: usize = 5_000;
/// One worker thread per source address 127.0.0.2 ..= 127.0.0.11, so no
/// address carries more than 5,500 connections (ephemeral ports to spare).
const WORKERS: usize = 10;
/// Connections a worker has open at once (250 across all workers).
const BATCH: usize = 25;
/// Bound on the churn itself.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// Allowed VmRSS above the post-warm-up baseline (allocator slack).
const MAX_GROWTH_KIB: u64 = 8 * 1024;
/// A connect this slow waited for a SYN retransmission.
const SYN_RETRY: Duration = Duration::from_millis(900);

/// How connection `i` behaves; two of the four kinds complete a handshake.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Handshake, close frame, read the reply, FIN.
    CleanClose,
    /// Handshake, then an RST.
    ResetAfterHandshake,
    /// Connect and FIN without a byte.
    Silent,
    /// Half a request head, then an RST.
    ResetMidRequest,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 4 {
            0 => Kind::CleanClose,
            1 => Kind::ResetAfterHandshake,
            2 => Kind::Silent,
            _ => Kind::ResetMidRequest,
        }
    }
}

/// Opens and drops connections `first..first + count` (those whose index
/// modulo `WORKERS` is this worker's) from `source`, `BATCH` at a time.
/// Returns how many connects waited for a SYN retransmission.
fn churn(addr: SocketAddr, source: Ipv4Addr, indices: Vec<usize>) -> usize {
    let mut retried = 0;
    for batch in indices.chunks(BATCH) {
        let mut open: Vec<(Kind, RawClient)> = Vec::with_capacity(BATCH);
        for &i in batch {
            let begin = Instant::now();
            let stream = connect_from(source, addr)
                .unwrap_or_else(|e| panic!("connection {i} from {source}: {e}"));
            retried += usize::from(begin.elapsed() >= SYN_RETRY);
            open.push((Kind::of(i), RawClient::from_stream(stream)));
        }
        for (kind, client) in &mut open {
            match kind {
                Kind::CleanClose | Kind::ResetAfterHandshake => client.handshake(ECHO_PATH),
                Kind::ResetMidRequest => {
                    let request = upgrade_request(ECHO_PATH, "127.0.0.1", RFC_KEY);
                    client.send(&request.as_bytes()[..40]);
                }
                Kind::Silent => {}
            }
        }
        for (kind, mut client) in open {
            match kind {
                Kind::CleanClose => {
                    client.send_close(code::NORMAL, b"");
                    let reply = client.read_server_frame();
                    assert_eq!(reply.close_code(), Some(code::NORMAL), "close reply");
                    drop(client);
                }
                Kind::ResetAfterHandshake | Kind::ResetMidRequest => reset(client.stream),
                Kind::Silent => drop(client),
            }
        }
    }
    retried
}

/// Runs connections `range` over all workers; returns the SYN retries seen.
fn run_churn(addr: SocketAddr, range: std::ops::Range<usize>) -> usize {
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let indices: Vec<usize> = range.clone().filter(|i| i % WORKERS == w).collect();
            let source = Ipv4Addr::new(127, 0, 0, 2 + w as u8);
            std::thread::spawn(move || churn(addr, source, indices))
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("churn worker failed"))
        .sum()
}

#[test]
fn fifty_thousand_connections_leave_no_trace() {
    let _alone = crate::alone();
    let dir = TempDir::new("churn");
    let mut daemon = Daemon::start(&dir.write("wshub.toml", &config_with("")), &[]);
    let addr = daemon.listening_address();
    // The metrics request's own connection is the one held at rest.
    let baseline_connections = 1;
    let settle = Duration::from_secs(10);

    run_churn(addr, 0..WARM_UP);
    let held = wait_for_metric(addr, "wshub_connections", baseline_connections, settle);
    assert_eq!(held, baseline_connections, "after the warm-up");
    let accepted_before = metric(addr, "wshub_handshakes_accepted_total");
    let rss_baseline = daemon.rss_kib();

    let start = Instant::now();
    let retried = run_churn(addr, WARM_UP..WARM_UP + CONNECTIONS);
    let churn_time = start.elapsed();
    let settle_start = Instant::now();
    let held = wait_for_metric(addr, "wshub_connections", baseline_connections, settle);
    let settled_in = settle_start.elapsed();
    let accepted = metric(addr, "wshub_handshakes_accepted_total") - accepted_before;
    daemon.assert_running();
    let rss_after = daemon.rss_kib();
    let growth = rss_after.saturating_sub(rss_baseline);
    eprintln!(
        "{CONNECTIONS} connections in {churn_time:?} ({:.0}/s, {retried} SYN retransmissions), \
         {accepted} handshakes; wshub_connections back to {held} in {settled_in:?}; \
         VmRSS {rss_baseline} KiB after warm-up, {rss_after} KiB after: +{growth} KiB; \
         {} fds open",
        CONNECTIONS as f64 / churn_time.as_secs_f64(),
        daemon.open_fds()
    );

    assert_eq!(held, baseline_connections, "connections still held");
    assert_eq!(accepted, CONNECTIONS as u64 / 2, "handshakes accepted");
    assert!(
        growth < MAX_GROWTH_KIB,
        "VmRSS grew by {growth} KiB over the post-warm-up baseline"
    );
    assert!(churn_time < TEST_BOUND, "churn took {churn_time:?}");
}
