//! Tests of parsing as a whole: defaults, the embedded and example files,
//! and how parse errors read.
//!
//! Owns: the literal list of documented defaults and the helpers the
//! submodules' tests share.
//! Must never: hold the tests of a validation rule; those live beside the
//! code that enforces it.

use std::time::Duration;

use log::LevelFilter;

use super::values::{LOG_LEVELS, log_level_name};
use super::*;

/// The documented defaults, written out literally so that a changed
/// default shows up as a failing test, not a silent behaviour change.
fn documented_defaults() -> Config {
    Config {
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            reuse_port: false,
        }],
        routes: vec![RouteConfig {
            path: "/echo".into(),
            kind: RouteKind::Echo,
            client_messages: ClientMessages::Ignore,
            echo_to_sender: false,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            compression: Compression::Off,
            compression_level: 6,
            compression_min_size: 128,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            max_replay: 1000,
            auth: None,
        }],
        max_connections: 100_000,
        max_message_size: 16_777_216,
        max_frame_size: 16_777_216,
        max_backlog_bytes: 1_048_576,
        handshake_timeout: Duration::from_secs(10),
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(120),
        publish_prefix: "/publish".into(),
        publish_token: None,
        publish_auth: None,
        auth: Default::default(),
        max_channels_per_connection: 16,
        on_backlog: OnBacklog::Close,
        shutdown_timeout: Duration::from_secs(10),
        shutdown_spread: Duration::ZERO,
        shutdown_close_code: 1001,
        handover: true,
        log_level: None,
        allowed_origins: Vec::new(),
        max_connections_per_ip: 0,
        history_max_bytes: 67_108_864,
        cluster: None,
        page: false,
    }
}

pub(super) fn parse_err(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
        Err(ConfigError::Parse(msg)) => msg,
        Err(other) => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

/// Returns the key of the `Invalid` error `text` must produce.
pub(super) fn invalid_key(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(other) => panic!("expected a validation error for {text:?}, got {other:?}"),
    }
}

/// A config with one broadcast route at `/live` and `options` added to
/// its table.
pub(super) fn broadcast_route(options: &str) -> String {
    format!("[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n{options}\n")
}

/// `prefix` as the publish prefix next to the given routes.
pub(super) fn with_publish_prefix(prefix: &str, routes: &str) -> String {
    format!("publish_prefix = {prefix:?}\n{routes}")
}

#[test]
fn empty_file_uses_all_defaults() {
    assert_eq!(Config::from_toml_str("").unwrap(), documented_defaults());
    assert_eq!(Config::default(), documented_defaults());
}

/// What `wshub` runs with when given no file: the defaults plus a broadcast
/// route at `/live` beside `/echo`, and the watch page.
fn embedded_config() -> Config {
    let mut config = documented_defaults();
    config
        .routes
        .push(RouteConfig::new("/live", RouteKind::Broadcast));
    config.page = true;
    config
}

#[test]
fn embedded_default_serves_echo_and_live() {
    let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML).unwrap();
    assert_eq!(parsed, embedded_config());
    assert_eq!(Config::embedded(), embedded_config());
    // Publishing needs no token from loopback, so the README's curl works.
    assert_eq!(parsed.publish_token, None);
    assert_eq!(parsed.publish_prefix, "/publish");
}

#[test]
fn example_file_documents_the_defaults() {
    // The production example leaves the watch page off; all else is what
    // `wshub` runs with when given no file.
    let example = Config::from_toml_str(include_str!("../../config/wshub.toml")).unwrap();
    let mut expected = embedded_config();
    expected.page = false;
    assert_eq!(example, expected);
}

#[test]
fn the_page_cannot_share_its_path_with_a_route() {
    let text = "page = true\n[[route]]\npath = \"/\"\nkind = \"echo\"\n";
    assert_eq!(invalid_key(text), "page");
    let text = "page = false\n[[route]]\npath = \"/\"\nkind = \"echo\"\n";
    assert!(Config::from_toml_str(text).is_ok());
}

/// The keys a table accepts, as serde's derive lists them: a deserializer
/// that records the field list it is asked for and then gives up.
fn keys_of<T: for<'de> serde::Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};

    struct Lister<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Lister<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a table"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("listed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(Lister(&mut keys));
    keys
}

