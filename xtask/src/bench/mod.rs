//! `cargo xtask bench l4`: the data plane measured side by side with plain kernel forwarding, HAProxy and NGINX
//! on one topology (client → gateway namespace → backend, veth pairs), one data plane at a time.
//!
//! Per run and data plane: TCP throughput with 1 and 4 streams and UDP packets per second (iperf3), new
//! connections per second and request/response latency (this crate's load generator, `loadgen`), and the CPU
//! used meanwhile (`cpu`). Every phase checks that the data plane's own counter rose (it carried the traffic)
//! and that the kernel did not forward anything itself (except in the plain-forwarding baseline). The median
//! of `--runs` runs goes into bench/l4/REPORT.md, bench/l4/results.json and bench/l4/*.svg (`report`); every raw
//! output goes to bench/runs/ (git-ignored).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{build, cmd, setup};

mod cpu;
mod iperf;
mod loadgen;
mod peers;
mod report;
mod topology;

use peers::{Peer, PeerKind, Proto};

/// Port of iperf3 (TCP and UDP) behind every data plane.
pub const IPERF_PORT: u16 = 5201;
/// UDP datagram payload for the packets-per-second test, and the offered rate (far above what 2 cores reach).
const UDP_DATAGRAM: u32 = 64;
const UDP_RATE: &str = "2G";
/// Connection-rate threads in the client namespace.
const CPS_THREADS: usize = 4;
/// Upper bounds on the work of one phase, whatever the duration.
const MAX_CONNECTIONS: u64 = 2_000_000;
const MAX_EXCHANGES: u64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// TCP and UDP forwarding (the kernel path).
    L4,
    /// TLS passthrough (not written yet).
    Tls,
    /// HTTP routing (not written yet).
    Http,
    /// Every suite that exists.
    All,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Runs per data plane; the report shows the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per throughput and connection-rate phase (latency phases take half of it).
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Data planes to measure (comma-separated; the baseline `plain` is always included).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peers: Vec<PeerKind>,
    /// Skip the set-up step (packages) on a machine that has everything.
    #[arg(long)]
    pub no_setup: bool,
    /// Use the existing release build of the gateway (or GATEWAY_BIN) instead of building it.
    #[arg(long)]
    pub no_build: bool,
}

/// One data plane's numbers of one run, by metric key (see `report::METRICS`).
pub type RunValues = BTreeMap<String, f64>;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Suite::L4 => l4(args),
        Suite::All => {
            eprintln!(
                "bench all: only the l4 suite exists so far (tls and http are still to be written)"
            );
            l4(args)
        }
        Suite::Tls | Suite::Http => bail!(
            "the {:?} benchmark is not written yet; `cargo xtask bench l4` is",
            args.suite
        ),
    }
}

