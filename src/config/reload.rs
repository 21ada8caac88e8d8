//! What changed between the running config and a reloaded one, for the log.
//!
//! Owns: one `name: old -> new` line per changed setting, for the top-level
//! settings and a route's options; the compiler makes both cover every
//! field (destructuring without `..`).
//! Must never: show the publish token's value (only set, changed, removed),
//! or decide what a reload can apply (the server does).

use std::time::Duration;

use log::LevelFilter;

use super::values::log_level_name;
use super::{ClientMessages, Config, OnBacklog, RouteConfig};
use crate::protocol::deflate::DeflateConfig;

/// How a setting's value is written in the reload log.
trait Shown: PartialEq {
    fn shown(&self) -> String;
}

macro_rules! shown {
    ($($ty:ty => |$v:ident| $e:expr,)+) => {
        $(impl Shown for $ty {
            fn shown(&self) -> String {
                let $v = self;
                $e
            }
        })+
    };
}

// Names as the file spells them; paths and lists quoted, so an empty or odd
// value stays visible.
shown! {
    usize => |v| v.to_string(),
    u64 => |v| v.to_string(),
    u16 => |v| v.to_string(),
    bool => |v| v.to_string(),
    OnBacklog => |v| v.to_string(),
    ClientMessages => |v| v.to_string(),
    String => |v| format!("{v:?}"),
    Vec<String> => |v| format!("{v:?}"),
    Option<String> => |v| v.as_deref().map_or("unset".to_owned(), |s| format!("{s:?}")),
    Duration => |v| humantime::format_duration(*v).to_string(),
    Option<LevelFilter> => |v| v.map_or("unset", log_level_name).to_owned(),
    Option<DeflateConfig> => |v| match v {
        Some(d) => format!("on (level {}, min size {})", d.level, d.min_size),
        None => "off".to_owned(),
    },
}

/// Appends `<prefix><name>: old -> new` when the values differ.
fn compare<T: Shown>(changes: &mut Vec<String>, prefix: &str, name: &str, old: &T, new: &T) {
    if old != new {
        changes.push(format!(
            "{prefix}{name}: {} -> {}",
            old.shown(),
            new.shown()
        ));
    }
}

/// Compares the listed fields of `$old` and `$new`. The pattern names every
/// field without `..`, so a field added to the type is a compile error here
/// until it is listed as compared or as left to the caller (`skip`).
macro_rules! diff {
    ($ty:ident { $($field:ident),+ ; skip: $($skip:ident),+ } $old:expr, $new:expr, $prefix:expr) => {{
        let $ty { $($field,)+ $($skip: _,)+ } = $old;
        let mut changes = Vec::new();
        $(compare(&mut changes, $prefix, stringify!($field), $field, &$new.$field);)+
        changes
    }};
}

impl Config {
    /// The top-level settings that differ between `self` and `new`, one
    /// `name: old -> new` line each, for the reload log. Listeners and routes
    /// are left to the caller, which knows what it can apply. The token's
    /// value is never shown, only whether it was set, changed or removed.
    pub fn changed_settings(&self, new: &Config) -> Vec<String> {
        let mut changes = diff!(Config {
            max_connections, max_message_size, max_frame_size, max_backlog_bytes,
            handshake_timeout, ping_interval, pong_timeout, close_timeout, idle_timeout,
            publish_prefix, max_channels_per_connection, on_backlog, shutdown_timeout,
            shutdown_spread, shutdown_close_code, handover, log_level, allowed_origins,
            max_connections_per_ip, history_max_bytes, publish_auth, page;
            skip: listeners, routes, publish_token, cluster, auth
        } self, new, "");
        match (&self.publish_token, &new.publish_token) {
            (None, Some(_)) => changes.push("publish_token: set".to_owned()),
            (Some(_), None) => changes.push("publish_token: removed".to_owned()),
            (Some(a), Some(b)) if a != b => changes.push("publish_token: changed".to_owned()),
            _ => {}
        }
        changes.extend(super::auth::changes(&self.auth, &new.auth));
        match (&self.cluster, &new.cluster) {
            (None, Some(_)) => changes.push("cluster: added".to_owned()),
            (Some(_), None) => changes.push("cluster: removed".to_owned()),
            (Some(a), Some(b)) => changes.extend(a.changes(b)),
            (None, None) => {}
        }
        changes
    }
}

impl RouteConfig {
    /// The options that differ between `self` and `new` (the same route:
    /// same path and kind), one `route "<path>": name: old -> new` line each.
    /// Compression is one line for the settings in force, so a level
    /// changed while compression is off is not reported as a change.
    pub fn changed_options(&self, new: &RouteConfig) -> Vec<String> {
        let prefix = format!("route {:?}: ", self.path);
        let mut changes = diff!(RouteConfig {
            client_messages, echo_to_sender, subprotocols, require_subprotocol, history_size,
            history_ttl, max_replay, auth;
            skip: path, kind, compression, compression_level, compression_min_size
        } self, new, &prefix);
        let (old_deflate, new_deflate) = (self.deflate(), new.deflate());
        compare(
            &mut changes,
            &prefix,
            "compression",
            &old_deflate,
            &new_deflate,
        );
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    #[test]
    fn changed_settings_lists_differences_without_the_token() {
        let old = Config::from_toml_str("publish_token = \"old-secret\"").unwrap();
        let new = Config::from_toml_str(
            "max_connections = 7\nidle_timeout = \"90s\"\npublish_token = \"new-secret\"\nlog_level = \"warn\"",
        )
        .unwrap();
        let changes = old.changed_settings(&new);
        assert_eq!(
            changes,
            [
                "max_connections: 100000 -> 7",
                "idle_timeout: 2m -> 1m 30s",
                "log_level: unset -> warn",
                "publish_token: changed",
            ]
        );
        assert!(old.changed_settings(&old).is_empty());
        assert!(!format!("{changes:?}").contains("secret"));
        let none = Config::default();
        assert_eq!(none.changed_settings(&old), ["publish_token: set"]);
        assert_eq!(old.changed_settings(&none), ["publish_token: removed"]);
    }

    #[test]
    fn changed_options_name_the_route() {
        let old = RouteConfig::new("/live", RouteKind::Broadcast);
        let mut new = old.clone();
        new.client_messages = ClientMessages::Broadcast;
        new.subprotocols = vec!["v1".to_owned()];
        new.compression_level = 1;
        // The level alone changes nothing while compression is off.
        assert_eq!(
            old.changed_options(&new),
            [
                "route \"/live\": client_messages: ignore -> broadcast",
                "route \"/live\": subprotocols: [] -> [\"v1\"]",
            ]
        );
        assert!(old.changed_options(&old).is_empty());
    }
}
