//! iperf3 client runs in the client namespace (the server runs in the backend), bounded in time, parsed from
//! `--json`.
use std::{
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use gateway_tests::Netns;
use serde_json::Value;

use super::IPERF_PORT;

/// What an iperf3 run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct IperfResult {
    /// Received throughput (TCP), bit/s.
    pub bits_per_second: f64,
    /// UDP: datagrams received per second and the loss the receiver saw.
    pub received_pps: f64,
    pub loss_percent: f64,
}

pub enum Mode {
    Tcp { streams: u32 },
    Udp { datagram: u32, rate: &'static str },
}

/// Runs `iperf3 -c target` for `secs` seconds from `ns`; returns the result and the raw JSON.
pub fn run(
    ns: &Netns,
    target: Ipv4Addr,
    mode: &Mode,
    secs: u64,
) -> anyhow::Result<(IperfResult, String)> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns.name(),
        "iperf3",
        "--json",
        "--connect-timeout",
        "3000",
        "-c",
    ])
    .arg(target.to_string())
    .args(["-p", &IPERF_PORT.to_string(), "-t", &secs.to_string()]);
    match mode {
        Mode::Tcp { streams } => cmd.args(["-P", &streams.to_string()]),
        Mode::Udp { datagram, rate } => cmd.args(["-u", "-l", &datagram.to_string(), "-b", rate]),
    };
    let line = crate::cmd::describe(&cmd);
    // Output goes to files, not pipes: a pipe left unread while waiting would block iperf3 once full.
    let (mut stdout, mut stderr) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .context("starting iperf3")?;
    // Bounded: the run plus generous start-up and result exchange.
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish in {} s", secs + 20);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut json, mut err) = (String::new(), String::new());
    stdout.seek(SeekFrom::Start(0))?;
    stdout.read_to_string(&mut json)?;
    stderr.seek(SeekFrom::Start(0))?;
    stderr.read_to_string(&mut err)?;
    let v: Value = serde_json::from_str(&json)
        .with_context(|| format!("`{line}` printed no JSON ({status})"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("`{line}`: {e}");
    }
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", err.trim());
    }
    Ok((parse(&v, mode)?, json))
}

fn parse(v: &Value, mode: &Mode) -> anyhow::Result<IperfResult> {
    let end = v.get("end").context("no `end` in iperf3's JSON")?;
    let f = |section: &str, key: &str| -> anyhow::Result<f64> {
        end.get(section)
            .and_then(|s| s.get(key))
            .and_then(Value::as_f64)
            .with_context(|| format!("no end.{section}.{key} in iperf3's JSON"))
    };
    Ok(match mode {
        Mode::Tcp { .. } => IperfResult {
            bits_per_second: f("sum_received", "bits_per_second")?,
            ..Default::default()
        },
        Mode::Udp { datagram, .. } => {
            let secs = f("sum_received", "seconds")?.max(1e-3);
            let received = f("sum_received", "bytes")? / *datagram as f64;
            IperfResult {
                bits_per_second: f("sum_received", "bits_per_second")?,
                received_pps: received / secs,
                loss_percent: f("sum", "lost_percent")?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_json_is_parsed() {
        let v: Value = serde_json::from_str(
            r#"{"end":{"sum":{"lost_percent":67.3},"sum_received":{"seconds":2.0,"bytes":6400,"bits_per_second":25600}}}"#,
        )
        .unwrap();
        let r = parse(
            &v,
            &Mode::Udp {
                datagram: 64,
                rate: "1G",
            },
        )
        .unwrap();
        assert_eq!(r.received_pps, 50.0);
        assert_eq!(r.loss_percent, 67.3);
    }
}
