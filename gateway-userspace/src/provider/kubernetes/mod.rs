//! The Kubernetes provider (feature `kubernetes`): what `gateway run --provider kubernetes` runs besides the
//! agent loop every provider shares.
//!
//! * [`watch`](mod@watch): cluster-wide kube-rs reflectors over every kind the translation reads (Secrets only
//!   one by one, by name, when a permitted certificateRef names them), turned into debounced [`Snapshot`]s —
//!   the same snapshots the file provider makes, translated and programmed by the same agent code.
//! * [`leader`]: Lease-based leader election. Every agent programs its own node; only the leader writes.
//! * [`writer`]: the leader's reconcile loop: status with server-side apply ([`status`]), one LoadBalancer
//!   Service per accepted Gateway ([`service`]), both sent through [`api`]; errors are retried with backoff.
//! * [`start`] ties them together into an [`agent::Source`](crate::agent::Source).
//!
//! Objects are read as `DynamicObject`s and decoded by the same model code as the file provider
//! ([`Object::from_value`]), so both providers produce identical snapshots for identical objects. An object that
//! does not decode is skipped and logged (one bad object never takes the others down).
//!
//! In a cluster the address a Gateway is served on is the one MetalLB gave its Service: a Gateway without
//! `spec.addresses` gets its Service's `status.loadBalancer.ingress` IPs as addresses in the snapshot, so the
//! translation serves them and reports them in `status.addresses` like standalone addresses.
//!
//! What is tested, and how: against a mock API server (`tests/mock_api/`) — through tower-test in
//! `tests/kubernetes_provider.rs`, and over HTTP with the real `gateway` binary programming the kernel in
//! `tests/kubernetes_agent.rs`. Nothing here has been run against a real API server.
use std::collections::HashSet;
use std::time::Duration;

use kube::api::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use tokio::sync::watch as channel;
use tracing::warn;

use crate::model::Object;
use crate::snapshot::Snapshot;

pub mod api;
pub mod leader;
pub mod service;
pub mod status;
pub mod watch;
pub mod writer;

pub use api::{apply_service, apply_status, delete_service};
pub use service::{gateway_status_addresses, load_balancer_service, service_name};
pub use status::{status_patches, StatusPatch};
pub use watch::{watch, Watch};

/// How long the provider waits for more changes before rebuilding the snapshot.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// Everything the Kubernetes provider needs besides a client.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Field manager of every write, and the controller whose route parents are ours.
    pub controller_name: String,
    /// The leader-election Lease.
    pub lease: leader::LeaseSettings,
    /// How long the watch waits for more changes before rebuilding the snapshot.
    pub debounce: Duration,
}

/// Starts the provider on `client`: the watch (snapshots for the agent), the leader election and the leader's
/// writer, fed by the status the agent sends back through the returned source.
pub fn start(client: Client, settings: Settings) -> crate::agent::Source {
    let watch = watch(client.clone(), settings.debounce);
    let (leader, election) = leader::elect(client.clone(), settings.lease.clone());
    let (status_tx, status_rx) = channel::channel(None);
    let writer = writer::spawn(
        client.clone(),
        settings.controller_name,
        status_rx,
        watch.objects.clone(),
        leader.clone(),
    );
    crate::agent::Source {
        snapshots: watch.snapshots.clone(),
        serve_initial: false,
        status: Some(status_tx),
        tasks: vec![watch.task, election, writer],
        leader: Some(leader),
        on_shutdown: Some(Box::pin(async move {
            leader::release(client, &settings.lease).await
        })),
    }
}

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
    assign_service_addresses(&mut objects);
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

/// A Gateway without `spec.addresses` is served on the addresses MetalLB gave its managed Service (a Service
/// named [`service_name`], labelled as ours and with the Gateway's name).
fn assign_service_addresses(objects: &mut [Value]) {
    let mut assigned = std::collections::HashMap::new();
    for svc in objects.iter().filter(|o| kind_of(o) == "Service") {
        let labels = &svc["metadata"]["labels"];
        let (Some(gateway), Some(namespace)) = (
            str_at(labels, &[service::GATEWAY_NAME_LABEL]),
            str_at(svc, &["metadata", "namespace"]),
        ) else {
            continue;
        };
        let addresses = gateway_status_addresses(svc);
        if str_at(labels, &[service::MANAGED_BY.0]) == Some(service::MANAGED_BY.1)
            && str_at(svc, &["metadata", "name"]) == Some(service_name(gateway).as_str())
            && !addresses.is_empty()
        {
            assigned.insert((namespace.to_owned(), gateway.to_owned()), addresses);
        }
    }
    for gateway in objects.iter_mut().filter(|o| kind_of(o) == "Gateway") {
        let requested = gateway["spec"]["addresses"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        let key = (
            str_at(gateway, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_owned(),
            str_at(gateway, &["metadata", "name"])
                .unwrap_or("")
                .to_owned(),
        );
        if let (false, Some(addresses), Some(spec)) = (
            requested,
            assigned.get(&key),
            gateway.get_mut("spec").and_then(Value::as_object_mut),
        ) {
            spec.insert("addresses".into(), Value::Array(addresses.clone()));
        }
    }
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
