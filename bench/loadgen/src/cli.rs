//! Command-line parsing: `loadgen <scenario> --option value …`, on clap.
//!
//! Owns: the options of each scenario, their defaults and ranges, and the
//! checks that involve several options (a wss:// URL needs `--ca`, …).
//! Must never: accept a target off this machine (see [`crate::target`]).
//! Usage errors exit with status 2, like clap's own.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::conn::DialOptions;
use crate::error::{Fail, Result};
use crate::target::{self, Target, TlsClient};

/// Default for handshakes in flight at once while dialing. Rust's standard
/// library (and so mio and tokio) listens with a backlog of 128, so more
/// than that in flight can overflow the accept queue of a busy server.
const DEFAULT_DIALING: usize = 100;

/// Payload limits: messages carry an 8- or 16-byte header, and one frame
/// must fit the read buffers comfortably.
const MAX_SIZE: usize = 1 << 20;

/// Broadcasts `idle` sends after its fan-out before reading RSS again, by
/// default and at most (each waits for every subscriber).
const DEFAULT_AFTER_BROADCASTS: u32 = 10;
const MAX_AFTER_BROADCASTS: i64 = 1000;

const AFTER_HELP: &str = "\
--deflate offers permessage-deflate and fails unless the server accepts it
(route setting compression = \"on\"); compressed messages are inflated and
checked like plain ones.

Only loopback targets (127.0.0.0/8, ::1, localhost) are accepted.
Sizes are payload bytes; times are seconds (fractions allowed).
Output: a human summary, then one JSON object on the last line.
Exit status: 0 ok, 1 run failure or failed check, 2 usage error.";

/// Load generator of wshub's benchmarks: echo, broadcast and idle-memory
/// scenarios over loopback.
#[derive(Debug, Parser)]
#[command(name = "loadgen", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Request/response throughput and per-message latency
    Echo(EchoArgs),
    /// Fan-out to many subscribers, with loss, duplicate and order checks
    Broadcast(BroadcastArgs),
    /// Server memory per idle connection, then one fan-out
    Idle(IdleArgs),
    /// Memory per history message, then many clients recovering at once
    Recover(RecoverArgs),
    /// Idle subscribers, an echo probe and a publisher through a handover
    /// started by SIGUSR2 to --server-pid: the longest pause each saw
    Handover(HandoverArgs),
}

/// Options for every scenario.
#[derive(Debug, Args)]
struct CommonArgs {
    /// ws:// or wss:// URL of the server's route. broadcast takes it
    /// several times (servers of one cluster): subscribers are spread evenly
    /// over them, and the HTTP publisher posts to the first
    #[arg(long, value_name = "URL", required = true)]
    url: Vec<String>,

    /// PEM certificate to trust for a wss:// --url (e.g. the benchmark's
    /// self-signed one); wss:// needs it. The publisher stays plain HTTP:
    /// give --publish-url then
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// Also report the server's CPU time (and, for idle, its RSS). Give it
    /// once per process of a server that runs as several (their CPU is
    /// summed); idle takes one
    #[arg(long, value_name = "PID", value_parser = pid)]
    server_pid: Vec<String>,

    /// A process the server depends on (e.g. its Redis): its CPU time over
    /// the same stretch is reported beside the server's
    #[arg(long, value_name = "PID", value_parser = pid)]
    bus_pid: Option<String>,

    /// Give up (exit 1) after this long in all
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = positive_seconds)]
    timeout: Duration,

    /// Client sockets per source address 127.0.0.2, .3, ...
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = count::<28_000>)]
    conns_per_source: usize,

    /// First client source address; a fresh range per run avoids ports
    /// still in TIME_WAIT from the last run
    #[arg(long, value_name = "IP", default_value = "127.0.0.2", value_parser = loopback_v4)]
    source_base: Ipv4Addr,

    /// Handshakes in flight while connecting (keep it below the server's
    /// listen backlog, 128 for Rust servers)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DIALING, value_parser = count::<100_000>)]
    dialing: usize,
}

