//! `cargo xtask bench [l4|tls|http|all]`: this gateway measured side by side with plain kernel forwarding,
//! HAProxy, NGINX and Envoy on one topology (client → gateway namespace → backend, veth pairs), one data plane
//! at a time, in one invocation.
//!
//! - `l4` (`l4.rs`): TCP throughput with 1 and 4 streams and UDP packets per second (iperf3), new connections
//!   per second and request/response latency (this crate's `loadgen`), CPU (`cpu`).
//! - `tls` (`tls.rs`): TLS passthrough routed by SNI — bulk throughput through one connection, new passthrough
//!   connections per second, time to first byte, memory per established connection (`gateway loadtest` as the
//!   client, a rustls echo in the backend).
//! - `http` (`http.rs`): small responses through HTTP proxies — wrk (keep-alive and a new connection per
//!   request) and h2load (h2c), against NGINX serving a static body in the backend.
//!
//! Every phase checks that the data plane's own counter rose (it carried the traffic) and that the kernel did
//! not forward anything itself (except in the plain-forwarding baseline). The median of `--runs` runs goes into
//! bench/<suite>/REPORT.md, results.json and *.svg (`report`); every raw output goes to bench/runs/
//! (git-ignored).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{build, cmd, setup};

mod cores;
mod cpu;
mod http;
mod iperf;
mod l4;
mod loadgen;
mod memory;
mod peers;
mod report;
mod tls;
mod tls_echo;
mod tools;
mod topology;

use peers::PeerKind;

/// Port of iperf3 (TCP and UDP) behind every data plane.
pub const IPERF_PORT: u16 = 5201;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// TCP and UDP forwarding (the kernel path).
    L4,
    /// TLS passthrough routed by SNI (this gateway's userspace passthrough path).
    Tls,
    /// HTTP routing through this gateway's HTTP proxy.
    Http,
    /// l4, tls and http, one after the other.
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
    /// Where the work runs: `split` gives the data plane a CPU of its own (its processes and the gateway
    /// namespace's receive processing) and the load the others; `shared` runs everything everywhere.
    #[arg(long, value_enum, default_value = "split")]
    pub cores: cores::CoreMode,
}

/// One data plane's numbers of one run, by metric key (see the suites' metric lists in `report`).
pub type RunValues = BTreeMap<String, f64>;

/// What every suite needs, prepared once per invocation.
pub struct Session {
    pub gateway_bin: PathBuf,
    pub stamp: String,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!((1..=21).contains(&args.runs), "--runs must be 1..=21");
    ensure!(
        (1..=60).contains(&args.duration),
        "--duration must be 1..=60 seconds"
    );
    if !args.no_setup {
        setup::run(&setup::SetupArgs { bench: true })?;
    }
    let gateway_bin = gateway_binary(args)?;
    let placement = cores::init(args.cores)?;
    eprintln!(
        "cores: {:?} (load on CPUs {:?}, data plane on CPUs {:?})",
        placement.mode, placement.load, placement.dataplane
    );
    std::env::set_var("GATEWAY_BIN", &gateway_bin);
    let stamp = cmd::output(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]))?
        .trim()
        .to_string();
    let session = Session { gateway_bin, stamp };
    let suites: &[Suite] = match args.suite {
        Suite::All => &[Suite::L4, Suite::Tls, Suite::Http],
        Suite::L4 => &[Suite::L4],
        Suite::Tls => &[Suite::Tls],
        Suite::Http => &[Suite::Http],
    };
    let mut summaries = Vec::new();
    for &suite in suites {
        let summary = match suite {
            Suite::L4 => l4::run(args, &session),
            Suite::Tls => tls::run(args, &session),
            Suite::Http => http::run(args, &session),
            Suite::All => unreachable!("expanded above"),
        }
        .with_context(|| format!("bench {}", suite_name(suite)))?;
        summaries.push(summary);
    }
    if summaries.len() > 1 {
        for s in summaries {
            println!("{s}");
        }
    }
    Ok(())
}

fn suite_name(s: Suite) -> &'static str {
    match s {
        Suite::L4 => "l4",
        Suite::Tls => "tls",
        Suite::Http => "http",
        Suite::All => "all",
    }
}

/// The data planes to measure in `suite`: `--peers` (or every one the suite supports), plus the baseline.
pub fn peer_kinds(args: &BenchArgs, supported: &[PeerKind]) -> Vec<PeerKind> {
    let mut kinds: Vec<PeerKind> = if args.peers.is_empty() {
        supported.to_vec()
    } else {
        args.peers
            .iter()
            .copied()
            .filter(|k| supported.contains(k))
            .collect()
    };
    kinds.push(PeerKind::Plain);
    kinds.sort();
    kinds.dedup();
    kinds
}

