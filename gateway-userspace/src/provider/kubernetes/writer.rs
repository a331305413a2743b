//! The leader's reconcile loop: from the status the agent computed and the live objects, the writes that bring
//! the cluster in line ([`plan`], pure), sent while — and only while — this agent holds the Lease.
//!
//! * Status: [`status_patches`] (server-side apply under the controller name; nothing when only timestamps
//!   would change).
//! * Services: one LoadBalancer Service per accepted Gateway ([`load_balancer_service`]), applied when the live
//!   one is missing or differs in a field we set; a Service we manage whose Gateway is gone or no longer
//!   accepted is deleted (the owner reference also lets the garbage collector remove it with the Gateway).
//!
//! It runs again whenever the status, the live objects or the leadership change. A failed write is logged and
//! the whole plan retried with exponential backoff (1 s to 1 min); the loop never ends on an error. An identical
//! write is not repeated within [`REPEAT_AFTER`] (a guard against a loop with a server that normalises what we
//! send), but is retried then.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::service::{GATEWAY_NAME_LABEL, MANAGED_BY};
use super::{
    apply_service, apply_status, delete_service, kind_of, load_balancer_service, service_name,
    status_patches, str_at, StatusPatch,
};
use crate::status::{find_condition, ConditionStatus, Status};

/// Backoff of a failed plan: doubled from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// An identical write is sent again at the earliest after this.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// The writes that bring the cluster to the computed status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Services to apply (missing or different).
    pub services: Vec<Value>,
    /// `(namespace, name)` of managed Services to delete.
    pub stale_services: Vec<(String, String)>,
    pub status: Vec<StatusPatch>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.stale_services.is_empty() && self.status.is_empty()
    }
}

/// Whether every field of `desired` is in `live` with the same value (the server adds defaults of its own).
fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| contains(lv, v))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        _ => live == desired,
    }
}

/// The writes for `status` given the live objects: see the module docs.
pub fn plan(status: &Status, objects: &[Value], controller: &str) -> Plan {
    let live = |kind: &str, namespace: &str, name: &str| {
        objects.iter().find(|o| {
            kind_of(o) == kind
                && str_at(o, &["metadata", "namespace"]) == Some(namespace)
                && str_at(o, &["metadata", "name"]) == Some(name)
        })
    };
    let mut plan = Plan::default();
    let mut wanted = BTreeSet::new();
    for (key, gateway_status) in &status.gateways {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let accepted = find_condition(&gateway_status.conditions, "Accepted")
            .is_some_and(|c| c.status == ConditionStatus::True);
        let Some(service) = live("Gateway", namespace, name)
            .filter(|_| accepted)
            .and_then(load_balancer_service)
        else {
            continue;
        };
        let service_name = service_name(name);
        if !live("Service", namespace, &service_name).is_some_and(|l| contains(l, &service)) {
            plan.services.push(service);
        }
        wanted.insert((namespace.to_owned(), service_name));
    }
    for svc in objects.iter().filter(|o| kind_of(o) == "Service") {
        let labels = &svc["metadata"]["labels"];
        if str_at(labels, &[MANAGED_BY.0]) != Some(MANAGED_BY.1)
            || str_at(labels, &[GATEWAY_NAME_LABEL]).is_none()
        {
            continue;
        }
        let key = (
            str_at(svc, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_owned(),
            str_at(svc, &["metadata", "name"]).unwrap_or("").to_owned(),
        );
        if !wanted.contains(&key) {
            plan.stale_services.push(key);
        }
    }
    plan.status = status_patches(status, objects, controller);
    plan
}

/// Runs the loop (see the module docs) until the status sender is dropped.
pub fn spawn(
    client: Client,
    controller: String,
    mut status: watch::Receiver<Option<Arc<Status>>>,
    mut objects: watch::Receiver<Arc<Vec<Value>>>,
    mut leader: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = Writer {
            client,
            controller,
            sent: HashMap::new(),
        };
        let mut backoff = BACKOFF.0;
        // After a failure nothing is sent before `backoff_until`, whatever changes meanwhile.
        let mut backoff_until: Option<tokio::time::Instant> = None;
        // When writes held back as repeats may go (see REPEAT_AFTER).
        let mut repeat_at: Option<tokio::time::Instant> = None;
        loop {
            let wake = backoff_until.or(repeat_at);
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = status.changed() => if changed.is_err() { break },
                changed = objects.changed() => if changed.is_err() { break },
                changed = leader.changed() => if changed.is_err() { break },
                _ = timer => {}
            }
            let now = tokio::time::Instant::now();
            if backoff_until.is_some_and(|at| now < at) {
                continue;
            }
            backoff_until = None;
            repeat_at = None;
            if !*leader.borrow_and_update() {
                continue;
            }
            let Some(computed) = status.borrow_and_update().clone() else {
                continue;
            };
            let live = objects.borrow_and_update().clone();
            let plan = plan(&computed, &live, &writer.controller);
            match writer.send(plan, &leader).await {
                Ok(repeat) => {
                    backoff = BACKOFF.0;
                    repeat_at = repeat.map(|d| tokio::time::Instant::now() + d);
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "writing status or Services failed; retrying");
                    backoff_until = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    })
}

struct Writer {
    client: Client,
    controller: String,
    /// Identical writes recently sent, by object: see [`REPEAT_AFTER`].
    sent: HashMap<String, (Value, Instant)>,
}

impl Writer {
    /// Whether this exact write went out less than [`REPEAT_AFTER`] ago; if so, when it may go again.
    fn recently_sent(&self, key: &str, body: &Value) -> Option<Duration> {
        let (last, at) = self.sent.get(key)?;
        (last == body && at.elapsed() < REPEAT_AFTER).then(|| REPEAT_AFTER - at.elapsed())
    }

