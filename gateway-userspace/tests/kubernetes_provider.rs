//! The Kubernetes provider against the mock API server of `mock_api/` (over tower-test), starting from a recorded
//! fixture (`tests/fixtures/kubernetes/cluster.json`). Several agents can share one server, each with its own
//! client, so requests are attributed to an agent.
//!
//! The agents here are the provider ([`start`]) plus the status half of the agent loop (translate each snapshot,
//! hand the status back); the kernel half is the same for every provider and is tested with the file provider.
//! Needs `--features kubernetes`.
#![cfg(feature = "kubernetes")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_userspace::agent::Source;
use gateway_userspace::provider::kubernetes::{leader::LeaseSettings, start, Settings, WATCHED};
use gateway_userspace::snapshot::Snapshot;
use gateway_userspace::status::Timestamp;
use gateway_userspace::translate::{translate_with_previous, TranslateOptions};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

mod mock_api;
use mock_api::{client, condition, fixture, full, ApiServer, Call, RespBody};

const CONTROLLER: &str = "ebpf-gateway.dev/gatewayclass-controller";
const OTHER_CONTROLLER: &str = "example.com/other-controller";

fn settings(identity: &str) -> Settings {
    Settings {
        controller_name: CONTROLLER.into(),
        lease: LeaseSettings {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(700),
            retry_period: Duration::from_millis(200),
            ..LeaseSettings::new("ebpf-gateway-system", "ebpf-gateway-leader", identity)
        },
        debounce: Duration::from_millis(50),
    }
}

/// An agent: the provider, and the status half of the agent loop (each snapshot translated, the status handed
/// back to the provider's sink). Aborting the task stops the agent and its provider.
fn agent(
    server: &Arc<Mutex<ApiServer>>,
    identity: &str,
) -> (JoinHandle<()>, tokio::sync::watch::Receiver<Arc<Snapshot>>) {
    let mut source: Source = start(client(server, identity), settings(identity));
    let snapshots = source.snapshots.clone();
    let task = tokio::spawn(async move {
        let options = TranslateOptions {
            controller_name: CONTROLLER.into(),
            ..Default::default()
        };
        let mut previous = None;
        while source.snapshots.changed().await.is_ok() {
            let snapshot = source.snapshots.borrow_and_update().clone();
            let (_, status) = translate_with_previous(
                &snapshot,
                &options.at(Timestamp::now()),
                previous.as_ref(),
            );
            source
                .status
                .as_ref()
                .unwrap()
                .send_replace(Some(Arc::new(status.clone())));
            previous = Some(status);
        }
    });
    (task, snapshots)
}

/// Waits (at most 20 s) until `done` holds for the server.
async fn until(server: &Arc<Mutex<ApiServer>>, what: &str, done: impl Fn(&ApiServer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if done(&server.lock().unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until no write arrived for `quiet` (at most 20 s); returns the number of writes.
async fn settle(server: &Arc<Mutex<ApiServer>>, quiet: Duration) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut count = server.lock().unwrap().writes().len();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = server.lock().unwrap().writes().len();
        if now != count {
            count = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return count;
        }
        assert!(Instant::now() < deadline, "writes never stopped: {count}");
    }
}

async fn next(rx: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("a snapshot within 20 s")
        .unwrap();
    rx.borrow_and_update().clone()
}

/// The provider's watch alone, on a fresh client of `server`.
fn watch_only(server: &Arc<Mutex<ApiServer>>) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
    let w = gateway_userspace::provider::kubernetes::watch(
        client(server, "watch"),
        Duration::from_millis(50),
    );
    // The task keeps running (detached) for the test's duration.
    drop(w.task);
    w.snapshots
}

fn tls_route(name: &str, hostname: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "generation": 1,
                        "creationTimestamp": "2026-01-02T00:00:00Z"},
           "spec": {"parentRefs": [{"name": "tls"}], "hostnames": [hostname],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 443}]}]}})
}

