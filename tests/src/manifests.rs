//! Gateway API YAML for tests: a Gateway on one address with TCP/UDP listeners, each optionally routed to a
//! Service whose EndpointSlice lists given backend addresses (standalone mode has no endpoints controller).
use std::{fmt::Write, net::Ipv4Addr};

/// The GatewayClass controller name the agent serves by default.
pub const CONTROLLER: &str = "ebpf-gateway.dev/gatewayclass-controller";

/// One L4 listener and where its route sends traffic.
#[derive(Clone, Debug)]
pub struct L4Listener {
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    pub port: u16,
    /// `(target port, endpoint addresses)` of the routed Service; `None`: no route attached.
    pub backend: Option<(u16, Vec<Ipv4Addr>)>,
}

impl L4Listener {
    pub fn tcp(name: &str, port: u16, target_port: u16, endpoints: &[Ipv4Addr]) -> Self {
        Self {
            name: name.into(),
            protocol: "TCP",
            port,
            backend: Some((target_port, endpoints.to_vec())),
        }
    }
    pub fn udp(name: &str, port: u16, target_port: u16, endpoints: &[Ipv4Addr]) -> Self {
        Self {
            name: name.into(),
            protocol: "UDP",
            port,
            backend: Some((target_port, endpoints.to_vec())),
        }
    }
    pub fn unrouted(name: &str, protocol: &'static str, port: u16) -> Self {
        Self {
            name: name.into(),
            protocol,
            port,
            backend: None,
        }
    }
}

/// A GatewayClass, a Gateway `infra/gw` on `address` with `listeners`, and per routed listener a
/// TCPRoute/UDPRoute, Service and EndpointSlice named after the listener.
pub fn l4_gateway(address: Ipv4Addr, listeners: &[L4Listener]) -> String {
    let mut y = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ebpf}}\nspec: {{controllerName: {CONTROLLER}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  gatewayClassName: ebpf\n  \
         addresses: [{{type: IPAddress, value: {address}}}]\n  listeners:\n"
    );
    for l in listeners {
        let _ = writeln!(
            y,
            "  - {{name: {}, protocol: {}, port: {}}}",
            l.name, l.protocol, l.port
        );
    }
    for l in listeners {
        let Some((target, endpoints)) = &l.backend else {
            continue;
        };
        let kind = if l.protocol == "UDP" {
            "UDPRoute"
        } else {
            "TCPRoute"
        };
        let eps: String = endpoints
            .iter()
            .map(|e| format!("  - addresses: [\"{e}\"]\n    conditions: {{ready: true}}\n"))
            .collect();
        let _ = write!(
            y,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {n}, namespace: infra}}\nspec:\n  \
             parentRefs: [{{name: gw, sectionName: {n}}}]\n  rules:\n  - backendRefs: [{{name: {n}, port: {target}}}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: infra}}\nspec:\n  \
             ports: [{{port: {target}, targetPort: {target}, protocol: {p}}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  namespace: infra\n  \
             labels: {{kubernetes.io/service-name: {n}}}\naddressType: IPv4\nports: [{{port: {target}, protocol: {p}}}]\nendpoints:\n{eps}",
            n = l.name,
            p = l.protocol,
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_parses_as_yaml() {
        let y = l4_gateway(
            Ipv4Addr::new(198, 18, 100, 1),
            &[
                L4Listener::tcp("tcp", 9000, 3000, &[Ipv4Addr::new(198, 18, 11, 2)]),
                L4Listener::udp(
                    "udp",
                    9001,
                    3001,
                    &[Ipv4Addr::new(198, 18, 11, 2), Ipv4Addr::new(198, 18, 12, 2)],
                ),
                L4Listener::unrouted("spare", "TCP", 9002),
            ],
        );
        let docs: Vec<serde_json::Value> = y
            .split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
            .collect();
        assert_eq!(docs.len(), 2 + 2 * 3);
        assert_eq!(docs[1]["spec"]["listeners"].as_array().unwrap().len(), 3);
        assert_eq!(docs[7]["endpoints"].as_array().unwrap().len(), 2);
    }
}
