//! The Kubernetes provider (feature `kubernetes`): cluster-wide kube-rs reflectors over every kind the
//! translation reads, turned into [`Snapshot`]s — debounced, published only once every store has listed, and
//! only when something changed.
//!
//! Objects are read as `DynamicObject`s and decoded by the same model code as the file provider
//! ([`Object::from_value`]), so both providers produce identical snapshots for identical objects. An object that
//! does not decode is skipped and logged (one bad object never takes the others down). Secrets are kept only when
//! a Gateway listener's certificateRef names them and the reference is permitted (same namespace, or a
//! ReferenceGrant allows it).
//!
//! While the API server is unreachable the watchers back off and retry; the stores keep their last state and no
//! snapshot is published, so the agent keeps serving the last one; after a relist the stores are replaced whole
//! and the next snapshot reflects the cluster again.
//!
//! The status bodies the leader writes are computed here ([`status_patches`]: other controllers' route parents
//! kept, stale entries of ours removed, no write when only timestamps would change).
//! The LoadBalancer Service the leader keeps for each accepted Gateway is built here ([`load_balancer_service`]),
//! as is the Gateway `status.addresses` it yields ([`gateway_status_addresses`]).
//!
//! They are sent with [`apply_status`], [`apply_service`] and [`delete_service`].
//!
//! Not here yet: leader election, the reconcile loop that decides the writes, and wiring into
//! `gateway run --provider kubernetes`.
use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::model::Object;
use crate::snapshot::Snapshot;
use crate::status::Status;

/// How long the provider waits for more changes before rebuilding the snapshot.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// One watched kind: `(group, version, kind, plural)`.
pub type WatchedKind = (&'static str, &'static str, &'static str, &'static str);

