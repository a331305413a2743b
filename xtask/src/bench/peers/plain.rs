//! The baseline: no data plane at all. IP forwarding is switched on in the gateway namespace for the run (and
//! back off afterwards) and the client talks to the backend's own address; the kernel routes every packet.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{ensure, Context};
use gateway_tests::Netns;

use super::{Peer, PeerKind, Proto};

pub struct Plain<'a> {
    ns: &'a Netns,
    backend: Ipv4Addr,
}

impl<'a> Plain<'a> {
    pub fn start(ns: &'a Netns, backend: Ipv4Addr) -> anyhow::Result<Self> {
        ensure!(
            ns.sysctl("net.ipv4.ip_forward")? == "0",
            "ip_forward was already on in {}",
            ns.name()
        );
        ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        Ok(Plain { ns, backend })
    }
}

impl Drop for Plain<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.ns.set_sysctl("net.ipv4.ip_forward", "0") {
            eprintln!(
                "warning: switching ip_forward off again in {}: {e:#}",
                self.ns.name()
            );
        }
    }
}

/// `Ip: ForwDatagrams` of the namespace the calling thread is in.
pub fn forwarded_datagrams(ns: &Netns) -> anyhow::Result<u64> {
    let snmp = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .context("reading /proc/net/snmp")?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (
        ip.next().context("no Ip: header")?,
        ip.next().context("no Ip: values")?,
    );
    let col = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .context("no ForwDatagrams column")?;
    values
        .split_whitespace()
        .nth(col)
        .context("short Ip: line")?
        .parse()
        .context("ForwDatagrams")
}

impl Peer for Plain<'_> {
    fn kind(&self) -> PeerKind {
        PeerKind::Plain
    }
    fn target(&self) -> Ipv4Addr {
        self.backend
    }
    fn udp(&self) -> bool {
        true
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn traffic_counter(&self, _: Proto) -> anyhow::Result<u64> {
        forwarded_datagrams(self.ns)
    }
    fn counter_description(&self) -> &'static str {
        "`Ip: ForwDatagrams` of the gateway namespace (/proc/net/snmp)"
    }
    fn save_logs(&self, _: &Path) {}
}
