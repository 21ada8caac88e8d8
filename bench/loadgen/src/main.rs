//! `loadgen`: the load generator of wshub's benchmark suite.
//!
//! One thread, one edge-triggered `mio` poller, many client connections.
//! Buffers are sized and allocated before the measured phase so that
//! sending and receiving a message never allocates, and outgoing frames are
//! masked while being copied into the write buffer. The aim is for the
//! server, not loadgen, to run out of CPU first when each is pinned to its
//! own core; every report includes loadgen's own CPU share to show it.
//!
//! Scenarios (see `loadgen --help` and bench/README.md):
//! - `echo`: request/response throughput and per-message latency;
//! - `broadcast`: fan-out to many subscribers, with loss/duplicate/order
//!   checks, on one server or spread over several (a cluster's nodes),
//!   optionally timing echo round trips on the side (`--echo-url`);
//! - `idle`: server memory per idle connection, fresh and after a few
//!   broadcasts, and one fan-out;
//! - `recover`: memory per history message, then many clients recovering
//!   what they missed at once;
//! - `handover`: idle subscribers, an echo probe and a publisher through a
//!   handover to a new server process, started by the run's own SIGUSR2.
//!
//! Only loopback targets are accepted. Every loop is bounded by a global
//! deadline (`--timeout`).

mod broadcast;
mod cli;
mod conn;
mod echo;
mod error;
mod handover;
mod http;
mod idle;
mod meta;
mod probe;
mod recover;
mod report;
mod sse;
mod stats;
mod target;
mod wire;

use std::process::ExitCode;

use cli::{Command, Parsed};

fn main() -> ExitCode {
    let result = cli::parse(std::env::args_os()).and_then(|parsed| match parsed {
        Parsed::Answer(answer) => {
            // Help goes to stdout with status 0, usage errors to stderr with 2.
            let _ = answer.print();
            Err(error::Fail {
                code: u8::try_from(answer.exit_code()).unwrap_or(2),
                message: String::new(),
            })
        }
        Parsed::Run(command) => match *command {
            Command::Echo(opts) => echo::run(&opts),
            Command::Broadcast(opts) => broadcast::run(&opts),
            Command::Idle(opts) => idle::run(&opts),
            Command::Recover(opts) => recover::run(&opts),
            Command::Handover(opts) => handover::run(&opts),
        },
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) if fail.message.is_empty() => ExitCode::from(fail.code),
        Err(fail) => {
            eprintln!("loadgen: {fail}");
            if fail.code == 2 {
                eprintln!("run `loadgen --help` for usage");
            }
            ExitCode::from(fail.code)
        }
    }
}
