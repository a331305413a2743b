//! Standalone configurations: the shipped examples translate to what they say, and invalid objects become
//! statuses (never parse errors) while the rest keeps serving.
use gateway_userspace::ir::ListenerKind;
use gateway_userspace::provider::file::{self, Loader};
use gateway_userspace::status::{ConditionStatus, Status, Timestamp};
use gateway_userspace::translate::{translate, AddressPolicy, TranslateOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn example(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(dir)
}

fn condition(
    conditions: &[gateway_userspace::status::Condition],
    type_: &str,
) -> (ConditionStatus, String) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_}"));
    (c.status, c.reason.clone())
}

fn is(status: ConditionStatus, reason: &str) -> (ConditionStatus, String) {
    (status, reason.to_string())
}

#[test]
fn example_tcp_echo() {
    let snapshot = file::load(&[example("tcp-echo")]).unwrap();
    let (ir, status) = translate(&snapshot, &TranslateOptions::default());
    let gw = status.gateway("default", "tcp-echo").unwrap();
    assert_eq!(
        condition(&gw.conditions, "Programmed"),
        is(ConditionStatus::True, "Programmed")
    );
    assert_eq!(ir.gateways.len(), 1);
    assert_eq!(
        ir.gateways[0].addresses,
        ["198.18.100.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let listener = &ir.gateways[0].listeners[0];
    assert_eq!(listener.port, 9000);
    let ListenerKind::Tcp(Some(route)) = &listener.kind else {
        panic!("{listener:?}")
    };
    let expected: Vec<SocketAddr> = vec![
        "198.18.11.2:3000".parse().unwrap(),
        "198.18.12.2:3000".parse().unwrap(),
    ];
    assert_eq!(route.backends[0].endpoints, expected);
    assert_eq!(route.backends[0].name, "default/echo:9000");
}

#[test]
fn example_tls_passthrough() {
    let snapshot = file::load(&[example("tls-passthrough")]).unwrap();
    let (ir, status) = translate(&snapshot, &TranslateOptions::default());
    for route in ["abc", "other"] {
        let parent = &status.route("TLSRoute", "default", route).unwrap().parents[0];
        assert_eq!(
            condition(&parent.conditions, "Accepted"),
            is(ConditionStatus::True, "Accepted")
        );
    }
    let ListenerKind::TlsPassthrough(tls) = &ir.gateways[0].listeners[0].kind else {
        panic!()
    };
    let table: Vec<(&str, &str)> = tls
        .routes
        .iter()
        .map(|r| (r.hostname.as_str(), r.route.name.as_str()))
        .collect();
    assert_eq!(
        table,
        [("abc.example.com", "abc"), ("*.example.com", "other")]
    );
    assert_eq!(
        tls.routes[0].backends[0].endpoints,
        ["198.18.11.3:8443".parse::<SocketAddr>().unwrap()]
    );
}

fn load(yaml: &str) -> gateway_userspace::snapshot::Snapshot {
    let mut loader = Loader::new();
    loader
        .add_text(Path::new("inline.yaml"), yaml)
        .unwrap_or_else(|e| panic!("{e}"));
    loader.finish()
}

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: ebpf-gateway.dev/gatewayclass-controller}\n---\n";

fn run(yaml: &str) -> (gateway_userspace::ir::Ir, Status) {
    translate(
        &load(&format!("{CLASS}{yaml}")),
        &TranslateOptions::default(),
    )
}

#[test]
fn invalid_listeners_are_status_not_errors() {
    let (ir, status) = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}]
  listeners:
  - {name: good, port: 9000, protocol: TCP}
  - {name: tcp-with-hostname, port: 9001, protocol: TCP, hostname: a.example.com}
  - {name: http-with-tls, port: 80, protocol: HTTP, tls: {mode: Terminate}}
  - {name: port-zero, port: 0, protocol: UDP}
  - {name: bad-hostname, port: 8080, protocol: HTTP, hostname: "1.2.3.4"}
  - {name: udp-a, port: 53, protocol: UDP}
  - {name: udp-b, port: 53, protocol: UDP}
  - {name: tcp-53, port: 53, protocol: TCP}
  - {name: http-443, port: 443, protocol: HTTP}
  - {name: tls-443, port: 443, protocol: TLS, tls: {mode: Passthrough}}
