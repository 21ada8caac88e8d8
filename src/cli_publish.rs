//! `wshub publish`: send one message to a channel through a running
//! server's HTTP publish API.
//!
//! Owns: the subcommand's arguments, the URL form it accepts, and a minimal
//! blocking HTTP/1.1 client for exactly one `POST` (one request, one
//! response, `Connection: close`).
//! Must never: speak TLS or follow redirects (the publish API is plain HTTP
//! on the server's listeners), put unchecked argument text into the request
//! head, or buffer an unbounded response.
//!
//! A plain `TcpStream` rather than an HTTP client crate: the whole exchange
//! is one request with a known length and a small reply, and the daemon's
//! dependency tree stays as small as its job.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use wshub::config::DEFAULT_PUBLISH_PREFIX;
use wshub::is_valid_channel_name;

/// Server addressed when `--url` is not given: the built-in listener.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Environment variable read when `--token` is not given. Preferred over
/// the flag, which other local users can see in the process list.
pub const TOKEN_ENV: &str = "WSHUB_PUBLISH_TOKEN";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response head accepted; the server's heads are a few lines.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest response body accepted; the server answers with a line of JSON
/// or a one-line reason, so anything near this is not our server.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;
const MAX_RESPONSE_HEADERS: usize = 64;

/// What `wshub publish ...` asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Help,
    Publish(Options),
}

/// A checked `wshub publish` command line.
#[derive(Debug, PartialEq)]
pub struct Options {
    pub target: Target,
    /// From `--token`; `None` falls back to [`TOKEN_ENV`] when run.
    pub token: Option<String>,
    pub binary: bool,
    pub channel: String,
    /// `None`: read the message from stdin.
    pub message: Option<Vec<u8>>,
}

/// Where to send the request, from an `http://` URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Host name or IP address to resolve, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header value: the URL's authority as written.
    pub authority: String,
    /// Publish prefix: the URL's path, or `/publish` when it has none.
    pub prefix: String,
}

/// Parses the arguments after `publish`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let mut args = args.into_iter();
    let mut url = None;
    let mut token = None;
    let mut binary: Option<bool> = None;
    let mut positional: Vec<OsString> = Vec::new();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        // Message bytes need not be UTF-8 (`--binary`), so only options are
        // required to be text; positionals are kept as they came.
        let flag = match arg.to_str() {
            Some(flag) if !options_done && flag.starts_with('-') && flag != "-" => flag,
            _ => {
                positional.push(arg);
                continue;
            }
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (flag, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            let value = match inline.clone() {
                Some(value) => value,
                None => match args.next() {
                    Some(value) => value
                        .into_string()
                        .map_err(|v| format!("{name}: {v:?} is not valid UTF-8"))?,
                    None => return Err(format!("{name} needs a {what} argument")),
                },
            };
            if value.is_empty() {
                return Err(format!("{name} needs a non-empty {what} argument"));
            }
            Ok(value)
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--" if inline.is_none() => options_done = true,
            "--url" => set_once(&mut url, value("URL")?, name)?,
            "--token" => set_once(&mut token, value("TOKEN")?, name)?,
            "--text" | "--binary" if inline.is_none() => {
                let want = name == "--binary";
                if binary.is_some_and(|b| b != want) {
                    return Err("give only one of --text / --binary".to_owned());
                }
                binary = Some(want);
            }
            _ => return Err(format!("publish: unexpected option {flag:?}")),
        }
    }
    let binary = binary.unwrap_or(false);
    let mut positional = positional.into_iter();
    let channel = match positional.next() {
        Some(channel) => channel
            .into_string()
            .map_err(|c| format!("invalid channel name {c:?}"))?,
        None => return Err("publish needs a CHANNEL".to_owned()),
    };
    check_channel(&channel)?;
    let message = positional.next().map(os_bytes);
    if let Some(extra) = positional.next() {
        return Err(format!(
            "publish: unexpected argument {extra:?} (quote a MESSAGE that has spaces)"
        ));
    }
    if let Some(token) = &token {
        check_token(token)?;
    }
    let target = parse_url(url.as_deref().unwrap_or(DEFAULT_URL))?;
    Ok(Parsed::Publish(Options {
        target,
        token,
        binary,
        channel,
        message,
    }))
}

fn set_once(slot: &mut Option<String>, value: String, name: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{name} given more than once"));
    }
    Ok(())
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

