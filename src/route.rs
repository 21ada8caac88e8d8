//! The route table: which behaviour a request path selects.
//!
//! Owns: mapping a request path to the health check, the metrics page, the
//! publish API, or a configured WebSocket route.
//! Must never: look at sockets, headers or message contents, or move a route
//! to another index: connections store a [`RouteId`], so a reload
//! ([`Routes::update`]) only updates entries in place, retires them, or
//! appends new ones.

use std::ops::Deref;

use crate::config::{Config, HEALTH_CHECK_PATH, METRICS_PATH, PAGE_PATH, RouteConfig, RouteKind};
use crate::protocol::deflate::DeflateConfig;

/// Index of a route in the table; small so connections can store it cheaply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteId(pub u16);

/// Most entries the table can hold: every index must fit a [`RouteId`].
const MAX_ROUTES: usize = u16::MAX as usize + 1;

/// A table entry: the route's config as loaded (read through `Deref`:
/// `route.kind`, `route.subprotocols`, ...) and what the table keeps beside it.
#[derive(Clone, Debug)]
pub struct Route {
    config: RouteConfig,
    /// permessage-deflate settings, `None` when compression is off; worked
    /// out once per load rather than per message.
    pub deflate: Option<DeflateConfig>,
    /// Gone from the config since a reload: no new connection resolves to
    /// it, while connections made on it earlier keep their behaviour.
    pub retired: bool,
}

impl Deref for Route {
    type Target = RouteConfig;

    fn deref(&self) -> &RouteConfig {
        &self.config
    }
}

impl Route {
    fn from_config(r: &RouteConfig) -> Route {
        Route {
            config: r.clone(),
            deflate: r.deflate(),
            retired: false,
        }
    }

    /// Takes over the options of `r` (same path and kind), describing each
    /// change for the log. Connections keep what they negotiated; while
    /// compression is off they are sent uncompressed messages (always
    /// allowed).
    fn set_options(&mut self, r: &RouteConfig, changes: &mut Vec<String>) {
        changes.extend(self.config.changed_options(r));
        self.config = r.clone();
        self.deflate = r.deflate();
    }
}

/// A reload would need more route entries than a [`RouteId`] can number.
#[derive(Debug, thiserror::Error)]
#[error(
    "the route table is full ({MAX_ROUTES} entries, counting routes removed while running); restart wshub to apply this route change"
)]
pub struct RouteTableFull;

/// What a request path selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Health,
    Metrics,
    /// The watch page (`page = true`).
    Page,
    /// `<publish_prefix>/<channel>`: `channel` is everything after the slash.
    Publish {
        channel: &'a str,
    },
    /// A WebSocket route; `rest` is the path after the route's own path
    /// (empty for an exact match, `/<channel>` under a broadcast route).
    Route {
        id: RouteId,
        rest: &'a str,
    },
    NotFound,
}

