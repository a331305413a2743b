//! What operators rely on in the userspace HTTP proxy, end to end: 503 for a valid backend without ready
//! endpoints, request metrics (per listener, route, backend, status class, latency histogram) on the admin
//! port, JSON access logs, SIGTERM draining an in-flight request before the agent exits, and the client header
//! timeout closing silent, half-sent and idle connections.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    clients::{self, HttpResponse, KeepAlive},
    conformance,
    http_checks::{expect_backend, expect_status, request},
};

const INFRA: &str = "gateway-conformance-infra";

/// The value of the Prometheus series whose line starts with `name{` and contains every label of `labels`.
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn http_503_metrics_json_access_log_and_sigterm_drain() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", args: ["--log-format", "json"], |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        // A Service whose selector matches no pod has no EndpointSlice: valid backend, no ready endpoint → 503.
        run.apply(
            "apiVersion: v1\nkind: Service\nmetadata: {name: no-endpoints, namespace: gateway-conformance-infra}\n\
             spec:\n  selector: {app: nothing-runs-this}\n  ports: [{port: 8080, targetPort: 3000, protocol: TCP}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: empty, namespace: gateway-conformance-infra}\n\
             spec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [empty.example]\n  \
             rules:\n  - backendRefs: [{name: no-endpoints, port: 8080}]\n",
        )?;
        expect_status(&run, gw, "empty.example", "/", 503)?;
        for _ in 0..5 {
            let r = request(&run, gw, "example.com", "/counted", &[])?;
            ensure!(r.status == 200, "status {}", r.status);
        }

        // Metrics: requests by listener/route/backend/class, and the latency histogram by route/class.
        let (_, metrics) = run.gateway().admin_get("/metrics")?;
        let route = "gateway-conformance-infra/gateway-conformance-infra-test";
        let ok = series(
            &metrics,
            "gateway_http_requests_total",
            &[
                ("listener", "gateway-conformance-infra/same-namespace/http"),
                ("route", route),
                ("backend", "gateway-conformance-infra/infra-backend-v1:8080"),
                ("code", "2xx"),
            ],
        );
        ensure!(ok >= 8, "{ok} 2xx requests counted for the route");
        let unavailable = series(
            &metrics,
            "gateway_http_requests_total",
            &[
                ("route", "gateway-conformance-infra/empty"),
                ("backend", "gateway-conformance-infra/no-endpoints:8080"),
                ("code", "5xx"),
            ],
        );
        ensure!(
            unavailable >= 3,
            "{unavailable} 5xx counted for the empty route"
        );
        let timed = series(
            &metrics,
            "gateway_http_request_duration_seconds_count",
            &[("route", route), ("code", "2xx")],
        );
        ensure!(timed >= 8, "{timed} requests in the latency histogram");

        // JSON access log: one object per request, with what an operator greps for.
        let log = run.gateway().log();
        let entry = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "access" && v["fields"]["path"] == "/counted")
            .with_context(|| format!("no JSON access log line for /counted in:\n{log}"))?;
        let fields = &entry["fields"];
        ensure!(fields["status"] == 200, "{entry}");
        ensure!(fields["route"] == route, "{entry}");
        ensure!(
            fields["method"] == "GET" && fields["host"] == "example.com",
            "{entry}"
        );
        ensure!(
            fields["client"].as_str().is_some_and(|c| !c.is_empty()),
            "{entry}"
        );
        ensure!(fields["duration_ms"].as_f64().is_some(), "{entry}");

        // SIGTERM with a request in flight: it completes with its 200, then the agent exits cleanly.
        let slow = run.topology().client().spawn_thread(move || {
            clients::http_request(gw, "GET", "example.com", "/?delay=1500ms", &[])
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let status = run
            .gateway_mut()
            .stop(Duration::from_secs(10))?
            .context("the gateway was not running")?;
        let answer = slow.join().expect("client thread")?;
        ensure!(
            answer.status == 200,
            "in-flight request got {}",
            answer.status
        );
        ensure!(status.success(), "gateway exited with {status}");
        Ok(())
    })
}

/// With `--http-client-timeout 1`: a connection that sends nothing, one whose request head stops half way, and a
/// keep-alive connection left idle after a response are each closed about a second later; a connection whose
/// backend takes 1.5 s to answer and that then sends a request every 0.4 s for 2 s is served throughout (the
/// timeout is per request head, not per connection or response).
#[test]
fn silent_half_sent_and_idle_http_connections_are_closed_after_the_client_timeout() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", args: ["--http-client-timeout", "1"], |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        run.topology().client().run(move || -> Result<()> {
            let silent = clients::connect(gw)?;
            let closed = closed_after(silent)?;
            ensure!(within(closed), "a silent connection closed after {closed:?}");

            let mut half = clients::connect(gw)?;
            half.write_all(b"GET / HTTP/1.1\r\nHost: exam")?;
            let closed = closed_after(half)?;
            ensure!(within(closed), "a half-sent head closed after {closed:?}");

            let mut idle = KeepAlive::plain(gw)?;
            expect_ok(idle.get("example.com", "/idle"))?;
            let closed = closed_after(idle.into_inner())?;
            ensure!(within(closed), "an idle keep-alive connection closed after {closed:?}");

            let mut busy = KeepAlive::plain(gw)?;
            // A response that takes longer than the timeout: only the client's heads are timed.
            expect_ok(busy.get("example.com", "/slow?delay=1500ms")).context("a slow response")?;
            for i in 0..5 {
                expect_ok(busy.get("example.com", "/busy"))
                    .with_context(|| format!("request {i} on a busy connection"))?;
                std::thread::sleep(Duration::from_millis(400));
            }
            Ok(())
        })
    })
}

/// Whether a connection was closed about when a 1 s timeout should close it.
fn within(closed: Duration) -> bool {
    (Duration::from_millis(900)..Duration::from_secs(4)).contains(&closed)
}

/// How long until the gateway closes `s` (reads to the end; a `408` answer before the close is allowed).
fn closed_after(mut s: TcpStream) -> Result<Duration> {
    let started = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .context("the gateway did not close the connection")?;
    ensure!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "unexpected answer before the close: {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(started.elapsed())
}

fn expect_ok(response: Result<HttpResponse>) -> Result<()> {
    let status = response?.status;
    ensure!(status == 200, "status {status}");
    Ok(())
}
