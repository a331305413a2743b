//! Echo backends that identify themselves like the Gateway API conformance
//! `echo-basic` server (see `shared/gateway-api/CONFORMANCE-CASES.md` §8).
//!
//! One [`EchoConfig`] may enable several listeners at once: HTTP/1.1, h2c,
//! HTTPS, the line-based TCP protocol, the same over TLS, and UDP. They can run
//! in-process on a thread inside a namespace ([`EchoServer::start_in`]) or as the
//! `echo-backend` binary inside a namespace ([`spawn_echo`]), which prints
//! `READY` once every listener is bound.
//!
//! The reply types ([`HttpEchoReply`], [`TcpEchoReply`], [`UdpEchoReply`]) are
//! shared with the client helpers in [`crate::clients`].

mod http;
mod l4;
pub mod proxy_protocol;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::Netns;

/// The greeting the TCP/TLS echo writes on connect.
pub const TCP_GREETING: &str = "Gateway API Test TCP Server\n";

/// How an echo server names itself (pod/namespace/service/ingress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Pod name, e.g. `tcp-backend-6c9f8b7d5-abcde` ([`crate::clients::deployment_of`] maps it to `tcp-backend`).
    pub pod: String,
    /// Kubernetes namespace the backend pretends to be in.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Ingress name (usually empty).
    pub ingress: String,
}

impl Identity {
    /// A pod name in the shape conformance expects: `<deployment>-<rshash>-<podhash>`,
    /// with the hashes derived from `n`.
    pub fn pod_name(deployment: &str, n: usize) -> String {
        format!("{deployment}-5d8f7c6b{:x}-p{n:04}", n % 16)
    }
}

/// PEM certificate chain and private key for the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// Leaf first, then intermediates.
    pub cert_pem: String,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key_pem: String,
}

/// Which listeners to open and how to identify. Port 0 binds an ephemeral port
/// (see [`EchoServer::addrs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    /// Identity reported in every reply.
    pub identity: Identity,
    /// Address to bind (default 0.0.0.0).
    pub bind: IpAddr,
    /// HTTP/1.1 port.
    pub http: Option<u16>,
    /// h2c port (HTTP/2 prior knowledge, HTTP/1.1 also accepted).
    pub h2c: Option<u16>,
    /// HTTPS port (ALPN h2 and http/1.1); needs [`EchoConfig::tls_pem`].
    pub https: Option<u16>,
    /// Plain TCP line-protocol port.
    pub tcp: Option<u16>,
    /// TLS line-protocol port; needs [`EchoConfig::tls_pem`].
    pub tls: Option<u16>,
    /// UDP port.
    pub udp: Option<u16>,
    /// Certificate for `https`/`tls`.
    pub tls_pem: Option<TlsPem>,
    /// HTTP listeners print one `request <method> <host> <uri> <proto>` line per request on stdout (what the
    /// conformance suite reads from echo-basic's log, e.g. to see mirrored requests).
    pub log_requests: bool,
    /// TCP/TLS listeners expect a PROXY protocol v2 header first and report its addresses
    /// ([`TcpEchoReply::proxy`]); a connection without a valid header is closed.
    pub proxy_protocol: bool,
}

