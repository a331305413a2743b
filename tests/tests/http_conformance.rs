//! The Gateway API conformance HTTPRoute core cases, with traffic, through the userspace HTTP proxy: each test
//! loads the official manifest (plus base manifests), runs its Deployments as echo backends in namespaces and
//! checks what the conformance suite checks (3 consecutive matching answers, 30 s at most), with real clients
//! in the client namespace. Also: weights, ReferenceGrant deletion, and 100 route changes under load.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    clients::{self, deployment_of},
    conformance,
    conformance::Plan,
    echo::HttpEchoReply,
    http_checks::{
        accepted, eventually, expect_backend, expect_echo, expect_status, request,
        route_changes_under_load,
    },
    pki::Pki,
};

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";

#[test]
fn http_simple_same_namespace() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", |run| {
        accepted(&run, INFRA, "gateway-conformance-infra-test")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)
    })
}

/// What the backend is told of the client, and what stays between the client and the proxy: X-Forwarded-For
/// carries the client's address (appended to a list the client sent), X-Forwarded-Proto the scheme, and
/// hop-by-hop headers (RFC 9110 §7.6.1's, and those the client's Connection header lists) are not forwarded.
#[test]
fn http_forwarding_headers_and_hop_by_hop_headers() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", |run| {
        accepted(&run, INFRA, "gateway-conformance-infra-test")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        let client = run.topology().client_addr().to_string();
        let header =
            |e: &HttpEchoReply, name: &str| e.headers.get(name).cloned().unwrap_or_default();
        expect_echo(&run, gw, "example.com", "/", &[], |e| {
            ensure!(
                header(e, "X-Forwarded-For") == [client.clone()],
                "{:?}",
                e.headers
            );
            ensure!(
                header(e, "X-Forwarded-Proto") == ["http"],
                "{:?}",
                e.headers
            );
            Ok(())
        })?;
        let sent = [("X-Forwarded-For", "203.0.113.9")];
        expect_echo(&run, gw, "example.com", "/", &sent, |e| {
            ensure!(
                header(e, "X-Forwarded-For") == [format!("203.0.113.9, {client}")],
                "{:?}",
                e.headers
            );
            Ok(())
        })?;
        let sent = [
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Public", "kept"),
        ];
        expect_echo(&run, gw, "example.com", "/", &sent, |e| {
            for gone in ["X-Private", "Keep-Alive", "Proxy-Connection"] {
                ensure!(
                    !e.headers.contains_key(gone),
                    "{gone} forwarded: {:?}",
                    e.headers
                );
            }
            ensure!(header(e, "X-Public") == ["kept"], "{:?}", e.headers);
            Ok(())
        })
    })
}

#[test]
fn http_cross_namespace() -> Result<()> {
    conformance!("httproute-cross-namespace.yaml", |run| {
        accepted(&run, WEB, "cross-namespace")?;
        let gw = run.target(INFRA, "backend-namespaces", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "web-backend", WEB)
    })
}

#[test]
fn http_invalid_cross_namespace_parent_ref_and_disallowed_kind() -> Result<()> {
    let t = Duration::from_secs(30);
    conformance!("httproute-invalid-cross-namespace-parent-ref.yaml", |run| {
        let name = "invalid-cross-namespace-parent-ref";
        run.wait_route_condition(
            "HTTPRoute",
            WEB,
            name,
            "Accepted",
            "NotAllowedByListeners",
            t,
        )?;
        run.wait_route_condition("HTTPRoute", WEB, name, "ResolvedRefs", "ResolvedRefs", t)?;
        expect_status(
            &run,
            run.target(INFRA, "same-namespace", 80),
            "example.com",
            "/",
            404,
        )
    })?;
    conformance!("httproute-disallowed-kind.yaml", |run| {
        run.wait_route_condition(
            "HTTPRoute",
            INFRA,
            "disallowed-kind",
            "Accepted",
            "NotAllowedByListeners",
            t,
        )?;
        run.wait_route_condition(
            "HTTPRoute",
            INFRA,
            "disallowed-kind",
            "ResolvedRefs",
            "ResolvedRefs",
            t,
        )
    })
}

