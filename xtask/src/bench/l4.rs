//! `cargo xtask bench l4`: TCP and UDP forwarding. Per run and data plane: TCP throughput with 1 and 4
//! streams and UDP packets per second (iperf3), new connections per second and request/response latency
//! (`loadgen`), and the CPU used meanwhile (`cpu`).
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::ensure;
use gateway_tests::netstat;
use indicatif::ProgressBar;

use super::{
    cpu, iperf, loadgen,
    peers::{self, Peer, PeerKind, Proto},
    report, topology, BenchArgs, RunValues, Session, IPERF_PORT,
};

/// UDP datagram payload for the packets-per-second test, and the offered rate (far above what 2 cores reach).
const UDP_DATAGRAM: u32 = 64;
const UDP_RATE: &str = "2G";
/// Connection-rate threads in the client namespace.
const CPS_THREADS: usize = 4;
/// Upper bounds on the work of one phase, whatever the duration.
const MAX_CONNECTIONS: u64 = 2_000_000;
const MAX_EXCHANGES: u64 = 2_000_000;

pub fn run(args: &BenchArgs, session: &Session) -> anyhow::Result<String> {
    let started = Instant::now();
    let kinds = super::peer_kinds(args, &PEERS);
    super::check_tools(&kinds, &[("iperf3", "--version")])?;
    let raw = super::raw_dir(session, "l4")?;
    eprintln!(
        "bench l4: {} runs × {} data planes, {} s phases; raw outputs in {}",
        args.runs,
        kinds.len(),
        args.duration,
        raw.display()
    );

    let mut bt = topology::BenchTopology::build()?;
    let phases = Phase::ALL.len() as u64;
    let bar = super::progress_bar("l4", args.runs as u64 * kinds.len() as u64 * phases);
    let results =
        super::interleaved_runs(args, &kinds, &raw, &bar, &report::L4, |kind, run, dir| {
            run_peer(&mut bt, kind, run, args, &bar, dir)
        })?;
    bar.finish_and_clear();
    let names = bt.topo.namespace_names();
    drop(bt);
    eprintln!("removed namespaces {}", names.join(", "));
    super::finish(
        &report::L4,
        args,
        session,
        &kinds,
        results,
        &raw,
        started,
        method(args.duration),
        vec![
            "HAProxy has no UDP proxy: its UDP column is `n/a`.".into(),
            "Envoy's UDP numbers go through its `udp_proxy` listener filter (one upstream session per client \
             address and port)."
                .into(),
        ],
    )
}

/// The method section of the report.
fn method(d: u64) -> Vec<String> {
    vec![
        "Topology: client `198.18.0.2` → gateway namespace (`198.18.0.1` / `198.18.11.1`) → backend `198.18.11.2`; \
         veth pairs with their default offloads (checksum, TSO/GRO on). The backend runs `iperf3 -s` and the load generator's \
         servers (threads of the bench process): an accept-and-close server (writes one byte and closes) and an echo server.".into(),
        "Plain forwarding: `ip_forward=1` in the gateway namespace for its run only; the client addresses the backend directly.".into(),
        "The gateway: `gateway run --config` with a Gateway on `198.18.100.1` and TCP/UDP listeners routed to the backend; \
         `ip_forward` stays 0 and the address is on no interface.".into(),
        "HAProxy, NGINX and Envoy: `198.18.100.1/32` is added to the gateway namespace's `lo` for their run only and removed after; \
         one data plane runs at a time, and the namespace is checked to be clean (no process, no address, `ip_forward=0`) after each.".into(),
        format!("TCP throughput: `iperf3 -c <target> -t {d} [-P 4]`, received bit rate. UDP: `iperf3 -u -l 64 -b 2G -t {d}`, \
         datagrams received per second and the receiver's loss."),
        format!("Connections per second: 4 threads in the client namespace connect, read the one-byte greeting and the server's \
         close, for {d} s (bounded to 2 million connections). Failures are counted, not retried."),
        format!("Latency (hdrhistogram, µs): 64-byte ping-pong over one TCP connection, and connect + greeting + one 64-byte \
         exchange on a fresh connection each time; {:.1} s each, one request at a time.", d as f64 / 2.0),
        "CPU: machine-wide busy time from `/proc/stat` (user+nice+system+irq+softirq) over each phase, in cores; \
         the data plane processes' own utime+stime from `/proc/<pid>/stat` (HAProxy, NGINX master and workers, Envoy, the gateway's \
         agent; none for plain forwarding).".into(),
        "Sanity checks (the bench fails otherwise): during every phase a counter of the data plane itself must rise — \
         plain: `Ip: ForwDatagrams` of the gateway namespace; gateway: `gateway_kernel_packets_total{outcome=\"forwarded\"|\"replied\"}`; \
         HAProxy: `CumConns` on its stats socket; NGINX: its processes' CPU ticks (the stream module has no counters); Envoy: \
         `tcp.*.downstream_cx_total` / `udp.*.downstream_sess_rx_datagrams` on its admin — and, for every \
         data plane but plain forwarding, `ForwDatagrams` must not rise (the kernel forwarded nothing itself).".into(),
    ]
}

