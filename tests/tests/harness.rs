//! Tests of the harness itself, in real network namespaces (needs root).
//! Every test builds its own uniquely named topology, so they run in parallel
//! under `cargo nextest` (one process per test) and `cargo test` (threads).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_tests::clients::{self, deployment_of};
use gateway_tests::echo::{spawn_echo, EchoConfig, EchoServer, Identity};
use gateway_tests::gateway::{GatewayProcess, BPFFS_TEST_ROOT};
use gateway_tests::netns::{self, Netns, NETNS_RUN_DIR, PREFIX};
use gateway_tests::pki::Pki;
use gateway_tests::sockets;
use gateway_tests::topology::{Link, Topology};

fn sa(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn ns_exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

#[test]
fn topology_wires_client_gateway_backends_without_forwarding() {
    let topo = Topology::builder()
        .backends(2)
        .mtu(Link::Backend(2), 1400)
        .build()
        .unwrap();
    assert_eq!(topo.backend_count(), 2);
    assert!(topo.client().name().starts_with(PREFIX));
    assert!(topo.gateway().name().ends_with("-gw"));

    // Forwarding is off in the gateway: read through setns and through a subprocess.
    assert_eq!(topo.gateway().sysctl("net.ipv4.ip_forward").unwrap(), "0");
    assert_eq!(
        topo.gateway()
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "0"
    );

    // tx checksum offload is off on the sending peers.
    let k = topo.client().exec(&["ethtool", "-k", "eth0"]).unwrap();
    assert!(k.contains("tx-checksumming: off"), "{k}");
    let k = topo.backend(1).exec(&["ethtool", "-k", "eth0"]).unwrap();
    assert!(k.contains("tx-checksumming: off"), "{k}");
    // MTU option applied on both ends.
    assert!(topo
        .backend(2)
        .ip(&["link", "show", "eth0"])
        .unwrap()
        .contains("mtu 1400"));
    assert!(topo
        .gateway()
        .ip(&["link", "show", "bk2"])
        .unwrap()
        .contains("mtu 1400"));

    // Addresses and routes as documented.
    let a = topo.gateway().ip(&["-4", "-o", "addr"]).unwrap();
    for want in ["198.18.0.1/24", "198.18.11.1/24", "198.18.12.1/24"] {
        assert!(a.contains(want), "{want} missing in {a}");
    }
    assert!(!a.contains("198.18.100."), "VIPs must not be assigned: {a}");
    let r = topo.client().ip(&["route"]).unwrap();
    assert!(r.contains("default via 198.18.0.1"), "{r}");

    // gateway -> backend i and client -> gateway over TCP.
    let _b1 =
        EchoServer::start_in(topo.backend(1), EchoConfig::new("b1-x-y", "ns").tcp(3000)).unwrap();
    let _b2 =
        EchoServer::start_in(topo.backend(2), EchoConfig::new("b2-x-y", "ns").tcp(3000)).unwrap();
    let _g =
        EchoServer::start_in(topo.gateway(), EchoConfig::new("gw-x-y", "ns").tcp(3000)).unwrap();
    for i in 1..=2 {
        let r = topo
            .gateway()
            .run(|| clients::tcp_echo_test(sa(topo.backend_addr(i), 3000)))
            .unwrap();
        assert_eq!(deployment_of(&r.pod), format!("b{i}"));
    }
    let r = topo
        .client()
        .run(|| clients::tcp_echo_test(sa(topo.gateway_client_addr(), 3000)))
        .unwrap();
    assert_eq!(r.pod, "gw-x-y");

    // The client cannot reach a backend directly: the gateway does not forward.
    let started = Instant::now();
    let direct = topo.client().run(|| {
        TcpStream::connect_timeout(&sa(topo.backend_addr(1), 3000), Duration::from_millis(1500))
    });
    assert!(direct.is_err(), "client reached a backend directly");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn echo_backend_binary_speaks_all_protocols() {
    let topo = Topology::builder().backends(1).build().unwrap();
    let pki = Pki::new("harness test ca").unwrap();
    let leaf = pki
        .issue("abc", &["abc.example.com", "other.example.com"])
        .unwrap();
    let pod = Identity::pod_name("tcp-backend", 1);
    let cfg = EchoConfig::new(&pod, "gateway-conformance-infra")
        .service("tcp-backend")
        .tcp(3000)
        .tls(8443)
        .http(8080)
        .udp(8080)
        .h2c(3001)
        .https(9443)
        .tls_pem(&leaf.cert_pem, &leaf.key_pem);
    let proc = spawn_echo(topo.backend(1), &cfg).unwrap();
    assert!(proc.log().contains("READY"));
    let b = topo.backend_addr(1);
    let ca = pki.ca_pem().to_string();

    topo.gateway().run(|| {
        // TCP line protocol.
        let r = clients::tcp_echo_test(sa(b, 3000)).unwrap();
        assert_eq!(r.pod, pod);
        assert_eq!(deployment_of(&r.pod), "tcp-backend");
        assert_eq!(r.namespace, "gateway-conformance-infra");
        assert_eq!(r.service, "tcp-backend");
        assert_eq!((r.tcpport.as_str(), r.tlsport.as_str()), ("3000", "8443"));
        assert!(!r.is_tls && r.tls.is_none());
        let lines = clients::tcp_commands(sa(b, 3000), &["PING", "IS_TLS"]).unwrap();
        assert_eq!(lines, ["PONG", "false"]);

        // TLS: the SNI the client sent is reported.
        let r = clients::tls_echo_test(sa(b, 8443), "abc.example.com", &ca).unwrap();
        assert!(r.is_tls);
        let t = r.tls.expect("tls object");
        assert_eq!(t.server_name, "abc.example.com");
        assert_eq!(t.version, "TLS 1.3");
        assert!(t.cipher_suite.starts_with("TLS_"), "{}", t.cipher_suite);
        assert!(!t.curves.is_empty());
        // Wrong CA: handshake must fail.
        let other = Pki::new("other ca").unwrap();
        assert!(clients::tls_echo_test(sa(b, 8443), "abc.example.com", other.ca_pem()).is_err());

        // UDP.
        let u = clients::udp_echo(sa(b, 8080), "hello udp").unwrap();
        assert_eq!(u.request, "hello udp");
        assert_eq!(u.service, "tcp-backend");
        assert_eq!(u.pod, pod);

        // HTTP JSON echo.
        let (status, json) =
            clients::http_get(sa(b, 8080), "example.com", "/some/path?x=1").unwrap();
        assert_eq!(status, 200);
        assert_eq!(json["path"], "/some/path?x=1");
        assert_eq!(json["host"], "example.com");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["proto"], "HTTP/1.1");
        assert_eq!(json["httpPort"], "8080");
        assert_eq!(json["pod"], pod.as_str());
        assert!(json.get("tls").is_none());
        let r = clients::http_request(
            sa(b, 8080),
            "POST",
            "h.example",
            "/p",
            &[
                ("x-custom-header", "v1"),
                ("X-Echo-Set-Header", "X-Foo: bar, X-Baz:qux"),
            ],
        )
        .unwrap();
        let e = r.echo().unwrap();
        assert_eq!(e.method, "POST");
        assert_eq!(e.headers["X-Custom-Header"], ["v1"]);
        assert!(!e.headers.contains_key("Host"));
        assert_eq!(r.header("x-foo"), Some("bar"));
        assert_eq!(r.header("x-baz"), Some("qux"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let (s, body) = clients::http_get(sa(b, 8080), "h", "/health").unwrap();
        assert_eq!((s, body.as_str()), (200, Some("OK")));
        let (s, _) = clients::http_get(sa(b, 8080), "h", "/status/503").unwrap();
        assert_eq!(s, 503);
        let t0 = Instant::now();
        let (s, _) = clients::http_get(sa(b, 8080), "h", "/d?delay=300ms").unwrap();
        assert_eq!(s, 200);
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // h2c port also takes HTTP/1.1.
        let (s, json) = clients::http_get(sa(b, 3001), "h2c.example", "/").unwrap();
        assert_eq!((s, json["httpPort"].as_str()), (200, Some("3001")));
    });

    let https = topo
        .gateway()
        .run(|| clients::https_request(sa(b, 9443), "other.example.com", &ca, "h", "/tls"))
        .unwrap();
    assert_eq!(https.status, 200);
    let t = https.echo().unwrap().tls.expect("tls in https echo");
    assert_eq!(t.server_name, "other.example.com");
    assert_eq!(t.version, "TLSv1.3");
    assert_eq!(t.negotiated_protocol, "http/1.1");

    // h2c with prior knowledge.
    let r = topo
        .gateway()
        .run(|| clients::h2c_get(sa(b, 3001), "h2.example", "/h2?q=1"))
        .unwrap();
    let e = r.echo().unwrap();
    assert_eq!((r.status, e.proto.as_str()), (200, "HTTP/2.0"));
    assert_eq!(
        (e.host.as_str(), e.path.as_str()),
        ("h2.example", "/h2?q=1")
    );
}

#[test]
fn in_process_echo_with_ephemeral_ports_and_async_client() {
    let topo = Topology::builder().backends(1).build().unwrap();
    let srv = EchoServer::start_in(
        topo.backend(1),
        EchoConfig::new("inproc-a-b", "ns2").tcp(0).udp(0).http(0),
    )
    .unwrap();
    let tcp_port = srv.addrs().tcp.unwrap().port();
    let udp_port = srv.addrs().udp.unwrap().port();
    let http_port = srv.addrs().http.unwrap().port();
    assert_ne!(tcp_port, 0);
    let b = topo.backend_addr(1);
    let r = topo
        .gateway()
        .run(|| clients::tcp_echo_test(sa(b, tcp_port)))
        .unwrap();
    assert_eq!(r.tcpport, tcp_port.to_string());
    assert_eq!(r.tlsport, "");
    let u = topo
        .gateway()
        .run(|| clients::udp_echo(sa(b, udp_port), "x"))
        .unwrap();
    assert_eq!(u.namespace, "ns2");
    // Async variant: a tokio runtime on a thread inside the gateway namespace.
    let greeting = topo.gateway().run_async(|| async move {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(sa(b, tcp_port))
            .await
            .unwrap();
        let mut buf = vec![0u8; 28];
        s.read_exact(&mut buf).await.unwrap();
        String::from_utf8(buf).unwrap()
    });
    assert_eq!(greeting, gateway_tests::echo::TCP_GREETING);
    let (s, j) = topo
        .gateway()
        .run(|| clients::http_get(sa(b, http_port), "x", "/"))
        .unwrap();
    assert_eq!((s, j["namespace"].as_str()), (200, Some("ns2")));
    srv.stop().unwrap();
    // Stopped: nothing listens any more.
    assert!(!sockets::has_socket_on_port(topo.backend(1), tcp_port).unwrap());
}

#[test]
fn everything_is_removed_after_drop() {
    let topo = Topology::builder().backends(2).clients(2).build().unwrap();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 5);
    for n in &names {
        assert!(ns_exists(n), "{n} missing");
    }
    let id = topo.id().to_string();
    // A second client got its own subnet and reaches the gateway.
    let _g = EchoServer::start_in(topo.gateway(), EchoConfig::new("g-1-2", "n").tcp(3100)).unwrap();
    let r = topo
        .client_n(2)
        .run(|| clients::tcp_echo_test(sa(topo.gateway_client_addr_n(2), 3100)))
        .unwrap();
    assert_eq!(r.pod, "g-1-2");
    drop(_g);

    let mut p = spawn_echo(topo.backend(1), &EchoConfig::new("e-1-2", "n").tcp(3000)).unwrap();
    let pid = p.pid();
    assert!(topo.backend(1).pids().contains(&pid));
    // Dropping the topology first must kill the process inside its namespace.
    drop(topo);
    for n in &names {
        assert!(!ns_exists(n), "{n} still exists");
    }
    let left: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&id))
        .collect();
    assert!(left.is_empty(), "left over: {left:?}");
    let st = p.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(st.is_some(), "echo process survived its namespace");
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let mut names = Vec::new();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::builder().build().unwrap();
        names = topo.namespace_names();
        panic!("boom");
    }));
    assert!(res.is_err());
    assert!(!names.is_empty());
    for n in &names {
        assert!(!ns_exists(n), "{n} survived a panic");
    }
}

