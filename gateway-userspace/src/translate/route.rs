//! Routes of every kind seen the same way, and their attachment to Gateway listeners per parentRef.
//!
//! Per parentRef: the candidate listeners are narrowed by `sectionName` and `port` (none left: `NoMatchingParent`),
//! then by the listener's supported kinds and allowed namespaces (`NotAllowedByListeners`), then, for kinds with
//! hostnames, by hostname intersection (`NoMatchingListenerHostname`). A route accepted by at least one listener is
//! `Accepted` and counted on each of those listeners, whatever the state of the listener or of the route's backends.
use super::conditions::{reason, Problem};
use super::gateway::GatewayPlan;
use super::{hostname, Context};
use crate::ir::ObjectRef;
use crate::model::{
    AgeKey, BackendRef, HttpRouteFilter, ObjectMeta, ParentReference, GATEWAY_GROUP,
};
use crate::snapshot::Snapshot;

/// The route kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
    Udp,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }

    /// Whether route hostnames take part in attachment (HTTP, GRPC, TLS).
    pub fn has_hostnames(self) -> bool {
        matches!(self, RouteKind::Http | RouteKind::Grpc | RouteKind::Tls)
    }

    /// The Service port protocol the route's backends must use.
    pub fn transport(self) -> &'static str {
        match self {
            RouteKind::Udp => "UDP",
            _ => "TCP",
        }
    }
}

/// One route of any kind.
#[derive(Debug)]
pub struct RouteView<'a> {
    pub kind: RouteKind,
    pub meta: &'a ObjectMeta,
    pub parent_refs: &'a [ParentReference],
    /// Lower-cased; empty for TCP/UDP.
    pub hostnames: Vec<String>,
    /// The weighted backendRefs of each rule.
    pub rules: Vec<Vec<&'a BackendRef>>,
    /// Other refs that must resolve (request mirrors).
    pub extra_refs: Vec<&'a BackendRef>,
    /// Why the route cannot be served (an unsupported filter), if so.
    pub unsupported: Option<String>,
}

impl RouteView<'_> {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind.as_str().into(),
            namespace: self.meta.namespace().into(),
            name: self.meta.name.clone(),
        }
    }

    pub fn age(&self) -> AgeKey {
        self.meta.age_key()
    }
}

const HTTP_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "CORS",
];
const GRPC_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

fn unsupported_filter<'f>(
    filters: impl Iterator<Item = &'f HttpRouteFilter>,
    supported: &[&str],
) -> Option<String> {
    let mut bad: Vec<&str> = filters
        .map(|f| f.type_.as_str())
        .filter(|t| !supported.contains(t))
        .collect();
    bad.dedup();
    (!bad.is_empty()).then(|| format!("unsupported filter type(s): {}", bad.join(", ")))
}

fn mirrors<'a>(
    filters: impl Iterator<Item = &'a HttpRouteFilter>,
) -> impl Iterator<Item = &'a BackendRef> {
    filters
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| &m.backend_ref)
}

fn lower(names: &[String]) -> Vec<String> {
    names.iter().map(|h| h.to_ascii_lowercase()).collect()
}

/// Every route in the snapshot, by kind then snapshot order.
pub fn views(snapshot: &Snapshot) -> Vec<RouteView<'_>> {
    let mut views = Vec::new();
    for r in &snapshot.http_routes {
        let filters = || {
            r.spec.rules.iter().flat_map(|rule| {
                rule.filters
                    .iter()
                    .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
            })
        };
        views.push(RouteView {
            kind: RouteKind::Http,
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            hostnames: lower(&r.spec.hostnames),
            rules: r
                .spec
                .rules
                .iter()
                .map(|rule| rule.backend_refs.iter().collect())
                .collect(),
            extra_refs: mirrors(filters()).collect(),
            unsupported: unsupported_filter(filters(), HTTP_FILTERS),
        });
    }
    for r in &snapshot.grpc_routes {
        let filters = || {
            r.spec.rules.iter().flat_map(|rule| {
                rule.filters
                    .iter()
                    .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
            })
        };
        views.push(RouteView {
            kind: RouteKind::Grpc,
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            hostnames: lower(&r.spec.hostnames),
            rules: r
                .spec
                .rules
                .iter()
                .map(|rule| rule.backend_refs.iter().collect())
                .collect(),
            extra_refs: mirrors(filters()).collect(),
            unsupported: unsupported_filter(filters(), GRPC_FILTERS),
        });
    }
    let l4 = [
        (
            RouteKind::Tls,
            snapshot
                .tls_routes
                .iter()
                .map(|r| (&r.metadata, &r.spec))
                .collect::<Vec<_>>(),
        ),
        (
            RouteKind::Tcp,
            snapshot
                .tcp_routes
                .iter()
                .map(|r| (&r.metadata, &r.spec))
                .collect(),
        ),
        (
            RouteKind::Udp,
            snapshot
                .udp_routes
                .iter()
                .map(|r| (&r.metadata, &r.spec))
                .collect(),
        ),
    ];
    for (kind, routes) in l4 {
        for (meta, spec) in routes {
            views.push(RouteView {
                kind,
                meta,
                parent_refs: &spec.parent_refs,
                hostnames: if kind.has_hostnames() {
                    lower(&spec.hostnames)
                } else {
                    Vec::new()
                },
                rules: spec
                    .rules
                    .iter()
                    .map(|rule| rule.backend_refs.iter().collect())
                    .collect(),
                extra_refs: Vec::new(),
                unsupported: None,
            });
        }
    }
    views
}