"#);
    let gw = status.gateway("default", "g").unwrap();
    assert_eq!(
        condition(&gw.conditions, "Accepted"),
        is(ConditionStatus::True, "ListenersNotValid")
    );
    assert_eq!(
        condition(&gw.conditions, "Programmed"),
        is(ConditionStatus::True, "Programmed")
    );
    let reason = |name: &str| condition(&gw.listener(name).unwrap().conditions, "Accepted");
    assert_eq!(reason("good"), is(ConditionStatus::True, "Accepted"));
    assert_eq!(
        reason("tcp-53"),
        is(ConditionStatus::True, "Accepted"),
        "TCP and UDP may share a port"
    );
    for name in [
        "tcp-with-hostname",
        "http-with-tls",
        "port-zero",
        "bad-hostname",
    ] {
        assert_eq!(
            reason(name),
            is(ConditionStatus::False, "UnsupportedValue"),
            "{name}"
        );
    }
    for name in ["udp-a", "udp-b", "http-443", "tls-443"] {
        assert_eq!(
            reason(name),
            is(ConditionStatus::False, "ProtocolConflict"),
            "{name}"
        );
        assert_eq!(
            condition(&gw.listener(name).unwrap().conditions, "Conflicted"),
            is(ConditionStatus::True, "ProtocolConflict")
        );
    }
    let served: Vec<&str> = ir.gateways[0]
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(served, ["good", "tcp-53"]);
}

#[test]
fn duplicate_listener_names_and_hostname_conflicts() {
    let (ir, status) = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: dup}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}]
  listeners:
  - {name: a, port: 80, protocol: HTTP}
  - {name: a, port: 81, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: hosts}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.2}]
  listeners:
  - {name: one, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: two, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: three, port: 80, protocol: HTTP, hostname: b.example.com}
"#);
    let dup = status.gateway("default", "dup").unwrap();
    assert_eq!(
        condition(&dup.conditions, "Accepted"),
        is(ConditionStatus::False, "Invalid")
    );
    assert_eq!(dup.listeners.len(), 1, "one status per listener name");
    let hosts = status.gateway("default", "hosts").unwrap();
    for name in ["one", "two"] {
        assert_eq!(
            condition(&hosts.listener(name).unwrap().conditions, "Conflicted"),
            is(ConditionStatus::True, "HostnameConflict")
        );
    }
    assert_eq!(
        condition(&hosts.conditions, "Accepted"),
        is(ConditionStatus::True, "ListenersNotValid")
    );
    assert_eq!(ir.gateways.len(), 1, "only the accepted Gateway is served");
    assert_eq!(ir.gateways[0].listeners.len(), 1);
}

#[test]
fn addresses_policy_and_claims() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: older, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}]
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: newer, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}, {value: 127.0.0.1}, {value: 198.18.0.9}]
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: none}
spec:
  gatewayClassName: c
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
"#;
    let (ir, status) = run(yaml);
    let programmed = |name: &str| {
        condition(
            &status.gateway("default", name).unwrap().conditions,
            "Programmed",
        )
    };
    assert_eq!(programmed("older"), is(ConditionStatus::True, "Programmed"));
    assert_eq!(
        programmed("newer"),
        is(ConditionStatus::False, "AddressNotUsable"),
        "in use by older; loopback"
    );
    assert_eq!(
        programmed("none"),
        is(ConditionStatus::False, "AddressNotAssigned")
    );
    let newer = ir
        .gateways
        .iter()
        .find(|g| g.gateway.name == "newer")
        .unwrap();
    assert_eq!(
        newer.addresses,
        ["198.18.0.9".parse::<std::net::IpAddr>().unwrap()],
        "the usable address is still served"
    );

    // The policy is injected: allow loopback for a test environment.
    let options = TranslateOptions {
        address_policy: AddressPolicy::new(|ip| {
            if ip.is_ipv4() {
                Ok(())
            } else {
                Err("IPv4 only".into())
            }
        }),
        now: Timestamp::from_unix(5),
        ..Default::default()
    };
    let (ir, _) = translate(&load(&format!("{CLASS}{yaml}")), &options);
    let newer = ir
        .gateways
        .iter()
        .find(|g| g.gateway.name == "newer")
        .unwrap();
    assert_eq!(newer.addresses.len(), 2);
}