impl EchoConfig {
    /// A config with the given pod and namespace and no listener yet.
    pub fn new(pod: &str, namespace: &str) -> Self {
        EchoConfig {
            identity: Identity {
                pod: pod.to_string(),
                namespace: namespace.to_string(),
                ..Identity::default()
            },
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http: None,
            h2c: None,
            https: None,
            tcp: None,
            tls: None,
            udp: None,
            tls_pem: None,
            log_requests: false,
            proxy_protocol: false,
        }
    }
    /// Sets the service name.
    pub fn service(mut self, s: &str) -> Self {
        self.identity.service = s.to_string();
        self
    }
    /// Sets the ingress name.
    pub fn ingress(mut self, s: &str) -> Self {
        self.identity.ingress = s.to_string();
        self
    }
    /// Sets the bind address.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = ip;
        self
    }
    /// Enables HTTP/1.1 on `port`.
    pub fn http(mut self, port: u16) -> Self {
        self.http = Some(port);
        self
    }
    /// Enables h2c on `port`.
    pub fn h2c(mut self, port: u16) -> Self {
        self.h2c = Some(port);
        self
    }
    /// Enables HTTPS on `port`.
    pub fn https(mut self, port: u16) -> Self {
        self.https = Some(port);
        self
    }
    /// Enables the TCP line protocol on `port`.
    pub fn tcp(mut self, port: u16) -> Self {
        self.tcp = Some(port);
        self
    }
    /// Enables the TCP line protocol over TLS on `port`.
    pub fn tls(mut self, port: u16) -> Self {
        self.tls = Some(port);
        self
    }
    /// Enables UDP on `port`.
    pub fn udp(mut self, port: u16) -> Self {
        self.udp = Some(port);
        self
    }
    /// Logs every HTTP request on stdout (see [`EchoConfig::log_requests`]).
    pub fn log_requests(mut self) -> Self {
        self.log_requests = true;
        self
    }
    /// Expects PROXY protocol v2 on the TCP/TLS listeners (see [`EchoConfig::proxy_protocol`]).
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }
    /// Sets the certificate (PEM) for the TLS listeners.
    pub fn tls_pem(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls_pem = Some(TlsPem {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        });
        self
    }

    fn validate(&self) -> Result<()> {
        let any = [
            self.http, self.h2c, self.https, self.tcp, self.tls, self.udp,
        ]
        .iter()
        .any(Option::is_some);
        if !any {
            bail!("echo config enables no listener");
        }
        if (self.https.is_some() || self.tls.is_some()) && self.tls_pem.is_none() {
            bail!("--https/--tls need a certificate and key");
        }
        Ok(())
    }

    /// Command-line arguments for the `echo-backend` binary; certificate files
    /// (if any) must already be at `cert`/`key`.
    pub fn to_args(&self, cert_files: Option<(&std::path::Path, &std::path::Path)>) -> Vec<String> {
        let id = &self.identity;
        let mut a = vec![
            "--pod".to_string(),
            id.pod.clone(),
            "--namespace".into(),
            id.namespace.clone(),
            "--service".into(),
            id.service.clone(),
            "--ingress".into(),
            id.ingress.clone(),
            "--bind".into(),
            self.bind.to_string(),
        ];
        for (flag, port) in [
            ("--http", self.http),
            ("--h2c", self.h2c),
            ("--https", self.https),
            ("--tcp", self.tcp),
            ("--tls", self.tls),
            ("--udp", self.udp),
        ] {
            if let Some(p) = port {
                a.push(flag.into());
                a.push(p.to_string());
            }
        }
        if self.log_requests {
            a.push("--log-requests".into());
        }
        if self.proxy_protocol {
            a.push("--proxy-protocol".into());
        }
        if let Some((c, k)) = cert_files {
            a.push("--cert".into());
            a.push(c.display().to_string());
            a.push("--key".into());
            a.push(k.display().to_string());
        }
        a
    }
}

/// The addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// HTTP/1.1 listener.
    pub http: Option<SocketAddr>,
    /// h2c listener.
    pub h2c: Option<SocketAddr>,
    /// HTTPS listener.
    pub https: Option<SocketAddr>,
    /// TCP line-protocol listener.
    pub tcp: Option<SocketAddr>,
    /// TLS line-protocol listener.
    pub tls: Option<SocketAddr>,
    /// UDP socket.
    pub udp: Option<SocketAddr>,
}

/// JSON answer of the HTTP echo (field names as echo-basic).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpEchoReply {
    /// Request URI including the query.
    pub path: String,
    /// Host header (or :authority).
    pub host: String,
    /// Request method.
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub proto: String,
    /// Request headers, canonicalised names (`X-Foo-Bar`), Host excluded.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Identity.
    pub namespace: String,
    /// Identity.
    pub ingress: String,
    /// Identity.
    pub service: String,
    /// Identity.
    pub pod: String,
    /// The local port the request arrived on, as a string.
    #[serde(rename = "httpPort")]
    pub http_port: String,
    /// TLS details, only over HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTlsInfo>,
}

/// TLS details in the HTTP echo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpTlsInfo {
    /// `TLSv1.3` / `TLSv1.2`.
    pub version: String,
    /// Client certificates (PEM).
    pub peer_certificates: Vec<String>,
    /// SNI the server saw.
    pub server_name: String,
    /// ALPN protocol.
    pub negotiated_protocol: String,
    /// Go-style cipher suite name.
    pub cipher_suite: String,
}

/// JSON line answered to `TEST` by the TCP/TLS echo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpEchoReply {
    /// Identity.
    pub namespace: String,
    /// Identity.
    pub ingress: String,
    /// Identity.
    pub service: String,
    /// Identity.
    pub pod: String,
    /// Plain TCP port of this server ("" if none).
    pub tcpport: String,
    /// TLS port of this server ("" if none).
    pub tlsport: String,
    /// Whether this connection is TLS.
    #[serde(rename = "isTLS")]
    pub is_tls: bool,
    /// TLS details when `is_tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TcpTlsInfo>,
    /// The addresses of the PROXY v2 header that opened the connection (listeners with
    /// [`EchoConfig::proxy_protocol`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<proxy_protocol::ProxyHeader>,
}