/// A route accepted by one listener.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Index of the listener in the Gateway's spec.
    pub listener: usize,
    /// The effective hostnames (see [`hostname::effective`]); empty for TCP/UDP.
    pub hostnames: Vec<String>,
}

/// Whether a parentRef names a Gateway (group and kind).
pub fn names_gateway(parent: &ParentReference) -> bool {
    parent.group() == GATEWAY_GROUP && parent.kind() == "Gateway"
}

/// Attaches a route to the listeners of the Gateway its parentRef names.
pub fn attach(
    ctx: &Context<'_>,
    route: &RouteView<'_>,
    parent: &ParentReference,
    gateway: &GatewayPlan<'_>,
) -> Result<Vec<Attachment>, Problem> {
    let candidates: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.duplicate_name)
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.spec.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let message = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("the Gateway has no listener named {s:?} on port {p}"),
            (Some(s), None) => format!("the Gateway has no listener named {s:?}"),
            (None, Some(p)) => format!("the Gateway has no listener on port {p}"),
            (None, None) => "the Gateway has no listeners".into(),
        };
        return Err(Problem::new(reason::NO_MATCHING_PARENT, message));
    }

    let route_ns = route.meta.namespace();
    let gateway_ns = gateway.gateway.metadata.namespace();
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| {
            let listener = &gateway.listeners[i];
            let kind_ok = listener
                .supported_kinds
                .iter()
                .any(|k| k.kind == route.kind.as_str());
            let namespace_ok = match listener.spec.namespaces_from() {
                "All" => true,
                "Same" => route_ns == gateway_ns,
                "Selector" => listener
                    .spec
                    .namespace_selector()
                    .is_some_and(|selector| selector.matches(&ctx.namespace_labels(route_ns))),
                _ => false,
            };
            kind_ok && namespace_ok
        })
        .collect();
    if allowed.is_empty() {
        let message = format!(
            "no listener allows a {} from namespace {route_ns}",
            route.kind.as_str()
        );
        return Err(Problem::new(reason::NOT_ALLOWED_BY_LISTENERS, message));
    }

    let attachments: Vec<Attachment> = allowed
        .into_iter()
        .filter_map(|i| {
            let hostnames = match route.kind.has_hostnames() {
                true => {
                    hostname::effective(gateway.listeners[i].hostname.as_deref(), &route.hostnames)
                }
                false => Vec::new(),
            };
            (!route.kind.has_hostnames() || !hostnames.is_empty()).then_some(Attachment {
                listener: i,
                hostnames,
            })
        })
        .collect();
    if attachments.is_empty() {
        return Err(Problem::new(
            reason::NO_MATCHING_LISTENER_HOSTNAME,
            "no hostname of the route matches the hostname of an allowed listener",
        ));
    }
    if let Some(why) = &route.unsupported {
        return Err(Problem::new(reason::UNSUPPORTED_VALUE, why.clone()));
    }
    Ok(attachments)
}

/// The parentRef as echoed in status: group and kind set, the rest as written.
pub fn echo(parent: &ParentReference) -> ParentReference {
    ParentReference {
        group: Some(parent.group().into()),
        kind: Some(parent.kind().into()),
        ..parent.clone()
    }
}
