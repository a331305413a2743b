//! XDP mode end to end: the real agent with `--xdp` on its interfaces, real clients and backends in namespaces.
//! TCP and UDP arrive intact (every byte of bulk streams checked, receivers' checksum counters clean, with and
//! without checksum offload on the senders), the kernel's own counter shows XDP forwarded the traffic,
//! established flows survive configuration changes and `kill -9` with restart, and switching interfaces between
//! TC and XDP modes across restarts leaves exactly the programs asked for.
//!
//! The clients' and backends' veths get GRO on: a veth takes frames redirected by XDP only when its receiving
//! end runs NAPI (see docs/l4.md, "XDP mode").
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    attachments::{self, Attachments, XdpAttached},
    clients,
    echo::{spawn_echo, EchoConfig},
    gateway::write_manifests,
    manifests::{l4_gateway, L4Listener},
    netstat, sockets,
    stream::{check_stream, send_stream},
    topology, GatewayProcess, Process, Topology,
};

const TCP_PORT: u16 = 9000;
const UDP_PORT: u16 = 9001;
const STREAM_PORT: u16 = 9002;

fn manifests(topo: &Topology, backends: &[usize]) -> String {
    let endpoints: Vec<_> = backends.iter().map(|i| topo.backend_addr(*i)).collect();
    l4_gateway(
        topology::vip(1),
        &[
            L4Listener::tcp("tcp", TCP_PORT, 3000, &endpoints),
            L4Listener::udp("udp", UDP_PORT, 3001, &endpoints),
            L4Listener::tcp("stream", STREAM_PORT, 5000, &[topo.backend_addr(1)]),
        ],
    )
}

fn echo_backends(topo: &Topology) -> Result<Vec<Process>> {
    (1..=topo.backend_count())
        .map(|i| {
            spawn_echo(
                topo.backend(i),
                &EchoConfig::new(&format!("xdp-echo-{i}-5f9c-x{i}"), "infra")
                    .tcp(3000)
                    .udp(3001),
            )
        })
        .collect()
}

/// `--xdp` for each of `interfaces` (`name` or `name:mode`).
fn xdp_args<'a>(interfaces: &[&'a str]) -> Vec<&'a str> {
    interfaces.iter().flat_map(|i| ["--xdp", *i]).collect()
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((topology::vip(1), port))
}

fn open_held(topo: &Topology) -> Result<TcpStream> {
    clients::open_held(topo.client(), vip(TCP_PORT))
}

/// Sends `total` bytes each way through the stream listener to a checking server in backend 1.
fn bulk_both_ways(topo: &Topology, total: usize) -> Result<()> {
    let listener = topo.backend(1).run(|| TcpListener::bind("0.0.0.0:5000"))?;
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || send_stream(&mut w, total, 1 << 40));
        let got = check_stream(&mut s, total, 0)?;
        writer.join().expect("server writer")?;
        Ok(got)
    });
    let mut s = topo
        .client()
        .run(|| TcpStream::connect_timeout(&vip(STREAM_PORT), Duration::from_secs(3)))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || send_stream(&mut w, total, 0));
    let downloaded = check_stream(&mut s, total, 1 << 40).context("download")?;
    writer.join().expect("client writer")?;
    let uploaded = server.join().expect("server").context("upload")?;
    ensure!((uploaded, downloaded) == (total, total));
    Ok(())
}

/// Echo round trips over TCP and UDP, with the answers checked.
fn echo_round_trips(topo: &Topology, n: usize) -> Result<()> {
    for i in 0..n {
        let reply = topo
            .client()
            .run(|| clients::tcp_echo_test(vip(TCP_PORT)))?;
        ensure!(reply.namespace == "infra", "TCP reply {reply:?}");
        let payload = format!("datagram {i} through XDP");
        let reply = topo
            .client()
            .run(|| clients::udp_echo(vip(UDP_PORT), &payload))?;
        ensure!(reply.request == payload, "UDP reply {reply:?}");
    }
    Ok(())
}

