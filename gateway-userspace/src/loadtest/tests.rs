//! The load tester's own correctness against in-process servers on loopback: what it counts matches what the
//! servers saw, open-loop rate control holds the target rate, and every run stops at its bounds.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};
use tokio_rustls::TlsAcceptor;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadtestArgs,
}

fn args(argv: &[&str]) -> LoadtestArgs {
    let mut v = vec!["loadtest"];
    v.extend_from_slice(argv);
    Cli::try_parse_from(v).expect("valid arguments").args
}

/// What a test server saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicU64,
    closed: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
    accept_times: Mutex<Vec<Instant>>,
    snis: Mutex<BTreeSet<String>>,
}

impl Seen {
    /// Waits until every accepted connection was closed by the client (or 3 s).
    async fn settle(&self) {
        let until = Instant::now() + Duration::from_secs(3);
        while self.closed.load(SeqCst) < self.accepted.load(SeqCst) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Echo everything until EOF.
    Echo,
    /// Read and never answer.
    Silent,
    /// A minimal HTTP/1.1 server answering every request with 5 bytes.
    Http,
}

/// A TCP (or TLS) server on 127.0.0.1 counting connections and bytes.
async fn server(tls: Option<TlsAcceptor>, behaviour: Behaviour) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            s.accepted.fetch_add(1, SeqCst);
            let _ = tcp.set_nodelay(true);
            s.accept_times.lock().unwrap().push(Instant::now());
            let (s, tls) = (Arc::clone(&s), tls.clone());
            tokio::spawn(async move {
                let stream: protocols::Conn = match tls {
                    None => Box::new(tcp),
                    Some(acc) => match acc.accept(tcp).await {
                        Ok(t) => {
                            let sni = t.get_ref().1.server_name().unwrap_or_default();
                            s.snis.lock().unwrap().insert(sni.to_string());
                            Box::new(t)
                        }
                        Err(_) => {
                            s.closed.fetch_add(1, SeqCst);
                            return;
                        }
                    },
                };
                serve(stream, &s, behaviour).await;
                s.closed.fetch_add(1, SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn serve(mut stream: protocols::Conn, s: &Seen, behaviour: Behaviour) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        s.read.fetch_add(n as u64, SeqCst);
        match behaviour {
            Behaviour::Silent => {}
            Behaviour::Echo => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                s.written.fetch_add(n as u64, SeqCst);
            }
            Behaviour::Http => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..i + 4);
                    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
                    if stream.write_all(resp).await.is_err() {
                        return;
                    }
                    s.written.fetch_add(resp.len() as u64, SeqCst);
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// A UDP echo on 127.0.0.1 counting datagrams and bytes.
async fn udp_echo() -> (SocketAddr, Arc<Seen>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut peers = BTreeSet::new();
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            if peers.insert(peer) {
                s.accepted.fetch_add(1, SeqCst);
                s.closed.fetch_add(1, SeqCst);
            }
            s.read.fetch_add(n as u64, SeqCst);
            if sock.send_to(&buf[..n], peer).await.is_ok() {
                s.written.fetch_add(n as u64, SeqCst);
            }
        }
    });
    (addr, seen)
}

struct Tls {
    _pki: gateway_tests::pki::Pki,
    ca: String,
    acceptor: TlsAcceptor,
}

fn tls() -> Tls {
    tls_alpn(&[])
}