/// Refuses names the server would refuse, before opening a connection.
fn check_channel(channel: &str) -> Result<(), String> {
    if is_valid_channel_name(channel) {
        Ok(())
    } else {
        Err(format!(
            "invalid channel name {channel:?}: use 1 to 128 characters of A-Z a-z 0-9 _ . : @ -"
        ))
    }
}

/// The token goes into a header line, so anything but visible ASCII could
/// break or inject into the request; the server's config accepts no other.
/// The message never repeats the token.
fn check_token(token: &str) -> Result<(), String> {
    if !token.is_empty() && token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(
            "the publish token must be non-empty visible ASCII (no spaces or control characters)"
                .to_owned(),
        )
    }
}

/// Parses `http://HOST[:PORT][/PREFIX]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let expected = "expected http://HOST[:PORT][/PREFIX], such as http://127.0.0.1:8080";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("invalid URL {url:?}: {expected}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" | "wss" => {
            return Err(format!(
                "{scheme}:// is not supported by `wshub publish`: it speaks plain HTTP only; \
                 use an http:// URL of the server's listener (through an SSH tunnel or on the \
                 server host when it is remote)"
            ));
        }
        "ws" => {
            return Err(format!(
                "the publish API is plain HTTP on the same listener: write {url:?} as http://..."
            ));
        }
        _ => return Err(format!("unsupported URL scheme {scheme:?}: {expected}")),
    }
    if rest.contains(['?', '#']) {
        return Err(format!(
            "invalid URL {url:?}: a query or fragment is not allowed; {expected}"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "invalid URL {url:?}: user information is not supported; pass the token with --token"
        ));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("invalid host or port in URL {url:?}: {expected}"))?;
    let prefix = path.trim_end_matches('/');
    // The prefix is copied into the request line, so it must be a plain
    // path: visible ASCII only (anything else must be percent-encoded).
    if !prefix.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "invalid path in URL {url:?}: use visible ASCII (percent-encode anything else)"
        ));
    }
    let prefix = if prefix.is_empty() {
        DEFAULT_PUBLISH_PREFIX
    } else {
        prefix
    };
    Ok(Target {
        host,
        port,
        authority: authority.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; port 80 by default.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    // Names and IPv4 addresses; a colon left in the host means an IPv6
    // address without brackets, which is ambiguous with the port.
    let host_ok = authority.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
    if !host_ok {
        return None;
    }
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|&p| p != 0)?
        }
        Some(_) => return None,
    };
    Some((host.to_owned(), port))
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
    check_token(&token).map_err(|e| format!("{TOKEN_ENV}: {e}"))?;
    Ok(Some(token))
}

/// The complete request: head and body.
pub fn build_request(
    target: &Target,
    channel: &str,
    token: Option<&str>,
    binary: bool,
    body: &[u8],
) -> Vec<u8> {
    let content_type = if binary {
        BINARY_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    let mut head = format!(
        "POST {}/{channel} HTTP/1.1\r\n\
         Host: {}\r\n\
         User-Agent: wshub/{}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n",
        target.prefix,
        target.authority,
        env!("CARGO_PKG_VERSION"),
        body.len(),
    );
    if let Some(token) = token {
        head.push_str("Authorization: Bearer ");
        head.push_str(token);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// A final (non-1xx) response.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

/// The parts of a response head the client acts on.
struct Head {
    status: u16,
    reason: String,
    content_length: Option<usize>,
    /// Bytes the head took in the buffer.
    len: usize,
}

/// Reads one response, skipping interim 1xx responses. The body is framed
/// by `Content-Length`, or runs to the end of the connection without one.
pub fn read_response(mut reader: impl Read) -> Result<Response, String> {
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        match parse_head(&buf)? {
            Some(head) if (100..200).contains(&head.status) => {
                buf.drain(..head.len);
                continue;
            }
            Some(head) => break head,
            None => {}
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            ));
        }
        if read_some(&mut reader, &mut buf)? == 0 {
            return Err(if buf.is_empty() {
                "the server closed the connection without answering".to_owned()
            } else {
                "the server closed the connection in the middle of its answer".to_owned()
            });
        }
    };
    let mut body = buf.split_off(head.len);
    match head.content_length {
        Some(length) => {
            if length > MAX_RESPONSE_BODY {
                return Err(format!(
                    "response body of {length} bytes is larger than the {MAX_RESPONSE_BODY} accepted"
                ));
            }
            while body.len() < length {
                if read_some(&mut reader, &mut body)? == 0 {
                    return Err(format!(
                        "response body ended after {} of {length} bytes",
                        body.len()
                    ));
                }
            }
            // Bytes past the announced length are not part of this answer.
            body.truncate(length);
        }
        None => {
            while read_some(&mut reader, &mut body)? > 0 {
                if body.len() > MAX_RESPONSE_BODY {
                    return Err(format!(
                        "response body larger than the {MAX_RESPONSE_BODY} bytes accepted"
                    ));
                }
            }
        }
    }
    Ok(Response {
        status: head.status,
        reason: head.reason,
        body,
    })
}