/// Checksum errors the client and backends counted since `before`.
fn checksum_errors(topo: &Topology, before: &[netstat::Snapshot]) -> Result<i64> {
    let mut errors = 0;
    let namespaces = std::iter::once(topo.client()).chain(topo.backends());
    for (ns, then) in namespaces.zip(before) {
        let now = netstat::Snapshot::take(ns)?;
        for name in ["TcpInCsumErrors", "UdpInCsumErrors", "IpInHdrErrors"] {
            errors += now.get(name) - then.get(name);
        }
    }
    Ok(errors)
}

fn snapshots(topo: &Topology) -> Result<Vec<netstat::Snapshot>> {
    std::iter::once(topo.client())
        .chain(topo.backends())
        .map(netstat::Snapshot::take)
        .collect()
}

/// XDP forwarded most of the traffic: packets it forwarded against everything the kernel path forwarded.
fn assert_mostly_xdp(gw: &GatewayProcess, since: (u64, u64)) -> Result<(u64, u64)> {
    let xdp = gw.kernel_packets("xdp_forwarded")?;
    let all = gw.kernel_packets("forwarded")? + gw.kernel_packets("replied")?;
    let (d_xdp, d_all) = (xdp - since.0, all - since.1);
    ensure!(
        d_all > 0 && d_xdp * 10 >= d_all * 8,
        "XDP forwarded {d_xdp} of {d_all} packets"
    );
    Ok((xdp, all))
}

fn xdp_everywhere(topo: &Topology) -> Vec<String> {
    std::iter::once("eth0".to_string())
        .chain((1..=topo.backend_count()).map(Topology::gateway_backend_if))
        .collect()
}

fn expect_attachments(topo: &Topology, expected: &[(&str, Option<XdpAttached>)]) -> Result<()> {
    for (iface, xdp) in expected {
        let got = attachments::of(topo.gateway(), iface)?;
        ensure!(
            got == Attachments {
                tc_ingress: 1,
                xdp: *xdp
            },
            "{iface}: {got:?}, expected one TC program and XDP {xdp:?}"
        );
    }
    Ok(())
}

#[test]
fn tcp_and_udp_are_forwarded_by_xdp_with_every_byte_checked() -> Result<()> {
    let topo = Topology::builder().backends(2).peer_gro(true).build()?;
    let _echoes = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo, &[1, 2]))?;
    let ifaces = xdp_everywhere(&topo);
    let names: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &xdp_args(&names))?;
    expect_attachments(
        &topo,
        &[
            ("eth0", Some(XdpAttached::Driver)),
            ("bk1", Some(XdpAttached::Driver)),
            ("bk2", Some(XdpAttached::Driver)),
        ],
    )?;
    assert_eq!(gw.metric("gateway_xdp_interfaces")?, 3);
    let before = snapshots(&topo)?;

    echo_round_trips(&topo, 20)?;
    let mut held = open_held(&topo)?;
    ensure!(
        sockets::sockets_on_port(topo.gateway(), TCP_PORT)?.is_empty(),
        "the gateway namespace holds a socket on the listener port"
    );
    clients::ping_held(&mut held)?;
    bulk_both_ways(&topo, 32 << 20)?;

    assert_mostly_xdp(&gw, (0, 0))?;
    // The senders computed their checksums (tx offload off): none is a partial seed, but a complete checksum
    // looks like one once in 65,535 packets (completing it gives the same checksum back).
    let (completed, xdp) = (
        gw.kernel_packets("xdp_checksum_completed")?,
        gw.kernel_packets("xdp_forwarded")?,
    );
    ensure!(
        completed * 1000 < xdp,
        "{completed} of {xdp} checksums taken for partial ones"
    );
    assert_eq!(
        checksum_errors(&topo, &before)?,
        0,
        "receivers saw bad checksums"
    );
    Ok(())
}

