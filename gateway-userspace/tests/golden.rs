//! Full golden outputs (IR and every object with its status) for a few conformance manifests, regenerated with
//! `UPDATE_GOLDEN=1`; plus lastTransitionTime keeping, ownership of status, and the `validate` output shape.
mod common;

use common::*;
use gateway_userspace::provider::file::Loader;
use gateway_userspace::status::{objects_with_status, ConditionStatus, Timestamp};
use gateway_userspace::translate::{translate, translate_with_previous, TranslateOptions};
use gateway_userspace::validate::{self, OutputFormat, ValidateArgs};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn golden(manifest: &str) {
    let c = Conformance::load(manifest);
    let t = c.translate();
    let output = json!({"ir": t.ir, "objects": objects_with_status(&c.snapshot, &t.status)});
    let text = serde_json::to_string_pretty(&output).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(manifest.replace(".yaml", ".json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != text {
        let line = expected
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{} differs from the translation at line {} (rerun with UPDATE_GOLDEN=1 if the change is intended):\n  golden: {}\n  actual: {}",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or(""),
            text.lines().nth(line).unwrap_or("")
        );
    }
}

#[test]
fn golden_tlsroute_hostname_intersection() {
    golden("tlsroute-hostname-intersection.yaml");
}

#[test]
fn golden_tcproute_reference_grant() {
    golden("tcproute-reference-grant.yaml");
}

#[test]
fn golden_udproute_parentref_attach_all_listeners() {
    golden("udproute-parentref-attach-all-listeners.yaml");
}

#[test]
fn golden_gateway_with_attached_routes() {
    golden("gateway-with-attached-routes.yaml");
}

/// The Service port's `appProtocol: kubernetes.io/h2c` reaches the IR as the backend's protocol.
#[test]
fn golden_httproute_backend_protocol_h2c() {
    golden("httproute-backend-protocol-h2c.yaml");
}

#[test]
fn translation_is_deterministic_across_loads() {
    let a = Conformance::load("httproute-hostname-intersection.yaml");
    let b = Conformance::load("httproute-hostname-intersection.yaml");
    let (ta, tb) = (a.translate(), b.translate());
    assert_eq!(ta.ir, tb.ir);
    assert_eq!(
        objects_with_status(&a.snapshot, &ta.status),
        objects_with_status(&b.snapshot, &tb.status)
    );
}

#[test]
fn last_transition_time_is_kept_for_unchanged_conditions() {
    let mut c = Conformance::load("tcproute-reference-grant.yaml");
    let t1 = TranslateOptions {
        now: Timestamp::from_unix(1_000),
        ..Default::default()
    };
    let t2 = TranslateOptions {
        now: Timestamp::from_unix(2_000),
        ..Default::default()
    };
    let (_, first) = translate(&c.snapshot, &t1);
    assert!(c
        .snapshot
        .remove("ReferenceGrant", Some(WEB), "tcp-reference-grant"));
    let (_, second) = translate_with_previous(&c.snapshot, &t2, Some(&first));
    let parent = &second
        .route("TCPRoute", INFRA, "tcp-reference-grant")
        .unwrap()
        .parents[0];
    let accepted = parent.condition("Accepted").unwrap();
    let resolved = parent.condition("ResolvedRefs").unwrap();
    assert_eq!(
        accepted.last_transition_time,
        Timestamp::from_unix(1_000),
        "unchanged: kept"
    );
    assert_eq!(resolved.status, ConditionStatus::False);
    assert_eq!(
        resolved.last_transition_time,
        Timestamp::from_unix(2_000),
        "changed: now"
    );
    let gw = second
        .gateway(INFRA, "tcp-reference-grant-gateway")
        .unwrap();
    assert!(gw
        .conditions
        .iter()
        .chain(gw.listeners.iter().flat_map(|l| &l.conditions))
        .all(|c| c.last_transition_time.0 == "1970-01-01T00:16:40Z"));
    // Without previous status every condition starts now.
    let (_, fresh) = translate(&c.snapshot, &t2);
    assert!(fresh
        .gateways
        .values()
        .flat_map(|g| &g.conditions)
        .all(|c| c.last_transition_time == t2.now));
}

