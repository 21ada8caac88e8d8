//! `wshub publish`: send one message to a channel through a running
//! server's HTTP publish API, over http:// or https://.
//!
//! Owns: the subcommand's arguments, the URL form it accepts, the trust
//! roots for https (`--cacert`, else the Mozilla roots built in), and one
//! `POST` through `ureq` (rustls with the ring provider, blocking, no
//! runtime).
//! Must never: follow redirects or go through a proxy (the token is meant
//! for the server named in `--url` only), print the token, or read an
//! unbounded response.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use clap::error::ErrorKind;
use ureq::Agent;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
use url::Url;

use wshub::config::{DEFAULT_PUBLISH_PREFIX, check_publish_token};
use wshub::is_valid_channel_name;

/// Server addressed when `--url` is not given: the built-in listener.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Environment variable read when `--token` is not given. Preferred over
/// the flag, which other local users can see in the process list.
pub const TOKEN_ENV: &str = "WSHUB_PUBLISH_TOKEN";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the whole exchange: resolve, connect, TLS, send, answer.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest response body accepted; the server answers with a line of JSON
/// or a one-line reason, so anything near this is not our server.
const MAX_RESPONSE_BODY: u64 = 1024 * 1024;

/// Exit status when the server refused the message or could not be reached.
const EXIT_FAILED: u8 = 1;
/// Exit status for input that cannot be sent (bad token, bad message).
const EXIT_USAGE: u8 = 2;

const AFTER_HELP: &str = "\
Without publish_token in the server's config, only clients on the server
host (loopback) may publish. On success the server's answer (JSON with the
number of recipients) is printed.

Exit status: 0 delivered to the server, 1 refused or unreachable, 2 usage
error.";

/// Publish MESSAGE (default: all of stdin) to CHANNEL through a running
/// server.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct PublishArgs {
    /// The server, http[s]://HOST[:PORT][/PREFIX]; a path replaces the
    /// default /publish prefix
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: Target,

    /// Send `Authorization: Bearer TOKEN` [default: the WSHUB_PUBLISH_TOKEN
    /// environment variable, which is preferable: arguments are visible to
    /// other local users]
    #[arg(long, value_name = "TOKEN", value_parser = TokenParser)]
    pub token: Option<String>,

    /// Trust the certificates in this PEM file (a private CA or a
    /// self-signed certificate) instead of the built-in public roots, for
    /// an https:// URL
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Send a text message (the default; must be UTF-8)
    #[arg(long, conflicts_with = "binary")]
    pub text: bool,

    /// Send a binary message
    #[arg(long)]
    pub binary: bool,

    /// The channel: 1 to 128 characters of A-Z a-z 0-9 _ . : @ -
    #[arg(value_parser = parse_channel)]
    pub channel: String,

    /// The message (put `--` before one that starts with `-`); omitted:
    /// read all of stdin
    pub message: Option<OsString>,
}

/// Where to publish: a checked http:// or https:// URL whose path is the
/// publish prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct Target(Url);

impl Target {
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// The URL a message for `channel` is posted to. Channel names are
    /// path-safe by their rule, so no encoding is needed.
    pub fn channel_url(&self, channel: &str) -> Url {
        let mut url = self.0.clone();
        let path = format!("{}/{channel}", self.0.path());
        url.set_path(&path);
        url
    }
}

/// Parses `http[s]://HOST[:PORT][/PREFIX]` (clap value parser for `--url`).
pub fn parse_url(text: &str) -> Result<Target, String> {
    let expected = "expected http[s]://HOST[:PORT][/PREFIX], such as http://127.0.0.1:8080";
    let mut url = Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}; {expected}"))?;
    match url.scheme() {
        "http" | "https" => {}
        "ws" | "wss" => {
            let fix = if url.scheme() == "ws" {
                "http"
            } else {
                "https"
            };
            return Err(format!(
                "the publish API is HTTP on the same listener: write {text:?} as {fix}://..."
            ));
        }
        other => return Err(format!("unsupported URL scheme {other:?}: {expected}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "invalid URL {text:?}: user information is not supported; pass the token with --token"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {text:?}: a query or fragment is not allowed; {expected}"
        ));
    }
    if url.port() == Some(0) {
        return Err(format!("invalid URL {text:?}: port 0; {expected}"));
    }
    let prefix = url.path().trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        DEFAULT_PUBLISH_PREFIX.to_owned()
    } else {
        prefix.to_owned()
    };
    url.set_path(&prefix);
    Ok(Target(url))
}

