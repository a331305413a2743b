//! `cargo xtask bench http`: small HTTP responses through this gateway's HTTP proxy, NGINX and Envoy, each
//! configured with the same route (any host, prefix `/`, to one backend), on the l4 topology. The backend is
//! NGINX serving a static `BODY_SIZE`-byte body (HTTP/1.1 on 8080, h2c on 8081); the clients are wrk and
//! h2load in the client namespace. Per run and data plane:
//!
//! - `h1`: wrk, `WRK_CONNECTIONS` keep-alive connections;
//! - `h1close`: wrk with `Connection: close` (a new connection per request);
//! - `h2`: h2load over h2c (prior knowledge), `H2_CONNECTIONS` connections × `H2_STREAMS` concurrent streams.
//!
//! Plain forwarding (the client talks to the backend NGINX itself) is the baseline and shows what the backend
//! and the network path give without a proxy.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use indicatif::ProgressBar;

use super::{
    cpu,
    peers::{self, nginx::Nginx, Peer, PeerKind, Proto},
    report::{self, m, Better, Chart, Metric},
    tools, topology, BenchArgs, RunValues, Session,
};

/// Ports of every proxy (on the Gateway address): HTTP/1.1 and h2c (one port each: NGINX 1.22 cannot serve
/// both on one cleartext port).
const PORT: u16 = 80;
const H2C_PORT: u16 = 81;
/// The backend NGINX's ports.
const BACKEND_PORT: u16 = 8080;
const BACKEND_H2C_PORT: u16 = 8081;
/// Size of the static response body.
const BODY_SIZE: usize = 128;
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
const H2_CONNECTIONS: u32 = 8;
const H2_STREAMS: u32 = 8;

const PEERS: [PeerKind; 4] = [
    PeerKind::Plain,
    PeerKind::Gateway,
    PeerKind::Nginx,
    PeerKind::Envoy,
];

const METRICS: &[Metric] = &[
    m(
        "h1_rps",
        "HTTP/1.1 keep-alive: requests per second (wrk, 32 connections)",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "h1_p50_us",
        "HTTP/1.1 keep-alive: latency p50",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "h1_p99_us",
        "HTTP/1.1 keep-alive: latency p99",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "h1close_rps",
        "HTTP/1.1 new connection per request: requests per second",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "h1close_p50_us",
        "HTTP/1.1 new connection per request: latency p50",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "h1close_p99_us",
        "HTTP/1.1 new connection per request: latency p99",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "h2_rps",
        "HTTP/2 (h2c): requests per second (h2load, 8 connections × 8 streams)",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "h2_p50_us",
        "HTTP/2 (h2c): latency p50",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "h2_p99_us",
        "HTTP/2 (h2c): latency p99",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "errors",
        "Errors over all phases (socket errors, non-2xx, failed streams)",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "cpu_h1_core",
        "HTTP/1.1 keep-alive: data-plane CPU busy (the proxy and its namespace's receive work)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "h1_rps_per_core",
        "HTTP/1.1 keep-alive: requests per data-plane core-second",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "cpu_h1close_core",
        "HTTP/1.1 new connection per request: data-plane CPU busy (the proxy and its namespace's receive work)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "h1close_rps_per_core",
        "HTTP/1.1 new connection per request: requests per data-plane core-second",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "cpu_h2_core",
        "HTTP/2 (h2c): data-plane CPU busy (the proxy and its namespace's receive work)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "h2_rps_per_core",
        "HTTP/2 (h2c): requests per data-plane core-second",
        "req/s",
        Better::Higher,
        0,
    ),
    m(
        "cpu_h1_machine",
        "Machine CPU during HTTP/1.1 keep-alive",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_h1_dataplane",
        "Proxy processes' CPU during HTTP/1.1 keep-alive",
        "cores",
        Better::Neither,
        2,
    ),
];