#[test]
fn example_file_documents_every_key() {
    let example = include_str!("../../config/wshub.toml");
    // A key is documented by a line, commented out or not, that starts with
    // it: `key = value`, `# key = value`, `#   key - what it does`, or
    // names its table: `[[key]]`.
    let documented = |key: &str| {
        example.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ', '[']);
            line.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(']'))
        })
    };
    let tables = [
        keys_of::<Config>(),
        keys_of::<ListenerConfig>(),
        keys_of::<RouteConfig>(),
        keys_of::<ClusterConfig>(),
        keys_of::<super::AuthConfig>(),
    ];
    for keys in tables {
        assert!(keys.len() > 3, "{keys:?}");
        for key in keys {
            assert!(
                documented(key),
                "config/wshub.toml does not document `{key}`"
            );
        }
    }
}

#[test]
fn example_file_commented_out_settings_are_valid() {
    // The commented examples are meant to be uncommented as they are.
    let example = include_str!("../../config/wshub.toml");
    let options = "# client_messages = \"ignore\"\n# echo_to_sender = false\n";
    let token = "# publish_token = \"change-me-to-a-long-random-string\"\n";
    let level = "# log_level = \"info\"\n";
    let compression =
        "# compression = \"off\"\n# compression_level = 6\n# compression_min_size = 128\n";
    for commented in [options, token, level, compression] {
        assert!(example.contains(commented), "{commented}");
    }
    let uncommented = [options, token, level, compression]
        .iter()
        .fold(example.to_owned(), |text, commented| {
            text.replace(commented, &commented.replace("# ", ""))
        });
    let c = Config::from_toml_str(&uncommented).unwrap();
    assert_eq!(c.routes, embedded_config().routes);
    assert!(c.publish_token.is_some());
    assert_eq!(c.log_level, Some(LevelFilter::Info));
}

#[test]
fn every_setting_can_be_overridden() {
    let text = r#"
        max_connections = 10
        max_message_size = 2048
        max_frame_size = 1024
        max_backlog_bytes = 4096
        handshake_timeout = "500ms"
        ping_interval = "0s"
        pong_timeout = "0s"
        close_timeout = "1s"
        idle_timeout = "2m"
        publish_prefix = "/api/publish"
        publish_token = "s3cret-Token_~"
        max_channels_per_connection = 4
        on_backlog = "drop"
        shutdown_timeout = "30s"
        shutdown_spread = "20s"
        shutdown_close_code = 1012
        log_level = "debug"
        history_max_bytes = 1000000

        [[listener]]
        address = "127.0.0.1:9000"

        [[listener]]
        address = "[::1]:9000"

        [[route]]
        path = "/a"
        kind = "echo"

        [[route]]
        path = "/b/c"
        kind = "echo"

        [[route]]
        path = "/live"
        kind = "broadcast"
        client_messages = "broadcast"
        echo_to_sender = true
        history_size = 50
        history_ttl = "1h"
        max_replay = 20
    "#;
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.max_connections, 10);
    assert_eq!(c.max_message_size, 2048);
    assert_eq!(c.max_frame_size, 1024);
    assert_eq!(c.max_backlog_bytes, 4096);
    assert_eq!(c.handshake_timeout, Duration::from_millis(500));
    assert_eq!(c.ping_interval, Duration::ZERO);
    assert_eq!(c.pong_timeout, Duration::ZERO);
    assert_eq!(c.close_timeout, Duration::from_secs(1));
    assert_eq!(c.idle_timeout, Duration::from_secs(120));
    let addrs: Vec<String> = c.listeners.iter().map(|l| l.address.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:9000", "[::1]:9000"]);
    assert_eq!(c.publish_prefix, "/api/publish");
    assert_eq!(c.publish_token.as_deref(), Some("s3cret-Token_~"));
    assert_eq!(c.max_channels_per_connection, 4);
    assert_eq!(c.on_backlog, OnBacklog::Drop);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.shutdown_spread, Duration::from_secs(20));
    assert_eq!(c.shutdown_close_code, CLOSE_SERVICE_RESTART);
    assert_eq!(c.log_level, Some(LevelFilter::Debug));
    assert_eq!(c.history_max_bytes, 1_000_000);
    let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b/c", "/live"]);
    assert_eq!(
        c.routes[2],
        RouteConfig {
            path: "/live".into(),
            kind: RouteKind::Broadcast,
            client_messages: ClientMessages::Broadcast,
            echo_to_sender: true,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            compression: Compression::Off,
            compression_level: 6,
            compression_min_size: 128,
            history_size: 50,
            history_ttl: Duration::from_secs(3600),
            max_replay: 20,
            auth: None,
        }
    );
}