/// Refuses names the server would refuse, before opening a connection.
fn parse_channel(channel: &str) -> Result<String, String> {
    if is_valid_channel_name(channel) {
        Ok(channel.to_owned())
    } else {
        Err("use 1 to 128 characters of A-Z a-z 0-9 _ . : @ -".to_owned())
    }
}

/// Checks `--token` with the server's rule. Unlike clap's usual value
/// errors, the message never repeats the value: it is a secret.
#[derive(Clone)]
struct TokenParser;

impl clap::builder::TypedValueParser for TokenParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("--token: {why}\n")).with_cmd(cmd)
        };
        let token = value
            .to_str()
            .ok_or_else(|| refuse("not valid UTF-8".to_owned()))?;
        check_publish_token(token).map_err(refuse)?;
        Ok(token.to_owned())
    }
}

/// Falls back to the environment when `--token` was not given. An empty
/// variable counts as unset, so `WSHUB_PUBLISH_TOKEN=` disables it.
pub fn resolve_token(
    flag: Option<String>,
    env: Option<OsString>,
) -> Result<Option<String>, String> {
    if flag.is_some() {
        return Ok(flag);
    }
    let Some(env) = env.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let token = env
        .into_string()
        .map_err(|_| format!("{TOKEN_ENV} is not valid UTF-8"))?;
    check_publish_token(&token).map_err(|e| format!("{TOKEN_ENV}: {e}"))?;
    Ok(Some(token))
}