pub const SUITE: report::Suite = report::Suite {
    name: "http",
    title: "HTTP benchmark: this gateway's HTTP proxy vs NGINX and Envoy (plain forwarding as the baseline)",
    metrics: METRICS,
    relative: (
        &[
            "h1_rps",
            "h1_p99_us",
            "h1close_rps",
            "h1close_p99_us",
            "h2_rps",
            "h2_p99_us",
        ],
        &[
            "h1 req/s",
            "1/h1 p99",
            "h1 close req/s",
            "1/h1 close p99",
            "h2 req/s",
            "1/h2 p99",
        ],
    ),
    charts: &[
        Chart {
            file: "requests.svg",
            title: "Requests per second (small responses)",
            unit: "req/s",
            labels: &["HTTP/1.1 keep-alive", "HTTP/1.1 conn per request", "HTTP/2 h2c"],
            keys: &["h1_rps", "h1close_rps", "h2_rps"],
        },
        Chart {
            file: "latency.svg",
            title: "Latency under that load (lower is better)",
            unit: "µs",
            labels: &["h1 p50", "h1 p99", "h1 close p50", "h1 close p99", "h2 p50", "h2 p99"],
            keys: &[
                "h1_p50_us",
                "h1_p99_us",
                "h1close_p50_us",
                "h1close_p99_us",
                "h2_p50_us",
                "h2_p99_us",
            ],
        },
    ],
    spread: &["h1_rps", "h1close_rps", "h2_rps", "h1_p99_us", "h2_p99_us"],
    findings: &[
        "h1_rps",
        "h1_rps_per_core",
        "h1close_rps_per_core",
        "h2_rps_per_core",
        "h1_p50_us",
        "h1_p99_us",
        "h1close_rps",
        "h1close_p99_us",
        "h2_rps",
        "h2_p99_us",
    ],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    H1,
    H1Close,
    H2,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::H1, Phase::H1Close, Phase::H2];

    fn name(self) -> &'static str {
        match self {
            Phase::H1 => "h1",
            Phase::H1Close => "h1close",
            Phase::H2 => "h2",
        }
    }
}

/// The topology plus the backend NGINX.
struct HttpBench<'a> {
    bt: &'a topology::BenchTopology,
    _backend: Nginx<'a>,
}

