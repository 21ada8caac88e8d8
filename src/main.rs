//! The `wshub` binary: command-line parsing, logging setup, and handing a
//! loaded config to the server; plus the `publish` operator command
//! ([`cli_publish`]). When run as a service it also raises the open-file
//! limit, takes sockets passed by the service manager, and lets the server
//! handle signals and notify the manager (see [`wshub::daemon`]).
//!
//! Owns: argument handling and exit codes (0 ok, 1 runtime failure, 2 usage
//! or config-check failure).
//! Must never: panic on arguments or file contents, or start the server
//! with a config that failed validation.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use wshub::config::{Config, ConfigError};
use wshub::daemon::{listenfd, logging, notify::Notifier, rlimit};
use wshub::server::{Server, ServerError, load_listener_tls};

mod cli_publish;

const USAGE: &str = "\
Usage:
  wshub                        run with the built-in config
  wshub -c, --config FILE      run with the config in FILE
  wshub --check-config FILE    validate FILE and exit
  wshub publish [OPTIONS] CHANNEL [MESSAGE]
                               publish MESSAGE (default: all of stdin) to
                               CHANNEL through a running server
  wshub -h, --help             show this help
  wshub -V, --version          show the version

The built-in config listens on 127.0.0.1:8080 and serves a broadcast hub
at /live (publish from loopback with POST /publish/CHANNEL) and an echo
route at /echo. Log verbosity follows RUST_LOG (default: info) and the
config's log_level.

Signals: SIGTERM or SIGINT closes every connection (code 1001, or
shutdown_close_code) and exits once they are done or shutdown_timeout has
passed; a second one exits at once. SIGHUP reloads the config file.
SIGHUP also reads the certificate and key of every tls = true listener
again: new connections get the new pair, open ones keep theirs.
Under systemd, sockets passed by socket activation (LISTEN_FDS) are served
instead of [[listener]], and readiness, status and watchdog pings go to
NOTIFY_SOCKET.

Publish options:
  --url URL        the server, http://HOST[:PORT][/PREFIX]
                   (default: http://127.0.0.1:8080); a path in URL replaces
                   the default /publish prefix. https:// is not supported.
  --token TOKEN    send `Authorization: Bearer TOKEN` (default: the
                   WSHUB_PUBLISH_TOKEN environment variable, which is
                   preferable: arguments are visible to other local users)
  --text           send a text message (default; must be UTF-8)
  --binary         send a binary message
  --               end of options, for a MESSAGE starting with `-`

Without publish_token in the server's config, only clients on the server
host (loopback) may publish. On success the server's answer (JSON with the
number of recipients) is printed.

Exit status: 0 success, 1 runtime failure (publish: refused or
unreachable), 2 usage error or invalid config (--check-config).";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(Option<PathBuf>),
    Check(PathBuf),
    Publish(cli_publish::Options),
    Help,
    Version,
}

