//! `[[route]]` and the request-path rules every configured path follows.
//!
//! Owns: [`RouteConfig`] and its per-route defaults, turning a table as
//! written into one (broadcast-only options refused on other kinds by name),
//! the paths the server answers itself, and the path syntax and overlap
//! rules shared by routes and the publish prefix.
//! Must never: match requests (that is `crate::route`), or let a path
//! through that cannot be matched or that would break the `/metrics` text.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::{ClientMessages, Compression, ConfigError, RouteKind, values};
use crate::protocol::deflate::DeflateConfig;

/// Request path answered by the server itself, so no route may claim it.
pub const HEALTH_CHECK_PATH: &str = "/healthz";

/// Request path of the server's metrics endpoint, so no route may claim it.
pub const METRICS_PATH: &str = "/metrics";

/// Request path of the watch page, when `page = true`.
pub const PAGE_PATH: &str = "/";

/// The paths above and what answers them, for error messages.
pub(super) const RESERVED_PATHS: [(&str, &str); 2] = [
    (HEALTH_CHECK_PATH, "the health check"),
    (METRICS_PATH, "the metrics endpoint"),
];

/// The echo route served when the file has no `[[route]]`.
pub(super) const DEFAULT_ROUTE_PATH: &str = "/echo";

/// One request path and what happens to connections made on it.
///
/// A struct rather than a bare kind so that kinds needing extra settings can
/// add optional fields here without changing the file layout.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RouteTable")]
pub struct RouteConfig {
    /// Starts with `/` and does not end with one (unless it is exactly `/`).
    /// Echo routes match this path exactly; broadcast routes match it as a
    /// prefix: `<path>/<channel>` or `<path>?channel=...`.
    pub path: String,
    pub kind: RouteKind,
    /// What a subscriber's own messages do. Always the default
    /// ([`ClientMessages::Ignore`]) on echo routes.
    pub client_messages: ClientMessages,
    /// With [`ClientMessages::Broadcast`], also send a message back to its
    /// sender. Always false unless `client_messages` is `Broadcast`.
    pub echo_to_sender: bool,
    /// `Sec-WebSocket-Protocol` values the route speaks; the server answers
    /// with the first one the client offers (in the client's order).
    pub subprotocols: Vec<String>,
    /// Refuse (400) clients that offer none of `subprotocols`.
    pub require_subprotocol: bool,
    /// permessage-deflate (RFC 7692): accept the client's offer. Any kind.
    pub compression: Compression,
    /// zlib level, 0 (stored) to 9 (smallest), for messages sent on it.
    pub compression_level: u32,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub compression_min_size: usize,
    /// Broadcast only: keep the last this many messages of each channel so
    /// that reconnecting clients can recover what they missed; 0 keeps no
    /// history. Channels are shared by every broadcast route, so every
    /// route that keeps history keeps the same (see [`Config::history`]).
    pub history_size: usize,
    /// Broadcast only: how long a message stays in history; above 0.
    pub history_ttl: Duration,
    /// Broadcast only: the most messages one client may recover per channel
    /// on connecting; a client that missed more is told it cannot recover.
    pub max_replay: usize,
    /// Names an `[auth.<name>]` key set: an upgrade then needs a valid
    /// signed token granting every channel it asks for. Unset: open.
    pub auth: Option<String>,
}

impl RouteConfig {
    /// A route with every option at its default: the one place route
    /// defaults are set (compression's come from [`DeflateConfig::DEFAULT`]).
    pub fn new(path: impl Into<String>, kind: RouteKind) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            kind,
            client_messages: ClientMessages::default(),
            echo_to_sender: false,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            compression: Compression::default(),
            compression_level: DeflateConfig::DEFAULT.level,
            compression_min_size: DeflateConfig::DEFAULT.min_size,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            max_replay: 1000,
            auth: None,
        }
    }

    /// The compression settings in force, `None` when compression is off.
    pub fn deflate(&self) -> Option<DeflateConfig> {
        (self.compression == Compression::On).then_some(DeflateConfig {
            level: self.compression_level,
            min_size: self.compression_min_size,
        })
    }
}

