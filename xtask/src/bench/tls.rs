//! `cargo xtask bench tls`: TLS passthrough routed by the SNI of the ClientHello, one data plane at a time on
//! the l4 topology. The backend is a rustls echo (`tls_echo`) in the backend namespace; the client is
//! `gateway loadtest` in the client namespace. Per run and data plane:
//!
//! - `bulk`: one TLS connection (real handshake) moving bytes to the echo and back (`--mode throughput`);
//! - `cps`: new passthrough connections per second, closed loop: 32 connections each sending the canned rustls
//!   ClientHello and closing at the server's first byte (`--protocol tls-canned --mode concurrent`), so the
//!   client does no handshake work and the data plane's per-connection cost shows;
//! - `cps_canned`: the same with the backend in canned mode (`tls_echo`: it reads the ClientHello and answers a
//!   fixed record, no cryptography), so neither end's TLS work bounds the rate and the data planes' own
//!   per-connection cost decides it;
//! - `ttfb`: time to first byte (connect + ClientHello → ServerHello) at a moderate open-loop rate;
//! - `mem`: memory per established passthrough connection — the data plane's RSS and its namespace's TCP
//!   socket memory, before and while `MEM_CONNECTIONS` TLS connections are held open, ÷ the count.
//!
//! Adding a data plane (e.g. the in-kernel passthrough path): a `PeerKind`, a line in `PEERS` and in
//! `start_peer`; everything else (phases, checks, report) is shared.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use indicatif::ProgressBar;

use super::{
    cpu, memory,
    peers::{self, gateway::PassthroughPath, Peer, PeerKind, Proto},
    report::{self, m, Better, Chart, Metric},
    tls_echo::TlsEcho,
    tools, topology, BenchArgs, RunValues, Session,
};
use crate::cmd;
use gateway_tests::netstat;

/// The TLS port of every proxy (on the Gateway address) and of the backend's echo.
const PORT: u16 = 443;
const BACKEND_PORT: u16 = 8443;
/// Names routed to the backend. `rustls.example.com` is the SNI of the canned ClientHello.
const SNIS: [&str; 2] = ["bench.example.com", "rustls.example.com"];
const CANNED_HELLO: &str = "gateway-userspace/tests/corpus/clienthello/rustls.bin";
/// Closed-loop connections of the connection-rate phase.
const CPS_CONNECTIONS: u32 = 32;
/// Closed-loop connections of the connection-rate phase without backend cryptography: enough that the data
/// plane's CPU, not the round trips of 32 loops, sets the rate (the kernel path adds the backend's handshake
/// after the ClientHello, two round trips on this topology's sub-millisecond links).
const CPS_CANNED_CONNECTIONS: u32 = 128;
/// Open-loop rate of the time-to-first-byte phase (far below every data plane's capacity).
const TTFB_RATE: u32 = 200;
/// Connections held open in the memory phase.
const MEM_CONNECTIONS: u64 = 500;
/// Runtime threads of the echo backend.
const ECHO_THREADS: usize = 2;

/// The data planes this suite measures.
const PEERS: [PeerKind; 6] = [
    PeerKind::Plain,
    PeerKind::Gateway,
    PeerKind::GatewayKernel,
    PeerKind::Haproxy,
    PeerKind::Nginx,
    PeerKind::Envoy,
];