#[derive(Debug, Args)]
struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections
    #[arg(long, default_value_t = 100, value_parser = count::<1_000_000>)]
    conns: usize,
    /// Messages in flight per connection
    #[arg(long, default_value_t = 16, value_parser = count::<65_536>)]
    depth: usize,
    /// Payload bytes (at least 8)
    #[arg(long, default_value_t = 64, value_parser = size::<8>)]
    size: usize,
    /// Measured seconds
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    seconds: Duration,
    /// Seconds before measuring
    #[arg(long, default_value = "1", value_parser = seconds)]
    warmup: Duration,
}

#[derive(Debug, Args)]
struct BroadcastArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Subscribers on the channel
    #[arg(long, default_value_t = 1000, value_parser = count::<1_000_000>)]
    subscribers: usize,
    /// Measured messages (each costs 4 bytes of bookkeeping)
    #[arg(long, default_value_t = 1000, value_parser = count::<100_000_000>)]
    messages: usize,
    /// Messages not yet received by every subscriber, at most
    #[arg(long, default_value_t = 1, value_parser = count::<65_536>)]
    window: usize,
    /// Payload bytes (at least 16)
    #[arg(long, default_value_t = 64, value_parser = size::<16>)]
    size: usize,
    /// Publish through HTTP or as one more WebSocket client
    #[arg(long, value_enum, default_value_t = PublisherKind::Http)]
    publisher: PublisherKind,
    /// http:// URL to POST to [default: /publish/CHANNEL on the --url server]
    #[arg(long, value_name = "URL")]
    publish_url: Option<String>,
    /// Fail when nothing arrives for this long
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    stall: Duration,
    /// Offer permessage-deflate and require it
    #[arg(long)]
    deflate: bool,
    /// Byte pattern, compressible JSON-like bytes, or text (text frames or
    /// events, all UTF-8; --size at least 32)
    #[arg(long, value_enum, default_value_t = Payload::Pattern)]
    payload: Payload,
    /// Subscribe to the channel's event stream (Server-Sent Events: GET
    /// with Accept: text/event-stream and ?sse=1) instead of a WebSocket;
    /// --url stays the route's ws:// URL
    #[arg(long, conflicts_with_all = ["deflate", "meta"])]
    sse: bool,
    /// Subscribe with meta=1: messages arrive with channel and position
    #[arg(long)]
    meta: bool,
    /// ws:// URL of the server's echo route: one more client there does
    /// back-to-back round trips while the messages are published, and the
    /// report gives their latency (how long the fan-out stalls the server)
    #[arg(long, value_name = "URL")]
    echo_url: Option<String>,
    /// Payload bytes of the --echo-url round trips (at least 8)
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = size::<8>)]
    echo_size: usize,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Idle connections
    #[arg(long, default_value_t = 1000, value_parser = count::<1_000_000>)]
    conns: usize,
    /// Seconds to wait before reading the server's memory
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = seconds)]
    settle: Duration,
    /// Payload bytes of the fan-out message (at least 16)
    #[arg(long, default_value_t = 16, value_parser = size::<16>)]
    size: usize,
    /// http:// URL to POST the fan-out to [default: /publish/CHANNEL on the
    /// --url server]
    #[arg(long, value_name = "URL", conflicts_with = "no_publish")]
    publish_url: Option<String>,
    /// Skip the fan-out
    #[arg(long)]
    no_publish: bool,
    /// Offer permessage-deflate and require it
    #[arg(long)]
    deflate: bool,
    /// Open event streams (Server-Sent Events) instead of WebSockets; the
    /// messages arrive as binary events (base64)
    #[arg(long, conflicts_with = "deflate")]
    sse: bool,
    /// Messages broadcast to all after the fan-out, one at a time, before
    /// the server's RSS is read again once steady (0: skip; skipped with
    /// --no-publish too)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_AFTER_BROADCASTS,
          value_parser = clap::value_parser!(u32).range(0..=MAX_AFTER_BROADCASTS))]
    after_broadcasts: u32,
    /// Payload bytes of those messages (at least 16)
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = size::<16>)]
    after_size: usize,
}

