//! HTTP checks the way the conformance suite makes them, against a [`ConformanceRun`]: a request from the client
//! namespace, retried until it gives the expected answer 3 times in a row (30 s at most), and the
//! [`conformance!`](crate::conformance!) macro that runs a conformance manifest around a test body.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use crate::{
    clients::{self, HttpResponse},
    conformance::ConformanceRun,
    echo::HttpEchoReply,
};

/// Runs a conformance manifest (`Plan::load(file)`, its topology, the gateway) around `body`, which may use `?`;
/// the gateway's log is printed when the body fails.
///
/// ```ignore
/// conformance!("httproute-simple-same-namespace.yaml", |run| { expect_status(&run, gw, "example.com", "/", 200) })
/// conformance!("httproute-simple-same-namespace.yaml", args: ["--http-workers", "4"], |run| { ... })
/// ```
#[macro_export]
macro_rules! conformance {
    ($file:expr, |$run:ident| $body:block) => {
        $crate::conformance!($file, args: [], |$run| $body)
    };
    ($file:expr, args: [$($arg:expr),* $(,)?], |$run:ident| $body:block) => {{
        let plan = $crate::conformance::Plan::load($file)?;
        let topo = plan.topology()?;
        #[allow(unused_mut)]
        let mut $run = plan.start_with_args(&topo, &[$($arg),*])?;
        // A closure, so `?` inside the body ends the body, not the test, and the log is printed on failure.
        #[allow(clippy::redundant_closure_call)]
        let result: ::anyhow::Result<()> = (|| $body)();
        if result.is_err() {
            eprintln!("gateway log:\n{}", $run.gateway().log());
        }
        result
    }};
}

/// The namespace of the conformance infrastructure (Gateways, the infra backends).
const INFRA: &str = "gateway-conformance-infra";

/// A second HTTPRoute, for `changing.example.com`, on the `same-namespace` Gateway of
/// httproute-simple-same-namespace.yaml. Its RequestHeaderModifier marks what it answers (`X-Route`), so
/// [`route_outcome`] tells it from the catch-all route; the route-change tests add and remove it.
const CHANGING_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: changing, namespace: gateway-conformance-infra}\nspec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [changing.example.com]\n  rules:\n  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Route, value: changing}]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";

/// `host status route` of one request to `gw` (run in the client namespace): `route` is `changing` (marked by
/// [`CHANGING_ROUTE`]), `catch-all` or `no-echo`; a failed request gives `host error …`.
fn route_outcome(gw: SocketAddr, host: &str) -> String {
    match clients::http_request(gw, "GET", host, "/", &[]) {
        Ok(r) => {
            let route = match r.echo() {
                Ok(e) if e.headers.contains_key("X-Route") => "changing",
                Ok(_) => "catch-all",
                Err(_) => "no-echo",
            };
            format!("{host} {} {route}", r.status)
        }
        Err(e) => format!("{host} error {e:#}"),
    }
}