fn l4(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!((1..=21).contains(&args.runs), "--runs must be 1..=21");
    ensure!(
        (1..=60).contains(&args.duration),
        "--duration must be 1..=60 seconds"
    );
    let mut kinds: Vec<PeerKind> = if args.peers.is_empty() {
        PeerKind::ALL.to_vec()
    } else {
        args.peers.clone()
    };
    kinds.push(PeerKind::Plain);
    kinds.sort();
    kinds.dedup();

    if !args.no_setup {
        setup::run(&setup::SetupArgs { bench: true })?;
    }
    let gateway_bin = gateway_binary(args)?;
    std::env::set_var("GATEWAY_BIN", &gateway_bin);
    check_tools(&kinds)?;
    let machine = report::Machine::describe(&gateway_bin);

    let root = cmd::root();
    let stamp = cmd::output(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]))?
        .trim()
        .to_string();
    let raw = root.join("bench/runs").join(format!("l4-{stamp}"));
    std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    let command = command_line(args);
    eprintln!(
        "bench l4: {} runs × {} data planes, {} s phases; raw outputs in {}",
        args.runs,
        kinds.len(),
        args.duration,
        raw.display()
    );

    let mut bt = topology::BenchTopology::build()?;
    let phases = Phase::ALL.len() as u64;
    let bar = ProgressBar::new(args.runs as u64 * kinds.len() as u64 * phases);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} bench l4 [{bar:30.cyan/blue}] {pos}/{len} {elapsed_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut results: BTreeMap<PeerKind, Vec<RunValues>> = BTreeMap::new();
    // Runs are interleaved (run 1 of every data plane, then run 2, ...) so a slow drift of the machine does
    // not favour one of them.
    for run in 1..=args.runs {
        for &kind in &kinds {
            let dir = raw.join(format!("run{run}")).join(kind.name());
            std::fs::create_dir_all(&dir)?;
            let values = run_peer(&mut bt, kind, run, args, &bar, &dir).with_context(|| {
                format!("run {run} of {kind}; raw outputs in {}", dir.display())
            })?;
            std::fs::write(
                dir.join("values.json"),
                serde_json::to_string_pretty(&values)?,
            )?;
            // (indicatif's println is silent when stderr is not a terminal.)
            bar.suspend(|| {
                eprintln!(
                    "  run {run}/{} {:<8} {}",
                    args.runs,
                    kind.name(),
                    report::one_line(&values)
                )
            });
            results.entry(kind).or_default().push(values);
        }
    }
    bar.finish_and_clear();
    let names = bt.topo.namespace_names();
    drop(bt);
    eprintln!("removed namespaces {}", names.join(", "));

    let report = report::Report::new(
        machine,
        command,
        args.runs,
        args.duration,
        &kinds,
        results,
        raw.clone(),
    );
    let out = root.join("bench/l4");
    report.write(&out)?;
    std::fs::write(
        raw.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", report.summary_table());
    println!(
        "report: {}  (charts and results.json beside it; raw outputs: {}) — {:.0?}",
        out.join("REPORT.md").display(),
        raw.display(),
        started.elapsed()
    );
    Ok(())
}

fn command_line(args: &BenchArgs) -> String {
    let mut c = String::from("cargo xtask bench l4");
    if args.runs != 3 {
        c.push_str(&format!(" --runs {}", args.runs));
    }
    if args.duration != 5 {
        c.push_str(&format!(" --duration {}", args.duration));
    }
    if !args.peers.is_empty() {
        let p: Vec<&str> = args.peers.iter().map(|k| k.name()).collect();
        c.push_str(&format!(" --peers {}", p.join(",")));
    }
    c
}

/// The release build of the `gateway` binary: GATEWAY_BIN if set, else built here (eBPF object in release,
/// then `cargo build --release -p gateway-userspace` into CARGO_TARGET_DIR or the workspace's target/).
fn gateway_binary(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "GATEWAY_BIN={} does not exist", p.display());
        eprintln!("using GATEWAY_BIN={}", p.display());
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target"));
    let bin = target.join("release/gateway");
    if !args.no_build {
        build::ebpf(true)?;
        cmd::run(cmd::cargo().args([
            "build",
            "--release",
            "-p",
            "gateway-userspace",
            "--bin",
            "gateway",
        ]))
        .context("building the gateway (release)")?;
    }
    ensure!(
        bin.is_file(),
        "{} is missing: build it (drop --no-build) or set GATEWAY_BIN",
        bin.display()
    );
    Ok(bin)
}

fn check_tools(kinds: &[PeerKind]) -> anyhow::Result<()> {
    let mut need = vec![("iperf3", "--version")];
    if kinds.contains(&PeerKind::Haproxy) {
        need.push(("haproxy", "-v"));
    }
    if kinds.contains(&PeerKind::Nginx) {
        need.push(("nginx", "-v"));
        ensure!(
            Path::new(peers::nginx::STREAM_MODULE).exists(),
            "{} is missing: run `cargo xtask setup --bench` (libnginx-mod-stream)",
            peers::nginx::STREAM_MODULE
        );
    }
    for (tool, flag) in need {
        ensure!(
            cmd::succeeds(Command::new(tool).arg(flag)),
            "{tool} is missing: run `cargo xtask setup --bench`"
        );
    }
    Ok(())
}