#[test]
fn http_hostname_intersection() -> Result<()> {
    conformance!("httproute-hostname-intersection.yaml", |run| {
        let gw = run.target(INFRA, "httproute-hostname-intersection", 80);
        let v = |n| format!("infra-backend-v{n}");
        expect_backend(&run, gw, "very.specific.com", "/s1", &[], &v(1), INFRA)?;
        expect_backend(&run, gw, "very.specific.com:1234", "/s1", &[], &v(1), INFRA)?;
        for host in ["foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"] {
            expect_backend(&run, gw, host, "/s2", &[], &v(2), INFRA)?;
        }
        expect_backend(&run, gw, "very.specific.com", "/s3", &[], &v(3), INFRA)?;
        expect_backend(&run, gw, "foo.anotherwildcard.io", "/s4", &[], &v(1), INFRA)?;
        for (host, path) in [
            ("non.matching.com", "/s1"),
            ("foo.nonmatchingwildcard.io", "/s1"),
            ("foo.wildcard.io", "/s1"),
            ("very.specific.com", "/s2"),
            ("wildcard.io", "/s2"),
            ("specific.but.wrong.com", "/s5"),
            ("wildcard.io", "/s5"),
        ] {
            expect_status(&run, gw, host, path, 404)?;
        }
        Ok(())
    })
}

#[test]
fn http_listener_hostname_matching() -> Result<()> {
    conformance!("httproute-listener-hostname-matching.yaml", |run| {
        let gw = run.target(INFRA, "httproute-listener-hostname-matching", 80);
        let v = |n| format!("infra-backend-v{n}");
        expect_backend(&run, gw, "bar.com", "/", &[], &v(1), INFRA)?;
        expect_backend(&run, gw, "foo.bar.com", "/", &[], &v(2), INFRA)?;
        for host in [
            "baz.bar.com",
            "boo.bar.com",
            "multiple.prefixes.bar.com",
            "multiple.prefixes.foo.com",
        ] {
            expect_backend(&run, gw, host, "/", &[], &v(3), INFRA)?;
        }
        expect_status(&run, gw, "foo.com", "/", 404)?;
        expect_status(&run, gw, "no.matching.host", "/", 404)
    })
}

#[test]
fn http_https_listener() -> Result<()> {
    let pki = Pki::new("conformance test CA")?;
    let cert = pki.issue(
        "tls-validity-checks-certificate",
        &["example.org", "second-example.org", "unknown-example.org"],
    )?;
    conformance!("httproute-https-listener.yaml", |run| {
        run.apply(&cert.tls_secret_yaml("tls-validity-checks-certificate", INFRA))?;
        let gw = run.target(INFRA, "same-namespace-with-https-listener", 443);
        let ca = pki.ca_pem().to_string();
        let https = |host: &str, backend: Option<&str>| -> Result<()> {
            eventually(&format!("https {host}"), || {
                let (h, ca) = (host.to_string(), ca.clone());
                let r = run
                    .topology()
                    .client()
                    .run(move || clients::https_request(gw, &h, &ca, &h, "/"))?;
                match backend {
                    Some(b) => {
                        ensure!(r.status == 200, "status {} ({})", r.status, r.text());
                        let echo = r.echo()?;
                        ensure!(echo.pod.starts_with(b), "answered by {}", echo.pod);
                    }
                    None => ensure!(r.status == 404, "status {}", r.status),
                }
                Ok(())
            })
        };
        https("example.org", Some("infra-backend-v1"))?;
        https("second-example.org", Some("infra-backend-v2"))?;
        https("unknown-example.org", None)?;
        // A connection opened with the first certificate, kept alive across the rotation.
        let mut held = run
            .topology()
            .client()
            .run(|| clients::KeepAliveHttps::connect(gw, "example.org", &ca))?;
        let r = held.get("example.org", "/before")?;
        ensure!(r.status == 200, "held connection: status {}", r.status);
        // A new certificate is served to new connections without a restart.
        let other = Pki::new("second CA")?;
        let cert2 = other.issue(
            "rotated",
            &["example.org", "second-example.org", "unknown-example.org"],
        )?;
        run.apply(&cert2.tls_secret_yaml("tls-validity-checks-certificate", INFRA))?;
        let ca2 = other.ca_pem().to_string();
        eventually("rotated certificate", || {
            let ca = ca2.clone();
            let r = run
                .topology()
                .client()
                .run(move || clients::https_request(gw, "example.org", &ca, "example.org", "/"))?;
            ensure!(r.status == 200, "status {}", r.status);
            Ok(())
        })?;
        // The connection made before the rotation was not dropped: it still serves requests.
        let r = held.get("example.org", "/after")?;
        ensure!(
            r.status == 200,
            "held connection after the rotation: {}",
            r.status
        );
        ensure!(r.echo()?.path == "/after", "{}", r.text());
        Ok(())
    })
}