    /// Sends the plan, stopping as soon as the leadership is lost. Every write is tried; the first error is
    /// returned. `Ok(Some(d))`: some writes were held back as repeats, to be tried again in `d`.
    async fn send(
        &mut self,
        plan: Plan,
        leader: &watch::Receiver<bool>,
    ) -> Result<Option<Duration>, kube::Error> {
        let mut first_error = None;
        let mut repeat: Option<Duration> = None;
        let mut note = |result: Result<(), kube::Error>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        for service in plan.services {
            let key = format!(
                "Service/{}/{}",
                str_at(&service, &["metadata", "namespace"]).unwrap_or(""),
                str_at(&service, &["metadata", "name"]).unwrap_or("")
            );
            if let Some(wait) = self.recently_sent(&key, &service) {
                repeat = Some(repeat.map_or(wait, |r| r.min(wait)));
                continue;
            }
            if !*leader.borrow() {
                return Ok(None);
            }
            info!(service = key, "applying the Gateway's LoadBalancer Service");
            let result = apply_service(&self.client, &service, &self.controller).await;
            if result.is_ok() {
                self.sent.insert(key, (service, Instant::now()));
            }
            note(result);
        }
        for (namespace, name) in plan.stale_services {
            if !*leader.borrow() {
                return Ok(None);
            }
            info!(
                namespace,
                name, "deleting a LoadBalancer Service whose Gateway is gone or not accepted"
            );
            self.sent.remove(&format!("Service/{namespace}/{name}"));
            note(delete_service(&self.client, &namespace, &name).await);
        }
        for patch in plan.status {
            let key = format!(
                "{}/{}/{}",
                patch.kind,
                patch.namespace.as_deref().unwrap_or(""),
                patch.name
            );
            if let Some(wait) = self.recently_sent(&key, &patch.body) {
                repeat = Some(repeat.map_or(wait, |r| r.min(wait)));
                continue;
            }
            if !*leader.borrow() {
                return Ok(None);
            }
            debug!(object = key, "writing status");
            let result = apply_status(&self.client, &patch, &self.controller).await;
            if result.is_ok() {
                self.sent.insert(key, (patch.body, Instant::now()));
            }
            note(result);
        }
        self.sent.retain(|_, (_, at)| at.elapsed() < REPEAT_AFTER);
        match first_error {
            Some(e) => Err(e),
            None => Ok(repeat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(name: &str) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": "web", "uid": format!("uid-{name}")},
               "spec": {"gatewayClassName": "c", "listeners": [{"name": "p", "protocol": "TLS", "port": 443}]}})
    }

    fn status_with(gateways: &[(&str, &str)]) -> Status {
        let gateways: serde_json::Map<String, Value> = gateways
            .iter()
            .map(|(name, accepted)| {
                (
                    format!("web/{name}"),
                    json!({"addresses": [], "listeners": [], "conditions": [{"type": "Accepted",
                        "status": accepted, "reason": "Accepted", "message": "", "observedGeneration": 1,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
                )
            })
            .collect();
        serde_json::from_value(json!({"gatewayClasses": {}, "gateways": gateways, "routes": {}}))
            .unwrap()
    }

    #[test]
    fn services_follow_accepted_gateways() {
        const CONTROLLER: &str = "ebpf-gateway.dev/gatewayclass-controller";
        let live_service = |gateway: &Value| {
            let mut svc = load_balancer_service(gateway).unwrap();
            // What the API server adds.
            svc["spec"]["clusterIP"] = "10.96.0.7".into();
            svc["status"] = json!({"loadBalancer": {}});
            svc
        };
        let unrelated = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ebpf-gw-x", "namespace": "web", "labels": {"app": "x"}}});
        // `a` accepted, with its Service live and unchanged; `b` accepted, no Service yet; `c` not accepted but
        // with a Service; a managed Service whose Gateway `d` is gone; a Service that is not ours.
        let objects = vec![
            gateway("a"),
            gateway("b"),
            gateway("c"),
            live_service(&gateway("a")),
            live_service(&gateway("c")),
            live_service(&gateway("d")),
            unrelated,
        ];
        let status = status_with(&[("a", "True"), ("b", "True"), ("c", "False")]);
        let plan = plan(&status, &objects, CONTROLLER);
        let applied: Vec<&str> = plan
            .services
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(applied, ["ebpf-gw-b"]);
        let mut stale = plan.stale_services.clone();
        stale.sort();
        assert_eq!(
            stale,
            [
                ("web".to_string(), "ebpf-gw-c".to_string()),
                ("web".to_string(), "ebpf-gw-d".to_string())
            ]
        );

        // A listener port changes: `a`'s Service is applied again.
        let mut moved = gateway("a");
        moved["spec"]["listeners"][0]["port"] = 8443.into();
        let mut objects = objects;
        objects[0] = moved;
        let plan = super::plan(&status, &objects, CONTROLLER);
        assert!(plan
            .services
            .iter()
            .any(|s| s["metadata"]["name"] == "ebpf-gw-a"));
    }

    #[test]
    fn live_objects_may_carry_more_than_we_set() {
        let desired = json!({"spec": {"ports": [{"port": 443}], "type": "LoadBalancer"}});
        let live = json!({"spec": {"ports": [{"port": 443, "nodePort": 0}], "type": "LoadBalancer",
                                   "clusterIP": "10.0.0.1"}});
        assert!(contains(&live, &desired));
        let changed = json!({"spec": {"ports": [{"port": 8443}], "type": "LoadBalancer"}});
        assert!(!contains(&live, &changed));
        let more_ports = json!({"spec": {"ports": [{"port": 443}, {"port": 80}]}});
        assert!(!contains(&live, &more_ports));
    }
}
