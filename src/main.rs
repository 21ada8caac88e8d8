//! The `wshub` binary: command-line parsing (clap), logging setup, and
//! handing a loaded config to the server; plus the `publish` operator command
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

use clap::{Parser, Subcommand};

use wshub::config::{Config, ConfigError};
use wshub::daemon::{listenfd, logging, notify::Notifier, rlimit};
use wshub::handover::wire;
use wshub::server::{Relaunch, Server, ServerError, load_listener_tls};

mod cli_publish;

/// Exit status of a usage error or an invalid config (`--check-config`).
const EXIT_USAGE: u8 = 2;
/// Exit status of a runtime failure.
const EXIT_FAILURE: u8 = 1;

/// Shown after `--help`: what the flags do not say.
const AFTER_HELP: &str = "\
The built-in config listens on 127.0.0.1:8080 and serves a broadcast hub
at /live (publish from loopback with POST /publish/CHANNEL) and an echo
route at /echo. Log verbosity follows RUST_LOG (default: info) and the
config's log_level.

Signals: SIGTERM or SIGINT closes every connection (code 1001, or
shutdown_close_code) and exits once they are done or shutdown_timeout has
passed; a second one exits at once. SIGHUP reloads the config file.
SIGHUP also reads the certificate and key of every tls = true listener
again: new connections get the new pair, open ones keep theirs.
SIGUSR2 restarts without dropping clients (handover = true): the binary
at this path is started again with the same arguments and takes over the
listening sockets and every plain connection; if it fails, this process
serves on.
Under systemd, sockets passed by socket activation (LISTEN_FDS) are served
instead of [[listener]], and readiness, status and watchdog pings go to
NOTIFY_SOCKET. With FileDescriptorStoreMax= set, SIGTERM (systemctl
restart) keeps the clients: connections and state go to the service
manager's store and the next process takes them over.

Exit status: 0 success, 1 runtime failure (publish: refused or
unreachable), 2 usage error or invalid config (--check-config).";

/// A WebSocket server daemon: many mostly idle clients on one event loop.
#[derive(Debug, Parser)]
#[command(
    name = "wshub",
    version,
    after_help = AFTER_HELP,
    disable_help_subcommand = true,
    // `publish` has options of its own; the daemon's flags do not mix with it.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run with the config in FILE (default: the built-in config)
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        conflicts_with = "check_config"
    )]
    config: Option<PathBuf>,

    /// Validate FILE and the certificate files it names, then exit
    /// (status 2 when invalid)
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Subcommands>,
}

#[derive(Debug, Subcommand)]
enum Subcommands {
    Publish(cli_publish::PublishArgs),
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Option<PathBuf>),
    Check(PathBuf),
    Publish(cli_publish::PublishArgs),
}

