//! This project's gateway: `gateway run --config <dir>` in the gateway namespace with a Gateway on
//! 198.18.100.1. For l4 its TCP and UDP listeners route to the benchmark's backend and the kernel path forwards
//! (ip_forward stays 0; the agent only programs maps); for tls a Passthrough TLS listener routes by SNI
//! ([`tls_manifests`]); for http an HTTP listener serves an HTTPRoute ([`http_manifests`]).
use std::{net::Ipv4Addr, path::Path};

use anyhow::{ensure, Context};
use gateway_tests::{GatewayProcess, Netns};

use super::{Peer, PeerKind, Proto};
use crate::bench::{loadgen, IPERF_PORT};

pub struct Gateway<'a> {
    ns: &'a Netns,
    vip: Ipv4Addr,
    process: GatewayProcess<'a>,
    config: tempfile::TempDir,
    counter: Counter,
    kind: PeerKind,
    /// GRO on the peers' veths while the XDP column runs.
    _peer_gro: Option<crate::bench::topology::PeerGro<'a>>,
}

/// Which of the agent's metrics proves that it carried a phase's traffic.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// `gateway_kernel_packets_total{outcome="forwarded"|"replied"}` (the eBPF path).
    KernelPackets,
    /// `gateway_kernel_packets_total{outcome="xdp_forwarded"}`: the XDP fast path itself.
    XdpPackets,
    /// Every series of this counter summed, e.g. `gateway_tls_passthrough_connections_total`.
    Sum(&'static str),
}

/// How the gateway serves a TLS Passthrough listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughPath {
    /// The userspace proxy (`gateway-userspace/src/passthrough/`): the default today.
    Userspace,
    /// The in-kernel splice, selected by the Gateway annotation [`KERNEL_PATH_ANNOTATION`]: `kernel` (see
    /// docs/kernel-tls-passthrough.md).
    Kernel,
}

/// The Gateway annotation that selects the TLS passthrough path.
pub const KERNEL_PATH_ANNOTATION: &str = "gateway.ebpf.dev/tls-passthrough";

/// The GatewayClass, the Gateway (with `annotations`, a YAML flow mapping's contents) with `listeners` (YAML
/// list items), and `rest` (routes, services...).
fn gateway_yaml(vip: Ipv4Addr, annotations: &str, listeners: &str, rest: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ebpf}}\n\
         spec: {{controllerName: ebpf-gateway.dev/gatewayclass-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: bench, namespace: bench, annotations: {{{annotations}}}}}\nspec:\n  \
         gatewayClassName: ebpf\n  addresses: [{{type: IPAddress, value: {vip}}}]\n  listeners:\n{listeners}{rest}"
    )
}

/// A Service `backend` with one port and its EndpointSlice with one endpoint.
fn backend_service(port: u16, target_port: u16, backend: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: bench}}\nspec:\n  \
         ports: [{{port: {port}, targetPort: {target_port}, protocol: TCP}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: backend-1\n  namespace: bench\n  \
         labels: {{kubernetes.io/service-name: backend}}\naddressType: IPv4\nports: [{{port: {target_port}, protocol: TCP}}]\n\
         endpoints:\n- addresses: [\"{backend}\"]\n  conditions: {{ready: true}}\n"
    )
}

/// tls: a Passthrough TLS listener on `port` and a TLSRoute for `snis` to the backend's `backend_port`.
pub fn tls_manifests(
    vip: Ipv4Addr,
    port: u16,
    snis: &[&str],
    backend: Ipv4Addr,
    backend_port: u16,
    path: PassthroughPath,
) -> String {
    let annotations = match path {
        PassthroughPath::Userspace => String::new(),
        PassthroughPath::Kernel => format!("{KERNEL_PATH_ANNOTATION}: kernel"),
    };
    let listeners =
        format!("  - {{name: tls, protocol: TLS, port: {port}, tls: {{mode: Passthrough}}}}\n");
    let hostnames: Vec<String> = snis.iter().map(|s| format!("\"{s}\"")).collect();
    let route = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: bench, namespace: bench}}\n\
         spec:\n  parentRefs: [{{name: bench, sectionName: tls}}]\n  hostnames: [{}]\n  rules:\n  \
         - backendRefs: [{{name: backend, port: {port}}}]\n",
        hostnames.join(", ")
    );
    gateway_yaml(
        vip,
        &annotations,
        &listeners,
        &(route + &backend_service(port, backend_port, backend)),
    )
}

