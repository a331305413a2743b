//! End to end through the userspace TLS passthrough path (the proxy): the cases shared with the kernel path
//! (`tls_cases/`), plus what only the proxy does (PROXY protocol v2, per-source pending limits, its own
//! handshake-timeout accounting).
const MODE: &str = "userspace";

#[path = "tls_cases/mod.rs"]
mod cases;

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use cases::*;
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig, TcpEchoReply},
    gateway::write_manifests,
    pki::Pki,
    topology, GatewayProcess, Topology,
};

/// PROXY protocol v2 on the wire: with the route annotation, the backend (which parses the header itself)
/// reports the client's real source address and port and the Gateway address it connected to; a route without
/// the annotation on the same listener sends no header (its backend would refuse one).
#[test]
fn tls_route_proxy_protocol_v2_carries_the_client_address() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let pki = Pki::new("tls-checks-ca")?;
    let cert = pki.issue(
        "tls-checks-certificate",
        &["abc.example.com", "other.example.com"],
    )?;
    let proxied = EchoConfig::new("tls-proxied-5f9c-x1", "infra")
        .tls(TLS_PORT)
        .tls_pem(&cert.cert_pem, &cert.key_pem)
        .proxy_protocol();
    let plain = EchoConfig::new("tls-plain-5f9c-x2", "infra")
        .tls(TLS_PORT)
        .tls_pem(&cert.cert_pem, &cert.key_pem);
    let _echoes = [
        spawn_echo(topo.backend(1), &proxied)?,
        spawn_echo(topo.backend(2), &plain)?,
    ];
    let dir = tempfile::tempdir()?;
    let yaml = [
        CLASS.to_string(),
        gateway("gw", 1, None),
        route(
            "proxied",
            "gw",
            &["abc.example.com"],
            "name: tls-proxied, port: 443",
            "gateway.ebpf.dev/proxy-protocol: v2",
        ),
        route(
            "plain",
            "gw",
            &["other.example.com"],
            "name: tls-plain, port: 443",
            "",
        ),
        service("tls-proxied", "infra", topo.backend_addr(1)),
        service("tls-plain", "infra", topo.backend_addr(2)),
    ]
    .concat();
    let config = write_manifests(dir.path(), &yaml)?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let addr = SocketAddr::from((topology::vip(1), PORT));
    let cfg = clients::tls_client_config(pki.ca_pem(), &[])?;
    // One TLS session from the client namespace; returns the client's own address and the echo's reply.
    let session = |sni: &str| -> Result<(SocketAddr, TcpEchoReply)> {
        topo.client().run(|| {
            let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            let local = sock.local_addr()?;
            let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
            let conn = rustls::ClientConnection::new(cfg.clone(), name)?;
            let mut tls = rustls::StreamOwned::new(conn, sock);
            Ok((local, echo_test(&mut tls)?))
        })
    };
    let mut last = None;
    for _ in 0..40 {
        match session("abc.example.com") {
            Ok(ok) => {
                last = Some(Ok(ok));
                break;
            }
            Err(e) => last = Some(Err(e)),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let result = (|| -> Result<()> {
        let (client, reply) = last.expect("tried")?;
        check_reply(&reply, "tls-proxied", "abc.example.com")?;
        let header = reply.proxy.context("the backend got no PROXY header")?;
        ensure!(
            header.source == client,
            "PROXY source {} but the client was {client}",
            header.source
        );
        ensure!(
            header.destination == addr,
            "PROXY destination {}",
            header.destination
        );
        // A second connection: another source port, reported as such.
        let (client2, reply2) = session("abc.example.com")?;
        ensure!(client2 != client, "same source port twice");
        ensure!(
            reply2.proxy.map(|h| h.source) == Some(client2),
            "second connection's source"
        );
        // The route without the annotation: no header (the plain echo would see garbage before the hello).
        let (_, reply) = session("other.example.com")?;
        check_reply(&reply, "tls-plain", "other.example.com")?;
        ensure!(reply.proxy.is_none(), "{reply:?}");
        Ok(())
    })();
    if result.is_err() {
        eprintln!("gateway log:\n{}", gw.log());
    }
    result
}

/// The handshake timeout: a client that sends half a ClientHello and stalls is closed (EOF or RST, no alert)
/// once the configured timeout has passed, not before, and the reason is counted; a complete hello within
/// the timeout is routed.
#[test]
fn tls_handshake_timeout_closes_a_stalled_client() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start(&topo, &["tls-backend"])?;
    let timeout = Duration::from_millis(1500);
    let gw = setup.one_route_gateway(&["--tls-handshake-timeout", "1.5"])?;
    let addr = SocketAddr::from((topology::vip(1), PORT));
    setup.echo(1, "abc.example.com")?;
    let result = (|| -> Result<()> {
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let mut stalled = stall(topo.client(), addr, "abc.example.com", setup.pki.ca_pem())?;
            let (how, after) = stalled.closed(started, Duration::from_secs(10))?;
            eprintln!("stalled client closed by {how} after {after:?}");
            ensure!(
                after >= timeout - Duration::from_millis(50),
                "closed after {after:?}, before the {timeout:?} timeout"
            );
            ensure!(
                after < timeout + Duration::from_secs(3),
                "closed only after {after:?}"
            );
        }
        ensure!(
            metric(&gw, "reason=\"timeout\"")? >= 2,
            "timeouts not counted"
        );
        // Half a hello, a pause well within the timeout, then the rest: routed.
        let stalled = stall(topo.client(), addr, "abc.example.com", setup.pki.ca_pem())?;
        std::thread::sleep(Duration::from_millis(500));
        check_reply(&stalled.finish()?, "tls-backend", "abc.example.com")
    })();
    if result.is_err() {
        eprintln!("gateway log:\n{}", gw.log());
    }
    result
}

