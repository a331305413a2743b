// The TLS passthrough cases, run through both paths: `tls_passthrough.rs` (userspace proxy) and `tls_kernel.rs`
// (the eBPF splice) include this module with their `MODE`. TLSRoutes given as Gateway API YAML to `gateway run`,
// connections from the client namespace routed by the SNI of their ClientHello to TLS echo backends, which
// complete the handshake themselves and report the SNI they saw. Mirrors the conformance TLSRoute cases
// (CONFORMANCE-CASES.md §1); rejections must be EOF or RST, never a TLS alert.
// Some helpers serve only the userspace path's own tests (in tls_passthrough.rs); the kernel binary leaves them
// unused.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig, TcpEchoReply},
    gateway::write_manifests,
    pki::{CertBundle, Pki},
    topology, GatewayProcess, Process, Topology,
};

pub(crate) const PORT: u16 = 443;
pub(crate) const TLS_PORT: u16 = 8443;
pub(crate) const CLASS: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ebpf}
spec: {controllerName: ebpf-gateway.dev/gatewayclass-controller}
"#;

/// A Gateway at `198.18.100.{vip}` with one TLS Passthrough listener on 443.
pub(crate) fn gateway(name: &str, vip: u8, hostname: Option<&str>) -> String {
    let hostname = hostname
        .map(|h| format!(", hostname: \"{h}\""))
        .unwrap_or_default();
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra}}
spec:
  gatewayClassName: ebpf
  addresses: [{{type: IPAddress, value: {addr}}}]
  listeners:
  - {{name: tls, protocol: TLS, port: {PORT}, tls: {{mode: Passthrough}}{hostname}}}
"#,
        addr = topology::vip(vip)
    )
}

/// A TLSRoute on `gateway` for `hostnames` to the Service `backend` (namespace `backend_ns`), with extra
/// backendRef fields (e.g. `group: x, kind: Y`) and annotations.
pub(crate) fn route(
    name: &str,
    gateway: &str,
    hostnames: &[&str],
    backend_ref: &str,
    annotations: &str,
) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: infra, annotations: {{{annotations}}}}}
spec:
  parentRefs: [{{name: {gateway}}}]
  hostnames: [{hostnames}]
  rules:
  - backendRefs: [{{{backend_ref}}}]
"#,
        hostnames = hostnames.join(", ")
    )
}

/// A Service on port 443 → 8443 with an EndpointSlice at `endpoint`.
pub(crate) fn service(name: &str, namespace: &str, endpoint: std::net::Ipv4Addr) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{port: 443, targetPort: {TLS_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-a1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{port: {TLS_PORT}, protocol: TCP}}]
endpoints:
- addresses: ["{endpoint}"]
  conditions: {{ready: true}}
"#
    )
}

pub(crate) struct Setup<'t> {
    pub(crate) topo: &'t Topology,
    pub(crate) pki: Pki,
    _echoes: Vec<Process>,
    pub(crate) dir: tempfile::TempDir,
}

/// Starts a TLS echo on each backend i, with pod name `<deployments[i-1]>-5f9c-x<i>` and a certificate for
/// abc.example.com and other.example.com (conformance's `tls-checks-certificate`).
pub(crate) fn start<'t>(topo: &'t Topology, deployments: &[&str]) -> Result<Setup<'t>> {
    let pki = Pki::new("tls-checks-ca")?;
    let cert: CertBundle = pki.issue(
        "tls-checks-certificate",
        &["abc.example.com", "other.example.com"],
    )?;
    let mut echoes = Vec::new();
    for (i, deployment) in deployments.iter().enumerate() {
        let cfg = EchoConfig::new(&format!("{deployment}-5f9c-x{}", i + 1), "infra")
            .service(deployment)
            .tls(TLS_PORT)
            .tls_pem(&cert.cert_pem, &cert.key_pem);
        echoes.push(spawn_echo(topo.backend(i + 1), &cfg)?);
    }
    Ok(Setup {
        topo,
        pki,
        _echoes: echoes,
        dir: tempfile::tempdir()?,
    })
}

