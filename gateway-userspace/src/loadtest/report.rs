//! What a run prints and writes: the live progress bar (indicatif: rate, errors, p99), the final table, the
//! JSON summary (`--json`) and a hand-written SVG chart (`--svg`) of latency percentiles and throughput per
//! second.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{
    phase_percentiles,
    stats::{Percentiles, Phase, Stats},
    LoadtestArgs, Mode, Protocol,
};

/// One second of the run in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub second: u64,
    /// Connections established.
    pub connections: u64,
    /// Exchanges completed.
    pub exchanges: u64,
    /// Bytes sent plus received.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
    /// Median full-exchange latency of the exchanges completed in this second (µs).
    pub p50_us: u64,
    /// 99th percentile, likewise (µs).
    pub p99_us: u64,
}

/// The result of a run (also the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Target as given.
    pub target: String,
    /// Address connected to.
    pub address: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Mode.
    pub mode: Mode,
    /// `--rate` in rate mode.
    pub target_rate: Option<f64>,
    /// `--connections` in the other modes.
    pub target_connections: Option<u32>,
    /// `--duration`, seconds.
    pub duration_secs: f64,
    /// From the start to the end of the load (including the drain), seconds.
    pub elapsed_secs: f64,
    /// What ended the run: `duration` or `max-connections`.
    pub stopped_by: String,
    /// Connection attempts started (UDP: sockets).
    pub attempts: u64,
    /// Connections established.
    pub connections: u64,
    /// Exchanges that completed.
    pub exchanges: u64,
    /// Application bytes sent (plaintext for TLS).
    pub bytes_sent: u64,
    /// Application bytes received.
    pub bytes_received: u64,
    /// Attempts per second over the load period.
    pub attempt_rate: f64,
    /// Completed exchanges per second.
    pub exchange_rate: f64,
    /// Bytes (both directions) per second.
    pub throughput_bytes_per_sec: f64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub errors_total: u64,
    /// Latency percentiles by phase (`connect`, `handshake`, `ttfb`, `total`), µs.
    pub latency_us: BTreeMap<String, Percentiles>,
    /// Per second.
    pub timeline: Vec<TimelinePoint>,
}

