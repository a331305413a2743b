//! `cargo xtask demo`: the newcomer's first contact. Builds everything, creates a client, a gateway and three
//! backend namespaces, runs `gateway run --config examples/demo` in the gateway namespace, sends TCP
//! connections and UDP datagrams through it, and explains what happened: which backend answered each
//! connection, that the gateway held no socket for the listener, and what the kernel counted. Everything it
//! created is removed at the end, also on failure.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig},
    sockets, topology, GatewayProcess, Topology,
};

use crate::{build, cmd, setup};

const BACKENDS: usize = 3;
const TCP_CONNECTIONS: usize = 12;
const UDP_DATAGRAMS: usize = 6;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Skip the set-up step (packages, bpf-linker) on a machine that has everything.
    #[arg(long)]
    pub no_setup: bool,
}

fn step(n: usize, total: usize, what: &str) {
    println!("\n\x1b[1m[{n}/{total}] {what}\x1b[0m");
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("\x1b[1meBPF Gateway API gateway — demo\x1b[0m");
    println!(
        "TCP and UDP routes are forwarded by a TC eBPF program; the agent only programs its maps."
    );
    step(1, 5, "set-up and build");
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    build::ebpf(true)?;
    build::binaries(build::TEST_FEATURES)?;
    // The harness finds the binaries next to the test executables; point it at the workspace's dev builds.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target"));
    let bin_dir = target.join("debug");
    std::env::set_var("GATEWAY_BIN", bin_dir.join("gateway"));
    std::env::set_var("ECHO_BACKEND_BIN", bin_dir.join("echo-backend"));

    step(
        2,
        5,
        "network namespaces: one client, the gateway, three backends",
    );
    let topo = Topology::builder()
        .backends(BACKENDS)
        .build()
        .context("creating the demo topology")?;
    let vip = topology::vip(1);
    println!(
        "  client    {}  (routes everything via the gateway)",
        topo.client_addr()
    );
    println!(
        "  gateway   {} towards the client; Gateway address {vip} is on no interface",
        topo.gateway_client_addr()
    );
    let mut echoes = Vec::new();
    let mut pod_backend = BTreeMap::new();
    for i in 1..=BACKENDS {
        let pod = format!("echo-5d8f{i}-{}", ["kq2vx", "m7t4n", "z9c3w"][i - 1]);
        let cfg = EchoConfig::new(&pod, "default")
            .service("echo")
            .tcp(3000)
            .udp(3001);
        echoes.push(
            spawn_echo(topo.backend(i), &cfg)
                .with_context(|| format!("starting the echo backend {i}"))?,
        );
        println!(
            "  backend {i} {}  pod {pod} (TCP echo :3000, UDP echo :3001)",
            topo.backend_addr(i)
        );
        pod_backend.insert(pod, i);
    }

    step(3, 5, "gateway run --config examples/demo");
    let config = cmd::root().join("examples/demo");
    let t = Instant::now();
    let gateway =
        GatewayProcess::start(topo.gateway(), &[&config], &[]).context("starting the gateway")?;
    println!("  ready in {:.1?} (GET /readyz answered 200)", t.elapsed());
    for line in gateway
        .log()
        .lines()
        .filter(|l| l.contains("TC ingress program in place"))
    {
        if let Some(iface) = line
            .split("interface=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(|s| s.trim_matches('"'))
        {
            println!("  TC program attached to {iface}");
        }
    }

    step(4, 5, &format!("{TCP_CONNECTIONS} TCP connections and {UDP_DATAGRAMS} UDP datagrams from the client to {vip}"));
    let tcp_target = SocketAddr::from((vip, 9000));
    // Hold one connection open while looking at the gateway's sockets.
    let held = topo.client().run(move || -> anyhow::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&tcp_target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut greeting = String::new();
        BufReader::new(&s).read_line(&mut greeting)?;
        ensure!(
            greeting.starts_with("Gateway API Test TCP Server"),
            "unexpected greeting {greeting:?}"
        );
        Ok(s)
    })?;
    let gateway_sockets = sockets::sockets_on_port(topo.gateway(), 9000)?;
    println!(
        "  {:<5} {:<24} {:<10} round trip",
        "conn", "answered by", "backend"
    );
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for n in 1..=TCP_CONNECTIONS {
        let t = Instant::now();
        let reply = topo
            .client()
            .run(move || clients::tcp_echo_test(tcp_target))
            .with_context(|| format!("connection {n}"))?;
        let backend = pod_backend
            .get(&reply.pod)
            .map(|i| format!("#{i}"))
            .unwrap_or_else(|| "?".into());
        println!(
            "  {n:<5} {:<24} {backend:<10} {:.2?}",
            reply.pod,
            t.elapsed()
        );
        *tally.entry(reply.pod).or_default() += 1;
    }
    let mut held = held;
    held.write_all(b"PING\n")?;
    let mut pong = String::new();
    BufReader::new(&held).read_line(&mut pong)?;
    ensure!(
        pong.trim() == "PONG",
        "the held connection did not answer PING"
    );
    drop(held);

    let udp_target = SocketAddr::from((vip, 9001));
    let mut udp_tally: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..UDP_DATAGRAMS {
        let reply = topo
            .client()
            .run(move || clients::udp_echo(udp_target, &format!("datagram {n}")))?;
        *udp_tally.entry(reply.pod).or_default() += 1;
    }

    step(5, 5, "what happened");
    println!("  TCP connections per backend (Maglev hashing over the 5-tuple):");
    for (pod, count) in &tally {
        println!("    {pod:<24} {count:>3}  {}", "#".repeat(*count));
    }
    println!("  UDP datagrams per backend (each from a new source port, so each is a new flow):");
    for (pod, count) in &udp_tally {
        println!("    {pod:<24} {count:>3}  {}", "#".repeat(*count));
    }
    println!(
        "  sockets in the gateway namespace on port 9000 while a connection was open: {}",
        if gateway_sockets.is_empty() {
            "none — the kernel forwarded every packet".to_string()
        } else {
            format!("{gateway_sockets:?}")
        }
    );
    let (status, metrics) = gateway.admin_get("/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    println!("  kernel counters (GET /metrics on the admin port):");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        for wanted in [
            "gateway_kernel_packets_total",
            "gateway_kernel_flows_admitted_total",
            "gateway_conntrack_entries",
            "gateway_config_generation",
        ] {
            if line.starts_with(wanted) {
                println!("    {line}");
            }
        }
    }
    drop(gateway);
    drop(echoes);
    let names = topo.namespace_names();
    drop(topo);
    println!(
        "\n  removed namespaces {} — done in {:.1?}",
        names.join(", "),
        started.elapsed()
    );
    Ok(())
}