/// http: HTTP listeners on `ports` (the proxy serves HTTP/1.1 and h2c on each) and one HTTPRoute attached to
/// all of them for any host name, prefix `/`, to the backend's `backend_port`.
pub fn http_manifests(
    vip: Ipv4Addr,
    ports: &[u16],
    backend: Ipv4Addr,
    backend_port: u16,
) -> String {
    let listeners: String = ports
        .iter()
        .map(|p| format!("  - {{name: http-{p}, protocol: HTTP, port: {p}}}\n"))
        .collect();
    let port = ports[0];
    let route = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bench, namespace: bench}}\n\
         spec:\n  parentRefs: [{{name: bench}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: backend, port: {port}}}]\n"
    );
    gateway_yaml(
        vip,
        "",
        &listeners,
        &(route + &backend_service(port, backend_port, backend)),
    )
}

/// The sum of every series of the counter `name` in a Prometheus text page.
pub fn counter_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Gateway API objects: one Gateway with a listener per benchmark port, each routed to the backend.
pub fn manifests(vip: Ipv4Addr, backend: Ipv4Addr) -> String {
    let tcp_ports = [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT];
    let mut listeners = String::new();
    let mut routes = String::new();
    let mut service_ports = String::new();
    let mut slice_ports = String::new();
    let all = tcp_ports
        .iter()
        .map(|&p| ("TCP", p))
        .chain(std::iter::once(("UDP", IPERF_PORT)));
    for (proto, port) in all {
        let name = format!("{}-{port}", proto.to_lowercase());
        let kind = if proto == "TCP" {
            "TCPRoute"
        } else {
            "UDPRoute"
        };
        listeners.push_str(&format!(
            "  - {{name: {name}, protocol: {proto}, port: {port}}}\n"
        ));
        routes.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: bench}}\n\
             spec:\n  parentRefs: [{{name: bench, sectionName: {name}}}]\n  rules:\n  - backendRefs: [{{name: backend, port: {port}}}]\n"
        ));
        service_ports.push_str(&format!(
            "  - {{name: {name}, port: {port}, targetPort: {port}, protocol: {proto}}}\n"
        ));
        slice_ports.push_str(&format!(
            "  - {{name: {name}, port: {port}, protocol: {proto}}}\n"
        ));
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ebpf}}\n\
         spec: {{controllerName: ebpf-gateway.dev/gatewayclass-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  \
         gatewayClassName: ebpf\n  addresses: [{{type: IPAddress, value: {vip}}}]\n  listeners:\n{listeners}{routes}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: bench}}\nspec:\n  ports:\n{service_ports}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: backend-1\n  namespace: bench\n  \
         labels: {{kubernetes.io/service-name: backend}}\naddressType: IPv4\nports:\n{slice_ports}endpoints:\n\
         - addresses: [\"{backend}\"]\n  conditions: {{ready: true}}\n"
    )
}

impl<'a> Gateway<'a> {
    /// l4: TCP and UDP listeners served by the kernel path.
    pub fn start(ns: &'a Netns, vip: Ipv4Addr, backend: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_with(ns, vip, manifests(vip, backend), Counter::KernelPackets)
    }