#[test]
fn http_multiple_gateways() -> Result<()> {
    conformance!("httproute-multiple-gateways.yaml", |run| {
        let a = run.target(INFRA, "same-namespace", 80);
        let b = run.target(INFRA, "all-namespaces", 80);
        let v = |n| format!("infra-backend-v{n}");
        expect_backend(&run, a, "example.com", "/shared", &[], &v(1), INFRA)?;
        expect_backend(&run, b, "example.com", "/shared", &[], &v(1), INFRA)?;
        expect_backend(&run, a, "example.com", "/", &[], &v(2), INFRA)?;
        expect_backend(&run, b, "example.com", "/", &[], &v(3), INFRA)
    })
}

#[test]
fn http_matching_and_matching_across_routes() -> Result<()> {
    let v = |n| format!("infra-backend-v{n}");
    conformance!("httproute-matching.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        for (path, headers, backend) in [
            ("/", vec![], 1),
            ("/example", vec![], 1),
            ("/", vec![("Version", "one")], 1),
            ("/v2", vec![], 2),
            ("/v2/example", vec![], 2),
            ("/v2/", vec![], 2),
            ("/", vec![("Version", "two")], 2),
            ("/v2example", vec![], 1),
            ("/foo/v2/example", vec![], 1),
        ] {
            expect_backend(&run, gw, "example.com", path, &headers, &v(backend), INFRA)?;
        }
        Ok(())
    })?;
    conformance!("httproute-matching-across-routes.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        for (host, path, headers, backend) in [
            ("example.com", "/", vec![], 1),
            ("example.com", "/example", vec![], 1),
            ("example.net", "/example", vec![], 1),
            ("example.com", "/v2", vec![], 2),
            ("example.com", "/v2/example", vec![], 2),
            ("example.com", "/", vec![("Version", "two")], 2),
            ("example.net", "/v2", vec![], 1),
            ("example.com", "/v2example", vec![], 1),
        ] {
            expect_backend(&run, gw, host, path, &headers, &v(backend), INFRA)?;
        }
        Ok(())
    })
}

#[test]
fn http_exact_path_and_path_match_order() -> Result<()> {
    let v = |n| format!("infra-backend-v{n}");
    conformance!("httproute-exact-path-matching.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/one", &[], &v(1), INFRA)?;
        expect_backend(&run, gw, "example.com", "/two", &[], &v(2), INFRA)?;
        for path in ["/", "/one/example", "/two/", "/Two"] {
            expect_status(&run, gw, "example.com", path, 404)?;
        }
        Ok(())
    })?;
    conformance!("httproute-path-match-order.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        for (path, backend) in [
            ("/match/exact/one", 3),
            ("/match/exact", 2),
            ("/match", 1),
            ("/match/prefix/one/any", 2),
            ("/match/prefix/any", 1),
            ("/match/any", 3),
        ] {
            expect_backend(&run, gw, "example.com", path, &[], &v(backend), INFRA)?;
        }
        Ok(())
    })
}

#[test]
fn http_header_matching() -> Result<()> {
    let v = |n| format!("infra-backend-v{n}");
    conformance!("httproute-header-matching.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        for (headers, backend) in [
            (vec![("Version", "one")], 1),
            (vec![("Version", "two")], 2),
            (vec![("Version", "two"), ("Color", "orange")], 1),
            (vec![("Version", "two"), ("Color", "blue")], 2),
            (vec![("Color", "blue")], 1),
            (vec![("Color", "green")], 1),
            (vec![("Color", "red")], 2),
            (vec![("Color", "yellow")], 2),
        ] {
            expect_backend(&run, gw, "example.com", "/", &headers, &v(backend), INFRA)?;
        }
        for headers in [
            vec![("Color", "orange")],
            vec![("Some-Other-Header", "one")],
            vec![("Color", "purple")],
        ] {
            eventually("header 404", || {
                let r = request(&run, gw, "example.com", "/", &headers)?;
                ensure!(r.status == 404, "status {}", r.status);
                Ok(())
            })?;
        }
        Ok(())
    })
}