async fn wait_watching(server: &Arc<Mutex<ApiServer>>, plural: &str) {
    until(server, &format!("a watch on {plural}"), |s| {
        s.watches.iter().any(|w| w.plural == plural)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// Watch -> snapshots

#[tokio::test]
async fn lists_yield_the_first_snapshot_and_watch_events_the_next() {
    let server = ApiServer::new(fixture());
    let mut rx = watch_only(&server);

    let first = next(&mut rx).await;
    assert_eq!(first.gateway_classes.len(), 1);
    assert_eq!(first.gateways.len(), 1);
    assert_eq!(first.gateways[0].metadata.name, "tls");
    assert_eq!(first.tls_routes.len(), 1);
    assert_eq!(first.services.len(), 1);
    assert_eq!(first.endpoint_slices.len(), 1);
    assert_eq!(first.namespaces.len(), 1);
    assert!(
        first.secrets.is_empty(),
        "a Secret no certificateRef names is not kept"
    );
    {
        let s = server.lock().unwrap();
        for (_, _, kind, plural) in WATCHED {
            let listed = s
                .calls
                .iter()
                .any(|c| c.method == "GET" && c.path.ends_with(&format!("/{plural}")));
            assert_eq!(listed, kind != "Secret", "{plural}: {:?}", s.calls);
        }
        assert!(
            s.calls.iter().all(|c| c.method == "GET"),
            "the watch only reads"
        );
    }

    // A TLSRoute appears.
    wait_watching(&server, "tlsroutes").await;
    server
        .lock()
        .unwrap()
        .put("tlsroutes", tls_route("other", "other.example.com"));
    let second = next(&mut rx).await;
    let mut names: Vec<&str> = second
        .tls_routes
        .iter()
        .map(|r| r.metadata.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["echo", "other"]);
    assert_eq!(second.gateways, first.gateways);
}

#[tokio::test]
async fn no_snapshot_until_every_kind_listed_through_api_errors() {
    let server = ApiServer::new(fixture());
    server
        .lock()
        .unwrap()
        .failing_lists
        .insert("services".into(), 2);
    let mut rx = watch_only(&server);
    let first = next(&mut rx).await;
    assert_eq!(
        first.services.len(),
        1,
        "published only after Services listed"
    );
    assert_eq!(first.tls_routes.len(), 1);
    let s = server.lock().unwrap();
    let service_lists = s
        .calls
        .iter()
        .filter(|c| c.path.ends_with("/services") && !c.query.contains("watch=true"))
        .count();
    assert!(
        service_lists >= 3,
        "two failures, then a retry: {:?}",
        s.calls
    );
}

#[tokio::test]
async fn snapshot_is_not_republished_when_nothing_changed() {
    let server = ApiServer::new(fixture());
    let mut rx = watch_only(&server);
    let first = next(&mut rx).await;
    // The same Service at a new resourceVersion with new managedFields (another controller's no-op write): the
    // stores change, the snapshot does not.
    wait_watching(&server, "services").await;
    {
        let mut s = server.lock().unwrap();
        let mut service = s.get("services", Some("default"), "echo").unwrap();
        service["metadata"]["managedFields"] =
            json!([{"manager": "kubectl", "operation": "Update"}]);
        s.put("services", service);
    }
    let waited = tokio::time::timeout(Duration::from_millis(800), rx.changed()).await;
    assert!(waited.is_err(), "no new snapshot for an unchanged object");
    assert_eq!(*rx.borrow(), first);
}

#[tokio::test]
async fn steady_changes_do_not_hold_the_snapshot_back() {
    let server = ApiServer::new(fixture());
    let mut rx = watch_only(&server);
    next(&mut rx).await;
    wait_watching(&server, "tlsroutes").await;
    // A change every 10 ms (the debounce is 50 ms) for 4 s: a snapshot still comes out within about 2 s.
    let churn = tokio::spawn({
        let server = server.clone();
        async move {
            for i in 0..400 {
                server.lock().unwrap().put(
                    "tlsroutes",
                    tls_route("churn", &format!("h{i}.example.com")),
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let started = Instant::now();
    let snapshot = next(&mut rx).await;
    let waited = started.elapsed();
    assert!(!churn.is_finished(), "published while the changes go on");
    assert!(waited < Duration::from_millis(3500), "waited {waited:?}");
    assert!(snapshot
        .tls_routes
        .iter()
        .any(|r| r.metadata.name == "churn"));
    churn.abort();
}

/// A Gateway with an HTTPS listener whose certificate is the Secret `cert` in `cert_namespace`.
fn https_gateway(cert_namespace: &str) -> Value {
    json!({"metadata": {"name": "web", "namespace": "default", "generation": 1,
                        "creationTimestamp": "2026-01-01T00:00:05Z"},
           "spec": {"gatewayClassName": "ebpf-gateway", "addresses": [{"type": "IPAddress", "value": "192.168.1.241"}],
                    "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443,
                                   "tls": {"mode": "Terminate",
                                           "certificateRefs": [{"name": "cert", "namespace": cert_namespace}]}}]}})
}

fn secret(namespace: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}})
}

#[tokio::test]
async fn only_referenced_secrets_are_read_one_by_one() {
    let mut lists = fixture();
    lists.insert(
        "secrets".into(),
        vec![
            secret("default", "unrelated"),
            secret("default", "cert"),
            secret("other", "cert"),
        ],
    );
    lists
        .get_mut("gateways")
        .unwrap()
        .push(https_gateway("default"));
    let server = ApiServer::new(lists);
    let mut rx = watch_only(&server);
    let first = next(&mut rx).await;
    let secrets: Vec<(&str, &str)> = first
        .secrets
        .iter()
        .map(|s| (s.metadata.namespace(), s.metadata.name.as_str()))
        .collect();
    assert_eq!(secrets, [("default", "cert")]);
    {
        let s = server.lock().unwrap();
        let secret_calls: Vec<&Call> = s
            .calls
            .iter()
            .filter(|c| c.path.contains("secrets"))
            .collect();
        assert!(!secret_calls.is_empty());
        for c in &secret_calls {
            assert_eq!(c.path, "/api/v1/namespaces/default/secrets", "{c:?}");
            assert!(
                c.query.contains("fieldSelector=metadata.name=cert"),
                "{c:?}"
            );
        }
    }

    // The Gateway now points at a Secret in another namespace, without a ReferenceGrant: not permitted, so not
    // read, and the old one is dropped.
    wait_watching(&server, "gateways").await;
    server
        .lock()
        .unwrap()
        .put("gateways", https_gateway("other"));
    let second = next(&mut rx).await;
    assert!(second.secrets.is_empty(), "{:?}", second.secrets);
    assert!(
        !server
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.path.contains("/namespaces/other/secrets")),
        "a Secret without a permitted reference is never requested"
    );

    // A ReferenceGrant permits it: it is read (by name) and kept; the watch on it follows changes.
    wait_watching(&server, "referencegrants").await;
    server.lock().unwrap().put(
        "referencegrants",
        json!({"metadata": {"name": "certs", "namespace": "other"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default"}],
                        "to": [{"group": "", "kind": "Secret"}]}}),
    );
    let third = next(&mut rx).await;
    assert_eq!(third.secrets.len(), 1);
    assert_eq!(third.secrets[0].metadata.namespace(), "other");
    let s = server.lock().unwrap();
    assert!(s
        .calls
        .iter()
        .any(|c| c.path == "/api/v1/namespaces/other/secrets"
            && c.query.contains("fieldSelector=metadata.name=cert")));
    assert!(
        !s.calls.iter().any(|c| c.path == "/api/v1/secrets"),
        "Secrets are never listed cluster-wide"
    );
}

#[tokio::test]
async fn api_outage_keeps_the_last_snapshot_and_resyncs() {
    let server = ApiServer::new(fixture());
    let mut rx = watch_only(&server);
    let first = next(&mut rx).await;
    wait_watching(&server, "tlsroutes").await;

    // The API server goes away: open watches end, every request fails.
    let before = {
        let mut s = server.lock().unwrap();
        s.down = true;
        s.watches.clear();
        s.calls.len()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let s = server.lock().unwrap();
        let retries = s.calls.len() - before;
        assert!(retries >= 2, "the watches retry: {retries} requests");
        assert!(
            retries < 200,
            "with backoff, not in a hot loop: {retries} requests"
        );
    }
    assert!(
        !rx.has_changed().unwrap(),
        "nothing published while the API server is away"
    );
    assert_eq!(*rx.borrow(), first, "the last snapshot stays");

    // It returns, with a change made meanwhile: the provider catches up.
    {
        let mut s = server.lock().unwrap();
        s.down = false;
        s.put("tlsroutes", tls_route("other", "other.example.com"));
    }
    let mut names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while names != ["echo", "other"] {
        assert!(Instant::now() < deadline, "no resync: {names:?}");
        if !server
            .lock()
            .unwrap()
            .watches
            .iter()
            .any(|w| w.plural == "tlsroutes")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // The route may have been missed by a watch that resumed from an old resourceVersion (the mock does not
        // replay): add it again as a live event.
        server
            .lock()
            .unwrap()
            .put("tlsroutes", tls_route("other", "other.example.com"));
        let snapshot = next(&mut rx).await;
        names = snapshot
            .tls_routes
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(snapshot.gateways, first.gateways, "nothing lost on the way");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Leader election and writes

fn lease_holder(server: &Arc<Mutex<ApiServer>>) -> Option<String> {
    let s = server.lock().unwrap();
    s.leases.get("ebpf-gateway-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// The fixture with the TLSRoute also attached to another controller's Gateway (its status entry must stay), and
/// the Gateway without spec.addresses (it gets MetalLB's).
fn cluster() -> HashMap<String, Vec<Value>> {
    let mut lists = fixture();
    lists.get_mut("tlsroutes").unwrap()[0]["status"] = json!({"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "theirs"},
        "controllerName": OTHER_CONTROLLER,
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}]});
    let gateway = &mut lists.get_mut("gateways").unwrap()[0];
    gateway["metadata"]["uid"] = "uid-tls".into();
    gateway["spec"].as_object_mut().unwrap().remove("addresses");
    lists
}

#[tokio::test]
async fn the_leader_writes_status_and_manages_the_gateway_service() {
    let server = ApiServer::new(cluster());
    let (_agent, snapshots) = agent(&server, "agent-a");

    until(&server, "the Service is applied", |s| {
        s.get("services", Some("default"), "ebpf-gw-tls").is_some()
    })
    .await;
    assert_eq!(lease_holder(&server).as_deref(), Some("agent-a"));
    settle(&server, Duration::from_millis(800)).await;
    {
        let s = server.lock().unwrap();
        let writes = s.writes();
        assert!(writes.iter().all(|c| c.agent == "agent-a"));
        // The Service: server-side apply under the controller name, owned by the Gateway.
        let apply = writes
            .iter()
            .find(|c| c.path == "/api/v1/namespaces/default/services/ebpf-gw-tls")
            .expect("Service applied");
        assert_eq!(apply.method, "PATCH");
        assert!(
            apply
                .query
                .contains("fieldManager=ebpf-gateway.dev/gatewayclass-controller"),
            "{}",
            apply.query
        );
        assert_eq!(apply.body["spec"]["type"], "LoadBalancer");
        assert_eq!(
            apply.body["spec"]["ports"],
            json!([{"name": "tcp-443", "port": 443, "targetPort": 443, "protocol": "TCP"}])
        );
        assert_eq!(
            apply.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-tls"
        );
        assert_eq!(
            apply.body["metadata"]["ownerReferences"][0]["kind"],
            "Gateway"
        );

        // Status: GatewayClass, Gateway and TLSRoute, each on its status subresource.
        let status_paths: Vec<&str> = writes
            .iter()
            .filter(|c| c.path.ends_with("/status"))
            .map(|c| c.path.as_str())
            .collect();
        for path in [
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ebpf-gateway/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/tls/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/tlsroutes/echo/status",
        ] {
            assert!(
                status_paths.contains(&path),
                "{path} not written: {status_paths:?}"
            );
        }
        let class = s.get("gatewayclasses", None, "ebpf-gateway").unwrap();
        assert_eq!(class["status"]["conditions"][0]["type"], "Accepted");
        assert_eq!(class["status"]["conditions"][0]["status"], "True");
        // The route: the other controller's parent kept, ours added.
        let route = s.get("tlsroutes", Some("default"), "echo").unwrap();
        let parents = route["status"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert_eq!(parents[0]["controllerName"], OTHER_CONTROLLER);
        assert_eq!(
            parents[0]["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(parents[1]["controllerName"], CONTROLLER);
        assert_eq!(parents[1]["parentRef"]["name"], "tls");
        // No address yet: MetalLB has not assigned one.
        let gateway = s.get("gateways", Some("default"), "tls").unwrap();
        assert!(
            gateway["status"]["addresses"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{}",
            gateway["status"]
        );
        let programmed = condition(&gateway, "Programmed");
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "AddressNotAssigned");
    }

    // Nothing changes: nothing is written (the watch brought our own writes back, only timestamps would differ).
    let before = server.lock().unwrap().writes().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.lock().unwrap().writes().len(),
        before,
        "no writes without a change"
    );

    // MetalLB assigns an address: the Gateway is served on it and reports it.
    {
        let mut s = server.lock().unwrap();
        let mut svc = s.get("services", Some("default"), "ebpf-gw-tls").unwrap();
        svc["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.77", "ipMode": "VIP"}]}});
        s.put("services", svc);
    }
    until(&server, "the Gateway reports its address", |s| {
        s.get("gateways", Some("default"), "tls").unwrap()["status"]["addresses"]
            == json!([{"type": "IPAddress", "value": "192.168.1.77"}])
    })
    .await;
    let snapshot = snapshots.borrow().clone();
    assert_eq!(
        snapshot.gateways[0].spec.addresses.len(),
        1,
        "served on the assigned address"
    );
    let gateway = server
        .lock()
        .unwrap()
        .get("gateways", Some("default"), "tls")
        .unwrap();
    let programmed = condition(&gateway, "Programmed");
    assert_eq!(programmed["status"], "True", "{programmed}");

    // The Gateway is deleted: its Service goes.
    settle(&server, Duration::from_millis(500)).await;
    server.lock().unwrap().remove("gateways", "default", "tls");
    until(&server, "the Service is deleted", |s| {
        s.get("services", Some("default"), "ebpf-gw-tls").is_none()
    })
    .await;
    let s = server.lock().unwrap();
    let delete = s
        .writes()
        .into_iter()
        .rev()
        .find(|c| c.method == "DELETE")
        .unwrap();
    assert_eq!(
        delete.path,
        "/api/v1/namespaces/default/services/ebpf-gw-tls"
    );
    assert_eq!(delete.agent, "agent-a");
}

#[tokio::test]
async fn only_the_leader_writes_and_another_agent_takes_over_when_it_stops() {
    let server = ApiServer::new(cluster());
    let (agent_a, _) = agent(&server, "agent-a");
    until(&server, "agent-a leads", |s| {
        s.leases
            .get("ebpf-gateway-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "agent-a")
    })
    .await;
    let (_agent_b, _) = agent(&server, "agent-b");
    until(&server, "agent-b is running", |s| {
        s.calls
            .iter()
            .any(|c| c.agent == "agent-b" && c.path.contains("/leases/"))
    })
    .await;
    settle(&server, Duration::from_millis(800)).await;
    // A change both agents see.
    wait_watching(&server, "tlsroutes").await;
    server
        .lock()
        .unwrap()
        .put("tlsroutes", tls_route("second", "second.example.com"));
    until(&server, "the new route's status", |s| {
        !s.get("tlsroutes", Some("default"), "second").unwrap()["status"].is_null()
    })
    .await;
    settle(&server, Duration::from_millis(800)).await;
    {
        let s = server.lock().unwrap();
        let writers: std::collections::BTreeSet<&str> = s
            .calls
            .iter()
            .filter(|c| c.is_write())
            .map(|c| c.agent.as_str())
            .collect();
        assert_eq!(writers, ["agent-a"].into(), "only the leader writes");
        assert!(
            s.calls
                .iter()
                .any(|c| c.agent == "agent-b" && c.path.ends_with("/tlsroutes")),
            "agent-b watches too"
        );
        assert_eq!(
            s.leases["ebpf-gateway-leader"]["spec"]["leaseTransitions"],
            0
        );
    }

    // The leader stops (its lease is no longer renewed): agent-b takes over after the lease duration and writes.
    agent_a.abort();
    until(&server, "agent-b leads", |s| {
        s.leases["ebpf-gateway-leader"]["spec"]["holderIdentity"] == "agent-b"
    })
    .await;
    assert_eq!(
        server.lock().unwrap().leases["ebpf-gateway-leader"]["spec"]["leaseTransitions"],
        1
    );
    server
        .lock()
        .unwrap()
        .put("tlsroutes", tls_route("third", "third.example.com"));
    until(&server, "agent-b writes the third route's status", |s| {
        s.calls
            .iter()
            .any(|c| c.agent == "agent-b" && c.path.ends_with("/tlsroutes/third/status"))
    })
    .await;
}

#[tokio::test]
async fn a_lease_held_by_another_agent_blocks_every_write_until_it_expires() {
    let server = ApiServer::new(cluster());
    let renew = |s: &mut ApiServer| {
        let version = s.next_version();
        s.leases.insert(
            "ebpf-gateway-leader".into(),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "ebpf-gateway-leader", "namespace": "ebpf-gateway-system", "resourceVersion": version},
                   "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 1,
                            "renewTime": format!("2026-01-01T00:00:{:02}.000000Z", version.parse::<u64>().unwrap() % 60),
                            "leaseTransitions": 3}}),
        );
    };
    renew(&mut server.lock().unwrap());
    let renewer = tokio::spawn({
        let server = server.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                renew(&mut server.lock().unwrap());
            }
        }
    });
    let (_agent, mut snapshots) = agent(&server, "agent-a");
    next(&mut snapshots).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let s = server.lock().unwrap();
        assert!(
            s.writes().is_empty(),
            "a follower writes nothing: {:?}",
            s.writes()
        );
        assert!(
            s.calls
                .iter()
                .any(|c| c.path.ends_with("/leases/ebpf-gateway-leader")),
            "it does try the Lease"
        );
    }
    assert_eq!(lease_holder(&server).as_deref(), Some("elsewhere"));

    // The other holder stops renewing: the lease expires, agent-a takes it and writes.
    renewer.abort();
    until(&server, "agent-a writes", |s| !s.writes().is_empty()).await;
    let s = server.lock().unwrap();
    assert_eq!(
        s.leases["ebpf-gateway-leader"]["spec"]["holderIdentity"],
        "agent-a"
    );
    assert_eq!(
        s.leases["ebpf-gateway-leader"]["spec"]["leaseTransitions"],
        4
    );
}

