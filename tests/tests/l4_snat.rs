//! SNAT port reuse: with a small port range, ports of finished flows are reused for new connections without
//! refusals and without stalls, also when the backend closes first and holds each port's 4-tuple in TIME_WAIT
//! (see docs/l4.md, "SNAT ports and the backend's TIME_WAIT").
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use gateway_tests::{
    gateway::write_manifests,
    manifests::{l4_gateway, L4Listener},
    netstat, topology, GatewayProcess, Topology,
};

/// What a churn run saw.
#[derive(Debug)]
struct Churn {
    /// Connections that took over 300 ms (a SYN retried after a second) or timed out.
    slow: usize,
    refused: usize,
    /// The client's SYN retransmissions and the backend's SYNs refused by a TIME_WAIT (`TcpExtPAWSTimewait`),
    /// from the namespaces' TCP counters.
    syn_retransmits: i64,
    time_wait_refusals: i64,
    /// Packets the whole machine dropped at a full CPU backlog meanwhile ([`netstat::backlog_drops`]).
    backlog_drops: u64,
}

/// `connections` sequential connections, one every `gap`, through the SNAT range `ports` to one backend.
fn churn(
    server_closes_first: bool,
    ports: &str,
    connections: usize,
    gap: Duration,
) -> Result<Churn> {
    let topo = Topology::builder().backends(1).build()?;
    let listener = topo.backend(1).run(|| TcpListener::bind("0.0.0.0:5000"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || {
        while !server_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"x");
                    if !server_closes_first {
                        let mut buf = [0u8; 16];
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = s.read(&mut buf);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let dir = tempfile::tempdir()?;
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::tcp("tcp", 9000, 5000, &[topo.backend_addr(1)])],
        ),
    )?;
    let _gw = GatewayProcess::start(topo.gateway(), &[&config], &["--snat-ports", ports])?;
    let target = SocketAddr::from((topology::vip(1), 9000));
    let backlog_drops_before = netstat::backlog_drops()?;
    let before = [
        netstat::Snapshot::take(topo.client())?,
        netstat::Snapshot::take(topo.backend(1))?,
    ];
    let (slow, refused) = topo.client().run(move || {
        let (mut slow, mut refused) = (0, 0);
        for _ in 0..connections {
            std::thread::sleep(gap);
            let started = Instant::now();
            match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = [0u8; 16];
                    let _ = s.read(&mut buf);
                    if server_closes_first {
                        let _ = s.read(&mut buf); // the server's FIN: the client closes second
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(_) => slow += 1,
            }
            let took = started.elapsed();
            if took > Duration::from_millis(300) {
                slow += 1;
            }
        }
        (slow, refused)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let client = netstat::Snapshot::take(topo.client())?.changes_since(&before[0]);
    let backend = netstat::Snapshot::take(topo.backend(1))?.changes_since(&before[1]);
    Ok(Churn {
        slow,
        refused,
        syn_retransmits: client.get("TcpExtTCPSynRetrans").copied().unwrap_or(0),
        time_wait_refusals: backend.get("TcpExtPAWSTimewait").copied().unwrap_or(0),
        backlog_drops: netstat::backlog_drops()? - backlog_drops_before,
    })
}

impl Churn {
    /// Stalled without any refusal while the machine dropped packets at a full CPU backlog: other tests share
    /// those backlogs, so such a run proves nothing about the gateway.
    fn spoiled_by_the_machine(&self) -> bool {
        (self.slow > 0 || self.syn_retransmits > 0)
            && self.backlog_drops > 0
            && self.refused == 0
            && self.time_wait_refusals == 0
    }
}

/// Runs a churn and asserts it saw no stall, refusal or TIME_WAIT refusal; a run the machine spoiled
/// ([`Churn::spoiled_by_the_machine`]) is run once more. Refusals are never excused.
fn assert_clean(run: impl Fn() -> Result<Churn>) -> Result<()> {
    let mut churn = run()?;
    eprintln!("{churn:?}");
    if churn.spoiled_by_the_machine() {
        eprintln!(
            "the machine dropped packets at a full backlog during the run: running it once more"
        );
        churn = run()?;
        eprintln!("{churn:?}");
    }
    assert_eq!(
        (
            churn.slow,
            churn.refused,
            churn.syn_retransmits,
            churn.time_wait_refusals
        ),
        (0, 0, 0, 0),
        "stalled or refused connections: {churn:?}"
    );
    Ok(())
}

/// ~150 connections/s through 500 ports: 1,200 connections reuse every port more than twice.
fn steady_churn(server_closes_first: bool) -> Result<()> {
    let gap = Duration::from_micros(6500);
    assert_clean(|| churn(server_closes_first, "20000-20499", 1200, gap))
}

#[test]
fn ports_are_reused_without_stalls_when_the_client_closes_first() -> Result<()> {
    steady_churn(false)
}

#[test]
fn ports_are_reused_without_stalls_when_the_server_closes_first() -> Result<()> {
    steady_churn(true)
}

/// 64 ports and ~90 connections/s with the backend closing first: each port is taken over by other client
/// 4-tuples about eight times while the backend still holds its TIME_WAIT, and a client's timestamps and sequence
/// numbers are unrelated across its 4-tuples. Reusing a port at random would have about half of those SYNs
/// refused by the TIME_WAIT and retried after a second; the kernel must pick ports whose TIME_WAIT accepts.
#[test]
fn a_port_in_the_backends_time_wait_goes_only_to_a_syn_it_accepts() -> Result<()> {
    assert_clean(|| churn(true, "20000-20063", 500, Duration::from_millis(10)))
}