/// Routes in config order, then routes added by reloads. The table is small,
/// so a linear scan beats hashing. Validation keeps the paths of the routes
/// in force from overlapping, so at most one of them matches any path and
/// their order does not matter.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    publish_prefix: String,
    /// The watch page is served (`page`).
    page: bool,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        Routes {
            routes: config.routes.iter().map(Route::from_config).collect(),
            publish_prefix: config.publish_prefix.clone(),
            page: config.page,
        }
    }

    /// Brings the table in line with a reloaded config without moving any
    /// entry: a route still configured with the same path and kind keeps its
    /// index and takes the new options; a route that is gone (or changed its
    /// kind) is retired; a new route revives a retired entry of the same path
    /// and kind, or is appended. Returns a description of each change.
    ///
    /// On error nothing has changed.
    pub fn update(&mut self, config: &Config) -> Result<Vec<String>, RouteTableFull> {
        let mut changes = Vec::new();
        // What happens to each configured route: `Some(index)` of the entry
        // that will serve it, `None` for a new entry.
        let mut placement: Vec<Option<usize>> = Vec::with_capacity(config.routes.len());
        let mut appended = 0usize;
        for r in &config.routes {
            let same = |e: &Route| e.path == r.path && e.kind == r.kind;
            let found = self
                .routes
                .iter()
                .position(|e| !e.retired && same(e))
                .or_else(|| self.routes.iter().position(|e| e.retired && same(e)));
            if found.is_none() {
                appended += 1;
            }
            placement.push(found);
        }
        if self.routes.len() + appended > MAX_ROUTES {
            return Err(RouteTableFull);
        }
        // Retire what the new config no longer serves.
        for (index, entry) in self.routes.iter_mut().enumerate() {
            if entry.retired || placement.contains(&Some(index)) {
                continue;
            }
            entry.retired = true;
            let now = match config.routes.iter().find(|r| r.path == entry.path) {
                Some(r) => format!("is now kind {}", r.kind),
                None => "was removed".to_owned(),
            };
            changes.push(format!(
                "route {:?} ({}) {now}; connections already open on it keep working as before",
                entry.path, entry.kind
            ));
        }
        for (r, found) in config.routes.iter().zip(placement) {
            match found.and_then(|index| self.routes.get_mut(index)) {
                Some(entry) => {
                    if entry.retired {
                        entry.retired = false;
                        changes.push(format!("route {:?} ({}) added", r.path, r.kind));
                    }
                    entry.set_options(r, &mut changes);
                }
                None => {
                    self.routes.push(Route::from_config(r));
                    changes.push(format!("route {:?} ({}) added", r.path, r.kind));
                }
            }
        }
        self.publish_prefix.clone_from(&config.publish_prefix);
        self.page = config.page;
        Ok(changes)
    }

    pub fn resolve<'a>(&self, path: &'a str) -> Target<'a> {
        if path == HEALTH_CHECK_PATH {
            return Target::Health;
        }
        if path == METRICS_PATH {
            return Target::Metrics;
        }
        if self.page && path == PAGE_PATH {
            return Target::Page;
        }
        if let Some(channel) = under(path, &self.publish_prefix) {
            return match channel.strip_prefix('/') {
                Some(channel) => Target::Publish { channel },
                None => Target::NotFound,
            };
        }
        for (index, route) in self.routes.iter().enumerate() {
            if route.retired {
                continue;
            }
            let Ok(index) = u16::try_from(index) else {
                break;
            };
            let id = RouteId(index);
            match route.kind {
                RouteKind::Echo if path == route.path => {
                    return Target::Route { id, rest: "" };
                }
                RouteKind::Broadcast => {
                    if let Some(rest) = under(path, &route.path) {
                        return Target::Route { id, rest };
                    }
                }
                RouteKind::Echo => {}
            }
        }
        Target::NotFound
    }

    /// The live route at `path` of kind `kind` (a connection handed over
    /// from another process finds its route again this way).
    pub fn find(&self, path: &str, kind: RouteKind) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| !r.retired && r.kind == kind && r.path == path)
            .and_then(|index| u16::try_from(index).ok())
            .map(RouteId)
    }

    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(usize::from(id.0))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every entry's path in index order, retired ones included (a path can
    /// appear twice when a route changed its kind).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.path.as_str())
    }
}