#[derive(Debug, Args)]
struct RecoverArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages published into the channel's history first (its memory is
    /// measured); the route's history_size must hold them
    #[arg(long, default_value_t = 100_000, value_parser = count::<10_000_000>)]
    history: usize,
    /// Clients reconnecting at once with a position
    #[arg(long, default_value_t = 10_000, value_parser = count::<1_000_000>)]
    clients: usize,
    /// Messages each client missed and recovers (at most --history)
    #[arg(long, default_value_t = 100, value_parser = count::<1_000_000>)]
    missed: usize,
    /// Payload bytes per message (at least 16)
    #[arg(long, default_value_t = 64, value_parser = size::<16>)]
    size: usize,
}

#[derive(Debug, Args)]
struct HandoverArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Idle subscribers on the --url channel
    #[arg(long, default_value_t = 1000, value_parser = count::<1_000_000>)]
    conns: usize,
    /// ws:// URL of the server's echo route, for the echo probe
    #[arg(long, value_name = "URL", required = true)]
    echo_url: String,
    /// http:// URL to POST to [default: /publish/CHANNEL on the --url server]
    #[arg(long, value_name = "URL")]
    publish_url: Option<String>,
    /// Seconds between two messages (each waits for the last one's answer)
    #[arg(long, value_name = "SECONDS", default_value = "0.01", value_parser = positive_seconds)]
    every: Duration,
    /// Seconds of publishing after the signal
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = positive_seconds)]
    after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PublisherKind {
    Http,
    Ws,
}

/// What a broadcast message carries after its head (see
/// [`crate::broadcast`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Payload {
    /// A byte pattern, sent binary.
    Pattern,
    /// JSON-like text after a binary head, sent binary.
    Json,
    /// Printable text with a text head, sent as text.
    Text,
}

/// The smallest `--payload text` message: its head is text (32 hex digits).
pub const MIN_TEXT_SIZE: usize = 32;

/// Settings shared by all scenarios.
#[derive(Debug, PartialEq)]
pub struct Common {
    pub dial: DialOptions,
    /// The server's processes (none: its CPU is not measured).
    pub server_pids: Vec<String>,
    pub bus_pid: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, PartialEq)]
pub struct EchoOpts {
    pub common: Common,
    pub conns: usize,
    pub depth: usize,
    pub size: usize,
    pub seconds: Duration,
    pub warmup: Duration,
}

#[derive(Debug, PartialEq)]
pub struct BroadcastOpts {
    pub common: Common,
    pub subscribers: usize,
    pub messages: u64,
    pub window: usize,
    pub size: usize,
    pub publisher: PublisherKind,
    pub publish_url: Target,
    pub stall: Duration,
    pub deflate: bool,
    /// What the messages carry.
    pub payload: Payload,
    /// Subscribers read event streams (Server-Sent Events).
    pub sse: bool,
    /// Subscribers ask for the metadata format (`meta=1`).
    pub meta: bool,
    /// The echo route a probe client times round trips on during the run.
    pub echo_url: Option<Target>,
    pub echo_size: usize,
}

#[derive(Debug, PartialEq)]
pub struct IdleOpts {
    pub common: Common,
    pub conns: usize,
    pub settle: Duration,
    pub size: usize,
    /// `None` with `--no-publish`.
    pub publish_url: Option<Target>,
    pub deflate: bool,
    /// Connections are event streams (Server-Sent Events).
    pub sse: bool,
    /// Messages broadcast after the fan-out before RSS is read again.
    pub after_broadcasts: u32,
    pub after_size: usize,
}

#[derive(Debug, PartialEq)]
pub struct RecoverOpts {
    pub common: Common,
    pub history: usize,
    pub clients: usize,
    pub missed: usize,
    pub size: usize,
    pub publish_url: Target,
}

