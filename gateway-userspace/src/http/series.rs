//! The metric series of a route table, made when the table is built: a request finds the series it is counted
//! in by the positions its lookup returned (listener, rule, backend), with no label to format or hash.
use crate::admin::metrics::{HttpMetrics, RequestSeries};

use super::route_table::{ListenerRoutes, Match, RouteTable};

/// What one worker serves one (address, port) with: the route table and its metric series.
pub struct WorkerTable {
    pub routes: RouteTable,
    pub series: TableSeries,
}

impl WorkerTable {
    pub fn new(routes: RouteTable, metrics: &HttpMetrics) -> Self {
        let series = TableSeries::new(&routes, metrics);
        Self { routes, series }
    }
}

/// Series of every (listener, route, backend) a request on one table can end in.
pub struct TableSeries {
    /// No listener's hostname matched the Host.
    no_listener: RequestSeries,
    /// By [`ListenerRoutes::index`].
    listeners: Vec<ListenerSeries>,
}

struct ListenerSeries {
    /// No rule matched.
    unmatched: RequestSeries,
    /// By [`Match::rule_id`].
    rules: Vec<RuleSeries>,
}

/// The series of one rule: answered before a backend was picked (redirect, no backendRefs), or by backend.
pub struct RuleSeries {
    pub no_backend: RequestSeries,
    /// By the backend's position in the rule (as [`pick_backend`](super::route_table::pick_backend) returns).
    pub backends: Vec<RequestSeries>,
}

impl TableSeries {
    pub fn new(table: &RouteTable, metrics: &HttpMetrics) -> Self {
        let listeners = table
            .listeners()
            .iter()
            .map(|listener| ListenerSeries {
                unmatched: RequestSeries::new(metrics, &listener.name, "", ""),
                rules: listener
                    .rules()
                    .iter()
                    .map(|(route, rule)| RuleSeries {
                        no_backend: RequestSeries::new(metrics, &listener.name, &route.name, ""),
                        backends: rule
                            .backends
                            .iter()
                            .map(|b| {
                                RequestSeries::new(
                                    metrics,
                                    &listener.name,
                                    &route.name,
                                    &b.backend.name,
                                )
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        Self {
            no_listener: RequestSeries::new(metrics, "", "", ""),
            listeners,
        }
    }

    /// Requests whose Host selects no listener.
    pub fn no_listener(&self) -> &RequestSeries {
        &self.no_listener
    }

    /// Requests no rule of `listener` matched.
    pub fn unmatched(&self, listener: &ListenerRoutes) -> &RequestSeries {
        &self.listeners[listener.index].unmatched
    }

    /// The series of the rule a lookup matched.
    pub fn rule(&self, m: &Match<'_>) -> &RuleSeries {
        &self.listeners[m.listener.index].rules[m.rule_id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{
        Backend, BackendProtocol, HttpBackend, HttpListener, HttpRoute, HttpRule, ObjectRef,
    };

    #[test]
    fn every_lookup_finds_its_own_labels() {
        let backend = |name: &str| HttpBackend {
            backend: Backend {
                name: name.into(),
                weight: 1,
                valid: true,
                protocol: BackendProtocol::default(),
                endpoints: vec![],
            },
            filters: vec![],
        };
        let route = |name: &str, age, backends: Vec<HttpBackend>| HttpRoute {
            route: ObjectRef {
                kind: "HTTPRoute".into(),
                namespace: "ns".into(),
                name: name.into(),
            },
            grpc: false,
            age,
            hostnames: vec!["*".into()],
            rules: vec![HttpRule {
                backends,
                ..Default::default()
            }],
        };
        let listener = |hostname: &str, routes| HttpListener {
            hostname: Some(hostname.into()),
            routes,
            ..Default::default()
        };
        let a = listener(
            "a.example",
            vec![route("r1", 0, vec![backend("x"), backend("y")])],
        );
        let b = listener(
            "b.example",
            vec![route("r2", 1, vec![]), route("r3", 2, vec![backend("z")])],
        );
        let table = RouteTable::new(vec![
            crate::http::route_table::ListenerRoutes::new("gw/b".into(), 80, &b).0,
            crate::http::route_table::ListenerRoutes::new("gw/a".into(), 80, &a).0,
        ]);
        let series = TableSeries::new(&table, &HttpMetrics::default());
        let headers = http::HeaderMap::new();
        let request = |host| crate::http::route_table::RequestInfo {
            host,
            path: "/",
            query: None,
            method: "GET",
            headers: &headers,
        };
        let (listener, m) = table.resolve(&request("a.example"));
        let rule = series.rule(m.as_ref().unwrap());
        let labels = |s: &RequestSeries| (s.listener.clone(), s.route.clone(), s.backend.clone());
        assert_eq!(
            labels(&rule.backends[1]),
            ("gw/a".into(), "ns/r1".into(), "y".into())
        );
        assert_eq!(
            labels(&rule.no_backend),
            ("gw/a".into(), "ns/r1".into(), "".into())
        );
        assert_eq!(
            labels(series.unmatched(listener.unwrap())),
            ("gw/a".into(), "".into(), "".into())
        );
        let (_, m) = table.resolve(&request("b.example"));
        let rule = series.rule(m.as_ref().unwrap());
        assert_eq!(labels(&rule.no_backend).1, "ns/r2", "the older route first");
        assert!(table.resolve(&request("c.example")).0.is_none());
        assert_eq!(
            labels(series.no_listener()),
            ("".into(), "".into(), "".into())
        );
    }
}
