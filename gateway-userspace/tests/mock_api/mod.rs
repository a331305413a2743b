//! A mock Kubernetes API server for the provider's tests: it behaves like a small one — lists from stored
//! objects, field selectors on `metadata.name`, watch streams fed by every write (and by the test), Leases with
//! `resourceVersion` conflicts, status and Service writes applied to the stored objects, injected failures — and
//! records every request with the agent that sent it. Reached through tower-test ([`client`]) or over HTTP on a
//! real socket ([`serve_http`], for the `gateway` binary).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use gateway_userspace::provider::kubernetes::WATCHED;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// A request as the mock API server saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub agent: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub at: Instant,
}

impl Call {
    /// A write to anything but a Lease.
    pub fn is_write(&self) -> bool {
        self.method != "GET" && !self.path.contains("/leases")
    }
}

/// An open watch: which objects it wants, and where its events go.
pub struct OpenWatch {
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub tx: mpsc::UnboundedSender<Bytes>,
}

/// The mock API server's state.
#[derive(Default)]
pub struct ApiServer {
    /// Stored objects by plural (without apiVersion/kind, as in list responses).
    pub lists: HashMap<String, Vec<Value>>,
    pub watches: Vec<OpenWatch>,
    pub calls: Vec<Call>,
    /// Plural -> how many more list requests for it fail with 500.
    pub failing_lists: HashMap<String, usize>,
    /// How many more writes (status, Services) fail with 500.
    pub failing_writes: usize,
    /// Every request fails with 503 (the API server is unreachable), open watches are closed.
    pub down: bool,
    /// Leases by name.
    pub leases: HashMap<String, Value>,
    pub version: u64,
}

pub fn fixture() -> HashMap<String, Vec<Value>> {
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

pub fn kind_of(plural: &str) -> (String, &'static str) {
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

pub fn full(status: StatusCode, body: Value) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

pub fn failure(code: StatusCode, reason: &str) -> Response<RespBody> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason,
               "reason": reason, "code": code.as_u16()}),
    )
}

pub fn meta<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o["metadata"][field].as_str()
}

/// The condition of type `type_` in an object's `status.conditions` (panics when there is none).
pub fn condition(object: &Value, type_: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {}", object["status"]))
        .clone()
}

/// `(namespace, plural, name, subresource)` of an API path.
pub fn parse_path(path: &str) -> (Option<String>, String, Option<String>, Option<String>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut rest = if segments[0] == "api" {
        &segments[2..]
    } else {
        &segments[3..]
    };
    let mut namespace = None;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    (
        namespace,
        rest[0].to_string(),
        rest.get(1).map(|s| s.to_string()),
        rest.get(2).map(|s| s.to_string()),
    )
}

impl ApiServer {
    pub fn new(lists: HashMap<String, Vec<Value>>) -> Arc<Mutex<ApiServer>> {
        Arc::new(Mutex::new(ApiServer {
            lists,
            version: 100,
            ..Default::default()
        }))
    }

    pub fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    /// Sends a watch event to every open watch that wants the object.
    pub fn broadcast(&mut self, plural: &str, type_: &str, object: &Value) {
        let (api_version, kind) = kind_of(plural);
        let mut object = object.clone();
        object["apiVersion"] = api_version.into();
        object["kind"] = kind.into();
        let line = Bytes::from(format!("{}\n", json!({"type": type_, "object": object})));
        self.watches.retain(|w| {
            if w.plural != plural
                || w.namespace
                    .as_deref()
                    .is_some_and(|n| Some(n) != meta(&object, "namespace"))
                || w.name
                    .as_deref()
                    .is_some_and(|n| Some(n) != meta(&object, "name"))
            {
                return true;
            }
            w.tx.send(line.clone()).is_ok()
        });
    }

    /// Adds or replaces an object and tells the watches.
    pub fn put(&mut self, plural: &str, mut object: Value) {
        object["metadata"]["resourceVersion"] = self.next_version().into();
        let items = self.lists.entry(plural.into()).or_default();
        let same = |o: &Value| {
            meta(o, "namespace") == meta(&object, "namespace")
                && meta(o, "name") == meta(&object, "name")
        };
        let type_ = match items.iter_mut().find(|o| same(o)) {
            Some(existing) => {
                *existing = object.clone();
                "MODIFIED"
            }
            None => {
                items.push(object.clone());
                "ADDED"
            }
        };
        self.broadcast(plural, type_, &object);
    }

    /// Removes an object and tells the watches.
    pub fn remove(&mut self, plural: &str, namespace: &str, name: &str) -> bool {
        let items = self.lists.entry(plural.into()).or_default();
        let Some(at) = items
            .iter()
            .position(|o| meta(o, "namespace") == Some(namespace) && meta(o, "name") == Some(name))
        else {
            return false;
        };
        let object = items.remove(at);
        self.broadcast(plural, "DELETED", &object);
        true
    }

    pub fn get(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.lists
            .get(plural)?
            .iter()
            .find(|o| {
                meta(o, "name") == Some(name)
                    && (namespace.is_none() || meta(o, "namespace") == namespace)
            })
            .cloned()
    }

