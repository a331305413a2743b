//! The Gateway API conformance TCPRoute and UDPRoute cases, with traffic, through the kernel path: each test
//! loads the official manifest (plus base manifests), runs its Deployments as echo backends in namespaces and
//! checks what the conformance suite checks, with real clients in the client namespace.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use anyhow::{ensure, Result};
use gateway_tests::{
    clients::{self, deployment_of},
    conformance::{ConformanceRun, Plan},
};

const INFRA: &str = "gateway-conformance-infra";

/// Local ports the spreads send from, a fresh block per call: flows hash the same on every run, so the weight
/// checks are reproducible rather than right 98% of the time.
fn local_ports(n: usize) -> std::ops::Range<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(40_000);
    let n = u16::try_from(n).expect("a few hundred flows");
    let start = NEXT.fetch_add(n, Ordering::Relaxed);
    start..start + n
}

/// Deployments answering `n` new TCP connections (`concurrency` at a time).
fn tcp_spread(
    run: &ConformanceRun,
    target: SocketAddr,
    n: usize,
    concurrency: usize,
) -> Result<BTreeMap<String, usize>> {
    let per_thread = n / concurrency;
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let ports = local_ports(per_thread);
            run.topology()
                .client()
                .spawn_thread(move || -> Result<Vec<String>> {
                    ports
                        .map(|port| Ok(clients::tcp_echo_test_from(target, port)?.pod))
                        .collect()
                })
        })
        .collect::<Result<_>>()?;
    let mut seen = BTreeMap::new();
    for h in handles {
        for pod in h.join().expect("client thread")? {
            *seen.entry(deployment_of(&pod).to_string()).or_default() += 1;
        }
    }
    Ok(seen)
}

/// Deployments answering `n` datagrams, each from a new local port (a new flow).
fn udp_spread(
    run: &ConformanceRun,
    target: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>> {
    let ports = local_ports(n);
    run.topology().client().run(move || {
        let mut seen = BTreeMap::new();
        for port in ports {
            let reply = clients::udp_echo_from(target, port, &format!("hello {port}"))?;
            *seen
                .entry(deployment_of(&reply.pod).to_string())
                .or_default() += 1;
        }
        Ok(seen)
    })
}

fn assert_share(seen: &BTreeMap<String, usize>, deployment: &str, expected: f64) {
    let total: usize = seen.values().sum();
    let share = *seen.get(deployment).unwrap_or(&0) as f64 / total as f64;
    assert!(
        (share - expected).abs() <= 0.05,
        "{deployment}: {share:.3} of {total}, expected {expected} ± 0.05 ({seen:?})"
    );
}

fn refused(run: &ConformanceRun, target: SocketAddr) -> bool {
    let r = run
        .topology()
        .client()
        .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)));
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn no_udp_answer(run: &ConformanceRun, target: SocketAddr) -> Result<bool> {
    run.topology().client().run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.send_to(b"anyone?", target)?;
        let mut buf = [0u8; 1024];
        Ok(s.recv_from(&mut buf).is_err())
    })
}

#[test]
fn tcproute_parentref_port_and_section_name() -> Result<()> {
    let plan = Plan::load("tcproute-parentref-port-and-section-name.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    for (port, deployment) in [
        (9300, "tcp-echo-one"),
        (9301, "tcp-echo-two"),
        (9302, "tcp-echo-three"),
    ] {
        let seen = tcp_spread(
            &run,
            run.target(INFRA, "tcp-multi-listener-gateway", port),
            5,
            1,
        )?;
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            vec![deployment],
            "port {port}"
        );
    }
    Ok(())
}

#[test]
fn tcproute_parentref_attach_all() -> Result<()> {
    let plan = Plan::load("tcproute-parentref-attach-all.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    for port in 9310..=9313 {
        let seen = tcp_spread(
            &run,
            run.target(INFRA, "tcp-attach-all-gateway", port),
            3,
            1,
        )?;
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            vec!["tcp-echo-attach-all"],
            "port {port}"
        );
    }
    Ok(())
}

