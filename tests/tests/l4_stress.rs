//! The kernel path under load and change: a full conntrack table refuses new flows at once without touching
//! established ones; a thousand long-lived flows survive a hundred configuration changes with no reset; a
//! gigabyte goes each way through one connection with every byte checked.
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use gateway_tests::{
    echo::{spawn_echo, EchoConfig},
    gateway::write_manifests,
    manifests::{l4_gateway, L4Listener},
    stream::{check_stream, send_stream},
    topology, GatewayProcess, Process, Topology,
};

fn target() -> SocketAddr {
    SocketAddr::from((topology::vip(1), 9000))
}

fn echo_backends(topo: &Topology) -> Result<Vec<Process>> {
    (1..=topo.backend_count())
        .map(|i| {
            spawn_echo(
                topo.backend(i),
                &EchoConfig::new(&format!("echo-{i}-abc-xyz"), "infra").tcp(3000),
            )
        })
        .collect()
}

fn open(topo: &Topology) -> Result<TcpStream> {
    topo.client().run(|| -> Result<TcpStream> {
        let s = TcpStream::connect_timeout(&target(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    })
}

/// Reads the greeting (on first use) and answers a PING.
fn ping(s: &mut TcpStream, greeted: bool) -> Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    if !greeted {
        r.read_line(&mut line)?;
        ensure!(
            line.starts_with("Gateway API Test TCP Server"),
            "greeting {line:?}"
        );
        line.clear();
    }
    s.write_all(b"PING\n")?;
    r.read_line(&mut line)?;
    ensure!(line == "PONG\n", "answer {line:?}");
    Ok(())
}

#[test]
fn a_full_conntrack_table_refuses_new_flows_and_keeps_established_ones() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let _echo = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::tcp("tcp", 9000, 3000, &[topo.backend_addr(1)])],
        ),
    )?;
    // Room for four flows (two entries each).
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &["--conntrack-entries", "8"])?;
    let mut held: Vec<TcpStream> = (0..4).map(|_| open(&topo)).collect::<Result<_>>()?;
    for s in &mut held {
        ping(s, false)?;
    }
    let started = Instant::now();
    let refused = topo
        .client()
        .run(|| TcpStream::connect_timeout(&target(), Duration::from_secs(3)));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    assert!(gw.kernel_packets("table_full")? >= 1);
    for s in &mut held {
        ping(s, true)?;
    }
    Ok(())
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn a_thousand_flows_survive_a_hundred_configuration_changes() -> Result<()> {
    const FLOWS: usize = 1000;
    const CHANGES: usize = 100;
    raise_fd_limit();
    let topo = Topology::builder().backends(3).build()?;
    let _echo = echo_backends(&topo)?;
    let dir = tempfile::tempdir()?;
    let all: Vec<Ipv4Addr> = (1..=3).map(|i| topo.backend_addr(i)).collect();
    let write = |endpoints: &[Ipv4Addr], extra_port: u16| {
        write_manifests(
            dir.path(),
            &l4_gateway(
                topology::vip(1),
                &[
                    L4Listener::tcp("tcp", 9000, 3000, endpoints),
                    L4Listener::tcp("churn", extra_port, 3000, &all[..1]),
                ],
            ),
        )
    };
    let config = write(&all, 9100)?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let mut held: Vec<TcpStream> = (0..FLOWS).map(|_| open(&topo)).collect::<Result<_>>()?;
    for s in &mut held {
        ping(s, false)?;
    }
    // Backends removed and added back, and another route edited, a hundred times; each change applied before
    // the next.
    for change in 0..CHANGES {
        let generation = gw.metric("gateway_config_generation")?;
        let endpoints: Vec<Ipv4Addr> = match change % 3 {
            0 => all[..1].to_vec(),
            1 => all[1..].to_vec(),
            _ => all.clone(),
        };
        write(&endpoints, 9100 + (change % 7) as u16)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.metric("gateway_config_generation")? == generation {
            ensure!(
                Instant::now() < deadline,
                "change {change} was not applied within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut failures = 0;
    for s in &mut held {
        if ping(s, true).is_err() {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 0,
        "established flows broken by configuration changes"
    );
    assert_eq!(gw.kernel_packets("no_flow_reset")?, 0);
    Ok(())
}

#[test]
fn a_gigabyte_each_way_arrives_intact() -> Result<()> {
    const TOTAL: usize = 1 << 30;
    let topo = Topology::builder().backends(1).build()?;
    let listener = topo.backend(1).run(|| TcpListener::bind("0.0.0.0:5000"))?;
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || send_stream(&mut w, TOTAL, 1 << 40));
        let got = check_stream(&mut s, TOTAL, 0)?;
        writer.join().expect("server writer")?;
        Ok(got)
    });
    let dir = tempfile::tempdir()?;
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::tcp("tcp", 9000, 5000, &[topo.backend_addr(1)])],
        ),
    )?;
    let _gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let started = Instant::now();
    let mut s = open(&topo)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || send_stream(&mut w, TOTAL, 0));
    let downloaded = check_stream(&mut s, TOTAL, 1 << 40)?;
    writer.join().expect("client writer")?;
    let uploaded = server.join().expect("server")?;
    assert_eq!((uploaded, downloaded), (TOTAL, TOTAL));
    eprintln!("2 GiB through the gateway in {:.1?}", started.elapsed());
    Ok(())
}
