//! One test per Gateway API v1.6.1 conformance test of the TLSRoute, TCPRoute, UDPRoute, core HTTPRoute and
//! Gateway/GatewayClass/listener groups (CONFORMANCE-CASES.md): the official manifests are translated and the
//! statuses the suite waits for are asserted, step by step where the Go test changes objects. Traffic
//! expectations are checked on the IR where the IR carries them (L4 routes, SNI tables, backend resolution).
mod common;

use common::*;
use gateway_userspace::ir::ListenerKind;
use gateway_userspace::translate::{
    backend, hostname, route::RouteKind, Context, SUPPORTED_FEATURES,
};

const ACCEPTED: Cond = ("Accepted", "True", "Accepted");
const RESOLVED: Cond = ("ResolvedRefs", "True", "ResolvedRefs");
const PROGRAMMED: Cond = ("Programmed", "True", "Programmed");

fn backend(name: &str) -> String {
    format!("{INFRA}/{name}")
}

/// The backend an SNI goes to: the first entry of the table that matches.
fn sni_lookup(table: &[(String, String, String)], sni: &str) -> Option<String> {
    table
        .iter()
        .find(|(h, _, _)| hostname::matches(h, sni))
        .map(|(_, _, b)| b.clone())
}

// ---------------------------------------------------------------------------------------------------------------
// TLSRoute

#[test]
fn tlsroute_simple_same_namespace() {
    let t = Conformance::load("tlsroute-simple-same-namespace.yaml").translate();
    t.route_conditions(
        "TLSRoute",
        "gateway-conformance-infra-test",
        "gateway-tlsroute",
        &[ACCEPTED, RESOLVED],
    );
    let table = t.sni_table("gateway-tlsroute", "https");
    assert_eq!(
        table,
        [(
            "abc.example.com".into(),
            "gateway-conformance-infra-test".into(),
            backend("tcp-backend:8443")
        )]
    );
    let ListenerKind::TlsPassthrough(tls) = t.ir_listener("gateway-tlsroute", "https") else {
        panic!()
    };
    assert_eq!(tls.hostname.as_deref(), Some("*.example.com"));
    let endpoints = &tls.routes[0].backends[0].endpoints;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(
        endpoints[0].port(),
        8443,
        "endpoint port is the EndpointSlice port of the Service port"
    );
    assert_eq!(t.ir_gateway("gateway-tlsroute").listeners[0].port, 443);
}

#[test]
fn tlsroute_hostname_intersection() {
    let t = Conformance::load("tlsroute-hostname-intersection.yaml").translate();
    let routes = [
        (
            "tlsroute-more-specific-wc-hostname-x-1",
            "gw-tlsroute-exact-hostname-x-1",
        ),
        (
            "tlsroute-exact-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
        ),
        (
            "tlsroute-exact-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
        ),
        (
            "tlsroute-more-specific-wc-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
        ),
        (
            "tlsroute-exact-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
        ),
    ];
    for (route, gateway) in routes {
        t.route_conditions("TLSRoute", route, gateway, &[ACCEPTED, RESOLVED]);
    }
    let (b1, b2) = (backend("tls-backend:443"), backend("tls-backend-2:443"));
    let gateways = [
        (
            "gw-tlsroute-exact-hostname-x-1",
            "listener-exact-hostname",
            None,
            "non.matching.com",
        ),
        (
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            "listener-more-specific-wc-hostname",
            Some(&b2),
            "non.matching.com",
        ),
        (
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            "listener-less-specific-wc-hostname",
            Some(&b2),
            "non.matching.com",
        ),
        (
            "gw-tlsroute-empty-hostname-x-4",
            "listener-empty-hostname",
            Some(&b2),
            "non.matching.org",
        ),
    ];
    for (gateway, listener, other, non_matching) in gateways {
        let table = t.sni_table(gateway, listener);
        assert_eq!(
            sni_lookup(&table, "abc.example.com").as_ref(),
            Some(&b1),
            "{gateway}: exact route wins"
        );
        assert_eq!(
            sni_lookup(&table, "other.example.com").as_ref(),
            other,
            "{gateway}"
        );
        assert_eq!(
            sni_lookup(&table, non_matching),
            None,
            "{gateway}: {non_matching} must be rejected"
        );
    }
    // The effective hostnames are the intersections: `*.com` on a `*.example.com` listener is `*.example.com`.
    let x2 = t.sni_table(
        "gw-tlsroute-more-specific-wc-hostname-x-2",
        "listener-more-specific-wc-hostname",
    );
    let names: Vec<&str> = x2.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(names, ["abc.example.com", "*.example.com"]);
}

#[test]
fn tlsroute_invalid_backend_ref_nonexistent() {
    let t = Conformance::load("tlsroute-invalid-backendref-nonexistent.yaml").translate();
    let gw = "gateway-tlsroute-invalid-backend-ref-nonexistent";
    t.route_conditions(
        "TLSRoute",
        "invalid-backend-ref-nonexistent",
        gw,
        &[ACCEPTED, ("ResolvedRefs", "False", "BackendNotFound")],
    );
    let ListenerKind::TlsPassthrough(tls) = t.ir_listener(gw, "tls") else {
        panic!()
    };
    assert_eq!(tls.routes.len(), 1);
    assert!(
        !tls.routes[0].backends[0].valid,
        "connections to an unresolved backend are rejected"
    );
}

#[test]
fn tlsroute_invalid_backend_ref_unknown_kind() {
    let t = Conformance::load("tlsroute-invalid-backendref-unknown-kind.yaml").translate();
    let gw = "gateway-tlsroute-invalid-backend-ref-unknown-kind";
    t.route_conditions(
        "TLSRoute",
        "invalid-backend-ref-unknown-kind",
        gw,
        &[ACCEPTED, ("ResolvedRefs", "False", "InvalidKind")],
    );
    let ListenerKind::TlsPassthrough(tls) = t.ir_listener(gw, "tls") else {
        panic!()
    };
    assert!(!tls.routes[0].backends[0].valid);
}