/// The pending-ClientHello limits: per source address (2) and in total (3). Excess connections are closed at
/// once (EOF or RST, long before the handshake timeout) and counted as `overloaded`, while the pending ones
/// still complete and are routed, and new connections succeed once the pending ones are done.
#[test]
fn tls_pending_limits_per_source_and_in_total() -> Result<()> {
    let topo = Topology::builder().backends(1).clients(2).build()?;
    let setup = start(&topo, &["tls-backend"])?;
    let gw = setup.one_route_gateway(&[
        "--tls-handshake-timeout",
        "30",
        "--tls-max-pending",
        "3",
        "--tls-max-pending-per-source",
        "2",
    ])?;
    let addr = SocketAddr::from((topology::vip(1), PORT));
    let ca = setup.pki.ca_pem();
    let (a, b) = (topo.client_n(1), topo.client_n(2));
    setup.echo(1, "abc.example.com")?;
    // The gateway takes a pending slot when it accepts: wait until it holds `n` (its gauge says so).
    let settle = |n: u64| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let pending = gw.metric("gateway_tls_passthrough_pending_clienthellos")?;
            if pending == n {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{pending} pending ClientHellos, want {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // An excess connection: closed at once, maybe even before its half hello is written.
    let refused = |ns: &gateway_tests::Netns, what: &str| -> Result<()> {
        let started = std::time::Instant::now();
        match stall(ns, addr, "abc.example.com", ca) {
            Ok(mut excess) => {
                let (how, after) = excess
                    .closed(started, Duration::from_secs(5))
                    .with_context(|| format!("{what}: expected to be refused"))?;
                eprintln!("{what}: closed by {how} after {after:?}");
            }
            Err(e) => {
                let reset = e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    )
                });
                ensure!(reset, "{what}: {e:#}");
                eprintln!("{what}: reset while sending the hello");
            }
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        let overloaded = metric(&gw, "reason=\"overloaded\"")?;
        let a1 = stall(a, addr, "abc.example.com", ca)?;
        let a2 = stall(a, addr, "abc.example.com", ca)?;
        settle(2)?;
        refused(a, "third pending hello from one address")?;
        let b1 = stall(b, addr, "abc.example.com", ca)?;
        settle(3)?;
        refused(b, "fourth pending hello in total")?;
        ensure!(
            metric(&gw, "reason=\"overloaded\"")? >= overloaded + 2,
            "refusals not counted as overloaded"
        );
        // The refused ones never held a slot; the pending ones still go through and give theirs back.
        settle(3)?;
        for (name, s) in [("a1", a1), ("a2", a2), ("b1", b1)] {
            let reply = s
                .finish()
                .with_context(|| format!("pending connection {name}"))?;
            check_reply(&reply, "tls-backend", "abc.example.com")?;
        }
        settle(0)?;
        // Slots are free again: new connections from both addresses are routed.
        for ns in [a, b] {
            let reply = ns.run(|| clients::tls_echo_test(addr, "abc.example.com", ca))?;
            check_reply(&reply, "tls-backend", "abc.example.com")?;
        }
        Ok(())
    })();
    if result.is_err() {
        eprintln!("gateway log:\n{}", gw.log());
    }
    result
}