/// Every kind the translation reads, in snapshot order.
pub const WATCHED: [WatchedKind; 12] = [
    (
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        "gatewayclasses",
    ),
    ("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    ("gateway.networking.k8s.io", "v1", "TLSRoute", "tlsroutes"),
    ("gateway.networking.k8s.io", "v1", "TCPRoute", "tcproutes"),
    ("gateway.networking.k8s.io", "v1", "UDPRoute", "udproutes"),
    (
        "gateway.networking.k8s.io",
        "v1",
        "ReferenceGrant",
        "referencegrants",
    ),
    ("", "v1", "Service", "services"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("", "v1", "Secret", "secrets"),
    ("", "v1", "Namespace", "namespaces"),
];

/// The API resource of a watched kind.
pub fn api_resource((group, version, kind, plural): WatchedKind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn kind_of(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

/// `(namespace, name)` of every Secret a Gateway listener references and is permitted to read: same namespace,
/// or a ReferenceGrant in the Secret's namespace from Gateways in the Gateway's namespace to that Secret.
pub fn permitted_secret_refs(objects: &[Value]) -> HashSet<(String, String)> {
    let grants: Vec<&Value> = objects
        .iter()
        .filter(|o| kind_of(o) == "ReferenceGrant")
        .collect();
    let granted = |from_ns: &str, to_ns: &str, name: &str| {
        grants.iter().any(|g| {
            str_at(g, &["metadata", "namespace"]) == Some(to_ns)
                && g["spec"]["from"].as_array().is_some_and(|from| {
                    from.iter().any(|f| {
                        str_at(f, &["group"]) == Some("gateway.networking.k8s.io")
                            && str_at(f, &["kind"]) == Some("Gateway")
                            && str_at(f, &["namespace"]) == Some(from_ns)
                    })
                })
                && g["spec"]["to"].as_array().is_some_and(|to| {
                    to.iter().any(|t| {
                        str_at(t, &["group"]).unwrap_or("").is_empty()
                            && str_at(t, &["kind"]) == Some("Secret")
                            && str_at(t, &["name"]).is_none_or(|n| n == name)
                    })
                })
        })
    };
    let mut out = HashSet::new();
    for gateway in objects.iter().filter(|o| kind_of(o) == "Gateway") {
        let gw_ns = str_at(gateway, &["metadata", "namespace"]).unwrap_or("default");
        let listeners = gateway["spec"]["listeners"]
            .as_array()
            .into_iter()
            .flatten();
        for cert in listeners
            .filter_map(|l| l["tls"]["certificateRefs"].as_array())
            .flatten()
        {
            let group = str_at(cert, &["group"]).unwrap_or("");
            let kind = str_at(cert, &["kind"]).unwrap_or("Secret");
            let (Some(name), true) = (
                str_at(cert, &["name"]),
                group.is_empty() && kind == "Secret",
            ) else {
                continue;
            };
            let ns = str_at(cert, &["namespace"]).unwrap_or(gw_ns);
            if ns == gw_ns || granted(gw_ns, ns, name) {
                out.insert((ns.to_owned(), name.to_owned()));
            }
        }
    }
    out
}

/// Builds a snapshot from API objects (each with `apiVersion` and `kind`), whatever order they come in: objects
/// are ordered by kind, then namespace and name, so equal clusters give equal snapshots (the translation orders
/// by `creationTimestamp` itself). Unreferenced Secrets are dropped; objects that do not decode are skipped and
/// logged.
pub fn snapshot_from_objects(mut objects: Vec<Value>) -> Snapshot {
    let secrets = permitted_secret_refs(&objects);
    objects.retain(|o| {
        kind_of(o) != "Secret"
            || secrets.contains(&(
                str_at(o, &["metadata", "namespace"])
                    .unwrap_or("")
                    .to_owned(),
                str_at(o, &["metadata", "name"]).unwrap_or("").to_owned(),
            ))
    });
    let rank = |o: &Value| {
        WATCHED
            .iter()
            .position(|w| w.2 == kind_of(o))
            .unwrap_or(usize::MAX)
    };
    let key = |o: &Value| {
        (
            rank(o),
            str_at(o, &["metadata", "namespace"])
                .unwrap_or("")
                .to_owned(),
            str_at(o, &["metadata", "name"]).unwrap_or("").to_owned(),
        )
    };
    objects.sort_by_cached_key(key);
    let mut snapshot = Snapshot::default();
    for (index, value) in objects.into_iter().enumerate() {
        let what = format!("{:?}", key(&value));
        match Object::from_value(value) {
            Ok(Some(mut object)) => {
                object.meta_mut().load_order = index as u64;
                if let Err(e) = snapshot.insert(object) {
                    warn!(object = %what, error = %e, "skipping object");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(object = %what, error = %e, "skipping object that does not decode"),
        }
    }
    snapshot
}

/// Labels on the agent pods (the DaemonSet's); a Gateway's LoadBalancer Service selects them.
pub const AGENT_SELECTOR: (&str, &str) = ("app.kubernetes.io/name", "ebpf-gateway");
/// Label naming the Gateway a managed Service belongs to (the label Gateway API implementations use).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// MetalLB annotation requesting specific addresses for a Service.
pub const METALLB_IPS_ANNOTATION: &str = "metallb.universe.tf/loadBalancerIPs";

/// FNV-1a, for stable short name suffixes.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The name of a Gateway's LoadBalancer Service: `ebpf-gw-<gateway>`, a valid Service name (DNS-1035 label:
/// at most 63 characters, no dots); long names are cut and end in a hash of the full name.
pub fn service_name(gateway_name: &str) -> String {
    let name = format!("ebpf-gw-{}", gateway_name.replace('.', "-"));
    if name.len() <= 63 {
        return name;
    }
    let cut = name[..54].trim_end_matches('-');
    format!("{cut}-{:08x}", fnv1a(gateway_name))
}

/// The LoadBalancer Service the leader keeps for an accepted Gateway (a JSON object for server-side apply):
/// one port per distinct listener (port, protocol) — UDP for UDP listeners, TCP otherwise; the Gateway's
/// `spec.infrastructure` labels and annotations passed through (so e.g. a MetalLB pool can be chosen); its
/// `IPAddress` `spec.addresses` requested from MetalLB; owned by the Gateway, so it is garbage-collected with it;
/// selecting the agents with `externalTrafficPolicy: Local`, so the address is announced from a node whose agent
/// is ready. `None` when the object has no name or uid (not from the API server).
pub fn load_balancer_service(gateway: &Value) -> Option<Value> {
    let name = str_at(gateway, &["metadata", "name"])?;
    let uid = str_at(gateway, &["metadata", "uid"])?;
    let namespace = str_at(gateway, &["metadata", "namespace"]).unwrap_or("default");
    let mut ports: Vec<(u64, &str)> = Vec::new();
    for listener in gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(port) = listener["port"].as_u64() else {
            continue;
        };
        let protocol = if str_at(listener, &["protocol"]) == Some("UDP") {
            "UDP"
        } else {
            "TCP"
        };
        if !ports.contains(&(port, protocol)) {
            ports.push((port, protocol));
        }
    }
    ports.sort();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, protocol)| {
            serde_json::json!({
                "name": format!("{}-{port}", protocol.to_ascii_lowercase()),
                "port": port, "targetPort": port, "protocol": protocol,
            })
        })
        .collect();
    let infrastructure = &gateway["spec"]["infrastructure"];
    let mut labels = infrastructure["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("app.kubernetes.io/managed-by".into(), "ebpf-gateway".into());
    labels.insert(GATEWAY_NAME_LABEL.into(), name.into());
    let mut annotations = infrastructure["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let requested: Vec<&str> = gateway["spec"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| str_at(a, &["type"]).unwrap_or("IPAddress") == "IPAddress")
        .filter_map(|a| str_at(a, &["value"]))
        .collect();
    if !requested.is_empty() {
        annotations.insert(METALLB_IPS_ANNOTATION.into(), requested.join(",").into());
    }
    Some(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "allocateLoadBalancerNodePorts": false,
            "selector": { AGENT_SELECTOR.0: AGENT_SELECTOR.1 },
            "ports": ports,
        },
    }))
}

/// The addresses a LoadBalancer Service was given (`status.loadBalancer.ingress[].ip`), as Gateway
/// `status.addresses` entries.
pub fn gateway_status_addresses(service: &Value) -> Vec<Value> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| str_at(i, &["ip"]))
        .map(|ip| serde_json::json!({"type": "IPAddress", "value": ip}))
        .collect()
}

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