impl Setup<'_> {
    pub(crate) fn gateway(&self, yaml: &str) -> Result<GatewayProcess<'_>> {
        let config = write_manifests(self.dir.path(), &format!("{CLASS}{yaml}"))?;
        GatewayProcess::start(
            self.topo.gateway(),
            &[&config],
            &["--tls-passthrough", super::MODE],
        )
    }

    /// A Gateway `gw` at vip 1 with one TLSRoute for abc.example.com to the first backend (`tls-backend`),
    /// started with the extra `gateway run` arguments `args`.
    pub(crate) fn one_route_gateway(&self, args: &[&str]) -> Result<GatewayProcess<'_>> {
        let yaml = [
            CLASS.to_string(),
            gateway("gw", 1, None),
            route(
                "r",
                "gw",
                &["abc.example.com"],
                "name: tls-backend, port: 443",
                "",
            ),
            service("tls-backend", "infra", self.topo.backend_addr(1)),
        ]
        .concat();
        let config = write_manifests(self.dir.path(), &yaml)?;
        GatewayProcess::start(self.topo.gateway(), &[&config], args)
    }

    /// TLS dial (rustls, the harness client) with `sni`, then the echo's `TEST` line; retried briefly while the
    /// listener comes up.
    pub(crate) fn echo(&self, vip: u8, sni: &str) -> Result<TcpEchoReply> {
        let addr = SocketAddr::from((topology::vip(vip), PORT));
        let mut last = None;
        for _ in 0..20 {
            match self
                .topo
                .client()
                .run(|| clients::tls_echo_test(addr, sni, self.pki.ca_pem()))
            {
                Ok(reply) => return Ok(reply),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        Err(last.expect("tried")).with_context(|| format!("TLS echo via {addr} with SNI {sni}"))
    }

    /// Asserts that a TLS dial with `sni` is rejected by EOF or RST before the handshake completes (a TLS alert
    /// does not count, per the conformance suite).
    pub(crate) fn assert_rejected(&self, vip: u8, sni: &str) -> Result<()> {
        let addr = SocketAddr::from((topology::vip(vip), PORT));
        let outcome = self
            .topo
            .client()
            .run(|| raw_tls_dial(addr, sni, self.pki.ca_pem()))?;
        match outcome {
            DialOutcome::ResetOrEof(kind) => {
                eprintln!("SNI {sni} via {addr}: rejected ({kind:?})");
                Ok(())
            }
            other => bail!("SNI {sni} via {addr}: expected EOF/RST, got {other:?}"),
        }
    }
}

#[derive(Debug)]
pub(crate) enum DialOutcome {
    /// The handshake completed: the connection was routed.
    Handshake,
    /// EOF or ECONNRESET during the handshake: the accepted rejection.
    ResetOrEof(std::io::ErrorKind),
    /// Anything else, e.g. a TLS alert (rustls reports it as InvalidData).
    Other(#[allow(dead_code)] String),
}

pub(crate) fn raw_tls_dial(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<DialOutcome> {
    let config = clients::tls_client_config(ca_pem, &[])?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::clone(&config), name)?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) => {
                return Ok(match e.kind() {
                    k @ (std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted) => DialOutcome::ResetOrEof(k),
                    _ => DialOutcome::Other(format!("{e} ({:?})", e.kind())),
                })
            }
        }
    }
    Ok(DialOutcome::Handshake)
}

/// A one-connection TCP relay on 127.0.0.1 towards `upstream` that writes the first `slow` bytes from its client
/// one byte per segment (TCP_NODELAY and a pause between bytes), then copies normally. Call inside a namespace.
pub(crate) fn byte_by_byte_relay(upstream: SocketAddr, slow: usize) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let local = listener.local_addr()?;
    let up = TcpStream::connect_timeout(&upstream, Duration::from_secs(3))?;
    up.set_nodelay(true)?;
    std::thread::spawn(move || -> Result<()> {
        let (down, _) = listener.accept()?;
        let (mut down_r, mut up_w) = (down.try_clone()?, up.try_clone()?);
        let (mut up_r, mut down_w) = (up, down);
        std::thread::spawn(move || std::io::copy(&mut up_r, &mut down_w));
        let mut sent = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = down_r.read(&mut buf)?;
            if n == 0 {
                up_w.shutdown(std::net::Shutdown::Write)?;
                return Ok(());
            }
            for b in &buf[..n] {
                up_w.write_all(std::slice::from_ref(b))?;
                sent += 1;
                if sent < slow {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
        }
    });
    Ok(local)
}

