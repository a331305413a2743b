//! Test harness: loads the official conformance manifests (base + one test file) with what the conformance suite
//! would add around them (our GatewayClass, EndpointSlices, the generated TLS Secrets, Gateway addresses),
//! translates, checks the invariants every conformance helper checks, and offers small assertions that read like
//! the Go helpers they mirror.
#![allow(dead_code)]

use gateway_userspace::ir::{self, Ir};
use gateway_userspace::model::Object;
use gateway_userspace::provider::file::Loader;
use gateway_userspace::snapshot::Snapshot;
use gateway_userspace::status::{
    Condition, ConditionStatus, GatewayStatus, ListenerStatus, RouteParentStatus, Status, Timestamp,
};
use gateway_userspace::translate::{translate, TranslateOptions, DEFAULT_CONTROLLER_NAME};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The GatewayClass name substituted for `{GATEWAY_CLASS_NAME}`.
pub const CLASS: &str = "ebpf-gateway";
pub const INFRA: &str = "gateway-conformance-infra";
pub const APP: &str = "gateway-conformance-app-backend";
pub const WEB: &str = "gateway-conformance-web-backend";
const SKIP_READINESS: &str = "gateway-api/skip-this-for-readiness";

/// The `conformance/` folder of the shared Gateway API material. Missing material fails the test.
pub fn conformance_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/gateway-api/conformance");
    assert!(
        dir.join("base/manifests.yaml").is_file(),
        "the Gateway API conformance manifests are missing: expected {} (the shared spec folder must be present)",
        dir.display()
    );
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A conformance scenario being prepared.
pub struct Conformance {
    pub snapshot: Snapshot,
    /// Gateways (by name) allowed to be un-ready although they lack the skip-readiness annotation.
    unready: Vec<String>,
}

impl Conformance {
    /// base/manifests.yaml + tests/<manifest>, with placeholders substituted.
    pub fn load(manifest: &str) -> Conformance {
        Self::load_with(manifest, &[])
    }

    /// Like [`load`], with extra text replacements in the test manifest (e.g. address placeholders).
    pub fn load_with(manifest: &str, replacements: &[(&str, &str)]) -> Conformance {
        let dir = conformance_dir();
        let base = dir.join("base/manifests.yaml");
        let test = dir.join("tests").join(manifest);
        let mut test_text = read(&test);
        for (from, to) in replacements {
            test_text = test_text.replace(from, to);
        }
        let mut loader = Loader::new();
        loader
            .add_text(&base, &substitute(&read(&base)))
            .unwrap_or_else(|e| panic!("{e}"));
        loader
            .add_text(&test, &substitute(&test_text))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut snapshot = loader.finish();
        add_gateway_class(&mut snapshot, CLASS);
        add_generated_secrets(&mut snapshot);
        add_endpoint_slices(&mut snapshot);
        assign_addresses(&mut snapshot);
        Conformance {
            snapshot,
            unready: Vec::new(),
        }
    }

    /// Declares Gateways that conformance does not require to be ready in this test.
    pub fn allow_unready(mut self, gateways: &[&str]) -> Self {
        self.unready.extend(gateways.iter().map(|g| g.to_string()));
        self
    }

