//! `gateway loadtest` end to end through the real gateway's TLS passthrough: the load tester runs in the client
//! namespace, the agent routes by SNI to TLS backends that complete the handshakes themselves. One backend is a
//! counting TLS echo defined here (so the load tester's counts can be checked against what the backend saw:
//! connections, handshakes, SNIs, bytes both ways); the other is the harness's echo-backend, used with canned
//! ClientHellos (connection-rate mode without client-side handshakes).
use std::{
    collections::BTreeSet,
    path::Path,
    process::Output,
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    echo::{spawn_echo, EchoConfig},
    gateway::{gateway_bin, write_manifests},
    pki::Pki,
    server::ServerThread,
    topology, GatewayProcess, Netns, Topology,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 443;
const TLS_PORT: u16 = 8443;

fn manifests(topo: &Topology) -> String {
    let service = |name: &str, backend: usize| {
        format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: infra}}
spec:
  ports: [{{port: 443, targetPort: {TLS_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-a1, namespace: infra, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {TLS_PORT}, protocol: TCP}}]
endpoints:
- addresses: ["{addr}"]
  conditions: {{ready: true}}
"#,
            addr = topo.backend_addr(backend)
        )
    };
    let route = |name: &str, hostnames: &str, backend: &str| {
        format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: loadtest}}]
  hostnames: [{hostnames}]
  rules:
  - backendRefs: [{{name: {backend}, port: 443}}]
"#
        )
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: ebpf}}
spec: {{controllerName: ebpf-gateway.dev/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: loadtest, namespace: infra}}
spec:
  gatewayClassName: ebpf
  addresses: [{{type: IPAddress, value: {vip}}}]
  listeners:
  - {{name: tls, protocol: TLS, port: {PORT}, tls: {{mode: Passthrough}}}}
{a}{b}{sa}{sb}"#,
        vip = topology::vip(1),
        a = route(
            "counted",
            r#""abc.example.com", "other.example.com""#,
            "counted"
        ),
        b = route("canned", r#""rustls.example.com""#, "canned"),
        sa = service("counted", 1),
        sb = service("canned", 2),
    )
}

/// What the counting TLS echo saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicU64,
    handshakes: AtomicU64,
    closed: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
    snis: Mutex<BTreeSet<String>>,
}

impl Seen {
    fn snapshot(&self) -> [u64; 4] {
        [
            self.accepted.load(SeqCst),
            self.handshakes.load(SeqCst),
            self.read.load(SeqCst),
            self.written.load(SeqCst),
        ]
    }

    /// Waits until every accepted connection has ended (or 5 s).
    fn settle(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.closed.load(SeqCst) < self.accepted.load(SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TLS echo on 0.0.0.0:8443 in `ns` that counts connections, handshakes, SNIs and plaintext bytes; stopped
/// on drop.
struct CountingEcho {
    seen: Arc<Seen>,
    _server: ServerThread,
}

impl CountingEcho {
    fn start(ns: &Netns, cert_pem: &str, key_pem: &str) -> Result<CountingEcho> {
        let certs =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let seen = Arc::new(Seen::default());
        let s = Arc::clone(&seen);
        let server = ServerThread::start(
            ns,
            "the counting echo",
            2,
            move || std::net::TcpListener::bind(("0.0.0.0", TLS_PORT)),
            move |listener| async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    s.accepted.fetch_add(1, SeqCst);
                    let _ = tcp.set_nodelay(true);
                    let (s, acceptor) = (Arc::clone(&s), acceptor.clone());
                    tokio::spawn(async move {
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            s.handshakes.fetch_add(1, SeqCst);
                            let sni = tls.get_ref().1.server_name().unwrap_or_default();
                            s.snis.lock().unwrap().insert(sni.to_string());
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                s.read.fetch_add(n as u64, SeqCst);
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                s.written.fetch_add(n as u64, SeqCst);
                            }
                            let _ = tls.shutdown().await;
                        }
                        s.closed.fetch_add(1, SeqCst);
                    });
                }
            },
        )?;
        Ok(CountingEcho {
            seen,
            _server: server,
        })
    }
}