/// Four client threads (two on `example.com`, two on `changing.example.com`) send requests without pause while
/// [`CHANGING_ROUTE`] is added and removed `changes` times. Each change must be applied (a new configuration
/// generation, within 5 s) and then seen by `probes` fresh requests before the next is made. Every outcome must
/// be a 200 from the route that should answer it. Returns how often each outcome was seen under load.
pub fn route_changes_under_load(
    run: &mut ConformanceRun,
    gw: SocketAddr,
    changes: usize,
    probes: usize,
) -> Result<BTreeMap<String, usize>> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            run.topology().client().spawn_thread(move || {
                let host = if i % 2 == 0 {
                    "example.com"
                } else {
                    "changing.example.com"
                };
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    *counts.entry(route_outcome(gw, host)).or_default() += 1;
                }
                counts
            })
        })
        .collect::<Result<_>>()?;
    let changed = (|| -> Result<()> {
        for i in 0..changes {
            let generation = run.gateway().metric("gateway_config_generation")?;
            let present = i % 2 == 0;
            if present {
                run.apply(CHANGING_ROUTE)?;
            } else {
                run.delete("HTTPRoute", INFRA, "changing")?;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while run.gateway().metric("gateway_config_generation")? == generation {
                ensure!(
                    Instant::now() < deadline,
                    "change {i} not applied within 5 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let expected = format!(
                "changing.example.com 200 {}",
                if present { "changing" } else { "catch-all" }
            );
            let seen = run.topology().client().run(move || {
                (0..probes)
                    .map(|_| route_outcome(gw, "changing.example.com"))
                    .collect::<Vec<_>>()
            });
            ensure!(
                seen.iter().all(|s| *s == expected),
                "change {i} reported applied, but fresh requests got {seen:?}"
            );
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for c in clients {
        for (k, v) in c.join().expect("client thread") {
            *total.entry(k).or_default() += v;
        }
    }
    eprintln!("outcomes: {total:?}");
    changed?;
    for k in total.keys() {
        let ok = k == "example.com 200 catch-all"
            || k == "changing.example.com 200 changing"
            || k == "changing.example.com 200 catch-all";
        ensure!(ok, "unexpected outcome {k:?}: {total:?}");
    }
    Ok(total)
}

/// One HTTP/1.1 request from the client namespace.
pub fn request(
    run: &ConformanceRun,
    target: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let host = host.to_string();
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    run.topology().client().run(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        clients::http_request(target, "GET", &host, &path, &h)
    })
}

/// Retries `check` until it succeeds 3 times in a row (30 s at most), like the conformance suite.
pub fn eventually(what: &str, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streak = 0;
    loop {
        match check() {
            Ok(()) => {
                streak += 1;
                if streak == 3 {
                    return Ok(());
                }
            }
            Err(e) => {
                streak = 0;
                if Instant::now() > deadline {
                    return Err(e.context(format!("{what}: not consistent within 30 s")));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// `GET host path` answers 200 with echo JSON that passes `check` (retried like [`eventually`]).
pub fn expect_echo(
    run: &ConformanceRun,
    target: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    check: impl Fn(&HttpEchoReply) -> Result<()>,
) -> Result<()> {
    eventually(&format!("{host}{path} {headers:?}"), || {
        let r = request(run, target, host, path, headers)?;
        ensure!(r.status == 200, "status {} ({})", r.status, r.text());
        check(&r.echo()?)
    })
}

/// `GET host path` answers 200 from a pod of `backend` (in `namespace`) that saw `path`.
pub fn expect_backend(
    run: &ConformanceRun,
    target: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    backend: &str,
    namespace: &str,
) -> Result<()> {
    expect_echo(run, target, host, path, headers, |echo| {
        ensure!(
            echo.pod.starts_with(&format!("{backend}-")),
            "answered by {}, expected {backend}",
            echo.pod
        );
        ensure!(echo.namespace == namespace, "namespace {}", echo.namespace);
        ensure!(echo.path == path, "backend saw path {}", echo.path);
        Ok(())
    })
}

/// `GET host path` answers `status`.
pub fn expect_status(
    run: &ConformanceRun,
    target: SocketAddr,
    host: &str,
    path: &str,
    status: u16,
) -> Result<()> {
    eventually(&format!("{host}{path} -> {status}"), || {
        let r = request(run, target, host, path, &[])?;
        ensure!(r.status == status, "status {} ({})", r.status, r.text());
        Ok(())
    })
}

/// The HTTPRoute `namespace/name` is Accepted and its refs resolved (30 s at most).
pub fn accepted(run: &ConformanceRun, namespace: &str, name: &str) -> Result<()> {
    let t = Duration::from_secs(30);
    run.wait_route_condition("HTTPRoute", namespace, name, "Accepted", "Accepted", t)?;
    run.wait_route_condition(
        "HTTPRoute",
        namespace,
        name,
        "ResolvedRefs",
        "ResolvedRefs",
        t,
    )
}
