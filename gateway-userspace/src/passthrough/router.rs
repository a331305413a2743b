//! The SNI routing table of one TLS passthrough listener, built from [`crate::ir::TlsPassthrough`].
//!
//! Lookup: the exact host name first, then wildcards from the most specific suffix to the least
//! (`a.b.example.com` tries `*.b.example.com`, `*.example.com`, `*.com`), then the catch-all `*` (a route without
//! hostnames on a listener without hostname). A wildcard matches one or more labels, never the bare suffix. Among
//! entries with the same host name the first in IR order (the oldest route) wins.
//!
//! Backend choice: weighted random over the route's backends by their weights. A backend that is invalid, or has no
//! ready endpoint, keeps its share: picking it rejects the connection (like the kernel's Maglev "reject" slots).
//! Weight 0 is never picked. Within a backend, endpoints are chosen uniformly at random.
use std::{collections::HashMap, net::SocketAddr};

use crate::ir::{Backend, ObjectRef, TlsPassthrough};

use super::proxy_protocol::ProxyProtocol;

/// Why a route could not give a backend endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RouteError {
    /// No route for this SNI (or no SNI at all).
    #[error("no route matches the server name")]
    NoRoute,
    /// The weighted pick landed on a backend reference that is invalid (not found, wrong kind, not permitted).
    #[error("the picked backend reference is invalid")]
    InvalidBackend,
    /// The weighted pick landed on a backend with no ready endpoint.
    #[error("the picked backend has no ready endpoint")]
    NoEndpoint,
    /// The route has no backend with a weight above 0.
    #[error("the route has no backend with weight above 0")]
    NoBackend,
}

impl RouteError {
    /// The counter label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::InvalidBackend => "invalid_backend",
            Self::NoEndpoint => "no_endpoint",
            Self::NoBackend => "no_backend",
        }
    }
}

/// One SNI entry's route: its backends with cumulative weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The TLSRoute this entry came from.
    pub route: ObjectRef,
    /// The host name as written in the IR (exact, `*.suffix` or `*`).
    pub hostname: String,
    /// Whether connections to this route's backends start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    backends: Vec<Backend>,
    /// `cumulative[i]` = sum of weights of backends `0..=i`.
    cumulative: Vec<u64>,
}

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick<'a> {
    /// The backend's name (`namespace/name:port`).
    pub backend: &'a str,
    pub endpoint: SocketAddr,
}

impl Route {
    pub fn new(
        route: ObjectRef,
        hostname: String,
        backends: Vec<Backend>,
        proxy_protocol: ProxyProtocol,
    ) -> Self {
        let cumulative = backends
            .iter()
            .scan(0u64, |sum, b| {
                *sum += u64::from(b.weight);
                Some(*sum)
            })
            .collect();
        Self {
            route,
            hostname,
            proxy_protocol,
            backends,
            cumulative,
        }
    }

    /// Picks a backend endpoint with the given random source.
    pub fn pick_with(&self, rng: &mut fastrand::Rng) -> Result<Pick<'_>, RouteError> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return Err(RouteError::NoBackend);
        }
        let ticket = rng.u64(..total);
        let index = self.cumulative.partition_point(|&c| c <= ticket);
        let backend = &self.backends[index];
        if !backend.valid {
            return Err(RouteError::InvalidBackend);
        }
        if backend.endpoints.is_empty() {
            return Err(RouteError::NoEndpoint);
        }
        let endpoint = backend.endpoints[rng.usize(..backend.endpoints.len())];
        Ok(Pick {
            backend: &backend.name,
            endpoint,
        })
    }

    /// Picks with the thread's random source.
    pub fn pick(&self) -> Result<Pick<'_>, RouteError> {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        self.pick_with(&mut rng)
    }
}

/// A listener's SNI table, immutable once built (the proxy swaps whole tables).
#[derive(Clone, Debug, Default)]
pub struct SniTable {
    routes: Vec<Route>,
    /// Exact host name -> index into `routes`.
    exact: HashMap<String, usize>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> index.
    wildcard: HashMap<String, usize>,
    /// The `*` entry, if any.
    any: Option<usize>,
}

impl SniTable {
    /// Builds the table; `proxy_protocol` says which routes want a PROXY header.
    pub fn new(ir: &TlsPassthrough, proxy_protocol: impl Fn(&ObjectRef) -> ProxyProtocol) -> Self {
        let mut table = Self::default();
        for entry in &ir.routes {
            let hostname = entry.hostname.to_ascii_lowercase();
            let index = table.routes.len();
            if hostname == "*" {
                table.any.get_or_insert(index);
            } else if let Some(suffix) = hostname.strip_prefix("*.") {
                table.wildcard.entry(suffix.to_string()).or_insert(index);
            } else {
                table.exact.entry(hostname.clone()).or_insert(index);
            }
            let pp = proxy_protocol(&entry.route);
            table.routes.push(Route::new(
                entry.route.clone(),
                hostname,
                entry.backends.clone(),
                pp,
            ));
        }
        table
    }