const METRICS: &[Metric] = &[
    m(
        "bulk_gbps",
        "Bulk throughput through one passthrough connection (each way)",
        "Gbit/s",
        Better::Higher,
        2,
    ),
    m(
        "cps",
        "New passthrough connections per second (canned ClientHello → ServerHello)",
        "conn/s",
        Better::Higher,
        0,
    ),
    m(
        "cps_errors",
        "Failed attempts during that run",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "cps_canned",
        "New passthrough connections per second, backend without cryptography (fixed answer)",
        "conn/s",
        Better::Higher,
        0,
    ),
    m(
        "cps_canned_errors",
        "Failed attempts during that run",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "ttfb_p50_us",
        "Time to first byte p50 (connect + ClientHello → ServerHello)",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "ttfb_p99_us",
        "Time to first byte p99",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "mem_rss_kib_per_conn",
        "Data plane RSS per established passthrough connection",
        "KiB",
        Better::Lower,
        1,
    ),
    m(
        "mem_kernel_kib_per_conn",
        "Kernel memory per connection: socket objects (slab) + TCP buffers",
        "KiB",
        Better::Lower,
        1,
    ),
    m(
        "mem_sockets_per_conn",
        "TCP sockets per connection in the data plane's namespace",
        "count",
        Better::Neither,
        1,
    ),
    m(
        "mem_failed_attempts",
        "Attempts reset while opening them (retried by the client)",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "cpu_cps_machine",
        "Machine CPU during the connection-rate run",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_dataplane",
        "Data plane processes' CPU during the connection-rate run",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_canned_machine",
        "Machine CPU during the connection-rate run without backend cryptography",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_canned_dataplane",
        "Data plane processes' CPU during that run",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_core",
        "Data-plane CPU busy during the connection-rate run (its processes and its namespace's receive work)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_load",
        "Load CPUs busy during that run (client and backend)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cps_per_core",
        "New passthrough connections per data-plane core-second (rustls backend)",
        "conn/s",
        Better::Higher,
        0,
    ),
    m(
        "cpu_cps_canned_core",
        "Data-plane CPU busy during the run without backend cryptography",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_cps_canned_load",
        "Load CPUs busy during that run",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cps_canned_per_core",
        "New passthrough connections per data-plane core-second, backend without cryptography",
        "conn/s",
        Better::Higher,
        0,
    ),
    m(
        "bulk_gbps_per_core",
        "Bulk throughput per data-plane core (each way)",
        "Gbit/s",
        Better::Higher,
        2,
    ),
    m(
        "cpu_bulk_core",
        "Data-plane CPU busy during the bulk run",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_bulk_dataplane",
        "Data plane processes' CPU during the bulk run",
        "cores",
        Better::Neither,
        2,
    ),
];

pub const SUITE: report::Suite = report::Suite {
    name: "tls",
    title: "TLS passthrough benchmark: this gateway vs plain forwarding, HAProxy, NGINX, Envoy",
    metrics: METRICS,
    relative: (
        &[
            "bulk_gbps",
            "cps",
            "cps_canned",
            "cps_canned_per_core",
            "ttfb_p50_us",
            "ttfb_p99_us",
        ],
        &[
            "bulk",
            "conn/s",
            "conn/s (no backend crypto)",
            "conn/s per core (no crypto)",
            "1/TTFB p50",
            "1/TTFB p99",
        ],
    ),
    charts: &[
        Chart {
            file: "throughput.svg",
            title: "Bulk throughput through one passthrough connection",
            unit: "Gbit/s",
            labels: &["one connection"],
            keys: &["bulk_gbps"],
        },
        Chart {
            file: "connections.svg",
            title: "New passthrough connections per second",
            unit: "conn/s",
            labels: &["backend TLS", "backend without cryptography"],
            keys: &["cps", "cps_canned"],
        },
        Chart {
            file: "ttfb.svg",
            title: "Time to first byte (lower is better)",
            unit: "µs",
            labels: &["p50", "p99"],
            keys: &["ttfb_p50_us", "ttfb_p99_us"],
        },
        Chart {
            file: "memory.svg",
            title: "Memory per established passthrough connection (lower is better)",
            unit: "KiB",
            labels: &["process RSS", "kernel sockets"],
            keys: &["mem_rss_kib_per_conn", "mem_kernel_kib_per_conn"],
        },
    ],
    spread: &[
        "bulk_gbps",
        "cps",
        "cps_canned",
        "cps_canned_per_core",
        "ttfb_p50_us",
        "ttfb_p99_us",
        "mem_rss_kib_per_conn",
    ],
    findings: &[
        "bulk_gbps",
        "bulk_gbps_per_core",
        "cps",
        "cps_canned",
        "cps_per_core",
        "cps_canned_per_core",
        "ttfb_p50_us",
        "ttfb_p99_us",
        "mem_rss_kib_per_conn",
        "mem_kernel_kib_per_conn",
    ],
};