/// A `[[route]]` table as written. Every option is an `Option` so that one
/// set on a kind it does not apply to can be reported even when its value
/// equals the default; [`RouteConfig::new`] supplies what is left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    path: String,
    kind: RouteKind,
    client_messages: Option<ClientMessages>,
    echo_to_sender: Option<bool>,
    subprotocols: Option<Vec<String>>,
    require_subprotocol: Option<bool>,
    compression: Option<Compression>,
    compression_level: Option<u32>,
    compression_min_size: Option<usize>,
    history_size: Option<usize>,
    #[serde(default, deserialize_with = "values::optional_duration")]
    history_ttl: Option<Duration>,
    max_replay: Option<usize>,
    auth: Option<String>,
}

impl TryFrom<RouteTable> for RouteConfig {
    type Error = ConfigError;

    /// Rejects options the route's kind does not use, naming the option.
    fn try_from(t: RouteTable) -> Result<RouteConfig, ConfigError> {
        if t.kind != RouteKind::Broadcast {
            let set = [
                ("route.client_messages", t.client_messages.is_some()),
                ("route.echo_to_sender", t.echo_to_sender.is_some()),
                ("route.history_size", t.history_size.is_some()),
                ("route.history_ttl", t.history_ttl.is_some()),
                ("route.max_replay", t.max_replay.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "is set on route {:?}, which is kind {:?}; it only applies to kind \"broadcast\"",
                        t.path,
                        t.kind.as_str()
                    ),
                ));
            }
        }
        let d = RouteConfig::new(t.path, t.kind);
        Ok(RouteConfig {
            client_messages: t.client_messages.unwrap_or(d.client_messages),
            echo_to_sender: t.echo_to_sender.unwrap_or(d.echo_to_sender),
            subprotocols: t.subprotocols.unwrap_or_default(),
            require_subprotocol: t.require_subprotocol.unwrap_or(d.require_subprotocol),
            compression: t.compression.unwrap_or(d.compression),
            compression_level: t.compression_level.unwrap_or(d.compression_level),
            compression_min_size: t.compression_min_size.unwrap_or(d.compression_min_size),
            history_size: t.history_size.unwrap_or(d.history_size),
            history_ttl: t.history_ttl.unwrap_or(d.history_ttl),
            max_replay: t.max_replay.unwrap_or(d.max_replay),
            auth: t.auth,
            ..d
        })
    }
}

/// What the channels' history keeps: the same for every broadcast route that
/// keeps history, because channels are shared by all broadcast routes and the
/// publish API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Messages kept per channel; above 0.
    pub size: usize,
    /// How long each is kept; above 0.
    pub ttl: Duration,
}

impl RouteConfig {
    /// This route's history, `None` when it keeps none.
    pub fn history(&self) -> Option<HistoryPolicy> {
        (self.kind == RouteKind::Broadcast && self.history_size > 0).then_some(HistoryPolicy {
            size: self.history_size,
            ttl: self.history_ttl,
        })
    }
}

/// The history every route that keeps one agrees on, `None` when none does.
/// `check_routes` has made sure they agree.
pub(super) fn history_of(routes: &[RouteConfig]) -> Option<HistoryPolicy> {
    routes.iter().find_map(RouteConfig::history)
}

/// Broadcast routes that keep history keep the same: a channel is one
/// channel whichever route its subscribers came through.
fn check_history_agrees(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    let mut with_history = routes.iter().filter_map(|r| r.history().map(|h| (r, h)));
    let Some((first, policy)) = with_history.next() else {
        return Ok(());
    };
    match with_history.find(|(_, h)| *h != policy) {
        None => Ok(()),
        Some((other, h)) => Err(ConfigError::invalid(
            "route.history_size",
            format!(
                "route {:?} keeps {} messages for {} but route {:?} keeps {} for {}; channels are shared by every broadcast route, so every route that keeps history must keep the same (history_size and history_ttl)",
                first.path,
                policy.size,
                humantime::format_duration(policy.ttl),
                other.path,
                h.size,
                humantime::format_duration(h.ttl),
            ),
        )),
    }
}

