//! The kernel's TCP/IP counters of a namespace (`/proc/net/snmp` and `/proc/net/netstat`, what `nstat` reads),
//! snapshotted around a phase: the differences say where connections stalled (SYN retransmissions, challenge
//! ACKs from TIME_WAIT, listen-queue drops) when a rate is lower than expected.
use std::collections::BTreeMap;

use anyhow::Context;

use crate::Netns;

/// Counter name (`TcpExtTCPSynRetrans`, `TcpActiveOpens`, …) → value.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(BTreeMap<String, i64>);

impl Snapshot {
    /// The counters of `ns`, read from a thread inside it (`/proc/thread-self/net` is the thread's namespace).
    pub fn take(ns: &Netns) -> anyhow::Result<Self> {
        ns.run(|| -> anyhow::Result<Self> {
            let mut all = BTreeMap::new();
            for file in ["snmp", "netstat"] {
                let path = format!("/proc/thread-self/net/{file}");
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                parse_into(&text, &mut all);
            }
            Ok(Snapshot(all))
        })
    }

    /// One counter (0 if the kernel does not have it).
    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Counters that changed since `before`, by name.
    pub fn changes_since(&self, before: &Snapshot) -> BTreeMap<String, i64> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let d = v - before.0.get(k).copied().unwrap_or(0);
                (d != 0).then(|| (k.clone(), d))
            })
            .collect()
    }
}

/// Packets the machine dropped because a CPU's input backlog (`net.core.netdev_max_backlog`) was full, summed
/// over CPUs (`/proc/net/softnet_stat`, second column, hexadecimal). Veths deliver through that backlog in every
/// namespace, so a test moving a gigabyte elsewhere can make a churn test's SYN vanish: a test that counts
/// retransmissions checks this to tell the machine's drops from the gateway's.
pub fn backlog_drops() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")
        .context("reading /proc/net/softnet_stat")?;
    Ok(parse_backlog_drops(&text))
}

fn parse_backlog_drops(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .sum()
}

/// The files come in line pairs: `Tcp: Name1 Name2 …` then `Tcp: 1 2 …`.
fn parse_into(text: &str, out: &mut BTreeMap<String, i64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(prefix), Some(_)) = (names.next(), values.next()) else {
            continue;
        };
        let prefix = prefix.trim_end_matches(':');
        for (n, v) in names.zip(values) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{prefix}{n}"), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_drops_are_the_second_column_summed_over_cpus() {
        let text = "348490fe 0000005d 0000012a 00000000\n2e443219 00000010 0000013c 00000000\n";
        assert_eq!(parse_backlog_drops(text), 0x5d + 0x10);
    }

    #[test]
    fn pairs_of_lines_become_prefixed_names() {
        let mut out = BTreeMap::new();
        parse_into(
            "Tcp: RtoMin ActiveOpens\nTcp: 200 7\nTcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 3\n",
            &mut out,
        );
        assert_eq!(out["TcpActiveOpens"], 7);
        assert_eq!(out["TcpExtTCPSynRetrans"], 3);
        let before = Snapshot(out.clone());
        out.insert("TcpExtTCPSynRetrans".into(), 5);
        assert_eq!(
            Snapshot(out).changes_since(&before),
            BTreeMap::from([("TcpExtTCPSynRetrans".to_string(), 2)])
        );
    }
}
