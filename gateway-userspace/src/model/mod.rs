//! Gateway API and core Kubernetes objects as plain serde types: only the fields the translation reads, tolerant
//! of unknown fields, with the CRD defaults available through accessors (and filled in by [`Object::apply_defaults`]).
//!
//! Numbers that the CRD schema bounds (ports, weights) are kept as `i64` so an out-of-range value becomes a status
//! condition rather than a parse error; a value of the wrong JSON type is a parse error ([`ModelError`]).
mod core;
mod defaults;
mod gateway;
mod meta;
mod route;

pub use self::core::*;
pub use self::gateway::*;
pub use self::meta::*;
pub use self::route::*;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The API group of every Gateway API kind.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Why a document could not be turned into an [`Object`].
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ModelError {
    /// The document is not a YAML/JSON mapping.
    #[error("document is not an object")]
    NotAnObject,
    /// `apiVersion` or `kind` is missing or not a string.
    #[error("document has no apiVersion/kind")]
    MissingTypeMeta,
    /// A kind we read, in an apiVersion the v1.6.1 CRDs do not serve.
    #[error("unsupported apiVersion {api_version:?} for kind {kind}")]
    UnsupportedApiVersion { kind: String, api_version: String },
    /// The object does not match the kind's schema (wrong field type, missing name, ...).
    #[error("invalid {kind}: {message}")]
    Invalid {
        kind: String,
        /// 1-based line inside the document, when the decoder knows it.
        line: Option<usize>,
        message: String,
    },
    /// YAML syntax error.
    #[error("YAML syntax error: {message}")]
    Yaml {
        line: Option<usize>,
        message: String,
    },
}

impl ModelError {
    /// The 1-based line inside the document the error points at, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ModelError::Invalid { line, .. } | ModelError::Yaml { line, .. } => *line,
            _ => None,
        }
    }
}

/// Any object the translation reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TlsRoute(TlsRoute),
    TcpRoute(TcpRoute),
    UdpRoute(UdpRoute),
    ReferenceGrant(ReferenceGrant),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    Namespace(Namespace),
}