#[test]
fn http_request_header_modifier() -> Result<()> {
    conformance!("httproute-request-header-modifier.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        let seen =
            |path: &str, headers: &[(&str, &str)]| -> Result<BTreeMap<String, Vec<String>>> {
                let r = request(&run, gw, "example.com", path, headers)?;
                ensure!(r.status == 200, "status {}", r.status);
                Ok(r.echo()?.headers)
            };
        eventually("set", || {
            let h = seen("/set", &[("Some-Other-Header", "val")])?;
            ensure!(
                h.get("X-Header-Set") == Some(&vec!["set-overwrites-values".to_string()]),
                "{h:?}"
            );
            Ok(())
        })?;
        eventually("set overwrites", || {
            let h = seen("/set", &[("X-Header-Set", "some-other-value")])?;
            ensure!(
                h.get("X-Header-Set") == Some(&vec!["set-overwrites-values".to_string()]),
                "{h:?}"
            );
            Ok(())
        })?;
        eventually("add", || {
            let h = seen("/add", &[("X-Header-Add", "some-other-value")])?;
            let values = h.get("X-Header-Add").cloned().unwrap_or_default().join(",");
            ensure!(values == "some-other-value,add-appends-values", "{h:?}");
            Ok(())
        })?;
        eventually("remove", || {
            let h = seen("/remove", &[("X-Header-Remove", "val")])?;
            ensure!(!h.contains_key("X-Header-Remove"), "{h:?}");
            Ok(())
        })
    })
}

#[test]
fn http_redirects() -> Result<()> {
    conformance!("httproute-redirect-host-and-status.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        for (path, status) in [("/hostname-redirect", 302), ("/host-and-status", 301)] {
            eventually(path, || {
                let r = request(&run, gw, "example.com", path, &[])?;
                ensure!(r.status == status, "status {}", r.status);
                let location = r.header("location").context("no Location")?;
                ensure!(
                    location.starts_with("http://example.org"),
                    "Location {location}"
                );
                Ok(())
            })?;
        }
        Ok(())
    })
}

#[test]
fn http_service_types() -> Result<()> {
    let plan = Plan::load_with_backends("httproute-service-types.yaml", &["infra-backend-v1"])?;
    let topo = plan.topology()?;
    let mut run = plan.start(&topo)?;
    // As the conformance test does: fill the manual EndpointSlices with infra-backend-v1's pods.
    let pods: Vec<String> = run
        .pods()
        .iter()
        .filter(|p| p.deployment == "infra-backend-v1")
        .map(|p| p.addr.to_string())
        .collect();
    ensure!(!pods.is_empty(), "no infra-backend-v1 pod");
    for service in ["manual-endpointslices", "headless-manual-endpointslices"] {
        let endpoints: String = pods
            .iter()
            .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n"))
            .collect();
        run.apply(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-ip4\n  namespace: {INFRA}\n  \
             labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: first-port, port: 3000, protocol: TCP}}]\nendpoints:\n{endpoints}"
        ))?;
    }
    accepted(&run, INFRA, "service-types")?;
    let gw = run.target(INFRA, "same-namespace", 80);
    for path in [
        "/headless",
        "/manual-endpointslices",
        "/headless-manual-endpointslices",
    ] {
        expect_backend(
            &run,
            gw,
            "example.com",
            path,
            &[],
            "infra-backend-v1",
            INFRA,
        )?;
    }
    Ok(())
}

#[test]
fn http_weights_70_30_0() -> Result<()> {
    conformance!("httproute-weight.yaml", |run| {
        accepted(&run, INFRA, "weighted-backends")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_status(&run, gw, "example.com", "/", 200)?;
        let handles: Vec<_> = (0..10)
            .map(|_| {
                run.topology()
                    .client()
                    .spawn_thread(move || -> Result<Vec<String>> {
                        (0..50)
                            .map(|_| {
                                let r = clients::http_request(gw, "GET", "example.com", "/", &[])?;
                                ensure!(r.status == 200, "status {}", r.status);
                                Ok(r.echo()?.pod)
                            })
                            .collect()
                    })
            })
            .collect::<Result<_>>()?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for h in handles {
            for pod in h.join().expect("client thread")? {
                *seen.entry(deployment_of(&pod).to_string()).or_default() += 1;
            }
        }
        let total: usize = seen.values().sum();
        ensure!(total == 500, "{seen:?}");
        for (d, expected) in [("infra-backend-v1", 0.7), ("infra-backend-v2", 0.3)] {
            let share = *seen.get(d).unwrap_or(&0) as f64 / total as f64;
            ensure!((share - expected).abs() <= 0.05, "{d}: {share} ({seen:?})");
        }
        ensure!(
            !seen.contains_key("infra-backend-v3"),
            "weight 0 got traffic: {seen:?}"
        );
        Ok(())
    })
}