/// The measurement phases of one run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Bulk,
    Cps,
    CpsCanned,
    Ttfb,
    Memory,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Bulk,
        Phase::Cps,
        Phase::CpsCanned,
        Phase::Ttfb,
        Phase::Memory,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Bulk => "bulk",
            Phase::Cps => "cps",
            Phase::CpsCanned => "cps_canned",
            Phase::Ttfb => "ttfb",
            Phase::Memory => "mem",
        }
    }
}

/// The topology plus the TLS backend and the client's files.
struct TlsBench {
    // Drop order: the echo before the namespaces.
    echo: TlsEcho,
    bt: topology::BenchTopology,
    _pki: gateway_tests::pki::Pki,
    ca: PathBuf,
    hello: PathBuf,
    gateway_bin: PathBuf,
}

impl TlsBench {
    fn build(session: &Session) -> anyhow::Result<Self> {
        let bt = topology::BenchTopology::build()?;
        let pki = gateway_tests::pki::Pki::new("bench-tls-ca")?;
        let cert = pki.issue("backend", &SNIS)?;
        let echo = TlsEcho::start(
            bt.topo.backend(1),
            BACKEND_PORT,
            &cert.cert_pem,
            &cert.key_pem,
            ECHO_THREADS,
        )?;
        let hello = cmd::root().join(CANNED_HELLO);
        ensure!(hello.is_file(), "{} is missing", hello.display());
        Ok(TlsBench {
            echo,
            bt,
            ca: pki.ca_path(),
            _pki: pki,
            hello,
            gateway_bin: session.gateway_bin.clone(),
        })
    }

