//! The status bodies the leader writes ([`status_patches`]): other controllers' route parents kept, stale
//! entries of ours removed, unchanged `lastTransitionTime`s kept, no write when only timestamps would change.
use serde_json::Value;

use super::{kind_of, str_at};
use crate::status::Status;

/// One status write: the object's identity and the body to apply to its `status` subresource (server-side
/// apply under the controller name as field manager).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPatch {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (GatewayClass).
    pub namespace: Option<String>,
    pub name: String,
    /// `{"apiVersion", "kind", "metadata": {"name", "namespace"}, "status": {...}}`.
    pub body: Value,
}

/// Keeps a live condition's `lastTransitionTime` where the condition of the same type has the same status
/// (Kubernetes only moves it when the status flips), in every `conditions` array under `ours` that has a
/// counterpart at the same place in `live`.
fn keep_transition_times(ours: &mut Value, live: &Value) {
    match ours {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let Some(live_value) = live.get(key) else {
                    continue;
                };
                if key == "conditions" {
                    for c in value.as_array_mut().into_iter().flatten() {
                        let same = live_value.as_array().into_iter().flatten().find(|l| {
                            l.get("type") == c.get("type") && l.get("status") == c.get("status")
                        });
                        if let (Some(same), Some(c)) = (same, c.as_object_mut()) {
                            if let Some(t) = same.get("lastTransitionTime") {
                                c.insert("lastTransitionTime".into(), t.clone());
                            }
                        }
                    }
                } else {
                    keep_transition_times(value, live_value);
                }
            }
        }
        Value::Array(items) => {
            // Listener and parent entries: match by `name` or `parentRef`, not position.
            for item in items.iter_mut() {
                let twin = live.as_array().into_iter().flatten().find(|l| {
                    (item.get("name").is_some() && l.get("name") == item.get("name"))
                        || (item.get("parentRef").is_some()
                            && l.get("parentRef") == item.get("parentRef")
                            && l.get("controllerName") == item.get("controllerName"))
                });
                if let Some(twin) = twin {
                    keep_transition_times(item, twin);
                }
            }
        }
        _ => {}
    }
}