/// TLS details in the TCP echo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpTlsInfo {
    /// `TLS 1.3` / `TLS 1.2`.
    pub version: String,
    /// SNI the server saw ("" if none).
    pub server_name: String,
    /// ALPN protocol ("" if none).
    pub negotiated_protocol: String,
    /// Key exchange group, e.g. `X25519`.
    pub curves: String,
    /// Go-style cipher suite name.
    pub cipher_suite: String,
}

/// JSON datagram answered by the UDP echo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UdpEchoReply {
    /// The datagram received (lossy UTF-8).
    pub request: String,
    /// Identity.
    pub namespace: String,
    /// Identity.
    pub ingress: String,
    /// Identity.
    pub service: String,
    /// Identity.
    pub pod: String,
}

/// Listeners bound but not yet serving.
pub struct BoundEcho {
    cfg: Arc<EchoConfig>,
    addrs: BoundAddrs,
    http: Option<tokio::net::TcpListener>,
    h2c: Option<tokio::net::TcpListener>,
    https: Option<tokio::net::TcpListener>,
    tcp: Option<tokio::net::TcpListener>,
    tls: Option<tokio::net::TcpListener>,
    udp: Option<tokio::net::UdpSocket>,
    acceptor: Option<l4::TlsAcceptors>,
}

async fn listen(ip: IpAddr, port: Option<u16>) -> Result<Option<tokio::net::TcpListener>> {
    match port {
        None => Ok(None),
        Some(p) => Ok(Some(
            tokio::net::TcpListener::bind((ip, p))
                .await
                .with_context(|| format!("binding tcp {ip}:{p}"))?,
        )),
    }
}

/// Binds every listener of `cfg` (must run inside a tokio runtime, in the
/// namespace where the sockets should live).
pub async fn bind(cfg: EchoConfig) -> Result<BoundEcho> {
    cfg.validate()?;
    let acceptor = match &cfg.tls_pem {
        Some(pem) => Some(l4::TlsAcceptors::new(pem)?),
        None => None,
    };
    let ip = cfg.bind;
    let http = listen(ip, cfg.http).await?;
    let h2c = listen(ip, cfg.h2c).await?;
    let https = listen(ip, cfg.https).await?;
    let tcp = listen(ip, cfg.tcp).await?;
    let tls = listen(ip, cfg.tls).await?;
    let udp = match cfg.udp {
        None => None,
        Some(p) => Some(
            tokio::net::UdpSocket::bind((ip, p))
                .await
                .with_context(|| format!("binding udp {ip}:{p}"))?,
        ),
    };
    let la = |l: &Option<tokio::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let addrs = BoundAddrs {
        http: la(&http),
        h2c: la(&h2c),
        https: la(&https),
        tcp: la(&tcp),
        tls: la(&tls),
        udp: udp.as_ref().and_then(|u| u.local_addr().ok()),
    };
    Ok(BoundEcho {
        cfg: Arc::new(cfg),
        addrs,
        http,
        h2c,
        https,
        tcp,
        tls,
        udp,
        acceptor,
    })
}

impl BoundEcho {
    /// The bound addresses.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Serves until `shutdown` completes. Connections still open are dropped then.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let id = Arc::new(self.cfg.identity.clone());
        let port_str = |a: Option<SocketAddr>| a.map(|a| a.port().to_string()).unwrap_or_default();
        let tcp_ctx = Arc::new(l4::TcpCtx {
            id: id.clone(),
            tcpport: port_str(self.addrs.tcp),
            tlsport: port_str(self.addrs.tls),
            proxy_protocol: self.cfg.proxy_protocol,
        });
        let log = self.cfg.log_requests;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.http {
            tasks.spawn(http::serve(l, id.clone(), http::Flavor::Http1, None, log));
        }
        if let Some(l) = self.h2c {
            tasks.spawn(http::serve(l, id.clone(), http::Flavor::Auto, None, log));
        }
        if let (Some(l), Some(acc)) = (self.https, &self.acceptor) {
            tasks.spawn(http::serve(
                l,
                id.clone(),
                http::Flavor::Auto,
                Some(acc.https.clone()),
                log,
            ));
        }
        if let Some(l) = self.tcp {
            tasks.spawn(l4::serve_tcp(l, tcp_ctx.clone(), None));
        }
        if let (Some(l), Some(acc)) = (self.tls, &self.acceptor) {
            tasks.spawn(l4::serve_tcp(l, tcp_ctx.clone(), Some(acc.tcp.clone())));
        }
        if let Some(u) = self.udp {
            tasks.spawn(l4::serve_udp(u, id.clone()));
        }
        tokio::select! {
            _ = shutdown => Ok(()),
            Some(r) = tasks.join_next() => match r {
                Ok(Ok(())) => Err(anyhow!("an echo listener stopped")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow!("echo listener task failed: {e}")),
            },
        }
    }
}

