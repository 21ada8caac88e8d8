//! The `wshub` executable: config checking and serving with a config file.

use std::path::Path;
use std::process::{Command, Stdio};

use tungstenite::Message;

use crate::support::client::connect_tcp;
use crate::support::daemon::{BIN, Daemon};
use crate::support::tempdir::TempDir;

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
    let dir = TempDir::new("unknown-key");
    let file = dir.write(
        "wshub.toml",
        "max_conections = 10\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
    );
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(&file)
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
    let dir = TempDir::new("unknown-key-run");
    let file = dir.write("wshub.toml", "[[listener]]\nadress = \"127.0.0.1:0\"\n");
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&file)
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

#[test]
fn binary_serves_echo_on_the_configured_listener() {
    let dir = TempDir::new("serve");
    let file = dir.write(
        "wshub.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nkind = \"echo\"\n",
    );
    let mut daemon = Daemon::start(&file, &[]);
    let addr = daemon.listening_address();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);

    let stream = connect_tcp(addr);
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
    daemon.assert_running();
}