/// Parses a complete head at the start of `buf`, or `None` if more bytes
/// are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not a valid HTTP response: {e}")),
    };
    let status = response.code.unwrap_or_default();
    let mut content_length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("Content-Length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (parsed, content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(previous)) if n == previous => {}
                _ => return Err("the response has an invalid Content-Length".to_owned()),
            }
        } else if header.name.eq_ignore_ascii_case("Transfer-Encoding") {
            // The server always sends a length; a chunked body would be
            // printed with its framing, so refuse rather than mislead.
            return Err("the response uses Transfer-Encoding, which is not supported".to_owned());
        }
    }
    Ok(Some(Head {
        status,
        reason: response.reason.unwrap_or_default().to_owned(),
        content_length,
        len,
    }))
}

/// Appends what one read returns; 0 means the peer closed.
fn read_some(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(format!(
                    "no answer from the server within {} s",
                    IO_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("reading the response failed: {e}")),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to the first address of `target` that accepts.
fn connect(target: &Target) -> Result<TcpStream, String> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(last_error.unwrap_or_else(|| format!("{} resolved to no address", target.host)))
}

/// Sends one request and reads its response.
pub fn send(target: &Target, request: &[u8]) -> Result<Response, String> {
    let mut stream = connect(target)?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("cannot set socket timeouts: {e}"))?;
    let written = stream.write_all(request).and_then(|()| stream.flush());
    match written {
        Ok(()) => read_response(&stream),
        // The server may refuse a request early (bad token, body too
        // large) and close before reading the body; its answer, if it got
        // one out, explains the failure better than the broken pipe does.
        Err(write_error) => read_response(&stream).map_err(|_| {
            if is_timeout(&write_error) {
                format!(
                    "sending the request timed out after {} s",
                    IO_TIMEOUT.as_secs()
                )
            } else {
                format!("sending the request failed: {write_error}")
            }
        }),
    }
}

/// Runs `wshub publish`: exit 0 when the server accepted the message, 1 when
/// it refused or could not be reached, 2 for unusable input.
pub fn run(options: Options) -> ExitCode {
    let token = match resolve_token(options.token, std::env::var_os(TOKEN_ENV)) {
        Ok(token) => token,
        Err(message) => return usage_failure(&message),
    };
    let body = match options.message {
        Some(message) => message,
        None => {
            let mut body = Vec::new();
            if let Err(e) = io::stdin().lock().read_to_end(&mut body) {
                eprintln!("wshub publish: cannot read the message from stdin: {e}");
                return ExitCode::from(1);
            }
            body
        }
    };
    // The server refuses text that is not UTF-8; saying so here also
    // names the fix.
    if !options.binary && std::str::from_utf8(&body).is_err() {
        return usage_failure("the message is not valid UTF-8; use --binary to send it as bytes");
    }
    let request = build_request(
        &options.target,
        &options.channel,
        token.as_deref(),
        options.binary,
        &body,
    );
    match send(&options.target, &request) {
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
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("wshub publish: {message}");
            ExitCode::from(1)
        }
    }
}

fn usage_failure(message: &str) -> ExitCode {
    eprintln!("wshub publish: {message}");
    ExitCode::from(2)
}