#[derive(Debug, PartialEq)]
pub struct HandoverOpts {
    pub common: Common,
    pub conns: usize,
    pub echo_url: Target,
    pub publish_url: Target,
    pub every: Duration,
    pub after: Duration,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Echo(EchoOpts),
    Broadcast(BroadcastOpts),
    Idle(IdleOpts),
    Recover(RecoverOpts),
    Handover(HandoverOpts),
}

/// What parsing the command line came to: a scenario to run, or clap's
/// answer (help, or a usage error) to print.
pub enum Parsed {
    Run(Box<Command>),
    Answer(clap::Error),
}

/// Parses the whole command line, program name first.
pub fn parse<I, T>(args: I) -> Result<Parsed>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(answer) => return Ok(Parsed::Answer(answer)),
    };
    Ok(Parsed::Run(Box::new(match cli.scenario {
        Scenario::Echo(args) => Command::Echo(echo(args)?),
        Scenario::Broadcast(args) => Command::Broadcast(broadcast(args)?),
        Scenario::Idle(args) => Command::Idle(idle(args)?),
        Scenario::Recover(args) => Command::Recover(recover(args)?),
        Scenario::Handover(args) => Command::Handover(handover(args)?),
    })))
}

fn common(args: CommonArgs) -> Result<Common> {
    let mut urls = Vec::with_capacity(args.url.len());
    for text in &args.url {
        let mut url = target::parse_ws(text)?;
        match (url.wss, &args.ca) {
            (true, Some(ca)) => url.tls = Some(TlsClient::load(ca, &url.server_name)?),
            (true, None) => {
                return Err(Fail::usage(
                    "a wss:// --url needs --ca FILE: the PEM certificate to trust",
                ));
            }
            (false, _) => {}
        }
        urls.push(url);
    }
    if args.ca.is_some() && !urls.iter().any(|u| u.wss) {
        return Err(Fail::usage("--ca only applies to a wss:// --url"));
    }
    let mut urls = urls.into_iter();
    let url = urls
        .next()
        .ok_or_else(|| Fail::usage("--url is required"))?;
    Ok(Common {
        dial: DialOptions {
            url,
            more_urls: urls.collect(),
            per_source: args.conns_per_source,
            source_base: args.source_base,
            max_dialing: args.dialing,
        },
        server_pids: args.server_pid,
        bus_pid: args.bus_pid,
        timeout: args.timeout,
    })
}

/// echo and idle talk to one server.
fn one_url(common: &Common, scenario: &str) -> Result<()> {
    if common.dial.more_urls.is_empty() {
        Ok(())
    } else {
        Err(Fail::usage(format!(
            "{scenario} takes one --url (only broadcast spreads over several)"
        )))
    }
}

fn echo(args: EchoArgs) -> Result<EchoOpts> {
    let common = common(args.common)?;
    one_url(&common, "echo")?;
    let opts = EchoOpts {
        common,
        conns: args.conns,
        depth: args.depth,
        size: args.size,
        seconds: args.seconds,
        warmup: args.warmup,
    };
    if opts.seconds + opts.warmup >= opts.common.timeout {
        return Err(Fail::usage(
            "--timeout must be longer than --warmup plus --seconds",
        ));
    }
    Ok(opts)
}

