//! Which path serves a TLS passthrough listener: the agent's default (`--tls-passthrough`), a Gateway's
//! annotation for all its listeners, a per-listener annotation, and routes with PROXY protocol (which only the
//! userspace proxy writes) keeping their listener on the userspace path.
use std::path::Path;

use gateway_userspace::{
    ir::ListenerKind,
    provider::file::Loader,
    translate::{translate, PassthroughMode, TranslateOptions},
};

const YAML: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ebpf}
spec: {controllerName: ebpf-gateway.dev/gatewayclass-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
  annotations: {ANNOTATIONS}
spec:
  gatewayClassName: ebpf
  addresses: [{type: IPAddress, value: 198.18.100.1}]
  listeners:
  - {name: a, protocol: TLS, port: 443, tls: {mode: Passthrough}}
  - {name: b, protocol: TLS, port: 8443, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: r, namespace: default, annotations: {ROUTE_ANNOTATIONS}}
spec:
  parentRefs: [{name: gw, sectionName: a}]
  hostnames: [a.example.com]
  rules: [{backendRefs: [{name: svc, port: 443}]}]
"#;

/// Kernel flags of listeners a and b.
fn modes(
    default: PassthroughMode,
    gateway_annotations: &str,
    route_annotations: &str,
) -> (bool, bool) {
    let yaml = YAML
        .replace("{ANNOTATIONS}", &format!("{{{gateway_annotations}}}"))
        .replace("{ROUTE_ANNOTATIONS}", &format!("{{{route_annotations}}}"));
    let mut loader = Loader::new();
    loader.add_text(Path::new("gw.yaml"), &yaml).unwrap();
    let snapshot = loader.finish();
    let options = TranslateOptions {
        tls_passthrough: default,
        ..TranslateOptions::default()
    };
    let (ir, _) = translate(&snapshot, &options);
    let kernel = |name: &str| {
        let l = ir.gateways[0]
            .listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener");
        match &l.kind {
            ListenerKind::TlsPassthrough(t) => t.kernel,
            other => panic!("listener {name}: {other:?}"),
        }
    };
    (kernel("a"), kernel("b"))
}

#[test]
fn the_agent_default_applies_without_annotations() {
    assert_eq!(modes(PassthroughMode::Userspace, "", ""), (false, false));
    assert_eq!(modes(PassthroughMode::Kernel, "", ""), (true, true));
}

#[test]
fn a_gateway_annotation_overrides_the_default_and_a_listener_annotation_overrides_both() {
    let kernel = "gateway.ebpf.dev/tls-passthrough: kernel";
    assert_eq!(modes(PassthroughMode::Userspace, kernel, ""), (true, true));
    let userspace = "gateway.ebpf.dev/tls-passthrough: userspace";
    assert_eq!(
        modes(PassthroughMode::Kernel, userspace, ""),
        (false, false)
    );
    let mixed =
        "gateway.ebpf.dev/tls-passthrough: kernel, gateway.ebpf.dev/tls-passthrough.b: userspace";
    assert_eq!(modes(PassthroughMode::Userspace, mixed, ""), (true, false));
    // An unknown value is ignored (the default applies).
    let typo = "gateway.ebpf.dev/tls-passthrough: kernal";
    assert_eq!(modes(PassthroughMode::Userspace, typo, ""), (false, false));
}

#[test]
fn routes_with_proxy_protocol_keep_their_listener_in_userspace() {
    let pp = "gateway.ebpf.dev/proxy-protocol: v2";
    assert_eq!(modes(PassthroughMode::Kernel, "", pp), (false, true));
}
