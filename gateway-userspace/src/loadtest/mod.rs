//! `gateway loadtest`: drives load at a target and reports what it saw.
//!
//! Protocols (`protocols.rs`): plain TCP and TLS (rustls, real handshakes, `--sni` round robin) against an
//! echo, a canned ClientHello for handshake-free connection-rate tests of TLS passthrough, UDP, and HTTP/1.1
//! (plain or over TLS), HTTP/2 (h2c prior knowledge, or TLS with ALPN h2; `h2.rs`). Modes:
//!
//! - `rate`: `--rate N` new connections per second, open loop (`rate.rs`): each connection does one exchange
//!   and closes; latencies are measured from the intended start;
//! - `concurrent`: `--connections N` long-lived connections, each sending a small request every `--interval`;
//! - `throughput`: `--connections N` connections each moving `--bytes-per-conn` bytes, reconnecting until the
//!   end.
//!
//! Every run is bounded by `--duration` (default 10 s, at most one hour) and optionally `--max-connections`;
//! work still in flight at the end gets a short drain grace and is then cancelled (and counted). Statistics
//! (`stats.rs`): HDR histograms of connect, handshake, time to first byte and full exchange, errors by kind, a
//! per-second timeline. Output (`report.rs`): a live progress bar on a terminal, a final table, `--json FILE`
//! and `--svg FILE` (percentiles and throughput per second).
pub mod h2;
pub mod protocols;
pub mod rate;
pub mod report;
pub mod stats;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::task::JoinSet;

pub use protocols::Protocol;
use protocols::{Ctx, ProtocolError, Target, TargetOptions};
use rate::{Pacer, RateError};
pub use report::Summary;
use stats::{ErrorKind, Percentiles, Phase, Stats, StatsError};

/// Longest run allowed.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Longest wait for work in flight once the load stops.
const MAX_DRAIN: Duration = Duration::from_secs(5);

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// New connections per second (`--rate`), open loop; one exchange each.
    Rate,
    /// `--connections` long-lived connections sending a request every `--interval`.
    Concurrent,
    /// `--connections` connections each moving `--bytes-per-conn` bytes, repeatedly.
    Throughput,
}