/// Parses arguments (with the program name first). Takes `OsString`s
/// because paths and `--binary` messages need not be UTF-8. `Err` carries
/// clap's answer: help, version or a usage error.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, clap::Error> {
    let cli = Cli::try_parse_from(args)?;
    Ok(match (cli.command, cli.check_config, cli.config) {
        (Some(Subcommands::Publish(publish)), _, _) => Command::Publish(publish),
        (None, Some(file), _) => Command::Check(file),
        (None, None, config) => Command::Run(config),
    })
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args_os()) {
        Ok(command) => command,
        Err(answer) => {
            // Help and version go to stdout with status 0; usage errors to
            // stderr with status 2.
            let _ = answer.print();
            return if answer.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match command {
        Command::Publish(args) => cli_publish::run(args),
        Command::Check(path) => match Config::load(&path) {
            Ok(config) => match check_certificates(&config) {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{}: {message}", path.display());
                    ExitCode::from(EXIT_USAGE)
                }
            },
            Err(err) => {
                eprintln!("{}", describe_config_error(&path, &err));
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run(path) => {
            logging::init();
            match run(path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    fatal(&message);
                    ExitCode::from(EXIT_FAILURE)
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
    // A new process started by SIGUSR2 takes over from the one that
    // started it; otherwise sockets (and a stored state) may come from the
    // service manager.
    let mut server = match wire::from_env() {
        Some(channel) => {
            let channel = channel.map_err(|e| format!("cannot take over: {e}"))?;
            Server::take_over(config, channel).map_err(|e| format!("cannot take over: {e}"))?
        }
        None => {
            let inherited = listenfd::take()?;
            if !inherited.listeners.is_empty() {
                log::info!(
                    "serving on {} socket(s) passed by the service manager; {}",
                    inherited.listeners.len(),
                    if inherited.socket_activated {
                        "[[listener]] is not used"
                    } else {
                        "kept for [[listener]] as before the restart"
                    }
                );
            }
            Server::start_inherited(config, inherited)
                .map_err(|e| format!("cannot start: {}", describe_start_error(&e)))?
        }
    };
    server.set_relaunch(Relaunch::current());
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

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        parse_args(
            std::iter::once("wshub")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn run_path(args: &[&str]) -> Option<PathBuf> {
        match parse(args) {
            Ok(Command::Run(path)) => path,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn is_usage_error(args: &[&str]) -> bool {
        parse(args).is_err_and(|e| e.use_stderr() && e.exit_code() == i32::from(EXIT_USAGE))
    }

    #[test]
    fn no_arguments_runs_built_in_config() {
        assert_eq!(run_path(&[]), None);
    }

    #[test]
    fn config_flag_forms() {
        let want = Some(PathBuf::from("a.toml"));
        assert_eq!(run_path(&["--config", "a.toml"]), want);
        assert_eq!(run_path(&["-c", "a.toml"]), want);
        assert_eq!(run_path(&["--config=a.toml"]), want);
    }

    #[test]
    fn check_config() {
        for args in [
            &["--check-config", "a.toml"][..],
            &["--check-config=a.toml"],
        ] {
            match parse(args) {
                Ok(Command::Check(path)) => assert_eq!(path, PathBuf::from("a.toml")),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn help_and_version_are_answers_not_errors() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["-V"],
            &["--version"],
            &["publish", "--help"],
        ] {
            let answer = parse(args).unwrap_err();
            assert!(!answer.use_stderr(), "{args:?}");
            assert_eq!(answer.exit_code(), 0, "{args:?}");
        }
        let version = parse(&["--version"]).unwrap_err().to_string();
        assert_eq!(
            version.trim(),
            format!("wshub {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["--config"][..],
            &["--config="],
            &["--check-config"],
            &["--check-config="],
            &["--bogus"],
            &["file.toml"],
            &["-c", "a", "--check-config", "b"],
            &["-c", "a", "-c", "b"],
            &["publish"],
            &["publish", "bad name!"],
            // `publish` comes first or not at all.
            &["-c", "a.toml", "publish", "news"],
        ] {
            assert!(is_usage_error(args), "{args:?}");
        }
    }

    #[test]
    fn publish_subcommand() {
        match parse(&["publish", "--binary", "news", "hi"]) {
            Ok(Command::Publish(args)) => {
                assert_eq!(args.channel, "news");
                assert!(args.binary);
                assert_eq!(args.message.as_deref(), Some("hi".as_ref()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_mentions_publish_and_its_defaults() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli.render_long_help().to_string();
        assert!(help.contains("publish"), "{help}");
        assert!(help.contains("Exit status"), "{help}");
        let publish = cli
            .find_subcommand_mut("publish")
            .expect("publish subcommand")
            .render_long_help()
            .to_string();
        for needle in [
            cli_publish::TOKEN_ENV,
            cli_publish::DEFAULT_URL,
            "--cacert",
            "https://",
        ] {
            assert!(
                publish.contains(needle),
                "{needle} missing from:\n{publish}"
            );
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_do_not_panic() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let args = |rest: Vec<OsString>| std::iter::once(OsString::from("wshub")).chain(rest);
        assert!(parse_args(args(vec![bad.clone()])).is_err());
        match parse_args(args(vec![OsString::from("-c"), bad.clone()])) {
            Ok(Command::Run(Some(path))) => assert_eq!(path, PathBuf::from(bad)),
            other => panic!("{other:?}"),
        }
    }
}