fn broadcast(args: BroadcastArgs) -> Result<BroadcastOpts> {
    let common = common(args.common)?;
    let publish_url = match args.publish_url {
        Some(url) => target::parse_http(&url)?,
        None if common.dial.url.wss && args.publisher == PublisherKind::Http => {
            return Err(Fail::usage(
                "with a wss:// --url, the HTTP publisher needs --publish-url \
                 (a plain http:// listener of the same server)",
            ));
        }
        None => target::publish_url_for(&common.dial.url),
    };
    if args.payload == Payload::Text && args.meta {
        return Err(Fail::usage(
            "--meta takes binary payloads (text messages come without the metadata envelope)",
        ));
    }
    if args.payload == Payload::Text && args.size < MIN_TEXT_SIZE {
        return Err(Fail::usage(format!(
            "--payload text needs --size {MIN_TEXT_SIZE} or more (its head is text)"
        )));
    }
    let echo_url = match args.echo_url {
        Some(text) => {
            let url = target::parse_ws(&text)?;
            if url.wss {
                return Err(Fail::usage("--echo-url takes a ws:// URL"));
            }
            Some(url)
        }
        None => None,
    };
    Ok(BroadcastOpts {
        common,
        subscribers: args.subscribers,
        messages: args.messages as u64,
        window: args.window,
        size: args.size,
        publisher: args.publisher,
        publish_url,
        stall: args.stall,
        deflate: args.deflate,
        payload: args.payload,
        sse: args.sse,
        meta: args.meta,
        echo_url,
        echo_size: args.echo_size,
    })
}

fn idle(args: IdleArgs) -> Result<IdleOpts> {
    let common = common(args.common)?;
    one_url(&common, "idle")?;
    if common.server_pids.len() != 1 {
        return Err(Fail::usage(
            "idle needs one --server-pid to read the server's RSS",
        ));
    }
    let publish_url = match (args.no_publish, args.publish_url) {
        (true, _) => None,
        (false, Some(url)) => Some(target::parse_http(&url)?),
        (false, None) if common.dial.url.wss => {
            return Err(Fail::usage(
                "with a wss:// --url, give --publish-url (a plain http:// listener) \
                 or --no-publish",
            ));
        }
        (false, None) => Some(target::publish_url_for(&common.dial.url)),
    };
    Ok(IdleOpts {
        common,
        conns: args.conns,
        settle: args.settle,
        size: args.size,
        publish_url,
        deflate: args.deflate,
        sse: args.sse,
        after_broadcasts: args.after_broadcasts,
        after_size: args.after_size,
    })
}

fn recover(args: RecoverArgs) -> Result<RecoverOpts> {
    let common = common(args.common)?;
    one_url(&common, "recover")?;
    if common.server_pids.len() != 1 || common.dial.url.wss {
        return Err(Fail::usage(
            "recover needs a ws:// --url and one --server-pid to read the server's RSS",
        ));
    }
    if args.missed > args.history {
        return Err(Fail::usage("--missed cannot exceed --history"));
    }
    let publish_url = target::publish_url_for(&common.dial.url);
    Ok(RecoverOpts {
        common,
        history: args.history,
        clients: args.clients,
        missed: args.missed,
        size: args.size,
        publish_url,
    })
}

fn handover(args: HandoverArgs) -> Result<HandoverOpts> {
    let common = common(args.common)?;
    one_url(&common, "handover")?;
    if common.server_pids.len() != 1 || common.dial.url.wss {
        return Err(Fail::usage(
            "handover needs a ws:// --url and one --server-pid: the process to signal",
        ));
    }
    let echo_url = target::parse_ws(&args.echo_url)?;
    if echo_url.wss {
        return Err(Fail::usage("--echo-url takes a ws:// URL"));
    }
    let publish_url = match args.publish_url {
        Some(url) => target::parse_http(&url)?,
        None => target::publish_url_for(&common.dial.url),
    };
    if args.after >= common.timeout {
        return Err(Fail::usage("--timeout must be longer than --after"));
    }
    Ok(HandoverOpts {
        common,
        conns: args.conns,
        echo_url,
        publish_url,
        every: args.every,
        after: args.after,
    })
}

/// A count between 1 and `MAX`.
fn count<const MAX: usize>(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("expected a number between 1 and {MAX}")),
    }
}

/// A payload size; messages carry a `MIN`-byte header.
fn size<const MIN: usize>(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (MIN..=MAX_SIZE).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected between {MIN} and {MAX_SIZE} bytes (messages carry a {MIN}-byte header)"
        )),
    }
}