/// [`tls`] with a server that offers these ALPN protocols.
fn tls_alpn(alpn: &[&[u8]]) -> Tls {
    let pki = gateway_tests::pki::Pki::new("loadtest-ca").unwrap();
    let leaf = pki
        .issue("server", &["a.example.com", "b.example.com"])
        .unwrap();
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Tls {
        ca: pki.ca_path().display().to_string(),
        _pki: pki,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// Asserts the client's and the server's views agree: connections and bytes both ways.
async fn assert_views_match(summary: &Summary, seen: &Seen) {
    seen.settle().await;
    assert_eq!(summary.errors_total, 0, "errors: {:?}", summary.errors);
    assert_eq!(
        summary.connections,
        seen.accepted.load(SeqCst),
        "connections"
    );
    assert_eq!(
        summary.bytes_sent,
        seen.read.load(SeqCst),
        "bytes client → server"
    );
    assert_eq!(
        summary.bytes_received,
        seen.written.load(SeqCst),
        "bytes server → client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_counts_match_the_echo() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let a = args(&[
        &addr.to_string(),
        "--rate",
        "200",
        "--duration",
        "1s",
        "--request-size",
        "100",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.attempts, 200);
    assert_eq!(s.connections, 200);
    assert_eq!(s.exchanges, 200);
    assert_eq!(s.bytes_sent, 200 * 100);
    assert_eq!(seen.closed.load(SeqCst), 200, "every connection was closed");
    for phase in ["connect", "ttfb", "total"] {
        assert_eq!(s.latency_us[phase].count, 200, "{phase}");
    }
    assert!(!s.latency_us.contains_key("handshake"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mode_holds_its_connections() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "concurrent",
        "--connections",
        "8",
        "--interval",
        "50ms",
        "--duration",
        "1s",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.connections, 8, "long-lived: no reconnects");
    // 8 connections × one request per 50 ms for 1 s: 20 each.
    assert!(
        (150..=168).contains(&s.exchanges),
        "exchanges {}",
        s.exchanges
    );
    assert_eq!(s.bytes_sent, s.exchanges * 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_mode_counts_match_the_echo() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "throughput",
        "--connections",
        "2",
        "--bytes-per-conn",
        "4M",
        "--max-connections",
        "6",
        "--duration",
        "20s",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.stopped_by, "max-connections");
    assert_eq!(s.connections, 6);
    assert_eq!(s.bytes_sent, 6 * 4 * 1024 * 1024);
    assert_eq!(s.bytes_received, s.bytes_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_handshakes_with_each_sni() {
    let t = tls();
    let (addr, seen) = server(Some(t.acceptor.clone()), Behaviour::Echo).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "tls",
        "--sni",
        "a.example.com",
        "--sni",
        "b.example.com",
        "--ca",
        &t.ca,
        "--rate",
        "100",
        "--duration",
        "1s",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.connections, 100);
    assert_eq!(s.latency_us["handshake"].count, 100);
    let snis: Vec<String> = seen.snis.lock().unwrap().iter().cloned().collect();
    assert_eq!(snis, ["a.example.com", "b.example.com"]);

    // A wrong CA is a TLS error, counted by kind.
    let other = tls();
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "tls",
        "--sni",
        "a.example.com",
        "--ca",
        &other.ca,
        "--max-connections",
        "3",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.errors.get("tls"), Some(&3), "errors {:?}", s.errors);
    // --insecure accepts it.
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "tls",
        "--sni",
        "a.example.com",
        "--insecure",
        "--max-connections",
        "3",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!((s.errors_total, s.exchanges), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_canned_measures_to_the_server_hello() {
    let t = tls();
    let (addr, seen) = server(Some(t.acceptor.clone()), Behaviour::Echo).await;
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/clienthello/rustls.bin"
    );
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "tls-canned",
        "--clienthello",
        hello,
        "--rate",
        "100",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    seen.settle().await;
    assert_eq!(s.errors_total, 0, "{:?}", s.errors);
    assert_eq!(s.exchanges, 50);
    assert_eq!(s.connections, seen.accepted.load(SeqCst));
    assert_eq!(
        s.bytes_sent,
        50 * std::fs::metadata(hello).unwrap().len(),
        "the whole ClientHello each time"
    );
    assert!(s.bytes_received >= 50, "the server's first flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_counts_match_the_echo() {
    let (addr, seen) = udp_echo().await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "udp",
        "--mode",
        "concurrent",
        "--connections",
        "4",
        "--interval",
        "20ms",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.connections, 4);
    assert!(s.exchanges >= 80, "exchanges {}", s.exchanges);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keep_alive_and_close() {
    let (addr, seen) = server(None, Behaviour::Http).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "http",
        "--mode",
        "concurrent",
        "--connections",
        "3",
        "--interval",
        "20ms",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!(s.connections, 3, "keep-alive");
    assert!(s.exchanges >= 60);

    let (addr, seen) = server(None, Behaviour::Http).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "http",
        "--rate",
        "100",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!((s.connections, s.exchanges), (50, 50));

    // The same over TLS (https): keep-alive inside one handshake per connection.
    let t = tls();
    let (addr, seen) = server(Some(t.acceptor.clone()), Behaviour::Http).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "https",
        "--sni",
        "b.example.com",
        "--ca",
        &t.ca,
        "--mode",
        "concurrent",
        "--connections",
        "2",
        "--interval",
        "20ms",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_views_match(&s, &seen).await;
    assert_eq!((s.connections, s.latency_us["handshake"].count), (2, 2));
    assert!(s.exchanges >= 40, "exchanges {}", s.exchanges);
}

/// 500 new connections per second for 2 s: the server sees 1000 connections spread over 2 s, i.e. 500/s within
/// 5 %, measured from the server's accept times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_control_within_five_percent() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let a = args(&[&addr.to_string(), "--rate", "500", "--duration", "2s"]);
    let s = execute(&a, false).await.unwrap();
    seen.settle().await;
    assert_eq!(s.errors_total, 0, "{:?}", s.errors);
    let times = seen.accept_times.lock().unwrap().clone();
    let n = times.len();
    assert!((950..=1050).contains(&n), "accepted {n}, want 1000 ± 5%");
    let span = (*times.iter().max().unwrap() - *times.iter().min().unwrap()).as_secs_f64();
    let rate = (n - 1) as f64 / span;
    assert!(
        (rate - 500.0).abs() <= 25.0,
        "server-side rate {rate:.1}/s over {span:.3}s, want 500 ± 5%"
    );
    // Per full second, too: neither second is starved or doubled.
    let start = *times.iter().min().unwrap();
    for sec in 0..2 {
        let in_sec = times
            .iter()
            .filter(|t| (**t - start).as_secs() == sec)
            .count() as f64;
        assert!((in_sec - 500.0).abs() <= 25.0, "second {sec}: {in_sec}");
    }
    assert!(
        (s.attempt_rate - 500.0).abs() <= 25.0,
        "reported {}",
        s.attempt_rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_at_max_connections() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let started = Instant::now();
    let a = args(&[
        &addr.to_string(),
        "--rate",
        "1000",
        "--duration",
        "60s",
        "--max-connections",
        "25",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.stopped_by, "max-connections");
    assert_eq!(s.attempts, 25);
    assert_views_match(&s, &seen).await;
    assert_eq!(seen.accepted.load(SeqCst), 25);

    // Concurrent mode shares the budget between its connections.
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "concurrent",
        "--connections",
        "10",
        "--max-connections",
        "4",
        "--duration",
        "1s",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.connections, 4);
    assert_views_match(&s, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_at_the_duration() {
    let (addr, seen) = server(None, Behaviour::Echo).await;
    let started = Instant::now();
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "concurrent",
        "--connections",
        "5",
        "--duration",
        "1s",
    ]);
    let s = execute(&a, false).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(s.stopped_by, "duration");
    assert_views_match(&s, &seen).await;

    // A server that never answers: exchanges in flight at the end get the drain grace (here the 1 s timeout)
    // and time out; the run ends at duration + grace, not later.
    let (addr, _seen) = server(None, Behaviour::Silent).await;
    let started = Instant::now();
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "concurrent",
        "--connections",
        "3",
        "--duration",
        "500ms",
        "--timeout",
        "1s",
    ]);
    let s = execute(&a, false).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert_eq!(s.exchanges, 0);
    assert_eq!(s.errors.get("timeout"), Some(&3), "{:?}", s.errors);

    // Throughput cut by the duration: counted as cancelled, and the run still ends on time.
    let (addr, _seen) = server(None, Behaviour::Silent).await;
    let started = Instant::now();
    let a = args(&[
        &addr.to_string(),
        "--mode",
        "throughput",
        "--connections",
        "2",
        "--bytes-per-conn",
        "1G",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(s.errors.get("cancelled"), Some(&2), "{:?}", s.errors);
}

#[tokio::test]
async fn refuses_unbounded_or_inconsistent_runs() {
    for argv in [
        &["127.0.0.1:1", "--duration", "2h"][..],
        &["127.0.0.1:1", "--duration", "0s"],
        &["127.0.0.1:1", "--max-connections", "0"],
        &["127.0.0.1:1", "--mode", "throughput", "--protocol", "udp"],
        &["127.0.0.1:1", "--protocol", "tls"],
        &["127.0.0.1:1", "--protocol", "tls-canned"],
        &["127.0.0.1:1", "--rate", "0"],
    ] {
        assert!(execute(&args(argv), false).await.is_err(), "{argv:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_by_kind() {
    // Bind then drop: nothing listens on the port.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let a = args(&[&port.to_string(), "--rate", "100", "--max-connections", "5"]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.errors.get("refused"), Some(&5), "{:?}", s.errors);
    assert_eq!(s.connections, 0);
}

#[test]
fn parses_durations_and_sizes() {
    assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("fast").is_err());
    assert!(parse_duration("3d").is_err());
    assert_eq!(parse_bytes("4096").unwrap(), 4096);
    assert_eq!(parse_bytes("64K").unwrap(), 65_536);
    assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
    assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
    assert!(parse_bytes("1T").is_err());
    assert_eq!(host_of("[::1]:443"), "::1");
    assert_eq!(host_of("example.com:443"), "example.com");
}

#[test]
fn summary_outputs() {
    let mut stats = Stats::new().unwrap();
    for i in 0..300u64 {
        let at = Duration::from_millis(i * 10);
        stats.record(Phase::Connect, Duration::from_micros(100 + i), at);
        stats.record(Phase::Total, Duration::from_micros(1000 + i * 10), at);
    }
    stats.error(ErrorKind::Reset, Duration::from_millis(1500));
    let a = args(&["x.example:443", "--rate", "100", "--duration", "3s"]);
    let s = Summary::new(
        &a,
        "127.0.0.1:443".parse().unwrap(),
        &stats,
        Duration::from_secs(3),
        "duration",
    );
    let table = s.table();
    assert!(
        table.contains("connect") && table.contains("total") && table.contains("reset"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(json["exchanges"], 300);
    assert_eq!(json["errors"]["reset"], 1);
    assert_eq!(json["timeline"].as_array().unwrap().len(), 3);
    assert_eq!(json["protocol"], "tcp");
    assert!((s.exchange_rate - 100.0).abs() < 1e-9);
    let svg = s.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 4);
}

/// What the HTTP/2 test server saw.
#[derive(Default)]
struct H2Seen {
    connections: AtomicU64,
    requests: AtomicU64,
    http2_requests: AtomicU64,
    body_bytes: AtomicU64,
    authorities: Mutex<BTreeSet<String>>,
}

/// An HTTP/2-only server (hyper) on 127.0.0.1, cleartext (h2c prior knowledge) or TLS, answering every request
/// with a 10-byte body and counting connections, requests and body bytes.
async fn h2_server(tls: Option<TlsAcceptor>) -> (SocketAddr, Arc<H2Seen>) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(H2Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, SeqCst);
            let (s, tls) = (Arc::clone(&s), tls.clone());
            tokio::spawn(async move {
                let io: protocols::Conn = match tls {
                    None => Box::new(tcp),
                    Some(acc) => match acc.accept(tcp).await {
                        Ok(t) => Box::new(t),
                        Err(_) => return,
                    },
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let s = Arc::clone(&s);
                        async move {
                            s.requests.fetch_add(1, SeqCst);
                            if req.version() == http::Version::HTTP_2 {
                                s.http2_requests.fetch_add(1, SeqCst);
                            }
                            if let Some(a) = req.uri().authority() {
                                s.authorities.lock().unwrap().insert(a.to_string());
                            }
                            let body = bytes::Bytes::from_static(b"hello, h2!");
                            s.body_bytes.fetch_add(body.len() as u64, SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_h2_counts_match_the_server() {
    // h2c by prior knowledge, concurrent mode: every request of a connection on one HTTP/2 connection.
    let (addr, seen) = h2_server(None).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "h2c",
        "--mode",
        "concurrent",
        "--connections",
        "3",
        "--interval",
        "20ms",
        "--duration",
        "500ms",
        "--host",
        "h2.example.com",
        "--path",
        "/x",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.errors_total, 0, "errors: {:?}", s.errors);
    assert_eq!(s.connections, 3);
    assert_eq!(
        seen.connections.load(SeqCst),
        3,
        "one HTTP/2 connection each"
    );
    assert!(s.exchanges >= 60, "exchanges {}", s.exchanges);
    assert_eq!(s.exchanges, seen.requests.load(SeqCst));
    assert_eq!(seen.http2_requests.load(SeqCst), s.exchanges);
    assert_eq!(s.bytes_received, seen.body_bytes.load(SeqCst));
    assert_eq!(s.latency_us["ttfb"].count, s.exchanges);
    assert_eq!(
        *seen.authorities.lock().unwrap(),
        BTreeSet::from(["h2.example.com".to_string()])
    );

    // HTTP/2 over TLS (ALPN h2), rate mode: one connection, one handshake and one request per attempt.
    let t = tls_alpn(&[b"h2"]);
    let (addr, seen) = h2_server(Some(t.acceptor.clone())).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "h2",
        "--sni",
        "a.example.com",
        "--ca",
        &t.ca,
        "--rate",
        "100",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.errors_total, 0, "errors: {:?}", s.errors);
    assert_eq!((s.connections, s.exchanges), (50, 50));
    assert_eq!(s.latency_us["handshake"].count, 50);
    assert_eq!(seen.connections.load(SeqCst), 50);
    assert_eq!(seen.requests.load(SeqCst), 50);
    assert_eq!(seen.http2_requests.load(SeqCst), 50);
    assert_eq!(s.bytes_received, 50 * 10);

    // A TLS server that does not select h2: every attempt fails as a TLS error, no request is sent.
    let t = tls();
    let (addr, seen) = h2_server(Some(t.acceptor.clone())).await;
    let a = args(&[
        &addr.to_string(),
        "--protocol",
        "h2",
        "--sni",
        "a.example.com",
        "--ca",
        &t.ca,
        "--rate",
        "20",
        "--duration",
        "500ms",
    ]);
    let s = execute(&a, false).await.unwrap();
    assert_eq!(s.errors.get("tls"), Some(&10), "errors: {:?}", s.errors);
    assert_eq!(s.exchanges, 0);
    assert_eq!(seen.requests.load(SeqCst), 0);
}