/// Runs `gateway loadtest ARGS` in the client namespace.
fn loadtest(topo: &Topology, args: &[&str]) -> Result<Output> {
    let bin = gateway_bin()?;
    let mut argv = vec![bin.to_string_lossy().into_owned(), "loadtest".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    topo.client().exec_output(&argv)
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn loadtest_through_tls_passthrough() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let pki = Pki::new("loadtest-ca")?;
    let counted_cert = pki.issue("counted", &["abc.example.com", "other.example.com"])?;
    let echo = CountingEcho::start(
        topo.backend(1),
        &counted_cert.cert_pem,
        &counted_cert.key_pem,
    )?;
    let canned_cert = pki.issue("canned", &["rustls.example.com"])?;
    let _harness_echo = spawn_echo(
        topo.backend(2),
        &EchoConfig::new("canned-5f9c-x1", "infra")
            .service("canned")
            .tls(TLS_PORT)
            .tls_pem(&canned_cert.cert_pem, &canned_cert.key_pem),
    )?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &manifests(&topo))?;
    let _gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;

    let target = format!("{}:{PORT}", topology::vip(1));
    let ca = pki.ca_path().display().to_string();
    let tls = ["--protocol", "tls", "--ca", &ca];

    // The listener may take a moment after /readyz: one connection at a time until one succeeds.
    let mut warm = None;
    for _ in 0..30 {
        let out = loadtest(
            &topo,
            &[
                &[
                    target.as_str(),
                    "--sni",
                    "abc.example.com",
                    "--max-connections",
                    "1",
                    "-q",
                ][..],
                &tls,
            ]
            .concat(),
        )?;
        if out.status.success() {
            warm = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        warm.is_some(),
        "no connection through the gateway succeeded"
    );
    echo.seen.settle();
    let before = echo.seen.snapshot();
    echo.seen.snis.lock().unwrap().clear();

    // Rate mode: 100 new TLS connections per second for 2 s, two SNIs round robin, full handshakes.
    let json = dir.path().join("rate.json");
    let svg = dir.path().join("rate.svg");
    let out = loadtest(
        &topo,
        &[
            &[
                target.as_str(),
                "--mode",
                "rate",
                "--rate",
                "100",
                "--duration",
                "2s",
                "--sni",
                "abc.example.com",
                "--sni",
                "other.example.com",
                "--json",
                json.to_str().unwrap(),
                "--svg",
                svg.to_str().unwrap(),
            ][..],
            &tls,
        ]
        .concat(),
    )?;
    ensure!(out.status.success(), "loadtest failed: {}", show(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let s = read_json(&json)?;
    ensure!(u(&s, "errors_total") == 0, "errors: {}", s["errors"]);
    ensure!(u(&s, "attempts") == 200, "attempts {}", s["attempts"]);
    ensure!(
        u(&s, "connections") == 200 && u(&s, "exchanges") == 200,
        "{s}"
    );
    ensure!(
        s["latency_us"]["handshake"]["count"] == 200,
        "{}",
        s["latency_us"]
    );
    ensure!(s["stopped_by"] == "duration");
    echo.seen.settle();
    let after = echo.seen.snapshot();
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    ensure!(
        delta[0] == u(&s, "connections"),
        "echo accepted {} connections, loadtest counted {}",
        delta[0],
        s["connections"]
    );
    ensure!(delta[1] == 200, "echo completed {} handshakes", delta[1]);
    ensure!(
        delta[2] == u(&s, "bytes_sent"),
        "echo read {} bytes, loadtest sent {}",
        delta[2],
        s["bytes_sent"]
    );
    ensure!(
        delta[3] == u(&s, "bytes_received"),
        "echo wrote {} bytes, loadtest received {}",
        delta[3],
        s["bytes_received"]
    );
    ensure!(u(&s, "bytes_sent") == 200 * 64);
    let snis: Vec<String> = echo.seen.snis.lock().unwrap().iter().cloned().collect();
    ensure!(
        snis == ["abc.example.com", "other.example.com"],
        "echo saw SNIs {snis:?}"
    );
    let chart = std::fs::read_to_string(&svg)?;
    ensure!(
        chart.starts_with("<svg") && chart.contains("<polyline"),
        "chart: {chart:.200}"
    );

    // Concurrent mode: 10 long-lived TLS connections for 1 s, a request every 100 ms each.
    let before = echo.seen.snapshot();
    let json = dir.path().join("concurrent.json");
    let out = loadtest(
        &topo,
        &[
            &[
                target.as_str(),
                "--mode",
                "concurrent",
                "--connections",
                "10",
                "--duration",
                "1s",
                "--sni",
                "abc.example.com",
                "-q",
                "--json",
                json.to_str().unwrap(),
            ][..],
            &tls,
        ]
        .concat(),
    )?;
    ensure!(out.status.success(), "loadtest failed: {}", show(&out));
    let s = read_json(&json)?;
    echo.seen.settle();
    let after = echo.seen.snapshot();
    ensure!(
        u(&s, "errors_total") == 0 && u(&s, "connections") == 10,
        "{s}"
    );
    ensure!(
        after[0] - before[0] == 10,
        "echo accepted {}",
        after[0] - before[0]
    );
    ensure!(after[2] - before[2] == u(&s, "bytes_sent"), "bytes sent");
    ensure!(
        after[3] - before[3] == u(&s, "bytes_received"),
        "bytes received"
    );
    ensure!(u(&s, "exchanges") >= 80, "exchanges {}", s["exchanges"]);

    // Canned ClientHellos (SNI rustls.example.com) to the harness echo: done at the server's first flight.
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gateway-userspace/tests/corpus/clienthello/rustls.bin"
    );
    let json = dir.path().join("canned.json");
    let out = loadtest(
        &topo,
        &[
            target.as_str(),
            "--protocol",
            "tls-canned",
            "--clienthello",
            hello,
            "--rate",
            "50",
            "--duration",
            "1s",
            "-q",
            "--json",
            json.to_str().unwrap(),
        ],
    )?;
    ensure!(out.status.success(), "loadtest failed: {}", show(&out));
    let s = read_json(&json)?;
    ensure!(
        u(&s, "errors_total") == 0 && u(&s, "exchanges") == 50,
        "{s}"
    );
    ensure!(
        u(&s, "bytes_received") >= 50 * 50,
        "a ServerHello flight each: {}",
        s["bytes_received"]
    );
    Ok(())
}

/// A minimal HTTP/1.1 server on 0.0.0.0:`port` in `ns` (keep-alive, GETs only) answering every request with a
/// 5-byte body and counting the requests; stopped on drop.
struct CountingHttp {
    requests: Arc<AtomicU64>,
    _server: ServerThread,
}

impl CountingHttp {
    fn start(ns: &Netns, port: u16) -> Result<CountingHttp> {
        let requests = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&requests);
        let server = ServerThread::start(
            ns,
            "the counting HTTP server",
            2,
            move || std::net::TcpListener::bind(("0.0.0.0", port)),
            move |listener| async move {
                loop {
                    let Ok((mut tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let r = Arc::clone(&r);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut pending = Vec::new();
                        loop {
                            let n = match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            pending.extend_from_slice(&buf[..n]);
                            while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                pending.drain(..i + 4);
                                r.fetch_add(1, SeqCst);
                                let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
                                if tcp.write_all(resp).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            },
        )?;
        Ok(CountingHttp {
            requests,
            _server: server,
        })
    }
}

/// HTTP/2 (h2c, prior knowledge) through the gateway's HTTP proxy: the requests the load tester counts are the
/// requests the backend answered (the proxy speaks HTTP/1.1 to it), and the body bytes match.
#[test]
fn loadtest_h2c_through_the_http_proxy() -> Result<()> {
    const BACKEND_PORT: u16 = 8080;
    let topo = Topology::builder().backends(1).build()?;
    let backend = CountingHttp::start(topo.backend(1), BACKEND_PORT)?;
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: ebpf}}
spec: {{controllerName: ebpf-gateway.dev/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: infra}}
spec:
  gatewayClassName: ebpf
  addresses: [{{type: IPAddress, value: {vip}}}]
  listeners:
  - {{name: http, protocol: HTTP, port: 80}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: infra}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: ["h2.example.com"]
  rules:
  - backendRefs: [{{name: web, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: infra}}
spec:
  ports: [{{port: 80, targetPort: {BACKEND_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a1, namespace: infra, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: {BACKEND_PORT}, protocol: TCP}}]
endpoints:
- addresses: ["{addr}"]
  conditions: {{ready: true}}
"#,
        vip = topology::vip(1),
        addr = topo.backend_addr(1)
    );
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &yaml)?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let target = format!("{}:80", topology::vip(1));
    let h2c = [
        target.as_str(),
        "--protocol",
        "h2c",
        "--host",
        "h2.example.com",
        "-q",
    ];

    // The listener may take a moment after /readyz.
    let mut warm = false;
    for _ in 0..30 {
        let out = loadtest(&topo, &[&h2c[..], &["--max-connections", "1"]].concat())?;
        if out.status.success() {
            warm = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(warm, "no HTTP/2 request through the gateway succeeded");
    let before = backend.requests.load(SeqCst);
    let metric_before = http_requests(&gw)?;

    // 4 HTTP/2 connections for 1 s, a request every 20 ms on each.
    let json = dir.path().join("h2c.json");
    let out = loadtest(
        &topo,
        &[
            &h2c[..],
            &[
                "--mode",
                "concurrent",
                "--connections",
                "4",
                "--interval",
                "20ms",
                "--duration",
                "1s",
                "--json",
                json.to_str().unwrap(),
            ],
        ]
        .concat(),
    )?;
    ensure!(out.status.success(), "loadtest failed: {}", show(&out));
    let s = read_json(&json)?;
    let exchanges = u(&s, "exchanges");
    ensure!(
        u(&s, "errors_total") == 0 && u(&s, "connections") == 4,
        "{s}"
    );
    ensure!(exchanges >= 100, "exchanges {exchanges}");
    let answered = backend.requests.load(SeqCst) - before;
    ensure!(
        answered == exchanges,
        "the backend answered {answered} requests, the load tester counted {exchanges}"
    );
    ensure!(u(&s, "bytes_received") == 5 * exchanges, "{s}");
    let proxied = http_requests(&gw)? - metric_before;
    ensure!(
        proxied == exchanges,
        "the proxy counted {proxied} requests, the load tester {exchanges}"
    );
    Ok(())
}

/// `gateway_http_requests_total` summed over its labels.
fn http_requests(gw: &GatewayProcess) -> Result<u64> {
    let (status, body) = gw.admin_get("/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    Ok(body
        .lines()
        .filter(|l| l.starts_with("gateway_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}