/// At least one route; each path valid, listed once, and clear of every
/// other route a broadcast route would cover.
pub(super) fn check_routes(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    if routes.is_empty() {
        return Err(ConfigError::invalid(
            "route",
            format!(
                "at least one [[route]] is required (omit the key entirely to use the {DEFAULT_ROUTE_PATH} echo route)"
            ),
        ));
    }
    let mut seen = HashSet::new();
    for r in routes {
        check_route_path(&r.path, r.kind)
            .map_err(|why| ConfigError::invalid("route.path", format!("{:?} {why}", r.path)))?;
        check_route_options(r)?;
        if !seen.insert(r.path.as_str()) {
            return Err(ConfigError::invalid(
                "route.path",
                format!("{:?} is listed more than once", r.path),
            ));
        }
    }
    check_history_agrees(routes)?;
    // A broadcast route serves every path below its own, so it must not
    // share that space with any other route; two echo routes only ever
    // match exactly and cannot overlap once they differ.
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            let broadcast = a.kind == RouteKind::Broadcast || b.kind == RouteKind::Broadcast;
            if broadcast && paths_overlap(&a.path, &b.path) {
                return Err(ConfigError::invalid(
                    "route.path",
                    format!(
                        "{:?} ({}) overlaps {:?} ({}); a broadcast route also serves every path below it",
                        a.path, a.kind, b.path, b.kind
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a route's per-kind options. Routes parsed from a file already had
/// options on the wrong kind rejected by name; this covers configs built in
/// code, and the options' dependency on each other.
fn check_route_options(r: &RouteConfig) -> Result<(), ConfigError> {
    let on_route = |what: String| format!("{what} (route {:?})", r.path);
    for (i, p) in r.subprotocols.iter().enumerate() {
        if !crate::protocol::http::is_token(p.as_bytes()) {
            return Err(ConfigError::invalid(
                "route.subprotocols",
                on_route(format!("{p:?} is not an HTTP token")),
            ));
        }
        if r.subprotocols[..i].contains(p) {
            return Err(ConfigError::invalid(
                "route.subprotocols",
                on_route(format!("{p:?} is listed twice")),
            ));
        }
    }
    let max_level = DeflateConfig::MAX_LEVEL;
    if r.compression_level > max_level {
        return Err(ConfigError::invalid(
            "route.compression_level",
            on_route(format!(
                "is {}; it must be 0 (no compression) to {max_level} (smallest)",
                r.compression_level
            )),
        ));
    }
    if r.require_subprotocol && r.subprotocols.is_empty() {
        return Err(ConfigError::invalid(
            "route.require_subprotocol",
            on_route(
                "is true but subprotocols is empty, so every client would be refused".to_owned(),
            ),
        ));
    }
    if r.kind != RouteKind::Broadcast {
        let d = RouteConfig::new(&r.path, r.kind);
        for (key, differs) in [
            (
                "route.client_messages",
                r.client_messages != d.client_messages,
            ),
            ("route.echo_to_sender", r.echo_to_sender != d.echo_to_sender),
            ("route.history_size", r.history_size != d.history_size),
            ("route.history_ttl", r.history_ttl != d.history_ttl),
            ("route.max_replay", r.max_replay != d.max_replay),
        ] {
            if differs {
                return Err(ConfigError::invalid(
                    key,
                    on_route("only applies to kind \"broadcast\"".to_owned()),
                ));
            }
        }
    }
    for (key, zero) in [
        ("route.history_ttl", r.history_ttl.is_zero()),
        ("route.max_replay", r.max_replay == 0),
    ] {
        if zero {
            return Err(ConfigError::invalid(
                key,
                on_route("must be greater than 0".to_owned()),
            ));
        }
    }
    // Echoing only means something for messages that are relayed at all;
    // accepting it elsewhere would let a setting look active while it is not.
    if r.echo_to_sender && r.client_messages != ClientMessages::Broadcast {
        return Err(ConfigError::invalid(
            "route.echo_to_sender",
            on_route(format!(
                "only has an effect with client_messages = \"broadcast\", not {:?}",
                r.client_messages.as_str()
            )),
        ));
    }
    Ok(())
}

/// Why `path` cannot be a route of `kind`, if it cannot.
fn check_route_path(path: &str, kind: RouteKind) -> Result<(), String> {
    check_path_syntax(path)?;
    if let Some((_, what)) = RESERVED_PATHS.iter().find(|(p, _)| *p == path) {
        return Err(format!("is reserved for {what}"));
    }
    if kind == RouteKind::Broadcast && path == "/" {
        return Err(
            "cannot be a broadcast route: a broadcast route serves every path below its own, \
             so \"/\" would take over the whole server; use a path such as \"/live\""
                .to_owned(),
        );
    }
    Ok(())
}

/// Why `path` cannot be used as a request path (a route or the publish
/// prefix), if it cannot. Paths are matched against the request target's
/// path, so anything a path can't contain (query, fragment, raw whitespace
/// or control bytes) would make a dead entry. `"` and `\` are refused too:
/// clients percent-encode the one and browsers turn the other into `/`, and
/// a route's path is a label value in `/metrics`. A trailing `/` is refused
/// because prefix matching treats `/` as the separator before the channel,
/// so `/live/` would expect channels after a double slash.
pub(super) fn check_path_syntax(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with `/`");
    }
    if path.contains('?') {
        return Err("must not contain `?` (paths are matched without the query)");
    }
    if path.contains('#') {
        return Err("must not contain `#` (fragments are never sent to the server)");
    }
    if path.contains(['"', '\\']) {
        return Err(
            "must not contain `\"` or `\\` (clients percent-encode or rewrite them, and route paths label /metrics)",
        );
    }
    if path.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("must not end with `/` (only \"/\" itself may)");
    }
    Ok(())
}

/// True if `prefix` equals `path` or is one of its ancestors at a `/`
/// boundary (`/live` covers `/live/a` but not `/lively`).
///
/// `/` counts only as a prefix of itself: only echo routes may be `/`, and
/// they match exactly, so treating it as everyone's ancestor would forbid
/// every other path for no reason.
pub(super) fn is_path_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || (prefix != "/" && rest.starts_with('/')),
        None => false,
    }
}

/// True if either path covers the other.
pub(super) fn paths_overlap(a: &str, b: &str) -> bool {
    is_path_prefix(a, b) || is_path_prefix(b, a)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{broadcast_route, invalid_key, parse_err, with_publish_prefix};
    use super::super::{Config, ConfigError};
    use super::*;

    #[test]
    fn unknown_route_key_names_key_and_line() {
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n\n[[route]]\npath = \"/b\"\nkind = \"echo\"\ntopic = \"x\"\n";
        let msg = parse_err(text);
        assert!(msg.contains("topic"), "{msg}");
        assert!(msg.contains("line 8"), "{msg}");
    }

    #[test]
    fn unknown_route_kind_is_rejected() {
        let msg = parse_err("[[route]]\npath = \"/a\"\nkind = \"mirror\"\n");
        assert!(msg.contains("mirror"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn route_needs_path_and_kind() {
        let msg = parse_err("[[route]]\nkind = \"echo\"\n");
        assert!(msg.contains("path"), "{msg}");
        let msg = parse_err("[[route]]\npath = \"/a\"\n");
        assert!(msg.contains("kind"), "{msg}");
    }

    #[test]
    fn bad_route_paths_are_rejected() {
        // TOML basic-string spellings, so escapes reach the validator as
        // the raw characters.
        for bad in [
            r#""echo""#,
            r#""""#,
            r#""/a?b""#,
            r#""/a#b""#,
            r#""/a b""#,
            r#""/a\tb""#,
            r#""/a\u007f""#,
            r#""/a\u0000""#,
            r#""/a\u00a0""#,
            r#""/healthz""#,
        ] {
            let text = format!("[[route]]\npath = {bad}\nkind = \"echo\"\n");
            assert_eq!(invalid_key(&text), "route.path", "{bad}");
        }
    }

    #[test]
    fn quotes_and_backslashes_in_route_paths_are_refused_naming_the_route() {
        // Either would break the label values of the /metrics exposition.
        for (bad, shown) in [
            (r#"'/a"b'"#, r#""/a\"b""#),
            (r#"'/a\b'"#, r#""/a\\b""#),
            (r#"'/"'"#, r#""/\"""#),
        ] {
            for kind in ["echo", "broadcast"] {
                let text = format!("[[route]]\npath = {bad}\nkind = {kind:?}\n");
                match Config::from_toml_str(&text) {
                    Err(ConfigError::Invalid { key, message }) => {
                        assert_eq!(key, "route.path", "{bad}");
                        assert!(message.starts_with(shown), "{bad}: {message}");
                        assert!(message.contains("`\"` or `\\`"), "{message}");
                    }
                    other => panic!("{bad}: {other:?}"),
                }
            }
        }
        assert_eq!(
            invalid_key(&with_publish_prefix(r"/p\x", "")),
            "publish_prefix"
        );
    }

    #[test]
    fn healthz_subpaths_are_not_reserved() {
        let c = Config::from_toml_str("[[route]]\npath = \"/healthz/x\"\nkind = \"echo\"\n");
        assert!(c.is_ok());
    }

    #[test]
    fn duplicate_route_is_rejected() {
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n[[route]]\npath = \"/a\"\nkind = \"echo\"\n";
        assert_eq!(invalid_key(text), "route.path");
    }

    #[test]
    fn compression_options_parse_on_any_route_kind() {
        let echo = "[[route]]\npath = \"/e\"\nkind = \"echo\"\ncompression = \"on\"\n\
                    compression_level = 1\ncompression_min_size = 0\n";
        let c = Config::from_toml_str(&format!(
            "{echo}{}",
            broadcast_route("compression = \"on\"")
        ))
        .unwrap();
        assert_eq!(c.routes[0].compression, Compression::On);
        assert_eq!(c.routes[0].compression_level, 1);
        assert_eq!(c.routes[0].compression_min_size, 0);
        assert_eq!(
            c.routes[0].deflate(),
            Some(crate::protocol::deflate::DeflateConfig {
                level: 1,
                min_size: 0
            })
        );
        assert_eq!(c.routes[1].compression, Compression::On);
        assert_eq!(c.routes[1].compression_level, 6);
        assert_eq!(c.routes[1].compression_min_size, 128);
        // Off by default, and the documented defaults are the built-in ones.
        let c = Config::from_toml_str(&broadcast_route(
            "compression = \"off\"\ncompression_level = 6\ncompression_min_size = 128",
        ))
        .unwrap();
        assert_eq!(c.routes[0], RouteConfig::new("/live", RouteKind::Broadcast));
        assert_eq!(c.routes[0].deflate(), None);
    }

    #[test]
    fn compression_options_are_checked() {
        assert_eq!(
            invalid_key(&broadcast_route("compression_level = 10")),
            "route.compression_level"
        );
        let msg = parse_err(&broadcast_route("compression = \"yes\""));
        assert!(msg.contains("off") && msg.contains("on"), "{msg}");
        let msg = parse_err(&broadcast_route("compression_min_size = -1"));
        assert!(msg.contains("compression_min_size"), "{msg}");
    }

    #[test]
    fn broadcast_route_defaults() {
        let c = Config::from_toml_str(&broadcast_route("")).unwrap();
        assert_eq!(
            c.routes,
            [RouteConfig {
                path: "/live".into(),
                kind: RouteKind::Broadcast,
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
            }]
        );
        assert_eq!(c.routes[0], RouteConfig::new("/live", RouteKind::Broadcast));
    }

    #[test]
    fn client_messages_values_parse() {
        for (text, want) in [
            ("ignore", ClientMessages::Ignore),
            ("broadcast", ClientMessages::Broadcast),
            ("reject", ClientMessages::Reject),
        ] {
            let c = Config::from_toml_str(&broadcast_route(&format!("client_messages = {text:?}")))
                .unwrap();
            assert_eq!(c.routes[0].client_messages, want);
            assert_eq!(want.as_str(), text);
            assert_eq!(want.to_string(), text);
        }
    }

    #[test]
    fn unknown_key_in_broadcast_route_names_key_and_line() {
        let text = format!(
            "{}{}",
            broadcast_route("client_messages = \"broadcast\""),
            "echo_to_senders = true\n"
        );
        let msg = parse_err(&text);
        assert!(msg.contains("echo_to_senders"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn broadcast_options_on_echo_route_name_the_key() {
        // Even a value equal to the default is refused: the setting would
        // look meaningful while doing nothing.
        for (option, key) in [
            ("client_messages = \"broadcast\"", "route.client_messages"),
            ("client_messages = \"ignore\"", "route.client_messages"),
            ("echo_to_sender = true", "route.echo_to_sender"),
            ("echo_to_sender = false", "route.echo_to_sender"),
            ("history_size = 10", "route.history_size"),
            ("history_ttl = \"1m\"", "route.history_ttl"),
            ("max_replay = 5", "route.max_replay"),
        ] {
            let text = format!("[[route]]\npath = \"/e\"\nkind = \"echo\"\n{option}\n");
            // Reported while parsing, so the message also has the line.
            let err = parse_err(&text);
            assert!(err.contains(&format!("`{key}`")), "{option}: {err}");
            assert!(err.contains("\"/e\"") && err.contains("broadcast"), "{err}");
            assert!(err.contains("line 1"), "{err}");
        }
    }

    #[test]
    fn broadcast_options_on_echo_route_built_in_code_are_rejected() {
        let mut c = Config::default();
        c.routes[0].client_messages = ClientMessages::Reject;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "route.client_messages")
        );
        let mut c = Config::default();
        c.routes[0].echo_to_sender = true;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "route.echo_to_sender")
        );
    }

    #[test]
    fn echo_to_sender_needs_broadcast_client_messages() {
        assert_eq!(
            invalid_key(&broadcast_route("echo_to_sender = true")),
            "route.echo_to_sender"
        );
        assert_eq!(
            invalid_key(&broadcast_route(
                "client_messages = \"reject\"\necho_to_sender = true"
            )),
            "route.echo_to_sender"
        );
        // Explicitly off is fine with any setting.
        let c = Config::from_toml_str(&broadcast_route("echo_to_sender = false")).unwrap();
        assert!(!c.routes[0].echo_to_sender);
    }

    #[test]
    fn trailing_slash_route_paths_are_rejected() {
        for bad in ["/a/", "/a/b/", "//"] {
            for kind in ["echo", "broadcast"] {
                let text = format!("[[route]]\npath = {bad:?}\nkind = {kind:?}\n");
                assert_eq!(invalid_key(&text), "route.path", "{bad} {kind}");
            }
        }
    }

    #[test]
    fn root_path_is_only_an_echo_route() {
        let c = Config::from_toml_str("[[route]]\npath = \"/\"\nkind = \"echo\"\n").unwrap();
        assert_eq!(c.routes[0].path, "/");
        assert_eq!(
            invalid_key("[[route]]\npath = \"/\"\nkind = \"broadcast\"\n"),
            "route.path"
        );
    }

    #[test]
    fn root_echo_route_overlaps_nothing() {
        // `/` matches only itself, so it leaves room for broadcast routes
        // and the publish prefix.
        let text = "[[route]]\npath = \"/\"\nkind = \"echo\"\n\
                    [[route]]\npath = \"/live\"\nkind = \"broadcast\"\n";
        assert_eq!(Config::from_toml_str(text).unwrap().routes.len(), 2);
    }

    #[test]
    fn metrics_path_is_reserved_for_routes() {
        for kind in ["echo", "broadcast"] {
            let text = format!("[[route]]\npath = \"/metrics\"\nkind = {kind:?}\n");
            assert_eq!(invalid_key(&text), "route.path", "{kind}");
        }
        assert_eq!(
            invalid_key("[[route]]\npath = \"/healthz\"\nkind = \"broadcast\"\n"),
            "route.path"
        );
    }

    #[test]
    fn broadcast_routes_may_not_overlap_other_routes() {
        for (a, b) in [
            (("/live", "broadcast"), ("/live/x", "echo")),
            (("/live/x", "echo"), ("/live", "broadcast")),
            (("/live", "broadcast"), ("/live/x", "broadcast")),
            (("/a/b", "broadcast"), ("/a", "echo")),
        ] {
            let text = format!(
                "[[route]]\npath = {:?}\nkind = {:?}\n[[route]]\npath = {:?}\nkind = {:?}\n",
                a.0, a.1, b.0, b.1
            );
            assert_eq!(invalid_key(&text), "route.path", "{a:?} {b:?}");
        }
        // Same spelling up to a non-boundary is no overlap.
        for (a, b) in [("/live", "/lively"), ("/live", "/liv"), ("/a/b", "/a/bc")] {
            let text = format!(
                "[[route]]\npath = {a:?}\nkind = \"broadcast\"\n[[route]]\npath = {b:?}\nkind = \"broadcast\"\n"
            );
            assert!(Config::from_toml_str(&text).is_ok(), "{a} {b}");
        }
        // Exact-match echo routes may nest freely, as before.
        let text = "[[route]]\npath = \"/a\"\nkind = \"echo\"\n[[route]]\npath = \"/a/b\"\nkind = \"echo\"\n";
        assert!(Config::from_toml_str(text).is_ok());
    }

    #[test]
    fn overlap_error_names_both_routes() {
        let text = "[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n[[route]]\npath = \"/live/x\"\nkind = \"echo\"\n";
        let msg = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(
            msg.contains("\"/live\"") && msg.contains("\"/live/x\""),
            "{msg}"
        );
    }

    #[test]
    fn path_prefix_boundaries() {
        assert!(is_path_prefix("/a", "/a"));
        assert!(is_path_prefix("/a", "/a/b"));
        assert!(!is_path_prefix("/a", "/ab"));
        assert!(!is_path_prefix("/a/b", "/a"));
        assert!(is_path_prefix("/", "/"));
        assert!(!is_path_prefix("/", "/a"));
        assert!(paths_overlap("/a/b", "/a"));
        assert!(!paths_overlap("/a/b", "/a/c"));
    }

    #[test]
    fn subprotocols_are_tokens_listed_once() {
        let route =
            |extra: &str| format!("[[route]]\npath = \"/chat\"\nkind = \"echo\"\n{extra}\n");
        let c = Config::from_toml_str(&route(
            "subprotocols = [\"chat.v2\", \"chat.v1\"]\nrequire_subprotocol = true",
        ))
        .unwrap();
        assert_eq!(c.routes[0].subprotocols, ["chat.v2", "chat.v1"]);
        assert!(c.routes[0].require_subprotocol);
        for bad in [
            "subprotocols = [\"\"]",
            "subprotocols = [\"a b\"]",
            "subprotocols = [\"a,b\"]",
            "subprotocols = [\"x\", \"x\"]",
        ] {
            assert_eq!(invalid_key(&route(bad)), "route.subprotocols", "{bad}");
        }
        assert_eq!(
            invalid_key(&route("require_subprotocol = true")),
            "route.require_subprotocol"
        );
    }

    #[test]
    fn history_is_off_by_default_and_set_per_broadcast_route() {
        let c = Config::from_toml_str(&broadcast_route("")).unwrap();
        assert_eq!(c.history(), None);
        let c = Config::from_toml_str(&broadcast_route(
            "history_size = 100\nhistory_ttl = \"10m\"\nmax_replay = 50",
        ))
        .unwrap();
        let policy = HistoryPolicy {
            size: 100,
            ttl: Duration::from_secs(600),
        };
        assert_eq!(c.history(), Some(policy));
        assert_eq!(c.routes[0].max_replay, 50);
        for bad in ["history_ttl = \"0s\"", "max_replay = 0"] {
            let key = invalid_key(&broadcast_route(&format!("history_size = 1\n{bad}")));
            assert!(
                bad.starts_with(key.trim_start_matches("route.")),
                "{bad}: {key}"
            );
        }
    }

    #[test]
    fn routes_that_keep_history_must_agree() {
        let two = |a: &str, b: &str| {
            format!(
                "[[route]]\npath = \"/a\"\nkind = \"broadcast\"\n{a}\n\
                 [[route]]\npath = \"/b\"\nkind = \"broadcast\"\n{b}\n"
            )
        };
        // One with history and one without: fine, the channels keep it.
        let c = Config::from_toml_str(&two("history_size = 5", "")).unwrap();
        assert_eq!(c.history().map(|h| h.size), Some(5));
        // The same on both: fine; max_replay may differ.
        let same = two(
            "history_size = 5\nmax_replay = 3",
            "history_size = 5\nmax_replay = 4",
        );
        assert!(Config::from_toml_str(&same).is_ok());
        for (a, b) in [
            ("history_size = 5", "history_size = 6"),
            ("history_size = 5", "history_size = 5\nhistory_ttl = \"1s\""),
        ] {
            let text = two(a, b);
            assert_eq!(invalid_key(&text), "route.history_size", "{a} / {b}");
            let msg = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(msg.contains("\"/a\"") && msg.contains("\"/b\""), "{msg}");
        }
    }
}
