//! What gets programmed: the IR of every accepted Gateway with its programmed listeners and their routes.
//!
//! TCP and UDP listeners carry only their oldest accepted route (creationTimestamp, then load order, then
//! namespace/name) and only its first rule. TLS passthrough listeners get one SNI entry per (route, effective
//! hostname), ordered as documented on [`crate::ir::TlsPassthrough`]; the catch-all [`hostname::ANY`] (`*`) sorts
//! last. HTTP and HTTPS listeners get every attached HTTPRoute and GRPCRoute with all their rules (see
//! [`super::http`]), each route with its age rank among all HTTP routes (creationTimestamp, then
//! namespace/name), and HTTPS listeners their certificate/key pairs.
use super::gateway::GatewayPlan;
use super::hostname;
use super::listener::{ListenerPlan, Protocol};
use super::route::{RouteKind, RouteView};
use super::{Context, PassthroughMode};
use crate::ir::{
    self, Backend, HttpListener, Ir, L4Route, ListenerKind, SniRoute, TlsCertificate,
    TlsPassthrough,
};
use crate::passthrough::proxy_protocol::ANNOTATION as PROXY_PROTOCOL;

/// Backends of each rule of each route (indexed like the route views).
pub type RouteBackends = Vec<Vec<Vec<Backend>>>;

pub fn build(
    ctx: &Context<'_>,
    plans: &[GatewayPlan<'_>],
    routes: &[RouteView<'_>],
    backends: &RouteBackends,
) -> Ir {
    let mut http_order: Vec<usize> = (0..routes.len())
        .filter(|r| matches!(routes[*r].kind, RouteKind::Http | RouteKind::Grpc))
        .collect();
    http_order.sort_by_key(|r| routes[*r].age());
    let mut age_rank = vec![0u64; routes.len()];
    for (rank, r) in http_order.into_iter().enumerate() {
        age_rank[r] = rank as u64;
    }
    let gateways = plans
        .iter()
        .filter(|plan| plan.is_accepted())
        .map(|plan| ir::Gateway {
            gateway: ir::ObjectRef {
                kind: "Gateway".into(),
                namespace: plan.gateway.metadata.namespace().into(),
                name: plan.gateway.metadata.name.clone(),
            },
            addresses: plan.addresses.clone(),
            listeners: plan
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.programmed.is_ok())
                .filter_map(|(i, l)| {
                    let attached = &plan.attached[i];
                    let oldest = || {
                        attached
                            .iter()
                            .min_by_key(|(r, _)| routes[*r].age())
                            .map(|(r, _)| L4Route {
                                route: routes[*r].object_ref(),
                                backends: first_rule(backends, *r),
                            })
                    };
                    let kind = match l.protocol {
                        Protocol::Tcp => ListenerKind::Tcp(oldest()),
                        Protocol::Udp => ListenerKind::Udp(oldest()),
                        Protocol::TlsPassthrough => ListenerKind::TlsPassthrough(TlsPassthrough {
                            kernel: PassthroughMode::for_listener(
                                &plan.gateway.metadata.annotations,
                                l.name,
                                ctx.options.tls_passthrough,
                            ) == PassthroughMode::Kernel
                                // PROXY protocol headers are written by the userspace proxy only.
                                && !attached.iter().any(|(r, _)| {
                                    routes[*r].meta.annotations.contains_key(PROXY_PROTOCOL)
                                }),
                            ..sni_table(l.hostname.clone(), attached, routes, backends)
                        }),
                        Protocol::Http | Protocol::Https => ListenerKind::Http(http_listener(
                            ctx, plan, l, attached, routes, backends, &age_rank,
                        )),
                        Protocol::TlsTerminate | Protocol::Unsupported => return None,
                    };
                    Some(ir::Listener {
                        name: l.name.to_string(),
                        port: l.port,
                        kind,
                    })
                })
                .collect(),
        })
        .collect();
    Ir { gateways }
}

fn first_rule(backends: &RouteBackends, route: usize) -> Vec<Backend> {
    backends[route].first().cloned().unwrap_or_default()
}

fn sni_table(
    listener_hostname: Option<String>,
    attached: &[(usize, super::route::Attachment)],
    routes: &[RouteView<'_>],
    backends: &RouteBackends,
) -> TlsPassthrough {
    let mut entries: Vec<(usize, &str)> = attached
        .iter()
        .flat_map(|(r, a)| a.hostnames.iter().map(move |h| (*r, h.as_str())))
        .collect();
    entries.sort_by(|(ra, ha), (rb, hb)| {
        (hostname::precedence(ha), routes[*ra].age(), *ha).cmp(&(
            hostname::precedence(hb),
            routes[*rb].age(),
            *hb,
        ))
    });
    entries.dedup();
    TlsPassthrough {
        hostname: listener_hostname,
        kernel: false,
        routes: entries
            .into_iter()
            .map(|(r, h)| SniRoute {
                hostname: h.to_string(),
                route: routes[r].object_ref(),
                backends: first_rule(backends, r),
            })
            .collect(),
    }
}

fn http_listener(
    ctx: &Context<'_>,
    plan: &GatewayPlan<'_>,
    listener: &ListenerPlan<'_>,
    attached: &[(usize, super::route::Attachment)],
    routes: &[RouteView<'_>],
    backends: &RouteBackends,
    age_rank: &[u64],
) -> HttpListener {
    let tls = listener.protocol == Protocol::Https;
    let gateway_ns = plan.gateway.metadata.namespace();
    let certificates = match (tls, listener.spec.tls.as_ref()) {
        (true, Some(spec)) => spec
            .certificate_refs
            .iter()
            .filter_map(|c| {
                let namespace = c.namespace.as_deref().unwrap_or(gateway_ns);
                let secret = ctx.secret(namespace, &c.name)?;
                Some(TlsCertificate {
                    secret: ir::ObjectRef {
                        kind: "Secret".into(),
                        namespace: namespace.into(),
                        name: c.name.clone(),
                    },
                    cert_pem: secret.value("tls.crt")?,
                    key_pem: secret.value("tls.key")?,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    let routes = attached
        .iter()
        .filter(|(r, _)| matches!(routes[*r].kind, RouteKind::Http | RouteKind::Grpc))
        .filter(|(r, _)| seen.insert(*r))
        .map(|(r, a)| {
            // A route attached through several parentRefs to this listener: the union of its hostnames.
            let mut hostnames: Vec<String> = attached
                .iter()
                .filter(|(other, _)| other == r)
                .flat_map(|(_, other)| other.hostnames.iter().cloned())
                .collect();
            if hostnames.is_empty() {
                hostnames = a.hostnames.clone();
            }
            hostnames.sort();
            hostnames.dedup();
            ir::HttpRoute {
                route: routes[*r].object_ref(),
                grpc: routes[*r].kind == RouteKind::Grpc,
                age: age_rank[*r],
                hostnames,
                rules: super::http::rules(ctx, &routes[*r], &backends[*r]),
            }
        })
        .collect();
    HttpListener {
        hostname: listener.hostname.clone(),
        tls,
        certificates,
        routes,
    }
}
