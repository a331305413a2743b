//! This project's gateway: `gateway run --config <dir>` in the gateway namespace with a Gateway on
//! 198.18.100.1 whose TCP and UDP listeners route to the benchmark's backend. The kernel path forwards
//! (ip_forward stays 0); the agent only programs maps.
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
    pub fn start(ns: &'a Netns, vip: Ipv4Addr, backend: Ipv4Addr) -> anyhow::Result<Self> {
        ensure!(
            ns.sysctl("net.ipv4.ip_forward")? == "0",
            "ip_forward must stay 0 for the gateway's run"
        );
        let config = gateway_tests::netns::temp_dir("bench-gateway")?;
        std::fs::write(config.path().join("bench.yaml"), manifests(vip, backend))?;
        let process =
            GatewayProcess::start(ns, &[config.path()], &[]).context("starting the gateway")?;
        Ok(Gateway {
            ns,
            vip,
            process,
            config,
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
        PeerKind::Gateway
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
        Ok(kernel_packets(&m, "forwarded") + kernel_packets(&m, "replied"))
    }
    fn counter_description(&self) -> &'static str {
        "`gateway_kernel_packets_total{outcome=\"forwarded\"|\"replied\"}` from the agent's /metrics"
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
