//! Computed status: what this controller writes on the GatewayClasses, Gateways and routes it owns, and the
//! Kubernetes-style listing of every input object with that status (`GET /status`, `gateway validate`).
use crate::model::{civil_from_days, ParentReference, RouteGroupKind};
use crate::snapshot::Snapshot;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Status per owned object. Objects of other controllers have no entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// By GatewayClass name.
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    /// By `namespace/name`.
    pub gateways: BTreeMap<String, GatewayStatus>,
    /// By `Kind/namespace/name` (e.g. `TCPRoute/default/echo`); only routes with at least one parent of ours.
    pub routes: BTreeMap<String, RouteStatus>,
}

impl Status {
    pub fn gateway_class(&self, name: &str) -> Option<&GatewayClassStatus> {
        self.gateway_classes.get(name)
    }
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&GatewayStatus> {
        self.gateways.get(&format!("{namespace}/{name}"))
    }
    /// `kind` as Kubernetes spells it (`HTTPRoute`, `TLSRoute`, ...).
    pub fn route(&self, kind: &str, namespace: &str, name: &str) -> Option<&RouteStatus> {
        self.routes.get(&route_key(kind, namespace, name))
    }
}

/// The key of a route in [`Status::routes`].
pub fn route_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// An RFC 3339 UTC timestamp with second precision, as Kubernetes writes `metav1.Time`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub String);

impl Timestamp {
    /// The time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: i64) -> Timestamp {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        Timestamp(format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        ))
    }

    /// The system clock. Only for the edges (agent, `gateway validate`); the translation takes the time injected.
    pub fn now() -> Timestamp {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Timestamp::from_unix(secs)
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp::from_unix(0)
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
    pub last_transition_time: Timestamp,
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    pub conditions: Vec<Condition>,
    /// Sorted by name.
    pub supported_features: Vec<SupportedFeature>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SupportedFeature {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The addresses the Gateway is served on.
    pub addresses: Vec<GatewayStatusAddress>,
    pub conditions: Vec<Condition>,
    /// One entry per spec listener (by name), in spec order.
    pub listeners: Vec<ListenerStatus>,
}

impl GatewayStatus {
    pub fn listener(&self, name: &str) -> Option<&ListenerStatus> {
        self.listeners.iter().find(|l| l.name == name)
    }
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find_condition(&self.conditions, type_)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatusAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

impl ListenerStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find_condition(&self.conditions, type_)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Our entries only, one per distinct parentRef that names a Gateway of ours, in spec order.
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The spec's parentRef with `group` and `kind` defaulted.
    pub parent_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

impl RouteParentStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find_condition(&self.conditions, type_)
    }
}

/// Every input object with its computed status, as a `v1` `List`. Objects we do not own are echoed unchanged;
/// route `status.parents` entries of other controllers are kept and ours appended. Secret values are redacted.
/// Kinds are listed in a fixed order (Namespaces, GatewayClasses, Gateways, routes, ReferenceGrants, Services,
/// EndpointSlices, Secrets), each in snapshot order.
pub fn objects_with_status(snapshot: &Snapshot, status: &Status) -> Value {
    let mut items = Vec::with_capacity(snapshot.len());
    let mut push = |raw: Value,
                    api_version: &str,
                    kind: &str,
                    own_status: Option<Value>,
                    route: Option<&str>| {
        let mut object = match raw {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        object
            .entry("apiVersion")
            .or_insert_with(|| api_version.into());
        object.entry("kind").or_insert_with(|| kind.into());
        if let Some(mut own) = own_status {
            if let Some(controller) = route {
                // Keep other controllers' parent entries.
                let theirs: Vec<Value> = object
                    .get("status")
                    .and_then(|s| s.get("parents"))
                    .and_then(Value::as_array)
                    .map(|parents| {
                        parents
                            .iter()
                            .filter(|p| {
                                p.get("controllerName").and_then(Value::as_str) != Some(controller)
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(Value::Array(ours)) = own.get_mut("parents") {
                    let mut all = theirs;
                    all.append(ours);
                    *ours = all;
                }
            }
            object.insert("status".into(), own);
        }
        items.push(Value::Object(object));
    };

    for o in &snapshot.namespaces {
        push(raw_or(&o.raw, o), "v1", "Namespace", None, None);
    }
    for o in &snapshot.gateway_classes {
        let own = status.gateway_class(&o.metadata.name).map(to_json);
        push(
            raw_or(&o.raw, o),
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            own,
            None,
        );
    }
    for o in &snapshot.gateways {
        let own = status
            .gateway(o.metadata.namespace(), &o.metadata.name)
            .map(to_json);
        push(
            raw_or(&o.raw, o),
            "gateway.networking.k8s.io/v1",
            "Gateway",
            own,
            None,
        );
    }
    macro_rules! routes {
        ($list:expr, $kind:literal) => {
            for o in &$list {
                let own = status.route($kind, o.metadata.namespace(), &o.metadata.name);
                let controller = own
                    .and_then(|s| s.parents.first())
                    .map(|p| p.controller_name.clone());
                let own = own.map(to_json);
                push(
                    raw_or(&o.raw, o),
                    "gateway.networking.k8s.io/v1",
                    $kind,
                    own,
                    controller.as_deref(),
                );
            }
        };
    }
    routes!(snapshot.http_routes, "HTTPRoute");
    routes!(snapshot.grpc_routes, "GRPCRoute");
    routes!(snapshot.tls_routes, "TLSRoute");
    routes!(snapshot.tcp_routes, "TCPRoute");
    routes!(snapshot.udp_routes, "UDPRoute");
    for o in &snapshot.reference_grants {
        push(
            raw_or(&o.raw, o),
            "gateway.networking.k8s.io/v1",
            "ReferenceGrant",
            None,
            None,
        );
    }
    for o in &snapshot.services {
        push(raw_or(&o.raw, o), "v1", "Service", None, None);
    }
    for o in &snapshot.endpoint_slices {
        push(
            raw_or(&o.raw, o),
            "discovery.k8s.io/v1",
            "EndpointSlice",
            None,
            None,
        );
    }
    for o in &snapshot.secrets {
        let mut raw = raw_or(&o.raw, o);
        redact_secret(&mut raw);
        push(raw, "v1", "Secret", None, None);
    }
    json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

fn raw_or<T: Serialize>(raw: &Option<Value>, typed: &T) -> Value {
    match raw {
        Some(v) => v.clone(),
        None => serde_json::to_value(typed).unwrap_or(Value::Null),
    }
}

fn redact_secret(secret: &mut Value) {
    for field in ["data", "stringData"] {
        if let Some(Value::Object(map)) = secret.get_mut(field) {
            for v in map.values_mut() {
                *v = Value::String("<redacted>".into());
            }
        }
    }
}

/// Status types have only string keys, so serializing them cannot fail.
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp::from_unix(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp::from_unix(1_709_208_001).0,
            "2024-02-29T12:00:01Z"
        );
    }
}