    /// The route for a (normalised, lower-case) server name.
    pub fn lookup(&self, server_name: &str) -> Option<&Route> {
        if let Some(&i) = self.exact.get(server_name) {
            return Some(&self.routes[i]);
        }
        let mut rest = server_name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(&i) = self.wildcard.get(suffix) {
                return Some(&self.routes[i]);
            }
            rest = suffix;
        }
        self.any.map(|i| &self.routes[i])
    }

    /// Number of entries (for logs).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::SniRoute;

    fn backend(name: &str, weight: u32, valid: bool) -> Backend {
        let endpoints = if valid {
            vec![SocketAddr::from(([10, 0, 0, weight as u8], 443))]
        } else {
            vec![]
        };
        Backend {
            name: name.into(),
            weight,
            endpoints,
            valid,
            protocol: Default::default(),
        }
    }

    fn route(hostname: &str, name: &str, backends: Vec<Backend>) -> SniRoute {
        SniRoute {
            hostname: hostname.into(),
            route: ObjectRef {
                kind: "TLSRoute".into(),
                namespace: "infra".into(),
                name: name.into(),
            },
            backends,
        }
    }

    fn table(routes: Vec<SniRoute>) -> SniTable {
        SniTable::new(
            &TlsPassthrough {
                hostname: None,
                kernel: false,
                routes,
            },
            |_| ProxyProtocol::None,
        )
    }

    fn routed(t: &SniTable, sni: &str) -> Option<String> {
        t.lookup(sni).map(|r| r.route.name.clone())
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_match_any_number_of_labels() {
        let t = table(vec![
            route("abc.example.com", "exact", vec![backend("a", 1, true)]),
            route("*.b.example.com", "deep", vec![backend("b", 1, true)]),
            route("*.example.com", "wild", vec![backend("c", 1, true)]),
            route("*.com", "com", vec![backend("d", 1, true)]),
        ]);
        assert_eq!(routed(&t, "abc.example.com").as_deref(), Some("exact"));
        assert_eq!(routed(&t, "other.example.com").as_deref(), Some("wild"));
        assert_eq!(routed(&t, "a.b.c.example.com").as_deref(), Some("wild"));
        assert_eq!(routed(&t, "x.b.example.com").as_deref(), Some("deep"));
        assert_eq!(
            routed(&t, "b.example.com").as_deref(),
            Some("wild"),
            "*.b.example.com needs one more label"
        );
        assert_eq!(routed(&t, "example.com").as_deref(), Some("com"));
        assert_eq!(routed(&t, "com"), None, "*.com does not match com");
        assert_eq!(routed(&t, "example.org"), None);
    }

    #[test]
    fn catch_all_and_first_entry_per_hostname() {
        let t = table(vec![
            route("a.example.com", "old", vec![backend("a", 1, true)]),
            route("a.example.com", "new", vec![backend("b", 1, true)]),
            route("*", "any", vec![backend("c", 1, true)]),
        ]);
        assert_eq!(routed(&t, "a.example.com").as_deref(), Some("old"));
        assert_eq!(routed(&t, "anything.org").as_deref(), Some("any"));
    }

    fn shares(r: &Route, picks: usize) -> HashMap<Result<String, RouteError>, usize> {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut seen = HashMap::new();
        for _ in 0..picks {
            *seen
                .entry(r.pick_with(&mut rng).map(|p| p.backend.to_string()))
                .or_default() += 1;
        }
        seen
    }

    fn route_of(backends: Vec<Backend>) -> Route {
        Route::new(
            ObjectRef::default(),
            "x".into(),
            backends,
            ProxyProtocol::None,
        )
    }

    #[test]
    fn weights_within_five_percent_over_2000_picks() {
        let r = route_of(vec![
            backend("a", 1, true),
            backend("b", 3, true),
            backend("zero", 0, true),
        ]);
        let seen = shares(&r, 2000);
        let a = seen[&Ok("a".to_string())] as f64 / 2000.0;
        let b = seen[&Ok("b".to_string())] as f64 / 2000.0;
        assert!((a - 0.25).abs() < 0.05, "a share {a}");
        assert!((b - 0.75).abs() < 0.05, "b share {b}");
        assert!(
            !seen.contains_key(&Ok("zero".to_string())),
            "weight 0 picked: {seen:?}"
        );
    }

    #[test]
    fn invalid_backend_keeps_its_share_as_rejections() {
        let r = route_of(vec![backend("ok", 1, true), backend("bad", 1, false)]);
        let seen = shares(&r, 2000);
        let rejected = seen[&Err(RouteError::InvalidBackend)] as f64 / 2000.0;
        assert!((rejected - 0.5).abs() < 0.05, "rejected share {rejected}");
        let mut no_endpoint = backend("empty", 1, true);
        no_endpoint.endpoints.clear();
        assert_eq!(
            route_of(vec![no_endpoint]).pick(),
            Err(RouteError::NoEndpoint)
        );
        assert_eq!(
            route_of(vec![backend("z", 0, true)]).pick(),
            Err(RouteError::NoBackend)
        );
        assert_eq!(route_of(vec![]).pick(), Err(RouteError::NoBackend));
    }
}