/// An echo server running in-process on its own thread (and tokio runtime),
/// possibly inside a namespace. Stopped and joined on drop.
pub struct EchoServer {
    addrs: BoundAddrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoServer")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl EchoServer {
    /// Starts in the current network namespace.
    pub fn start(cfg: EchoConfig) -> Result<Self> {
        Self::start_on(cfg, None)
    }

    /// Starts on a thread inside `ns`; returns once every listener is bound.
    pub fn start_in(ns: &Netns, cfg: EchoConfig) -> Result<Self> {
        Self::start_on(cfg, Some(ns))
    }

    fn start_on(cfg: EchoConfig, ns: Option<&Netns>) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<BoundAddrs>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let body = move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let bound = match bind(cfg).await {
                    Ok(b) => b,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        bail!("{msg}");
                    }
                };
                let _ = ready_tx.send(Ok(bound.addrs().clone()));
                bound
                    .serve(async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        };
        let thread = match ns {
            Some(ns) => ns.spawn_thread(body)?,
            None => std::thread::Builder::new()
                .name("echo".into())
                .spawn(body)?,
        };
        let addrs = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("echo server did not become ready in 10 s"))??;
        Ok(EchoServer {
            addrs,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound addresses (0.0.0.0 when bound to any).
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Stops and joins, returning the server's result.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("echo server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Path of the `echo-backend` binary: env `ECHO_BACKEND_BIN`, else
/// `<target>/<profile>/echo-backend` next to the running test executable.
pub fn echo_backend_bin() -> Result<PathBuf> {
    crate::gateway::sibling_binary("ECHO_BACKEND_BIN", "echo-backend").map_err(|e| {
        anyhow!("{e:#}; build it first: cargo build -p gateway-tests --bin echo-backend")
    })
}

/// Runs the `echo-backend` binary inside `ns` with `cfg` and waits (≤ 10 s) for
/// its `READY` line. Certificates are written to a temp dir kept with the process.
pub fn spawn_echo(ns: &Netns, cfg: &EchoConfig) -> Result<crate::netns::Process> {
    cfg.validate()?;
    let bin = echo_backend_bin()?;
    let dir = crate::netns::temp_dir("echo")?;
    let files = match &cfg.tls_pem {
        Some(pem) => {
            let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&c, &pem.cert_pem)?;
            std::fs::write(&k, &pem.key_pem)?;
            Some((c, k))
        }
        None => None,
    };
    let mut argv = vec![bin.display().to_string()];
    argv.extend(cfg.to_args(files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))));
    let mut p = ns.spawn(&argv)?;
    p.hold_dir(dir);
    p.wait_for_line("READY", Duration::from_secs(10))?;
    Ok(p)
}

/// Go's `http.CanonicalHeaderKey`: `x-foo-bar` → `X-Foo-Bar`.
pub fn canonical_header_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        upper = c == '-';
    }
    out
}

/// Parses a Go duration like `1s`, `500ms`, `1m30s`, `2.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_keys() {
        assert_eq!(canonical_header_key("x-foo-bar"), "X-Foo-Bar");
        assert_eq!(canonical_header_key("USER-AGENT"), "User-Agent");
        assert_eq!(canonical_header_key("accept"), "Accept");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn args_roundtrip_shape() {
        let c = EchoConfig::new("p-1-2", "ns")
            .service("svc")
            .tcp(3000)
            .udp(8080);
        let a = c.to_args(None);
        assert!(a.windows(2).any(|w| w == ["--tcp", "3000"]));
        assert!(a.windows(2).any(|w| w == ["--udp", "8080"]));
        assert!(!a.contains(&"--http".to_string()));
        assert!(EchoConfig::new("p", "n").validate().is_err());
        assert!(EchoConfig::new("p", "n").tls(1).validate().is_err());
    }

    #[test]
    fn pod_names_map_back_to_deployment() {
        let p = Identity::pod_name("tcp-backend", 3);
        assert_eq!(crate::clients::deployment_of(&p), "tcp-backend");
    }
}