#[test]
fn stale_namespaces_of_dead_pids_are_removed() {
    // A pid that surely exited: a child we reaped.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    let dead = c.id();
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let name = format!("{PREFIX}{dead}-0stale-gw");
    netns::host_cmd(&["ip", "netns", "add", &name]).unwrap();
    // A process left running inside it.
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "30"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while netns::ns_pids(&name).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stale bpffs dir too.
    gateway_tests::gateway::ensure_bpffs().unwrap();
    let bpf_dir = Path::new(BPFFS_TEST_ROOT).join(format!("{PREFIX}{dead}-0stale-gw"));
    std::fs::create_dir_all(bpf_dir.join("sub")).unwrap();
    let tmp = std::env::temp_dir().join(format!("{PREFIX}{dead}-log-abc123"));
    std::fs::create_dir_all(&tmp).unwrap();
    // Our own, live namespace must survive.
    let live = Netns::with_role("live").unwrap();

    netns::cleanup_stale();
    assert!(!ns_exists(&name), "stale namespace not removed");
    assert!(!bpf_dir.exists(), "stale bpffs dir not removed");
    if std::env::var_os("GWT_KEEP_LOGS").is_none() {
        assert!(!tmp.exists(), "stale temp dir not removed");
    }
    assert!(live.exists());
    let st = wait_child(&mut sleeper, Duration::from_secs(5));
    assert!(st.is_some(), "process in stale namespace not killed");
}

