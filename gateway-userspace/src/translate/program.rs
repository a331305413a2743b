//! What gets programmed: the IR of every accepted Gateway with its programmed listeners and their routes.
//!
//! TCP and UDP listeners carry only their oldest accepted route (creationTimestamp, then load order, then
//! namespace/name) and only its first rule. TLS passthrough listeners get one SNI entry per (route, effective
//! hostname), ordered as documented on [`crate::ir::TlsPassthrough`]; the catch-all [`hostname::ANY`] (`*`) sorts
//! last.
use super::gateway::GatewayPlan;
use super::hostname;
use super::listener::Protocol;
use super::route::RouteView;
use crate::ir::{self, Backend, HttpListener, Ir, L4Route, ListenerKind, SniRoute, TlsPassthrough};

/// Backends of each rule of each route (indexed like the route views).
pub type RouteBackends = Vec<Vec<Vec<Backend>>>;

pub fn build(plans: &[GatewayPlan<'_>], routes: &[RouteView<'_>], backends: &RouteBackends) -> Ir {
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
                        Protocol::TlsPassthrough => ListenerKind::TlsPassthrough(sni_table(
                            l.hostname.clone(),
                            attached,
                            routes,
                            backends,
                        )),
                        Protocol::Http | Protocol::Https => ListenerKind::Http(HttpListener {
                            hostname: l.hostname.clone(),
                            tls: l.protocol == Protocol::Https,
                        }),
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