#[test]
fn generic_mode_forwards_on_the_skb() -> Result<()> {
    // Generic XDP runs on the skb after the driver and redirects with the ordinary transmit path: no NAPI
    // needed on the peers. Complete checksums (tx offload off) are forwarded by XDP.
    let topo = Topology::builder().backends(1).build()?;
    let _echoes = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo, &[1]))?;
    let gw = GatewayProcess::start(
        topo.gateway(),
        &[&config],
        &xdp_args(&["eth0:generic", "bk1:generic"]),
    )?;
    expect_attachments(
        &topo,
        &[
            ("eth0", Some(XdpAttached::Skb)),
            ("bk1", Some(XdpAttached::Skb)),
        ],
    )?;
    let before = snapshots(&topo)?;
    echo_round_trips(&topo, 10)?;
    bulk_both_ways(&topo, 8 << 20)?;
    assert_mostly_xdp(&gw, (0, 0))?;
    assert_eq!(
        checksum_errors(&topo, &before)?,
        0,
        "receivers saw bad checksums"
    );
    Ok(())
}

#[test]
fn checksums_left_to_the_device_are_completed_by_native_xdp() -> Result<()> {
    // Senders with checksum offload (the veth default) hand over CHECKSUM_PARTIAL packets; a frame redirected by
    // native XDP reaches the receiver without checksum state, so the receiver verifies what XDP wrote.
    let topo = Topology::builder()
        .backends(1)
        .tx_checksum_offload_off(false)
        .peer_gro(true)
        .build()?;
    let _echoes = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo, &[1]))?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &xdp_args(&["eth0", "bk1"]))?;
    let before = snapshots(&topo)?;
    echo_round_trips(&topo, 10)?;
    bulk_both_ways(&topo, 16 << 20)?;
    assert_mostly_xdp(&gw, (0, 0))?;
    ensure!(
        gw.kernel_packets("xdp_checksum_completed")? > 1000,
        "XDP completed {} checksums",
        gw.kernel_packets("xdp_checksum_completed")?
    );
    assert_eq!(
        checksum_errors(&topo, &before)?,
        0,
        "receivers saw bad checksums"
    );
    Ok(())
}

#[test]
fn established_flows_survive_a_configuration_change_and_kill_9_in_xdp_mode() -> Result<()> {
    let topo = Topology::builder().backends(2).peer_gro(true).build()?;
    let _echoes = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo, &[1, 2]))?;
    let args = xdp_args(&["eth0", "bk1", "bk2"]);
    let mut gw = GatewayProcess::start(topo.gateway(), &[&config], &args)?;
    let mut held: Vec<TcpStream> = (0..8).map(|_| open_held(&topo)).collect::<Result<_>>()?;
    for s in &mut held {
        clients::ping_held(s)?;
    }

    // Backend 2 leaves the Service: new flows go to backend 1, flows on backend 2 stay.
    write_manifests(dir.path(), &manifests(&topo, &[1]))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pods: Vec<String> = (0..8)
            .map(|_| {
                topo.client()
                    .run(|| clients::tcp_echo_test(vip(TCP_PORT)))
                    .map(|r| r.pod)
            })
            .collect::<Result<_>>()?;
        if pods.iter().all(|p| p.starts_with("xdp-echo-1-")) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the change was not applied within 5 s: {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mark = (
        gw.kernel_packets("xdp_forwarded")?,
        gw.kernel_packets("forwarded")? + gw.kernel_packets("replied")?,
    );
    for s in &mut held {
        clients::ping_held(s)?;
    }
    let mark = assert_mostly_xdp(&gw, mark)?;

    gw.kill9()?;
    // Links and maps are pinned: XDP keeps forwarding with no agent at all (its counter is read from the pinned
    // map once the agent is back), and new flows are admitted by the TC program.
    for s in &mut held {
        clients::ping_held(s)?;
    }
    echo_round_trips(&topo, 3)?;

    gw.start_again()?;
    ensure!(
        gw.kernel_packets("xdp_forwarded")? >= mark.0 + 16,
        "the held flows' PINGs and PONGs went through XDP while the agent was down"
    );
    let mark = (
        gw.kernel_packets("xdp_forwarded")?,
        gw.kernel_packets("forwarded")? + gw.kernel_packets("replied")?,
    );
    let adopted = gw
        .log()
        .lines()
        .filter(|l| l.contains("XDP program in place") && l.contains("adopted pinned link"))
        .count();
    ensure!(
        adopted == 3,
        "the restarted agent adopts the three XDP links:\n{}",
        gw.log_tail(30)
    );
    expect_attachments(
        &topo,
        &[
            ("eth0", Some(XdpAttached::Driver)),
            ("bk1", Some(XdpAttached::Driver)),
            ("bk2", Some(XdpAttached::Driver)),
        ],
    )?;
    for s in &mut held {
        clients::ping_held(s)?;
    }
    assert_mostly_xdp(&gw, mark)?;
    Ok(())
}