#[test]
fn http_no_backend_refs_and_invalid_backends_500() -> Result<()> {
    conformance!("httproute-omitted-backendrefs.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(
            &run,
            gw,
            "example.com",
            "/forward",
            &[],
            "infra-backend-v1",
            INFRA,
        )?;
        expect_status(&run, gw, "example.com", "/omitted-no-forward", 500)?;
        expect_status(&run, gw, "example.com", "/empty-no-forward", 500)
    })?;
    conformance!("httproute-invalid-nonexistent-backendref.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_status(&run, gw, "example.com", "/", 500)
    })
}

#[test]
fn http_reference_grant_and_deletion() -> Result<()> {
    conformance!("httproute-reference-grant.yaml", |run| {
        accepted(&run, INFRA, "reference-grant")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "web-backend", WEB)?;
        run.delete("ReferenceGrant", WEB, "reference-grant")?;
        run.wait_route_condition(
            "HTTPRoute",
            INFRA,
            "reference-grant",
            "ResolvedRefs",
            "RefNotPermitted",
            Duration::from_secs(30),
        )?;
        expect_status(&run, gw, "example.com", "/", 500)
    })
}

/// Under a steady request load, 100 route changes (a second route for changing.example.com added and removed)
/// give only 200s: from the stable catch-all route, and for changing.example.com from the changing route while
/// it exists (its RequestHeaderModifier marks the request) or from the catch-all while it does not. No 5xx, no
/// 404, no connection errors; every change is seen by a request before the next one is made.
#[test]
fn http_100_route_changes_under_load() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        // Each change is applied (a new configuration generation) and seen by a fresh request before the next
        // one is made, so these are 100 distinct route-table swaps under load, not a few merged ones.
        let first = run.gateway().metric("gateway_config_generation")?;
        let total = route_changes_under_load(&mut run, gw, 100, 1)?;
        let swaps = run.gateway().metric("gateway_config_generation")? - first;
        ensure!(
            swaps >= 100,
            "{swaps} configuration generations for 100 changes"
        );
        for k in [
            "example.com 200 catch-all",
            "changing.example.com 200 changing",
            "changing.example.com 200 catch-all",
        ] {
            ensure!(total.get(k).copied().unwrap_or(0) > 50, "{k}: {total:?}");
        }
        let metrics = run.gateway().admin_get("/metrics")?.1;
        ensure!(
            metrics.contains("gateway_http_requests_total"),
            "no HTTP metrics"
        );
        Ok(())
    })
}

/// curl (HTTP/1.1 and h2c prior knowledge) and, when installed, h2load (h2c, many streams) against the
/// HTTPRouteSimpleSameNamespace gateway: every answer is a 200.
#[test]
fn http_curl_and_h2load_clients() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        let url = format!("http://{gw}/curl");
        for flag in ["--http1.1", "--http2-prior-knowledge"] {
            let url = url.clone();
            let out = run.topology().client().run(move || {
                std::process::Command::new("curl")
                    .args([
                        "-sS",
                        flag,
                        "-H",
                        "Host: example.com",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{http_version}",
                        &url,
                    ])
                    .output()
            })?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            ensure!(
                text.starts_with("200 "),
                "curl {flag}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // h2load comes with `cargo xtask setup` (Debian nghttp2-client); without it this test fails, never skips.
        ensure!(
            std::path::Path::new("/usr/bin/h2load").exists(),
            "h2load is missing: run `cargo xtask setup` (Debian package nghttp2-client)"
        );
        {
            let out = run.topology().client().run(move || {
                std::process::Command::new("h2load")
                    .args([
                        "-n",
                        "500",
                        "-c",
                        "4",
                        "-m",
                        "10",
                        "-H",
                        "Host: example.com",
                        &url,
                    ])
                    .output()
            })?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            ensure!(
                text.contains("500 succeeded") && text.contains("status codes: 500 2xx"),
                "h2load: {text}"
            );
        }
        Ok(())
    })
}
