//! End to end through the kernel path: a TCPRoute given as Gateway API YAML to `gateway run --config`,
//! forwarded by the eBPF program from the client namespace through the gateway namespace to backend namespaces
//! and back. Real clients, real echo backends, real agent process.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig},
    gateway::write_manifests,
    manifests::{l4_gateway, L4Listener},
    sockets, topology, GatewayProcess, Process, Topology,
};

const LISTENER_PORT: u16 = 9000;
const NO_ROUTE_PORT: u16 = 9009;

/// A TCP listener routed to `endpoints`, plus a TCP listener with no route.
fn manifests(endpoints: &[std::net::Ipv4Addr]) -> String {
    l4_gateway(
        topology::vip(1),
        &[
            L4Listener::tcp("tcp", LISTENER_PORT, 3000, endpoints),
            L4Listener::unrouted("unrouted", "TCP", NO_ROUTE_PORT),
        ],
    )
}

struct Setup {
    _echoes: Vec<Process>,
    dir: tempfile::TempDir,
}

fn start_backends(topo: &Topology) -> Result<Setup> {
    let mut echoes = Vec::new();
    for i in 1..=topo.backend_count() {
        let cfg = EchoConfig::new(&format!("tcp-backend-{i}-5f9c-x{i}"), "infra")
            .service("echo")
            .tcp(3000);
        echoes.push(spawn_echo(topo.backend(i), &cfg)?);
    }
    Ok(Setup {
        _echoes: echoes,
        dir: tempfile::tempdir()?,
    })
}

fn target() -> SocketAddr {
    SocketAddr::from((topology::vip(1), LISTENER_PORT))
}

fn open_held(topo: &Topology) -> Result<TcpStream> {
    clients::open_held(topo.client(), target())
}

/// Which backend pods answer `n` new connections.
fn spread(topo: &Topology, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = topo.client().run(|| clients::tcp_echo_test(target()))?;
        ensure!(reply.namespace == "infra", "namespace {}", reply.namespace);
        *seen.entry(reply.pod).or_default() += 1;
    }
    Ok(seen)
}

#[test]
fn tcp_route_is_forwarded_by_the_kernel_with_no_gateway_socket() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(
        setup.dir.path(),
        &manifests(&[topo.backend_addr(1), topo.backend_addr(2)]),
    )?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;

    let mut held = open_held(&topo)?;
    // While the connection is open, the gateway namespace has no socket at all on the listener port: not a
    // listener, not an accepted connection. The kernel program answered for the Gateway's address.
    let on_port = sockets::sockets_on_port(topo.gateway(), LISTENER_PORT)?;
    assert!(
        on_port.is_empty(),
        "the gateway namespace holds sockets on {LISTENER_PORT}: {on_port:?}"
    );
    clients::ping_held(&mut held)?;

    let seen = spread(&topo, 40)?;
    assert_eq!(seen.len(), 2, "both backends answer: {seen:?}");
    assert!(seen.keys().all(|p| p.starts_with("tcp-backend-")));
    assert!(gw.kernel_packets("forwarded")? > 0 && gw.kernel_packets("replied")? > 0);
    clients::ping_held(&mut held)?;
    // Per-listener and per-backend traffic, from the conntrack sweep (once a second).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, metrics) = gw.admin_get("/metrics")?;
        let value = |prefix: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let listener_packets = value(
            "gateway_listener_packets_total{listener=\"infra/gw/tcp\",direction=\"to_backend\"} ",
        );
        let backend_flows = value(&format!(
            "gateway_backend_flows_total{{backend=\"{}:3000\"}} ",
            topo.backend_addr(1)
        ));
        if listener_packets > 40 && backend_flows > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "per-listener/backend metrics missing:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn a_listener_without_route_refuses_connections_at_once() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(setup.dir.path(), &manifests(&[topo.backend_addr(1)]))?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let addr = SocketAddr::from((topology::vip(1), NO_ROUTE_PORT));
    let started = Instant::now();
    let err = topo
        .client()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .expect_err("no route: refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a RST, not a timeout"
    );
    assert_eq!(gw.kernel_packets("no_backend_reset")?, 1);
    Ok(())
}

