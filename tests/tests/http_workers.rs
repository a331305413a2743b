//! The HTTP proxy's thread-per-core workers, end to end: `--http-workers N` starts N worker threads, the
//! kernel spreads connections over their `SO_REUSEPORT` sockets and each worker serves its own (observed through
//! `gateway_http_worker_*{worker}` and the threads' names), route changes reach every worker before they are
//! reported applied and never fail a request, and SIGTERM drains in-flight requests on every worker.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    clients, conformance,
    conformance::ConformanceRun,
    http_checks::{expect_backend, route_changes_under_load},
};

const INFRA: &str = "gateway-conformance-infra";

/// `gateway_http_worker_<name>{worker="<index>"}` of every worker.
fn per_worker(run: &ConformanceRun<'_>, name: &str, workers: usize) -> Result<Vec<u64>> {
    let (_, metrics) = run.gateway().admin_get("/metrics")?;
    (0..workers)
        .map(|w| {
            let prefix = format!("gateway_http_worker_{name}{{worker=\"{w}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .with_context(|| format!("no {prefix}in /metrics"))?
                .trim()
                .parse::<f64>()
                .map(|v| v as u64)
                .context("metric value")
        })
        .collect()
}

/// Names of the gateway process's HTTP worker threads (`/proc/<pid>/task/*/comm`), sorted.
fn worker_threads(run: &mut ConformanceRun<'_>) -> Result<Vec<String>> {
    let pid = run
        .gateway_mut()
        .pid()
        .context("the gateway is not running")?;
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.starts_with("http-worker-") {
            names.push(comm.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// `--http-workers 3`: three named worker threads, and 60 connections spread over all of them (each worker's
/// own request counter rises), every request answered by the backend.
#[test]
fn http_workers_flag_and_connections_served_on_every_worker() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", args: ["--http-workers", "3"], |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        ensure!(
            run.gateway().metric("gateway_http_workers")? == 3,
            "gateway_http_workers is not 3"
        );
        let threads = worker_threads(&mut run)?;
        ensure!(
            threads == ["http-worker-0", "http-worker-1", "http-worker-2"],
            "worker threads: {threads:?}"
        );
        let before = per_worker(&run, "requests_total", 3)?;
        // Each request on a connection of its own: the kernel picks a worker's socket per connection (by the
        // 4-tuple's hash), so 60 connections miss one of 3 workers with probability ~1e-10.
        let statuses = run.topology().client().run(move || {
            (0..60)
                .map(|_| {
                    clients::http_request(gw, "GET", "example.com", "/spread", &[])
                        .map(|r| r.status)
                })
                .collect::<Result<Vec<u16>>>()
        })?;
        ensure!(statuses.iter().all(|s| *s == 200), "statuses: {statuses:?}");
        let after = per_worker(&run, "requests_total", 3)?;
        let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        ensure!(
            served.iter().all(|n| *n > 0),
            "requests per worker {served:?}: a worker served none"
        );
        ensure!(
            served.iter().sum::<u64>() == 60,
            "requests per worker {served:?} do not add up to the 60 sent"
        );
        // `request <method> <host> <uri> <proto>` lines of the backend's log.
        let seen = run
            .requests_seen("infra-backend-v1")
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some("/spread"))
            .count();
        ensure!(seen == 60, "the backend saw {seen} of 60 requests");
        Ok(())
    })
}

/// With 4 workers and clients on fresh connections (so on every worker), 20 route changes: after each is
/// reported applied, 8 fresh requests all see it (every worker swapped its table first), and no request ever
/// fails or gets anything but a 200 from the route that should answer it.
#[test]
fn http_route_changes_reach_every_worker_without_failing_requests() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", args: ["--http-workers", "4"], |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        let before = per_worker(&run, "requests_total", 4)?;
        route_changes_under_load(&mut run, gw, 20, 8)?;
        let after = per_worker(&run, "requests_total", 4)?;
        let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        ensure!(
            served.iter().all(|n| *n > 0),
            "requests per worker during the changes {served:?}: a worker served none"
        );
        Ok(())
    })
}

/// SIGTERM while every one of 2 workers holds requests in flight (slow answers on connections of their own,
/// opened until each worker's open-connection gauge shows one): every request completes with its 200, then the
/// agent exits cleanly.
#[test]
fn http_sigterm_drains_in_flight_requests_on_every_worker() -> Result<()> {
    conformance!("httproute-simple-same-namespace.yaml", args: ["--http-workers", "2"], |run| {
        let gw = run.target(INFRA, "same-namespace", 80);
        expect_backend(&run, gw, "example.com", "/", &[], "infra-backend-v1", INFRA)?;
        let mut in_flight = Vec::new();
        let started = Instant::now();
        loop {
            // Slow enough to outlast opening up to 16 of them on a loaded machine (CI runs every suite at
            // once on 2 cores), short enough to finish within the agent's 10 s drain; read with a timeout
            // well past the delay.
            in_flight.push(run.topology().client().spawn_thread(move || {
                clients::http_request_within(
                    gw,
                    "GET",
                    "example.com",
                    "/?delay=6s",
                    &[],
                    Duration::from_secs(20),
                )
            })?);
            // Wait until the gateway counts this connection open.
            let deadline = Instant::now() + Duration::from_secs(2);
            let open = loop {
                let open = per_worker(&run, "connections", 2)?;
                if open.iter().sum::<u64>() as usize >= in_flight.len() || Instant::now() > deadline
                {
                    break open;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if open.iter().all(|n| *n > 0) {
                eprintln!(
                    "{} requests in flight after {:?}, per worker {open:?}",
                    in_flight.len(),
                    started.elapsed()
                );
                break;
            }
            ensure!(
                in_flight.len() < 16,
                "16 connections and still a worker without one: {open:?}"
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(4),
            "opening the connections took {:?}: the first requests may have finished before SIGTERM",
            started.elapsed()
        );
        let status = run
            .gateway_mut()
            .stop(Duration::from_secs(10))?
            .context("the gateway was not running")?;
        for (i, request) in in_flight.into_iter().enumerate() {
            let answer = request.join().expect("client thread")?;
            ensure!(
                answer.status == 200,
                "in-flight request {i} got {}",
                answer.status
            );
        }
        ensure!(status.success(), "gateway exited with {status}");
        Ok(())
    })
}
