//! The `wshub` executable: config checking and serving with a config file.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::IO_TIMEOUT;
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_wshub");

/// A file in the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "wshub-itest-{}-{tag}-{nanos}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running child process, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_config_accepts_the_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wshub.toml");
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_config_rejects_an_unknown_key_and_names_it() {
    let file = TempFile::new(
        "unknown-key",
        "max_conections = 10\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
    );
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a misspelled key must fail");
    assert!(
        stderr.contains("max_conections"),
        "stderr must name the key: {stderr}"
    );
}

#[test]
fn run_refuses_a_config_with_an_unknown_key() {
    let file = TempFile::new(
        "unknown-key-run",
        "[[listener]]\nadress = \"127.0.0.1:0\"\n",
    );
    let output = Command::new(BIN)
        .arg("--config")
        .arg(file.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("adress"),
        "stderr must name the key: {stderr}"
    );
}

/// Waits for the `listening on ws://ADDR` log line on the child's stderr.
fn listening_address(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never
                // blocks on a full pipe.
                continue;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no `listening on` line ({e}); stderr so far: {seen:#?}"));
        if let Some((_, rest)) = line.split_once("listening on ws://") {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|_| panic!("cannot parse address in {line:?}"));
        }
        seen.push(line);
    }
}

#[test]
fn binary_serves_echo_on_the_configured_listener() {
    let file = TempFile::new(
        "serve",
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nkind = \"echo\"\n",
    );
    let child = Command::new(BIN)
        .arg("--config")
        .arg(file.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    let addr = listening_address(&mut daemon.0);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);

    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut ws, response) =
        tungstenite::client::client(format!("ws://{addr}/echo"), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello from the binary test"))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::text("hello from the binary test")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected message {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close failed: {e}"),
        }
    }
    // Still running after serving a client.
    assert!(daemon.0.try_wait().unwrap().is_none(), "daemon exited");
}