    /// Adds objects from YAML text (as a later `kubectl apply` in the Go test would).
    pub fn apply(&mut self, yaml: &str) {
        let mut loader = Loader::new();
        loader
            .add_text(Path::new("test-step.yaml"), &substitute(yaml))
            .unwrap_or_else(|e| panic!("{e}"));
        let order = self.snapshot.next_load_order();
        let added = loader.finish();
        let objects = objects_of(added);
        for mut object in objects {
            object.meta_mut().load_order += order;
            self.snapshot
                .insert(object)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        add_endpoint_slices(&mut self.snapshot);
        assign_addresses(&mut self.snapshot);
    }

    pub fn gateway_mut(&mut self, name: &str) -> &mut gateway_userspace::model::Gateway {
        self.snapshot
            .gateways
            .iter_mut()
            .find(|g| g.metadata.name == name)
            .unwrap_or_else(|| panic!("no Gateway {name}"))
    }

    /// Translates and checks the invariants of every conformance run.
    pub fn translate(&self) -> Translated {
        let options = options();
        let (ir, status) = translate(&self.snapshot, &options);
        let (ir2, status2) = translate(&self.snapshot, &options);
        assert_eq!(ir, ir2, "translation is not deterministic (IR)");
        assert_eq!(status, status2, "translation is not deterministic (status)");
        let t = Translated {
            snapshot: self.snapshot.clone(),
            ir,
            status,
        };
        t.check_invariants(&self.unready);
        t
    }
}

pub fn options() -> TranslateOptions {
    TranslateOptions {
        now: Timestamp::from_unix(1_700_000_000),
        ..Default::default()
    }
}

fn objects_of(snapshot: Snapshot) -> Vec<Object> {
    let mut out: Vec<Object> = Vec::new();
    out.extend(snapshot.namespaces.into_iter().map(Object::Namespace));
    out.extend(
        snapshot
            .gateway_classes
            .into_iter()
            .map(Object::GatewayClass),
    );
    out.extend(snapshot.gateways.into_iter().map(Object::Gateway));
    out.extend(snapshot.http_routes.into_iter().map(Object::HttpRoute));
    out.extend(snapshot.grpc_routes.into_iter().map(Object::GrpcRoute));
    out.extend(snapshot.tls_routes.into_iter().map(Object::TlsRoute));
    out.extend(snapshot.tcp_routes.into_iter().map(Object::TcpRoute));
    out.extend(snapshot.udp_routes.into_iter().map(Object::UdpRoute));
    out.extend(
        snapshot
            .reference_grants
            .into_iter()
            .map(Object::ReferenceGrant),
    );
    out.extend(snapshot.services.into_iter().map(Object::Service));
    out.extend(
        snapshot
            .endpoint_slices
            .into_iter()
            .map(Object::EndpointSlice),
    );
    out.extend(snapshot.secrets.into_iter().map(Object::Secret));
    out
}

pub fn substitute(text: &str) -> String {
    text.replace("{GATEWAY_CLASS_NAME}", CLASS)
        .replace("{GATEWAY_CONTROLLER_NAME}", DEFAULT_CONTROLLER_NAME)
}

fn insert(snapshot: &mut Snapshot, value: serde_json::Value) {
    let object = Object::from_value(value)
        .expect("valid object")
        .expect("a kind we read");
    snapshot.insert(object).unwrap_or_else(|e| panic!("{e}"));
}

pub fn add_gateway_class(snapshot: &mut Snapshot, name: &str) {
    insert(
        snapshot,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name},
               "spec": {"controllerName": DEFAULT_CONTROLLER_NAME}}),
    );
}

/// A PEM certificate/key pair that passes the structural check (the suite generates real ones).
pub fn tls_secret(namespace: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": namespace},
           "stringData": {
               "tls.crt": "-----BEGIN CERTIFICATE-----\nTUlJQmZha2VjZXJ0\n-----END CERTIFICATE-----\n",
               "tls.key": "-----BEGIN PRIVATE KEY-----\nTUlJQmZha2VrZXk=\n-----END PRIVATE KEY-----\n"}})
}

/// The Secrets the conformance suite generates at setup (CONFORMANCE-CASES §7).
fn add_generated_secrets(snapshot: &mut Snapshot) {
    let generated = [
        (WEB, "certificate"),
        (INFRA, "tls-validity-checks-certificate"),
        (INFRA, "tls-checks-certificate"),
        (INFRA, "tls-passthrough-checks-certificate"),
        (APP, "tls-passthrough-checks-certificate"),
        (INFRA, "tls-terminate-checks-certificate"),
    ];
    for (ns, name) in generated {
        if !snapshot.contains("Secret", Some(ns), name) {
            insert(snapshot, tls_secret(ns, name));
        }
    }
}

/// One EndpointSlice with one ready endpoint for every Service that has none (the endpoints controller's job).
fn add_endpoint_slices(snapshot: &mut Snapshot) {
    let services: Vec<_> = snapshot.services.clone();
    for (i, service) in services.iter().enumerate() {
        let ns = service.metadata.namespace();
        let name = &service.metadata.name;
        let has_slice = snapshot.endpoint_slices.iter().any(|s| {
            s.metadata.namespace() == ns
                && s.metadata.labels.get("kubernetes.io/service-name") == Some(name)
        });
        if has_slice {
            continue;
        }
        let ports: Vec<_> = service
            .spec
            .ports
            .iter()
            .map(|p| {
                let port = match &p.target_port {
                    Some(gateway_userspace::model::IntOrString::Int(t)) => *t,
                    _ => p.port,
                };
                json!({"name": p.name.clone().unwrap_or_default(), "protocol": p.protocol(), "port": port})
            })
            .collect();
        insert(
            snapshot,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{name}-synth"), "namespace": ns,
                                "labels": {"kubernetes.io/service-name": name}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [endpoint_ip(i)], "conditions": {"ready": true}}],
                   "ports": ports}),
        );
    }
}