/// A non-negative number of seconds, fractions allowed.
fn seconds(text: &str) -> std::result::Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "expected a non-negative number of seconds".to_owned())
}

fn positive_seconds(text: &str) -> std::result::Result<Duration, String> {
    match seconds(text)? {
        d if d.is_zero() => Err("must be positive".to_owned()),
        d => Ok(d),
    }
}

fn pid(text: &str) -> std::result::Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_owned())
    } else {
        Err("not a process id".to_owned())
    }
}

fn loopback_v4(text: &str) -> std::result::Result<Ipv4Addr, String> {
    match text.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err("must be an address in 127.0.0.0/8".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Parsed> {
        parse(std::iter::once("loadgen").chain(args.split_whitespace()))
    }

    fn command(args: &str) -> Command {
        match run(args) {
            Ok(Parsed::Run(command)) => *command,
            Ok(Parsed::Answer(answer)) => panic!("{args}: {answer}"),
            Err(fail) => panic!("{args}: {fail}"),
        }
    }

    /// The exit status the command line ends with, if it does not run.
    fn exit_status(args: &str) -> Option<i32> {
        match run(args) {
            Ok(Parsed::Run(_)) => None,
            Ok(Parsed::Answer(answer)) => Some(answer.exit_code()),
            Err(fail) => Some(i32::from(fail.code)),
        }
    }

    #[test]
    fn echo_defaults_and_overrides() {
        let Command::Echo(o) = command("echo --url ws://127.0.0.1:9/echo --depth=4 --seconds 0.5")
        else {
            panic!("not echo");
        };
        assert_eq!(o.conns, 100);
        assert_eq!(o.depth, 4);
        assert_eq!(o.size, 64);
        assert_eq!(o.seconds, Duration::from_millis(500));
        assert_eq!(o.common.timeout, Duration::from_secs(120));
        assert_eq!(o.common.dial.per_source, 5000);
        assert_eq!(o.common.dial.max_dialing, DEFAULT_DIALING);
        assert_eq!(o.common.dial.source_base, Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn broadcast_derives_publish_url() {
        let Command::Broadcast(o) =
            command("broadcast --url ws://127.0.0.1:9/live/bench --publisher ws --window 16")
        else {
            panic!("not broadcast");
        };
        assert_eq!(o.publisher, PublisherKind::Ws);
        assert_eq!(o.publish_url.path, "/publish/bench");
        assert_eq!(o.window, 16);
        assert!(!o.deflate && !o.sse && o.payload == Payload::Pattern);
        let Command::Broadcast(o) =
            command("broadcast --url ws://127.0.0.1:9/live/b --deflate --payload json")
        else {
            panic!("not broadcast");
        };
        assert!(o.deflate && o.payload == Payload::Json);
        assert_eq!(
            exit_status("broadcast --url ws://127.0.0.1:9/live/b --payload xml"),
            Some(2)
        );
    }

    #[test]
    fn sse_subscribers_and_text_payloads() {
        let Command::Broadcast(o) =
            command("broadcast --url ws://127.0.0.1:9/live/b --sse --payload text --size 32")
        else {
            panic!("not broadcast");
        };
        assert!(o.sse && o.payload == Payload::Text);
        assert_eq!(o.publish_url.path, "/publish/b");
        let Command::Idle(o) = command("idle --url ws://127.0.0.1:9/live/i --server-pid 1 --sse")
        else {
            panic!("not idle");
        };
        assert!(o.sse);
        for bad in [
            "broadcast --url ws://127.0.0.1:9/live/b --sse --deflate",
            "broadcast --url ws://127.0.0.1:9/live/b --sse --meta",
            "broadcast --url ws://127.0.0.1:9/live/b --payload text --size 31",
            "broadcast --url ws://127.0.0.1:9/live/b --payload text --meta",
            "idle --url ws://127.0.0.1:9/live/i --server-pid 1 --sse --deflate",
        ] {
            assert_eq!(exit_status(bad), Some(2), "{bad}");
        }
    }

    #[test]
    fn broadcast_takes_an_echo_probe() {
        let Command::Broadcast(o) = command("broadcast --url ws://127.0.0.1:9/live/b") else {
            panic!("not broadcast");
        };
        assert_eq!(o.echo_url, None);
        let Command::Broadcast(o) = command(
            "broadcast --url ws://127.0.0.1:9/live/b --echo-url ws://127.0.0.1:9/echo \
             --echo-size 16",
        ) else {
            panic!("not broadcast");
        };
        let echo = o.echo_url.expect("--echo-url parsed");
        assert_eq!((echo.addr.port(), echo.path.as_str()), (9, "/echo"));
        assert_eq!(o.echo_size, 16);
        for bad in [
            "--echo-url wss://127.0.0.1:9/echo",
            "--echo-url ws://10.0.0.1:9/echo",
            "--echo-url ws://127.0.0.1:9/echo --echo-size 4",
        ] {
            let line = format!("broadcast --url ws://127.0.0.1:9/live/b {bad}");
            assert_eq!(exit_status(&line), Some(2), "{bad}");
        }
    }

    #[test]
    fn broadcast_spreads_over_several_urls() {
        let Command::Broadcast(o) = command(
            "broadcast --url ws://127.0.0.1:9/live/b --url ws://127.0.0.1:10/live/b \
             --server-pid 1 --server-pid 2 --bus-pid 3",
        ) else {
            panic!("not broadcast");
        };
        assert_eq!(o.common.dial.url.addr.port(), 9);
        assert_eq!(o.common.dial.more_urls.len(), 1);
        assert_eq!(o.common.dial.more_urls[0].addr.port(), 10);
        assert_eq!(o.publish_url.addr.port(), 9, "publishes to the first");
        assert_eq!(o.common.server_pids, ["1", "2"]);
        assert_eq!(o.common.bus_pid.as_deref(), Some("3"));
        for one_server in [
            "echo --url ws://127.0.0.1:9/echo --url ws://127.0.0.1:10/echo",
            "idle --url ws://127.0.0.1:9/live/i --url ws://127.0.0.1:10/live/i --server-pid 1",
            "idle --url ws://127.0.0.1:9/live/i --server-pid 1 --server-pid 2",
            "broadcast --url ws://127.0.0.1:9/live/b --url ws://10.0.0.1:10/live/b",
        ] {
            assert_eq!(exit_status(one_server), Some(2), "{one_server}");
        }
    }

    #[test]
    fn idle_needs_pid_and_takes_flags() {
        assert_eq!(exit_status("idle --url ws://127.0.0.1:9/live/i"), Some(2));
        let Command::Idle(o) =
            command("idle --url ws://127.0.0.1:9/echo --server-pid 42 --no-publish")
        else {
            panic!("not idle");
        };
        assert_eq!(o.publish_url, None);
        assert_eq!(o.common.server_pids, ["42"]);
    }

    #[test]
    fn idle_broadcasts_after_the_fan_out() {
        let Command::Idle(o) = command("idle --url ws://127.0.0.1:9/live/i --server-pid 1") else {
            panic!("not idle");
        };
        assert_eq!(o.after_broadcasts, DEFAULT_AFTER_BROADCASTS);
        assert_eq!(o.after_size, 64);
        let Command::Idle(o) = command(
            "idle --url ws://127.0.0.1:9/live/i --server-pid 1 --after-broadcasts 0 \
             --after-size 16",
        ) else {
            panic!("not idle");
        };
        assert_eq!((o.after_broadcasts, o.after_size), (0, 16));
        for bad in [
            "--after-broadcasts 1001",
            "--after-broadcasts -1",
            "--after-size 8",
        ] {
            let line = format!("idle --url ws://127.0.0.1:9/live/i --server-pid 1 {bad}");
            assert_eq!(exit_status(&line), Some(2), "{bad}");
        }
    }

    #[test]
    fn the_benchmark_script_command_lines_parse() {
        let tail = "--server-pid 1 --source-base 127.0.7.2 --timeout 120";
        for line in [
            "echo --url ws://127.0.0.1:1/echo --conns 100 --depth 16 --size 64 --seconds 10",
            "broadcast --url ws://127.0.0.1:1/live/bench --subscribers 10000 --messages 20000 \
             --window 16 --size 1024 --payload json --publisher http",
            "broadcast --url ws://127.0.0.1:1/deflate/bench --deflate --subscribers 10 \
             --messages 10 --window 16 --size 1024 --payload json --publisher http",
            "idle --url ws://127.0.0.1:1/live/idle --conns 10000 --deflate",
            "recover --url ws://127.0.0.1:1/hist/r --history 100000 --clients 10000 --missed 100",
            "broadcast --url ws://127.0.0.1:1/live/bench --meta --subscribers 10 --messages 10",
            "idle --url ws://127.0.0.1:1/live/idle --sse --conns 10000",
            "broadcast --url ws://127.0.0.1:1/live/bench --sse --subscribers 10000 --messages 60 \
             --window 1 --size 64 --payload text --publisher http",
        ] {
            command(&format!("{line} {tail}"));
        }
    }

    #[test]
    fn handover_signals_one_server_and_probes_its_echo_route() {
        let Command::Handover(o) = command(
            "handover --url ws://127.0.0.1:9/live/h --echo-url ws://127.0.0.1:9/echo \
             --server-pid 42 --conns 19000 --every 0.02",
        ) else {
            panic!("not handover");
        };
        assert_eq!(o.conns, 19000);
        assert_eq!(o.common.server_pids, ["42"]);
        assert_eq!(o.publish_url.path, "/publish/h");
        assert_eq!(o.echo_url.path, "/echo");
        assert_eq!(o.every, Duration::from_millis(20));
        assert_eq!(o.after, Duration::from_secs(3));
        for bad in [
            "handover --url ws://127.0.0.1:9/live/h --echo-url ws://127.0.0.1:9/echo",
            "handover --url ws://127.0.0.1:9/live/h --server-pid 1",
            "handover --url ws://127.0.0.1:9/live/h --echo-url wss://127.0.0.1:9/echo \
             --server-pid 1",
            "handover --url ws://127.0.0.1:9/live/h --echo-url ws://127.0.0.1:9/echo \
             --server-pid 1 --after 200",
        ] {
            assert_eq!(exit_status(bad), Some(2), "{bad}");
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            "",
            "nope --url ws://127.0.0.1:1/",
            "echo",
            "echo --url ws://10.1.2.3:1/echo",
            "echo --url ws://127.0.0.1:1/echo --bogus 1",
            "echo --url ws://127.0.0.1:1/echo --conns 0",
            "echo --url ws://127.0.0.1:1/echo --conns",
            "echo --url ws://127.0.0.1:1/echo --size 4",
            "echo --url ws://127.0.0.1:1/echo --conns 1 --conns 2",
            "echo --url ws://127.0.0.1:1/echo --seconds 200",
            "echo --url wss://127.0.0.1:1/echo",
            "echo --url ws://127.0.0.1:1/echo --ca ca.pem",
            "broadcast --url ws://127.0.0.1:1/live/a --publisher smoke",
            "broadcast --url ws://127.0.0.1:1/live/a --publish-url http://1.2.3.4/publish/a",
            "idle --url ws://127.0.0.1:1/live/a --server-pid x1",
            "idle --url ws://127.0.0.1:1/live/a --server-pid 1 --no-publish \
             --publish-url http://127.0.0.1:1/p",
            "echo --url ws://127.0.0.1:1/echo --source-base 10.0.0.2",
        ] {
            assert_eq!(exit_status(bad), Some(2), "{bad}");
        }
        assert_eq!(exit_status("--help"), Some(0));
        assert_eq!(exit_status("broadcast --help"), Some(0));
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
