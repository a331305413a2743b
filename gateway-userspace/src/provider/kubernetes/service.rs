//! The LoadBalancer Service the leader keeps for each accepted Gateway ([`load_balancer_service`]) and the
//! addresses MetalLB gave it ([`gateway_status_addresses`]).
use serde_json::Value;

use super::str_at;

/// Labels on the agent pods (the DaemonSet's); a Gateway's LoadBalancer Service selects them.
pub const AGENT_SELECTOR: (&str, &str) = ("app.kubernetes.io/name", "ebpf-gateway");
/// Label marking the Services the leader manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ebpf-gateway");
/// Label naming the Gateway a managed Service belongs to (the label Gateway API implementations use).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// MetalLB annotation requesting specific addresses for a Service.
pub const METALLB_IPS_ANNOTATION: &str = "metallb.universe.tf/loadBalancerIPs";

/// FNV-1a, for stable short name suffixes.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The name of a Gateway's LoadBalancer Service: `ebpf-gw-<gateway>`, a valid Service name (DNS-1035 label:
/// at most 63 characters, no dots); long names are cut and end in a hash of the full name.
pub fn service_name(gateway_name: &str) -> String {
    let name = format!("ebpf-gw-{}", gateway_name.replace('.', "-"));
    if name.len() <= 63 {
        return name;
    }
    let cut = name[..54].trim_end_matches('-');
    format!("{cut}-{:08x}", fnv1a(gateway_name))
}

/// The LoadBalancer Service the leader keeps for an accepted Gateway (a JSON object for server-side apply):
/// one port per distinct listener (port, protocol) — UDP for UDP listeners, TCP otherwise; the Gateway's
/// `spec.infrastructure` labels and annotations passed through (so e.g. a MetalLB pool can be chosen); its
/// `IPAddress` `spec.addresses` requested from MetalLB; owned by the Gateway, so it is garbage-collected with it;
/// selecting the agents with `externalTrafficPolicy: Local`, so the address is announced from a node whose agent
/// is ready. `None` when the object has no name or uid (not from the API server), or no listener port (the API
/// server rejects a LoadBalancer Service without ports).
pub fn load_balancer_service(gateway: &Value) -> Option<Value> {
    let name = str_at(gateway, &["metadata", "name"])?;
    let uid = str_at(gateway, &["metadata", "uid"])?;
    let namespace = str_at(gateway, &["metadata", "namespace"]).unwrap_or("default");
    let mut ports: Vec<(u64, &str)> = Vec::new();
    for listener in gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(port) = listener["port"].as_u64() else {
            continue;
        };
        let protocol = if str_at(listener, &["protocol"]) == Some("UDP") {
            "UDP"
        } else {
            "TCP"
        };
        if !ports.contains(&(port, protocol)) {
            ports.push((port, protocol));
        }
    }
    if ports.is_empty() {
        return None;
    }
    ports.sort();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, protocol)| {
            serde_json::json!({
                "name": format!("{}-{port}", protocol.to_ascii_lowercase()),
                "port": port, "targetPort": port, "protocol": protocol,
            })
        })
        .collect();
    let infrastructure = &gateway["spec"]["infrastructure"];
    let mut labels = infrastructure["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(GATEWAY_NAME_LABEL.into(), name.into());
    let mut annotations = infrastructure["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let requested: Vec<&str> = gateway["spec"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| str_at(a, &["type"]).unwrap_or("IPAddress") == "IPAddress")
        .filter_map(|a| str_at(a, &["value"]))
        .collect();
    if !requested.is_empty() {
        annotations.insert(METALLB_IPS_ANNOTATION.into(), requested.join(",").into());
    }
    Some(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "allocateLoadBalancerNodePorts": false,
            "selector": { AGENT_SELECTOR.0: AGENT_SELECTOR.1 },
            "ports": ports,
        },
    }))
}

/// The addresses a LoadBalancer Service was given (`status.loadBalancer.ingress[].ip`), as Gateway
/// `status.addresses` entries.
pub fn gateway_status_addresses(service: &Value) -> Vec<Value> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| str_at(i, &["ip"]))
        .map(|ip| serde_json::json!({"type": "IPAddress", "value": ip}))
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn load_balancer_service_follows_the_gateway() {
        let gw = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "tls", "namespace": "web", "uid": "u-1"},
            "spec": {"gatewayClassName": "c",
                "infrastructure": {"annotations": {"metallb.universe.tf/address-pool": "edge"},
                                   "labels": {"team": "a"}},
                "addresses": [{"type": "IPAddress", "value": "192.168.1.240"},
                              {"type": "Hostname", "value": "gw.example.com"}],
                "listeners": [
                    {"name": "a", "protocol": "TLS", "port": 443},
                    {"name": "b", "protocol": "HTTPS", "port": 443},
                    {"name": "dns", "protocol": "UDP", "port": 53},
                    {"name": "dns-tcp", "protocol": "TCP", "port": 53}]}});
        let svc = load_balancer_service(&gw).unwrap();
        assert_eq!(svc["metadata"]["name"], "ebpf-gw-tls");
        assert_eq!(svc["metadata"]["namespace"], "web");
        assert_eq!(
            svc["metadata"]["annotations"],
            json!({
            "metallb.universe.tf/address-pool": "edge",
            "metallb.universe.tf/loadBalancerIPs": "192.168.1.240"})
        );
        assert_eq!(svc["metadata"]["labels"]["team"], "a");
        assert_eq!(svc["metadata"]["labels"][GATEWAY_NAME_LABEL], "tls");
        assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(svc["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            svc["spec"]["selector"],
            json!({"app.kubernetes.io/name": "ebpf-gateway"})
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([
            {"name": "tcp-53", "port": 53, "targetPort": 53, "protocol": "TCP"},
            {"name": "udp-53", "port": 53, "targetPort": 53, "protocol": "UDP"},
            {"name": "tcp-443", "port": 443, "targetPort": 443, "protocol": "TCP"}])
        );
        // No uid: not an API object, no Service.
        let mut no_uid = gw.clone();
        no_uid["metadata"].as_object_mut().unwrap().remove("uid");
        assert!(load_balancer_service(&no_uid).is_none());
        // No listener: no Service (one without ports is invalid).
        let mut no_listeners = gw.clone();
        no_listeners["spec"]["listeners"] = json!([]);
        assert!(load_balancer_service(&no_listeners).is_none());
    }

    #[test]
    fn service_names_are_valid_and_stable() {
        let long = "a".repeat(200);
        for gw in ["tls", "my.gateway", long.as_str(), &format!("{long}-other")] {
            let n = service_name(gw);
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.starts_with(|c: char| c.is_ascii_lowercase()) && !n.ends_with('-'),
                "{n}"
            );
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
            assert_eq!(n, service_name(gw));
        }
        assert_ne!(service_name(&long), service_name(&format!("{long}-other")));
    }

    #[test]
    fn status_addresses_come_from_the_service() {
        let svc = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.241"}, {"hostname": "x"}]}}});
        assert_eq!(
            gateway_status_addresses(&svc),
            [json!({"type": "IPAddress", "value": "192.168.1.241"})]
        );
        assert!(gateway_status_addresses(&json!({})).is_empty());
    }
}
