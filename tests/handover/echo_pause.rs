//! An echo client doing round trips back to back through a handover: the
//! longest pause it sees is the time no process served it. Printed, and
//! asserted generously (a debug build, a shared machine).

use std::time::{Duration, Instant};

use crate::common::{LIVE, start};
use crate::support::client::{ECHO_PATH, RawClient};
use crate::support::handover::{HANDOVER_TIMEOUT, STARTED, Successor, TAKEN, wait_for_nth};
use crate::support::tempdir::TempDir;

/// Idle subscribers handed over beside the echo client.
const IDLE: usize = 500;
/// Round trips after the handover's end, to be sure the client goes on.
const AFTER: usize = 50;
const PAUSE_BOUND: Duration = Duration::from_secs(3);

#[test]
fn an_echo_client_pauses_briefly_through_the_handover() {
    let _alone = crate::alone();
    let dir = TempDir::new("ho-echo");
    let (mut daemon, addr) = start(&dir, "");
    let idle: Vec<RawClient> = (0..IDLE)
        .map(|_| RawClient::open(addr, &format!("{LIVE}/idle")))
        .collect();
    let pid = daemon.pid();
    let probe = std::thread::spawn(move || {
        let mut client = RawClient::open(addr, ECHO_PATH);
        client.set_read_timeout(Duration::from_secs(30));
        let mut rtts = Vec::new();
        let mut seq = 0u64;
        let mut after = None;
        let started = Instant::now();
        loop {
            seq += 1;
            let text = format!("echo {seq}");
            let begin = Instant::now();
            client.send_text(&text);
            assert_eq!(client.expect_text(), text);
            rtts.push(begin.elapsed());
            // The main thread sends the signal once this has run a while.
            if after.is_none() && started.elapsed() > Duration::from_millis(300) {
                after = Some(rtts.len());
                rustix::process::kill_process(pid, rustix::process::Signal::USR2)
                    .expect("send SIGUSR2");
            }
            if after.is_some_and(|at| rtts.len() > at + AFTER)
                && started.elapsed() > Duration::from_secs(3)
            {
                return rtts;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "probe ran too long"
            );
        }
    });
    let mut rtts = probe.join().expect("echo probe");
    // The probe sent the signal itself, at a point between two round trips.
    let started = wait_for_nth(&daemon, STARTED, 1, HANDOVER_TIMEOUT);
    let taken = wait_for_nth(&daemon, TAKEN, 1, HANDOVER_TIMEOUT);
    let mut successor = Successor::from_line(&started);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    rtts.sort_unstable();
    let longest = *rtts.last().expect("round trips");
    let median = rtts[rtts.len() / 2];
    eprintln!(
        "echo through the handover ({taken:?}): {} round trips, median {median:?}, longest {longest:?}",
        rtts.len()
    );
    assert!(longest <= PAUSE_BOUND, "the echo client paused {longest:?}");
    drop(idle);
    successor.signal(rustix::process::Signal::TERM);
    assert_eq!(successor.wait_exit(Duration::from_secs(30)), Some(0));
}
