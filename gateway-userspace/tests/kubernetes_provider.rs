//! The Kubernetes provider against a mock API server (tower-test): list responses from a recorded fixture
//! (`tests/fixtures/kubernetes/cluster.json`), watch events streamed by the test, and API errors. Checks that the
//! first snapshot waits for every kind to list (even through errors), holds what the translation needs and no
//! unreferenced Secret, and that a watch event yields a new snapshot. Needs `--features kubernetes`.
#![cfg(feature = "kubernetes")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_userspace::provider::kubernetes::{watch, WATCHED};
use gateway_userspace::snapshot::Snapshot;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// The mock API server's state: fixture lists, open watch streams by plural, requests seen, injected failures.
#[derive(Default)]
struct ApiServer {
    lists: HashMap<String, Vec<Value>>,
    watches: HashMap<String, mpsc::UnboundedSender<Bytes>>,
    requests: Vec<String>,
    /// Plural -> how many more list requests for it fail with 500.
    failing_lists: HashMap<String, usize>,
}

fn fixture() -> HashMap<String, Vec<Value>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubernetes/cluster.json"
    );
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.as_array().unwrap().clone()))
        .collect()
}

fn kind_of(plural: &str) -> (String, &'static str) {
    let (group, version, kind, _) = *WATCHED
        .iter()
        .find(|w| w.3 == plural)
        .unwrap_or_else(|| panic!("{plural}"));
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    (api_version, kind)
}

fn full(status: StatusCode, body: Value) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

fn respond(server: &Arc<Mutex<ApiServer>>, request: &Request<Body>) -> Response<RespBody> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let plural = path.rsplit('/').next().unwrap().to_string();
    let mut s = server.lock().unwrap();
    s.requests
        .push(format!("{} {path}?{query}", request.method()));
    if query.contains("watch=true") {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        s.watches.insert(plural, tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap();
    }
    if let Some(n) = s.failing_lists.get_mut(&plural).filter(|n| **n > 0) {
        *n -= 1;
        return full(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd unavailable",
                   "reason": "InternalError", "code": 500}),
        );
    }
    let (api_version, kind) = kind_of(&plural);
    let items = s.lists.get(&plural).cloned().unwrap_or_default();
    full(
        StatusCode::OK,
        json!({"apiVersion": api_version, "kind": format!("{kind}List"),
               "metadata": {"resourceVersion": "100"}, "items": items}),
    )
}

/// Starts the mock API server and the provider on a client talking to it.
fn start(server: Arc<Mutex<ApiServer>>) -> tokio::sync::watch::Receiver<Snapshot> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let api = server.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            send.send_response(respond(&api, &request));
        }
    });
    let client = kube::Client::new(service, "default");
    let (rx, _task) = watch(client, Duration::from_millis(50));
    rx
}

async fn next(rx: &mut tokio::sync::watch::Receiver<Snapshot>) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("a snapshot within 20 s")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn lists_yield_the_first_snapshot_and_watch_events_the_next() {
    let server = Arc::new(Mutex::new(ApiServer {
        lists: fixture(),
        ..Default::default()
    }));
    let mut rx = start(server.clone());

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
        for (_, _, _, plural) in WATCHED {
            assert!(
                s.requests
                    .iter()
                    .any(|r| r.starts_with("GET ") && r.contains(&format!("/{plural}?"))),
                "{plural} was never listed: {:?}",
                s.requests
            );
        }
        assert!(
            s.requests.iter().all(|r| r.starts_with("GET ")),
            "the provider only reads"
        );
    }

    // A TLSRoute appears.
    let route = json!({"type": "ADDED", "object": {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
        "metadata": {"name": "other", "namespace": "default", "resourceVersion": "101",
                     "creationTimestamp": "2026-01-02T00:00:00Z"},
        "spec": {"parentRefs": [{"name": "tls"}], "hostnames": ["other.example.com"],
                 "rules": [{"backendRefs": [{"name": "echo", "port": 443}]}]}}});
    let sender = loop {
        if let Some(tx) = server.lock().unwrap().watches.get("tlsroutes").cloned() {
            break tx;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sender.send(Bytes::from(format!("{route}\n"))).unwrap();
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
    let server = Arc::new(Mutex::new(ApiServer {
        lists: fixture(),
        failing_lists: HashMap::from([("services".to_string(), 2)]),
        ..Default::default()
    }));
    let mut rx = start(server.clone());
    let first = next(&mut rx).await;
    assert_eq!(
        first.services.len(),
        1,
        "published only after Services listed"
    );
    assert_eq!(first.tls_routes.len(), 1);
    let s = server.lock().unwrap();
    let service_lists = s
        .requests
        .iter()
        .filter(|r| r.contains("/services?") && !r.contains("watch=true"))
        .count();
    assert!(
        service_lists >= 3,
        "two failures, then a retry: {:?}",
        s.requests
    );
}

#[tokio::test]
async fn snapshot_is_not_republished_when_nothing_changed() {
    let server = Arc::new(Mutex::new(ApiServer {
        lists: fixture(),
        ..Default::default()
    }));
    let mut rx = start(server.clone());
    let first = next(&mut rx).await;
    // A MODIFIED event carrying the same Service at a new resourceVersion (as after another controller's
    // no-op write): the stores change, the snapshot does not.
    let mut service = fixture()["services"][0].clone();
    service["apiVersion"] = "v1".into();
    service["kind"] = "Service".into();
    service["metadata"]["resourceVersion"] = "102".into();
    service["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
    let event = json!({"type": "MODIFIED", "object": service});
    let sender = loop {
        if let Some(tx) = server.lock().unwrap().watches.get("services").cloned() {
            break tx;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sender.send(Bytes::from(format!("{event}\n"))).unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(800), rx.changed()).await;
    assert!(waited.is_err(), "no new snapshot for an unchanged object");
    assert_eq!(*rx.borrow(), first);
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

const CONTROLLER: &str = "ebpf-gateway.dev/gatewayclass-controller";

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
