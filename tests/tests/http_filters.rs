//! HTTPRoute filters, timeouts and backend protocols end to end through the userspace HTTP proxy, from the
//! official conformance manifests (HTTPRouteRewritePath, HTTPRouteRewriteHost, HTTPRouteResponseHeaderModifier,
//! HTTPRouteRequestMirror, HTTPRouteRequestTimeout, HTTPRouteBackendRequestTimeout, HTTPRouteBackendProtocolH2C):
//! what the backend saw is read from the echo's JSON, what the client saw from the response, and what a mirror
//! received from the mirror backend's request log.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use gateway_tests::{
    clients::HttpResponse,
    conformance,
    conformance::ConformanceRun,
    http_checks::{accepted, eventually, expect_backend, expect_echo, expect_status, request},
};

const INFRA: &str = "gateway-conformance-infra";

/// Every value of response header `name`, in order.
fn values(r: &HttpResponse, name: &str) -> Vec<String> {
    let name = name.to_ascii_lowercase();
    r.headers
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// HTTPRouteRewritePath: ReplacePrefixMatch and ReplaceFullPath, alone and with a header modifier; the query
/// is kept.
#[test]
fn http_url_rewrite_path() -> Result<()> {
    conformance!("httproute-rewrite-path.yaml", |run| {
        accepted(&run, INFRA, "rewrite-path")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        for (sent, seen) in [
            ("/prefix/one/two", "/one/two"),
            ("/prefix/one/two?a=b&c=d", "/one/two?a=b&c=d"),
            ("/full/one/two", "/one"),
            ("/full/rewrite-path-and-modify-headers/test", "/test"),
            ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
            ("/strip-prefix/three", "/three"),
            ("/strip-prefix", "/"),
        ] {
            expect_echo(&run, gw, "example.com", sent, &[], |e| {
                ensure!(
                    e.path == seen,
                    "{sent}: backend saw {}, want {seen}",
                    e.path
                );
                ensure!(e.pod.starts_with("infra-backend-v1-"), "pod {}", e.pod);
                Ok(())
            })?;
        }
        expect_echo(
            &run,
            gw,
            "example.com",
            "/full/rewrite-path-and-modify-headers/test",
            &[("X-Header-Remove", "x"), ("X-Header-Add-Append", "a")],
            |e| {
                let h = &e.headers;
                ensure!(
                    h.get("X-Header-Set") == Some(&vec!["set-overwrites-values".into()]),
                    "{h:?}"
                );
                ensure!(!h.contains_key("X-Header-Remove"), "{h:?}");
                ensure!(
                    h.get("X-Header-Add-Append") == Some(&vec!["a".into(), "header-val-2".into()]),
                    "{h:?}"
                );
                Ok(())
            },
        )
    })
}

/// HTTPRouteRewriteHost: the Host header the backend sees is the rewritten one; the path is kept.
#[test]
fn http_url_rewrite_host() -> Result<()> {
    conformance!("httproute-rewrite-host.yaml", |run| {
        accepted(&run, INFRA, "rewrite-host")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        for (path, backend, host) in [
            ("/one", "infra-backend-v1", "one.example.org"),
            ("/two", "infra-backend-v2", "example.org"),
            (
                "/rewrite-host-and-modify-headers",
                "infra-backend-v2",
                "test.example.org",
            ),
        ] {
            expect_echo(&run, gw, "rewrite.example", path, &[], |e| {
                ensure!(e.host == host, "{path}: backend saw Host {}", e.host);
                ensure!(e.path == path, "{path}: backend saw path {}", e.path);
                ensure!(e.pod.starts_with(&format!("{backend}-")), "pod {}", e.pod);
                Ok(())
            })?;
        }
        Ok(())
    })
}

/// HTTPRouteResponseHeaderModifier: set overwrites what the backend sent, add appends to it, remove drops it.
#[test]
fn http_response_header_modifier() -> Result<()> {
    conformance!("httproute-response-header-modifier.yaml", |run| {
        accepted(&run, INFRA, "response-header-modifier")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        // The echo adds the response headers listed in X-Echo-Set-Header.
        let answer = |path: &str, backend_sets: &str| -> Result<HttpResponse> {
            let r = request(
                &run,
                gw,
                "example.com",
                path,
                &[("X-Echo-Set-Header", backend_sets)],
            )?;
            ensure!(r.status == 200, "{path}: status {}", r.status);
            Ok(r)
        };
        eventually("set", || {
            let r = answer("/set", "X-Header-Set:backend-value")?;
            ensure!(
                values(&r, "X-Header-Set") == ["set-overwrites-values"],
                "{:?}",
                r.headers
            );
            Ok(())
        })?;
        eventually("add", || {
            let r = answer("/add", "X-Header-Add:backend-value")?;
            ensure!(
                values(&r, "X-Header-Add") == ["backend-value", "add-appends-values"],
                "{:?}",
                r.headers
            );
            Ok(())
        })?;
        eventually("remove", || {
            let r = answer("/remove", "X-Header-Remove:backend-value")?;
            ensure!(values(&r, "X-Header-Remove").is_empty(), "{:?}", r.headers);
            Ok(())
        })?;
        eventually("multiple", || {
            let r = answer(
                "/multiple",
                "X-Header-Set-1:b1,X-Header-Remove-1:b2,X-Header-Remove-2:b3,X-Header-Kept:b4",
            )?;
            ensure!(
                values(&r, "X-Header-Set-1") == ["header-set-1"],
                "{:?}",
                r.headers
            );
            ensure!(
                values(&r, "X-Header-Set-2") == ["header-set-2"],
                "{:?}",
                r.headers
            );
            for (name, value) in [
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("X-Header-Kept", "b4"),
            ] {
                ensure!(values(&r, name) == [value], "{name}: {:?}", r.headers);
            }
            for name in ["X-Header-Remove-1", "X-Header-Remove-2"] {
                ensure!(values(&r, name).is_empty(), "{name}: {:?}", r.headers);
            }
            Ok(())
        })
    })
}

/// HTTPRouteRequestMirror: the client gets the primary's answer only, and the mirror backend receives a copy of
/// every request (read from its request log), with the request header modifier applied before mirroring.
#[test]
fn http_request_mirror() -> Result<()> {
    conformance!("httproute-request-mirror.yaml", |run| {
        accepted(&run, INFRA, "request-mirror")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        for path in ["/mirror", "/mirror-and-modify-headers"] {
            // A unique query, so the log lines of this check are told apart from the others.
            let path = format!("{path}?check={}", gateway_tests::netns::unique_id());
            expect_backend(
                &run,
                gw,
                "example.com",
                &path,
                &[],
                "infra-backend-v1",
                INFRA,
            )?;
            let line = |l: &&String| l.contains(&format!(" example.com {path} "));
            let sent = run
                .requests_seen("infra-backend-v1")
                .iter()
                .filter(line)
                .count();
            ensure!(sent >= 3, "primary saw {sent} requests for {path}");
            eventually(&format!("mirror of {path}"), || {
                let mirrored = run
                    .requests_seen("infra-backend-v2")
                    .iter()
                    .filter(line)
                    .count();
                ensure!(
                    mirrored == sent,
                    "the mirror got {mirrored} of {sent} requests for {path}"
                );
                Ok(())
            })?;
        }
        Ok(())
    })
}

/// `GET path` from the client namespace, timed.
fn timed(run: &ConformanceRun, gw: SocketAddr, path: &str) -> Result<(u16, Duration)> {
    let start = Instant::now();
    let r = request(run, gw, "example.com", path, &[])?;
    Ok((r.status, start.elapsed()))
}

/// One rule with a 500 ms timeout at `limited` and one with the timeout disabled ("0s") at `unlimited`: a
/// backend slower than the timeout gives 504 once the timeout has passed (not before, and long before the
/// backend would answer); a faster one, or the rule without timeout, answers 200.
fn check_timeouts(run: &ConformanceRun, limited: &str, unlimited: &str) -> Result<()> {
    let gw = run.target(INFRA, "same-namespace", 80);
    expect_status(run, gw, "example.com", limited, 200)?;
    for _ in 0..3 {
        let (status, took) = timed(run, gw, &format!("{limited}?delay=3s"))?;
        ensure!(status == 504, "{limited} with a 3 s backend: {status}");
        ensure!(
            took >= Duration::from_millis(500),
            "504 after {took:?}, before the 500 ms timeout"
        );
        ensure!(
            took < Duration::from_millis(2500),
            "504 after {took:?}: the timeout did not cut the request"
        );
        let (status, took) = timed(run, gw, &format!("{limited}?delay=100ms"))?;
        ensure!(
            status == 200,
            "{limited} with a 100 ms backend: {status} after {took:?}"
        );
    }
    let (status, took) = timed(run, gw, &format!("{unlimited}?delay=1s"))?;
    ensure!(
        status == 200,
        "{unlimited} (timeout 0s = none) with a 1 s backend: {status}"
    );
    ensure!(took >= Duration::from_secs(1), "answered after {took:?}");
    Ok(())
}

/// HTTPRouteRequestTimeout and HTTPRouteBackendRequestTimeout.
#[test]
fn http_request_and_backend_timeouts() -> Result<()> {
    conformance!("httproute-timeout-request.yaml", |run| {
        accepted(&run, INFRA, "request-timeout")?;
        check_timeouts(&run, "/request-timeout", "/disable-request-timeout")
    })?;
    conformance!("httproute-timeout-backend-request.yaml", |run| {
        accepted(&run, INFRA, "backend-request-timeout")?;
        check_timeouts(&run, "/backend-timeout", "/disable-backend-timeout")
    })
}

/// HTTPRouteBackendProtocolH2C: a Service port with `appProtocol: kubernetes.io/h2c` is spoken to with HTTP/2
/// prior knowledge (the echo reports the protocol it was spoken to with; its h2c port also accepts HTTP/1.1, so
/// HTTP/1.1 there would show); the same backend's plain port and its `kubernetes.io/ws` port get HTTP/1.1.
#[test]
fn http_backend_protocol_by_app_protocol() -> Result<()> {
    conformance!("httproute-backend-protocol-h2c.yaml", |run| {
        accepted(&run, INFRA, "backend-protocol-h2c")?;
        let gw = run.target(INFRA, "same-namespace", 80);
        fn spoken(run: &ConformanceRun, gw: SocketAddr, host: &str, proto: &str) -> Result<()> {
            expect_echo(run, gw, host, "/", &[], |e| {
                ensure!(e.pod.starts_with("infra-backend-v1-"), "pod {}", e.pod);
                ensure!(
                    e.proto == proto,
                    "backend spoken to with {}, want {proto}",
                    e.proto
                );
                Ok(())
            })
        }
        spoken(&run, gw, "example.com", "HTTP/2.0")?;
        // The same backend's plain port (8080) and its `kubernetes.io/ws` port (8082), by hostname.
        let route = |name: &str, port: u16| {
            format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\n\
                 spec:\n  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{name}.example]\n  \
                 rules:\n  - backendRefs: [{{name: infra-backend-v1, port: {port}}}]\n"
            )
        };
        run.apply(&format!("{}{}", route("plain", 8080), route("ws", 8082)))?;
        spoken(&run, gw, "plain.example", "HTTP/1.1")?;
        spoken(&run, gw, "ws.example", "HTTP/1.1")?;
        // The WebSocket port carries an HTTP/1.1 upgrade end to end: 101, then bytes both ways through the tunnel.
        let echoed = run.topology().client().run(move || -> Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&gw, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(
                b"GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                ensure!(s.read(&mut byte)? == 1, "closed in the 101 head: {head:?}");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            ensure!(head.starts_with("http/1.1 101"), "{head}");
            ensure!(head.contains("upgrade: websocket"), "{head}");
            let message = b"through the tunnel and back\n";
            s.write_all(message)?;
            let mut back = vec![0u8; message.len()];
            s.read_exact(&mut back)?;
            Ok(String::from_utf8_lossy(&back).into_owned())
        })?;
        ensure!(echoed == "through the tunnel and back\n", "{echoed:?}");
        spoken(&run, gw, "example.com", "HTTP/2.0")
    })
}