/// A directory for one suite's raw outputs: bench/runs/<suite>-<stamp>.
pub fn raw_dir(session: &Session, suite: &str) -> anyhow::Result<PathBuf> {
    let raw = cmd::root()
        .join("bench/runs")
        .join(format!("{suite}-{}", session.stamp));
    std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    Ok(raw)
}

/// The progress bar of a suite: `len` steps.
pub fn progress_bar(suite: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner:.green}} bench {suite} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {{elapsed_precise}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Measures every data plane in `kinds` `args.runs` times, interleaved (run 1 of every data plane, then run 2,
/// ...) so a slow drift of the machine favours none of them. `one(kind, run, dir)` measures one data plane once;
/// its values are written to `raw/run<run>/<peer>/values.json` and printed as they come.
pub fn interleaved_runs(
    args: &BenchArgs,
    kinds: &[PeerKind],
    raw: &Path,
    bar: &ProgressBar,
    suite: &report::Suite,
    mut one: impl FnMut(PeerKind, usize, &Path) -> anyhow::Result<RunValues>,
) -> anyhow::Result<BTreeMap<PeerKind, Vec<RunValues>>> {
    let mut results: BTreeMap<PeerKind, Vec<RunValues>> = BTreeMap::new();
    for run in 1..=args.runs {
        for &kind in kinds {
            let dir = raw.join(format!("run{run}")).join(kind.name());
            std::fs::create_dir_all(&dir)?;
            let values = one(kind, run, &dir).with_context(|| {
                format!("run {run} of {kind}; raw outputs in {}", dir.display())
            })?;
            std::fs::write(
                dir.join("values.json"),
                serde_json::to_string_pretty(&values)?,
            )?;
            print_run(bar, suite, run, args.runs, kind, &values);
            results.entry(kind).or_default().push(values);
        }
    }
    Ok(results)
}

/// Prints one run's line above the progress bar (indicatif's println is silent when stderr is not a terminal).
pub fn print_run(
    bar: &ProgressBar,
    suite: &report::Suite,
    run: usize,
    runs: usize,
    kind: PeerKind,
    v: &RunValues,
) {
    bar.suspend(|| {
        eprintln!(
            "  run {run}/{runs} {:<8} {}",
            kind.name(),
            report::one_line(suite, v)
        )
    });
}

/// Writes the report of a finished suite (bench/<suite>/ and the raw directory), prints its table, and returns
/// the table for `bench all`'s closing summary.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    suite: &'static report::Suite,
    args: &BenchArgs,
    session: &Session,
    kinds: &[PeerKind],
    results: BTreeMap<PeerKind, Vec<RunValues>>,
    raw: &Path,
    started: Instant,
    method: Vec<String>,
    notes: Vec<String>,
) -> anyhow::Result<String> {
    let report = report::Report::new(
        suite,
        report::ReportInput {
            machine: report::Machine::describe(&session.gateway_bin),
            command: command_line(args, suite.name),
            runs: args.runs,
            duration_s: args.duration,
            raw: raw.to_path_buf(),
            method,
            notes,
        },
        kinds,
        results,
    );
    let out = cmd::root().join("bench").join(suite.name);
    report.write(&out)?;
    std::fs::write(
        raw.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let table = report.summary_table();
    println!("{table}");
    println!(
        "report: {}  (charts and results.json beside it; raw outputs: {}) — {:.0?}",
        out.join("REPORT.md").display(),
        raw.display(),
        started.elapsed()
    );
    Ok(table)
}

fn command_line(args: &BenchArgs, suite: &str) -> String {
    let mut c = format!("cargo xtask bench {suite}");
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
    if args.cores != cores::CoreMode::Split {
        c.push_str(" --cores shared");
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

/// Checks that the tools of `kinds` (and `extra`, e.g. iperf3 or wrk) are installed.
pub fn check_tools(kinds: &[PeerKind], extra: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut need: Vec<(&str, &str)> = extra.to_vec();
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
    if kinds.contains(&PeerKind::Envoy) {
        setup::envoy_binary().context("Envoy: run `cargo xtask setup --bench`")?;
    }
    for (tool, flag) in need {
        ensure!(
            cmd::succeeds(Command::new(tool).arg(flag)),
            "{tool} is missing: run `cargo xtask setup --bench`"
        );
    }
    Ok(())
}
