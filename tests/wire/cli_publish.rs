//! `wshub publish`, the real binary against an in-process server over
//! loopback: http:// and https:// (a self-signed certificate trusted with
//! `--cacert`), text from an argument and binary from stdin, the token from
//! the flag or the environment, a custom prefix, refusals and unreachable
//! servers reported with exit status 1, and usage errors with 2.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use tungstenite::Message;
use wshub::config::{ClientMessages, Config};

use crate::support::client::{RawClient, connect_tcp, op};
use crate::support::http::{published_json, without_position};
use crate::support::server::{TestServer, broadcast_config};
use crate::support::tempdir::TempDir;
use crate::support::tls::{Identity, SERVER_NAME, client_config, tls_listener, wss_connect};

const BIN: &str = env!("CARGO_BIN_EXE_wshub");
const TOKEN_ENV: &str = "WSHUB_PUBLISH_TOKEN";

/// Runs `wshub publish ARGS` with `stdin` as its input and no token in
/// its environment unless `env_token` gives one.
fn publish(args: &[&str], stdin: &[u8], env_token: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("publish")
        .args(args)
        .env_remove(TOKEN_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = env_token {
        command.env(TOKEN_ENV, token);
    }
    let mut child = command.spawn().expect("start wshub publish");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wshub publish finished")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_status(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

fn server(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = broadcast_config(ClientMessages::Ignore, false);
    adjust(&mut config);
    TestServer::with_config(config)
}

fn subscribe(server: &TestServer, channel: &str) -> RawClient {
    RawClient::open(server.addr, &format!("/live/{channel}"))
}

#[test]
fn publishes_text_over_http_and_prints_the_answer() {
    let server = server(|_| {});
    let mut sub = subscribe(&server, "news");
    let url = format!("http://{}", server.addr);
    let output = publish(&["--url", &url, "news", "hello from the cli"], b"", None);
    assert_status(&output, 0);
    assert_eq!(
        without_position(&stdout(&output)),
        published_json("news", 1)
    );
    assert_eq!(sub.expect_text(), "hello from the cli");
}

#[test]
fn publishes_binary_from_stdin() {
    let server = server(|_| {});
    let mut sub = subscribe(&server, "raw");
    let url = format!("http://{}", server.addr);
    let data = [0u8, 255, 1, 254, b'\n'];
    let output = publish(&["--url", &url, "--binary", "raw"], &data, None);
    assert_status(&output, 0);
    assert_eq!(without_position(&stdout(&output)), published_json("raw", 1));
    assert_eq!(sub.expect_message(op::BINARY), data);
}

#[test]
fn text_that_is_not_utf8_is_refused_before_sending() {
    let server = server(|_| {});
    let url = format!("http://{}", server.addr);
    let output = publish(&["--url", &url, "news"], &[0xff, 0xfe], None);
    assert_status(&output, 2);
    assert!(stderr(&output).contains("--binary"), "{}", stderr(&output));
}

#[test]
fn a_path_in_the_url_is_the_publish_prefix() {
    let server = server(|config| config.publish_prefix = "/api/pub".to_owned());
    let mut sub = subscribe(&server, "news");
    let url = format!("http://{}/api/pub/", server.addr);
    let output = publish(&["--url", &url, "news", "prefixed"], b"", None);
    assert_status(&output, 0);
    assert_eq!(sub.expect_text(), "prefixed");
    // The default prefix is not served there: the server's answer is
    // reported with its status, and the exit status is 1.
    let url = format!("http://{}", server.addr);
    let output = publish(&["--url", &url, "news", "lost"], b"", None);
    assert_status(&output, 1);
    assert!(
        stderr(&output).starts_with("publish failed: 404"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_token_comes_from_the_flag_or_the_environment() {
    let server = server(|config| config.publish_token = Some("s3cret".into()));
    let mut sub = subscribe(&server, "news");
    let url = format!("http://{}", server.addr);

    let output = publish(&["--url", &url, "news", "no token"], b"", None);
    assert_status(&output, 1);
    assert!(
        stderr(&output).starts_with("publish failed: 401"),
        "{}",
        stderr(&output)
    );

    let output = publish(&["--url", &url, "news", "from env"], b"", Some("s3cret"));
    assert_status(&output, 0);
    assert_eq!(sub.expect_text(), "from env");

    let output = publish(
        &["--url", &url, "--token", "s3cret", "news", "from flag"],
        b"",
        Some("wrong"),
    );
    assert_status(&output, 0);
    assert_eq!(sub.expect_text(), "from flag");

    let output = publish(
        &["--url", &url, "--token", "wrong", "news", "bad flag"],
        b"",
        None,
    );
    assert_status(&output, 1);
    assert!(!stderr(&output).contains("wrong"), "{}", stderr(&output));

    // A token the server could never accept is a usage error, and the
    // message does not repeat it.
    let output = publish(&["--url", &url, "news", "x"], b"", Some("has space"));
    assert_status(&output, 2);
    assert!(
        !stderr(&output).contains("has space"),
        "{}",
        stderr(&output)
    );
    sub.expect_silence(std::time::Duration::from_millis(100));
}

#[test]
fn an_unreachable_server_exits_1() {
    // Bind then drop to get a loopback port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = publish(&["--url", &url, "news", "x"], b"", None);
    assert_status(&output, 1);
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    for args in [
        &["bad channel", "x"][..],
        &[],
        &["--url", "ws://127.0.0.1:1", "news", "x"],
        &[
            "--url",
            "http://127.0.0.1:1",
            "--cacert",
            "ca.pem",
            "news",
            "x",
        ],
        &["--text", "--binary", "news", "x"],
    ] {
        let output = publish(args, b"", None);
        assert_status(&output, 2);
        assert!(!stderr(&output).is_empty(), "{args:?}");
    }
    let output = publish(&["--help"], b"", None);
    assert_status(&output, 0);
    for needle in ["--cacert", "https://", TOKEN_ENV] {
        assert!(stdout(&output).contains(needle), "{needle}");
    }
}

/// A server whose only listener is TLS with a fresh self-signed
/// certificate for `localhost`, written to `dir`.
fn tls_server(dir: &TempDir) -> (TestServer, Identity) {
    let identity = Identity::new(&[0x0c, 0x11]);
    let server = server(|config| config.listeners = vec![tls_listener(&identity, dir)]);
    (server, identity)
}

#[test]
fn publishes_over_https_with_a_private_certificate() {
    let dir = TempDir::new("cli-publish");
    let (server, identity) = tls_server(&dir);
    let mut sub = wss_connect(
        connect_tcp(server.addr),
        client_config(&[&identity.der], false),
        "/live/news",
    );
    let ca = dir.write("ca.pem", &identity.cert_pem);
    let ca = ca.to_str().expect("temp paths are UTF-8");
    let url = format!("https://{SERVER_NAME}:{}", server.addr.port());

    let output = publish(
        &["--url", &url, "--cacert", ca, "news", "over tls"],
        b"",
        None,
    );
    assert_status(&output, 0);
    assert_eq!(
        without_position(&stdout(&output)),
        published_json("news", 1)
    );
    assert_eq!(sub.read().unwrap(), Message::text("over tls"));

    // Without --cacert the built-in public roots do not trust it, and the
    // error names the fix.
    let output = publish(&["--url", &url, "news", "untrusted"], b"", None);
    assert_status(&output, 1);
    assert!(stderr(&output).contains("--cacert"), "{}", stderr(&output));

    // Another certificate is not trusted either.
    let other = dir.write("other.pem", &Identity::new(&[0x0d]).cert_pem);
    let other = other.to_str().expect("temp paths are UTF-8");
    let output = publish(
        &["--url", &url, "--cacert", other, "news", "wrong ca"],
        b"",
        None,
    );
    assert_status(&output, 1);

    // Plain HTTP to the TLS port gets no answer.
    let plain = format!("http://{}", server.addr);
    let output = publish(&["--url", &plain, "news", "plaintext"], b"", None);
    assert_status(&output, 1);
}