#[test]
fn routes_of_other_gateways_and_broken_routes_do_not_break_gateways() {
    let (ir, status) = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}]
  listeners: [{name: udp, port: 5300, protocol: UDP}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {name: broken}
spec:
  parentRefs: [{name: g}, {name: missing-gateway}, {name: g, kind: Service, group: ""}]
  rules: [{backendRefs: [{name: nowhere, port: 53}, {name: dns, port: 53, weight: 0}]}]
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec: {ports: [{port: 53, protocol: TCP}]}
"#);
    let gw = status.gateway("default", "g").unwrap();
    assert_eq!(
        condition(&gw.conditions, "Programmed"),
        is(ConditionStatus::True, "Programmed")
    );
    let parents = &status
        .route("UDPRoute", "default", "broken")
        .unwrap()
        .parents;
    assert_eq!(
        parents.len(),
        1,
        "only parentRefs naming our Gateways get status"
    );
    assert_eq!(
        condition(&parents[0].conditions, "Accepted"),
        is(ConditionStatus::True, "Accepted")
    );
    assert_eq!(
        condition(&parents[0].conditions, "ResolvedRefs"),
        is(ConditionStatus::False, "BackendNotFound")
    );
    let ListenerKind::Udp(Some(route)) = &ir.gateways[0].listeners[0].kind else {
        panic!()
    };
    let backends: Vec<(u32, bool)> = route.backends.iter().map(|b| (b.weight, b.valid)).collect();
    assert_eq!(
        backends,
        [(1, false), (0, false)],
        "a TCP-only Service port is not a UDP backend"
    );
    assert!(parents[0].conditions[1].message.contains("not UDP"));
}

#[test]
fn endpoints_ready_and_named_ports() {
    let (ir, _) = run(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g}
spec:
  gatewayClassName: c
  addresses: [{value: 198.18.0.1}]
  listeners: [{name: tcp, port: 9000, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: g}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  ports: [{name: http, port: 80, targetPort: web}, {name: admin, port: 81, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: admin, port: 9090}, {name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: false}}
- {addresses: [10.0.0.3], conditions: {ready: true, terminating: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-other-service, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
"#);
    let ListenerKind::Tcp(Some(route)) = &ir.gateways[0].listeners[0].kind else {
        panic!()
    };
    let expected: Vec<SocketAddr> = vec![
        "10.0.0.1:8080".parse().unwrap(),
        "10.0.0.3:8080".parse().unwrap(),
    ];
    assert_eq!(route.backends[0].endpoints, expected);
}

#[test]
fn parse_errors_carry_file_and_line() {
    let cases = [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: \"80\"\n", 6),
        ("apiVersion: gateway.networking.k8s.io/v2\nkind: Gateway\nmetadata: {name: g}\n", 1),
        ("kind: Gateway\nmetadata: {name: g}\n", 1),
        ("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: [x\n", 9),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n", 1),
    ];
    for (text, line) in cases {
        let error = Loader::new()
            .add_text(Path::new("x.yaml"), text)
            .unwrap_err();
        assert_eq!(error.location(), (Path::new("x.yaml"), line), "{error}");
    }
}
