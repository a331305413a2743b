//! The benchmark's topology: the harness's client → gateway → one backend, with the load generator's
//! servers and an iperf3 server in the backend. Everything is removed when it drops (namespaces, veths,
//! processes, threads).
use std::net::Ipv4Addr;

use anyhow::Context;
use gateway_tests::{topology, Netns, Process, Topology};

use super::{loadgen::Servers, IPERF_PORT};

pub struct BenchTopology {
    // Drop order: servers and iperf3 before the namespaces.
    pub servers: Servers,
    pub iperf_server: Process,
    pub topo: Topology,
}

impl BenchTopology {
    pub fn build() -> anyhow::Result<Self> {
        // Checksum offload stays on (the default of veths, and what a real deployment has): this measures
        // performance, not checksum correctness.
        let topo = Topology::builder()
            .backends(1)
            .tx_checksum_offload_off(false)
            .build()
            .context("creating the topology")?;
        // The client opens tens of thousands of short connections per run: a wide port range and TIME_WAIT
        // reuse keep it from running out of ports (per-namespace sysctls, this namespace only).
        topo.client()
            .set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        topo.client().set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        // Connection-rate phases leave the client tens of thousands of TIME_WAIT sockets (a client that closes
        // first keeps them 60 s); with them every connect(2) of the next phase scans the port space under locks
        // (`__inet_hash_connect`: 60% of the machine in a profile, the next phase's rate collapsing). Capping them
        // in the client's namespace keeps phases independent; nothing measured depends on the client's TIME_WAIT.
        topo.client()
            .set_sysctl("net.ipv4.tcp_max_tw_buckets", "4096")?;
        // In the gateway namespace, where the proxies open their upstream connections: a proxy that closes first
        // keeps each upstream port in TIME_WAIT for 60 s, which capped every proxy at ~470 new connections per
        // second in `bench tls`; TIME_WAIT reuse lifts that. The port range stays above the eBPF gateway's SNAT
        // range (10000–32767): the backend still holds TIME_WAITs of the gateway's flows from its run, and a
        // proxy reusing one of those 4-tuples right after it got its SYN answered by a challenge ACK and waited
        // a second (HAProxy fell from ~15 000 to ~2 900 connections/s when it ran after the gateway).
        topo.gateway()
            .set_sysctl("net.ipv4.ip_local_port_range", "32768 65535")?;
        topo.gateway().set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        // With `--cores split`: the gateway namespace's receive processing on the data plane's CPU, the
        // client's and backend's on the load's.
        super::cores::steer_topology(topo.gateway(), &[topo.client(), topo.backend(1)])
            .context("steering receive processing")?;
        let servers = Servers::start(topo.backend(1))?;
        let iperf_server = spawn_iperf_server(topo.backend(1))?;
        Ok(BenchTopology {
            servers,
            iperf_server,
            topo,
        })
    }

    pub fn client(&self) -> &Netns {
        self.topo.client()
    }

    pub fn backend(&self) -> &Netns {
        self.topo.backend(1)
    }

    pub fn gateway(&self) -> &Netns {
        self.topo.gateway()
    }

