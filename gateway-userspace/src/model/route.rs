//! Route kinds (HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute) and their parent and backend references.
use super::{null_default, ObjectMeta, GATEWAY_GROUP};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A route's `spec.parentRefs[]` entry (group default `gateway.networking.k8s.io`, kind default `Gateway`,
/// namespace default: the route's).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

impl ParentReference {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GATEWAY_GROUP)
    }
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }
    fn default_fields(&mut self) {
        self.group.get_or_insert_with(|| GATEWAY_GROUP.into());
        self.kind.get_or_insert_with(|| "Gateway".into());
    }
}

/// A `backendRefs[]` entry (group default `""`, kind default `Service`, weight default 1). `filters` only exists
/// on HTTPRoute and GRPCRoute backend refs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub filters: Vec<HttpRouteFilter>,
}

impl BackendRef {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Service")
    }
    /// The weight clamped to `0..=u32::MAX` (default 1).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1).clamp(0, i64::from(u32::MAX)) as u32
    }
    fn default_fields(&mut self) {
        self.group.get_or_insert_with(String::new);
        self.kind.get_or_insert_with(|| "Service".into());
        self.weight.get_or_insert(1);
    }
}

/// `gateway.networking.k8s.io` HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
    #[serde(skip)]
    pub raw: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    #[serde(deserialize_with = "null_default")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub hostnames: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub backend_refs: Vec<BackendRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub headers: Vec<NameValueMatch>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub query_params: Vec<NameValueMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `path` match: type `Exact`, `PathPrefix` (default) or `RegularExpression`; value default `/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpPathMatch {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header or query parameter match (type `Exact` by default or `RegularExpression`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NameValueMatch {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

/// An HTTPRoute or GRPCRoute filter. The per-type configuration is kept as JSON for the HTTP work to interpret;
/// `requestMirror.backendRef` is typed because the translation resolves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirror {
    pub backend_ref: BackendRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Value>,
}

/// `gateway.networking.k8s.io` GRPCRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    pub spec: GrpcRouteSpec,
    #[serde(skip)]
    pub raw: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteSpec {
    #[serde(deserialize_with = "null_default")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub hostnames: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub headers: Vec<NameValueMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The spec shared by TLSRoute, TCPRoute and UDPRoute (`hostnames` only exists on TLSRoute).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4RouteSpec {
    #[serde(deserialize_with = "null_default")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub hostnames: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub rules: Vec<L4RouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4RouteRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(deserialize_with = "null_default")]
    pub backend_refs: Vec<BackendRef>,
}

macro_rules! l4_route {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name {
            pub metadata: ObjectMeta,
            pub spec: L4RouteSpec,
            #[serde(skip)]
            pub raw: Option<Value>,
        }

        impl $name {
            pub(super) fn apply_defaults(&mut self) {
                self.spec.parent_refs.iter_mut().for_each(ParentReference::default_fields);
                for rule in &mut self.spec.rules {
                    rule.backend_refs.iter_mut().for_each(BackendRef::default_fields);
                }
            }
        }
    };
}

l4_route!(
    /// `gateway.networking.k8s.io` TLSRoute (v1, v1alpha2, v1alpha3).
    TlsRoute
);
l4_route!(
    /// `gateway.networking.k8s.io` TCPRoute (v1, v1alpha2).
    TcpRoute
);
l4_route!(
    /// `gateway.networking.k8s.io` UDPRoute (v1, v1alpha2).
    UdpRoute
);

impl HttpRoute {
    pub(super) fn apply_defaults(&mut self) {
        self.spec
            .parent_refs
            .iter_mut()
            .for_each(ParentReference::default_fields);
        for rule in &mut self.spec.rules {
            rule.backend_refs
                .iter_mut()
                .for_each(BackendRef::default_fields);
            for filter in rule.filters.iter_mut().chain(
                rule.backend_refs
                    .iter_mut()
                    .flat_map(|b| b.filters.iter_mut()),
            ) {
                if let Some(mirror) = &mut filter.request_mirror {
                    mirror.backend_ref.default_fields();
                }
            }
        }
    }
}

impl GrpcRoute {
    pub(super) fn apply_defaults(&mut self) {
        self.spec
            .parent_refs
            .iter_mut()
            .for_each(ParentReference::default_fields);
        for rule in &mut self.spec.rules {
            rule.backend_refs
                .iter_mut()
                .for_each(BackendRef::default_fields);
        }
    }
}
