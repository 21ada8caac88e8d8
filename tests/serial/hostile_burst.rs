//! A burst of connections, as after a restart when every client reconnects
//! at once: each must be accepted on its first SYN. A listen backlog too
//! short for the burst makes the kernel drop SYNs, and each dropped SYN
//! costs its client a one-second retransmission timeout (then 2 s, 4 s...).

use std::time::{Duration, Instant};

use crate::support::client::IO_TIMEOUT;
use crate::support::http::wait_for_metric;
use crate::support::load::{connect_from, ensure_nofile, percentile, source_address};
use crate::support::server::TestServer;

const CLIENTS: usize = 2_000;
/// Source addresses 127.0.0.2 ..= 127.0.0.9.
const SOURCE_ADDRESSES: usize = 8;
/// A connect this slow waited for a SYN retransmission (the first comes
/// after one second).
const SYN_RETRY: Duration = Duration::from_millis(900);

#[test]
fn a_burst_of_connections_is_accepted_without_syn_retransmissions() {
    let _alone = crate::alone();
    ensure_nofile(2 * CLIENTS as u64 + 256);
    let server = TestServer::start();
    let start = Instant::now();
    let mut times = Vec::with_capacity(CLIENTS);
    let streams: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let begin = Instant::now();
            let stream = connect_from(source_address(i, SOURCE_ADDRESSES), server.addr)
                .unwrap_or_else(|e| panic!("client {i}: connect failed: {e}"));
            times.push(begin.elapsed());
            stream
        })
        .collect();
    let elapsed = start.elapsed();
    let retried = times.iter().filter(|t| **t >= SYN_RETRY).count();
    let slowest = times.iter().max().copied().unwrap_or_default();
    let p50 = percentile(&mut times, 50);
    eprintln!(
        "{CLIENTS} back-to-back connects in {elapsed:?}: p50 {p50:?}, slowest {slowest:?}, \
         {retried} waited for a SYN retransmission"
    );
    // Every connection is held (plus the metrics request's own).
    let held = wait_for_metric(
        server.addr,
        "wshub_connections",
        CLIENTS as u64 + 1,
        IO_TIMEOUT,
    );
    assert_eq!(held, CLIENTS as u64 + 1);
    drop(streams);
    assert_eq!(
        retried, 0,
        "{retried} of {CLIENTS} connects had their SYN dropped (listen backlog overflow; \
         see `nstat -az TcpExtListenOverflows`), slowest {slowest:?}"
    );
}