#[tokio::test]
async fn failed_writes_are_retried_with_backoff_until_they_succeed() {
    let server = ApiServer::new(cluster());
    server.lock().unwrap().failing_writes = 3;
    let (_agent, _) = agent(&server, "agent-a");
    until(&server, "the route's status is written", |s| {
        s.get("tlsroutes", Some("default"), "echo").unwrap()["status"]["parents"]
            .as_array()
            .is_some_and(|p| p.len() == 2)
    })
    .await;
    until(&server, "the Service is applied", |s| {
        s.get("services", Some("default"), "ebpf-gw-tls").is_some()
    })
    .await;
    settle(&server, Duration::from_millis(800)).await;
    let s = server.lock().unwrap();
    let writes = s.writes();
    assert_eq!(s.failing_writes, 0);
    // Three failures, then everything: the first (failed) write was sent again, after the backoff (1 s) and not
    // before, although the writes that succeeded meanwhile changed the live objects.
    let first = &writes[0];
    let retry = writes[1..]
        .iter()
        .find(|c| c.path == first.path)
        .expect("the failed write is retried");
    let waited = retry.at - first.at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "retried after {waited:?}");
}

#[tokio::test]
async fn status_writes_stop_when_the_leadership_is_lost() {
    let server = ApiServer::new(cluster());
    let (_agent, _) = agent(&server, "agent-a");
    until(&server, "agent-a leads and writes", |s| {
        !s.writes().is_empty()
    })
    .await;
    settle(&server, Duration::from_millis(800)).await;
    // Someone else takes the Lease (e.g. after a network partition); agent-a's next renewal conflicts.
    {
        let mut s = server.lock().unwrap();
        let version = s.next_version();
        let lease = s.leases.get_mut("ebpf-gateway-leader").unwrap();
        lease["spec"]["holderIdentity"] = "elsewhere".into();
        lease["spec"]["leaseDurationSeconds"] = 3600.into();
        lease["metadata"]["resourceVersion"] = version.into();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = server.lock().unwrap().writes().len();
    server
        .lock()
        .unwrap()
        .put("tlsroutes", tls_route("second", "second.example.com"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = server.lock().unwrap();
    assert_eq!(
        s.writes().len(),
        before,
        "no writes after the lease is lost: {:?}",
        &s.writes()[before..]
    );
    assert_eq!(
        s.leases["ebpf-gateway-leader"]["spec"]["holderIdentity"],
        "elsewhere"
    );
}

/// A request as the mock API server saw it.
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// A client whose every request is recorded and answered with `status` and the request's body (or a Status).
fn recording_client(status: StatusCode) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let content_type = parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            record.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type,
                body: body.clone(),
            });
            let reply = if status.is_success() {
                if body.is_null() {
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
                } else {
                    body
                }
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found",
                       "reason": "NotFound", "code": status.as_u16()})
            };
            send.send_response(full(status, reply));
        }
    });
    (kube::Client::new(service, "default"), seen)
}