pub(crate) fn check_reply(reply: &TcpEchoReply, deployment: &str, sni: &str) -> Result<()> {
    ensure!(
        reply.pod.starts_with(&format!("{deployment}-")),
        "answered by {} not {deployment}",
        reply.pod
    );
    ensure!(reply.namespace == "infra", "namespace {}", reply.namespace);
    ensure!(reply.is_tls, "the backend did not terminate TLS");
    let seen = reply
        .tls
        .as_ref()
        .map(|t| t.server_name.as_str())
        .unwrap_or_default();
    ensure!(seen == sni, "backend saw SNI {seen:?}, client sent {sni:?}");
    Ok(())
}

pub(crate) fn metric(gw: &GatewayProcess, needle: &str) -> Result<u64> {
    let (status, body) = gw.admin_get("/metrics")?;
    ensure!(status == 200);
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("gateway_tls_passthrough_connections_total") && l.contains(needle)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// TLSRouteSimpleSameNamespace, with the rustls client and with `openssl s_client`.
#[test]
pub(crate) fn tls_route_simple_same_namespace() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start(&topo, &["tcp-backend"])?;
    let gw = setup.gateway(&format!(
        "{}{}{}",
        gateway("gateway-tlsroute", 1, Some("*.example.com")),
        route(
            "gateway-conformance-infra-test",
            "gateway-tlsroute",
            &["abc.example.com"],
            "name: tcp-backend, port: 443",
            ""
        ),
        service("tcp-backend", "infra", topo.backend_addr(1)),
    ))?;

    let reply = setup.echo(1, "abc.example.com")?;
    check_reply(&reply, "tcp-backend", "abc.example.com")?;

    // The same through openssl s_client: the backend's certificate verifies against the CA, so the handshake was
    // end to end with the backend, and the echo reports the SNI.
    let ca = setup.dir.path().join("ca.pem");
    std::fs::write(&ca, setup.pki.ca_pem())?;
    let script = format!(
        "(sleep 0.5; printf 'TEST\\n'; sleep 1) | timeout 10 openssl s_client -connect {}:{PORT} \
         -servername abc.example.com -CAfile {} -verify_return_error -quiet 2>&1; true",
        topology::vip(1),
        ca.display()
    );
    let out = topo.client().exec(&["sh", "-c", &script])?;
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("s_client output: {out}"))?;
    let reply: TcpEchoReply = serde_json::from_str(json)?;
    check_reply(&reply, "tcp-backend", "abc.example.com")?;

    // A ClientHello written one byte at a time (a relay in the client namespace between rustls and the Gateway
    // sends the first 600 bytes one per segment): reassembled and routed, and the handshake completes.
    let relay = topo
        .client()
        .run(|| byte_by_byte_relay(SocketAddr::from((topology::vip(1), PORT)), 600))?;
    let reply = topo
        .client()
        .run(|| clients::tls_echo_test(relay, "abc.example.com", setup.pki.ca_pem()))?;
    check_reply(&reply, "tcp-backend", "abc.example.com")?;

    // Not TLS at all, and TLS without SNI: reset, counted by reason.
    let plain = topo.client().run(|| -> Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((topology::vip(1), PORT)),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: abc.example.com\r\n\r\n")?;
        let mut buf = Vec::new();
        Ok(match s.read_to_end(&mut buf) {
            Ok(_) if buf.is_empty() => "eof".into(),
            Ok(_) => format!("data {buf:?}"),
            Err(e) => format!("{:?}", e.kind()),
        })
    })?;
    ensure!(
        plain == "ConnectionReset" || plain == "eof",
        "plain HTTP got {plain}"
    );
    let no_sni = topo.client().run(|| {
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "timeout 10 openssl s_client -connect {}:{PORT} -noservername </dev/null 2>&1",
                    topology::vip(1)
                ),
            ])
            .output()?;
        anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    ensure!(!no_sni.contains("alert"), "a TLS alert was sent: {no_sni}");
    ensure!(
        !no_sni.contains("BEGIN CERTIFICATE") && !no_sni.contains("Server certificate"),
        "handshake completed: {no_sni}"
    );
    ensure!(metric(&gw, "reason=\"not_tls\"")? >= 1, "not_tls counted");
    ensure!(metric(&gw, "reason=\"no_sni\"")? >= 1, "no_sni counted");
    ensure!(metric(&gw, "outcome=\"routed\"")? >= 2, "routed counted");
    Ok(())
}