/// wrk in `ns` against `url`; `close` adds `Connection: close`.
fn wrk(
    ns: &gateway_tests::Netns,
    url: &str,
    secs: u64,
    close: bool,
    save: &Path,
) -> anyhow::Result<tools::HttpResult> {
    let mut argv: Vec<String> = [
        "wrk",
        "--latency",
        "-t",
        &WRK_THREADS.to_string(),
        "-c",
        &WRK_CONNECTIONS.to_string(),
        "-d",
        &format!("{secs}s"),
        "--timeout",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    if close {
        argv.extend(["-H".into(), "Connection: close".into()]);
    }
    argv.push(url.to_string());
    let out = tools::run_in(ns, &argv, Duration::from_secs(secs + 30))?;
    std::fs::write(save, &out.stdout)?;
    tools::parse_wrk(&out.stdout)
        .with_context(|| format!("wrk's output:\n{}\n{}", out.stdout, out.stderr))
}

/// h2load (h2c prior knowledge for `http://`) in `ns` against `url`.
fn h2load(
    ns: &gateway_tests::Netns,
    url: &str,
    secs: u64,
    save: &Path,
) -> anyhow::Result<tools::HttpResult> {
    let log = save.with_extension("log");
    let argv: Vec<String> = [
        "h2load",
        "-c",
        &H2_CONNECTIONS.to_string(),
        "-m",
        &H2_STREAMS.to_string(),
        "-t",
        "1",
        "-D",
        &secs.to_string(),
        "--log-file",
        &log.display().to_string(),
        url,
    ]
    .map(String::from)
    .to_vec();
    let out = tools::run_in(ns, &argv, Duration::from_secs(secs + 30))?;
    std::fs::write(save, &out.stdout)?;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let r = tools::parse_h2load(&out.stdout, &log_text)
        .with_context(|| format!("h2load's output:\n{}\n{}", out.stdout, out.stderr));
    // The per-request log is large and only needed for the percentiles.
    let _ = std::fs::remove_file(&log);
    r
}

pub fn run(args: &BenchArgs, session: &Session) -> anyhow::Result<String> {
    let started = Instant::now();
    let kinds = super::peer_kinds(args, &PEERS);
    super::check_tools(&kinds, &[("h2load", "--version"), ("nginx", "-v")])?;
    // `wrk -v` prints its version but exits 1: check that it is on PATH instead.
    ensure!(
        crate::cmd::succeeds(std::process::Command::new("sh").args(["-c", "command -v wrk"])),
        "wrk is missing: run `cargo xtask setup --bench`"
    );
    let raw = super::raw_dir(session, "http")?;
    eprintln!(
        "bench http: {} runs × {} data planes, {} s phases; raw outputs in {}",
        args.runs,
        kinds.len(),
        args.duration,
        raw.display()
    );
    let bt = topology::BenchTopology::build()?;
    let body = "x".repeat(BODY_SIZE);
    let backend = Nginx::start_with(
        bt.topo.backend(1),
        None,
        &[BACKEND_PORT, BACKEND_H2C_PORT],
        |dir| peers::nginx::static_backend_config((BACKEND_PORT, BACKEND_H2C_PORT), &body, dir),
    )
    .context("starting the backend NGINX")?;
    let hb = HttpBench {
        bt: &bt,
        _backend: backend,
    };
    // The backend alone: the same clients from inside the backend namespace over loopback.
    let alone_h1 = wrk(
        bt.topo.backend(1),
        &format!("http://127.0.0.1:{BACKEND_PORT}/"),
        args.duration,
        false,
        &raw.join("backend-alone-wrk.txt"),
    )?;
    let alone_h2 = h2load(
        bt.topo.backend(1),
        &format!("http://127.0.0.1:{BACKEND_H2C_PORT}/"),
        args.duration,
        &raw.join("backend-alone-h2load.txt"),
    )?;
    let alone = format!(
        "{:.0} req/s HTTP/1.1 keep-alive, {:.0} req/s h2c",
        alone_h1.requests_per_sec, alone_h2.requests_per_sec
    );
    eprintln!("  backend alone (loopback in its namespace): {alone}");
    let bar = super::progress_bar(
        "http",
        args.runs as u64 * kinds.len() as u64 * Phase::ALL.len() as u64,
    );
    let results = super::interleaved_runs(args, &kinds, &raw, &bar, &SUITE, |kind, run, dir| {
        run_peer(&hb, kind, run, args, &bar, dir)
    })?;
    bar.finish_and_clear();
    let names = bt.topo.namespace_names();
    drop(hb);
    drop(bt);
    eprintln!("removed namespaces {}", names.join(", "));
    let notes = vec![
        format!(
            "The backend NGINX alone, measured with the same clients from inside its own namespace over loopback: \
             {alone}. The plain column is the backend through the network path without a proxy."
        ),
        "HAProxy is not part of this suite (issue 7 compares with NGINX and Envoy).".into(),
        "Latencies are under the load of each phase (closed loop: wrk/h2load send as fast as answers come), so \
         they include queueing; they are not unloaded round-trip times."
            .into(),
    ];
    super::finish(
        &SUITE,
        args,
        session,
        &kinds,
        results,
        &raw,
        started,
        method(args.duration),
        notes,
    )
}

fn method(d: u64) -> Vec<String> {
    vec![
        format!("Topology: as `bench l4` (client → gateway namespace → backend, veth pairs). The backend is NGINX (2 \
         workers) answering every request with a {BODY_SIZE}-byte body from memory (`return 200`), HTTP/1.1 on port {BACKEND_PORT} and h2c on {BACKEND_H2C_PORT}. \
         Every proxy listens on `198.18.100.1:{PORT}` (HTTP/1.1) and `:{H2C_PORT}` (h2c) with one route (any host, \
         prefix `/`) to the backend's HTTP/1.1 port; plain forwarding addresses the backend directly with \
         `ip_forward=1`."),
        format!("HTTP/1.1: `wrk --latency -t {WRK_THREADS} -c {WRK_CONNECTIONS} -d {d}s` (keep-alive), and the same with \
         `-H 'Connection: close'` (a new TCP connection per request). Requests/sec and the 50%/99% latency lines."),
        format!("HTTP/2: `h2load -c {H2_CONNECTIONS} -m {H2_STREAMS} -t 1 -D {d} --log-file …` over h2c (prior knowledge); \
         requests/s from its summary, p50/p99 from the per-request log (successful requests)."),
        "The proxies: this gateway (`gateway run --config`, HTTPRoute, pooled upstream connections), NGINX `http` with \
         an upstream `keepalive 64`, Envoy's HTTP connection manager (`codec_type: AUTO`); 2 workers/threads each \
         where configurable (the gateway: one HTTP worker thread per core, `--http-workers` default).".into(),
        "Sanity checks (the bench fails otherwise): during every phase a counter of the data plane must rise — plain: \
         `Ip: ForwDatagrams`; the gateway: `gateway_http_requests_total`; NGINX: its CPU ticks; Envoy: \
         `http.*.downstream_cx_total` (not the admin's) — and the kernel must forward nothing itself except for \
         plain forwarding; non-2xx answers and socket errors are counted in the errors row.".into(),
    ]
}

fn start_peer<'a>(
    bt: &'a topology::BenchTopology,
    kind: PeerKind,
) -> anyhow::Result<Box<dyn Peer + 'a>> {
    let (ns, vip, backend) = (bt.gateway(), bt.vip(), bt.backend_addr());
    Ok(match kind {
        PeerKind::Plain => Box::new(peers::plain::Plain::start(ns, backend)?),
        PeerKind::GatewayKernel => {
            anyhow::bail!("gateway-kernel is a TLS passthrough path (bench tls)")
        }
        PeerKind::GatewayXdp => anyhow::bail!("gateway-xdp is an L4 path (bench l4)"),
        PeerKind::Gateway => Box::new(peers::gateway::Gateway::start_with(
            ns,
            vip,
            peers::gateway::http_manifests(vip, &[PORT, H2C_PORT], backend, BACKEND_PORT),
            peers::gateway::Counter::Sum("gateway_http_requests_total"),
        )?),
        PeerKind::Nginx => Box::new(Nginx::start_with(
            ns,
            Some(vip),
            &[PORT, H2C_PORT],
            |dir| peers::nginx::http_config(vip, (PORT, H2C_PORT), backend, BACKEND_PORT, dir),
        )?),
        PeerKind::Envoy => Box::new(peers::envoy::Envoy::start(
            ns,
            vip,
            &[PORT, H2C_PORT],
            |admin| peers::envoy::http_config(vip, &[PORT, H2C_PORT], backend, BACKEND_PORT, admin),
        )?),
        other => anyhow::bail!("{other} is not part of the http suite"),
    })
}