/// The measurement phases of one run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tcp1,
    Tcp4,
    Udp,
    ConnRate,
    LatencyPersistent,
    LatencyFresh,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Tcp1,
        Phase::Tcp4,
        Phase::Udp,
        Phase::ConnRate,
        Phase::LatencyPersistent,
        Phase::LatencyFresh,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Tcp1 => "tcp1",
            Phase::Tcp4 => "tcp4",
            Phase::Udp => "udp",
            Phase::ConnRate => "cps",
            Phase::LatencyPersistent => "rr",
            Phase::LatencyFresh => "crr",
        }
    }

    fn proto(self) -> Proto {
        if self == Phase::Udp {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }
}

fn start_peer<'a>(
    bt: &'a topology::BenchTopology,
    kind: PeerKind,
) -> anyhow::Result<Box<dyn Peer + 'a>> {
    let (ns, vip, backend) = (bt.gateway(), bt.vip(), bt.backend_addr());
    Ok(match kind {
        PeerKind::Plain => Box::new(peers::plain::Plain::start(ns, backend)?),
        PeerKind::Gateway => Box::new(peers::gateway::Gateway::start(ns, vip, backend)?),
        PeerKind::Haproxy => Box::new(peers::haproxy::Haproxy::start(ns, vip, backend)?),
        PeerKind::Nginx => Box::new(peers::nginx::Nginx::start(ns, vip, backend)?),
    })
}

/// Checks, after a data plane stopped, that the gateway namespace is back to its neutral state.
fn check_clean(bt: &topology::BenchTopology) -> anyhow::Result<()> {
    let ns = bt.gateway();
    ensure!(
        ns.sysctl("net.ipv4.ip_forward")? == "0",
        "ip_forward was left on in the gateway namespace"
    );
    let addrs = ns.ip(&["-4", "addr", "show", "dev", "lo"])?;
    ensure!(
        !addrs.contains(&bt.vip().to_string()),
        "the Gateway address was left on lo"
    );
    let left = ns.pids();
    ensure!(
        left.is_empty(),
        "processes left in the gateway namespace: {left:?}"
    );
    Ok(())
}

fn run_peer(
    bt: &mut topology::BenchTopology,
    kind: PeerKind,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
) -> anyhow::Result<RunValues> {
    let mut values = RunValues::new();
    bar.set_message(format!("run {run}/{} {kind}: starting", args.runs));
    let outcome = (|| -> anyhow::Result<()> {
        let peer = start_peer(bt, kind)?;
        let result = measure(bt, peer.as_ref(), run, args, bar, dir, &mut values);
        values.extend(peer.run_counters());
        peer.save_logs(dir);
        result
    })();
    if outcome.is_err() {
        // A failed iperf3 client may leave the server busy for the next data plane.
        let _ = bt.restart_iperf_server();
    }
    outcome?;
    check_clean(bt)?;
    Ok(values)
}

