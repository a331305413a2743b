//! The Gateway API CRD defaults applied to an object's raw JSON, so the object echoed with its status shows what
//! the API server would store (the typed model applies the same defaults through its accessors).
use super::GATEWAY_GROUP;
use serde_json::{Map, Value};

/// Sets `key` to `value` in `object` when it is absent.
fn default(object: &mut Map<String, Value>, key: &str, value: &str) {
    object
        .entry(key)
        .or_insert_with(|| Value::String(value.into()));
}

/// The objects of the array at `key` (nothing when absent or not an array).
fn each<'a>(
    object: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    object
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn spec(raw: &mut Value) -> Option<&mut Map<String, Value>> {
    raw.get_mut("spec")?.as_object_mut()
}

/// Gateway: listener `allowedRoutes.namespaces.from: Same`, RouteGroupKind group, `tls.mode: Terminate`,
/// certificateRef group/kind, address type `IPAddress`.
pub fn gateway(raw: &mut Value) {
    let Some(spec) = spec(raw) else { return };
    for address in each(spec, "addresses") {
        default(address, "type", "IPAddress");
    }
    for listener in each(spec, "listeners") {
        let allowed = listener
            .entry("allowedRoutes")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(allowed) = allowed.as_object_mut() {
            let namespaces = allowed
                .entry("namespaces")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(namespaces) = namespaces.as_object_mut() {
                default(namespaces, "from", "Same");
            }
            for kind in each(allowed, "kinds") {
                default(kind, "group", GATEWAY_GROUP);
            }
        }
        if let Some(tls) = listener.get_mut("tls").and_then(Value::as_object_mut) {
            default(tls, "mode", "Terminate");
            for cert in each(tls, "certificateRefs") {
                default(cert, "group", "");
                default(cert, "kind", "Secret");
            }
        }
    }
}

/// Routes: parentRef group/kind; backendRef group/kind/weight (also in rule and backend filters' mirrors).
pub fn route(raw: &mut Value) {
    let Some(spec) = spec(raw) else { return };
    for parent in each(spec, "parentRefs") {
        default(parent, "group", GATEWAY_GROUP);
        default(parent, "kind", "Gateway");
    }
    for rule in each(spec, "rules") {
        for backend in each(rule, "backendRefs") {
            default(backend, "group", "");
            default(backend, "kind", "Service");
            backend.entry("weight").or_insert(Value::from(1));
        }
    }
}