#[test]
fn tcproute_multiple_routes_attachment() -> Result<()> {
    let plan = Plan::load("tcproute-multiple-routes-attachment.yaml")?;
    let topo = plan.topology()?;
    let mut run = plan.start(&topo)?;
    run.wait_route_condition(
        "TCPRoute",
        INFRA,
        "tcproute-attach-older",
        "Accepted",
        "Accepted",
        Duration::from_secs(10),
    )?;
    // The conformance test creates the newer route after the older one is accepted.
    run.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\nmetadata: {name: tcproute-attach-newer, namespace: gateway-conformance-infra}\n\
         spec:\n  parentRefs: [{name: tcp-multi-route-attach-gateway, sectionName: tcp}]\n  rules:\n  - backendRefs: [{name: tcp-attach-backend-2, port: 3000}]\n",
    )?;
    run.wait_route_condition(
        "TCPRoute",
        INFRA,
        "tcproute-attach-newer",
        "Accepted",
        "Accepted",
        Duration::from_secs(10),
    )?;
    let seen = tcp_spread(
        &run,
        run.target(INFRA, "tcp-multi-route-attach-gateway", 9310),
        100,
        4,
    )?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["tcp-attach-backend-1"],
        "the oldest route gets all traffic"
    );
    Ok(())
}

#[test]
fn tcproute_weighted_routing() -> Result<()> {
    let plan = Plan::load("tcproute-weighted-routing.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    let seen = tcp_spread(
        &run,
        run.target(INFRA, "tcp-weighted-gateway", 9300),
        500,
        10,
    )?;
    assert_eq!(seen.len(), 2, "exactly two backends: {seen:?}");
    assert_share(&seen, "tcp-backend-v1", 0.70);
    assert_share(&seen, "tcp-backend-v2", 0.30);
    assert!(
        !seen.contains_key("tcp-backend-v3"),
        "weight 0 gets nothing"
    );
    Ok(())
}

#[test]
fn tcproute_reference_grant() -> Result<()> {
    let plan = Plan::load("tcproute-reference-grant.yaml")?;
    let topo = plan.topology()?;
    let mut run = plan.start(&topo)?;
    let target = run.target(INFRA, "tcp-reference-grant-gateway", 9320);
    let reply = run
        .topology()
        .client()
        .run(|| clients::tcp_echo_test(target))?;
    assert_eq!(reply.namespace, "gateway-conformance-web-backend");
    assert!(reply.pod.starts_with("tcp-reference-grant-backend-"));
    // Revoking the grant revokes the traffic.
    run.delete(
        "ReferenceGrant",
        "gateway-conformance-web-backend",
        "tcp-reference-grant",
    )?;
    run.wait_route_condition(
        "TCPRoute",
        INFRA,
        "tcp-reference-grant",
        "ResolvedRefs",
        "RefNotPermitted",
        Duration::from_secs(10),
    )?;
    ensure!(
        refused(&run, target),
        "connections are refused once the grant is gone"
    );
    Ok(())
}

#[test]
fn tcproute_invalid_backendref_nonexistent() -> Result<()> {
    let plan = Plan::load("tcproute-invalid-backendref-nonexistent.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    run.wait_route_condition(
        "TCPRoute",
        INFRA,
        "tcp-route-invalid-backend-ref-nonexistent",
        "ResolvedRefs",
        "BackendNotFound",
        Duration::from_secs(10),
    )?;
    assert!(refused(
        &run,
        run.target(INFRA, "tcp-gateway-invalid-backend", 9300)
    ));
    Ok(())
}

#[test]
fn udproute_parentref_port_and_section_name() -> Result<()> {
    let plan = Plan::load("udproute-parentref-port-and-section-name.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    for (port, deployment) in [
        (5300, "udp-echo-by-port"),
        (5301, "udp-echo-by-section"),
        (5302, "udp-echo-by-section-and-port"),
    ] {
        let seen = udp_spread(
            &run,
            run.target(INFRA, "udp-multi-listener-gateway", port),
            3,
        )?;
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            vec![deployment],
            "port {port}"
        );
    }
    Ok(())
}