fn run_peer(
    hb: &HttpBench,
    kind: PeerKind,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
) -> anyhow::Result<RunValues> {
    let mut values = RunValues::new();
    bar.set_message(format!("run {run}/{} {kind}: starting", args.runs));
    {
        let peer = start_peer(hb.bt, kind)?;
        super::cores::pin_data_plane(hb.bt.gateway())?;
        let result = measure(hb, peer.as_ref(), run, args, bar, dir, &mut values);
        values.extend(peer.run_counters());
        peer.save_logs(dir);
        result?;
    }
    hb.bt.check_clean()?;
    Ok(values)
}

/// Waits until one request through the data plane is answered 200 (listeners may lag readiness).
fn warm_up(ns: &gateway_tests::Netns, url: &str) -> anyhow::Result<()> {
    let argv: Vec<String> = ["curl", "-sf", "-o", "/dev/null", "--max-time", "2", url]
        .map(String::from)
        .to_vec();
    let mut last = None;
    for _ in 0..40 {
        match tools::run_in(ns, &argv, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("no 200 from {url}"))
}

fn measure(
    hb: &HttpBench,
    peer: &dyn Peer,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
    values: &mut RunValues,
) -> anyhow::Result<()> {
    let kind = peer.kind();
    let (h1_port, h2_port) = if kind == PeerKind::Plain {
        (BACKEND_PORT, BACKEND_H2C_PORT)
    } else {
        (PORT, H2C_PORT)
    };
    let h1_url = format!("http://{}:{h1_port}/", peer.target());
    let h2_url = format!("http://{}:{h2_port}/", peer.target());
    let client = hb.bt.client();
    warm_up(client, &h1_url)?;
    let secs = args.duration;
    let mut errors = 0u64;
    for phase in Phase::ALL {
        bar.set_message(format!("run {run}/{} {kind}: {}", args.runs, phase.name()));
        let check = peers::PhaseCheck::before(peer, hb.bt.gateway(), Proto::Tcp)?;
        let meter = cpu::CpuMeter::start(&peer.pids());
        let save = dir.join(format!("{}.txt", phase.name()));
        let r = match phase {
            Phase::H1 => wrk(client, &h1_url, secs, false, &save)?,
            Phase::H1Close => wrk(client, &h1_url, secs, true, &save)?,
            Phase::H2 => h2load(client, &h2_url, secs, &save)?,
        };
        let used = meter.stop();
        ensure!(
            r.requests > 0,
            "{kind}'s {} phase completed no request",
            phase.name()
        );
        let p = phase.name();
        values.insert(format!("{p}_rps"), r.requests_per_sec);
        values.insert(format!("{p}_p50_us"), r.p50_us);
        values.insert(format!("{p}_p99_us"), r.p99_us);
        values.insert(format!("cpu_{p}_core"), used.dataplane_cpu_cores);
        values.insert(
            format!("{p}_rps_per_core"),
            r.requests_per_sec / used.dataplane_cpu_cores.max(0.01),
        );
        errors += r.errors;
        if phase == Phase::H1 {
            values.insert("cpu_h1_machine".into(), used.machine_cores);
            values.insert("cpu_h1_dataplane".into(), used.dataplane_cores);
        }
        check.after(peer, hb.bt.gateway(), p, values)?;
        bar.inc(1);
        std::thread::sleep(Duration::from_millis(300));
    }
    values.insert("errors".into(), errors as f64);
    Ok(())
}