/// The synthesized endpoint address of the i-th Service.
pub fn endpoint_ip(i: usize) -> String {
    format!("10.244.{}.{}", i / 250, i % 250 + 1)
}

/// Gives every Gateway without `spec.addresses` its own address (the provider's job outside standalone mode).
fn assign_addresses(snapshot: &mut Snapshot) {
    for (i, gateway) in snapshot.gateways.iter_mut().enumerate() {
        if gateway.spec.addresses.is_empty() {
            let value = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let raw_spec = gateway
                .raw
                .as_mut()
                .and_then(|r| r.get_mut("spec"))
                .and_then(|s| s.as_object_mut());
            if let Some(spec) = raw_spec {
                spec.insert(
                    "addresses".into(),
                    json!([{"type": "IPAddress", "value": value}]),
                );
            }
            let address = gateway_userspace::model::GatewayAddress {
                type_: Some("IPAddress".into()),
                value: Some(value),
            };
            gateway.spec.addresses.push(address);
        }
    }
}

/// An L4 route as served: its name and its backends as (name, weight, valid).
pub type ServedL4 = (String, Vec<(String, u32, bool)>);

/// `(condition type, "True"/"False", reason)`.
pub type Cond = (&'static str, &'static str, &'static str);

/// What `GatewayStatusMustHaveListeners` expects of one listener.
pub struct ExpectListener {
    pub name: &'static str,
    pub attached: i32,
    /// Expected ⊆ actual; empty means the actual list must be empty.
    pub kinds: &'static [&'static str],
    pub conditions: &'static [Cond],
}

pub fn listener(
    name: &'static str,
    attached: i32,
    kinds: &'static [&'static str],
    conditions: &'static [Cond],
) -> ExpectListener {
    ExpectListener {
        name,
        attached,
        kinds,
        conditions,
    }
}

/// A translation result with assertions.
pub struct Translated {
    pub snapshot: Snapshot,
    pub ir: Ir,
    pub status: Status,
}

fn split(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((INFRA, name))
}