    /// Connections accepted so far by the load generator's servers in the backend.
    pub fn backend_accepted(&self) -> u64 {
        self.servers
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn backend_addr(&self) -> Ipv4Addr {
        self.topo.backend_addr(1)
    }

    pub fn vip(&self) -> Ipv4Addr {
        topology::vip(1)
    }

    /// Checks, after a data plane stopped, that the gateway namespace is back to its neutral state: no
    /// forwarding, no Gateway address on `lo`, no process.
    pub fn check_clean(&self) -> anyhow::Result<()> {
        let ns = self.gateway();
        anyhow::ensure!(
            ns.sysctl("net.ipv4.ip_forward")? == "0",
            "ip_forward was left on in the gateway namespace"
        );
        let addrs = ns.ip(&["-4", "addr", "show", "dev", "lo"])?;
        anyhow::ensure!(
            !addrs.contains(&self.vip().to_string()),
            "the Gateway address was left on lo"
        );
        let left = ns.pids();
        anyhow::ensure!(
            left.is_empty(),
            "processes left in the gateway namespace: {left:?}"
        );
        Ok(())
    }

    /// Removes the backend's TIME_WAIT sockets (`ss -K`), so that one data plane's closed connections do not
    /// refuse the next one's SYNs on the same 4-tuples.
    pub fn forget_backend_time_waits(&self) -> anyhow::Result<()> {
        // `ss -K` prints what it killed; a "RTNETLINK answers" complaint about sockets it may not kill is harmless.
        let _ = self
            .backend()
            .exec_output(&["ss", "-K", "-t", "state", "time-wait"])
            .context("ss -K state time-wait in the backend")?;
        Ok(())
    }

    /// Restarts the iperf3 server (after a client run that failed half-way and may have left it busy).
    pub fn restart_iperf_server(&mut self) -> anyhow::Result<()> {
        let _ = self.iperf_server.kill();
        self.iperf_server = spawn_iperf_server(self.topo.backend(1))?;
        Ok(())
    }
}

/// GRO on the client's and the backend's veth for one data plane's run, turned off again on drop. A veth takes
/// frames redirected by XDP only when its receiving end runs NAPI, which GRO turns on (docs/l4.md, XDP mode).
pub struct PeerGro<'a> {
    namespaces: [&'a Netns; 2],
}

impl BenchTopology {
    pub fn peer_gro(&self) -> anyhow::Result<PeerGro<'_>> {
        let namespaces = [self.client(), self.backend()];
        for ns in namespaces {
            ns.exec(&["ethtool", "-K", "eth0", "gro", "on"])
                .context("ethtool -K eth0 gro on")?;
        }
        Ok(PeerGro { namespaces })
    }
}

impl Drop for PeerGro<'_> {
    fn drop(&mut self) {
        for ns in self.namespaces {
            if let Err(e) = ns.exec(&["ethtool", "-K", "eth0", "gro", "off"]) {
                eprintln!("warning: turning GRO off again in {}: {e:#}", ns.name());
            }
        }
    }
}

fn spawn_iperf_server(ns: &Netns) -> anyhow::Result<Process> {
    let port = IPERF_PORT.to_string();
    let mut p = ns.spawn(&["iperf3", "-s", "-p", &port])?;
    // iperf3 prints its banner once it listens.
    for _ in 0..100 {
        if gateway_tests::sockets::listening_sockets(ns, IPERF_PORT)
            .map(|s| !s.is_empty())
            .unwrap_or(false)
        {
            return Ok(p);
        }
        if let Some(st) = p.try_wait()? {
            anyhow::bail!("iperf3 -s exited ({st}): {}", p.log_tail(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::bail!("iperf3 -s did not listen on {IPERF_PORT}")
}

/// The Gateway address on the gateway namespace's `lo`, for the proxies' runs only (the eBPF gateway and plain
/// forwarding must not have it); removed on drop.
pub struct VipOnLo<'a> {
    ns: &'a Netns,
    cidr: String,
}

impl<'a> VipOnLo<'a> {
    pub fn add(ns: &'a Netns, vip: Ipv4Addr) -> anyhow::Result<Self> {
        let cidr = format!("{vip}/32");
        ns.ip(&["addr", "add", &cidr, "dev", "lo"])
            .with_context(|| format!("adding {cidr} to lo"))?;
        Ok(VipOnLo { ns, cidr })
    }
}

impl Drop for VipOnLo<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.ns.ip(&["addr", "del", &self.cidr, "dev", "lo"]) {
            eprintln!(
                "warning: removing {} from lo in {}: {e:#}",
                self.cidr,
                self.ns.name()
            );
        }
    }
}