/// Where a decoder reads from: an already parsed value, or YAML text (which gives line numbers on errors).
enum Source<'a> {
    Value(&'a Value),
    Yaml(&'a str),
}

fn decode<T: DeserializeOwned>(kind: &str, source: &Source<'_>) -> Result<T, ModelError> {
    match source {
        Source::Value(value) => T::deserialize(*value).map_err(|e| ModelError::Invalid {
            kind: kind.into(),
            line: None,
            message: e.to_string(),
        }),
        Source::Yaml(text) => serde_yaml::from_str(text).map_err(|e| ModelError::Invalid {
            kind: kind.into(),
            line: e.location().map(|l| l.line()),
            message: strip_location(&e.to_string()),
        }),
    }
}

/// serde_yaml appends " at line X column Y"; the caller reports the line itself.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Which kinds we read and the apiVersions the v1.6.1 CRDs (standard and experimental) serve for them.
fn served(kind: &str, api_version: &str) -> Option<bool> {
    let ok = match kind {
        "GatewayClass" | "Gateway" | "HTTPRoute" | "ReferenceGrant" => {
            matches!(
                api_version,
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1"
            )
        }
        "GRPCRoute" => api_version == "gateway.networking.k8s.io/v1",
        "TCPRoute" | "UDPRoute" => {
            matches!(
                api_version,
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1alpha2"
            )
        }
        "TLSRoute" => matches!(
            api_version,
            "gateway.networking.k8s.io/v1"
                | "gateway.networking.k8s.io/v1alpha2"
                | "gateway.networking.k8s.io/v1alpha3"
        ),
        "Service" | "Secret" | "Namespace" => api_version == "v1",
        "EndpointSlice" => api_version == "discovery.k8s.io/v1",
        _ => return None,
    };
    Some(ok)
}

impl Object {
    /// Decodes a parsed object. `Ok(None)` for kinds the translation does not read (Deployments, ConfigMaps, ...).
    pub fn from_value(value: Value) -> Result<Option<Object>, ModelError> {
        Self::decode(&value, &Source::Value(&value))
    }

    /// Decodes one YAML document (no `---` separators inside); errors carry the line inside the document.
    /// `Ok(None)` for empty documents and kinds we do not read.
    pub fn from_yaml(document: &str) -> Result<Option<Object>, ModelError> {
        let value: Value = serde_yaml::from_str(document).map_err(|e| ModelError::Yaml {
            line: e.location().map(|l| l.line()),
            message: strip_location(&e.to_string()),
        })?;
        if value.is_null() {
            return Ok(None);
        }
        Self::decode(&value, &Source::Yaml(document))
    }

    fn decode(value: &Value, source: &Source<'_>) -> Result<Option<Object>, ModelError> {
        let map = value.as_object().ok_or(ModelError::NotAnObject)?;
        let (Some(api_version), Some(kind)) = (
            map.get("apiVersion").and_then(Value::as_str),
            map.get("kind").and_then(Value::as_str),
        ) else {
            return Err(ModelError::MissingTypeMeta);
        };
        match served(kind, api_version) {
            None => return Ok(None),
            Some(false) => {
                return Err(ModelError::UnsupportedApiVersion {
                    kind: kind.into(),
                    api_version: api_version.into(),
                })
            }
            Some(true) => {}
        }
        let raw = Some(value.clone());
        let mut object = match kind {
            "GatewayClass" => Object::GatewayClass(GatewayClass {
                raw,
                ..decode(kind, source)?
            }),
            "Gateway" => Object::Gateway(Gateway {
                raw,
                ..decode(kind, source)?
            }),
            "HTTPRoute" => Object::HttpRoute(HttpRoute {
                raw,
                ..decode(kind, source)?
            }),
            "GRPCRoute" => Object::GrpcRoute(GrpcRoute {
                raw,
                ..decode(kind, source)?
            }),
            "TLSRoute" => Object::TlsRoute(TlsRoute {
                raw,
                ..decode(kind, source)?
            }),
            "TCPRoute" => Object::TcpRoute(TcpRoute {
                raw,
                ..decode(kind, source)?
            }),
            "UDPRoute" => Object::UdpRoute(UdpRoute {
                raw,
                ..decode(kind, source)?
            }),
            "ReferenceGrant" => Object::ReferenceGrant(ReferenceGrant {
                raw,
                ..decode(kind, source)?
            }),
            "Service" => Object::Service(Service {
                raw,
                ..decode(kind, source)?
            }),
            "EndpointSlice" => Object::EndpointSlice(EndpointSlice {
                raw,
                ..decode(kind, source)?
            }),
            "Secret" => Object::Secret(Secret {
                raw,
                ..decode(kind, source)?
            }),
            "Namespace" => Object::Namespace(Namespace {
                raw,
                ..decode(kind, source)?
            }),
            _ => return Ok(None),
        };
        if object.meta().name.is_empty() {
            return Err(ModelError::Invalid {
                kind: kind.into(),
                line: None,
                message: "metadata.name is required".into(),
            });
        }
        object.apply_defaults();
        Ok(Some(object))
    }

    /// The object's `kind` as Kubernetes spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::GatewayClass(_) => "GatewayClass",
            Object::Gateway(_) => "Gateway",
            Object::HttpRoute(_) => "HTTPRoute",
            Object::GrpcRoute(_) => "GRPCRoute",
            Object::TlsRoute(_) => "TLSRoute",
            Object::TcpRoute(_) => "TCPRoute",
            Object::UdpRoute(_) => "UDPRoute",
            Object::ReferenceGrant(_) => "ReferenceGrant",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Secret(_) => "Secret",
            Object::Namespace(_) => "Namespace",
        }
    }

    /// `false` for the cluster-scoped kinds (GatewayClass, Namespace).
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Object::GatewayClass(_) | Object::Namespace(_))
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TlsRoute(o) => &o.metadata,
            Object::TcpRoute(o) => &o.metadata,
            Object::UdpRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::GatewayClass(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::TlsRoute(o) => &mut o.metadata,
            Object::TcpRoute(o) => &mut o.metadata,
            Object::UdpRoute(o) => &mut o.metadata,
            Object::ReferenceGrant(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
        }
    }

    fn raw_mut(&mut self) -> &mut Option<Value> {
        match self {
            Object::GatewayClass(o) => &mut o.raw,
            Object::Gateway(o) => &mut o.raw,
            Object::HttpRoute(o) => &mut o.raw,
            Object::GrpcRoute(o) => &mut o.raw,
            Object::TlsRoute(o) => &mut o.raw,
            Object::TcpRoute(o) => &mut o.raw,
            Object::UdpRoute(o) => &mut o.raw,
            Object::ReferenceGrant(o) => &mut o.raw,
            Object::Service(o) => &mut o.raw,
            Object::EndpointSlice(o) => &mut o.raw,
            Object::Secret(o) => &mut o.raw,
            Object::Namespace(o) => &mut o.raw,
        }
    }

    /// Applies what the API server would: the namespace of a namespaced object defaults to `default`,
    /// `metadata.generation` to 1 (standalone mode has no API server to count generations), and the CRD defaults of
    /// the Gateway API kinds (parentRef group/kind, backendRef group/kind/weight, listener allowedRoutes and TLS
    /// mode, address type, RouteGroupKind group). The raw copy gets the namespace and generation too, so the
    /// object echoed with its status shows the generation its conditions observed.
    pub fn apply_defaults(&mut self) {
        let namespaced = self.is_namespaced();
        let meta = self.meta_mut();
        if namespaced && meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some("default".into());
        }
        if !namespaced {
            meta.namespace = None;
        }
        if meta.generation.is_none() {
            meta.generation = Some(1);
        }
        let (namespace, generation) = (meta.namespace.clone(), meta.generation);
        if let Some(Value::Object(raw)) = self.raw_mut() {
            if let Some(Value::Object(m)) = raw.get_mut("metadata") {
                if let Some(ns) = namespace {
                    m.entry("namespace").or_insert(Value::String(ns));
                }
                if !m.get("generation").is_some_and(Value::is_i64) {
                    m.insert("generation".into(), Value::from(generation.unwrap_or(1)));
                }
            }
        }
        match self {
            Object::Gateway(g) => {
                g.apply_defaults();
                if let Some(raw) = &mut g.raw {
                    defaults::gateway(raw);
                }
            }
            Object::HttpRoute(r) => {
                r.apply_defaults();
                if let Some(raw) = &mut r.raw {
                    defaults::route(raw);
                }
            }
            Object::GrpcRoute(r) => {
                r.apply_defaults();
                if let Some(raw) = &mut r.raw {
                    defaults::route(raw);
                }
            }
            Object::TlsRoute(r) => {
                r.apply_defaults();
                if let Some(raw) = &mut r.raw {
                    defaults::route(raw);
                }
            }
            Object::TcpRoute(r) => {
                r.apply_defaults();
                if let Some(raw) = &mut r.raw {
                    defaults::route(raw);
                }
            }
            Object::UdpRoute(r) => {
                r.apply_defaults();
                if let Some(raw) = &mut r.raw {
                    defaults::route(raw);
                }
            }
            _ => {}
        }
    }
}

/// Serde helper: a `null` (e.g. `hostnames:` with nothing after it) reads as the default value.
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
