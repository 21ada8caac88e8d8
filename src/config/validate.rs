//! The rules a whole config must follow that its types cannot express.
//!
//! Owns: [`Config::validate`] and the rules of the top-level settings
//! (limits, timeouts, shutdown, origins, the publish token and prefix); the
//! listener and route rules live beside their types.
//! Must never: change a config, or quote the publish token in a message.

use super::auth::check_auth;
use super::listener::check_listeners;
use super::route::{
    PAGE_PATH, RESERVED_PATHS, check_path_syntax, check_routes, is_path_prefix, paths_overlap,
};
use super::{CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART, Config, ConfigError};

/// The one rule for what a bearer token may be: non-empty visible ASCII, so
/// it survives an HTTP header verbatim and compares byte for byte with what
/// clients send. The message never quotes the token.
pub fn check_publish_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must consist of visible ASCII characters only (no spaces, control or non-ASCII characters)"
                .to_owned(),
        );
    }
    Ok(())
}

impl Config {
    /// Checks the rules the type system cannot express. Parsing already
    /// calls this; it is public for configs built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = [
            ("max_connections", self.max_connections == 0),
            ("max_message_size", self.max_message_size == 0),
            ("max_frame_size", self.max_frame_size == 0),
            ("max_backlog_bytes", self.max_backlog_bytes == 0),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("close_timeout", self.close_timeout.is_zero()),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection == 0,
            ),
            ("shutdown_timeout", self.shutdown_timeout.is_zero()),
            ("history_max_bytes", self.history_max_bytes == 0),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::invalid(key, "must be greater than 0"));
        }
        if self.max_frame_size > self.max_message_size {
            // A frame bigger than the message limit could never be accepted,
            // so such a setting is a mistake rather than a preference.
            return Err(ConfigError::invalid(
                "max_frame_size",
                format!(
                    "{} is larger than max_message_size ({}); a frame can never exceed the message it belongs to",
                    self.max_frame_size, self.max_message_size
                ),
            ));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "pong_timeout",
                "must be greater than 0 while ping_interval is enabled",
            ));
        }
        for origin in &self.allowed_origins {
            check_origin(origin).map_err(|why| {
                ConfigError::invalid("allowed_origins", format!("{origin:?} {why}"))
            })?;
        }
        self.validate_shutdown()?;
        check_auth(self)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Some(token) = &self.publish_token {
            check_publish_token(token).map_err(|why| {
                let hint = if token.is_empty() {
                    "; remove the setting to let only loopback clients publish"
                } else {
                    ""
                };
                ConfigError::invalid("publish_token", format!("{why}{hint}"))
            })?;
        }
        check_listeners(&self.listeners)?;
        check_routes(&self.routes)?;
        if self.page && self.routes.iter().any(|r| r.path == PAGE_PATH) {
            return Err(ConfigError::invalid(
                "page",
                format!(
                    "the watch page is served at {PAGE_PATH:?}, where a route is;                      set page = false or move the route"
                ),
            ));
        }
        self.validate_publish_prefix()
    }

    fn validate_shutdown(&self) -> Result<(), ConfigError> {
        if self.shutdown_spread > self.shutdown_timeout {
            return Err(ConfigError::invalid(
                "shutdown_spread",
                format!(
                    "{} is longer than shutdown_timeout ({}); every close must be sent before the server gives up waiting",
                    humantime::format_duration(self.shutdown_spread),
                    humantime::format_duration(self.shutdown_timeout)
                ),
            ));
        }
        if ![CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART].contains(&self.shutdown_close_code) {
            return Err(ConfigError::invalid(
                "shutdown_close_code",
                format!(
                    "{} is not allowed; use {CLOSE_GOING_AWAY} (going away) or {CLOSE_SERVICE_RESTART} (service restart)",
                    self.shutdown_close_code
                ),
            ));
        }
        Ok(())
    }

    fn validate_publish_prefix(&self) -> Result<(), ConfigError> {
        let prefix = &self.publish_prefix;
        let invalid =
            |why: String| ConfigError::invalid("publish_prefix", format!("{prefix:?} {why}"));
        check_path_syntax(prefix).map_err(|why| invalid(why.to_owned()))?;
        if prefix == "/" {
            // The channel follows the prefix after a `/`, so "/" would make
            // publish paths start with "//" and claim the whole server.
            return Err(invalid(
                "must name a path such as \"/publish\", not the root".to_owned(),
            ));
        }
        for (reserved, _) in RESERVED_PATHS {
            if is_path_prefix(prefix, reserved) {
                return Err(invalid(format!(
                    "would cover {reserved:?}, which the server answers itself"
                )));
            }
        }
        for r in &self.routes {
            if paths_overlap(prefix, &r.path) {
                return Err(invalid(format!(
                    "overlaps route {:?}; publish requests and WebSocket routes need separate paths",
                    r.path
                )));
            }
        }
        Ok(())
    }
}