    /// l4 with the XDP fast path on the gateway's interfaces towards the client and the backend; `peer_gro`
    /// is held for the run.
    pub fn start_xdp(
        bt: &'a crate::bench::topology::BenchTopology,
        peer_gro: crate::bench::topology::PeerGro<'a>,
    ) -> anyhow::Result<Self> {
        let (vip, backend) = (bt.vip(), bt.backend_addr());
        let mut g = Self::launch(
            bt.gateway(),
            vip,
            manifests(vip, backend),
            Counter::XdpPackets,
            &["--xdp", "eth0", "--xdp", "bk1"],
        )?;
        g.kind = PeerKind::GatewayXdp;
        g._peer_gro = Some(peer_gro);
        Ok(g)
    }

    /// Runs the agent with `manifests`; `counter` proves it carried traffic.
    pub fn start_with(
        ns: &'a Netns,
        vip: Ipv4Addr,
        manifests: String,
        counter: Counter,
    ) -> anyhow::Result<Self> {
        Self::launch(ns, vip, manifests, counter, &[])
    }

    fn launch(
        ns: &'a Netns,
        vip: Ipv4Addr,
        manifests: String,
        counter: Counter,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        ensure!(
            ns.sysctl("net.ipv4.ip_forward")? == "0",
            "ip_forward must stay 0 for the gateway's run"
        );
        let config = gateway_tests::netns::temp_dir("bench-gateway")?;
        std::fs::write(config.path().join("bench.yaml"), manifests)?;
        // No per-request access log, like the proxies' configurations (`access_log off` for NGINX, none for
        // Envoy and HAProxy): the comparison is of forwarding, not of logging.
        // As many runtime and HTTP worker threads as the data plane has CPUs (`cores`), like the proxies.
        let threads = super::super::cores::dataplane_threads().to_string();
        let mut process = GatewayProcess::spawn_with_env(
            ns,
            &[config.path()],
            extra_args,
            &[
                ("RUST_LOG", "info,access=off"),
                ("TOKIO_WORKER_THREADS", &threads),
                ("GATEWAY_HTTP_WORKERS", &threads),
            ],
        )
        .context("starting the gateway")?;
        process
            .wait_ready(gateway_tests::gateway::READY_TIMEOUT)
            .context("the gateway did not become ready")?;
        Ok(Gateway {
            ns,
            vip,
            process,
            config,
            counter,
            kind: PeerKind::Gateway,
            _peer_gro: None,
        })
    }

    /// `GET /metrics` on the admin endpoint.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.process.admin_get("/metrics")?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(body)
    }
}