/// The measurement phases of one run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tcp1,
    Tcp4,
    Udp,
    ConnRate,
    LatencyPersistent,
    LatencyFresh,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Tcp1,
        Phase::Tcp4,
        Phase::Udp,
        Phase::ConnRate,
        Phase::LatencyPersistent,
        Phase::LatencyFresh,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Tcp1 => "tcp1",
            Phase::Tcp4 => "tcp4",
            Phase::Udp => "udp",
            Phase::ConnRate => "cps",
            Phase::LatencyPersistent => "rr",
            Phase::LatencyFresh => "crr",
        }
    }

    fn proto(self) -> Proto {
        if self == Phase::Udp {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }
}

/// The data planes this suite measures.
const PEERS: [PeerKind; 6] = [
    PeerKind::Plain,
    PeerKind::Gateway,
    PeerKind::GatewayXdp,
    PeerKind::Haproxy,
    PeerKind::Nginx,
    PeerKind::Envoy,
];

fn start_peer<'a>(
    bt: &'a topology::BenchTopology,
    kind: PeerKind,
) -> anyhow::Result<Box<dyn Peer + 'a>> {
    let (ns, vip, backend) = (bt.gateway(), bt.vip(), bt.backend_addr());
    let tcp = [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT];
    Ok(match kind {
        PeerKind::Plain => Box::new(peers::plain::Plain::start(ns, backend)?),
        PeerKind::GatewayKernel => {
            anyhow::bail!("gateway-kernel is a TLS passthrough path (bench tls)")
        }
        PeerKind::Gateway => Box::new(peers::gateway::Gateway::start(ns, vip, backend)?),
        PeerKind::GatewayXdp => Box::new(peers::gateway::Gateway::start_xdp(bt, bt.peer_gro()?)?),
        PeerKind::Haproxy => Box::new(peers::haproxy::Haproxy::start(ns, vip, backend)?),
        PeerKind::Nginx => Box::new(peers::nginx::Nginx::start(ns, vip, backend)?),
        PeerKind::Envoy => {
            let ports: Vec<peers::envoy::PortMap> = tcp
                .iter()
                .map(|&port| peers::envoy::PortMap {
                    port,
                    proto: Proto::Tcp,
                })
                .chain(std::iter::once(peers::envoy::PortMap {
                    port: IPERF_PORT,
                    proto: Proto::Udp,
                }))
                .collect();
            Box::new(peers::envoy::Envoy::start(ns, vip, &tcp, |admin| {
                peers::envoy::l4_config(vip, backend, &ports, admin)
            })?)
        }
    })
}

fn run_peer(
    bt: &mut topology::BenchTopology,
    kind: PeerKind,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
) -> anyhow::Result<RunValues> {
    let mut values = RunValues::new();
    bar.set_message(format!("run {run}/{} {kind}: starting", args.runs));
    let outcome = (|| -> anyhow::Result<()> {
        if kind.is_gateway() {
            // A gateway column starts with empty conntrack, so it knows nothing of the TIME_WAITs the backend
            // still holds for the SNAT ports of the previous gateway column's run (a restarted agent would adopt
            // them with the pinned map): without this, half of its SYNs meet a refusing TIME_WAIT.
            bt.forget_backend_time_waits()?;
        }
        let peer = start_peer(bt, kind)?;
        super::cores::pin_data_plane(bt.gateway())?;
        let result = measure(bt, peer.as_ref(), run, args, bar, dir, &mut values);
        values.extend(peer.run_counters());
        peer.save_logs(dir);
        result
    })();
    if outcome.is_err() {
        // A failed iperf3 client may leave the server busy for the next data plane.
        let _ = bt.restart_iperf_server();
    }
    outcome?;
    bt.check_clean()?;
    Ok(values)
}

