//! The route table: which behaviour a request path selects.
//!
//! Owns: the mapping from an exact request path to a route and its kind.
//! Must never: look at sockets or message contents.

use crate::config::{RouteConfig, RouteKind};

/// The path answered with a plain `200 OK` for health checks, on every listener.
pub const HEALTH_PATH: &str = "/healthz";

/// Index of a route in the table; small so connections can store it cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteId(pub u16);

#[derive(Clone, Debug)]
pub struct Route {
    pub path: String,
    pub kind: RouteKind,
}

/// Routes in config order. Lookups are by exact path; the table is small, so
/// a linear scan beats hashing and keeps the order of the config visible.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn from_config(config: &[RouteConfig]) -> Routes {
        Routes {
            routes: config
                .iter()
                .map(|r| Route {
                    path: r.path.clone(),
                    kind: r.kind,
                })
                .collect(),
        }
    }

    pub fn lookup(&self, path: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| r.path == path)
            .and_then(|i| u16::try_from(i).ok())
            .map(RouteId)
    }

    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(usize::from(id.0))
    }
}