/// The value of `gateway_kernel_packets_total{outcome="<outcome>"}` in a Prometheus text page.
pub fn kernel_packets(metrics: &str, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("gateway_kernel_packets_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

impl Peer for Gateway<'_> {
    fn kind(&self) -> PeerKind {
        self.kind
    }
    fn target(&self) -> Ipv4Addr {
        self.vip
    }
    fn udp(&self) -> bool {
        true
    }
    fn pids(&self) -> Vec<u32> {
        super::ns_processes(self.ns)
    }
    fn traffic_counter(&self, _: Proto) -> anyhow::Result<u64> {
        let m = self.metrics()?;
        Ok(match self.counter {
            Counter::KernelPackets => {
                kernel_packets(&m, "forwarded") + kernel_packets(&m, "replied")
            }
            Counter::XdpPackets => kernel_packets(&m, "xdp_forwarded"),
            Counter::Sum(name) => counter_sum(&m, name),
        })
    }
    fn counter_description(&self) -> &'static str {
        match self.counter {
            Counter::KernelPackets => {
                "`gateway_kernel_packets_total{outcome=\"forwarded\"|\"replied\"}` from the agent's /metrics"
            }
            Counter::XdpPackets => {
                "`gateway_kernel_packets_total{outcome=\"xdp_forwarded\"}` from the agent's /metrics (the XDP path)"
            }
            Counter::Sum(name) => name,
        }
    }
    fn run_counters(&self) -> Vec<(String, f64)> {
        // The agent starts with fresh maps every run (its own bpffs root), so these are this run's totals.
        let Ok(m) = self.metrics() else {
            return Vec::new();
        };
        m.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("gateway_kernel_packets_total{outcome=\"")?;
                let (outcome, value) = rest.split_once("\"}")?;
                Some((
                    format!("gateway_kernel_{outcome}"),
                    value.trim().parse::<f64>().ok()?,
                ))
            })
            .collect()
    }
    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::copy(
            self.config.path().join("bench.yaml"),
            dir.join("gateway.yaml"),
        );
        let _ = std::fs::write(dir.join("gateway.log"), self.process.log());
        if let Ok(m) = self.metrics() {
            let _ = std::fs::write(dir.join("gateway-metrics.txt"), m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packets_are_parsed() {
        let m = "# HELP x\ngateway_kernel_packets_total{outcome=\"forwarded\"} 84\n\
                 gateway_kernel_packets_total{outcome=\"replied\"} 71\ngateway_kernel_flows_admitted_total 19\n";
        assert_eq!(kernel_packets(m, "forwarded"), 84);
        assert_eq!(kernel_packets(m, "replied"), 71);
        assert_eq!(kernel_packets(m, "table_full"), 0);
    }

    #[test]
    fn counters_are_summed_over_series() {
        let m = "# TYPE gateway_tls_passthrough_connections counter\n\
                 gateway_tls_passthrough_connections_total{listener=\"a\",outcome=\"routed\",reason=\"\"} 5\n\
                 gateway_tls_passthrough_connections_total{listener=\"a\",outcome=\"rejected\",reason=\"no_sni\"} 2\n\
                 gateway_tls_passthrough_connections_total_other 100\n";
        assert_eq!(
            counter_sum(m, "gateway_tls_passthrough_connections_total"),
            7
        );
    }

    #[test]
    fn tls_and_http_manifests_parse() {
        let vip = Ipv4Addr::new(198, 18, 100, 1);
        let be = Ipv4Addr::new(198, 18, 11, 2);
        let docs = |y: &str| -> Vec<serde_json::Value> {
            y.split("\n---\n")
                .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
                .collect()
        };
        let t = docs(&tls_manifests(
            vip,
            443,
            &["a.example.com", "b.example.com"],
            be,
            8443,
            PassthroughPath::Userspace,
        ));
        assert_eq!(t.len(), 5);
        assert_eq!(t[1]["spec"]["listeners"][0]["tls"]["mode"], "Passthrough");
        assert!(t[1]["metadata"]["annotations"][KERNEL_PATH_ANNOTATION].is_null());
        assert_eq!(t[2]["kind"], "TLSRoute");
        assert_eq!(t[2]["spec"]["hostnames"][1], "b.example.com");
        assert_eq!(t[4]["ports"][0]["port"], 8443);
        let k = docs(&tls_manifests(
            vip,
            443,
            &["a"],
            be,
            8443,
            PassthroughPath::Kernel,
        ));
        assert_eq!(
            k[1]["metadata"]["annotations"][KERNEL_PATH_ANNOTATION],
            "kernel"
        );
        let h = docs(&http_manifests(vip, &[80, 81], be, 8080));
        assert_eq!(h[1]["spec"]["listeners"][1]["port"], 81);
        assert_eq!(h[2]["kind"], "HTTPRoute");
        assert_eq!(
            h[2]["spec"]["rules"][0]["matches"][0]["path"]["type"],
            "PathPrefix"
        );
        assert_eq!(h[3]["spec"]["ports"][0]["targetPort"], 8080);
    }

    #[test]
    fn manifests_name_every_port() {
        let y = manifests(
            Ipv4Addr::new(198, 18, 100, 1),
            Ipv4Addr::new(198, 18, 11, 2),
        );
        for p in ["tcp-5201", "udp-5201", "tcp-7000", "tcp-7001"] {
            assert!(y.contains(p), "{p} missing in\n{y}");
        }
    }
}