fn wait_child(c: &mut std::process::Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_inspection_sees_listeners_per_namespace() {
    let topo = Topology::builder().backends(1).build().unwrap();
    let _p = spawn_echo(
        topo.backend(1),
        &EchoConfig::new("s-1-2", "n").tcp(3000).udp(8080),
    )
    .unwrap();
    let l = sockets::listening_sockets(topo.backend(1), 3000).unwrap();
    assert!(l.iter().any(|s| s.is_tcp_listener()), "{l:?}");
    let u = sockets::listening_sockets(topo.backend(1), 8080).unwrap();
    assert!(u.iter().any(|s| !s.proto.is_tcp()), "{u:?}");
    // Other namespaces don't see it: /proc/thread-self/net follows the thread's netns.
    assert!(!sockets::has_socket_on_port(topo.gateway(), 3000).unwrap());
    assert!(!sockets::has_socket_on_port(topo.client(), 3000).unwrap());
    // Cross-check with ss run inside the namespace.
    let ss = topo.backend(1).exec(&["ss", "-Htln"]).unwrap();
    assert!(ss.contains(":3000"), "{ss}");
    // An established connection shows up on the connecting side's namespace.
    let b = topo.backend_addr(1);
    topo.gateway().run(|| {
        let _s = TcpStream::connect(sa(b, 3000)).unwrap();
        let mine = sockets::current_thread_sockets().unwrap();
        assert!(mine.iter().any(|s| s.remote == sa(b, 3000)), "{mine:?}");
    });
}

#[test]
fn exec_errors_carry_stderr() {
    let ns = Netns::with_role("exec").unwrap();
    let e = ns
        .exec(&["sh", "-c", "echo boom-on-stderr >&2; exit 3"])
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("boom-on-stderr") && msg.contains(ns.name()),
        "{msg}"
    );
    assert_eq!(ns.sh("echo hi").unwrap().trim(), "hi");
    // Spawned process output goes to its log.
    let mut p = ns.spawn(&["sh", "-c", "echo out; echo err >&2"]).unwrap();
    assert!(p.wait_timeout(Duration::from_secs(5)).unwrap().is_some());
    let log = p.log();
    assert!(log.contains("out") && log.contains("err"), "{log}");
}

