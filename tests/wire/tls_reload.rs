//! wss:// with the real `wshub` binary: SIGHUP reloads the certificate
//! (new connections get it, open ones are untouched, a broken one is
//! reported and the old one stays), and `--check-config` and start-up
//! report unusable certificate files with their paths.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;
use tungstenite::Message;

use crate::support::client::connect_tcp;
use crate::support::daemon::{BIN, Daemon};
use crate::support::tempdir::TempDir;
use crate::support::tls::{Identity, client_config, peer_cert, wss_connect};

/// A config with one plain and one TLS listener on ephemeral ports.
fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\ncert = {:?}\nkey = {:?}\n\n\
         [[route]]\npath = \"/echo\"\nkind = \"echo\"\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let dir = TempDir::new("reload");
    let first = Identity::new(&[0x11, 0x11]);
    let second = Identity::new(&[0x22, 0x22]);
    let (cert, key) = first.write_to(&dir);
    let config = dir.write("wshub.toml", &tls_config(&cert, &key));
    let mut daemon = Daemon::start(&config, &[]);
    let addr = daemon.tls_listening_address();
    // Trusts both, so the test can see which one it was given.
    let trust = client_config(&[&first.der, &second.der], false);

    let mut old = wss_connect(connect_tcp(addr), trust.clone(), "/echo");
    assert_eq!(peer_cert(old.get_ref()), first.der);

    second.write_to(&dir);
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("new connections use them");
    assert!(line.contains("cert.pem"), "{line}");

    let mut new = wss_connect(connect_tcp(addr), trust.clone(), "/echo");
    let presented = peer_cert(new.get_ref());
    assert_eq!(
        presented, second.der,
        "new connection got the old certificate"
    );
    assert!(
        presented
            .windows(second.serial.len())
            .any(|w| w == second.serial),
        "the new serial is in the certificate"
    );
    new.send(Message::text("new")).unwrap();
    assert_eq!(new.read().unwrap(), Message::text("new"));
    // The connection made before the reload goes on with its session.
    assert_eq!(peer_cert(old.get_ref()), first.der);
    old.send(Message::text("old")).unwrap();
    assert_eq!(old.read().unwrap(), Message::text("old"));

    // A broken certificate is reported; the loaded one stays in use.
    dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    daemon.signal(Signal::HUP);
    let warning = daemon.wait_for_log("stays in use");
    assert!(warning.contains("cert.pem"), "{warning}");
    let mut after = wss_connect(connect_tcp(addr), trust.clone(), "/echo");
    assert_eq!(peer_cert(after.get_ref()), second.der);
    after.send(Message::text("after")).unwrap();
    assert_eq!(after.read().unwrap(), Message::text("after"));

    // A key that does not match is refused the same way.
    let third = Identity::new(&[0x33]);
    dir.write("cert.pem", &third.cert_pem);
    dir.write("key.pem", &first.key_pem);
    daemon.signal(Signal::HUP);
    let warning = daemon.wait_for_log("stays in use");
    assert!(warning.contains("does not match"), "{warning}");
    let after = wss_connect(connect_tcp(addr), trust, "/echo");
    assert_eq!(peer_cert(after.get_ref()), second.der);
    daemon.assert_running();
}

fn check_config(config: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_reads_the_certificate_and_key() {
    let dir = TempDir::new("check");
    let identity = Identity::new(&[0x44]);
    let other = Identity::new(&[0x55]);
    let (cert, key) = identity.write_to(&dir);
    let good = dir.write("good.toml", &tls_config(&cert, &key));
    let (code, stdout, stderr) = check_config(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");

    let missing = dir.path().join("missing.pem");
    let config = dir.write("missing.toml", &tls_config(&missing, &key));
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");

    let other_key = dir.write("other-key.pem", &other.key_pem);
    let config = dir.write("mismatch.toml", &tls_config(&cert, &other_key));
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains("other-key.pem"), "{stderr}");

    let config = dir.write(
        "no-key.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\ncert = \"c.pem\"\n",
    );
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("listener.key"), "{stderr}");
}

#[test]
fn start_fails_with_an_unusable_certificate() {
    let dir = TempDir::new("start");
    let identity = Identity::new(&[0x66]);
    let (_, key) = identity.write_to(&dir);
    let not_a_cert = dir.write("empty.pem", "");
    let config = dir.write("wshub.toml", &tls_config(&not_a_cert, &key));
    let mut daemon = Daemon::start(&config, &[]);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("empty.pem"), "{log}");
    assert!(log.contains("no certificate"), "{log}");
}