/// Runs every phase against a started data plane.
fn measure(
    bt: &topology::BenchTopology,
    peer: &dyn Peer,
    run: usize,
    args: &BenchArgs,
    bar: &ProgressBar,
    dir: &Path,
    values: &mut RunValues,
) -> anyhow::Result<()> {
    let kind = peer.kind();
    let target = peer.target();
    let client = bt.client();
    loadgen::probe(
        client,
        SocketAddr::from((target, loadgen::ACCEPT_CLOSE_PORT)),
    )?;
    let secs = args.duration;
    let half = Duration::from_secs_f64(secs as f64 / 2.0);
    for phase in Phase::ALL {
        bar.set_message(format!("run {run}/{} {kind}: {}", args.runs, phase.name()));
        if phase.proto() == Proto::Udp && !peer.udp() {
            bar.inc(1);
            continue;
        }
        let check = peers::PhaseCheck::before(peer, bt.gateway(), phase.proto())?;
        let meter = cpu::CpuMeter::start(&peer.pids());
        let mut put = |k: &str, v: f64| {
            values.insert(k.to_string(), v);
        };
        match phase {
            Phase::Tcp1 | Phase::Tcp4 | Phase::Udp => {
                let mode = match phase {
                    Phase::Tcp1 => iperf::Mode::Tcp { streams: 1 },
                    Phase::Tcp4 => iperf::Mode::Tcp { streams: 4 },
                    _ => iperf::Mode::Udp {
                        datagram: UDP_DATAGRAM,
                        rate: UDP_RATE,
                    },
                };
                let (r, json) = iperf::run(client, target, &mode, secs)?;
                std::fs::write(dir.join(format!("iperf3-{}.json", phase.name())), json)?;
                match phase {
                    Phase::Tcp1 => put("tcp1_gbps", r.bits_per_second / 1e9),
                    Phase::Tcp4 => put("tcp4_gbps", r.bits_per_second / 1e9),
                    _ => {
                        put("udp_kpps", r.received_pps / 1e3);
                        put("udp_loss_pct", r.loss_percent);
                    }
                }
            }
            Phase::ConnRate => {
                let accepted_before = bt.backend_accepted();
                let counters_before = [
                    netstat::Snapshot::take(client)?,
                    netstat::Snapshot::take(bt.backend())?,
                ];
                let r = loadgen::connection_rate(
                    client,
                    SocketAddr::from((target, loadgen::ACCEPT_CLOSE_PORT)),
                    CPS_THREADS,
                    Duration::from_secs(secs),
                    MAX_CONNECTIONS,
                );
                ensure!(
                    r.completed > 0,
                    "no connection completed ({} failed)",
                    r.failed
                );
                let accepted = bt.backend_accepted() - accepted_before;
                ensure!(
                    accepted >= r.completed,
                    "the backend accepted {accepted} connections but the client completed {}",
                    r.completed
                );
                put("cps", r.per_second());
                put("cps_failed", r.failed as f64);
                let client_changes =
                    netstat::Snapshot::take(client)?.changes_since(&counters_before[0]);
                let backend_changes =
                    netstat::Snapshot::take(bt.backend())?.changes_since(&counters_before[1]);
                put(
                    "cps_syn_retrans",
                    client_changes
                        .get("TcpExtTCPSynRetrans")
                        .copied()
                        .unwrap_or(0) as f64,
                );
                let mut text = String::new();
                for (side, changes) in [("client", client_changes), ("backend", backend_changes)] {
                    text += &format!("# {side} namespace, counters changed during the run\n");
                    for (name, delta) in changes {
                        text += &format!("{name} {delta}\n");
                    }
                }
                std::fs::write(dir.join("netstat-conn_rate.txt"), text)?;
            }
            Phase::LatencyPersistent | Phase::LatencyFresh => {
                let t = SocketAddr::from((target, loadgen::ECHO_PORT));
                let (lat, prefix) = if phase == Phase::LatencyPersistent {
                    (
                        loadgen::ping_pong_persistent(client, t, half, MAX_EXCHANGES)?,
                        "rr",
                    )
                } else {
                    (
                        loadgen::ping_pong_fresh(client, t, half, MAX_EXCHANGES)?,
                        "crr",
                    )
                };
                put(&format!("{prefix}_p50_us"), lat.p50_us());
                put(&format!("{prefix}_p99_us"), lat.p99_us());
                put(&format!("{prefix}_count"), lat.histogram.len() as f64);
                put(&format!("{prefix}_failed"), lat.failed as f64);
            }
        }
        let used = meter.stop();
        if matches!(
            phase,
            Phase::Tcp1 | Phase::Tcp4 | Phase::Udp | Phase::ConnRate
        ) {
            put(&format!("cpu_{}_machine", phase.name()), used.machine_cores);
            put(
                &format!("cpu_{}_core", phase.name()),
                used.dataplane_cpu_cores,
            );
            put(
                &format!("cpu_{}_dataplane", phase.name()),
                used.dataplane_cores,
            );
        }
        // Sanity: the data plane carried this phase's traffic, and the kernel forwarded nothing by itself.
        check.after(peer, bt.gateway(), phase.name(), values)?;
        bar.inc(1);
        // Let connections close and flows settle between phases.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}
