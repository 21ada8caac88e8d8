//! The systemd unit files in `systemd/`: `systemd-analyze verify` accepts
//! each, and they carry the settings the daemon relies on; the template for
//! several processes on one port differs from the service only where its
//! instances must.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wshub::config::Config;

use crate::support::daemon::{BIN, require_tool};
use crate::support::tempdir::TempDir;

/// Where the unit expects the binary; the test points it at the one built.
const INSTALLED_BIN: &str = "/usr/local/bin/wshub";
/// The template unit whose instances share one port.
const TEMPLATE: &str = "wshub@.service";

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `key=value` lines of a unit, in order (comments and sections skipped).
fn settings(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// The values of `key=` lines in the unit.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    settings(text)
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

fn value<'a>(text: &'a str, key: &str) -> &'a str {
    match values(text, key).as_slice() {
        [one] => one,
        other => panic!("expected one {key}= line, found {other:?}"),
    }
}

#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    let analyze = require_tool("systemd-analyze");
    let dir = TempDir::new("units");
    for name in ["wshub.service", TEMPLATE] {
        let service = unit(name);
        assert!(
            service.contains(&format!("ExecStart={INSTALLED_BIN} ")),
            "{name}: ExecStart must name {INSTALLED_BIN}"
        );
        // verify checks that ExecStart= is executable, so the copy points at
        // the binary under test.
        dir.write(
            name,
            &service.replace(
                &format!("ExecStart={INSTALLED_BIN}"),
                &format!("ExecStart={BIN}"),
            ),
        );
    }
    dir.write("wshub.socket", &unit("wshub.socket"));
    // An instance is loaded from the template beside it, with %i expanded.
    let output = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("wshub.service"))
        .arg(dir.path().join("wshub.socket"))
        .arg(dir.path().join("wshub@1.service"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed ({}):\n{stdout}{stderr}",
        output.status
    );
    // Warnings (an unknown key, a bad value) do not change the exit status.
    assert!(
        stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify complained:\n{stdout}{stderr}"
    );
}

#[test]
fn service_is_a_hardened_notify_service() {
    let service = unit("wshub.service");
    for (key, want) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        // The handover's state memfd and taking descriptors over.
        (
            "SystemCallFilter",
            "@system-service memfd_create pidfd_open pidfd_getfd",
        ),
    ] {
        assert_eq!(value(&service, key), want, "{key}=");
    }
    assert_eq!(
        value(&service, "ExecStart"),
        format!("{INSTALLED_BIN} --config /etc/wshub/wshub.toml")
    );
    // No capability is granted by default (ports below 1024 are documented).
    assert!(values(&service, "AmbientCapabilities").is_empty());
    let nofile: u64 = value(&service, "LimitNOFILE").parse().unwrap();
    assert!(nofile > 1_000_000, "LimitNOFILE={nofile}");
    // `systemctl restart` hands every connection over through the store.
    let store: u64 = value(&service, "FileDescriptorStoreMax").parse().unwrap();
    assert!(store >= nofile, "FileDescriptorStoreMax={store}");
    // systemd must wait longer than the daemon's own shutdown drain.
    let stop = humantime::parse_duration(value(&service, "TimeoutStopSec")).unwrap();
    let example =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wshub.toml")).unwrap();
    assert!(
        stop > example.shutdown_timeout + Duration::from_secs(5),
        "TimeoutStopSec={stop:?}"
    );
    assert!(values(&service, "WatchdogSec").len() == 1);
    // The socket is optional: the service must not require it.
    assert!(values(&service, "Requires").is_empty());
}

#[test]
fn socket_listens_on_loopback_only_by_default() {
    let socket = unit("wshub.socket");
    for address in values(&socket, "ListenStream") {
        let addr: std::net::SocketAddr = address
            .parse()
            .unwrap_or_else(|_| panic!("ListenStream={address} is not an IP address and port"));
        assert!(addr.ip().is_loopback(), "ListenStream={address}");
    }
    assert!(!values(&socket, "ListenStream").is_empty());
    // One listening socket handed to one daemon, not a process per client.
    assert!(values(&socket, "Accept").iter().all(|v| *v == "no"));
}

#[test]
fn template_instances_run_like_the_service_and_share_one_user() {
    let service = unit("wshub.service");
    let template = unit(TEMPLATE);
    // What the instances need on top of the service's settings: one dynamic
    // user for all (SO_REUSEPORT shares an address among sockets of one
    // user only; an unset User= would be derived from each instance's name)
    // and log lines that say which instance wrote them.
    assert_eq!(value(&template, "User"), "wshub");
    assert!(values(&service, "User").is_empty());
    assert_eq!(value(&template, "SyslogIdentifier"), "wshub@%i");
    assert!(value(&template, "Description").contains("%i"));
    // Everything else is the service's, line for line: the same binary and
    // config file, notify type, watchdog, limits and sandbox.
    let own = ["User", "SyslogIdentifier", "Description"];
    let shared = |text| {
        settings(text)
            .into_iter()
            .filter(|(k, _)| !own.contains(k))
            .collect::<Vec<_>>()
    };
    assert_eq!(shared(&template), shared(&service));
    assert_eq!(value(&template, "WantedBy"), "multi-user.target");
    // The README's install line names the template as it is spelled here.
    assert!(template.contains("systemctl enable --now wshub@{1..8}"));
}