#[test]
fn tables_replace_defaults_rather_than_adding_to_them() {
    let c = Config::from_toml_str("[[route]]\npath = \"/x\"\nkind = \"echo\"\n").unwrap();
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].path, "/x");
    assert_eq!(c.listeners, documented_defaults().listeners);
}

#[test]
fn unknown_top_level_key_names_key_and_line() {
    let msg = parse_err("max_connections = 5\nmax_conections = 5\n");
    assert!(msg.contains("max_conections"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn unknown_top_level_key_on_first_line() {
    let msg = parse_err("max_conections = 5");
    assert!(msg.contains("max_conections"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn bad_duration_is_rejected_with_line() {
    let msg = parse_err("idle_timeout = \"1s\"\nping_interval = \"10 parsecs\"\n");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("parsecs"), "{msg}");
}

#[test]
fn duration_must_be_a_string() {
    let msg = parse_err("ping_interval = 30\n");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn wrong_types_are_rejected_with_line() {
    for text in [
        "max_connections = \"many\"",
        "max_connections = -1",
        "max_message_size = 1.5",
        "max_backlog_bytes = true",
        "listener = \"127.0.0.1:8080\"",
        "route = 3",
        "[[listener]]\naddress = 8080",
        "[[route]]\npath = 1\nkind = \"echo\"",
    ] {
        let msg = parse_err(text);
        assert!(msg.contains("line "), "{text}: {msg}");
    }
}

#[test]
fn syntax_error_is_a_parse_error() {
    let msg = parse_err("max_connections = \n");
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn empty_table_lists_are_rejected() {
    assert_eq!(invalid_key("listener = []"), "listener");
    assert_eq!(invalid_key("route = []"), "route");
}

#[test]
fn invalid_error_message_names_key() {
    let err = Config::from_toml_str("max_connections = 0").unwrap_err();
    assert!(err.to_string().contains("`max_connections`"), "{err}");
}

#[test]
fn load_prefixes_parse_errors_with_path() {
    let dir = std::env::temp_dir().join(format!("wshub-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let err = Config::load(&file).unwrap_err();
    let msg = err.to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
    assert!(msg.starts_with(&file.display().to_string()), "{msg}");
    assert!(
        msg.contains("max_conections") && msg.contains("line 1"),
        "{msg}"
    );
}

#[test]
fn load_reports_missing_file() {
    let file = std::env::temp_dir().join("wshub-config-test-does-not-exist.toml");
    let err = Config::load(&file).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn on_backlog_values_parse() {
    for (text, want) in [("close", OnBacklog::Close), ("drop", OnBacklog::Drop)] {
        let c = Config::from_toml_str(&format!("on_backlog = {text:?}")).unwrap();
        assert_eq!(c.on_backlog, want);
        assert_eq!(want.to_string(), text);
    }
}

#[test]
fn unknown_enum_values_are_rejected_with_line() {
    let msg = parse_err("max_connections = 5\non_backlog = \"block\"\n");
    assert!(msg.contains("block") && msg.contains("line 2"), "{msg}");
    // Values are lowercase, like every other name in the file.
    let msg = parse_err("on_backlog = \"Close\"");
    assert!(msg.contains("line 1"), "{msg}");
    let msg = parse_err(&broadcast_route("client_messages = \"relay\""));
    assert!(msg.contains("relay") && msg.contains("line 4"), "{msg}");
    let msg = parse_err(&broadcast_route("echo_to_sender = \"yes\""));
    assert!(msg.contains("line 4"), "{msg}");
}

#[test]
fn log_level_names() {
    for (name, level) in LOG_LEVELS {
        let c = Config::from_toml_str(&format!("log_level = {name:?}")).unwrap();
        assert_eq!(c.log_level, Some(level));
        assert_eq!(log_level_name(level), name);
    }
    for bad in ["INFO", "verbose", ""] {
        let msg = parse_err(&format!("max_connections = 5\nlog_level = {bad:?}"));
        assert!(msg.contains("line 2") && msg.contains("log level"), "{msg}");
    }
}