    fn loadtest(
        &self,
        ns: &gateway_tests::Netns,
        target: &str,
        args: &[&str],
        secs: f64,
        save: &Path,
    ) -> anyhow::Result<tools::LoadtestResult> {
        let mut a: Vec<String> = vec![target.to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        let limit = Duration::from_secs_f64(secs + 30.0);
        tools::loadtest(ns, &self.gateway_bin, &a, limit, save)
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            "--protocol".into(),
            "tls".into(),
            "--sni".into(),
            SNIS[0].into(),
            "--ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

pub fn run(args: &BenchArgs, session: &Session) -> anyhow::Result<String> {
    let started = Instant::now();
    let kinds = super::peer_kinds(args, &PEERS);
    super::check_tools(&kinds, &[])?;
    let raw = super::raw_dir(session, "tls")?;
    eprintln!(
        "bench tls: {} runs × {} data planes, {} s phases; raw outputs in {}",
        args.runs,
        kinds.len(),
        args.duration,
        raw.display()
    );
    let mut tb = TlsBench::build(session)?;
    let backend_alone =
        backend_capacity(&tb, args.duration, &raw).context("measuring the TLS backend alone")?;
    eprintln!("  backend alone (loopback in its namespace): {backend_alone}");
    let bar = super::progress_bar(
        "tls",
        args.runs as u64 * kinds.len() as u64 * Phase::ALL.len() as u64,
    );
    let results = super::interleaved_runs(args, &kinds, &raw, &bar, &SUITE, |kind, run, dir| {
        run_peer(&mut tb, kind, run, args, &bar, dir)
    })?;
    bar.finish_and_clear();
    let names = tb.bt.topo.namespace_names();
    drop(tb);
    eprintln!("removed namespaces {}", names.join(", "));
    let notes = vec![
        format!(
            "The TLS backend alone, measured with the same client from inside its own namespace over loopback: \
             {backend_alone}. Compare with the plain column: if plain is close to it, the backend (not the network \
             path) limits the baseline and every ratio is conservative."
        ),
        "Bulk throughput is TLS application data: the client (rustls) encrypts and the echo decrypts, re-encrypts \
         and sends it back on the load's CPUs, which bound it; passthrough proxies only copy ciphertext, so their cost \
         shows in the data-plane CPU's busy time (row \"per data-plane core\")."
            .into(),
        "New connections per second use the canned rustls ClientHello (`--protocol tls-canned`): the client does no \
         handshake work; the backend still does its half (key share, certificate signature) for every connection."
            .into(),
        "Opening the memory phase's 500 connections at once from one client address meets the gateway's default limit \
         of 256 pending ClientHellos per source address (`--tls-max-pending-per-source`): the excess is reset and \
         retried by the client (row \"Attempts reset while opening them\"); the measurement is taken once all 500 \
         are open at the backend."
            .into(),
        "Memory per connection: plain forwarding and the in-kernel path hold no socket in the gateway namespace; their \
         conntrack entries are not counted here (the in-kernel path's two entries per connection, 336 bytes, are \
         measured by tests/tests/tls_kernel.rs)."
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
        format!("Topology: as `bench l4` (client → gateway namespace → backend, veth pairs). The backend runs a rustls \
         echo (TLS 1.3, ECDSA P-256 certificate for {}, 2 runtime threads) on port {BACKEND_PORT}; every proxy \
         listens on `198.18.100.1:{PORT}` and routes those SNIs (and only those) to it. Plain forwarding: the client \
         addresses the backend directly with `ip_forward=1`.", SNIS.join(", ")),
        format!("Bulk: `gateway loadtest --protocol tls --mode throughput --connections 1 --bytes-per-conn 64G \
         --duration {d}s` (one connection, full handshake, 64 KiB writes, the echo returns every byte); the larger \
         direction's application bytes ÷ {d} s."),
        format!("New connections per second: `gateway loadtest --protocol tls-canned --clienthello {CANNED_HELLO} \
         --mode concurrent --connections {CPS_CONNECTIONS} --duration {d}s` — each of {CPS_CONNECTIONS} loops connects, sends \
         the ClientHello, waits for the first byte of the ServerHello and closes; connections ÷ {d} s."),
        format!("New connections per second without backend cryptography: the same with \
         `--connections {CPS_CANNED_CONNECTIONS}` while the backend is in canned mode — it reads the ClientHello and \
         answers a fixed 9-byte record (a ServerHello header), no key exchange, no signature — so neither end's TLS \
         work bounds the rate: what is left is the data plane's own cost per connection."),
        format!("Time to first byte: the same canned ClientHello at `--mode rate --rate {TTFB_RATE}` for {:.1} s; \
         measured from the intended start of each connection (connect included) to the first byte back.", d as f64 / 2.0),
        format!("Memory: `gateway loadtest --protocol tls --mode concurrent --connections {MEM_CONNECTIONS} --interval 1s` \
         holds {MEM_CONNECTIONS} established connections (the echo counts them open); sampled before and while they are \
         open: the sum of `VmRSS` of the data plane's processes, `TCP: inuse` of `/proc/net/sockstat` in the gateway \
         namespace (sockets) and `TCP: mem` (buffer pages, counted machine-wide by the kernel: an upper bound); the \
         differences ÷ {MEM_CONNECTIONS}. Kernel memory = sockets × the slab objects behind one socket (`TCP` + \
         `sock_inode_cache` + `filp` object sizes from `/proc/slabinfo`) + buffers."),
        "Sanity checks (the bench fails otherwise): during every phase a counter of the data plane must rise — plain: \
         `Ip: ForwDatagrams`; the gateway: `gateway_tls_passthrough_connections_total`; HAProxy: `CumConns`; NGINX: \
         its CPU ticks; Envoy: `tcp.*.downstream_cx_total` — and the kernel must forward nothing itself except for \
         plain forwarding; every phase must complete without errors except the connection-rate phase, whose \
         failures are reported.".into(),
    ]
}

/// The echo's capacity without any network path: bulk and connection rate from a client in the backend
/// namespace to 127.0.0.1.
fn backend_capacity(tb: &TlsBench, secs: u64, raw: &Path) -> anyhow::Result<String> {
    let ns = tb.bt.topo.backend(1);
    let target = format!("127.0.0.1:{BACKEND_PORT}");
    let (bulk, cps) = measure_bulk_cps(tb, ns, &target, secs, raw, "backend-alone")?;
    Ok(format!(
        "{:.2} Gbit/s bulk, {:.0} new connections/s",
        bulk.one_way_gbps(),
        cps.connections_per_sec()
    ))
}

fn measure_bulk_cps(
    tb: &TlsBench,
    ns: &gateway_tests::Netns,
    target: &str,
    secs: u64,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<(tools::LoadtestResult, tools::LoadtestResult)> {
    Ok((
        bulk(
            tb,
            ns,
            target,
            secs,
            &dir.join(format!("{prefix}-bulk.json")),
        )?,
        cps(
            tb,
            ns,
            target,
            CPS_CONNECTIONS,
            secs,
            &dir.join(format!("{prefix}-cps.json")),
        )?,
    ))
}

fn bulk(
    tb: &TlsBench,
    ns: &gateway_tests::Netns,
    target: &str,
    secs: u64,
    save: &Path,
) -> anyhow::Result<tools::LoadtestResult> {
    let mut a = tb.tls_args();
    a.extend(
        [
            "--mode",
            "throughput",
            "--connections",
            "1",
            "--bytes-per-conn",
            "64G",
            "--duration",
        ]
        .map(String::from),
    );
    a.push(format!("{secs}s"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = tb.loadtest(ns, target, &a, secs as f64, save)?;
    ensure!(
        r.connections == 1 && r.bytes_received > 0 && r.errors == 0,
        "the bulk run failed or moved nothing: {r:?}"
    );
    Ok(r)
}

fn cps(
    tb: &TlsBench,
    ns: &gateway_tests::Netns,
    target: &str,
    connections: u32,
    secs: u64,
    save: &Path,
) -> anyhow::Result<tools::LoadtestResult> {
    let hello = tb.hello.display().to_string();
    let conns = connections.to_string();
    let dur = format!("{secs}s");
    let r = tb.loadtest(
        ns,
        target,
        &[
            "--protocol",
            "tls-canned",
            "--clienthello",
            &hello,
            "--mode",
            "concurrent",
            "--connections",
            &conns,
            "--duration",
            &dur,
            // A connection stuck for a second is an error: the run (and the CPU meter around it) then ends within
            // a second of its duration instead of waiting out the default timeout.
            "--timeout",
            "1s",
        ],
        secs as f64,
        save,
    )?;
    ensure!(r.connections > 0, "no connection completed: {r:?}");
    Ok(r)
}

/// The data plane's address and port for the client.
fn target(peer: &dyn Peer) -> String {
    let port = if peer.kind() == PeerKind::Plain {
        BACKEND_PORT
    } else {
        PORT
    };
    format!("{}:{port}", peer.target())
}

fn start_peer<'a>(tb: &'a TlsBench, kind: PeerKind) -> anyhow::Result<Box<dyn Peer + 'a>> {
    let (ns, vip, backend) = (tb.bt.gateway(), tb.bt.vip(), tb.bt.backend_addr());
    Ok(match kind {
        PeerKind::Plain => Box::new(peers::plain::Plain::start(ns, backend)?),
        PeerKind::GatewayXdp => anyhow::bail!("gateway-xdp is an L4 path (bench l4)"),
        PeerKind::Gateway | PeerKind::GatewayKernel => {
            let path = if kind == PeerKind::GatewayKernel {
                PassthroughPath::Kernel
            } else {
                PassthroughPath::Userspace
            };
            Box::new(peers::gateway::Gateway::start_with(
                ns,
                vip,
                peers::gateway::tls_manifests(vip, PORT, &SNIS, backend, BACKEND_PORT, path),
                peers::gateway::Counter::Sum("gateway_tls_passthrough_connections_total"),
            )?)
        }
        PeerKind::Haproxy => Box::new(peers::haproxy::Haproxy::start_with(ns, vip, |socket| {
            peers::haproxy::tls_config(vip, PORT, &SNIS, backend, BACKEND_PORT, socket)
        })?),
        PeerKind::Nginx => Box::new(peers::nginx::Nginx::start_with(
            ns,
            Some(vip),
            &[PORT],
            |dir| peers::nginx::tls_config(vip, PORT, &SNIS, backend, BACKEND_PORT, dir),
        )?),
        PeerKind::Envoy => Box::new(peers::envoy::Envoy::start(ns, vip, &[PORT], |admin| {
            peers::envoy::tls_config(vip, PORT, &SNIS, backend, BACKEND_PORT, admin)
        })?),
    })
}

fn run_peer(
    tb: &mut TlsBench,
    kind: PeerKind,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
) -> anyhow::Result<RunValues> {
    let mut values = RunValues::new();
    bar.set_message(format!("run {run}/{} {kind}: starting", args.runs));
    {
        let peer = start_peer(tb, kind)?;
        super::cores::pin_data_plane(tb.bt.gateway())?;
        let result = measure(tb, peer.as_ref(), run, args, bar, dir, &mut values);
        values.extend(peer.run_counters());
        peer.save_logs(dir);
        result?;
    }
    tb.bt.check_clean()?;
    Ok(values)
}

/// Waits until one full TLS exchange through the data plane succeeds (listeners may lag readiness).
fn warm_up(tb: &TlsBench, target: &str, dir: &Path) -> anyhow::Result<()> {
    let mut a = tb.tls_args();
    a.extend(["--max-connections", "1", "--duration", "3s"].map(String::from));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut last = None;
    for _ in 0..30 {
        match tb.loadtest(tb.bt.client(), target, &a, 3.0, &dir.join("warmup.json")) {
            Ok(r) if r.exchanges == 1 && r.errors == 0 => return Ok(()),
            Ok(r) => last = Some(anyhow::anyhow!("{r:?}")),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("no TLS exchange through {target} succeeded"))
}

fn measure(
    tb: &TlsBench,
    peer: &dyn Peer,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
    values: &mut RunValues,
) -> anyhow::Result<()> {
    let kind = peer.kind();
    let target = target(peer);
    let client = tb.bt.client();
    let secs = args.duration;
    warm_up(tb, &target, dir)?;
    for phase in Phase::ALL {
        bar.set_message(format!("run {run}/{} {kind}: {}", args.runs, phase.name()));
        let check = peers::PhaseCheck::before(peer, tb.bt.gateway(), Proto::Tcp)?;
        let meter = cpu::CpuMeter::start(&peer.pids());
        let save = dir.join(format!("loadtest-{}.json", phase.name()));
        let mut put = |k: &str, v: f64| {
            values.insert(k.to_string(), v);
        };
        match phase {
            Phase::Bulk => {
                let r = bulk(tb, client, &target, secs, &save)?;
                put("bulk_gbps", r.one_way_gbps());
                let used = meter.stop();
                put("cpu_bulk_dataplane", used.dataplane_cores);
                put("cpu_bulk_core", used.dataplane_cpu_cores);
                put(
                    "bulk_gbps_per_core",
                    r.one_way_gbps() / used.dataplane_cpu_cores.max(0.01),
                );
            }
            Phase::Cps => {
                let r = cps(tb, client, &target, CPS_CONNECTIONS, secs, &save)?;
                put("cps", r.connections_per_sec());
                put("cps_errors", r.errors as f64);
                let used = meter.stop();
                put("cpu_cps_machine", used.machine_cores);
                put("cpu_cps_dataplane", used.dataplane_cores);
                put("cpu_cps_core", used.dataplane_cpu_cores);
                put("cpu_cps_load", used.load_cpu_cores);
                put(
                    "cps_per_core",
                    r.connections_per_sec() / used.dataplane_cpu_cores.max(0.01),
                );
            }
            Phase::CpsCanned => {
                let before = [
                    netstat::Snapshot::take(client)?,
                    netstat::Snapshot::take(tb.bt.backend())?,
                ];
                tb.echo.set_canned(true);
                let r = cps(tb, client, &target, CPS_CANNED_CONNECTIONS, secs, &save);
                tb.echo.set_canned(false);
                let r = r?;
                let mut text = String::new();
                for (side, ns, before) in [
                    ("client", client, &before[0]),
                    ("backend", tb.bt.backend(), &before[1]),
                ] {
                    text += &format!("# {side} namespace, counters changed during the run\n");
                    for (name, delta) in netstat::Snapshot::take(ns)?.changes_since(before) {
                        text += &format!("{name} {delta}\n");
                    }
                }
                std::fs::write(dir.join("netstat-cps_canned.txt"), text)?;
                put("cps_canned", r.connections_per_sec());
                put("cps_canned_errors", r.errors as f64);
                let used = meter.stop();
                put("cpu_cps_canned_machine", used.machine_cores);
                put("cpu_cps_canned_dataplane", used.dataplane_cores);
                put("cpu_cps_canned_core", used.dataplane_cpu_cores);
                put("cpu_cps_canned_load", used.load_cpu_cores);
                put(
                    "cps_canned_per_core",
                    r.connections_per_sec() / used.dataplane_cpu_cores.max(0.01),
                );
            }
            Phase::Ttfb => {
                let hello = tb.hello.display().to_string();
                let rate = TTFB_RATE.to_string();
                let half = (secs as f64 / 2.0).max(1.0);
                let dur = format!("{half}s");
                let r = tb.loadtest(
                    client,
                    &target,
                    &[
                        "--protocol",
                        "tls-canned",
                        "--clienthello",
                        &hello,
                        "--mode",
                        "rate",
                        "--rate",
                        &rate,
                        "--duration",
                        &dur,
                    ],
                    half,
                    &save,
                )?;
                ensure!(
                    r.errors == 0 && r.connections > 0,
                    "the time-to-first-byte run had errors: {r:?}"
                );
                put("ttfb_p50_us", r.ttfb_p50_us);
                put("ttfb_p99_us", r.ttfb_p99_us);
            }
            Phase::Memory => {
                let (rss, buffers, sockets, failed) = hold_connections(tb, peer, &target, &save)?;
                put("mem_failed_attempts", failed as f64);
                let objects = sockets * memory::socket_object_bytes() as f64;
                put("mem_rss_kib_per_conn", rss / 1024.0);
                put(
                    "mem_kernel_kib_per_conn",
                    (objects + buffers.max(0.0)) / 1024.0,
                );
                put("mem_sockets_per_conn", sockets);
            }
        }
        check.after(peer, tb.bt.gateway(), phase.name(), values)?;
        bar.inc(1);
        // Let connections close and TIME_WAITs settle between phases.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

/// Holds `MEM_CONNECTIONS` TLS connections open through the data plane and samples its memory before and
/// while they are open. Returns bytes of RSS, bytes of TCP buffers (machine-wide) and sockets in the gateway
/// namespace, each per connection, and the failed attempts (retried) of the client.
fn hold_connections(
    tb: &TlsBench,
    peer: &dyn Peer,
    target: &str,
    save: &Path,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let ns = tb.bt.gateway();
    // Let the previous phase's connections go away first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tb.echo.open() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = peer.pids();
    let before = memory::sample(ns, &pids);
    let open_before = tb.echo.open();
    let hold_secs = 6.0;
    let mut argv: Vec<String> = vec![
        tb.gateway_bin.display().to_string(),
        "loadtest".into(),
        target.to_string(),
    ];
    argv.extend(tb.tls_args());
    argv.extend(
        [
            "--mode",
            "concurrent",
            "--interval",
            "1s",
            "-q",
            "--connections",
        ]
        .map(String::from),
    );
    argv.push(MEM_CONNECTIONS.to_string());
    argv.extend(["--duration".into(), format!("{hold_secs}s")]);
    argv.extend(["--json".into(), save.display().to_string()]);
    let mut client = tb.bt.client().spawn(&argv)?;
    let wait_until = Instant::now() + Duration::from_secs_f64(hold_secs - 1.0);
    while tb.echo.open() < open_before + MEM_CONNECTIONS && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let open = tb.echo.open() - open_before;
    // Every connection has done its handshake and first exchange once the echo saw it; a moment more lets
    // the proxies' buffers settle.
    std::thread::sleep(Duration::from_millis(300));
    let during = memory::sample(ns, &pids);
    let status = client.wait_timeout(Duration::from_secs_f64(hold_secs + 20.0))?;
    ensure!(
        status.is_some(),
        "the memory phase's loadtest did not end: {}",
        client.log_tail(20)
    );
    ensure!(
        open == MEM_CONNECTIONS,
        "only {open} of {MEM_CONNECTIONS} connections were open at the backend at once"
    );
    // Failed attempts are retried by the client (a burst of 500 handshakes from one address meets e.g. the
    // gateway's limit of 256 pending ClientHellos per source); what counts is that all were open at once.
    let r = tools::parse_loadtest(&std::fs::read_to_string(save)?)?;
    ensure!(
        r.connections >= MEM_CONNECTIONS,
        "the memory phase's connections failed: {r:?}"
    );
    let (rss, buffers, sockets) = memory::per_connection(before, during, MEM_CONNECTIONS);
    Ok((rss, buffers, sockets, r.errors))
}
