//! The data planes measured side by side. Each is started alone in the gateway namespace, checked to carry
//! the traffic (a counter of its own must rise during every phase) and stopped — with everything it added to
//! the namespace removed — when its handle drops.
use std::{fmt, net::Ipv4Addr, path::Path};

use gateway_tests::Netns;

pub mod gateway;
pub mod haproxy;
pub mod nginx;
pub mod plain;

/// Which data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// Plain kernel forwarding (ip_forward=1, no gateway): the baseline.
    Plain,
    /// This project's gateway (eBPF TC path).
    Gateway,
    /// HAProxy 2.6, `mode tcp`, splice on.
    Haproxy,
    /// NGINX 1.22 `stream` (TCP and UDP).
    Nginx,
}

impl PeerKind {
    pub const ALL: [PeerKind; 4] = [
        PeerKind::Plain,
        PeerKind::Gateway,
        PeerKind::Haproxy,
        PeerKind::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Plain => "plain",
            PeerKind::Gateway => "gateway",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Nginx => "nginx",
        }
    }

    /// A longer description for the report.
    pub fn description(self) -> &'static str {
        match self {
            PeerKind::Plain => {
                "plain kernel forwarding (ip_forward=1, client → backend address; baseline)"
            }
            PeerKind::Gateway => "this gateway: eBPF TC program, full NAT, ip_forward=0",
            PeerKind::Haproxy => "HAProxy `mode tcp`, `option splice-auto`, nbthread 2",
            PeerKind::Nginx => "NGINX `stream` proxy (TCP and UDP), 2 workers",
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The transport of a measurement phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A running data plane.
pub trait Peer {
    fn kind(&self) -> PeerKind;
    /// Where the client sends its traffic.
    fn target(&self) -> Ipv4Addr;
    /// Whether it forwards UDP.
    fn udp(&self) -> bool;
    /// The data plane's own processes, for CPU accounting (empty for plain forwarding).
    fn pids(&self) -> Vec<u32>;
    /// A counter of the data plane's own that rises when it carries traffic of `proto`, and what it is.
    fn traffic_counter(&self, proto: Proto) -> anyhow::Result<u64>;
    fn counter_description(&self) -> &'static str;
    /// Counters of its own worth reporting for the whole run (name, value).
    fn run_counters(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Copies its configuration and logs to `dir` (raw run outputs).
    fn save_logs(&self, dir: &Path);
}

/// Every process currently in `ns` (the data plane's processes: nothing else runs in the gateway namespace).
pub fn ns_processes(ns: &Netns) -> Vec<u32> {
    ns.pids()
}