/// `path` with `prefix` removed, if `path` is `prefix` itself or lies below
/// it at a `/` boundary (`/live` covers `/live` and `/live/x`, not `/lively`).
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientMessages;

    fn table() -> Routes {
        let config = Config::from_toml_str(
            r#"
            [[route]]
            path = "/echo"
            kind = "echo"
            [[route]]
            path = "/live"
            kind = "broadcast"
            "#,
        )
        .unwrap();
        Routes::new(&config)
    }

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).unwrap()
    }

    fn resolves_to(routes: &Routes, path: &str) -> Option<u16> {
        match routes.resolve(path) {
            Target::Route { id, .. } => Some(id.0),
            _ => None,
        }
    }

    #[test]
    fn update_keeps_indexes_retires_and_appends() {
        let mut routes = table();
        let changes = routes
            .update(&config(
                r#"
                publish_prefix = "/api/publish"
                [[route]]
                path = "/chat"
                kind = "broadcast"
                [[route]]
                path = "/live"
                kind = "broadcast"
                client_messages = "broadcast"
                "#,
            ))
            .unwrap();
        // `/echo` is retired in place, `/live` keeps index 1 with its new
        // option, `/chat` is appended.
        assert_eq!(routes.len(), 3);
        assert!(routes.get(RouteId(0)).unwrap().retired);
        assert_eq!(resolves_to(&routes, "/echo"), None);
        assert_eq!(resolves_to(&routes, "/live/news"), Some(1));
        assert_eq!(
            routes.get(RouteId(1)).unwrap().client_messages,
            ClientMessages::Broadcast
        );
        assert_eq!(resolves_to(&routes, "/chat/room"), Some(2));
        assert_eq!(
            routes.resolve("/api/publish/x"),
            Target::Publish { channel: "x" }
        );
        assert_eq!(routes.resolve("/publish/x"), Target::NotFound);
        assert_eq!(changes.len(), 3, "{changes:#?}");
        assert!(
            changes[0].contains("\"/echo\" (echo) was removed"),
            "{changes:#?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.contains("client_messages: ignore -> broadcast"))
        );
        assert!(
            changes
                .iter()
                .any(|c| c.contains("\"/chat\" (broadcast) added"))
        );

        // Bringing `/echo` back revives its old entry instead of growing.
        routes
            .update(&config("[[route]]\npath = \"/echo\"\nkind = \"echo\"\n"))
            .unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(resolves_to(&routes, "/echo"), Some(0));
        assert_eq!(resolves_to(&routes, "/live"), None);
        assert!(routes.get(RouteId(1)).unwrap().retired);
    }

    #[test]
    fn changing_a_routes_kind_gives_it_a_new_entry() {
        let mut routes = table();
        let changes = routes
            .update(&config(
                "[[route]]\npath = \"/echo\"\nkind = \"broadcast\"\n",
            ))
            .unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(resolves_to(&routes, "/echo/x"), Some(2));
        // Open connections on the old entry still see an echo route.
        assert_eq!(routes.get(RouteId(0)).unwrap().kind, RouteKind::Echo);
        assert!(changes[0].contains("is now kind broadcast"), "{changes:#?}");
        let paths: Vec<&str> = routes.paths().collect();
        assert_eq!(paths, ["/echo", "/live", "/echo"]);
    }

    #[test]
    fn reload_applies_compression_in_place() {
        let mut routes = table();
        assert_eq!(routes.get(RouteId(1)).and_then(|r| r.deflate), None);
        let on = config(
            "[[route]]\npath = \"/echo\"\nkind = \"echo\"\n[[route]]\npath = \"/live\"\nkind = \"broadcast\"\ncompression = \"on\"\ncompression_level = 1\n",
        );
        let changes = routes.update(&on).unwrap();
        assert_eq!(
            changes,
            ["route \"/live\": compression: off -> on (level 1, min size 128)"]
        );
        assert_eq!(
            routes.get(RouteId(1)).and_then(|r| r.deflate),
            Some(DeflateConfig {
                level: 1,
                min_size: 128
            })
        );
    }

    #[test]
    fn unchanged_config_changes_nothing() {
        let mut routes = table();
        let before = format!("{routes:?}");
        let same = config(
            "[[route]]\npath = \"/echo\"\nkind = \"echo\"\n[[route]]\npath = \"/live\"\nkind = \"broadcast\"\n",
        );
        assert!(routes.update(&same).unwrap().is_empty());
        assert_eq!(format!("{routes:?}"), before);
    }

    #[test]
    fn paths_resolve_to_their_targets() {
        let routes = table();
        let cases = [
            ("/healthz", Target::Health),
            ("/metrics", Target::Metrics),
            (
                "/echo",
                Target::Route {
                    id: RouteId(0),
                    rest: "",
                },
            ),
            ("/echo/x", Target::NotFound),
            (
                "/live",
                Target::Route {
                    id: RouteId(1),
                    rest: "",
                },
            ),
            (
                "/live/news",
                Target::Route {
                    id: RouteId(1),
                    rest: "/news",
                },
            ),
            ("/lively", Target::NotFound),
            ("/publish/news", Target::Publish { channel: "news" }),
            ("/publish/", Target::Publish { channel: "" }),
            ("/publish", Target::NotFound),
            ("/publisher", Target::NotFound),
            ("/", Target::NotFound),
        ];
        for (path, target) in cases {
            assert_eq!(routes.resolve(path), target, "{path}");
        }
    }
}
