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
//! Not here yet: status writing (server-side apply), leader election, the Gateways' LoadBalancer Services, and
//! wiring into `gateway run --provider kubernetes`.
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
}
