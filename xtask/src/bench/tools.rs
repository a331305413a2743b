//! External load generators run in the client namespace, bounded in time, and their outputs parsed: wrk
//! (HTTP/1.1), h2load (HTTP/2) and this project's `gateway loadtest` (TLS passthrough; its `--json`).
use std::{
    io::{Read, Seek, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use gateway_tests::Netns;
use serde_json::Value;

/// A finished command's exit status and outputs.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` in `ns` (`ip netns exec`: these tools need no bpffs), killing it after `limit`; fails with its
/// output if it fails.
pub fn run_in(ns: &Netns, argv: &[String], limit: Duration) -> anyhow::Result<Output> {
    let out = run_in_unchecked(ns, argv, limit)?;
    ensure!(
        out.success,
        "`{}` failed:\n{}\n{}",
        argv.join(" "),
        out.stdout.trim(),
        out.stderr.trim()
    );
    Ok(out)
}

/// [`run_in`] without failing on a non-zero exit status (the caller judges the output).
pub fn run_in_unchecked(ns: &Netns, argv: &[String], limit: Duration) -> anyhow::Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).args(argv);
    let line = crate::cmd::describe(&cmd);
    // Files, not pipes: a full pipe left unread while waiting would block the tool.
    let (mut out, mut err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    out.seek(SeekFrom::Start(0))?;
    out.read_to_string(&mut stdout)?;
    err.seek(SeekFrom::Start(0))?;
    err.read_to_string(&mut stderr)?;
    Ok(Output {
        success: status.success(),
        stdout,
        stderr,
    })
}

/// What an HTTP load run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HttpResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors, timeouts and non-2xx/3xx responses.
    pub errors: u64,
}

/// `320.00us`, `1.20ms`, `2.00s` → µs.
fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    Some(num.trim().parse::<f64>().ok()? * mult)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> anyhow::Result<HttpResult> {
    let mut r = HttpResult::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = duration_us(v),
            ["99%", v] => p99 = duration_us(v),
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    r.p50_us = p50.context("no 50% line in wrk's output (run with --latency)")?;
    r.p99_us = p99.context("no 99% line in wrk's output")?;
    r.requests_per_sec = rps.context("no Requests/sec in wrk's output")?;
    Ok(r)
}

/// Parses h2load's summary (`finished in …, N req/s`, `requests: …`) and its `--log-file` (one line per request:
/// start µs, status, duration µs) for the percentiles h2load does not print.
pub fn parse_h2load(summary: &str, log: &str) -> anyhow::Result<HttpResult> {
    let mut r = HttpResult::default();
    let mut rps = None;
    for line in summary.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            rps = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" req/s"))
                .and_then(|v| v.trim().parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.errors += n,
                    _ => {}
                }
            }
        }
    }
    r.requests_per_sec = rps.context("no `finished in …, N req/s` line in h2load's output")?;
    let mut durations: Vec<f64> = Vec::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [_, status, us] = f.as_slice() {
            let status: i64 = status.trim().parse().unwrap_or(-1);
            if (200..400).contains(&status) {
                durations.push(us.trim().parse().unwrap_or(f64::NAN));
            }
        }
    }
    durations.retain(|d| d.is_finite());
    ensure!(
        !durations.is_empty(),
        "h2load's log file has no successful request"
    );
    durations.sort_by(f64::total_cmp);
    r.p50_us = percentile(&durations, 50.0);
    r.p99_us = percentile(&durations, 99.0);
    Ok(r)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The numbers of a `gateway loadtest --json` summary the benchmarks use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadtestResult {
    pub connections: u64,
    pub exchanges: u64,
    /// Every error but `cancelled` (work cut by the end of the run, e.g. a bulk transfer still going).
    pub errors: u64,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    pub elapsed_secs: f64,
    pub duration_secs: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// `latency_us.<phase>.p50` and `.p99` of the `ttfb` phase.
    pub ttfb_p50_us: f64,
    pub ttfb_p99_us: f64,
}

impl LoadtestResult {
    /// Connections established per second of load.
    pub fn connections_per_sec(&self) -> f64 {
        self.connections as f64 / self.duration_secs.max(1e-3)
    }

    /// Application bytes moved per second of load, one direction (the larger).
    pub fn one_way_gbps(&self) -> f64 {
        self.bytes_sent.max(self.bytes_received) as f64 * 8.0 / self.duration_secs.max(1e-3) / 1e9
    }
}