fn fake_gateway() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-gateway"))
}

#[test]
fn gateway_process_lifecycle_with_stand_in_binary() {
    let topo = Topology::builder().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = gateway_tests::gateway::write_manifests(
        dir.path(),
        "
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        ",
    )
    .unwrap();
    let mut g =
        GatewayProcess::start_with_bin(topo.gateway(), fake_gateway(), &[&cfg], &[]).unwrap();
    let root = g.bpffs_root().to_path_buf();
    assert!(root.starts_with(BPFFS_TEST_ROOT));
    assert!(
        root.join("fake-pins").is_dir(),
        "bpffs root not visible to the process"
    );
    let (s, body) = g.admin_get("/config").unwrap();
    assert_eq!(s, 200);
    assert!(body.starts_with("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway"));
    assert_eq!(g.admin_get("/nope").unwrap().0, 404);
    // The admin port lives in the gateway namespace only.
    assert!(sockets::has_socket_on_port(topo.gateway(), 9902).unwrap());
    assert!(!sockets::has_socket_on_port(topo.client(), 9902).unwrap());

    // Crash and restart: the bpffs dir (pins) is kept and adopted.
    g.kill9().unwrap();
    assert!(!g.is_running());
    g.start_again().unwrap();
    g.restart().unwrap();
    assert!(g.log().contains("adopted existing pins"), "{}", g.log());
    assert!(g.is_running());
    drop(g);
    assert!(!root.exists(), "bpffs root not removed");

    // Startup failure: the error carries the log.
    let e = GatewayProcess::start_with_bin(
        topo.gateway(),
        fake_gateway(),
        &[&cfg],
        &["--exit-immediately"],
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("failing on purpose"), "{e:#}");
    // Never ready: bounded wait.
    let mut g =
        GatewayProcess::spawn_with_bin(topo.gateway(), fake_gateway(), &[&cfg], &["--never-ready"])
            .unwrap();
    let e = g.wait_ready(Duration::from_millis(800)).unwrap_err();
    assert!(format!("{e:#}").contains("503"), "{e:#}");
}