/// TLSRouteHostnameIntersection: four Gateways whose listener hostnames intersect the routes' differently.
#[test]
pub(crate) fn tls_route_hostname_intersection() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let setup = start(&topo, &["tls-backend", "tls-backend-2"])?;
    let b1 = "name: tls-backend, port: 443";
    let b2 = "name: tls-backend-2, port: 443";
    let yaml = [
        gateway("x-1", 1, Some("abc.example.com")),
        route("x-1-wild", "x-1", &["*.example.com"], b1, ""),
        gateway("x-2", 2, Some("*.example.com")),
        route("x-2-exact", "x-2", &["abc.example.com"], b1, ""),
        route("x-2-wild", "x-2", &["*.com"], b2, ""),
        gateway("x-3", 3, Some("*.com")),
        route("x-3-exact", "x-3", &["abc.example.com"], b1, ""),
        route("x-3-wild", "x-3", &["*.example.com"], b2, ""),
        gateway("x-4", 4, None),
        route("x-4-exact", "x-4", &["abc.example.com"], b1, ""),
        route("x-4-wild", "x-4", &["*.com"], b2, ""),
        service("tls-backend", "infra", topo.backend_addr(1)),
        service("tls-backend-2", "infra", topo.backend_addr(2)),
    ]
    .concat();
    let _gw = setup.gateway(&yaml)?;

    check_reply(
        &setup.echo(1, "abc.example.com")?,
        "tls-backend",
        "abc.example.com",
    )?;
    for vip in 2..=4 {
        check_reply(
            &setup.echo(vip, "abc.example.com")?,
            "tls-backend",
            "abc.example.com",
        )?;
        check_reply(
            &setup.echo(vip, "other.example.com")?,
            "tls-backend-2",
            "other.example.com",
        )?;
    }
    for vip in 1..=3 {
        setup.assert_rejected(vip, "non.matching.com")?;
    }
    setup.assert_rejected(4, "non.matching.org")?;
    Ok(())
}

/// TLSRouteInvalidBackendRefNonexistent and ...UnknownKind: the route is accepted, its connections rejected.
#[test]
pub(crate) fn tls_route_invalid_backend_refs_are_rejected() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start(&topo, &["tls-backend"])?;
    let yaml = [
        gateway("gateway-tlsroute", 1, None),
        route(
            "nonexistent",
            "gateway-tlsroute",
            &["example.com"],
            "name: nonexistent, port: 443",
            "",
        ),
        route(
            "unknown-kind",
            "gateway-tlsroute",
            &["unknown.example.com"],
            "group: unknownkind.example.com, kind: NonExistent, name: tls-backend, port: 443",
            "",
        ),
        route(
            "valid",
            "gateway-tlsroute",
            &["abc.example.com"],
            "name: tls-backend, port: 443",
            "",
        ),
        service("tls-backend", "infra", topo.backend_addr(1)),
    ]
    .concat();
    let gw = setup.gateway(&yaml)?;
    // The valid route works, so the listener is up when the others are rejected.
    check_reply(
        &setup.echo(1, "abc.example.com")?,
        "tls-backend",
        "abc.example.com",
    )?;
    setup.assert_rejected(1, "example.com")?;
    setup.assert_rejected(1, "unknown.example.com")?;
    ensure!(
        metric(&gw, "reason=\"invalid_backend\"")? >= 2,
        "invalid_backend counted"
    );
    Ok(())
}

