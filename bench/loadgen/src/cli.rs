//! Command-line parsing: `loadgen <scenario> --option value …`.
//!
//! Hand-written: three subcommands with a dozen numeric options do not
//! justify a parser dependency. Options take `--name value` or
//! `--name=value`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::error::{Fail, Result};
use crate::target::{self, Target};

pub const USAGE: &str = "\
Usage:
  loadgen echo      --url ws[s]://127.0.0.1:PORT/echo [--conns 100] [--depth 16]
                    [--size 64] [--seconds 10] [--warmup 1]
  loadgen broadcast --url ws://127.0.0.1:PORT/live/CHANNEL [--subscribers 1000]
                    [--messages 1000] [--window 1] [--size 64]
                    [--publisher http|ws] [--publish-url http://127.0.0.1:PORT/publish/CHANNEL]
                    [--stall 10] [--deflate] [--payload pattern|json]
  loadgen idle      --url ws://127.0.0.1:PORT/live/CHANNEL --conns N --server-pid PID
                    [--settle 2] [--size 16] [--publish-url URL] [--no-publish]
                    [--deflate]

--deflate offers permessage-deflate and fails unless the server accepts it
(route setting compression = \"on\"); compressed messages are inflated and
checked like plain ones. --payload json fills broadcast messages with
compressible JSON-like text instead of the default byte pattern.

Options for every scenario:
  --ca FILE               PEM certificate to trust for a wss:// --url (e.g. the
                          benchmark's self-signed one); wss:// needs it. The
                          publisher stays plain HTTP: give --publish-url then
  --server-pid PID        also report the server's CPU time (and, for idle, its RSS)
  --timeout SECONDS       give up (exit 1) after this long in all (default 120)
  --conns-per-source N    client sockets per source address 127.0.0.2, .3, ... (default 5000)
  --source-base IP        first client source address (default 127.0.0.2); a fresh range
                          per run avoids ports still in TIME_WAIT from the last run
  --dialing N             handshakes in flight while connecting (default 100; keep it
                          below the server's listen backlog, 128 for Rust servers)

Only loopback targets (127.0.0.0/8, ::1, localhost) are accepted.
Sizes are payload bytes; times are seconds (fractions allowed).
Output: a human summary, then one JSON object on the last line.
Exit status: 0 ok, 1 run failure or failed check, 2 usage error.";

/// Settings shared by all scenarios.
#[derive(Debug, PartialEq)]
pub struct Common {
    pub url: Target,
    pub server_pid: Option<String>,
    pub timeout: Duration,
    pub per_source: usize,
    pub source_base: Ipv4Addr,
    pub max_dialing: usize,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherKind {
    Http,
    Ws,
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
    /// Fill messages with JSON-like text rather than the byte pattern.
    pub json: bool,
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
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Echo(EchoOpts),
    Broadcast(BroadcastOpts),
    Idle(IdleOpts),
}

/// Payload limits: messages carry an 8- or 16-byte header, and one frame
/// must fit the read buffers comfortably.
const MAX_SIZE: usize = 1 << 20;

/// Option values as given, before each scenario picks what it accepts.
struct Raw {
    pairs: Vec<(String, Option<String>)>,
}

impl Raw {
    fn take(&mut self, name: &str) -> Option<Option<String>> {
        let i = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.remove(i).1)
    }

    fn value(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(Fail::usage(format!("--{name} needs a value"))),
        }
    }

    fn flag(&mut self, name: &str) -> Result<bool> {
        match self.take(name) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(_)) => Err(Fail::usage(format!("--{name} takes no value"))),
        }
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T> {
        match self.value(name)? {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Fail::usage(format!("--{name}: {v:?} is not a valid number"))),
        }
    }

    fn count(&mut self, name: &str, default: usize, max: usize) -> Result<usize> {
        let n = self.number(name, default)?;
        if n == 0 || n > max {
            return Err(Fail::usage(format!("--{name} must be between 1 and {max}")));
        }
        Ok(n)
    }

    fn seconds(&mut self, name: &str, default: f64) -> Result<Duration> {
        let s: f64 = self.number(name, default)?;
        Duration::try_from_secs_f64(s)
            .map_err(|_| Fail::usage(format!("--{name} must be a non-negative number of seconds")))
    }

    fn size(&mut self, default: usize, min: usize) -> Result<usize> {
        let n = self.number("size", default)?;
        if !(min..=MAX_SIZE).contains(&n) {
            return Err(Fail::usage(format!(
                "--size must be between {min} and {MAX_SIZE} bytes (messages carry a \
                 {min}-byte header)"
            )));
        }
        Ok(n)
    }

    fn common(&mut self) -> Result<Common> {
        let url = self
            .value("url")?
            .ok_or_else(|| Fail::usage("--url is required"))?;
        let server_pid = self.value("server-pid")?;
        if let Some(pid) = &server_pid
            && (pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Fail::usage(format!(
                "--server-pid {pid:?} is not a process id"
            )));
        }
        let timeout = self.seconds("timeout", 120.0)?;
        if timeout.is_zero() {
            return Err(Fail::usage("--timeout must be positive"));
        }
        let mut url = target::parse_ws(&url)?;
        match (url.wss, self.value("ca")?) {
            (true, Some(ca)) => {
                url.tls = Some(target::TlsClient::load(Path::new(&ca), &url.host)?);
            }
            (true, None) => {
                return Err(Fail::usage(
                    "a wss:// --url needs --ca FILE: the PEM certificate to trust",
                ));
            }
            (false, Some(_)) => return Err(Fail::usage("--ca only applies to a wss:// --url")),
            (false, None) => {}
        }
        Ok(Common {
            url,
            server_pid,
            timeout,
            per_source: self.count("conns-per-source", 5000, 28_000)?,
            source_base: self.source_base()?,
            max_dialing: self.count("dialing", crate::conn::DEFAULT_DIALING, 100_000)?,
        })
    }

    fn source_base(&mut self) -> Result<Ipv4Addr> {
        let Some(text) = self.value("source-base")? else {
            return Ok(Ipv4Addr::new(127, 0, 0, 2));
        };
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_loopback() => Ok(ip),
            _ => Err(Fail::usage(format!(
                "--source-base {text:?} must be an address in 127.0.0.0/8"
            ))),
        }
    }

    fn finish(self) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(Fail::usage(format!(
                "unknown option --{name} for this scenario"
            ))),
        }
    }
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command> {
    let mut args = args.into_iter();
    let scenario = match args.next() {
        None => return Err(Fail::usage("name a scenario: echo, broadcast or idle")),
        Some(s) if s == "-h" || s == "--help" || s == "help" => return Ok(Command::Help),
        Some(s) => s,
    };
    let mut pairs = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let Some(name) = arg.strip_prefix("--") else {
            return Err(Fail::usage(format!("unexpected argument {arg:?}")));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => {
                let value = args.next_if(|next| !next.starts_with("--"));
                (name.to_owned(), value)
            }
        };
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(Fail::usage(format!("--{name} given twice")));
        }
        pairs.push((name, value));
    }
    let mut raw = Raw { pairs };
    let command = match scenario.as_str() {
        "echo" => {
            let common = raw.common()?;
            let opts = EchoOpts {
                conns: raw.count("conns", 100, 1_000_000)?,
                depth: raw.count("depth", 16, 65_536)?,
                size: raw.size(64, 8)?,
                seconds: raw.seconds("seconds", 10.0)?,
                warmup: raw.seconds("warmup", 1.0)?,
                common,
            };
            if opts.seconds.is_zero() {
                return Err(Fail::usage("--seconds must be positive"));
            }
            if opts.seconds + opts.warmup >= opts.common.timeout {
                return Err(Fail::usage(
                    "--timeout must be longer than --warmup plus --seconds",
                ));
            }
            Command::Echo(opts)
        }
        "broadcast" => {
            let common = raw.common()?;
            let publisher = match raw.value("publisher")?.as_deref() {
                None | Some("http") => PublisherKind::Http,
                Some("ws") => PublisherKind::Ws,
                Some(other) => {
                    return Err(Fail::usage(format!(
                        "--publisher {other:?}: expected http or ws"
                    )));
                }
            };
            let publish_url = match raw.value("publish-url")? {
                Some(url) => target::parse_http(&url)?,
                None if common.url.wss && publisher == PublisherKind::Http => {
                    return Err(Fail::usage(
                        "with a wss:// --url, the HTTP publisher needs --publish-url \
                         (a plain http:// listener of the same server)",
                    ));
                }
                None => target::publish_url_for(&common.url),
            };
            // Each message costs 4 bytes of bookkeeping for the whole run.
            let messages = raw.count("messages", 1000, 100_000_000)? as u64;
            Command::Broadcast(BroadcastOpts {
                subscribers: raw.count("subscribers", 1000, 1_000_000)?,
                messages,
                window: raw.count("window", 1, 65_536)?,
                size: raw.size(64, 16)?,
                publisher,
                publish_url,
                stall: raw.seconds("stall", 10.0)?,
                deflate: raw.flag("deflate")?,
                json: match raw.value("payload")?.as_deref() {
                    None | Some("pattern") => false,
                    Some("json") => true,
                    Some(other) => {
                        return Err(Fail::usage(format!(
                            "--payload {other:?}: expected pattern or json"
                        )));
                    }
                },
                common,
            })
        }
        "idle" => {
            let common = raw.common()?;
            if common.server_pid.is_none() {
                return Err(Fail::usage(
                    "idle needs --server-pid to read the server's RSS",
                ));
            }
            let publish_url = match (raw.flag("no-publish")?, raw.value("publish-url")?) {
                (true, Some(_)) => {
                    return Err(Fail::usage("give either --no-publish or --publish-url"));
                }
                (true, None) => None,
                (false, Some(url)) => Some(target::parse_http(&url)?),
                (false, None) if common.url.wss => {
                    return Err(Fail::usage(
                        "with a wss:// --url, give --publish-url (a plain http:// listener) \
                         or --no-publish",
                    ));
                }
                (false, None) => Some(target::publish_url_for(&common.url)),
            };
            Command::Idle(IdleOpts {
                conns: raw.count("conns", 1000, 1_000_000)?,
                settle: raw.seconds("settle", 2.0)?,
                size: raw.size(16, 16)?,
                publish_url,
                deflate: raw.flag("deflate")?,
                common,
            })
        }
        other => {
            return Err(Fail::usage(format!(
                "unknown scenario {other:?}: expected echo, broadcast or idle"
            )));
        }
    };
    raw.finish()?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Command> {
        parse(args.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn echo_defaults_and_overrides() {
        let Command::Echo(o) =
            run("echo --url ws://127.0.0.1:9/echo --depth=4 --seconds 0.5").unwrap()
        else {
            panic!("not echo");
        };
        assert_eq!(o.conns, 100);
        assert_eq!(o.depth, 4);
        assert_eq!(o.size, 64);
        assert_eq!(o.seconds, Duration::from_millis(500));
        assert_eq!(o.common.timeout, Duration::from_secs(120));
        assert_eq!(o.common.per_source, 5000);
    }

    #[test]
    fn broadcast_derives_publish_url() {
        let Command::Broadcast(o) =
            run("broadcast --url ws://127.0.0.1:9/live/bench --publisher ws --window 16").unwrap()
        else {
            panic!("not broadcast");
        };
        assert_eq!(o.publisher, PublisherKind::Ws);
        assert_eq!(o.publish_url.path, "/publish/bench");
        assert_eq!(o.window, 16);
        assert!(!o.deflate && !o.json);
        let Command::Broadcast(o) =
            run("broadcast --url ws://127.0.0.1:9/live/b --deflate --payload json").unwrap()
        else {
            panic!("not broadcast");
        };
        assert!(o.deflate && o.json);
        assert!(run("broadcast --url ws://127.0.0.1:9/live/b --payload xml").is_err());
    }

    #[test]
    fn idle_needs_pid_and_takes_flags() {
        assert_eq!(
            run("idle --url ws://127.0.0.1:9/live/i").unwrap_err().code,
            2
        );
        let Command::Idle(o) =
            run("idle --url ws://127.0.0.1:9/echo --server-pid 42 --no-publish").unwrap()
        else {
            panic!("not idle");
        };
        assert_eq!(o.publish_url, None);
        assert_eq!(o.common.server_pid.as_deref(), Some("42"));
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
            "broadcast --url ws://127.0.0.1:1/live/a --publisher smoke",
            "broadcast --url ws://127.0.0.1:1/live/a --publish-url http://1.2.3.4/publish/a",
            "idle --url ws://127.0.0.1:1/live/a --server-pid x1",
            "echo --url ws://127.0.0.1:1/echo --source-base 10.0.0.2",
        ] {
            let err = run(bad).unwrap_err();
            assert_eq!(err.code, 2, "{bad}: {}", err.message);
        }
        assert_eq!(run("--help").unwrap(), Command::Help);
    }
}