#[test]
fn tlsroute_invalid_reference_grant() {
    let t = Conformance::load("tlsroute-invalid-reference-grant.yaml").translate();
    assert_eq!(
        t.snapshot.reference_grants.len(),
        7,
        "the seven near-miss grants are loaded"
    );
    assert!(
        t.snapshot.contains("Service", Some(APP), "tls-backend"),
        "the Service exists"
    );
    t.route_conditions(
        "TLSRoute",
        "gateway-conformance-infra-test",
        "gateway-tlsroute-referencegrant",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn tlsroute_invalid_no_matching_listener_hostname() {
    let t = Conformance::load("tlsroute-invalid-no-matching-listener-hostname.yaml").translate();
    let cases = [
        ("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname"),
        (
            "tlsroute-hostname-mismatch-2",
            "gateway-tls-wildcard-hostname",
        ),
    ];
    for (route, gateway) in cases {
        t.route_conditions(
            "TLSRoute",
            route,
            gateway,
            &[("Accepted", "False", "NoMatchingListenerHostname")],
        );
        t.no_accepted_parents("TLSRoute", route);
        t.zero_attached_routes(gateway);
        assert!(t.sni_table(gateway, "tls").is_empty());
    }
}

#[test]
fn tlsroute_invalid_no_matching_listener() {
    // NamespacesMustBeReady first: all three Gateways are ready (checked by the harness).
    let t = Conformance::load("tlsroute-invalid-no-matching-listener.yaml").translate();
    let cases = [
        (
            "tlsroute-not-allowed-protocol-http",
            "gateway-tlsroute-http-only",
            "NotAllowedByListeners",
        ),
        (
            "tlsroute-not-allowed-protocol-https",
            "gateway-tlsroute-https-only",
            "NotAllowedByListeners",
        ),
        (
            "tlsroute-no-matching-section-name",
            "gateway-tlsroute-tls-passthrough-only",
            "NoMatchingParent",
        ),
    ];
    for (route, gateway, reason) in cases {
        t.route_conditions("TLSRoute", route, gateway, &[("Accepted", "False", reason)]);
        t.no_accepted_parents("TLSRoute", route);
    }
    t.zero_attached_routes("gateway-tlsroute-http-only");
    t.zero_attached_routes("gateway-tlsroute-https-only");
}

#[test]
fn tlsroute_listener_passthrough_supported_kinds() {
    let t = Conformance::load("tlsroute-listener-passthrough-supported-kinds.yaml").translate();
    let gw = "gateway-tlsroute-passthrough-supported-kind";
    t.listeners(
        gw,
        &[listener(
            "tls-passthrough",
            0,
            &["TLSRoute"],
            &[("ResolvedRefs", "False", "InvalidRouteKinds")],
        )],
    );
    let kinds = &t.listener(gw, "tls-passthrough").supported_kinds;
    assert!(
        kinds.iter().all(|k| k.kind != "TCPRoute"),
        "TCPRoute is not valid on a TLS listener: {kinds:?}"
    );
}

#[test]
fn tlsroute_listener_terminate_not_supported() {
    // We do not claim TLSRouteModeTerminate, so this test's body runs against us.
    assert!(!SUPPORTED_FEATURES.contains(&"TLSRouteModeTerminate"));
    let t = Conformance::load("tlsroute-listener-terminate-not-supported.yaml")
        .allow_unready(&["gateway-tlsroute-terminate-unsupported"])
        .translate();
    t.listeners(
        "gateway-tlsroute-terminate-unsupported",
        &[listener(
            "tls-terminate",
            0,
            &[],
            &[("Accepted", "False", "UnsupportedValue")],
        )],
    );
}

#[test]
fn tlsroute_listener_terminate_supported_kinds() {
    // Requires TLSRouteModeTerminate, which we do not claim: the suite skips it. What we report instead must be
    // consistent with not claiming it.
    assert!(!SUPPORTED_FEATURES.contains(&"TLSRouteModeTerminate"));
    let t = Conformance::load("tlsroute-listener-terminate-supported-kinds.yaml")
        .allow_unready(&["gateway-tlsroute-terminate-supported"])
        .translate();
    t.listeners(
        "gateway-tlsroute-terminate-supported",
        &[listener(
            "tls-terminate",
            0,
            &[],
            &[
                ("Accepted", "False", "UnsupportedValue"),
                ("Programmed", "False", "Invalid"),
            ],
        )],
    );
    t.gateway_conditions(
        "gateway-tlsroute-terminate-supported",
        &[("Accepted", "False", "ListenersNotValid")],
    );
}

#[test]
fn tlsroute_listener_mixed_termination_not_supported() {
    assert!(!SUPPORTED_FEATURES.contains(&"TLSRouteModeMixed"));
    let gw = "gateway-tlsroute-mixed-termination-not-supported";
    let t = Conformance::load("tlsroute-listener-mixed-termination-not-supported.yaml")
        .allow_unready(&[gw])
        .translate();
    let conflicted: &[Cond] = &[
        ("Accepted", "False", "ProtocolConflict"),
        ("Conflicted", "True", "ProtocolConflict"),
    ];
    t.listeners(
        gw,
        &[
            listener("tls-terminate", 0, &[], conflicted),
            listener("tls-passthrough", 0, &[], conflicted),
        ],
    );
}

#[test]
fn tlsroute_terminate_simple_same_namespace() {
    // Provisional, needs TLSRouteModeTerminate (not claimed): the listener is rejected, so is the route.
    let gw = "gateway-tlsroute-terminate";
    let t = Conformance::load("tlsroute-terminate-simple-same-namespace.yaml")
        .allow_unready(&[gw])
        .translate();
    t.listeners(
        gw,
        &[listener(
            "tlsterminate",
            0,
            &[],
            &[("Accepted", "False", "UnsupportedValue")],
        )],
    );
    t.route_conditions(
        "TLSRoute",
        "tlsroute-terminated-test",
        gw,
        &[("Accepted", "False", "NotAllowedByListeners"), RESOLVED],
    );
}

#[test]
fn tlsroute_mixed_termination_same_namespace() {
    // Provisional, needs TLSRouteModeMixed (not claimed): both listeners on 8883 conflict.
    let gw = "gateway-tlsroute-mixed-termination";
    let t = Conformance::load("tlsroute-mixed-termination-same-namespace.yaml")
        .allow_unready(&[gw])
        .translate();
    let conflicted: &[Cond] = &[("Accepted", "False", "ProtocolConflict")];
    t.listeners(
        gw,
        &[
            listener("tls-terminate", 0, &[], conflicted),
            listener("tls-passthrough", 0, &[], conflicted),
        ],
    );
    for route in [
        "gateway-conformance-mixed-passthroughroute",
        "gateway-conformance-mixed-terminateroute",
    ] {
        t.route_conditions(
            "TLSRoute",
            route,
            gw,
            &[("Accepted", "False", "NotAllowedByListeners")],
        );
    }
    t.gateway_conditions(gw, &[("Accepted", "False", "ListenersNotValid")]);
    assert!(
        t.ir.gateways.iter().all(|g| g.gateway.name != gw),
        "nothing of it is programmed"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// TCPRoute

#[test]
fn tcproute_parentref_port_and_section_name() {
    let t = Conformance::load("tcproute-parentref-port-and-section-name.yaml").translate();
    let gw = "tcp-multi-listener-gateway";
    let routes = [
        "tcp-route-by-port",
        "tcp-route-by-section",
        "tcp-route-by-section-and-port",
    ];
    t.gateway_and_routes_accepted(gw, "TCPRoute", &routes);
    for route in routes {
        assert_eq!(t.parents("TCPRoute", route).len(), 1);
    }
    let expect = [
        ("one", "tcp-route-by-port", "tcp-echo-one"),
        ("two", "tcp-route-by-section", "tcp-echo-two"),
        ("three", "tcp-route-by-section-and-port", "tcp-echo-three"),
    ];
    for (listener, route, service) in expect {
        let (served, backends) = t
            .l4_route(gw, listener)
            .expect("a route serves the listener");
        assert_eq!(served, route);
        assert_eq!(backends, [(backend(&format!("{service}:3000")), 1, true)]);
        assert_eq!(t.attached(gw, listener), 1);
    }
}

#[test]
fn tcproute_parentref_attach_all() {
    let t = Conformance::load("tcproute-parentref-attach-all.yaml").translate();
    let gw = "tcp-attach-all-gateway";
    t.gateway_and_routes_accepted(gw, "TCPRoute", &["tcp-route-attach-all"]);
    assert_eq!(t.parents("TCPRoute", "tcp-route-attach-all").len(), 1);
    for listener in ["one", "two", "three", "four"] {
        assert_eq!(t.attached(gw, listener), 1);
        assert_eq!(t.l4_route(gw, listener).unwrap().0, "tcp-route-attach-all");
    }
}

#[test]
fn tcproute_multiple_routes_attachment() {
    let gw = "tcp-multi-route-attach-gateway";
    let mut c = Conformance::load("tcproute-multiple-routes-attachment.yaml");
    let t = c.translate();
    t.route_conditions("TCPRoute", "tcproute-attach-older", gw, &[ACCEPTED]);
    assert_eq!(t.attached(gw, "tcp"), 1);

    // The Go test creates the newer route after the older one was accepted.
    c.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata:\n  name: tcproute-attach-newer\n  namespace: gateway-conformance-infra\nspec:\n  parentRefs:\n  - name: tcp-multi-route-attach-gateway\n    sectionName: tcp\n  rules:\n  - backendRefs:\n    - name: tcp-attach-backend-2\n      port: 3000\n",
    );
    let t = c.translate();
    for route in ["tcproute-attach-older", "tcproute-attach-newer"] {
        t.route_conditions("TCPRoute", route, gw, &[ACCEPTED]);
    }
    t.listeners(gw, &[listener("tcp", 2, &["TCPRoute"], &[ACCEPTED])]);
    let (served, backends) = t.l4_route(gw, "tcp").unwrap();
    assert_eq!(
        served, "tcproute-attach-older",
        "the oldest route gets the traffic"
    );
    assert_eq!(backends[0].0, backend("tcp-attach-backend-1:3000"));

    // With creationTimestamps, age decides regardless of file order.
    for route in &mut c.snapshot.tcp_routes {
        route.metadata.creation_timestamp = Some(match route.metadata.name.as_str() {
            "tcproute-attach-older" => "2025-01-01T00:00:05Z".into(),
            _ => "2025-01-01T00:00:00Z".into(),
        });
    }
    assert_eq!(
        c.translate().l4_route(gw, "tcp").unwrap().0,
        "tcproute-attach-newer"
    );
}

#[test]
fn tcproute_weighted_routing() {
    let t = Conformance::load("tcproute-weighted-routing.yaml").translate();
    let gw = "tcp-weighted-gateway";
    t.gateway_and_routes_accepted(gw, "TCPRoute", &["tcp-weighted-route"]);
    let (_, backends) = t.l4_route(gw, "tcp").unwrap();
    assert_eq!(
        backends,
        [
            (backend("tcp-backend-v1:3000"), 70, true),
            (backend("tcp-backend-v2:3000"), 30, true),
            (backend("tcp-backend-v3:3000"), 0, true)
        ]
    );
}

#[test]
fn tcproute_reference_grant() {
    let gw = "tcp-reference-grant-gateway";
    let mut c = Conformance::load("tcproute-reference-grant.yaml");
    let t = c.translate();
    t.gateway_and_routes_accepted(gw, "TCPRoute", &["tcp-reference-grant"]);
    t.route_conditions("TCPRoute", "tcp-reference-grant", gw, &[RESOLVED]);
    let (_, backends) = t.l4_route(gw, "tcp").unwrap();
    assert_eq!(
        backends,
        [(format!("{WEB}/tcp-reference-grant-backend:3000"), 1, true)]
    );

    // Deleting the grant revokes the reference.
    assert!(c
        .snapshot
        .remove("ReferenceGrant", Some(WEB), "tcp-reference-grant"));
    let t = c.translate();
    t.route_conditions(
        "TCPRoute",
        "tcp-reference-grant",
        gw,
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
    let (_, backends) = t.l4_route(gw, "tcp").unwrap();
    assert!(!backends[0].2, "the revoked backend is invalid");
}

#[test]
fn tcproute_invalid_cross_namespace_backend_ref() {
    let t = Conformance::load("tcproute-invalid-cross-namespace-backend-ref.yaml").translate();
    let gw = "tcp-invalid-cross-namespace-backend-ref-gateway";
    t.gateway_and_routes_accepted(gw, "TCPRoute", &["tcp-invalid-cross-namespace-backend-ref"]);
    t.route_conditions(
        "TCPRoute",
        "tcp-invalid-cross-namespace-backend-ref",
        gw,
        &[("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn tcproute_invalid_backend_ref_nonexistent() {
    let t = Conformance::load("tcproute-invalid-backendref-nonexistent.yaml").translate();
    let gw = "tcp-gateway-invalid-backend";
    t.route_conditions(
        "TCPRoute",
        "tcp-route-invalid-backend-ref-nonexistent",
        gw,
        &[ACCEPTED, ("ResolvedRefs", "False", "BackendNotFound")],
    );
    let (_, backends) = t.l4_route(gw, "tcp").unwrap();
    assert_eq!(backends, [(backend("nonexistent-service:8080"), 1, false)]);
}

#[test]
fn tcproute_invalid_non_tcp_listener() {
    let t = Conformance::load("tcproute-invalid-non-tcp-listener.yaml").translate();
    let gw = "tcp-mixed-protocol-gateway";
    t.route_conditions(
        "TCPRoute",
        "tcp-route",
        gw,
        &[("Accepted", "False", "NotAllowedByListeners")],
    );
    t.no_accepted_parents("TCPRoute", "tcp-route");
    t.zero_attached_routes(gw);
}

// ---------------------------------------------------------------------------------------------------------------
// UDPRoute

#[test]
fn udproute() {
    let t = Conformance::load("udproute-simple.yaml").translate();
    t.gateway_and_routes_accepted("udp-gateway", "UDPRoute", &["udp-coredns"]);
    let (_, backends) = t.l4_route("udp-gateway", "coredns").unwrap();
    assert_eq!(backends, [(backend("coredns:53"), 1, true)]);
    let ListenerKind::Udp(Some(route)) = t.ir_listener("udp-gateway", "coredns") else {
        panic!()
    };
    assert_eq!(route.backends[0].endpoints[0].port(), 53);
}

#[test]
fn udproute_parentref_port_and_section_name() {
    let t = Conformance::load("udproute-parentref-port-and-section-name.yaml").translate();
    let gw = "udp-multi-listener-gateway";
    let expect = [
        ("by-port", "udp-route-by-port", "udp-echo-by-port"),
        ("by-section", "udp-route-by-section", "udp-echo-by-section"),
        (
            "by-section-and-port",
            "udp-route-by-section-and-port",
            "udp-echo-by-section-and-port",
        ),
    ];
    for (listener, route, service) in expect {
        t.route_conditions("UDPRoute", route, gw, &[ACCEPTED]);
        let (served, backends) = t.l4_route(gw, listener).unwrap();
        assert_eq!(
            (served.as_str(), backends[0].0.as_str()),
            (route, backend(&format!("{service}:8080")).as_str())
        );
    }
}

#[test]
fn udproute_parentref_attach_all_listeners() {
    let t = Conformance::load("udproute-parentref-attach-all-listeners.yaml").translate();
    let gw = "udp-attach-all-listeners-gateway";
    t.route_conditions("UDPRoute", "udp-route-attach-all", gw, &[ACCEPTED]);
    let expected: &[Cond] = &[ACCEPTED, RESOLVED];
    t.listeners(
        gw,
        &[
            listener("udp-1", 1, &["UDPRoute"], expected),
            listener("udp-2", 1, &["UDPRoute"], expected),
            listener("udp-3", 1, &["UDPRoute"], expected),
        ],
    );
    for l in ["udp-1", "udp-2", "udp-3"] {
        assert_eq!(t.l4_route(gw, l).unwrap().0, "udp-route-attach-all");
    }
}

#[test]
fn udproute_multiple_routes_attachment() {
    let gw = "udp-multi-route-attach-gateway";
    let mut c = Conformance::load("udproute-multiple-routes-attachment.yaml");
    c.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: UDPRoute\nmetadata:\n  name: udproute-attach-newer\n  namespace: gateway-conformance-infra\nspec:\n  parentRefs:\n  - name: udp-multi-route-attach-gateway\n    sectionName: udp\n  rules:\n  - backendRefs:\n    - name: udp-attach-backend-2\n      port: 8080\n",
    );
    let t = c.translate();
    for route in ["udproute-attach-older", "udproute-attach-newer"] {
        t.route_conditions("UDPRoute", route, gw, &[ACCEPTED]);
    }
    t.listeners(gw, &[listener("udp", 2, &["UDPRoute"], &[ACCEPTED])]);
    let (served, backends) = t.l4_route(gw, "udp").unwrap();
    assert_eq!(
        (served.as_str(), backends[0].0.as_str()),
        (
            "udproute-attach-older",
            backend("udp-attach-backend-1:8080").as_str()
        )
    );
}

#[test]
fn udproute_weighted_routing() {
    let t = Conformance::load("udproute-weighted-routing.yaml").translate();
    t.gateway_and_routes_accepted("udp-weighted-gateway", "UDPRoute", &["udp-weighted-route"]);
    let (_, backends) = t.l4_route("udp-weighted-gateway", "udp").unwrap();
    let weights: Vec<u32> = backends.iter().map(|b| b.1).collect();
    assert_eq!(weights, [70, 30, 0]);
    assert!(backends.iter().all(|b| b.2));
}

#[test]
fn udproute_reference_grant() {
    let gw = "udp-gateway-reference-grant";
    let mut c = Conformance::load("udproute-reference-grant.yaml");
    let t = c.translate();
    t.route_conditions(
        "UDPRoute",
        "udp-route-reference-grant",
        gw,
        &[ACCEPTED, RESOLVED],
    );
    assert!(c
        .snapshot
        .remove("ReferenceGrant", Some(APP), "udp-reference-grant"));
    let t = c.translate();
    t.route_conditions(
        "UDPRoute",
        "udp-route-reference-grant",
        gw,
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
    assert!(!t.l4_route(gw, "udp").unwrap().1[0].2);
}

#[test]
fn udproute_invalid_cross_namespace_backend_ref() {
    let t = Conformance::load("udproute-invalid-cross-namespace-backend-ref.yaml").translate();
    assert!(
        !t.snapshot
            .contains("Service", Some(APP), "udp-echo-no-reference-grant"),
        "the Service does not exist"
    );
    t.route_conditions(
        "UDPRoute",
        "udp-route-invalid-cross-namespace-backend-ref",
        "udp-gateway-invalid-cross-namespace-backend-ref",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn udproute_invalid_backend_ref_nonexistent() {
    let t = Conformance::load("udproute-invalid-backendref-nonexistent.yaml").translate();
    t.route_conditions(
        "UDPRoute",
        "udp-route-invalid-backend-ref-nonexistent",
        "udp-gateway-invalid-backend",
        &[ACCEPTED, ("ResolvedRefs", "False", "BackendNotFound")],
    );
}

#[test]
fn udproute_not_allowed_by_listeners() {
    let t = Conformance::load("udproute-not-allowed-by-listeners.yaml").translate();
    let gw = "udproute-tls-only-gateway";
    t.route_conditions(
        "UDPRoute",
        "udproute-not-allowed-by-listeners",
        gw,
        &[("Accepted", "False", "NotAllowedByListeners")],
    );
    t.no_accepted_parents("UDPRoute", "udproute-not-allowed-by-listeners");
    t.zero_attached_routes(gw);
}

// ---------------------------------------------------------------------------------------------------------------
// HTTPRoute (core)

#[test]
fn httproute_simple_same_namespace() {
    let t = Conformance::load("httproute-simple-same-namespace.yaml").translate();
    t.gateway_and_routes_accepted(
        "same-namespace",
        "HTTPRoute",
        &["gateway-conformance-infra-test"],
    );
    t.route_accepted(
        "HTTPRoute",
        "gateway-conformance-infra-test",
        "same-namespace",
    );
    assert!(
        matches!(t.ir_listener("same-namespace", "http"), ListenerKind::Http(h) if !h.tls && h.hostname.is_none())
    );
}

#[test]
fn httproute_cross_namespace() {
    let t = Conformance::load("httproute-cross-namespace.yaml").translate();
    t.route_accepted(
        "HTTPRoute",
        &format!("{WEB}/cross-namespace"),
        "backend-namespaces",
    );
    assert_eq!(t.attached("backend-namespaces", "http"), 1);
}

#[test]
fn httproute_invalid_cross_namespace_parent_ref() {
    let t = Conformance::load("httproute-invalid-cross-namespace-parent-ref.yaml").translate();
    let route = format!("{WEB}/invalid-cross-namespace-parent-ref");
    t.route_conditions(
        "HTTPRoute",
        &route,
        "same-namespace",
        &[RESOLVED, ("Accepted", "False", "NotAllowedByListeners")],
    );
    t.no_accepted_parents("HTTPRoute", &route);
    t.zero_attached_routes("same-namespace");
}

#[test]
fn httproute_disallowed_kind() {
    let t = Conformance::load("httproute-disallowed-kind.yaml").translate();
    t.route_conditions(
        "HTTPRoute",
        "disallowed-kind",
        "tlsroutes-only",
        &[RESOLVED, ("Accepted", "False", "NotAllowedByListeners")],
    );
    t.no_accepted_parents("HTTPRoute", "disallowed-kind");
    t.zero_attached_routes("tlsroutes-only");
}

#[test]
fn httproute_invalid_parentref_not_matching_section_name() {
    let t =
        Conformance::load("httproute-invalid-parentref-not-matching-section-name.yaml").translate();
    let route = "httproute-listener-not-matching-section-name";
    t.route_conditions(
        "HTTPRoute",
        route,
        "same-namespace",
        &[("Accepted", "False", "NoMatchingParent")],
    );
    t.no_accepted_parents("HTTPRoute", route);
    t.zero_attached_routes("same-namespace");
}

#[test]
fn httproute_invalid_parentref_section_name_not_matching_port() {
    let t = Conformance::load("httproute-invalid-parentref-section-name-not-matching-port.yaml")
        .translate();
    let (route, gw) = (
        "httproute-listener-section-name-not-matching-port",
        "gateway-with-one-not-matching-port-and-section-name-route",
    );
    t.route_conditions(
        "HTTPRoute",
        route,
        gw,
        &[("Accepted", "False", "NoMatchingParent")],
    );
    t.no_accepted_parents("HTTPRoute", route);
    t.zero_attached_routes(gw);
}

#[test]
fn httproute_invalid_parentref_not_matching_listener_port() {
    let t = Conformance::load("httproute-invalid-parentref-not-matching-listener-port.yaml")
        .translate();
    let route = "httproute-listener-not-matching-route-port";
    t.route_conditions(
        "HTTPRoute",
        route,
        "same-namespace",
        &[("Accepted", "False", "NoMatchingParent")],
    );
    t.no_accepted_parents("HTTPRoute", route);
    t.zero_attached_routes("same-namespace");
}

#[test]
fn httproute_invalid_nonexistent_backend_ref() {
    let t = Conformance::load("httproute-invalid-nonexistent-backendref.yaml").translate();
    t.route_conditions(
        "HTTPRoute",
        "invalid-nonexistent-backend-ref",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "BackendNotFound")],
    );
}

#[test]
fn httproute_invalid_backend_ref_unknown_kind() {
    let t = Conformance::load("httproute-invalid-backendref-unknown-kind.yaml").translate();
    t.route_conditions(
        "HTTPRoute",
        "invalid-backend-ref-unknown-kind",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "InvalidKind")],
    );
}

#[test]
fn httproute_invalid_cross_namespace_backend_ref() {
    let t = Conformance::load("httproute-invalid-cross-namespace-backend-ref.yaml").translate();
    t.route_conditions(
        "HTTPRoute",
        "invalid-cross-namespace-backend-ref",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn httproute_invalid_reference_grant() {
    let t = Conformance::load("httproute-invalid-reference-grant.yaml").translate();
    assert_eq!(t.snapshot.reference_grants.len(), 7);
    t.route_conditions(
        "HTTPRoute",
        "reference-grant",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn httproute_reference_grant() {
    let mut c = Conformance::load("httproute-reference-grant.yaml");
    c.translate()
        .route_accepted("HTTPRoute", "reference-grant", "same-namespace");
    assert!(c
        .snapshot
        .remove("ReferenceGrant", Some(WEB), "reference-grant"));
    c.translate().route_conditions(
        "HTTPRoute",
        "reference-grant",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

#[test]
fn httproute_partially_invalid_via_invalid_reference_grant() {
    let c = Conformance::load("httproute-partially-invalid-via-invalid-reference-grant.yaml");
    let t = c.translate();
    t.route_conditions(
        "HTTPRoute",
        "invalid-reference-grant",
        "same-namespace",
        &[ACCEPTED, ("ResolvedRefs", "False", "RefNotPermitted")],
    );
    // Rule /v2 (app-backend-v2, not granted) is invalid; the default rule (app-backend-v1, granted) resolves.
    let options = options();
    let ctx = Context::new(&c.snapshot, &options);
    let rules = &c
        .snapshot
        .http_routes
        .iter()
        .find(|r| r.metadata.name == "invalid-reference-grant")
        .unwrap()
        .spec
        .rules;
    let v2 = backend::resolve(&ctx, RouteKind::Http, INFRA, &rules[0].backend_refs[0]);
    let v1 = backend::resolve(&ctx, RouteKind::Http, INFRA, &rules[1].backend_refs[0]);
    assert!(!v2.0.valid && v2.1.unwrap().reason == "RefNotPermitted");
    assert!(v1.0.valid && v1.1.is_none() && v1.0.endpoints.len() == 1);
}

#[test]
fn httproute_hostname_intersection() {
    let t = Conformance::load("httproute-hostname-intersection.yaml").translate();
    let gw = "httproute-hostname-intersection";
    for route in [
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ] {
        t.route_accepted("HTTPRoute", route, gw);
    }
    t.route_conditions(
        "HTTPRoute",
        "no-intersecting-hosts",
        gw,
        &[("Accepted", "False", "NoMatchingListenerHostname")],
    );
    assert_eq!(
        (
            t.attached(gw, "listener-1"),
            t.attached(gw, "listener-2"),
            t.attached(gw, "listener-3")
        ),
        (2, 1, 1)
    );
    t.route_accepted(
        "HTTPRoute",
        "httproute-hostname-intersection-all",
        "httproute-hostname-intersection-all",
    );
    // Effective hostnames per listener: non-intersecting route names are ignored.
    let s1 = [
        "non.matching.com".to_string(),
        "*.nonmatchingwildcard.io".into(),
        "very.specific.com".into(),
    ];
    assert_eq!(
        hostname::effective(Some("very.specific.com"), &s1),
        ["very.specific.com"]
    );
    let s3 = ["non.matching.com".to_string(), "*.specific.com".into()];
    assert_eq!(
        hostname::effective(Some("very.specific.com"), &s3),
        ["very.specific.com"]
    );
    let s2 = [
        "non.matching.com",
        "wildcard.io",
        "foo.wildcard.io",
        "bar.wildcard.io",
        "foo.bar.wildcard.io",
    ]
    .map(String::from);
    assert_eq!(
        hostname::effective(Some("*.wildcard.io"), &s2),
        ["foo.bar.wildcard.io", "bar.wildcard.io", "foo.wildcard.io"]
    );
}

#[test]
fn httproute_listener_hostname_matching() {
    let t = Conformance::load("httproute-listener-hostname-matching.yaml").translate();
    let gw = "httproute-listener-hostname-matching";
    for route in ["backend-v1", "backend-v2", "backend-v3"] {
        t.route_accepted("HTTPRoute", route, gw);
    }
    assert_eq!(
        t.parents("HTTPRoute", "backend-v3").len(),
        2,
        "one parent entry per parentRef (listener-3, listener-4)"
    );
    let attached: Vec<i32> = ["listener-1", "listener-2", "listener-3", "listener-4"]
        .iter()
        .map(|l| t.attached(gw, l))
        .collect();
    assert_eq!(attached, [1, 1, 1, 1]);
}

#[test]
fn httproute_listener_port_matching() {
    let t = Conformance::load("httproute-listener-port-matching.yaml").translate();
    let gw = "httproute-listener-port-matching";
    for route in ["backend-v1", "backend-v2", "backend-v3"] {
        t.route_accepted("HTTPRoute", route, gw);
    }
    let attached: Vec<i32> = (1..=5)
        .map(|i| t.attached(gw, &format!("listener-{i}")))
        .collect();
    assert_eq!(
        attached,
        [1, 1, 1, 1, 0],
        "port 8080 attaches to both listeners on it; sectionName narrows 8090"
    );
}

#[test]
fn httproute_https_listener() {
    let t = Conformance::load("httproute-https-listener.yaml").translate();
    let gw = "same-namespace-with-https-listener";
    t.route_accepted("HTTPRoute", "httproute-https-test", gw);
    t.route_accepted("HTTPRoute", "httproute-https-test-no-hostname", gw);
    // [example.org] attaches to the hostname-less listener only.
    let attached: Vec<i32> = [
        "https",
        "https-with-hostname",
        "https-with-wildcard-hostname",
        "https-with-hostname-matching-wildcard",
    ]
    .iter()
    .map(|l| t.attached(gw, l))
    .collect();
    assert_eq!(attached, [1, 1, 0, 0]);
    assert!(matches!(t.ir_listener(gw, "https"), ListenerKind::Http(h) if h.tls));
    // *.wildcard.org and fourth-example.wildcard.org overlap on port 443.
    let l = t.listener(gw, "https-with-wildcard-hostname");
    check_conditions(
        &l.conditions,
        &[("OverlappingTLSConfig", "True", "OverlappingHostnames")],
        "overlap",
    );
}

#[test]
fn httproute_multiple_gateways() {
    let t = Conformance::load("httproute-multiple-gateways.yaml").translate();
    t.route_accepted(
        "HTTPRoute",
        "multiple-gateways-shared-route",
        "same-namespace",
    );
    t.route_accepted(
        "HTTPRoute",
        "multiple-gateways-shared-route",
        "all-namespaces",
    );
    t.route_accepted(
        "HTTPRoute",
        "same-namespace-dedicated-route",
        "same-namespace",
    );
    t.route_accepted(
        "HTTPRoute",
        "all-namespaces-dedicated-route",
        "all-namespaces",
    );
    assert_eq!(
        (
            t.attached("same-namespace", "http"),
            t.attached("all-namespaces", "http")
        ),
        (2, 2)
    );
    let a = &t.ir_gateway("same-namespace").addresses;
    let b = &t.ir_gateway("all-namespaces").addresses;
    assert!(
        !a.is_empty() && a.iter().all(|ip| !b.contains(ip)),
        "each Gateway has its own address"
    );
}

#[test]
fn httproute_observed_generation_bump() {
    let mut c = Conformance::load("httproute-observed-generation-bump.yaml");
    c.translate()
        .route_accepted("HTTPRoute", "observed-generation-bump", "same-namespace");
    let route = c
        .snapshot
        .http_routes
        .iter_mut()
        .find(|r| r.metadata.name == "observed-generation-bump")
        .unwrap();
    route.spec.rules[0].backend_refs[0].name = "infra-backend-v2".into();
    route.metadata.generation = Some(2);
    let t = c.translate();
    let parent = t.parent("HTTPRoute", "observed-generation-bump", "same-namespace");
    assert!(parent.conditions.iter().all(|c| c.observed_generation == 2));
    t.route_accepted("HTTPRoute", "observed-generation-bump", "same-namespace");
}

#[test]
fn httproute_no_backend_refs() {
    let t = Conformance::load("httproute-omitted-backendrefs.yaml").translate();
    t.route_accepted("HTTPRoute", "omitted-backendrefs", "same-namespace");
}

#[test]
fn httproute_service_types() {
    let mut c = Conformance::load("httproute-service-types.yaml");
    // The Go test fills the manual EndpointSlices with the pod addresses.
    for slice in &mut c.snapshot.endpoint_slices {
        if slice.metadata.name.ends_with("-ip4") {
            slice.endpoints = vec![
                serde_json::from_value(serde_json::json!({"addresses": ["10.1.0.7"]})).unwrap(),
                serde_json::from_value(
                    serde_json::json!({"addresses": ["10.1.0.8"], "conditions": {"ready": false}}),
                )
                .unwrap(),
            ];
        }
    }
    let t = c.translate();
    t.route_accepted("HTTPRoute", "service-types", "same-namespace");
    let options = options();
    let ctx = Context::new(&c.snapshot, &options);
    let route = c
        .snapshot
        .http_routes
        .iter()
        .find(|r| r.metadata.name == "service-types")
        .unwrap();
    for rule in &route.spec.rules {
        let (b, problem) = backend::resolve(&ctx, RouteKind::Http, INFRA, &rule.backend_refs[0]);
        assert!(problem.is_none() && b.valid, "{}", b.name);
        assert_eq!(b.endpoints.len(), 1, "{}: ready endpoints only", b.name);
        assert_eq!(
            b.endpoints[0].port(),
            3000,
            "{}: the targetPort from the slice",
            b.name
        );
    }
}

#[test]
fn httproute_weight() {
    let c = Conformance::load("httproute-weight.yaml");
    let t = c.translate();
    t.route_accepted("HTTPRoute", "weighted-backends", "same-namespace");
    let options = options();
    let ctx = Context::new(&c.snapshot, &options);
    let route = c
        .snapshot
        .http_routes
        .iter()
        .find(|r| r.metadata.name == "weighted-backends")
        .unwrap();
    let weights: Vec<u32> = route.spec.rules[0]
        .backend_refs
        .iter()
        .map(|b| backend::resolve(&ctx, RouteKind::Http, INFRA, b).0.weight)
        .collect();
    assert_eq!(weights, [70, 30, 0]);
}

/// HTTP matching tests: in scope here is attachment and status (the proxy does the matching).
fn http_routes_accepted(manifest: &str, routes: &[&str]) {
    let t = Conformance::load(manifest).translate();
    t.gateway_and_routes_accepted("same-namespace", "HTTPRoute", routes);
    for route in routes {
        t.route_accepted("HTTPRoute", route, "same-namespace");
    }
    assert_eq!(t.attached("same-namespace", "http"), routes.len() as i32);
}

#[test]
fn httproute_matching() {
    http_routes_accepted("httproute-matching.yaml", &["matching"]);
}

#[test]
fn httproute_matching_across_routes() {
    http_routes_accepted(
        "httproute-matching-across-routes.yaml",
        &["matching-part1", "matching-part2"],
    );
}

#[test]
fn httproute_exact_path_matching() {
    http_routes_accepted("httproute-exact-path-matching.yaml", &["exact-matching"]);
}

#[test]
fn httproute_path_match_order() {
    http_routes_accepted("httproute-path-match-order.yaml", &["path-matching-order"]);
}

#[test]
fn httproute_header_matching() {
    http_routes_accepted("httproute-header-matching.yaml", &["header-matching"]);
}

#[test]
fn httproute_request_header_modifier() {
    http_routes_accepted(
        "httproute-request-header-modifier.yaml",
        &["request-header-modifier"],
    );
}

#[test]
fn httproute_redirect_host_and_status() {
    http_routes_accepted(
        "httproute-redirect-host-and-status.yaml",
        &["redirect-host-and-status"],
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Gateway, GatewayClass, listeners

#[test]
fn gateway_class_accepted_and_namespaces_ready() {
    // Suite setup: our GatewayClass is accepted and every base Gateway becomes ready (checked by the harness).
    let t = Conformance::load("httproute-simple-same-namespace.yaml").translate();
    let class = t.status.gateway_class(CLASS).unwrap();
    let features: Vec<&str> = class
        .supported_features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let mut sorted = features.clone();
    sorted.sort();
    assert_eq!(features, sorted, "supportedFeatures sorted");
    for f in [
        "Gateway",
        "HTTPRoute",
        "ReferenceGrant",
        "TCPRoute",
        "TLSRoute",
        "UDPRoute",
    ] {
        assert!(features.contains(&f), "{f} claimed");
    }
    for gw in [
        "same-namespace",
        "same-namespace-with-https-listener",
        "all-namespaces",
        "backend-namespaces",
    ] {
        t.gateway_conditions(gw, &[ACCEPTED, PROGRAMMED]);
        assert_eq!(t.gateway(gw).addresses[0].type_, "IPAddress");
    }
}

#[test]
fn gatewayclass_observed_generation_bump() {
    let mut c = Conformance::load("gatewayclass-observed-generation-bump.yaml");
    let class = "gatewayclass-observed-generation-bump";
    let t = c.translate();
    let status = t
        .status
        .gateway_class(class)
        .expect("every class of our controller is reconciled");
    assert!(status.conditions.iter().any(|c| c.type_ == "Accepted"));
    assert!(status.conditions.iter().all(|c| c.observed_generation == 1));
    let gc = c
        .snapshot
        .gateway_classes
        .iter_mut()
        .find(|g| g.metadata.name == class)
        .unwrap();
    gc.spec.description = Some("new".into());
    gc.metadata.generation = Some(2);
    let t = c.translate();
    assert!(t
        .status
        .gateway_class(class)
        .unwrap()
        .conditions
        .iter()
        .all(|c| c.observed_generation == 2));
}

#[test]
fn gateway_observed_generation_bump() {
    let gw = "gateway-observed-generation-bump";
    let mut c = Conformance::load("gateway-observed-generation-bump.yaml");
    c.translate()
        .gateway_conditions(gw, &[ACCEPTED, PROGRAMMED]);
    let mut alternate = c.gateway_mut(gw).spec.listeners[0].clone();
    alternate.name = "alternate".into();
    alternate.hostname = Some("foo.com".into());
    let g = c.gateway_mut(gw);
    g.spec.listeners.push(alternate);
    g.metadata.generation = Some(2);
    let t = c.translate(); // the harness checks every observedGeneration is 2
    t.gateway_conditions(gw, &[ACCEPTED, PROGRAMMED]);
    assert_eq!(t.gateway(gw).listeners.len(), 2);
}

#[test]
fn gateway_modify_listeners() {
    let mut c = Conformance::load("gateway-modify-listeners.yaml");
    let t = c.translate();
    t.listeners(
        "gateway-add-listener",
        &[listener("https", 1, &["HTTPRoute"], &[ACCEPTED, RESOLVED])],
    );
    let expected: &[Cond] = &[ACCEPTED, RESOLVED];
    t.listeners(
        "gateway-remove-listener",
        &[
            listener("https", 1, &["HTTPRoute"], expected),
            listener("http", 1, &["HTTPRoute"], expected),
        ],
    );

    let mut http = c.gateway_mut("gateway-remove-listener").spec.listeners[1].clone();
    http.hostname = Some("data.test.com".into());
    let add = c.gateway_mut("gateway-add-listener");
    add.spec.listeners.push(http);
    add.metadata.generation = Some(2);
    let remove = c.gateway_mut("gateway-remove-listener");
    remove.spec.listeners.remove(0);
    remove.metadata.generation = Some(2);
    let t = c.translate();
    t.listeners(
        "gateway-add-listener",
        &[
            listener("https", 1, &["HTTPRoute"], expected),
            listener("http", 1, &["HTTPRoute"], expected),
        ],
    );
    t.listeners(
        "gateway-remove-listener",
        &[listener("http", 1, &["HTTPRoute"], expected)],
    );
}

#[test]
fn gateway_listener_unsupported_protocol() {
    let t = Conformance::load("gateway-invalid-listeners-unsupported-protocol.yaml").translate();
    let invalid = || {
        listener(
            "invalid",
            0,
            &[],
            &[("Accepted", "False", "UnsupportedProtocol")],
        )
    };
    t.gateway_conditions(
        "gateway-only-unsupported-protocols",
        &[("Accepted", "False", "ListenersNotValid")],
    );
    t.listeners("gateway-only-unsupported-protocols", &[invalid()]);
    t.gateway_conditions(
        "gateway-supported-and-unsupported-protocols",
        &[("Accepted", "True", "ListenersNotValid")],
    );
    t.listeners(
        "gateway-supported-and-unsupported-protocols",
        &[listener("http", 0, &["HTTPRoute"], &[ACCEPTED]), invalid()],
    );
}

#[test]
fn gateway_invalid_route_kind() {
    let t = Conformance::load("gateway-invalid-route-kind.yaml").translate();
    let invalid: &[Cond] = &[("ResolvedRefs", "False", "InvalidRouteKinds")];
    t.listeners(
        "gateway-only-invalid-route-kind",
        &[listener("http", 0, &[], invalid)],
    );
    t.listeners(
        "gateway-supported-and-invalid-route-kind",
        &[listener("http", 0, &["HTTPRoute"], invalid)],
    );
}

#[test]
fn gateway_invalid_tls_configuration() {
    let t = Conformance::load("gateway-invalid-tls-configuration.yaml").translate();
    for gw in [
        "gateway-certificate-nonexistent-secret",
        "gateway-certificate-unsupported-group",
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-malformed-secret",
    ] {
        t.listeners(
            gw,
            &[listener(
                "https",
                0,
                &["HTTPRoute"],
                &[("ResolvedRefs", "False", "InvalidCertificateRef")],
            )],
        );
    }
}

#[test]
fn gateway_secret_missing_reference_grant() {
    let gw = "gateway-secret-missing-reference-grant";
    let t = Conformance::load("gateway-secret-missing-reference-grant.yaml")
        .allow_unready(&[gw])
        .translate();
    t.listeners(
        gw,
        &[listener(
            "https",
            0,
            &["HTTPRoute"],
            &[("ResolvedRefs", "False", "RefNotPermitted")],
        )],
    );
}

#[test]
fn gateway_secret_invalid_reference_grant() {
    let gw = "gateway-secret-invalid-reference-grant";
    let t = Conformance::load("gateway-secret-invalid-reference-grant.yaml")
        .allow_unready(&[gw])
        .translate();
    assert_eq!(t.snapshot.reference_grants.len(), 7);
    t.listeners(
        gw,
        &[listener(
            "https",
            0,
            &["HTTPRoute"],
            &[("ResolvedRefs", "False", "RefNotPermitted")],
        )],
    );
}

#[test]
fn gateway_secret_reference_grant_specific() {
    let t = Conformance::load("gateway-secret-reference-grant-specific.yaml").translate();
    t.listeners(
        "gateway-secret-reference-grant-specific",
        &[listener(
            "https",
            0,
            &["HTTPRoute"],
            &[PROGRAMMED, RESOLVED],
        )],
    );
}

#[test]
fn gateway_secret_reference_grant_all_in_namespace() {
    let t = Conformance::load("gateway-secret-reference-grant-all-in-namespace.yaml").translate();
    t.listeners(
        "gateway-secret-reference-grant-all-in-namespace",
        &[listener(
            "https",
            0,
            &["HTTPRoute"],
            &[PROGRAMMED, RESOLVED],
        )],
    );
}

#[test]
fn gateway_invalid_parameters_ref() {
    let t = Conformance::load("gateway-invalid-parameters-ref.yaml").translate();
    t.gateway_conditions(
        "gateway-invalid-parameters-ref",
        &[("Accepted", "False", "InvalidParameters")],
    );
}

#[test]
fn gateway_static_addresses() {
    let gw = "gateway-static-addresses";
    let usable = "198.18.200.1";
    let mut c = Conformance::load_with(
        "gateway-static-addresses.yaml",
        &[
            ("PLACEHOLDER_UNUSABLE_ADDRS", "fd00::1"),
            ("PLACEHOLDER_USABLE_ADDRS", usable),
        ],
    );
    let t = c.translate();
    t.gateway_conditions(gw, &[("Accepted", "False", "UnsupportedAddress")]);
    assert!(
        t.ir.gateways.iter().all(|g| g.gateway.name != gw),
        "a Gateway not accepted is not served"
    );

    // The test drops the address of unknown type: the IPv6 address is unusable, the IPv4 one still served.
    c.gateway_mut(gw).spec.addresses.remove(0);
    let t = c.translate();
    t.gateway_conditions(gw, &[ACCEPTED, ("Programmed", "False", "AddressNotUsable")]);

    // Only the usable address left.
    c.gateway_mut(gw).spec.addresses.remove(0);
    let t = c.translate();
    t.gateway_conditions(gw, &[ACCEPTED, PROGRAMMED]);
    let addresses = &t.gateway(gw).addresses;
    assert_eq!(addresses.len(), 1);
    assert_eq!(
        (addresses[0].type_.as_str(), addresses[0].value.as_str()),
        ("IPAddress", usable)
    );
    assert_eq!(
        t.ir_gateway(gw).addresses,
        [usable.parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn gateway_optional_address_value() {
    // Needs GatewayAddressEmpty, which standalone mode cannot honour (no address pool): documented as
    // Programmed=False AddressNotAssigned.
    assert!(!SUPPORTED_FEATURES.contains(&"GatewayAddressEmpty"));
    let gw = "gateway-without-address-value";
    let t = Conformance::load("gateway-optional-address-value.yaml")
        .allow_unready(&[gw])
        .translate();
    t.gateway_conditions(
        gw,
        &[ACCEPTED, ("Programmed", "False", "AddressNotAssigned")],
    );
    assert!(t.gateway(gw).addresses.is_empty());
}

#[test]
fn gateway_with_attached_routes() {
    let t = Conformance::load("gateway-with-attached-routes.yaml").translate();
    t.listeners(
        "gateway-with-one-attached-route",
        &[listener("http", 1, &["HTTPRoute"], &[ACCEPTED, RESOLVED])],
    );
    t.listeners(
        "gateway-with-two-attached-routes",
        &[listener("http", 2, &["HTTPRoute"], &[ACCEPTED, RESOLVED])],
    );
    t.route_conditions(
        "HTTPRoute",
        "http-route-not-accepted",
        "gateway-with-two-attached-routes",
        &[("Accepted", "False", "NoMatchingListenerHostname")],
    );
    let gw3 = "unresolved-gateway-with-one-attached-unresolved-route";
    let l = t.listener(gw3, "tls");
    assert_eq!(
        l.attached_routes, 1,
        "counted although the listener and the route's refs do not resolve"
    );
    check_conditions(
        &l.conditions,
        &[
            ("Programmed", "False", "Invalid"),
            ("ResolvedRefs", "False", "InvalidCertificateRef"),
        ],
        "gw3 tls",
    );
    t.route_conditions(
        "HTTPRoute",
        "http-route-4",
        gw3,
        &[ACCEPTED, ("ResolvedRefs", "False", "BackendNotFound")],
    );
}

#[test]
fn gateway_http_listener_isolation() {
    let t = Conformance::load("gateway-http-listener-isolation.yaml").translate();
    let gw = "http-listener-isolation";
    for (route, listener) in [
        ("attaches-to-empty-hostname", "empty-hostname"),
        ("attaches-to-wildcard-example-com", "wildcard-example-com"),
        (
            "attaches-to-wildcard-foo-example-com",
            "wildcard-foo-example-com",
        ),
        ("attaches-to-abc-foo-example-com", "abc-foo-example-com"),
    ] {
        t.route_accepted("HTTPRoute", route, gw);
        assert_eq!(t.attached(gw, listener), 1);
    }
    // Four HTTP listeners on one port with distinct hostnames do not conflict.
    t.gateway_and_routes_accepted(gw, "HTTPRoute", &[]);
}