/// Reads the certificates of a `--cacert` PEM file.
fn load_roots(path: &Path) -> Result<RootCerts, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(format!("--cacert {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "--cacert {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// The one client for one request: no proxy, no redirects, bounded in
/// time, rustls with ring trusting `roots`.
fn agent(roots: RootCerts) -> Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .build();
    Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .max_redirects(0)
        // A redirect is reported as the answer it is, not followed.
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(TOTAL_TIMEOUT))
        .user_agent(concat!("wshub/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// A final response.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a message publish needs besides its body.
pub struct Request<'a> {
    pub target: &'a Target,
    pub channel: &'a str,
    pub token: Option<&'a str>,
    pub binary: bool,
    pub cacert: Option<&'a Path>,
}

/// Sends one message and reads the answer, whatever its status.
pub fn send(request: &Request<'_>, body: &[u8]) -> Result<Response, String> {
    let roots = match request.cacert {
        Some(path) => load_roots(path)?,
        None => RootCerts::WebPki,
    };
    let url = request.target.channel_url(request.channel);
    let content_type = if request.binary {
        BINARY_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    let mut post = agent(roots)
        .post(url.as_str())
        .header("Content-Type", content_type);
    if let Some(token) = request.token {
        post = post.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = post
        .send(body)
        .map_err(|e| describe_error(&url, request.cacert.is_some(), e))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BODY)
        .read_to_vec()
        .map_err(|e| format!("reading the answer from {url} failed: {e}"))?;
    Ok(Response { status, body })
}

/// Names what failed and, for a certificate the client does not trust,
/// the fix.
fn describe_error(url: &Url, cacert: bool, err: ureq::Error) -> String {
    let server = match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        _ => url.to_string(),
    };
    match err {
        ureq::Error::Timeout(_) => format!(
            "no answer from {server} within {} s",
            TOTAL_TIMEOUT.as_secs()
        ),
        ureq::Error::HostNotFound => format!("cannot resolve {server}"),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!("cannot connect to {server}: {e}")
        }
        ureq::Error::ConnectionFailed => format!("cannot connect to {server}"),
        ureq::Error::Rustls(e) => describe_tls_error(&server, &e, cacert),
        ureq::Error::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => describe_tls_error(&server, tls, cacert),
            None => format!("publishing to {server} failed: {e}"),
        },
        other => format!("publishing to {server} failed: {other}"),
    }
}

/// A TLS failure; a certificate the built-in roots do not trust gets the
/// hint for a private CA or a self-signed certificate.
fn describe_tls_error(server: &str, err: &rustls::Error, cacert: bool) -> String {
    let hint = if !cacert && matches!(err, rustls::Error::InvalidCertificate(_)) {
        " (for a private CA or a self-signed certificate, give its PEM file with --cacert FILE)"
    } else {
        ""
    };
    format!("TLS with {server} failed: {err}{hint}")
}

/// Runs `wshub publish`: exit 0 when the server accepted the message, 1 when
/// it refused or could not be reached, 2 for unusable input.
pub fn run(args: PublishArgs) -> ExitCode {
    let token = match resolve_token(args.token, std::env::var_os(TOKEN_ENV)) {
        Ok(token) => token,
        Err(message) => return failure(EXIT_USAGE, &message),
    };
    if args.cacert.is_some() && !args.url.is_https() {
        return failure(EXIT_USAGE, "--cacert only applies to an https:// --url");
    }
    let body = match args.message {
        Some(message) => os_bytes(message),
        None => {
            let mut body = Vec::new();
            if let Err(e) = io::stdin().lock().read_to_end(&mut body) {
                return failure(
                    EXIT_FAILED,
                    &format!("cannot read the message from stdin: {e}"),
                );
            }
            body
        }
    };
    // The server refuses text that is not UTF-8; saying so here also
    // names the fix.
    if !args.binary && std::str::from_utf8(&body).is_err() {
        return failure(
            EXIT_USAGE,
            "the message is not valid UTF-8; use --binary to send it as bytes",
        );
    }
    let request = Request {
        target: &args.url,
        channel: &args.channel,
        token: token.as_deref(),
        binary: args.binary,
        cacert: args.cacert.as_deref(),
    };
    match send(&request, &body) {
        Ok(response) if (200..300).contains(&response.status) => {
            let mut stdout = io::stdout().lock();
            // A closed stdout (`| head -c0`) must not turn a delivered
            // message into a failure exit.
            let _ = stdout
                .write_all(&response.body)
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("publish failed: {}", describe_failure(&response));
            ExitCode::from(EXIT_FAILED)
        }
        Err(message) => failure(EXIT_FAILED, &message),
    }
}

fn failure(code: u8, message: &str) -> ExitCode {
    eprintln!("wshub publish: {message}");
    ExitCode::from(code)
}

/// The raw bytes of an argument: binary messages are sent exactly as
/// given. Outside Unix arguments are UTF-16, so only their UTF-8 form is
/// meaningful and non-Unicode text is passed on lossily.
fn os_bytes(arg: OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        arg.into_vec()
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

/// `<status> <body>`, with the standard reason phrase standing in for an
/// empty body.
fn describe_failure(response: &Response) -> String {
    let body = String::from_utf8_lossy(&response.body);
    let body = body.trim();
    let detail = if body.is_empty() {
        http_reason(response.status)
    } else {
        body
    };
    format!("{} {detail}", response.status)
}

fn http_reason(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `wshub publish`'s arguments on their own.
    #[derive(Debug, Parser)]
    struct Publish {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn parse(args: &[&str]) -> Result<PublishArgs, clap::Error> {
        Publish::try_parse_from(std::iter::once("publish").chain(args.iter().copied()))
            .map(|p| p.args)
    }

    fn args(args: &[&str]) -> PublishArgs {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn target(url: &str) -> Target {
        parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn defaults() {
        let a = args(&["news", "hello"]);
        assert_eq!(a.channel, "news");
        assert_eq!(a.message.as_deref(), Some("hello".as_ref()));
        assert!(!a.binary && !a.text);
        assert_eq!(a.token, None);
        assert_eq!(a.cacert, None);
        assert_eq!(a.url, target(DEFAULT_URL));
        assert_eq!(
            a.url.channel_url("news").as_str(),
            "http://127.0.0.1:8080/publish/news"
        );
    }

    #[test]
    fn message_omitted_means_stdin() {
        assert_eq!(args(&["news"]).message, None);
    }

    #[test]
    fn option_forms() {
        let a = args(&[
            "--url",
            "https://example.test:9000",
            "--token=abc",
            "--cacert",
            "ca.pem",
            "--binary",
            "news",
            "hi",
        ]);
        assert!(a.url.is_https());
        assert_eq!(
            a.url.channel_url("news").as_str(),
            "https://example.test:9000/publish/news"
        );
        assert_eq!(a.token.as_deref(), Some("abc"));
        assert_eq!(a.cacert.as_deref(), Some(Path::new("ca.pem")));
        assert!(a.binary);
        // Options may follow the positionals.
        let a = args(&["news", "hi", "--url=http://127.0.0.1:1", "--text"]);
        assert_eq!(
            a.url.channel_url("news").as_str(),
            "http://127.0.0.1:1/publish/news"
        );
        assert!(a.text && !a.binary);
    }

    #[test]
    fn double_dash_ends_options() {
        let a = args(&["--", "news", "--binary"]);
        assert_eq!(a.message.as_deref(), Some("--binary".as_ref()));
        assert!(!a.binary);
        // A lone "-" is an ordinary message.
        assert_eq!(args(&["news", "-"]).message.as_deref(), Some("-".as_ref()));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["--text"],
            &["--text", "--binary", "a"],
            &["--url"],
            &["--url=", "a"],
            &["--token"],
            &["--token", "", "a"],
            &["--token", "two words", "a"],
            &["--token", "a", "--token", "b", "c"],
            &["--url", "http://a", "--url", "http://b", "c"],
            &["--bogus", "a"],
            &["--binary=yes", "a"],
            &["a", "b", "c"],
            &["bad channel"],
            &["a/b"],
            &["--url", "ws://127.0.0.1", "a"],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.use_stderr(), "{bad:?}");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        let long = "x".repeat(129);
        assert!(parse(&[&long]).is_err());
        assert!(parse(&[&long[..128]]).is_ok());
    }

    #[test]
    fn token_errors_never_quote_the_token() {
        for bad in ["s3cret value", "s3cr\u{e9}t"] {
            let err = parse(&["--token", bad, "a"]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.contains("--token") && !text.contains("s3cr"), "{text}");
        }
    }

    #[test]
    fn channel_names_follow_the_server_rule() {
        for good in ["a", "news", "A-z_0.9:x@y"] {
            assert!(parse(&[good]).is_ok(), "{good}");
        }
        for bad in ["", "a b", "ä", "a%20", "a?b", "a#b"] {
            assert!(parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn binary_message_bytes_pass_through() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(vec![0xff, 0x00, 0x41]);
        let argv = [
            OsString::from("publish"),
            OsString::from("--binary"),
            OsString::from("c"),
            raw,
        ];
        let a = Publish::try_parse_from(argv).unwrap().args;
        assert_eq!(a.message.map(os_bytes), Some(vec![0xff, 0x00, 0x41]));
        // A non-UTF-8 channel is refused, not mangled.
        let bad = [OsString::from("publish"), OsString::from_vec(vec![0xff])];
        assert!(Publish::try_parse_from(bad).is_err());
    }

    #[test]
    fn url_forms() {
        let cases = [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/publish/c"),
            (
                "http://127.0.0.1:8080/api/publish",
                "http://127.0.0.1:8080/api/publish/c",
            ),
            (
                "http://127.0.0.1:8080/api/publish/",
                "http://127.0.0.1:8080/api/publish/c",
            ),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/publish/c"),
            ("HTTP://Example.test", "http://example.test/publish/c"),
            ("http://[::1]:9000/p", "http://[::1]:9000/p/c"),
            ("http://[::1]", "http://[::1]/publish/c"),
            ("https://[::1]:8443", "https://[::1]:8443/publish/c"),
            ("https://wshub.example", "https://wshub.example/publish/c"),
            // Characters outside a plain path are percent-encoded, never
            // copied raw into the request line.
            ("http://host/a b", "http://host/a%20b/c"),
        ];
        for (url, want) in cases {
            assert_eq!(target(url).channel_url("c").as_str(), want, "{url}");
        }
        assert!(target("https://x").is_https());
        assert!(!target("http://x").is_https());
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "127.0.0.1:8080",
            "localhost:8080",
            "ftp://host",
            "ws://127.0.0.1:8080",
            "wss://127.0.0.1:8443",
            "http://",
            "http://:8080",
            "http://host:0",
            "http://host:65536",
            "http://host:8x",
            "http://::1:8080",
            "http://[::1",
            "http://[nope]:80",
            "http://[::1]x",
            "http://user:pw@host",
            "http://user@host",
            "http://host/a?b",
            "http://host/a#b",
            "http://ho st",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn websocket_urls_are_refused_with_the_fix() {
        let err = parse_url("ws://127.0.0.1:8080").unwrap_err();
        assert!(err.contains("http://"), "{err}");
        let err = parse_url("wss://127.0.0.1:8443").unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn token_falls_back_to_the_environment() {
        let env = |v: &str| Some(OsString::from(v));
        assert_eq!(
            resolve_token(Some("flag".into()), env("env")),
            Ok(Some("flag".into()))
        );
        assert_eq!(resolve_token(None, env("env")), Ok(Some("env".into())));
        assert_eq!(resolve_token(None, env("")), Ok(None));
        assert_eq!(resolve_token(None, None), Ok(None));
        let err = resolve_token(None, env("has space")).unwrap_err();
        assert!(
            err.contains(TOKEN_ENV) && !err.contains("has space"),
            "{err}"
        );
    }

    #[test]
    fn cacert_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("wshub-cacert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = load_roots(&empty).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = dir.join("missing.pem");
        let err = load_roots(&missing).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failure_description() {
        let r = Response {
            status: 401,
            body: b"a valid bearer token is required\n".to_vec(),
        };
        assert_eq!(describe_failure(&r), "401 a valid bearer token is required");
        let r = Response {
            status: 502,
            body: Vec::new(),
        };
        assert_eq!(describe_failure(&r), "502 Bad Gateway");
    }
}