    pub fn writes(&self) -> Vec<Call> {
        self.calls
            .iter()
            .filter(|c| c.is_write())
            .cloned()
            .collect()
    }

    pub fn respond(&mut self, call: Call) -> Response<RespBody> {
        self.calls.push(call.clone());
        if self.down {
            self.watches.clear();
            return failure(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        let (namespace, plural, name, sub) = parse_path(&call.path);
        let selected_name = call
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldSelector=metadata.name="))
            .map(str::to_string);
        let write = call.method != "GET" && plural != "leases";
        if write && self.failing_writes > 0 {
            self.failing_writes -= 1;
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        }
        match (call.method.as_str(), plural.as_str(), name, sub.as_deref()) {
            ("GET", _, None, _) if call.query.contains("watch=true") => {
                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                self.watches.push(OpenWatch {
                    plural,
                    namespace,
                    name: selected_name,
                    tx,
                });
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(StreamBody::new(stream).boxed_unsync())
                    .unwrap()
            }
            ("GET", _, None, _) => {
                if let Some(n) = self.failing_lists.get_mut(&plural).filter(|n| **n > 0) {
                    *n -= 1;
                    return failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
                }
                let (api_version, kind) = kind_of(&plural);
                let items: Vec<Value> = self
                    .lists
                    .get(&plural)
                    .into_iter()
                    .flatten()
                    .filter(|o| namespace.is_none() || meta(o, "namespace") == namespace.as_deref())
                    .filter(|o| {
                        selected_name.is_none() || meta(o, "name") == selected_name.as_deref()
                    })
                    .cloned()
                    .collect();
                full(
                    StatusCode::OK,
                    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
                )
            }
            ("GET", "leases", Some(name), None) => match self.leases.get(&name) {
                Some(lease) => full(StatusCode::OK, lease.clone()),
                None => failure(StatusCode::NOT_FOUND, "NotFound"),
            },
            ("POST", "leases", None, None) => {
                let name = meta(&call.body, "name").unwrap().to_string();
                if self.leases.contains_key(&name) {
                    return failure(StatusCode::CONFLICT, "AlreadyExists");
                }
                let mut lease = call.body.clone();
                lease["metadata"]["resourceVersion"] = self.next_version().into();
                self.leases.insert(name, lease.clone());
                full(StatusCode::CREATED, lease)
            }
            ("PUT", "leases", Some(name), None) => {
                let stored = self
                    .leases
                    .get(&name)
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if stored != Some(call.body["metadata"]["resourceVersion"].clone()) {
                    return failure(StatusCode::CONFLICT, "Conflict");
                }
                let mut lease = call.body.clone();
                lease["metadata"]["resourceVersion"] = self.next_version().into();
                self.leases.insert(name, lease.clone());
                full(StatusCode::OK, lease)
            }
            ("PATCH", _, Some(name), Some("status")) => {
                let Some(mut object) = self.get(&plural, namespace.as_deref(), &name) else {
                    return failure(StatusCode::NOT_FOUND, "NotFound");
                };
                object["status"] = call.body["status"].clone();
                self.put(&plural, object.clone());
                full(StatusCode::OK, object)
            }
            ("PATCH", "services", Some(name), None) => {
                let mut object = call.body.clone();
                if let Some(live) = self.get("services", namespace.as_deref(), &name) {
                    object["status"] = live["status"].clone();
                }
                if let Some(o) = object.as_object_mut() {
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                self.put("services", object.clone());
                full(StatusCode::OK, object)
            }
            ("DELETE", "services", Some(name), None) => {
                if self.remove("services", namespace.as_deref().unwrap_or(""), &name) {
                    full(
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                } else {
                    failure(StatusCode::NOT_FOUND, "NotFound")
                }
            }
            _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

impl Call {
    fn new(agent: &str, parts: &http::request::Parts, body: &[u8]) -> Call {
        Call {
            agent: agent.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts
                .uri
                .query()
                .unwrap_or("")
                .replace("%3D", "=")
                .replace("%2F", "/"),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            at: Instant::now(),
        }
    }
}

/// A client of `server` whose requests are attributed to `agent`.
pub fn client(server: &Arc<Mutex<ApiServer>>, agent: &str) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let server = server.clone();
    let agent = agent.to_string();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let response = server
                .lock()
                .unwrap()
                .respond(Call::new(&agent, &parts, &bytes));
            send.send_response(response);
        }
    });
    kube::Client::new(service, "default")
}

/// Serves `server` over HTTP/1.1 on `listener` until the runtime stops; requests are attributed to `agent`.
pub async fn serve_http(
    server: Arc<Mutex<ApiServer>>,
    listener: tokio::net::TcpListener,
    agent: &str,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        let agent = agent.to_string();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    let agent = agent.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let bytes = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let response = server
                            .lock()
                            .unwrap()
                            .respond(Call::new(&agent, &parts, &bytes));
                        Ok::<_, Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
