//! The route table: which behaviour a request path selects.
//!
//! Owns: mapping a request path to the health check, the metrics page, the
//! publish API, or a configured WebSocket route.
//! Must never: look at sockets, headers or message contents.

use crate::config::{ClientMessages, Config, RouteKind};

/// Answered with a plain `200 OK` for health checks, on every listener.
pub const HEALTH_PATH: &str = "/healthz";
/// The Prometheus metrics page, on every listener.
pub const METRICS_PATH: &str = "/metrics";

/// Index of a route in the table; small so connections can store it cheaply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteId(pub u16);

#[derive(Clone, Debug)]
pub struct Route {
    pub path: String,
    pub kind: RouteKind,
    pub client_messages: ClientMessages,
    pub echo_to_sender: bool,
}

/// What a request path selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Health,
    Metrics,
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

/// Routes in config order. The table is small, so a linear scan beats
/// hashing and keeps the config's order visible.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    publish_prefix: String,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        Routes {
            routes: config
                .routes
                .iter()
                .map(|r| Route {
                    path: r.path.clone(),
                    kind: r.kind,
                    client_messages: r.client_messages,
                    echo_to_sender: r.echo_to_sender,
                })
                .collect(),
            publish_prefix: config.publish_prefix.clone(),
        }
    }

    pub fn resolve<'a>(&self, path: &'a str) -> Target<'a> {
        if path == HEALTH_PATH {
            return Target::Health;
        }
        if path == METRICS_PATH {
            return Target::Metrics;
        }
        if let Some(channel) = under(path, &self.publish_prefix) {
            return match channel.strip_prefix('/') {
                Some(channel) => Target::Publish { channel },
                None => Target::NotFound,
            };
        }
        for (index, route) in self.routes.iter().enumerate() {
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

    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(usize::from(id.0))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

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