/// `gateway loadtest` options.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Target, HOST:PORT (an IP address or a name).
    #[arg(value_name = "HOST:PORT")]
    pub target: String,
    /// What to speak to the target. tcp, tls and udp expect an echo; tls-canned sends --clienthello and stops
    /// at the server's first byte.
    #[arg(long, short, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// How load is applied.
    #[arg(long, short, value_enum, default_value_t = Mode::Rate)]
    pub mode: Mode,
    /// New connections per second (rate mode).
    #[arg(long, short, default_value_t = 100.0)]
    pub rate: f64,
    /// Connections held open at once (concurrent and throughput modes).
    #[arg(long, short, default_value_t = 10)]
    pub connections: u32,
    /// How long to apply load, e.g. 10s, 500ms, 2m (at most 1h).
    #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many connection attempts (UDP: sockets).
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Bytes per request for the tcp, tls and udp echoes.
    #[arg(long, default_value_t = 64)]
    pub request_size: usize,
    /// Bytes each connection sends in throughput mode, e.g. 1M, 64K, 1G (binary units).
    #[arg(long, default_value = "1M", value_parser = parse_bytes)]
    pub bytes_per_conn: u64,
    /// Pause between requests on one connection (concurrent mode).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Timeout of each operation (connect, handshake, one exchange).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most attempts in flight at once in rate mode; beyond, attempts are not started and count as `overload`.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// TLS server name(s) to send, used round robin (repeatable). Default: the target's host.
    #[arg(long, value_name = "NAME")]
    pub sni: Vec<String>,
    /// Accept any server certificate (TLS).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// CA certificates (PEM) that verify the server (TLS).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Allow TLS session resumption (default: every handshake is a full one).
    #[arg(long)]
    pub tls_resume: bool,
    /// The ClientHello record(s) to send with --protocol tls-canned (raw bytes, e.g. from
    /// gateway-userspace/tests/corpus/clienthello/).
    #[arg(long, value_name = "FILE")]
    pub clienthello: Option<PathBuf>,
    /// HTTP request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP Host header (default: the target's host).
    #[arg(long)]
    pub host: Option<String>,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a chart (SVG) of latency percentiles and throughput per second to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Errors of a load run (before or around the load; failures of single attempts are counted, not returned).
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// Options that do not make sense together.
    #[error("{0}")]
    Args(String),
    /// The target could not be resolved.
    #[error("resolving {target}: {source}")]
    Resolve {
        /// As given.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// Setting up the protocol (TLS configuration, ClientHello file, ...).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A rate that cannot be scheduled.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// Statistics.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

/// Parses `10`, `10s`, `500ms`, `250us`, `2m`, `1h`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (use us, ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `4096`, `64K`, `1M`, `2G`, `1MiB`, `10KB` (binary units).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64K, 1M)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use K, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl LoadtestArgs {
    fn check(&self) -> Result<(), LoadtestError> {
        let bad = |m: &str| Err(LoadtestError::Args(m.to_string()));
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad("--duration must be more than 0 and at most 1h");
        }
        if self.max_connections == Some(0) {
            return bad("--max-connections must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be more than 0");
        }
        match self.mode {
            Mode::Rate if self.max_in_flight == 0 => bad("--max-in-flight must be at least 1"),
            Mode::Concurrent | Mode::Throughput if self.connections == 0 => {
                bad("--connections must be at least 1")
            }
            Mode::Throughput if !matches!(self.protocol, Protocol::Tcp | Protocol::Tls) => {
                bad("throughput mode needs --protocol tcp or tls")
            }
            Mode::Throughput if self.bytes_per_conn == 0 => {
                bad("--bytes-per-conn must be at least 1")
            }
            _ => Ok(()),
        }
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` too) into the host part.
fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Runs the load described by `args` and returns the summary. `progress`: draw the live progress bar (on a
/// terminal).
pub async fn execute(args: &LoadtestArgs, progress: bool) -> Result<Summary, LoadtestError> {
    args.check()?;
    let addr = tokio::net::lookup_host(&args.target)
        .await
        .and_then(|mut it| {
            it.next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
        })
        .map_err(|source| LoadtestError::Resolve {
            target: args.target.clone(),
            source,
        })?;
    let host = host_of(&args.target);
    let target = Target::new(&TargetOptions {
        addr,
        host,
        protocol: args.protocol,
        snis: &args.sni,
        insecure: args.insecure,
        ca: args.ca.as_deref(),
        tls_resume: args.tls_resume,
        clienthello: args.clienthello.as_deref(),
        request_size: args.request_size,
        path: &args.path,
        http_host: args.host.as_deref(),
        timeout: args.timeout,
    })?;
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let run_start = Instant::now();
    let deadline = run_start + args.duration;
    let ctx = Ctx {
        target: Arc::new(target),
        stats: Arc::clone(&stats),
        run_start,
    };
    let bar = report::progress_bar(args.duration, progress && !args.quiet);
    let ticker = tokio::spawn(report::tick(bar.clone(), Arc::clone(&stats), run_start));

    let mut tasks = JoinSet::new();
    let tickets = Arc::new(Tickets {
        taken: AtomicU64::new(0),
        limit: args.max_connections,
    });
    match args.mode {
        Mode::Rate => {
            let mut pacer = Pacer::new(run_start, args.rate, deadline, args.max_connections)?;
            while let Some(due) = pacer.next_due() {
                tokio::time::sleep_until(due.into()).await;
                while tasks.try_join_next().is_some() {}
                if tasks.len() >= args.max_in_flight {
                    ctx.error(ErrorKind::Overload);
                    continue;
                }
                tickets.taken.fetch_add(1, Ordering::Relaxed);
                ctx.attempt();
                tasks.spawn(one_shot(ctx.clone(), due));
            }
        }
        Mode::Concurrent | Mode::Throughput => {
            for _ in 0..args.connections {
                let (ctx, tickets) = (ctx.clone(), Arc::clone(&tickets));
                let deadline = deadline.into();
                if args.mode == Mode::Concurrent {
                    tasks.spawn(long_lived(ctx, tickets, deadline, args.interval));
                } else {
                    tasks.spawn(bulk(ctx, tickets, deadline, args.bytes_per_conn));
                }
            }
        }
    }
    // Wait for the workers (they stop at the deadline) or the attempts in flight, then a bounded drain.
    let grace = args.timeout.min(MAX_DRAIN);
    let drain_until = tokio::time::Instant::from(deadline.max(Instant::now())) + grace;
    let load_end = loop {
        match tokio::time::timeout_at(drain_until, tasks.join_next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => break Instant::now(),
            Err(_) => {
                let cut = Instant::now();
                tasks.abort_all();
                while let Some(r) = tasks.join_next().await {
                    if r.is_err_and(|e| e.is_cancelled()) {
                        ctx.error(ErrorKind::Cancelled);
                    }
                }
                break cut;
            }
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = load_end.min(Instant::now()) - run_start;
    let stopped_by = if args
        .max_connections
        .is_some_and(|m| tickets.taken.load(Ordering::Relaxed) >= m)
    {
        "max-connections"
    } else {
        "duration"
    };
    let stats = stats.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Summary::new(args, addr, &stats, elapsed, stopped_by))
}

/// Shared connection-attempt budget (`--max-connections`).
struct Tickets {
    taken: AtomicU64,
    limit: Option<u64>,
}

impl Tickets {
    fn take(&self) -> bool {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|l| n >= l) {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Rate mode: one connection, one exchange, close.
async fn one_shot(ctx: Ctx, t0: Instant) {
    let result = async {
        if ctx.target.protocol == Protocol::Udp {
            let sock = ctx.udp_socket().await?;
            return ctx.datagram(&sock, t0).await;
        }
        let mut link = ctx.connect(t0).await?;
        ctx.request(&mut link, t0, false).await?;
        link.close().await;
        Ok::<_, ProtocolError>(())
    }
    .await;
    if let Err(e) = result {
        ctx.error(e.kind());
    }
}

/// Pause before reconnecting after a failure, so a dead target does not spin the client.
const BACKOFF: Duration = Duration::from_millis(20);

async fn sleep_before(deadline: tokio::time::Instant, d: Duration) {
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + d)).await;
}

/// Concurrent mode: keep one connection open and send a request every `interval` until the deadline;
/// reconnect on failure (within the `--max-connections` budget).
async fn long_lived(
    ctx: Ctx,
    tickets: Arc<Tickets>,
    deadline: tokio::time::Instant,
    interval: Duration,
) {
    let udp = ctx.target.protocol == Protocol::Udp;
    while tokio::time::Instant::now() < deadline && tickets.take() {
        ctx.attempt();
        let t0 = Instant::now();
        let mut conn = None;
        let mut sock = None;
        let opened = if udp {
            ctx.udp_socket().await.map(|s| sock = Some(s))
        } else {
            ctx.connect(t0).await.map(|c| conn = Some(c))
        };
        if let Err(e) = opened {
            ctx.error(e.kind());
            sleep_before(deadline, BACKOFF).await;
            continue;
        }
        loop {
            let t = Instant::now();
            let result = match (&mut conn, &sock) {
                (Some(c), _) => ctx.request(c, t, true).await,
                (None, Some(s)) => ctx.datagram(s, t).await.map(|()| true),
                (None, None) => Ok(false),
            };
            match result {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    ctx.error(e.kind());
                    sleep_before(deadline, BACKOFF).await;
                    break;
                }
            }
            let next = tokio::time::Instant::from(t) + interval;
            if next >= deadline {
                if let Some(c) = conn.take() {
                    c.close().await;
                }
                return;
            }
            tokio::time::sleep_until(next).await;
        }
        if let Some(c) = conn.take() {
            c.close().await;
        }
    }
}

/// Throughput mode: connections moving `bytes` each, one after the other until the deadline.
async fn bulk(ctx: Ctx, tickets: Arc<Tickets>, deadline: tokio::time::Instant, bytes: u64) {
    while tokio::time::Instant::now() < deadline && tickets.take() {
        ctx.attempt();
        let t0 = Instant::now();
        let result = async {
            let conn = ctx.open(t0).await?;
            match tokio::time::timeout_at(deadline, ctx.bulk(conn, t0, bytes)).await {
                Ok(r) => r,
                // Cut by the end of the run: counted, not a failure of the target.
                Err(_) => {
                    ctx.error(ErrorKind::Cancelled);
                    Ok(())
                }
            }
        }
        .await;
        if let Err(e) = result {
            ctx.error(e.kind());
            sleep_before(deadline, BACKOFF).await;
        }
    }
}

/// `gateway loadtest`: runs the load, prints the table, writes `--json`/`--svg`. Exit status 1 when any attempt
/// failed.
pub fn run(args: &LoadtestArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let summary = runtime.block_on(execute(args, true))?;
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary).context("serialising the summary")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, summary.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if summary.errors_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Percentiles of every phase of `stats`, by phase name (phases with no samples left out).
fn phase_percentiles(stats: &Stats) -> std::collections::BTreeMap<String, Percentiles> {
    Phase::ALL
        .iter()
        .filter(|p| !stats.histogram(**p).is_empty())
        .map(|p| (p.name().to_string(), Percentiles::of(stats.histogram(*p))))
        .collect()
}

#[cfg(test)]
mod tests;