#[test]
fn udproute_parentref_attach_all_listeners() -> Result<()> {
    let plan = Plan::load("udproute-parentref-attach-all-listeners.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    for port in 5310..=5312 {
        let seen = udp_spread(
            &run,
            run.target(INFRA, "udp-attach-all-listeners-gateway", port),
            3,
        )?;
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            vec!["udp-echo-attach-all"],
            "port {port}"
        );
    }
    Ok(())
}

#[test]
fn udproute_multiple_routes_attachment() -> Result<()> {
    let plan = Plan::load("udproute-multiple-routes-attachment.yaml")?;
    let topo = plan.topology()?;
    let mut run = plan.start(&topo)?;
    run.wait_route_condition(
        "UDPRoute",
        INFRA,
        "udproute-attach-older",
        "Accepted",
        "Accepted",
        Duration::from_secs(10),
    )?;
    run.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: UDPRoute\nmetadata: {name: udproute-attach-newer, namespace: gateway-conformance-infra}\n\
         spec:\n  parentRefs: [{name: udp-multi-route-attach-gateway, sectionName: udp}]\n  rules:\n  - backendRefs: [{name: udp-attach-backend-2, port: 8080}]\n",
    )?;
    run.wait_route_condition(
        "UDPRoute",
        INFRA,
        "udproute-attach-newer",
        "Accepted",
        "Accepted",
        Duration::from_secs(10),
    )?;
    let seen = udp_spread(
        &run,
        run.target(INFRA, "udp-multi-route-attach-gateway", 5301),
        20,
    )?;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["udp-attach-backend-1"]
    );
    Ok(())
}

#[test]
fn udproute_weighted_routing() -> Result<()> {
    let plan = Plan::load("udproute-weighted-routing.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    let seen = udp_spread(&run, run.target(INFRA, "udp-weighted-gateway", 5300), 500)?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_share(&seen, "udp-backend-v1", 0.70);
    assert_share(&seen, "udp-backend-v2", 0.30);
    Ok(())
}

#[test]
fn udproute_reference_grant() -> Result<()> {
    let plan = Plan::load("udproute-reference-grant.yaml")?;
    let topo = plan.topology()?;
    let mut run = plan.start(&topo)?;
    let target = run.target(INFRA, "udp-gateway-reference-grant", 5300);
    let reply = run
        .topology()
        .client()
        .run(|| clients::udp_echo(target, "hi"))?;
    assert_eq!(reply.namespace, "gateway-conformance-app-backend");
    run.delete(
        "ReferenceGrant",
        "gateway-conformance-app-backend",
        "udp-reference-grant",
    )?;
    run.wait_route_condition(
        "UDPRoute",
        INFRA,
        "udp-route-reference-grant",
        "ResolvedRefs",
        "RefNotPermitted",
        Duration::from_secs(10),
    )?;
    ensure!(
        no_udp_answer(&run, target)?,
        "datagrams are dropped once the grant is gone"
    );
    Ok(())
}

#[test]
fn udproute_invalid_cross_namespace_backend_ref() -> Result<()> {
    let plan = Plan::load("udproute-invalid-cross-namespace-backend-ref.yaml")?;
    let topo = plan.topology()?;
    let run = plan.start(&topo)?;
    run.wait_route_condition(
        "UDPRoute",
        INFRA,
        "udp-route-invalid-cross-namespace-backend-ref",
        "ResolvedRefs",
        "RefNotPermitted",
        Duration::from_secs(10),
    )?;
    assert!(no_udp_answer(
        &run,
        run.target(
            INFRA,
            "udp-gateway-invalid-cross-namespace-backend-ref",
            5300
        )
    )?);
    Ok(())
}