/// A backend in another namespace needs a ReferenceGrant; without one the connection is rejected.
#[test]
pub(crate) fn tls_route_cross_namespace_backend_needs_a_reference_grant() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let setup = start(&topo, &["tls-backend"])?;
    let grant = r#"---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow-infra-tlsroutes, namespace: app-backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: tls-backend}]
"#;
    let yaml = [
        gateway("gateway-tlsroute-referencegrant", 1, Some("*.example.com")),
        route(
            "granted",
            "gateway-tlsroute-referencegrant",
            &["abc.example.com"],
            "name: tls-backend, namespace: app-backend, port: 443",
            "",
        ),
        route(
            "not-granted",
            "gateway-tlsroute-referencegrant",
            &["other.example.com"],
            "name: other-backend, namespace: app-backend, port: 443",
            "",
        ),
        service("tls-backend", "app-backend", topo.backend_addr(1)),
        service("other-backend", "app-backend", topo.backend_addr(1)),
        grant.to_string(),
    ]
    .concat();
    let _gw = setup.gateway(&yaml)?;
    check_reply(
        &setup.echo(1, "abc.example.com")?,
        "tls-backend",
        "abc.example.com",
    )?;
    setup.assert_rejected(1, "other.example.com")?;
    Ok(())
}

/// Weighted backends split connections by weight; a route change swaps the table without breaking an
/// established connection.
#[test]
pub(crate) fn tls_route_weights_and_table_swap_keep_established_connections() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let setup = start(&topo, &["tls-a", "tls-b"])?;
    let routes = |weight_b: u32| {
        [
            gateway("gw", 1, None),
            route(
                "split",
                "gw",
                &["abc.example.com"],
                &format!("name: tls-a, port: 443, weight: 1}}, {{name: tls-b, port: 443, weight: {weight_b}"),
                "",
            ),
            service("tls-a", "infra", topo.backend_addr(1)),
            service("tls-b", "infra", topo.backend_addr(2)),
        ]
        .concat()
    };
    let config = write_manifests(setup.dir.path(), &format!("{CLASS}{}", routes(3)))?;
    let _gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    setup.echo(1, "abc.example.com")?;

    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let reply = setup.echo(1, "abc.example.com")?;
        *counts
            .entry(clients::deployment_of(&reply.pod).to_string())
            .or_default() += 1;
    }
    let b = counts.get("tls-b").copied().unwrap_or(0) as f64 / 200.0;
    ensure!(
        (b - 0.75).abs() < 0.12,
        "tls-b share {b} (want 0.75): {counts:?}"
    );

    // Hold a connection, move all weight to tls-a, and check the held one still works afterwards.
    let addr = SocketAddr::from((topology::vip(1), PORT));
    let held = topo.client().run(|| -> Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        Ok(s)
    })?;
    let cfg = clients::tls_client_config(setup.pki.ca_pem(), &[])?;
    let conn = rustls::ClientConnection::new(
        cfg,
        rustls::pki_types::ServerName::try_from("abc.example.com")?,
    )?;
    let mut tls = rustls::StreamOwned::new(conn, held);
    tls.sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut greeting = String::new();
    BufReader::new(&mut tls).read_line(&mut greeting)?;
    ensure!(
        greeting.starts_with("Gateway API Test TCP Server"),
        "greeting {greeting:?}"
    );

    write_manifests(setup.dir.path(), &format!("{CLASS}{}", routes(0)))?;
    let mut moved = false;
    for _ in 0..40 {
        let reply = setup.echo(1, "abc.example.com")?;
        if clients::deployment_of(&reply.pod) == "tls-a" {
            let all_a = (0..10).all(|_| {
                setup
                    .echo(1, "abc.example.com")
                    .map(|r| clients::deployment_of(&r.pod) == "tls-a")
                    .unwrap_or(false)
            });
            if all_a {
                moved = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        moved,
        "weight 0 backend still receives connections after the update"
    );
    tls.write_all(b"PING\n")?;
    let mut line = String::new();
    BufReader::new(&mut tls).read_line(&mut line)?;
    ensure!(
        line == "PONG\n",
        "held connection answered {line:?} after the table swap"
    );
    Ok(())
}

/// `TEST` on an established TLS echo session: the echo's JSON reply.
pub(crate) fn echo_test<S: Read + Write>(tls: &mut S) -> Result<TcpEchoReply> {
    let mut reader = BufReader::new(tls);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    ensure!(
        greeting.starts_with("Gateway API Test TCP Server"),
        "greeting {greeting:?}"
    );
    reader.get_mut().write_all(b"TEST\n")?;
    reader.get_mut().flush()?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// A connection that sent part of a real ClientHello and stalls.
pub(crate) struct Stalled {
    sock: TcpStream,
    conn: rustls::ClientConnection,
    rest: Vec<u8>,
}

/// Connects from `ns` to `addr` and sends the first half of a rustls ClientHello for `sni`.
pub(crate) fn stall(
    ns: &gateway_tests::Netns,
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
) -> Result<Stalled> {
    let cfg = clients::tls_client_config(ca_pem, &[])?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let mut conn = rustls::ClientConnection::new(cfg, name)?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    ensure!(hello.len() > 100, "ClientHello of {} bytes", hello.len());
    let mut sock = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
    sock.set_nodelay(true)?;
    let rest = hello.split_off(hello.len() / 2);
    sock.write_all(&hello)?;
    Ok(Stalled { sock, conn, rest })
}

impl Stalled {
    /// Sends the rest of the ClientHello, completes the handshake and runs `TEST` with the echo.
    pub(crate) fn finish(mut self) -> Result<TcpEchoReply> {
        self.sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        self.sock.write_all(&self.rest)?;
        let mut tls = rustls::StreamOwned::new(self.conn, self.sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        echo_test(&mut tls)
    }

    /// Waits (≤ `limit`) for the gateway to close the connection; how it closed (EOF or RST) and after how long
    /// since `since`. Anything else (data, another error, still open) is an error.
    pub(crate) fn closed(
        &mut self,
        since: std::time::Instant,
        limit: Duration,
    ) -> Result<(String, Duration)> {
        self.sock.set_read_timeout(Some(limit))?;
        let mut buf = [0u8; 64];
        let how = match self.sock.read(&mut buf) {
            Ok(0) => "eof".to_string(),
            Ok(n) => bail!("got {n} bytes instead of a close: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "rst".to_string(),
            Err(e) => bail!("not closed within {limit:?}: {e} ({:?})", e.kind()),
        };
        Ok((how, since.elapsed()))
    }
}

/// A raw TCP backend in `ns` on `TLS_PORT` that reads each connection to EOF — slowly, 64 KiB at a time with
/// a pause, so a fast sender meets backpressure — then, 100 ms after the client's EOF (the gateway must keep
/// the other direction open), answers `<bytes> <hash>` and closes. Stops accepting when `stop` is set.
pub(crate) fn counting_backend(
    ns: &gateway_tests::Netns,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn_thread(move || -> Result<()> {
        let listener = std::net::TcpListener::bind(("0.0.0.0", TLS_PORT))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (mut conn, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            std::thread::spawn(move || -> Result<()> {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(20)))?;
                let (mut total, mut hash) = (0usize, Fnv::default());
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n;
                    hash.write(&buf[..n]);
                    std::thread::sleep(Duration::from_micros(500));
                }
                std::thread::sleep(Duration::from_millis(100));
                conn.write_all(format!("{total} {:x}\n", hash.0).as_bytes())?;
                Ok(())
            });
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("backend did not start")?;
    Ok(handle)
}

/// FNV-1a, 64 bits: the same on both sides of the wire.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Sends `bytes`, closes the sending side and reads until the gateway or the backend closes. `Ok(reply)` or
/// how the connection ended without one.
pub(crate) fn send_and_half_close(
    addr: SocketAddr,
    bytes: &[u8],
) -> Result<std::result::Result<String, String>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    if let Err(e) = s.write_all(bytes) {
        return Ok(Err(format!("{:?} while sending", e.kind())));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    Ok(match s.read_to_end(&mut reply) {
        Ok(_) if reply.is_empty() => Err("eof".into()),
        Ok(_) => Ok(String::from_utf8_lossy(&reply).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && reply.is_empty() => {
            Err("rst".into())
        }
        Err(e) => bail!("{e} ({:?}) after {} bytes", e.kind(), reply.len()),
    })
}

/// The ClientHello corpus through the running gateway (not only the parser): every `sni:` case is routed and
/// its bytes reach the backend unchanged; every `reject:` case is closed with EOF or RST, no byte back, and
/// counted under its reason. Then forwarding itself: half-close (the backend answers after the client's EOF),
/// and a 32 MiB upload to a slow backend arrives whole while the gateway's memory stays flat (backpressure).
#[test]
pub(crate) fn tls_corpus_through_the_gateway_then_half_close_and_backpressure() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = counting_backend(topo.backend(1), stop.clone())?;
    let dir = tempfile::tempdir()?;
    let yaml = [
        CLASS.to_string(),
        gateway("gw", 1, None),
        route("all", "gw", &["*.example.com"], "name: raw, port: 443", ""),
        service("raw", "infra", topo.backend_addr(1)),
    ]
    .concat();
    let config = write_manifests(dir.path(), &yaml)?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let addr = SocketAddr::from((topology::vip(1), PORT));
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway-userspace/tests/corpus/clienthello");
    let manifest = std::fs::read_to_string(corpus.join("MANIFEST"))?;
    let cases: Vec<(String, String)> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    ensure!(cases.len() >= 30, "{} corpus cases", cases.len());
    let result = (|| -> Result<()> {
        // The listener comes up asynchronously: wait for the first routed case.
        let routed = |bytes: &[u8]| -> Result<std::result::Result<String, String>> {
            topo.client().run(|| send_and_half_close(addr, bytes))
        };
        let first = std::fs::read(corpus.join("rustls.bin"))?;
        let mut up = false;
        for _ in 0..40 {
            if matches!(routed(&first), Ok(Ok(_))) {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        ensure!(up, "the passthrough listener never routed a hello");
        let mut rejected: std::collections::BTreeMap<String, u64> = Default::default();
        for (file, outcome) in &cases {
            let bytes = std::fs::read(corpus.join(file))?;
            let got = routed(&bytes)?;
            match outcome.split_once(':') {
                Some(("sni", _)) => {
                    let mut hash = Fnv::default();
                    hash.write(&bytes);
                    let want = format!("{} {:x}\n", bytes.len(), hash.0);
                    ensure!(
                        got.as_deref() == Ok(want.as_str()),
                        "{file} ({outcome}): backend answered {got:?}, want {want:?}"
                    );
                }
                Some(("reject", reason)) => {
                    ensure!(got.is_err(), "{file} ({outcome}) was routed: {got:?}");
                    *rejected.entry(reason.to_string()).or_default() += 1;
                }
                _ => bail!("MANIFEST outcome {outcome:?}"),
            }
        }
        for (reason, count) in &rejected {
            let counted = metric(&gw, &format!("reason=\"{reason}\""))?;
            ensure!(
                counted >= *count,
                "{reason}: {counted} counted, {count} sent"
            );
        }

        // 32 MiB after the hello to a backend that reads slowly: all of it arrives, in order, and the gateway's
        // peak memory does not grow by anything like the amount in flight.
        let hwm = |pid: u32| -> Result<u64> {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("VmHWM")
        };
        let pid = gw.pid().context("gateway pid")?;
        let before = hwm(pid)?;
        let mut upload = first.clone();
        upload.extend((0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let mut hash = Fnv::default();
        hash.write(&upload);
        let got = routed(&upload)?;
        let want = format!("{} {:x}\n", upload.len(), hash.0);
        ensure!(
            got.as_deref() == Ok(want.as_str()),
            "upload: {got:?}, want {want:?}"
        );
        let grew = hwm(pid)?.saturating_sub(before);
        ensure!(
            grew < 8 * 1024,
            "the gateway's peak RSS grew by {grew} KiB while 32 MiB went to a slow backend"
        );
        Ok(())
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = backend.join();
    if result.is_err() {
        eprintln!("gateway log:\n{}", gw.log());
    }
    result
}