#[tokio::test]
async fn status_is_written_with_server_side_apply_under_the_controller_name() {
    use gateway_userspace::provider::kubernetes::{apply_status, StatusPatch};
    let (client, seen) = recording_client(StatusCode::OK);
    let body = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
        "metadata": {"name": "echo", "namespace": "default"},
        "status": {"parents": [{"parentRef": {"name": "tls"}, "controllerName": CONTROLLER, "conditions": []}]}});
    let patch = StatusPatch {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "TLSRoute".into(),
        namespace: Some("default".into()),
        name: "echo".into(),
        body: body.clone(),
    };
    apply_status(&client, &patch, CONTROLLER).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "PATCH");
    assert!(
        r.uri.starts_with(
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/tlsroutes/echo/status?"
        ),
        "{}",
        r.uri
    );
    assert!(
        r.uri
            .contains("fieldManager=ebpf-gateway.dev%2Fgatewayclass-controller"),
        "{}",
        r.uri
    );
    assert!(r.uri.contains("force=true"), "{}", r.uri);
    assert_eq!(r.content_type, "application/apply-patch+yaml");
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn services_are_applied_and_deleted() {
    use gateway_userspace::provider::kubernetes::{
        apply_service, delete_service, load_balancer_service,
    };
    let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "tls", "namespace": "web", "uid": "u-1"},
        "spec": {"gatewayClassName": "ebpf-gateway", "listeners": [{"name": "p", "protocol": "TLS", "port": 443}]}});
    let service = load_balancer_service(&gateway).unwrap();
    let (client, seen) = recording_client(StatusCode::OK);
    apply_service(&client, &service, CONTROLLER).await.unwrap();
    delete_service(&client, "web", "ebpf-gw-tls").await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].method, "PATCH");
        assert!(
            seen[0]
                .uri
                .starts_with("/api/v1/namespaces/web/services/ebpf-gw-tls?"),
            "{}",
            seen[0].uri
        );
        assert_eq!(seen[0].content_type, "application/apply-patch+yaml");
        assert_eq!(seen[0].body, service);
        assert_eq!(seen[1].method, "DELETE");
        assert_eq!(seen[1].uri, "/api/v1/namespaces/web/services/ebpf-gw-tls?");
    }
    // Deleting a Service that is already gone is fine; other errors are reported.
    let (gone, _) = recording_client(StatusCode::NOT_FOUND);
    delete_service(&gone, "web", "ebpf-gw-tls").await.unwrap();
    let (broken, _) = recording_client(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(delete_service(&broken, "web", "ebpf-gw-tls").await.is_err());
    assert!(apply_service(&broken, &service, CONTROLLER).await.is_err());
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_the_lease_over_without_waiting_for_expiry() {
    let server = ApiServer::new(cluster());
    // Long leases: only a release lets another agent take over within the test.
    let long = |identity: &str| {
        let mut s = settings(identity);
        s.lease.lease_duration = Duration::from_secs(60);
        s.lease.renew_deadline = Duration::from_secs(40);
        s
    };
    let a = start(client(&server, "agent-a"), long("agent-a"));
    until(&server, "agent-a leads", |s| {
        s.leases
            .get("ebpf-gateway-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "agent-a")
    })
    .await;
    let _b = start(client(&server, "agent-b"), long("agent-b"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(lease_holder(&server).as_deref(), Some("agent-a"));

    a.shutdown().await;
    let released_at = Instant::now();
    until(&server, "agent-b leads", |s| {
        s.leases["ebpf-gateway-leader"]["spec"]["holderIdentity"] == "agent-b"
    })
    .await;
    assert!(
        released_at.elapsed() < Duration::from_secs(5),
        "taken over at the next try, not after the 60 s lease"
    );
    let s = server.lock().unwrap();
    assert!(
        s.calls
            .iter()
            .filter(|c| c.agent == "agent-a")
            .all(|c| c.at <= released_at),
        "agent-a sends nothing after its shutdown"
    );
}