/// The status writes that bring the live objects to `status`: GatewayClasses, Gateways (whole listener list, so
/// stale listener entries go) and routes (`status.parents`: other controllers' entries kept, ours replaced, so
/// stale parent entries of ours go). Unchanged condition `lastTransitionTime`s are kept from the live object, and
/// an object whose status would not change otherwise gets no write. Objects missing from `live` are skipped.
pub fn status_patches(status: &Status, live: &[Value], controller: &str) -> Vec<StatusPatch> {
    let find = |kind: &str, namespace: Option<&str>, name: &str| {
        live.iter().find(|o| {
            kind_of(o) == kind
                && str_at(o, &["metadata", "name"]) == Some(name)
                && (namespace.is_none() || str_at(o, &["metadata", "namespace"]) == namespace)
        })
    };
    let mut out = Vec::new();
    let mut push = |kind: &str, namespace: Option<&str>, name: &str, mut ours: Value| {
        let Some(object) = find(kind, namespace, name) else {
            return;
        };
        let live_status = object.get("status").cloned().unwrap_or(Value::Null);
        if let (Some(parents), Some(live_parents)) = (
            ours.get_mut("parents").and_then(Value::as_array_mut),
            live_status["parents"].as_array(),
        ) {
            let mut all: Vec<Value> = live_parents
                .iter()
                .filter(|p| str_at(p, &["controllerName"]) != Some(controller))
                .cloned()
                .collect();
            all.append(parents);
            *parents = all;
        }
        keep_transition_times(&mut ours, &live_status);
        if ours == live_status {
            return;
        }
        let api_version = str_at(object, &["apiVersion"]).unwrap_or("gateway.networking.k8s.io/v1");
        let mut metadata = serde_json::json!({ "name": name });
        if let Some(ns) = namespace {
            metadata["namespace"] = ns.into();
        }
        out.push(StatusPatch {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name: name.into(),
            body: serde_json::json!({
                "apiVersion": api_version, "kind": kind, "metadata": metadata, "status": ours,
            }),
        });
    };
    for (name, s) in &status.gateway_classes {
        push(
            "GatewayClass",
            None,
            name,
            serde_json::to_value(s).unwrap_or_default(),
        );
    }
    for (key, s) in &status.gateways {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        push(
            "Gateway",
            Some(ns),
            name,
            serde_json::to_value(s).unwrap_or_default(),
        );
    }
    for (key, s) in &status.routes {
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        push(
            kind,
            Some(ns),
            name,
            serde_json::to_value(s).unwrap_or_default(),
        );
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(type_: &str, status: &str, time: &str) -> Value {
        json!({"type": type_, "status": status, "reason": type_, "message": "",
               "observedGeneration": 2, "lastTransitionTime": time})
    }

    fn ours_status() -> Status {
        serde_json::from_value(json!({
            "gatewayClasses": {},
            "gateways": {"default/tls": {"addresses": [{"type": "IPAddress", "value": "192.168.1.240"}],
                "conditions": [cond("Accepted", "True", "2026-02-01T00:00:00Z")],
                "listeners": [{"name": "new", "supportedKinds": [{"group": "gateway.networking.k8s.io",
                    "kind": "TLSRoute"}], "attachedRoutes": 1,
                    "conditions": [cond("Accepted", "True", "2026-02-01T00:00:00Z")]}]}},
            "routes": {"TLSRoute/default/echo": {"parents": [{
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "tls"},
                "controllerName": "ebpf-gateway.dev/gatewayclass-controller",
                "conditions": [cond("Accepted", "True", "2026-02-01T00:00:00Z")]}]}}
        }))
        .unwrap()
    }

    const CONTROLLER: &str = "ebpf-gateway.dev/gatewayclass-controller";

    #[test]
    fn route_status_keeps_other_controllers_parents_and_drops_our_stale_ones() {
        let other = json!({"parentRef": {"name": "theirs"}, "controllerName": "example.com/other",
                           "conditions": [cond("Accepted", "True", "2025-01-01T00:00:00Z")]});
        let stale = json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gone"},
                           "controllerName": CONTROLLER, "conditions": []});
        let live = vec![
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
            "metadata": {"name": "echo", "namespace": "default"},
            "status": {"parents": [other.clone(), stale]}}),
        ];
        let patches = status_patches(&ours_status(), &live, CONTROLLER);
        assert_eq!(patches.len(), 1, "the Gateway is not live: no write for it");
        let p = &patches[0];
        assert_eq!(
            (p.kind.as_str(), p.namespace.as_deref(), p.name.as_str()),
            ("TLSRoute", Some("default"), "echo")
        );
        assert_eq!(
            p.body["metadata"],
            json!({"name": "echo", "namespace": "default"})
        );
        let parents = p.body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], other);
        assert_eq!(parents[1]["parentRef"]["name"], "tls");
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 2);
    }

    #[test]
    fn no_write_when_only_timestamps_would_change_and_stale_listeners_go() {
        let ours = ours_status();
        let mut gateway_status =
            serde_json::to_value(ours.gateway("default", "tls").unwrap()).unwrap();
        // The live object was written earlier: same conditions, older transition times.
        for c in gateway_status["conditions"].as_array_mut().unwrap() {
            c["lastTransitionTime"] = "2026-01-01T00:00:00Z".into();
        }
        gateway_status["listeners"][0]["conditions"][0]["lastTransitionTime"] =
            "2026-01-01T00:00:00Z".into();
        let gateway = |status: Value| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "tls", "namespace": "default"}, "status": status})
        };
        let patches = status_patches(&ours, &[gateway(gateway_status.clone())], CONTROLLER);
        assert!(patches.is_empty(), "only timestamps differ: {patches:?}");

        // A stale listener entry and a flipped condition: one write, stale entry gone, the flipped condition's
        // time is ours, the unchanged one keeps the live time.
        let mut live = gateway_status.clone();
        live["listeners"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "old", "supportedKinds": [],
            "attachedRoutes": 0, "conditions": []}));
        live["conditions"][0]["status"] = "False".into();
        let patches = status_patches(&ours, &[gateway(live)], CONTROLLER);
        assert_eq!(patches.len(), 1);
        let status = &patches[0].body["status"];
        let names: Vec<&str> = status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["new"]);
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            status["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            status["addresses"],
            json!([{"type": "IPAddress", "value": "192.168.1.240"}])
        );
    }
}