/// The API of one object kind, namespaced or cluster-wide.
fn api_for(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = WATCHED
        .iter()
        .find(|w| w.2 == kind)
        .map(|w| w.3.to_owned())
        .unwrap_or_else(|| format!("{}s", kind.to_ascii_lowercase()));
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Writes one status with server-side apply, `field_manager` (the controller name) owning what it sets, forced:
/// this controller is the only writer of its own entries.
pub async fn apply_status(
    client: &Client,
    patch: &StatusPatch,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let api = api_for(
        client,
        &patch.api_version,
        &patch.kind,
        patch.namespace.as_deref(),
    );
    let params = kube::api::PatchParams::apply(field_manager).force();
    api.patch_status(&patch.name, &params, &kube::api::Patch::Apply(&patch.body))
        .await?;
    Ok(())
}

/// Creates or updates a Gateway's LoadBalancer Service ([`load_balancer_service`]) with server-side apply.
pub async fn apply_service(
    client: &Client,
    service: &Value,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let name = str_at(service, &["metadata", "name"]).unwrap_or_default();
    let api = api_for(
        client,
        "v1",
        "Service",
        str_at(service, &["metadata", "namespace"]),
    );
    let params = kube::api::PatchParams::apply(field_manager).force();
    api.patch(name, &params, &kube::api::Patch::Apply(service))
        .await?;
    Ok(())
}

/// Deletes a managed Service whose Gateway is gone or no longer accepted (the owner reference also lets the
/// garbage collector do it when the Gateway is deleted). A Service already gone is not an error.
pub async fn delete_service(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let api = api_for(client, "v1", "Service", Some(namespace));
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The JSON of a stored object, with the `apiVersion` and `kind` list items lack, less the bookkeeping that
/// changes on every write (`resourceVersion`, `managedFields`) so such writes do not make a new snapshot.
fn to_value(object: &DynamicObject, resource: &ApiResource) -> Option<Value> {
    let mut value = serde_json::to_value(object).ok()?;
    let map = value.as_object_mut()?;
    map.insert("apiVersion".into(), resource.api_version.clone().into());
    map.insert("kind".into(), resource.kind.clone().into());
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    Some(value)
}

/// Every object of every store.
fn collect(stores: &[(ApiResource, Store<DynamicObject>)]) -> Vec<Value> {
    stores
        .iter()
        .flat_map(|(resource, store)| {
            store
                .state()
                .into_iter()
                .filter_map(move |o| to_value(&o, resource))
        })
        .collect()
}

/// Starts one reflector per watched kind and a task that publishes a snapshot once every store has listed, then
/// after each burst of changes (quiet for `debounce`) when the snapshot differs from the last one published.
/// The receiver starts with an empty snapshot that is not meant to be served: wait for the first change.
pub fn watch(client: Client, debounce: Duration) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    let mut stores = Vec::new();
    let mut reflectors = Vec::new();
    for kind in WATCHED {
        let resource = api_resource(kind);
        let writer = Writer::<DynamicObject>::new(resource.clone());
        stores.push((resource.clone(), writer.as_reader()));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let changed = changed_tx.clone();
        reflectors.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(reflector::reflector(
                writer,
                watcher(api, watcher::Config::default())
            )
            .default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => {
                        let _ = changed.try_send(());
                    }
                    Err(e) => warn!(kind = resource.kind, error = %e, "watch failed; retrying"),
                }
            }
        }));
    }
    let task = tokio::spawn(async move {
        for (resource, store) in &stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
            debug!(kind = resource.kind, "listed");
        }
        loop {
            // Debounce: rebuild once nothing changed for `debounce`.
            while tokio::time::timeout(debounce, changed_rx.recv())
                .await
                .is_ok()
            {}
            let snapshot = snapshot_from_objects(collect(&stores));
            tx.send_if_modified(|last| {
                let modified = *last != snapshot;
                *last = snapshot;
                modified
            });
            if changed_rx.recv().await.is_none() {
                break;
            }
        }
        for r in reflectors {
            r.abort();
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(ns: &str, cert_ns: Option<&str>) -> Value {
        let mut cert = json!({"name": "cert"});
        if let Some(n) = cert_ns {
            cert["namespace"] = n.into();
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": ns},
            "spec": {"gatewayClassName": "c", "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443,
                "tls": {"mode": "Terminate", "certificateRefs": [cert]}}]}})
    }

    fn grant(ns: &str, from_ns: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": ns},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": from_ns}],
                     "to": [{"group": "", "kind": "Secret"}]}})
    }

    fn refs(objects: &[Value]) -> Vec<(String, String)> {
        let mut v: Vec<_> = permitted_secret_refs(objects).into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn secrets_are_kept_only_when_referenced_and_permitted() {
        let same = refs(&[gateway("a", None)]);
        assert_eq!(same, [("a".to_string(), "cert".to_string())]);
        assert!(
            refs(&[gateway("a", Some("b"))]).is_empty(),
            "cross-namespace without a grant"
        );
        assert!(
            refs(&[gateway("a", Some("b")), grant("a", "a")]).is_empty(),
            "grant in the wrong namespace"
        );
        assert_eq!(
            refs(&[gateway("a", Some("b")), grant("b", "a")]),
            [("b".into(), "cert".into())]
        );
    }

    #[test]
    fn snapshot_order_does_not_depend_on_input_order() {
        let svc = |name: &str| {
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": 80}]}})
        };
        let a = snapshot_from_objects(vec![svc("x"), svc("y"), gateway("default", None)]);
        let b = snapshot_from_objects(vec![gateway("default", None), svc("y"), svc("x")]);
        assert_eq!(a, b);
        assert_eq!(a.services.len(), 2);
        assert_eq!(a.gateways.len(), 1);
    }

    #[test]
    fn load_balancer_service_follows_the_gateway() {
        let gw = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "tls", "namespace": "web", "uid": "u-1"},
            "spec": {"gatewayClassName": "c",
                "infrastructure": {"annotations": {"metallb.universe.tf/address-pool": "edge"},
                                   "labels": {"team": "a"}},
                "addresses": [{"type": "IPAddress", "value": "192.168.1.240"},
                              {"type": "Hostname", "value": "gw.example.com"}],
                "listeners": [
                    {"name": "a", "protocol": "TLS", "port": 443},
                    {"name": "b", "protocol": "HTTPS", "port": 443},
                    {"name": "dns", "protocol": "UDP", "port": 53},
                    {"name": "dns-tcp", "protocol": "TCP", "port": 53}]}});
        let svc = load_balancer_service(&gw).unwrap();
        assert_eq!(svc["metadata"]["name"], "ebpf-gw-tls");
        assert_eq!(svc["metadata"]["namespace"], "web");
        assert_eq!(
            svc["metadata"]["annotations"],
            json!({
            "metallb.universe.tf/address-pool": "edge",
            "metallb.universe.tf/loadBalancerIPs": "192.168.1.240"})
        );
        assert_eq!(svc["metadata"]["labels"]["team"], "a");
        assert_eq!(svc["metadata"]["labels"][GATEWAY_NAME_LABEL], "tls");
        assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(svc["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            svc["spec"]["selector"],
            json!({"app.kubernetes.io/name": "ebpf-gateway"})
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([
            {"name": "tcp-53", "port": 53, "targetPort": 53, "protocol": "TCP"},
            {"name": "udp-53", "port": 53, "targetPort": 53, "protocol": "UDP"},
            {"name": "tcp-443", "port": 443, "targetPort": 443, "protocol": "TCP"}])
        );
        // No uid: not an API object, no Service.
        let mut no_uid = gw.clone();
        no_uid["metadata"].as_object_mut().unwrap().remove("uid");
        assert!(load_balancer_service(&no_uid).is_none());
    }

    #[test]
    fn service_names_are_valid_and_stable() {
        let long = "a".repeat(200);
        for gw in ["tls", "my.gateway", long.as_str(), &format!("{long}-other")] {
            let n = service_name(gw);
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.starts_with(|c: char| c.is_ascii_lowercase()) && !n.ends_with('-'),
                "{n}"
            );
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
            assert_eq!(n, service_name(gw));
        }
        assert_ne!(service_name(&long), service_name(&format!("{long}-other")));
    }

    #[test]
    fn status_addresses_come_from_the_service() {
        let svc = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.241"}, {"hostname": "x"}]}}});
        assert_eq!(
            gateway_status_addresses(&svc),
            [json!({"type": "IPAddress", "value": "192.168.1.241"})]
        );
        assert!(gateway_status_addresses(&json!({})).is_empty());
    }

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