fn status_str(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

pub fn check_conditions(actual: &[Condition], expected: &[Cond], what: &str) {
    for (type_, status, reason) in expected {
        let found = actual
            .iter()
            .find(|c| c.type_ == *type_)
            .unwrap_or_else(|| panic!("{what}: no {type_} condition in {actual:#?}"));
        assert_eq!(
            (status_str(found.status), found.reason.as_str()),
            (*status, *reason),
            "{what}: condition {type_} ({})",
            found.message
        );
    }
}

impl Translated {
    /// The invariants every conformance helper checks: GatewayClass accepted, observedGeneration on every
    /// condition, route parents naming a Gateway with our controllerName, and every Gateway without the
    /// skip-readiness annotation Accepted and Programmed with an address.
    fn check_invariants(&self, unready: &[String]) {
        let class = self
            .status
            .gateway_class(CLASS)
            .expect("our GatewayClass has status");
        check_conditions(
            &class.conditions,
            &[("Accepted", "True", "Accepted")],
            "GatewayClass",
        );
        for gateway in &self.snapshot.gateways {
            let generation = gateway.metadata.generation();
            let Some(status) = self
                .status
                .gateway(gateway.metadata.namespace(), &gateway.metadata.name)
            else {
                continue;
            };
            let all = status
                .conditions
                .iter()
                .chain(status.listeners.iter().flat_map(|l| &l.conditions));
            for c in all {
                assert_eq!(
                    c.observed_generation, generation,
                    "Gateway {} condition {}",
                    gateway.metadata.name, c.type_
                );
            }
            let names: Vec<&str> = gateway
                .spec
                .listeners
                .iter()
                .map(|l| l.name.as_str())
                .collect();
            let statuses: Vec<&str> = status.listeners.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, statuses, "one listener status per spec listener");
            let skip = gateway
                .metadata
                .annotations
                .get(SKIP_READINESS)
                .is_some_and(|v| v == "true");
            if !skip && !unready.contains(&gateway.metadata.name) {
                let what = format!("Gateway {} readiness", gateway.metadata.name);
                for t in ["Accepted", "Programmed"] {
                    let c = status
                        .condition(t)
                        .unwrap_or_else(|| panic!("{what}: no {t}"));
                    assert_eq!(
                        c.status,
                        ConditionStatus::True,
                        "{what}: {t} ({}: {})",
                        c.reason,
                        c.message
                    );
                }
                assert!(!status.addresses.is_empty(), "{what}: no status.addresses");
            }
        }
        let routes = self
            .snapshot
            .http_routes
            .iter()
            .map(|r| ("HTTPRoute", &r.metadata))
            .chain(
                self.snapshot
                    .tls_routes
                    .iter()
                    .map(|r| ("TLSRoute", &r.metadata))
                    .chain(
                        self.snapshot
                            .tcp_routes
                            .iter()
                            .map(|r| ("TCPRoute", &r.metadata))
                            .chain(
                                self.snapshot
                                    .udp_routes
                                    .iter()
                                    .map(|r| ("UDPRoute", &r.metadata)),
                            ),
                    ),
            );
        for (kind, meta) in routes {
            let Some(status) = self.status.route(kind, meta.namespace(), &meta.name) else {
                continue;
            };
            for parent in &status.parents {
                assert_eq!(parent.controller_name, DEFAULT_CONTROLLER_NAME);
                assert_eq!(
                    parent.parent_ref.group.as_deref(),
                    Some("gateway.networking.k8s.io")
                );
                assert_eq!(parent.parent_ref.kind.as_deref(), Some("Gateway"));
                for c in &parent.conditions {
                    assert_eq!(
                        c.observed_generation,
                        meta.generation(),
                        "{kind} {} {}",
                        meta.name,
                        c.type_
                    );
                }
                assert!(
                    parent.condition("Accepted").is_some()
                        && parent.condition("ResolvedRefs").is_some()
                );
            }
        }
    }

    pub fn gateway(&self, name: &str) -> &GatewayStatus {
        let (ns, name) = split(name);
        self.status
            .gateway(ns, name)
            .unwrap_or_else(|| panic!("no status for Gateway {ns}/{name}"))
    }

    pub fn gateway_conditions(&self, gateway: &str, expected: &[Cond]) {
        check_conditions(
            &self.gateway(gateway).conditions,
            expected,
            &format!("Gateway {gateway}"),
        );
    }

    pub fn listener(&self, gateway: &str, name: &str) -> &ListenerStatus {
        self.gateway(gateway)
            .listener(name)
            .unwrap_or_else(|| panic!("Gateway {gateway}: no listener status {name}"))
    }

    /// `GatewayStatusMustHaveListeners`.
    pub fn listeners(&self, gateway: &str, expected: &[ExpectListener]) {
        let status = self.gateway(gateway);
        assert_eq!(
            status.listeners.len(),
            expected.len(),
            "Gateway {gateway}: listener count in {:#?}",
            status.listeners
        );
        for e in expected {
            let l = self.listener(gateway, e.name);
            let what = format!("Gateway {gateway} listener {}", e.name);
            assert_eq!(l.attached_routes, e.attached, "{what}: attachedRoutes");
            check_conditions(&l.conditions, e.conditions, &what);
            if e.kinds.is_empty() {
                assert!(
                    l.supported_kinds.is_empty(),
                    "{what}: supportedKinds must be empty: {:?}",
                    l.supported_kinds
                );
            }
            for kind in e.kinds {
                assert!(
                    l.supported_kinds
                        .iter()
                        .any(|k| k.kind == *kind && k.group() == "gateway.networking.k8s.io"),
                    "{what}: supportedKinds {:?} lacks {kind}",
                    l.supported_kinds
                );
            }
        }
    }

    pub fn attached(&self, gateway: &str, listener: &str) -> i32 {
        self.listener(gateway, listener).attached_routes
    }

    /// "Zero attached routes": no listener statuses, or exactly one with `attachedRoutes: 0`.
    pub fn zero_attached_routes(&self, gateway: &str) {
        let listeners = &self.gateway(gateway).listeners;
        assert!(
            listeners.is_empty() || (listeners.len() == 1 && listeners[0].attached_routes == 0),
            "Gateway {gateway}: expected zero attached routes: {listeners:#?}"
        );
    }

    pub fn parents(&self, kind: &str, route: &str) -> &[RouteParentStatus] {
        let (ns, name) = split(route);
        self.status
            .route(kind, ns, name)
            .map(|s| s.parents.as_slice())
            .unwrap_or_default()
    }

    /// The parent entry for `gateway` (namespace/name, default infra).
    pub fn parent(&self, kind: &str, route: &str, gateway: &str) -> &RouteParentStatus {
        let (route_ns, _) = split(route);
        let (gw_ns, gw_name) = split(gateway);
        self.parents(kind, route)
            .iter()
            .find(|p| {
                p.parent_ref.name == gw_name
                    && p.parent_ref.namespace.as_deref().unwrap_or(route_ns) == gw_ns
            })
            .unwrap_or_else(|| {
                panic!(
                    "{kind} {route}: no parent status for Gateway {gateway}: {:#?}",
                    self.parents(kind, route)
                )
            })
    }

    pub fn route_conditions(&self, kind: &str, route: &str, gateway: &str, expected: &[Cond]) {
        let parent = self.parent(kind, route, gateway);
        check_conditions(
            &parent.conditions,
            expected,
            &format!("{kind} {route} parent {gateway}"),
        );
    }

    /// Route accepted by the Gateway, all references resolved.
    pub fn route_accepted(&self, kind: &str, route: &str, gateway: &str) {
        self.route_conditions(
            kind,
            route,
            gateway,
            &[
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
            ],
        );
    }

    /// "No accepted parents": parents empty, or exactly one whose Accepted is False.
    pub fn no_accepted_parents(&self, kind: &str, route: &str) {
        let parents = self.parents(kind, route);
        let ok = parents.is_empty()
            || (parents.len() == 1
                && parents[0]
                    .condition("Accepted")
                    .is_some_and(|c| c.status == ConditionStatus::False));
        assert!(
            ok,
            "{kind} {route}: expected no accepted parents: {parents:#?}"
        );
    }

    /// `Gateway{HTTP,TCP,UDP}RoutesMustBeAccepted`: every listener ResolvedRefs/Accepted/Programmed True, and each
    /// route accepted by the Gateway.
    pub fn gateway_and_routes_accepted(&self, gateway: &str, kind: &str, routes: &[&str]) {
        for l in &self.gateway(gateway).listeners {
            check_conditions(
                &l.conditions,
                &[
                    ("ResolvedRefs", "True", "ResolvedRefs"),
                    ("Accepted", "True", "Accepted"),
                    ("Programmed", "True", "Programmed"),
                ],
                &format!("Gateway {gateway} listener {}", l.name),
            );
        }
        for route in routes {
            self.route_conditions(kind, route, gateway, &[("Accepted", "True", "Accepted")]);
        }
    }

    pub fn ir_gateway(&self, gateway: &str) -> &ir::Gateway {
        let (ns, name) = split(gateway);
        self.ir
            .gateways
            .iter()
            .find(|g| g.gateway.namespace == ns && g.gateway.name == name)
            .unwrap_or_else(|| panic!("Gateway {gateway} not in the IR"))
    }

    pub fn ir_listener(&self, gateway: &str, listener: &str) -> &ir::ListenerKind {
        &self
            .ir_gateway(gateway)
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .unwrap_or_else(|| panic!("Gateway {gateway}: listener {listener} not in the IR"))
            .kind
    }

    /// The route serving an L4 (TCP/UDP) listener and its backends as (service name, weight, valid).
    pub fn l4_route(&self, gateway: &str, listener: &str) -> Option<ServedL4> {
        let route = match self.ir_listener(gateway, listener) {
            ir::ListenerKind::Tcp(r) | ir::ListenerKind::Udp(r) => r.as_ref(),
            other => panic!("{gateway}/{listener} is not L4: {other:?}"),
        };
        route.map(|r| {
            (
                r.route.name.clone(),
                r.backends
                    .iter()
                    .map(|b| (b.name.clone(), b.weight, b.valid))
                    .collect(),
            )
        })
    }

    /// The SNI table of a TLS passthrough listener as (hostname, route name, first backend name).
    pub fn sni_table(&self, gateway: &str, listener: &str) -> Vec<(String, String, String)> {
        match self.ir_listener(gateway, listener) {
            ir::ListenerKind::TlsPassthrough(t) => t
                .routes
                .iter()
                .map(|r| {
                    (
                        r.hostname.clone(),
                        r.route.name.clone(),
                        r.backends
                            .first()
                            .map(|b| b.name.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
            other => panic!("{gateway}/{listener} is not TLS passthrough: {other:?}"),
        }
    }
}