/// `<status> <body>`, with the reason phrase standing in for an empty body.
fn describe_failure(response: &Response) -> String {
    let body = String::from_utf8_lossy(&response.body);
    let body = body.trim();
    let detail = if body.is_empty() {
        response.reason.as_str()
    } else {
        body
    };
    format!("{} {detail}", response.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(OsString::from))
    }

    fn options(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Parsed::Publish(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn target(url: &str) -> Target {
        parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn defaults() {
        let o = options(&["news", "hello"]);
        assert_eq!(o.channel, "news");
        assert_eq!(o.message.as_deref(), Some(&b"hello"[..]));
        assert!(!o.binary);
        assert_eq!(o.token, None);
        assert_eq!(o.target, target(DEFAULT_URL));
        assert_eq!(o.target.host, "127.0.0.1");
        assert_eq!(o.target.port, 8080);
        assert_eq!(o.target.prefix, "/publish");
    }

    #[test]
    fn message_omitted_means_stdin() {
        assert_eq!(options(&["news"]).message, None);
    }

    #[test]
    fn option_forms() {
        let o = options(&[
            "--url",
            "http://example.test:9000",
            "--token=abc",
            "--binary",
            "news",
            "hi",
        ]);
        assert_eq!(o.target.host, "example.test");
        assert_eq!(o.target.port, 9000);
        assert_eq!(o.token.as_deref(), Some("abc"));
        assert!(o.binary);
        // Options may follow the positionals.
        let o = options(&["news", "hi", "--url=http://127.0.0.1:1", "--text"]);
        assert_eq!(o.target.port, 1);
        assert!(!o.binary);
        // Repeating the same kind is harmless.
        assert!(options(&["--binary", "--binary", "a"]).binary);
    }

    #[test]
    fn double_dash_ends_options() {
        let o = options(&["--", "news", "--binary"]);
        assert_eq!(o.message.as_deref(), Some(&b"--binary"[..]));
        assert!(!o.binary);
        // A lone "-" is an ordinary message.
        assert_eq!(options(&["news", "-"]).message.as_deref(), Some(&b"-"[..]));
    }

    #[test]
    fn help() {
        assert_eq!(parse(&["--help"]), Ok(Parsed::Help));
        assert_eq!(parse(&["news", "-h"]), Ok(Parsed::Help));
    }

    #[test]
    fn usage_errors() {
        for args in [
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
            &["--url", "https://127.0.0.1", "a"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        let long = "x".repeat(129);
        assert!(parse(&[&long]).is_err());
        assert!(parse(&[&long[..128]]).is_ok());
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
        let parsed = parse_args([OsString::from("--binary"), OsString::from("c"), raw]);
        match parsed {
            Ok(Parsed::Publish(o)) => assert_eq!(o.message, Some(vec![0xff, 0x00, 0x41])),
            other => panic!("{other:?}"),
        }
        // A non-UTF-8 channel is refused, not mangled.
        let bad = OsString::from_vec(vec![0xff]);
        assert!(parse_args([bad]).is_err());
    }

    #[test]
    fn url_forms() {
        let t = target("http://127.0.0.1:8080");
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.prefix.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/publish")
        );
        let t = target("http://127.0.0.1:8080/api/publish");
        assert_eq!(t.prefix, "/api/publish");
        let t = target("http://127.0.0.1:8080/api/publish/");
        assert_eq!(t.prefix, "/api/publish");
        assert_eq!(target("http://127.0.0.1:8080/").prefix, "/publish");
        let t = target("HTTP://Example.test");
        assert_eq!((t.host.as_str(), t.port), ("Example.test", 80));
        assert_eq!(t.authority, "Example.test");
        let t = target("http://[::1]:9000/p");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.authority, "[::1]:9000");
        assert_eq!(t.prefix, "/p");
        assert_eq!(target("http://[::1]").port, 80);
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "ws://127.0.0.1:8080",
            "http://",
            "http://:8080",
            "http://host:",
            "http://host:0",
            "http://host:65536",
            "http://host:8x",
            "http://::1:8080",
            "http://[::1",
            "http://[nope]:80",
            "http://[::1]x",
            "http://user:pw@host",
            "http://host/a?b",
            "http://host/a#b",
            "http://host/a b",
            "http://ho st",
            "http://host\r\nX: y",
            "http://host/a\u{e9}",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_urls_are_refused_by_name() {
        for url in ["https://127.0.0.1:8443", "wss://127.0.0.1", "HTTPS://x"] {
            let err = parse_url(url).unwrap_err();
            assert!(err.contains("not supported"), "{err}");
        }
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
    fn request_bytes() {
        let t = target("http://127.0.0.1:8080");
        let request = build_request(&t, "news", Some("tok"), false, b"hello");
        let want = format!(
            "POST /publish/news HTTP/1.1\r\n\
             Host: 127.0.0.1:8080\r\n\
             User-Agent: wshub/{}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\n\
             Authorization: Bearer tok\r\n\
             Connection: close\r\n\r\nhello",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(request).unwrap(), want);
    }

    #[test]
    fn binary_request_without_token() {
        let t = target("http://[::1]:81/api/pub/");
        let request = build_request(&t, "c", None, true, &[0, 255]);
        let text = String::from_utf8_lossy(&request);
        assert!(
            text.starts_with("POST /api/pub/c HTTP/1.1\r\nHost: [::1]:81\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Type: application/octet-stream\r\n"));
        assert!(text.contains("\r\nContent-Length: 2\r\n"));
        assert!(!text.contains("Authorization"));
        assert!(request.ends_with(b"\r\n\r\n\x00\xff"));
    }

    /// Hands out its data a few bytes per read, as a slow network would.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn response(raw: &str) -> Result<Response, String> {
        read_response(raw.as_bytes())
    }

    #[test]
    fn response_with_content_length() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for step in [1, 3, 1000] {
            let r = read_response(Trickle(raw.as_bytes(), step)).unwrap();
            assert_eq!(
                r,
                Response {
                    status: 200,
                    reason: "OK".into(),
                    body: b"hello".to_vec()
                }
            );
        }
        // Trailing bytes past the length are not part of the body.
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello").unwrap();
        assert_eq!(r.body, b"he");
    }

    #[test]
    fn response_without_length_runs_to_eof() {
        let r = response("HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nno\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (403, &b"no\n"[..]));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        for step in [1, 1000] {
            let r = read_response(Trickle(raw.as_bytes(), step)).unwrap();
            assert_eq!((r.status, r.body.len()), (201, 0));
        }
    }

    #[test]
    fn broken_responses_are_errors() {
        for raw in [
            "",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(response(raw).is_err(), "{raw:?}");
        }
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE_BODY + 1
        );
        assert!(response(&huge).is_err());
        let endless = format!(
            "HTTP/1.1 200 OK\r\nX: {}",
            "a".repeat(MAX_RESPONSE_HEAD * 2)
        );
        assert!(response(&endless).is_err());
    }

    #[test]
    fn failure_description() {
        let r = Response {
            status: 401,
            reason: "Unauthorized".into(),
            body: b"a valid bearer token is required\n".to_vec(),
        };
        assert_eq!(describe_failure(&r), "401 a valid bearer token is required");
        let r = Response {
            status: 502,
            reason: "Bad Gateway".into(),
            body: Vec::new(),
        };
        assert_eq!(describe_failure(&r), "502 Bad Gateway");
    }

    /// Reads one request (head, then a body of its Content-Length) the way
    /// a server would.
    fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                read_some(stream, &mut buf).unwrap() > 0,
                "request head cut short"
            );
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = buf.split_off(head_end);
        while body.len() < length {
            assert!(
                read_some(stream, &mut body).unwrap() > 0,
                "request body cut short"
            );
        }
        (head, body)
    }

    #[test]
    fn publishes_to_a_local_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let (head, body) = read_request(&mut stream);
            let json = "{\"channel\":\"news\",\"recipients\":3}\n";
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
            (head, body)
        });
        let url = format!("http://127.0.0.1:{port}/api/publish");
        let o = options(&["--url", &url, "--token", "s3cret", "news", "hello world"]);
        let request = build_request(
            &o.target,
            &o.channel,
            o.token.as_deref(),
            o.binary,
            o.message.as_deref().unwrap(),
        );
        let response = send(&o.target, &request).unwrap();
        let (head, body) = server.join().unwrap();

        assert!(
            head.starts_with("POST /api/publish/news HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(
            head.contains("\r\nAuthorization: Bearer s3cret\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert_eq!(body, b"hello world");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"channel\":\"news\",\"recipients\":3}\n");
    }

    #[test]
    fn early_refusal_is_reported_even_if_the_body_was_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                assert!(read_some(&mut stream, &mut head).unwrap() > 0);
            }
            stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo big!\n")
                .unwrap();
            // Closing with the body unread may reset the connection; the
            // client must still report the answer it was given.
        });
        let t = target(&format!("http://127.0.0.1:{port}"));
        let request = build_request(&t, "c", None, true, &vec![7u8; 256 * 1024]);
        let result = send(&t, &request);
        server.join().unwrap();
        // A reset can race ahead of the answer; either way it is an error
        // exit, and when the answer wins it must be the server's 413.
        if let Ok(response) = result {
            assert_eq!(response.status, 413);
            assert_eq!(describe_failure(&response), "413 too big!");
        }
    }

    #[test]
    fn unreachable_server_is_an_error() {
        // Bind then drop to get a loopback port nothing listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = target(&format!("http://127.0.0.1:{port}"));
        let err = send(&t, b"x").unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn server_closing_without_answer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
        });
        let t = target(&format!("http://127.0.0.1:{port}"));
        let request = build_request(&t, "c", None, false, b"x");
        let err = send(&t, &request).unwrap_err();
        server.join().unwrap();
        assert!(err.contains("without answering"), "{err}");
    }
}
