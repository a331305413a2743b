//! The intermediate representation: what the data planes must do, computed purely from a snapshot by
//! [`crate::translate`]. It names no Kubernetes object types beyond the keys used for counters and status; the
//! kernel map sync and the HTTP router each read only the parts they serve.
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

/// Everything the data planes serve, for every Gateway this controller owns that is programmed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ir {
    /// Gateways in a deterministic order (namespace, name).
    pub gateways: Vec<Gateway>,
}

/// `namespace/name` of an object, with its kind where that is ambiguous.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One Gateway: its listeners are served on every one of its usable addresses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub gateway: ObjectRef,
    /// Usable addresses from `spec.addresses` (standalone mode) or assigned by the provider.
    pub addresses: Vec<IpAddr>,
    /// Valid (Accepted) listeners only, in spec order.
    pub listeners: Vec<Listener>,
}

/// One accepted listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    /// The listener's `name`.
    pub name: String,
    pub port: u16,
    pub kind: ListenerKind,
}

/// What a listener does with its traffic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ListenerKind {
    /// TCP listener: the route that receives traffic (the oldest accepted one), or `None` (connections reset).
    Tcp(Option<L4Route>),
    /// UDP listener: the route that receives traffic, or `None` (datagrams dropped).
    Udp(Option<L4Route>),
    /// TLS listener in Passthrough mode: routes chosen by the ClientHello's SNI.
    TlsPassthrough(TlsPassthrough),
    /// HTTP or HTTPS listener, served by the userspace proxy.
    Http(HttpListener),
}

/// An L4 (TCP or UDP) route's single rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct L4Route {
    /// The route object (kind TCPRoute or UDPRoute).
    pub route: ObjectRef,
    pub backends: Vec<Backend>,
}

/// One backendRef after resolution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backend {
    /// `namespace/name:port` of the Service (or the ref as written when it did not resolve).
    pub name: String,
    /// The backendRef's weight (default 1); weight 0 receives nothing.
    pub weight: u32,
    /// Ready endpoints (address and target port) from EndpointSlices; empty when none are ready.
    pub endpoints: Vec<SocketAddr>,
    /// `false` when the ref is invalid (unknown kind, not found, not permitted): its share of traffic is rejected
    /// (TCP reset, UDP dropped, HTTP 500) rather than spread over the valid backends.
    pub valid: bool,
}

/// A TLS passthrough listener's routing table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TlsPassthrough {
    /// The listener's hostname, if any.
    pub hostname: Option<String>,
    /// One entry per (route, effective hostname): the hostname is the intersection of the route's and the
    /// listener's hostnames, exact or `*.suffix`. Ordered: exact names first, then wildcards by descending number of
    /// labels, then route age. Lookup picks the first match.
    pub routes: Vec<SniRoute>,
}

/// Traffic for one SNI hostname (exact or wildcard) goes to these backends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SniRoute {
    pub hostname: String,
    pub route: ObjectRef,
    pub backends: Vec<Backend>,
}

/// An HTTP or HTTPS listener: the routes attached to it. Filled in by the HTTP work; the kernel only needs to
/// know that such a listener exists so its packets reach the local stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpListener {
    pub hostname: Option<String>,
    /// `true` for HTTPS listeners (TLS terminated by the proxy).
    pub tls: bool,
}
