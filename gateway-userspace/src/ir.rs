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
    /// How the HTTP proxy speaks to the endpoints, from the Service port's `appProtocol` (ignored by TCP, UDP
    /// and TLS routes).
    #[serde(skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
}

/// The HTTP version spoken to a backend, chosen by the Service port's `appProtocol` (GEP-1911):
/// `kubernetes.io/h2c` is HTTP/2 with prior knowledge; `kubernetes.io/ws` and every other value (or none) is
/// HTTP/1.1. GRPCRoute backends are always spoken to over h2c, whatever the port says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum BackendProtocol {
    #[default]
    Http1,
    H2c,
}

impl BackendProtocol {
    /// The protocol for a Service port's `appProtocol`.
    pub fn from_app_protocol(app_protocol: Option<&str>) -> Self {
        match app_protocol {
            Some("kubernetes.io/h2c") => Self::H2c,
            _ => Self::Http1,
        }
    }

    fn is_http1(&self) -> bool {
        *self == Self::Http1
    }
}

/// A TLS passthrough listener's routing table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TlsPassthrough {
    /// The listener's hostname, if any.
    pub hostname: Option<String>,
    /// Served in the kernel (handshake, SNI routing and splice by the eBPF program) instead of by the userspace
    /// proxy: see [`crate::translate::PassthroughMode`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kernel: bool,
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

/// An HTTP or HTTPS listener: the routes attached to it, served by the userspace proxy ([`crate::http`]). The
/// kernel only needs to know that such a listener exists so its packets reach the local stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpListener {
    pub hostname: Option<String>,
    /// `true` for HTTPS listeners (TLS terminated by the proxy).
    pub tls: bool,
    /// HTTPS: the certificate/key pairs of the listener's certificateRefs, in spec order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<TlsCertificate>,
    /// The HTTPRoutes and GRPCRoutes attached to the listener, in no particular order (the route table sorts
    /// their rules by precedence).
    pub routes: Vec<HttpRoute>,
}

/// One certificateRef's Secret: PEM `tls.crt` and `tls.key` (not serialized: status and golden files show the
/// Secret only).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TlsCertificate {
    pub secret: ObjectRef,
    #[serde(skip)]
    pub cert_pem: Vec<u8>,
    #[serde(skip)]
    pub key_pem: Vec<u8>,
}

/// An HTTPRoute or GRPCRoute on one listener (GRPCRoute matches are expressed as HTTP/2 path matches).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpRoute {
    /// The route object (kind HTTPRoute or GRPCRoute).
    pub route: ObjectRef,
    /// `true` for GRPCRoute: backends are spoken to over h2c and errors are gRPC statuses.
    pub grpc: bool,
    /// The route's age rank: creationTimestamp, then load order (lower is older).
    pub age: u64,
    /// Effective hostnames on this listener (intersections, `*` for any).
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRule>,
}

/// One rule of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpRule {
    /// Matches are OR'ed; a rule without matches matches every request (path prefix `/`).
    pub matches: Vec<HttpMatch>,
    pub filters: Vec<HttpFilter>,
    /// Weighted backends; empty means "answer 500" unless a filter produces the response (a redirect).
    pub backends: Vec<HttpBackend>,
    /// `timeouts.request`: the whole request, in milliseconds (504 when exceeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// `timeouts.backendRequest`: one request to a backend, in milliseconds (504 when exceeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_timeout_ms: Option<u64>,
}

/// A backendRef of an HTTP rule with its own filters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpBackend {
    pub backend: Backend,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
}

/// The conditions of one `matches[]` entry (all must hold).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpMatch {
    pub path: PathMatch,
    /// Header names are lower-cased.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl Default for HttpMatch {
    fn default() -> Self {
        HttpMatch {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }
    }
}

/// A path match.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix: `/v2` matches `/v2`, `/v2/` and `/v2/x`, not `/v2x`.
    Prefix(String),
    /// A regular expression that must match the whole path.
    Regex(String),
}

/// A header or query parameter match.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValueMatch {
    pub name: String,
    pub value: StringMatch,
}

/// How a value is compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StringMatch {
    Exact(String),
    /// Must match the whole value.
    Regex(String),
}

/// A filter of a rule or of a backendRef.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
}

/// Headers to set (replace), add (append) and remove; names as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// How a path is rewritten (redirect or URL rewrite).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path the rule's PathPrefix matched.
    ReplacePrefixMatch(String),
}

/// `RequestRedirect`: unset fields keep the request's values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status_code: u16,
}

/// `URLRewrite`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// `RequestMirror`: a copy of the request goes to `backend`; its answer is ignored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mirror {
    pub backend: Backend,
    /// Share of requests mirrored, 0..=100 (default 100).
    pub percent: f64,
}