impl Summary {
    /// Builds the summary of a finished run.
    pub fn new(
        args: &LoadtestArgs,
        address: SocketAddr,
        stats: &Stats,
        elapsed: Duration,
        stopped_by: &str,
    ) -> Summary {
        // Rates over the load period: the configured duration, or less when the run stopped early.
        let period = elapsed.min(args.duration).as_secs_f64().max(1e-6);
        let timeline = stats
            .timeline
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = Percentiles::of(&s.total);
                TimelinePoint {
                    second: i as u64,
                    connections: s.connections,
                    exchanges: s.exchanges,
                    bytes: s.bytes,
                    errors: s.errors,
                    p50_us: p.p50,
                    p99_us: p.p99,
                }
            })
            .collect();
        Summary {
            target: args.target.clone(),
            address,
            protocol: args.protocol,
            mode: args.mode,
            target_rate: (args.mode == Mode::Rate).then_some(args.rate),
            target_connections: (args.mode != Mode::Rate).then_some(args.connections),
            duration_secs: args.duration.as_secs_f64(),
            elapsed_secs: elapsed.as_secs_f64(),
            stopped_by: stopped_by.to_string(),
            attempts: stats.attempts,
            connections: stats.connections,
            exchanges: stats.exchanges,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            attempt_rate: stats.attempts as f64 / period,
            exchange_rate: stats.exchanges as f64 / period,
            throughput_bytes_per_sec: (stats.bytes_sent + stats.bytes_received) as f64 / period,
            errors: stats
                .errors
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            errors_total: stats.errors_total(),
            latency_us: phase_percentiles(stats),
            timeline,
        }
    }

    /// The final table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mode = match self.mode {
            Mode::Rate => format!("rate {}/s", self.target_rate.unwrap_or_default()),
            Mode::Concurrent => format!(
                "concurrent, {} connections",
                self.target_connections.unwrap_or_default()
            ),
            Mode::Throughput => format!(
                "throughput, {} connections",
                self.target_connections.unwrap_or_default()
            ),
        };
        let _ = writeln!(
            t,
            "{} {:?} ({mode}) for {:.2}s, stopped by {}",
            self.target, self.protocol, self.elapsed_secs, self.stopped_by
        );
        let _ = writeln!(
            t,
            "  attempts {}  connections {}  exchanges {}  errors {}",
            self.attempts, self.connections, self.exchanges, self.errors_total
        );
        let _ = writeln!(
            t,
            "  {:.1} attempts/s  {:.1} exchanges/s  {}/s  (sent {} B, received {} B)",
            self.attempt_rate,
            self.exchange_rate,
            human_bytes(self.throughput_bytes_per_sec),
            self.bytes_sent,
            self.bytes_received
        );
        let _ = writeln!(
            t,
            "\n  {:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "min", "p50", "p90", "p99", "p99.9", "max"
        );
        for phase in Phase::ALL {
            if let Some(p) = self.latency_us.get(phase.name()) {
                let _ = writeln!(
                    t,
                    "  {:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    phase.name(),
                    p.count,
                    human_us(p.min),
                    human_us(p.p50),
                    human_us(p.p90),
                    human_us(p.p99),
                    human_us(p.p999),
                    human_us(p.max)
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(t, "\n  errors");
            for (kind, n) in &self.errors {
                let _ = writeln!(t, "  {kind:<10} {n:>8}");
            }
        }
        t
    }

    /// A chart: full-exchange p50/p99 per second (top) and exchanges and connections per second (bottom).
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const PANEL: f64 = 220.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 40.0;
        const GAP: f64 = 60.0;
        let n = self.timeline.len().max(1);
        let x = |i: usize| LEFT + (W - LEFT - RIGHT) * (i as f64 + 0.5) / n as f64;
        let mut s = String::new();
        let h = TOP + 2.0 * PANEL + GAP + 40.0;
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="14">{} {:?} {:?}: {} exchanges, {} errors</text>"#,
            xml(&self.target),
            self.protocol,
            self.mode,
            self.exchanges,
            self.errors_total
        );
        let mut panel = |top: f64, title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]| {
            let max = series
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1e-9);
            let y = |v: f64| top + PANEL - PANEL * v / max;
            let _ = writeln!(
                s,
                r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
                W - LEFT - RIGHT
            );
            let _ = writeln!(s, r#"<text x="{LEFT}" y="{}">{title}</text>"#, top - 6.0);
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{} {unit}</text>"##,
                    LEFT - 6.0,
                    y(v) + 4.0,
                    short(v)
                );
            }
            for (j, (name, color, values)) in series.iter().enumerate() {
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
                    W - RIGHT - 150.0 + 70.0 * (j % 2) as f64,
                    top - 6.0
                );
            }
        };
        let ms = |f: fn(&TimelinePoint) -> u64| -> Vec<f64> {
            self.timeline.iter().map(|p| f(p) as f64 / 1000.0).collect()
        };
        let per_s = |f: fn(&TimelinePoint) -> u64| -> Vec<f64> {
            self.timeline.iter().map(|p| f(p) as f64).collect()
        };
        panel(
            TOP,
            "full exchange latency per second",
            "ms",
            &[
                ("p50", "#1f77b4", ms(|p| p.p50_us)),
                ("p99", "#d62728", ms(|p| p.p99_us)),
            ],
        );
        panel(
            TOP + PANEL + GAP,
            "throughput per second",
            "/s",
            &[
                ("exchanges", "#2ca02c", per_s(|p| p.exchanges)),
                ("errors", "#ff7f0e", per_s(|p| p.errors)),
            ],
        );
        let axis_y = TOP + 2.0 * PANEL + GAP + 18.0;
        for (i, p) in self.timeline.iter().enumerate() {
            if n <= 20 || i % n.div_ceil(20) == 0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{axis_y}" text-anchor="middle">{}s</text>"#,
                    x(i),
                    p.second
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `1234` µs as `1.23ms`.
pub fn human_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The live progress bar over `duration` (hidden when `show` is false or stderr is not a terminal).
pub fn progress_bar(duration: Duration, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(duration.as_millis() as u64),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Updates `bar` four times a second: connections, exchanges per second (last full second), errors, p99.
pub async fn tick(bar: ProgressBar, stats: Arc<Mutex<Stats>>, start: Instant) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        let elapsed = start.elapsed();
        let msg = {
            let s = stats.lock().unwrap_or_else(|p| p.into_inner());
            let last = (elapsed.as_secs() as usize)
                .checked_sub(1)
                .and_then(|i| s.timeline.get(i))
                .map_or(0, |sec| sec.exchanges);
            let p99 = s.histogram(Phase::Total).value_at_quantile(0.99);
            format!(
                "{} conns  {last}/s  {} errors  p99 {}",
                s.connections,
                s.errors_total(),
                human_us(p99)
            )
        };
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(msg);
    }
}