/// Parses arguments (without the program name). Takes `OsString`s because
/// `std::env::args` panics on non-UTF-8 input, and paths need not be UTF-8.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    // `publish` is a subcommand with its own options, so it must come first.
    if args.peek().is_some_and(|first| first == "publish") {
        args.next();
        return Ok(match cli_publish::parse_args(args)? {
            cli_publish::Parsed::Help => Command::Help,
            cli_publish::Parsed::Publish(options) => Command::Publish(options),
        });
    }
    let mut command: Option<Command> = None;
    while let Some(arg) = args.next() {
        let Some(flag) = arg.to_str() else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        // `--config=FILE` is accepted alongside `--config FILE` because unit
        // files and shells make either form natural.
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(OsString::from(value))),
            _ => (flag, None),
        };
        let next = match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" | "--check-config" => {
                let file = match inline.or_else(|| args.next()) {
                    Some(file) if !file.is_empty() => PathBuf::from(file),
                    _ => return Err(format!("{name} needs a FILE argument")),
                };
                if name == "--check-config" {
                    Command::Check(file)
                } else {
                    Command::Run(Some(file))
                }
            }
            _ => return Err(format!("unexpected argument {flag:?}")),
        };
        if command.is_some() {
            return Err("give at most one of --config / --check-config".to_owned());
        }
        command = Some(next);
    }
    Ok(command.unwrap_or(Command::Run(None)))
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("wshub: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("wshub {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Publish(options) => cli_publish::run(options),
        Command::Check(path) => match Config::load(&path) {
            Ok(config) => match check_certificates(&config) {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{}: {message}", path.display());
                    ExitCode::from(2)
                }
            },
            Err(err) => {
                eprintln!("{}", describe_config_error(&path, &err));
                ExitCode::from(2)
            }
        },
        Command::Run(path) => {
            logging::init();
            match run(path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    fatal(&message);
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Loads the config (or takes the built-in one), binds and runs the server.
fn run(path: Option<PathBuf>) -> Result<(), String> {
    let config = match &path {
        Some(path) => {
            let config = Config::load(path).map_err(|e| describe_config_error(path, &e))?;
            log::info!(
                "wshub {} using config {}",
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
            config
        }
        None => {
            log::info!(
                "wshub {} using the built-in config",
                env!("CARGO_PKG_VERSION")
            );
            Config::embedded()
        }
    };
    if config.log_level.is_some() {
        logging::set_level(config.log_level);
    }
    let max_connections = config.max_connections;
    match rlimit::raise_nofile() {
        Ok(limit) => {
            log::info!("{limit}");
            // Each connection is a descriptor; leave a few for the rest.
            let wanted = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_add(64);
            if !limit.allows(wanted) {
                log::warn!(
                    "the open file limit is below max_connections ({max_connections}): \
                     connections beyond it will be refused (raise LimitNOFILE= or ulimit -n)"
                );
            }
        }
        Err(message) => log::warn!("{message}"),
    }
    let inherited = listenfd::take()?;
    let mut server = if inherited.is_empty() {
        Server::bind(config).map_err(|e| format!("cannot start: {}", describe_start_error(&e)))?
    } else {
        log::info!(
            "serving on {} socket(s) passed by the service manager; [[listener]] is not used",
            inherited.len()
        );
        Server::with_listeners(config, inherited).map_err(|e| format!("cannot start: {e}"))?
    };
    server.set_config_path(path);
    server
        .handle_signals()
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    server.set_notifier(Notifier::from_env());
    for (addr, tls) in server.local_endpoints() {
        let scheme = if tls { "wss" } else { "ws" };
        log::info!("listening on {scheme}://{addr}");
    }
    server.run().map_err(|e| format!("server stopped: {e}"))
}

/// Reads the certificate and key of every TLS listener, as the server
/// would at start, so `--check-config` catches unreadable, malformed or
/// mismatched files.
fn check_certificates(config: &Config) -> Result<(), String> {
    for listener in &config.listeners {
        load_listener_tls(listener).map_err(|e| format!("listener {}: {e}", listener.address))?;
    }
    Ok(())
}

/// Adds a hint to a bind failure on a privileged port.
fn describe_start_error(err: &ServerError) -> String {
    match err {
        ServerError::Bind { addr, source }
            if addr.port() < 1024 && source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!(
                "{err} (ports below 1024 need CAP_NET_BIND_SERVICE, or socket activation \
                 through wshub.socket)"
            )
        }
        _ => err.to_string(),
    }
}

/// Read and parse errors already name the file; validation errors do not,
/// so add it there to make every message self-contained.
fn describe_config_error(path: &std::path::Path, err: &ConfigError) -> String {
    match err {
        ConfigError::Invalid { .. } => format!("{}: {err}", path.display()),
        ConfigError::Read { .. } | ConfigError::Parse(_) => err.to_string(),
    }
}

/// Reports an error that stops the daemon. Goes through the logger when it
/// will show errors, and straight to stderr otherwise, so a `RUST_LOG=off`
/// setting can never make a failed start silent.
fn fatal(message: &str) {
    if log::log_enabled!(log::Level::Error) {
        log::error!("{message}");
    } else {
        eprintln!("wshub: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn no_arguments_runs_built_in_config() {
        assert_eq!(parse(&[]), Ok(Command::Run(None)));
    }

    #[test]
    fn config_flag_forms() {
        let want = Ok(Command::Run(Some(PathBuf::from("a.toml"))));
        assert_eq!(parse(&["--config", "a.toml"]), want);
        assert_eq!(parse(&["-c", "a.toml"]), want);
        assert_eq!(parse(&["--config=a.toml"]), want);
    }

    #[test]
    fn check_config() {
        let want = Ok(Command::Check(PathBuf::from("a.toml")));
        assert_eq!(parse(&["--check-config", "a.toml"]), want);
        assert_eq!(parse(&["--check-config=a.toml"]), want);
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
        assert_eq!(parse(&["--config", "a", "--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&["--config"]).is_err());
        assert!(parse(&["--config="]).is_err());
        assert!(parse(&["--check-config"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["file.toml"]).is_err());
        assert!(parse(&["-c", "a", "--check-config", "b"]).is_err());
        assert!(parse(&["-c=a"]).is_err());
    }

    #[test]
    fn publish_subcommand() {
        match parse(&["publish", "--binary", "news", "hi"]) {
            Ok(Command::Publish(o)) => {
                assert_eq!(o.channel, "news");
                assert!(o.binary);
                assert_eq!(o.message.as_deref(), Some(&b"hi"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&["publish", "--help"]), Ok(Command::Help));
        assert!(parse(&["publish"]).is_err());
        assert!(parse(&["publish", "bad name!"]).is_err());
        // Only as the first argument.
        assert!(parse(&["-c", "a.toml", "publish", "news"]).is_err());
    }

    #[test]
    fn usage_mentions_publish() {
        assert!(USAGE.contains("wshub publish"));
        assert!(USAGE.contains(cli_publish::TOKEN_ENV));
        assert!(USAGE.contains(cli_publish::DEFAULT_URL));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_do_not_panic() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        assert!(parse_args([bad.clone()]).is_err());
        assert_eq!(
            parse_args([OsString::from("-c"), bad.clone()]),
            Ok(Command::Run(Some(PathBuf::from(bad))))
        );
    }
}