#[test]
fn established_flows_survive_a_configuration_change() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(
        setup.dir.path(),
        &manifests(&[topo.backend_addr(1), topo.backend_addr(2)]),
    )?;
    let _gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    // Hold connections until both backends have one.
    let mut held = Vec::new();
    let mut pods = BTreeMap::new();
    for _ in 0..40 {
        let mut s = open_held(&topo)?;
        s.write_all(b"TEST\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let reply: serde_json::Value = serde_json::from_str(&line)?;
        pods.insert(reply["pod"].as_str().unwrap_or_default().to_string(), ());
        held.push(s);
        if pods.len() == 2 {
            break;
        }
    }
    assert_eq!(pods.len(), 2, "connections to both backends");

    // Remove backend 2 from the Service: new flows go to backend 1 only, flows already on backend 2 stay.
    write_manifests(setup.dir.path(), &manifests(&[topo.backend_addr(1)]))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = spread(&topo, 10)?;
        if seen.len() == 1 && seen.keys().all(|p| p.starts_with("tcp-backend-1-")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change was not applied within 5 s: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in &mut held {
        clients::ping_held(s)?;
    }
    Ok(())
}

/// Waits (≤ 30 s) until the agent's conntrack sweeps have expired `n` flows in all.
fn await_expired_flows(gw: &GatewayProcess, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.metric("gateway_conntrack_expired_flows_total")? < n {
        ensure!(
            Instant::now() < deadline,
            "fewer than {n} flows expired after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The kernel path looks only at packets to the ports it serves (listeners' and open flows', `SERVED_PORTS`);
/// the rest go to the local stack straight after the parse. A listener's port stays served while flows it
/// admitted are open, even once the listener is gone, and leaves when the last of them has expired.
#[test]
fn a_removed_listeners_port_is_served_until_its_last_flow_expires() -> Result<()> {
    const MOVED_PORT: u16 = 9001;
    let topo = Topology::builder().backends(1).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(setup.dir.path(), &manifests(&[topo.backend_addr(1)]))?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let tcp = |ports: &[u16]| -> BTreeSet<(u8, u16)> {
        ports
            .iter()
            .map(|p| (gateway_common::PROTO_TCP, *p))
            .collect()
    };
    assert_eq!(gw.served_ports()?, tcp(&[LISTENER_PORT, NO_ROUTE_PORT]));
    let mut held = open_held(&topo)?;
    clients::ping_held(&mut held)?;

    // The listener moves: new connections go to the new port, the held one keeps its flow on the old port.
    let moved = l4_gateway(
        topology::vip(1),
        &[
            L4Listener::tcp("tcp", MOVED_PORT, 3000, &[topo.backend_addr(1)]),
            L4Listener::unrouted("unrouted", "TCP", NO_ROUTE_PORT),
        ],
    );
    write_manifests(setup.dir.path(), &moved)?;
    let moved_target = SocketAddr::from((topology::vip(1), MOVED_PORT));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut probe = loop {
        if let Ok(s) = clients::open_held(topo.client(), moved_target) {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the moved listener never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    clients::ping_held(&mut probe)?;
    drop(probe);
    // The probe's expiry proves a sweep ran after the change: the old port is still served, so the held flow
    // is still forwarded (the local stack would answer it with a RST).
    await_expired_flows(&gw, 1)?;
    clients::ping_held(&mut held)?;
    assert_eq!(
        gw.served_ports()?,
        tcp(&[LISTENER_PORT, MOVED_PORT, NO_ROUTE_PORT])
    );

    drop(held);
    await_expired_flows(&gw, 2)?;
    assert_eq!(gw.served_ports()?, tcp(&[MOVED_PORT, NO_ROUTE_PORT]));
    Ok(())
}

#[test]
fn flows_survive_kill_9_and_restart_of_the_agent() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(
        setup.dir.path(),
        &manifests(&[topo.backend_addr(1), topo.backend_addr(2)]),
    )?;
    let mut gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let mut held = open_held(&topo)?;
    clients::ping_held(&mut held)?;

    gw.kill9()?;
    // Links and maps are pinned: the program keeps forwarding with no agent at all.
    clients::ping_held(&mut held)?;
    assert_eq!(
        spread(&topo, 5)?.values().sum::<usize>(),
        5,
        "new flows while the agent is down"
    );

    gw.start_again()?;
    assert!(
        gw.log().contains("adopted pinned link"),
        "the restarted agent adopts the links:\n{}",
        gw.log_tail(30)
    );
    // Exactly one program on every interface: the new agent replaced the old program, it did not add a second.
    for iface in ["eth0", "bk1", "bk2"] {
        let programs = topo.gateway().run(move || {
            aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
                .map(|(_, p)| p.len())
        })?;
        assert_eq!(
            programs, 1,
            "{iface} has {programs} TC programs after the restart"
        );
    }
    clients::ping_held(&mut held)?;
    assert_eq!(spread(&topo, 5)?.values().sum::<usize>(), 5);
    Ok(())
}

#[test]
fn interfaces_that_appear_later_are_attached() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start_backends(&topo)?;
    let config = write_manifests(setup.dir.path(), &manifests(&[topo.backend_addr(1)]))?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    topo.gateway().ip(&[
        "link", "add", "late0", "type", "veth", "peer", "name", "late1",
    ])?;
    topo.gateway().ip(&["link", "set", "late0", "up"])?;
    topo.gateway().ip(&["link", "set", "late1", "up"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw
        .log()
        .lines()
        .any(|l| l.contains("TC ingress program in place") && l.contains("late0"))
    {
        assert!(
            Instant::now() < deadline,
            "late0 not attached within 5 s:\n{}",
            gw.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