/// Runs every phase against a started data plane.
fn measure(
    bt: &topology::BenchTopology,
    peer: &dyn Peer,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
    values: &mut RunValues,
) -> anyhow::Result<()> {
    let kind = peer.kind();
    let target = peer.target();
    let client = bt.client();
    loadgen::probe(
        client,
        SocketAddr::from((target, loadgen::ACCEPT_CLOSE_PORT)),
    )?;
    let secs = args.duration;
    let half = Duration::from_secs_f64(secs as f64 / 2.0);
    for phase in Phase::ALL {
        bar.set_message(format!("run {run}/{} {kind}: {}", args.runs, phase.name()));
        if phase.proto() == Proto::Udp && !peer.udp() {
            bar.inc(1);
            continue;
        }
        let counter_before = peer.traffic_counter(phase.proto())?;
        let kernel_before = peers::plain::forwarded_datagrams(bt.gateway())?;
        let meter = cpu::CpuMeter::start(&peer.pids());
        let mut put = |k: &str, v: f64| {
            values.insert(k.to_string(), v);
        };
        match phase {
            Phase::Tcp1 | Phase::Tcp4 | Phase::Udp => {
                let mode = match phase {
                    Phase::Tcp1 => iperf::Mode::Tcp { streams: 1 },
                    Phase::Tcp4 => iperf::Mode::Tcp { streams: 4 },
                    _ => iperf::Mode::Udp {
                        datagram: UDP_DATAGRAM,
                        rate: UDP_RATE,
                    },
                };
                let (r, json) = iperf::run(client, target, &mode, secs)?;
                std::fs::write(dir.join(format!("iperf3-{}.json", phase.name())), json)?;
                match phase {
                    Phase::Tcp1 => put("tcp1_gbps", r.bits_per_second / 1e9),
                    Phase::Tcp4 => put("tcp4_gbps", r.bits_per_second / 1e9),
                    _ => {
                        put("udp_kpps", r.received_pps / 1e3);
                        put("udp_loss_pct", r.loss_percent);
                    }
                }
            }
            Phase::ConnRate => {
                let accepted_before = bt.backend_accepted();
                let r = loadgen::connection_rate(
                    client,
                    SocketAddr::from((target, loadgen::ACCEPT_CLOSE_PORT)),
                    CPS_THREADS,
                    Duration::from_secs(secs),
                    MAX_CONNECTIONS,
                );
                ensure!(
                    r.completed > 0,
                    "no connection completed ({} failed)",
                    r.failed
                );
                let accepted = bt.backend_accepted() - accepted_before;
                ensure!(
                    accepted >= r.completed,
                    "the backend accepted {accepted} connections but the client completed {}",
                    r.completed
                );
                put("cps", r.per_second());
                put("cps_failed", r.failed as f64);
            }
            Phase::LatencyPersistent | Phase::LatencyFresh => {
                let t = SocketAddr::from((target, loadgen::ECHO_PORT));
                let (lat, prefix) = if phase == Phase::LatencyPersistent {
                    (
                        loadgen::ping_pong_persistent(client, t, half, MAX_EXCHANGES)?,
                        "rr",
                    )
                } else {
                    (
                        loadgen::ping_pong_fresh(client, t, half, MAX_EXCHANGES)?,
                        "crr",
                    )
                };
                put(&format!("{prefix}_p50_us"), lat.p50_us());
                put(&format!("{prefix}_p99_us"), lat.p99_us());
                put(&format!("{prefix}_count"), lat.histogram.len() as f64);
                put(&format!("{prefix}_failed"), lat.failed as f64);
            }
        }
        let used = meter.stop();
        if matches!(
            phase,
            Phase::Tcp1 | Phase::Tcp4 | Phase::Udp | Phase::ConnRate
        ) {
            put(&format!("cpu_{}_machine", phase.name()), used.machine_cores);
            put(
                &format!("cpu_{}_dataplane", phase.name()),
                used.dataplane_cores,
            );
        }
        // Sanity: the data plane carried this phase's traffic, and the kernel forwarded nothing by itself.
        let carried = peer
            .traffic_counter(phase.proto())?
            .saturating_sub(counter_before);
        ensure!(
            carried > 0,
            "{kind} did not carry the {} phase: {} did not rise",
            phase.name(),
            peer.counter_description()
        );
        values.insert(format!("sanity_{}", phase.name()), carried as f64);
        let kernel_forwarded =
            peers::plain::forwarded_datagrams(bt.gateway())?.saturating_sub(kernel_before);
        if kind != PeerKind::Plain {
            ensure!(
                kernel_forwarded == 0,
                "the kernel forwarded {kernel_forwarded} packets itself during {kind}'s {} phase",
                phase.name()
            );
        }
        bar.inc(1);
        // Let connections close and flows settle between phases.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}
