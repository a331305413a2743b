//! Backend references: permission, kind, Service port and ready endpoints from EndpointSlices.
//!
//! Checked in this order, the first failure giving the `ResolvedRefs` reason: the kind must be a core Service
//! (`InvalidKind`); a cross-namespace ref needs a ReferenceGrant (`RefNotPermitted`, decided before looking the
//! Service up); the Service and the port must exist (`BackendNotFound`) with the route's transport
//! (`UnsupportedProtocol`). Endpoints come only from EndpointSlices labelled `kubernetes.io/service-name`, so
//! headless and selector-less Services work the same; endpoints whose `ready` condition is `false` are skipped.
//! The port's `appProtocol` gives the HTTP version spoken to the backend ([`BackendProtocol`]).
use super::conditions::{reason, Problem};
use super::refgrant::{self, RefFrom, RefTo};
use super::route::RouteKind;
use super::Context;
use crate::ir::{Backend, BackendProtocol};
use crate::model::{BackendRef, EndpointSlice, IntOrString, ServicePort, GATEWAY_GROUP};
use std::net::{IpAddr, SocketAddr};

/// Resolves one backendRef of a route in `route_ns`. An invalid ref gives a `Backend` with `valid: false`, no
/// endpoints and its weight (its share of traffic is rejected by the data plane), and the problem.
pub fn resolve(
    ctx: &Context<'_>,
    kind: RouteKind,
    route_ns: &str,
    backend: &BackendRef,
) -> (Backend, Option<Problem>) {
    let namespace = backend.namespace.as_deref().unwrap_or(route_ns);
    let port = backend
        .port
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    let written = match (backend.group(), backend.kind()) {
        ("", "Service") => format!("{namespace}/{}:{port}", backend.name),
        (group, kind) => format!("{group}/{kind} {namespace}/{}:{port}", backend.name),
    };
    let invalid = |problem: Problem| {
        let backend = Backend {
            name: written.clone(),
            weight: backend.weight(),
            endpoints: Vec::new(),
            valid: false,
            protocol: BackendProtocol::default(),
        };
        (backend, Some(problem))
    };
    match endpoints(ctx, kind, route_ns, namespace, backend) {
        Ok((endpoints, protocol)) => (
            Backend {
                name: written.clone(),
                weight: backend.weight(),
                endpoints,
                valid: true,
                protocol,
            },
            None,
        ),
        Err(problem) => invalid(problem),
    }
}

fn endpoints(
    ctx: &Context<'_>,
    kind: RouteKind,
    route_ns: &str,
    namespace: &str,
    backend: &BackendRef,
) -> Result<(Vec<SocketAddr>, BackendProtocol), Problem> {
    let what = format!("{namespace}/{}", backend.name);
    if backend.group() != "" || backend.kind() != "Service" {
        let message = format!(
            "backendRef {what}: unsupported group/kind {:?}/{}",
            backend.group(),
            backend.kind()
        );
        return Err(Problem::new(reason::INVALID_KIND, message));
    }
    let from = RefFrom {
        group: GATEWAY_GROUP,
        kind: kind.as_str(),
        namespace: route_ns,
    };
    let to = RefTo {
        group: "",
        kind: "Service",
        namespace,
        name: &backend.name,
    };
    if !refgrant::permits(&ctx.snapshot.reference_grants, from, to) {
        let message =
            format!("backendRef to Service {what} is not permitted by any ReferenceGrant");
        return Err(Problem::new(reason::REF_NOT_PERMITTED, message));
    }
    let not_found = |message: String| Err(Problem::new(reason::BACKEND_NOT_FOUND, message));
    let Some(service) = ctx.service(namespace, &backend.name) else {
        return not_found(format!("Service {what} not found"));
    };
    if service.spec.type_.as_deref() == Some("ExternalName") {
        return not_found(format!(
            "Service {what} is an ExternalName Service, which is not supported"
        ));
    }
    let Some(port) = backend.port else {
        return not_found(format!("backendRef to Service {what} has no port"));
    };
    let transport = kind.transport();
    let same_number: Vec<&ServicePort> = service
        .spec
        .ports
        .iter()
        .filter(|p| p.port == port)
        .collect();
    let Some(service_port) = same_number.iter().find(|p| p.protocol() == transport) else {
        if same_number.is_empty() {
            return not_found(format!("Service {what} has no port {port}"));
        }
        let message = format!("Service {what} port {port} is not {transport}");
        return Err(Problem::new("UnsupportedProtocol", message));
    };
    let mut addrs: Vec<SocketAddr> = ctx
        .slices(namespace, &backend.name)
        .iter()
        .flat_map(|slice| slice_endpoints(slice, service_port))
        .collect();
    addrs.sort();
    addrs.dedup();
    let protocol = BackendProtocol::from_app_protocol(service_port.app_protocol.as_deref());
    Ok((addrs, protocol))
}

/// Ready endpoints of one slice for one Service port: the slice port with the Service port's name (and
/// protocol), or else the one numbered like a numeric targetPort. The first address of each endpoint is used.
fn slice_endpoints(slice: &EndpointSlice, service_port: &ServicePort) -> Vec<SocketAddr> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let protocol = service_port.protocol();
    let name = service_port.name.as_deref().unwrap_or("");
    let same_protocol =
        |p: &&crate::model::EndpointPort| p.protocol.as_deref().unwrap_or("TCP") == protocol;
    let slice_port = slice
        .ports
        .iter()
        .filter(same_protocol)
        .find(|p| p.name.as_deref().unwrap_or("") == name)
        .or_else(|| match &service_port.target_port {
            Some(IntOrString::Int(target)) => slice
                .ports
                .iter()
                .filter(same_protocol)
                .find(|p| p.port == Some(*target)),
            _ => None,
        });
    let Some(number) = slice_port
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.ready != Some(false))
        .filter_map(|e| e.addresses.first()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, number))
        .collect()
}