pub fn parse_loadtest(json: &str) -> anyhow::Result<LoadtestResult> {
    let v: Value = serde_json::from_str(json).context("gateway loadtest's JSON")?;
    let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let ttfb = |p: &str| {
        v.pointer(&format!("/latency_us/ttfb/{p}"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    ensure!(
        v.get("connections").is_some(),
        "not a loadtest summary: {json:.200}"
    );
    let errors_by_kind: std::collections::BTreeMap<String, u64> = v
        .get("errors")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(LoadtestResult {
        connections: u("connections"),
        exchanges: u("exchanges"),
        errors: errors_by_kind
            .iter()
            .filter(|(k, _)| k.as_str() != "cancelled")
            .map(|(_, n)| n)
            .sum(),
        errors_by_kind,
        elapsed_secs: f("elapsed_secs"),
        duration_secs: f("duration_secs"),
        bytes_sent: u("bytes_sent"),
        bytes_received: u("bytes_received"),
        ttfb_p50_us: ttfb("p50"),
        ttfb_p99_us: ttfb("p99"),
    })
}

/// Runs `gateway loadtest <args> --json <file> -q` in `ns`; the parsed summary (the JSON is kept in `save`).
/// Its exit status is 1 when any attempt failed (also for bulk transfers cut by the end of the run): the
/// caller judges `errors`.
pub fn loadtest(
    ns: &Netns,
    gateway_bin: &Path,
    args: &[String],
    limit: Duration,
    save: &Path,
) -> anyhow::Result<LoadtestResult> {
    let mut argv = vec![gateway_bin.display().to_string(), "loadtest".into()];
    argv.extend(args.iter().cloned());
    argv.extend(["-q".into(), "--json".into(), save.display().to_string()]);
    let _ = std::fs::remove_file(save);
    let out = run_in_unchecked(ns, &argv, limit)?;
    let json = std::fs::read_to_string(save).with_context(|| {
        format!(
            "`{}` wrote no summary:\n{}\n{}",
            argv.join(" "),
            out.stdout.trim(),
            out.stderr.trim()
        )
    })?;
    parse_loadtest(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://198.18.100.1/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.21us  312.12us  12.05ms   91.30%
    Req/Sec    13.20k     1.10k   15.01k    70.00%
  Latency Distribution
     50%  550.00us
     75%  700.00us
     90%  850.00us
     99%    1.52ms
  52801 requests in 2.00s, 12.10MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  26400.50
Transfer/sec:      6.05MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests_per_sec, 26400.5);
        assert_eq!(r.requests, 52801);
        assert_eq!(r.p50_us, 550.0);
        assert_eq!(r.p99_us, 1520.0);
        assert_eq!(r.errors, 6);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
        assert_eq!(duration_us("2.00s"), Some(2e6));
    }

    #[test]
    fn h2load_output_and_log_are_parsed() {
        let summary = "starting benchmark...\nfinished in 2.00s, 31000.50 req/s, 3.10MB/s\n\
            requests: 62001 total, 62001 started, 62001 done, 62000 succeeded, 1 failed, 1 errored, 0 timeout\n\
            status codes: 62000 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let mut log = String::new();
        for i in 1..=100 {
            log.push_str(&format!("1700000000{i:06}\t200\t{}\n", i * 10));
        }
        log.push_str("1700000000000000\t503\t999999\n");
        let r = parse_h2load(summary, &log).unwrap();
        assert_eq!(r.requests_per_sec, 31000.5);
        assert_eq!(r.requests, 62000);
        assert_eq!(r.errors, 2);
        assert_eq!(r.p50_us, 500.0);
        assert_eq!(r.p99_us, 990.0);
        assert!(parse_h2load(summary, "").is_err());
    }

    #[test]
    fn loadtest_json_is_parsed() {
        let j = r#"{"connections": 500, "exchanges": 500, "errors_total": 3, "elapsed_secs": 2.1,
            "errors": {"cancelled": 1, "timeout": 2},
            "duration_secs": 2.0, "bytes_sent": 1000000000, "bytes_received": 900000000,
            "latency_us": {"ttfb": {"p50": 120, "p99": 900, "count": 500}}}"#;
        let r = parse_loadtest(j).unwrap();
        assert_eq!(r.connections_per_sec(), 250.0);
        assert_eq!(r.one_way_gbps(), 4.0);
        assert_eq!((r.ttfb_p50_us, r.ttfb_p99_us), (120.0, 900.0));
        assert_eq!(r.errors, 2, "cancelled is not a failure");
        assert!(parse_loadtest("{}").is_err());
    }
}