#[test]
fn switching_modes_across_restarts_leaves_exactly_the_programs_asked_for() -> Result<()> {
    let topo = Topology::builder().backends(1).peer_gro(true).build()?;
    let _echoes = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo, &[1]))?;
    let mut gw = GatewayProcess::start(topo.gateway(), &[&config], &xdp_args(&["eth0", "bk1"]))?;
    let mut held = open_held(&topo)?;
    clients::ping_held(&mut held)?;
    expect_attachments(
        &topo,
        &[
            ("eth0", Some(XdpAttached::Driver)),
            ("bk1", Some(XdpAttached::Driver)),
        ],
    )?;

    // eth0 to generic mode, bk1 back to TC only. XDP may no longer redirect to bk1, and bk1's replies take the
    // TC path: XDP forwards nothing for this flow.
    gw.kill9()?;
    gw.start_again_with(&xdp_args(&["eth0:generic"]))?;
    expect_attachments(&topo, &[("eth0", Some(XdpAttached::Skb)), ("bk1", None)])?;
    let xdp_before = gw.kernel_packets("xdp_forwarded")?;
    for _ in 0..5 {
        clients::ping_held(&mut held)?;
    }
    echo_round_trips(&topo, 3)?;
    assert_eq!(
        gw.kernel_packets("xdp_forwarded")?,
        xdp_before,
        "XDP redirected to an interface no longer in XDP mode"
    );
    assert_eq!(gw.metric("gateway_xdp_interfaces")?, 1);

    // TC only everywhere, stopped gracefully this time.
    gw.stop(Duration::from_secs(5))?;
    gw.start_again_with(&[])?;
    expect_attachments(&topo, &[("eth0", None), ("bk1", None)])?;
    clients::ping_held(&mut held)?;
    let pinned: Vec<_> = ["native", "generic"]
        .iter()
        .flat_map(|m| {
            std::fs::read_dir(
                gw.bpffs_root()
                    .join(format!("v{}", gateway_common::ABI_VERSION))
                    .join("xdp-links")
                    .join(m),
            )
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
        })
        .collect();
    ensure!(pinned.is_empty(), "XDP links left pinned: {pinned:?}");

    // And back to native XDP on both: the held flow moves onto the XDP path.
    gw.kill9()?;
    gw.start_again_with(&xdp_args(&["eth0", "bk1"]))?;
    expect_attachments(
        &topo,
        &[
            ("eth0", Some(XdpAttached::Driver)),
            ("bk1", Some(XdpAttached::Driver)),
        ],
    )?;
    let xdp_before = gw.kernel_packets("xdp_forwarded")?;
    for _ in 0..5 {
        clients::ping_held(&mut held)?;
    }
    ensure!(
        gw.kernel_packets("xdp_forwarded")? >= xdp_before + 10,
        "five round trips of the held flow went through XDP"
    );
    Ok(())
}