#[test]
fn status_is_written_only_on_our_objects() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: default}
spec:
  gatewayClassName: theirs
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
status:
  conditions: [{type: Accepted, status: "True", reason: Accepted, message: "", lastTransitionTime: "2020-01-01T00:00:00Z"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ours, namespace: default}
spec:
  gatewayClassName: ebpf-gateway
  addresses: [{value: 198.18.0.1}]
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: both, namespace: default}
spec:
  parentRefs: [{name: theirs}, {name: ours}]
  rules: [{backendRefs: [{name: echo, port: 9000}]}]
status:
  parents:
  - parentRef: {name: theirs}
    controllerName: example.com/other
    conditions: []
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: default}
stringData: {password: hunter2}
"#;
    let mut loader = Loader::new();
    loader.add_text(Path::new("mixed.yaml"), yaml).unwrap();
    let mut snapshot = loader.finish();
    add_gateway_class(&mut snapshot, CLASS);
    let (_, status) = translate(&snapshot, &options());
    assert!(
        status.gateway_class("theirs").is_none() && status.gateway("default", "theirs").is_none()
    );
    let list = objects_with_status(&snapshot, &status);
    assert_eq!(
        (list["apiVersion"].as_str(), list["kind"].as_str()),
        (Some("v1"), Some("List"))
    );
    let items = list["items"].as_array().unwrap();
    let find = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap()
    };
    let theirs = find("Gateway", "theirs");
    assert_eq!(
        theirs["status"]["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z",
        "left alone"
    );
    assert_eq!(
        find("Gateway", "ours")["status"]["conditions"][0]["type"],
        "Accepted"
    );
    let parents = find("TCPRoute", "both")["status"]["parents"]
        .as_array()
        .unwrap()
        .clone();
    let controllers: Vec<&str> = parents
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap())
        .collect();
    assert_eq!(
        controllers,
        [
            "example.com/other",
            gateway_userspace::translate::DEFAULT_CONTROLLER_NAME
        ]
    );
    assert_eq!(
        parents[1]["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ours"})
    );
    assert_eq!(find("Secret", "s")["stringData"]["password"], "<redacted>");
    assert_eq!(
        find("Gateway", "ours")["metadata"]["generation"],
        1,
        "generation defaulted and echoed"
    );
}

#[test]
fn validate_renders_yaml_and_json() {
    let c = Conformance::load("udproute-simple.yaml");
    let json_text = validate::render(&c.snapshot, &options(), OutputFormat::Json).unwrap();
    let list: Value = serde_json::from_str(&json_text).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), c.snapshot.len());
    let gw = items
        .iter()
        .find(|i| i["kind"] == "Gateway" && i["metadata"]["name"] == "udp-gateway")
        .unwrap();
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(gw["status"]["addresses"][0]["type"], "IPAddress");

    let yaml_text = validate::render(&c.snapshot, &options(), OutputFormat::Yaml).unwrap();
    assert!(yaml_text.starts_with("---\n"));
    let mut reparsed = Loader::new();
    reparsed
        .add_text(Path::new("out.yaml"), &yaml_text)
        .expect("validate's YAML output loads again");
    assert_eq!(reparsed.finish().len(), c.snapshot.len());
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-validate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn validate_run_exit_codes() {
    let good = temp_file(
        "good.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: ebpf-gateway.dev/gatewayclass-controller}\n",
    );
    let bad = temp_file(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: 7\n",
    );
    let args = |path: &PathBuf| ValidateArgs {
        paths: vec![path.clone()],
        output: OutputFormat::Json,
        controller_name: gateway_userspace::translate::DEFAULT_CONTROLLER_NAME.into(),
    };
    assert_eq!(validate::run(&args(&good)).unwrap(), ExitCode::SUCCESS);
    assert_eq!(validate::run(&args(&bad)).unwrap(), ExitCode::FAILURE);
    let error = gateway_userspace::provider::file::load(std::slice::from_ref(&bad)).unwrap_err();
    assert_eq!(error.location().1, 5, "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:5: ", bad.display())),
        "{error}"
    );
}