/// An origin as browsers send it: `null`, or `scheme://host[:port]` with no
/// path, in ASCII.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "null" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(
            "is not an origin: expected scheme://host[:port], e.g. \"https://app.example\"",
        );
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err("has an invalid scheme");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err("must be scheme://host[:port] with no path (browsers send no trailing slash)");
    }
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be ASCII without spaces (write internationalized hosts in punycode)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{invalid_key, parse_err, with_publish_prefix};
    use super::*;

    #[test]
    fn zero_sizes_and_counts_are_rejected() {
        for key in [
            "max_connections",
            "max_message_size",
            "max_frame_size",
            "max_backlog_bytes",
        ] {
            assert_eq!(invalid_key(&format!("{key} = 0")), key);
        }
    }

    #[test]
    fn frame_size_may_not_exceed_message_size() {
        assert_eq!(
            invalid_key("max_message_size = 1000\nmax_frame_size = 1001"),
            "max_frame_size"
        );
        // Equal is the inclusive boundary and allowed.
        let c = Config::from_toml_str("max_message_size = 1000\nmax_frame_size = 1000").unwrap();
        assert_eq!(c.max_frame_size, 1000);
        // Lowering only the message limit below the default frame size trips it too.
        assert_eq!(invalid_key("max_message_size = 1000"), "max_frame_size");
    }

    #[test]
    fn zero_handshake_and_close_timeouts_are_rejected() {
        assert_eq!(
            invalid_key("handshake_timeout = \"0s\""),
            "handshake_timeout"
        );
        assert_eq!(invalid_key("close_timeout = \"0ms\""), "close_timeout");
    }

    #[test]
    fn pong_timeout_required_only_while_pinging() {
        assert_eq!(invalid_key("pong_timeout = \"0s\""), "pong_timeout");
        let c = Config::from_toml_str("ping_interval = \"0s\"\npong_timeout = \"0s\"").unwrap();
        assert!(c.ping_interval.is_zero());
    }

    #[test]
    fn zero_idle_timeout_disables_it() {
        let c = Config::from_toml_str("idle_timeout = \"0s\"").unwrap();
        assert!(c.idle_timeout.is_zero());
    }

    #[test]
    fn publish_prefix_syntax() {
        for good in [
            "/p",
            "/api/publish",
            "/publish-v2",
            "/healthz/pub",
            "/metricsx",
        ] {
            let c = Config::from_toml_str(&with_publish_prefix(good, "")).unwrap();
            assert_eq!(c.publish_prefix, good);
        }
        for bad in [
            "",
            "publish",
            "/",
            "/publish/",
            "/p?x",
            "/p#x",
            "/p q",
            "/p\t",
        ] {
            assert_eq!(
                invalid_key(&with_publish_prefix(bad, "")),
                "publish_prefix",
                "{bad:?}"
            );
        }
        // Spelled as TOML here: Rust's `{:?}` writes escapes like `\u{7f}`,
        // which TOML does not accept.
        for bad in [r#""/p\u007f""#, r#""/p\u0000""#, r#""/p\u00a0""#] {
            assert_eq!(
                invalid_key(&format!("publish_prefix = {bad}")),
                "publish_prefix",
                "{bad}"
            );
        }
    }

    #[test]
    fn publish_prefix_may_not_cover_server_paths() {
        for bad in ["/healthz", "/metrics"] {
            assert_eq!(
                invalid_key(&with_publish_prefix(bad, "")),
                "publish_prefix",
                "{bad}"
            );
        }
    }

    #[test]
    fn publish_prefix_may_not_overlap_routes() {
        for (prefix, route, kind) in [
            ("/echo", "/echo", "echo"),
            ("/echo/p", "/echo", "echo"),
            ("/api", "/api/ws", "echo"),
            ("/live", "/live", "broadcast"),
            ("/live/pub", "/live", "broadcast"),
            ("/x", "/x/live", "broadcast"),
        ] {
            let routes = format!("[[route]]\npath = {route:?}\nkind = {kind:?}\n");
            assert_eq!(
                invalid_key(&with_publish_prefix(prefix, &routes)),
                "publish_prefix",
                "{prefix} vs {route}"
            );
        }
        // The default prefix against a route that only shares letters.
        let routes = "[[route]]\npath = \"/publisher\"\nkind = \"broadcast\"\n";
        assert!(Config::from_toml_str(routes).is_ok());
        // The default prefix collides with a route placed under it.
        let routes = "[[route]]\npath = \"/publish/ws\"\nkind = \"echo\"\n";
        assert_eq!(invalid_key(routes), "publish_prefix");
    }

    #[test]
    fn publish_token_rules() {
        let c = Config::from_toml_str("publish_token = \"abc!~XYZ\"").unwrap();
        assert_eq!(c.publish_token.as_deref(), Some("abc!~XYZ"));
        for bad in [
            r#""""#,
            r#""two words""#,
            r#""tab\there""#,
            r#""new\nline""#,
            r#""del\u007f""#,
            r#""caf\u00e9""#,
        ] {
            assert_eq!(
                invalid_key(&format!("publish_token = {bad}")),
                "publish_token",
                "{bad}"
            );
        }
        let msg = parse_err("publish_token = 42");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn publish_token_rule_is_public_and_names_no_setting() {
        assert_eq!(check_publish_token("abc!~XYZ"), Ok(()));
        assert_eq!(check_publish_token(""), Err("must not be empty".to_owned()));
        let err = check_publish_token("two words").unwrap_err();
        assert!(err.starts_with("must consist of visible ASCII"), "{err}");
        assert!(!err.contains("two"), "{err}");
        // Only the config adds how to go without a token.
        match Config::from_toml_str("publish_token = \"\"") {
            Err(ConfigError::Invalid { message, .. }) => {
                assert!(message.contains("remove the setting"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_token_is_never_shown() {
        let c = Config::from_toml_str("publish_token = \"hunter2hunter2\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("publish_token"), "{shown}");
        let err = Config::from_toml_str("publish_token = \"hunter2 hunter2\"").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn zero_channels_per_connection_is_rejected() {
        assert_eq!(
            invalid_key("max_channels_per_connection = 0"),
            "max_channels_per_connection"
        );
        let c = Config::from_toml_str("max_channels_per_connection = 1").unwrap();
        assert_eq!(c.max_channels_per_connection, 1);
    }

    #[test]
    fn shutdown_settings_are_checked() {
        assert_eq!(invalid_key("shutdown_timeout = \"0s\""), "shutdown_timeout");
        assert_eq!(
            invalid_key("shutdown_timeout = \"5s\"\nshutdown_spread = \"6s\""),
            "shutdown_spread"
        );
        // Spreading over the whole window is allowed.
        let c =
            Config::from_toml_str("shutdown_timeout = \"5s\"\nshutdown_spread = \"5s\"").unwrap();
        assert_eq!(c.shutdown_spread, Duration::from_secs(5));
        for code in [1000, 1002, 1011, 1013, 4000] {
            assert_eq!(
                invalid_key(&format!("shutdown_close_code = {code}")),
                "shutdown_close_code",
                "{code}"
            );
        }
        for code in [CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART] {
            let c = Config::from_toml_str(&format!("shutdown_close_code = {code}")).unwrap();
            assert_eq!(c.shutdown_close_code, code);
        }
        let msg = parse_err("shutdown_close_code = \"1001\"");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn origins_must_be_serialized_origins() {
        for good in [
            "https://app.example",
            "http://127.0.0.1:8080",
            "null",
            "app+x://h",
        ] {
            let text = format!("allowed_origins = [{good:?}]");
            let c = Config::from_toml_str(&text).unwrap();
            assert_eq!(c.allowed_origins, [good]);
        }
        for bad in [
            "app.example",
            "https://app.example/",
            "https://app.example/path",
            "https://",
            "1http://x",
            "https://a b",
            "https://bücher.example",
        ] {
            let text = format!("allowed_origins = [{bad:?}]");
            assert_eq!(invalid_key(&text), "allowed_origins", "{bad}");
        }
    }

    #[test]
    fn per_ip_limit_defaults_off_and_parses() {
        assert_eq!(Config::default().max_connections_per_ip, 0);
        let c = Config::from_toml_str("max_connections_per_ip = 4").unwrap();
        assert_eq!(c.max_connections_per_ip, 4);
    }
}
