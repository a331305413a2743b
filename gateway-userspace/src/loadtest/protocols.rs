//! The protocols the load tester speaks, one attempt or exchange at a time: plain TCP and TLS (rustls, real
//! handshakes with chosen SNIs) against an echo, a canned ClientHello (connection-rate tests without a
//! handshake: the attempt ends at the server's first byte), UDP datagrams, HTTP/1.1 GET (plain or over TLS)
//! with a small built-in client, and HTTP/2 GET (h2c prior knowledge, or TLS with ALPN h2; see `h2.rs`).
//!
//! Every function records what it measured into the shared [`Stats`] through a [`Ctx`]; bytes are counted as
//! they move (plaintext for TLS), so the totals match what the server read and wrote.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::TlsConnector;

use super::stats::{ErrorKind, Phase, Stats};

/// Largest HTTP response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Write size in throughput mode.
const CHUNK: usize = 64 * 1024;

/// What the load tester speaks to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TCP to an echo: send `--request-size` bytes, read as many back.
    Tcp,
    /// TLS with rustls (real handshakes, `--sni` round robin), then the TCP echo exchange inside.
    Tls,
    /// TCP, then a canned ClientHello (`--clienthello FILE`); done at the server's first byte.
    TlsCanned,
    /// UDP datagrams of `--request-size` bytes; one reply datagram expected per request.
    Udp,
    /// HTTP/1.1 GET `--path`.
    Http,
    /// HTTP/1.1 GET `--path` over TLS (rustls).
    Https,
    /// HTTP/2 GET `--path` over cleartext TCP, prior knowledge (h2c); requests share a connection in
    /// concurrent mode.
    H2c,
    /// HTTP/2 GET `--path` over TLS (rustls, ALPN `h2` required).
    H2,
}

impl Protocol {
    /// Whether this protocol does a rustls handshake.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Https | Protocol::H2)
    }

    /// Whether this protocol speaks HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
}

/// Errors of this area: setting up a target, or one attempt failing.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An operation exceeded the timeout.
    #[error("timed out")]
    Timeout,
    /// The peer closed before the exchange was complete.
    #[error("the peer closed the connection early")]
    Eof,
    /// TLS configuration or handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// An HTTP response that is not acceptable.
    #[error("HTTP: {0}")]
    Http(String),
    /// A reply that does not match the request.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// Bad options (e.g. TLS without `--ca` or `--insecure`).
    #[error("{0}")]
    Setup(String),
}

impl ProtocolError {
    /// The kind it is counted as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProtocolError::Io(e) => ErrorKind::of_io(e),
            ProtocolError::Timeout => ErrorKind::Timeout,
            ProtocolError::Eof => ErrorKind::Eof,
            ProtocolError::Tls(_) => ErrorKind::Tls,
            ProtocolError::Http(_) => ErrorKind::Http,
            ProtocolError::Protocol(_) | ProtocolError::Setup(_) => ErrorKind::Protocol,
        }
    }
}

/// Everything an attempt needs to know about the target, built once.
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Per-operation timeout (connect, handshake, one exchange).
    pub timeout: Duration,
    tls: Option<TlsConnector>,
    snis: Vec<ServerName<'static>>,
    next_sni: AtomicUsize,
    request: Vec<u8>,
    clienthello: Vec<u8>,
    http_close: Vec<u8>,
    http_keep_alive: Vec<u8>,
    /// The request URI of HTTP/2 GETs (`http[s]://host/path`: scheme and `:authority` come from it).
    pub(super) h2_uri: http::Uri,
}

/// Options a [`Target`] is built from.
pub struct TargetOptions<'a> {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Host part of the target as given (default SNI and `Host`).
    pub host: &'a str,
    /// The protocol.
    pub protocol: Protocol,
    /// SNIs, used round robin (empty: `host`).
    pub snis: &'a [String],
    /// Accept any server certificate.
    pub insecure: bool,
    /// CA certificates (PEM) to verify the server with.
    pub ca: Option<&'a Path>,
    /// Allow TLS session resumption.
    pub tls_resume: bool,
    /// The canned ClientHello file (tls-canned).
    pub clienthello: Option<&'a Path>,
    /// Echo request size (tcp, tls, udp).
    pub request_size: usize,
    /// HTTP path.
    pub path: &'a str,
    /// HTTP `Host` header (default: `host`).
    pub http_host: Option<&'a str>,
    /// Per-operation timeout.
    pub timeout: Duration,
}

impl Target {
    /// Validates the options and prepares the TLS client and request bytes.
    pub fn new(o: &TargetOptions<'_>) -> Result<Target, ProtocolError> {
        let tls = if o.protocol.is_tls() {
            Some(TlsConnector::from(Arc::new(tls_config(o)?)))
        } else {
            None
        };
        let mut snis = Vec::new();
        let names: Vec<&str> = if o.snis.is_empty() {
            vec![o.host]
        } else {
            o.snis.iter().map(String::as_str).collect()
        };
        if o.protocol.is_tls() {
            for n in names {
                snis.push(
                    ServerName::try_from(n.to_string())
                        .map_err(|e| ProtocolError::Setup(format!("SNI {n:?}: {e}")))?,
                );
            }
        }
        let clienthello = match (o.protocol, o.clienthello) {
            (Protocol::TlsCanned, Some(p)) => std::fs::read(p).map_err(|e| {
                ProtocolError::Setup(format!("reading the ClientHello {}: {e}", p.display()))
            })?,
            (Protocol::TlsCanned, None) => {
                return Err(ProtocolError::Setup(
                    "--protocol tls-canned needs --clienthello FILE".into(),
                ))
            }
            _ => Vec::new(),
        };
        if o.protocol == Protocol::TlsCanned && clienthello.is_empty() {
            return Err(ProtocolError::Setup("the ClientHello file is empty".into()));
        }
        if o.request_size == 0
            && matches!(o.protocol, Protocol::Tcp | Protocol::Tls | Protocol::Udp)
        {
            return Err(ProtocolError::Setup(
                "--request-size must be at least 1".into(),
            ));
        }
        // A recognisable, line-terminated payload: "xxxx…\n".
        let mut request = vec![b'x'; o.request_size];
        if let Some(last) = request.last_mut() {
            *last = b'\n';
        }
        let host = o.http_host.unwrap_or(o.host);
        let http = |conn: &str| {
            format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-loadtest\r\nAccept: */*\r\nConnection: {conn}\r\n\r\n",
                o.path
            )
            .into_bytes()
        };
        let scheme = if o.protocol == Protocol::H2 {
            "https"
        } else {
            "http"
        };
        let h2_uri = if o.protocol.is_h2() {
            // An IPv6 literal needs its brackets back in the authority.
            let authority = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            format!("{scheme}://{authority}{}", o.path)
                .parse::<http::Uri>()
                .map_err(|e| {
                    ProtocolError::Setup(format!("HTTP/2 URI from {host:?} and {:?}: {e}", o.path))
                })?
        } else {
            http::Uri::from_static("/")
        };
        Ok(Target {
            h2_uri,
            addr: o.addr,
            protocol: o.protocol,
            timeout: o.timeout,
            tls,
            snis,
            next_sni: AtomicUsize::new(0),
            request,
            clienthello,
            http_close: http("close"),
            http_keep_alive: http("keep-alive"),
        })
    }
}

fn tls_config(o: &TargetOptions<'_>) -> Result<ClientConfig, ProtocolError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProtocolError::Tls(e.to_string()))?;
    let mut config = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let ca = o.ca.ok_or_else(|| {
            ProtocolError::Setup(
                "TLS needs --ca FILE (PEM) to verify the server, or --insecure".into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| ProtocolError::Setup(format!("reading {}: {e}", ca.display())))?
        {
            let cert =
                cert.map_err(|e| ProtocolError::Setup(format!("parsing {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| ProtocolError::Setup(format!("CA in {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(ProtocolError::Setup(format!(
                "no certificate in {}",
                ca.display()
            )));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    if !o.tls_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    match o.protocol {
        Protocol::Https => config.alpn_protocols = vec![b"http/1.1".to_vec()],
        Protocol::H2 => config.alpn_protocols = vec![b"h2".to_vec()],
        _ => {}
    }
    Ok(config)
}

/// `--insecure`: accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connected byte stream (TCP or TLS over TCP).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`].
pub type Conn = Box<dyn Stream>;

/// The target and where to record; cheap to clone into tasks.
#[derive(Clone)]
pub struct Ctx {
    /// The target.
    pub target: Arc<Target>,
    /// Shared statistics.
    pub stats: Arc<Mutex<Stats>>,
    /// Start of the run (timeline origin).
    pub run_start: Instant,
}

impl Ctx {
    fn with<R>(&self, f: impl FnOnce(&mut Stats, Duration) -> R) -> R {
        let at = self.run_start.elapsed();
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s, at)
    }

    /// Records `phase` as the time since `since`.
    pub fn record(&self, phase: Phase, since: Instant) {
        let lat = since.elapsed();
        self.with(|s, at| s.record(phase, lat, at));
    }

    /// Counts bytes.
    pub fn bytes(&self, sent: u64, received: u64) {
        self.with(|s, at| s.bytes(sent, received, at));
    }

    /// Counts an error.
    pub fn error(&self, kind: ErrorKind) {
        self.with(|s, at| s.error(kind, at));
    }

    /// Counts an attempt started.
    pub fn attempt(&self) {
        self.with(|s, _| s.attempts += 1);
    }

    pub(super) async fn timed<T, F>(&self, f: F) -> Result<T, ProtocolError>
    where
        F: std::future::Future<Output = Result<T, ProtocolError>>,
    {
        tokio::time::timeout(self.target.timeout, f)
            .await
            .map_err(|_| ProtocolError::Timeout)?
    }

    /// Connects (and handshakes for TLS). `t0` is the attempt's intended start: the connect latency is
    /// measured from it; the handshake is measured on its own.
    pub async fn open(&self, t0: Instant) -> Result<Conn, ProtocolError> {
        let tcp = self
            .timed(async { Ok(TcpStream::connect(self.target.addr).await?) })
            .await?;
        self.record(Phase::Connect, t0);
        let _ = tcp.set_nodelay(true);
        match &self.target.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let i = self.target.next_sni.fetch_add(1, Ordering::Relaxed);
                let name = self.target.snis[i % self.target.snis.len()].clone();
                let started = Instant::now();
                let tls = self
                    .timed(async {
                        connector.connect(name, tcp).await.map_err(|e| {
                            match e.kind() {
                                // rustls reports its own failures as InvalidData; keep socket errors as such.
                                std::io::ErrorKind::InvalidData => {
                                    ProtocolError::Tls(e.to_string())
                                }
                                _ => ProtocolError::Io(e),
                            }
                        })
                    })
                    .await?;
                self.record(Phase::Handshake, started);
                if self.target.protocol == Protocol::H2
                    && tls.get_ref().1.alpn_protocol() != Some(&b"h2"[..])
                {
                    return Err(ProtocolError::Tls(
                        "the server did not select h2 by ALPN".into(),
                    ));
                }
                Ok(Box::new(tls))
            }
        }
    }

    /// One exchange on an open connection, by protocol: the echo (tcp, tls), the canned ClientHello, or an HTTP
    /// GET. Returns whether the connection can carry another exchange.
    pub async fn exchange(
        &self,
        conn: &mut Conn,
        t0: Instant,
        keep_alive: bool,
    ) -> Result<bool, ProtocolError> {
        self.timed(async {
            match self.target.protocol {
                Protocol::Tcp | Protocol::Tls => {
                    self.echo(conn, t0).await?;
                    Ok(true)
                }
                Protocol::TlsCanned => {
                    self.canned(conn, t0).await?;
                    Ok(false)
                }
                Protocol::Http | Protocol::Https => self.http(conn, t0, keep_alive).await,
                Protocol::Udp => Err(ProtocolError::Setup("UDP has no stream".into())),
                Protocol::H2c | Protocol::H2 => Err(ProtocolError::Setup(
                    "HTTP/2 exchanges go through a Link (h2.rs)".into(),
                )),
            }
        })
        .await
    }

    async fn echo(&self, conn: &mut Conn, t0: Instant) -> Result<(), ProtocolError> {
        let req = &self.target.request;
        conn.write_all(req).await?;
        conn.flush().await?;
        self.bytes(req.len() as u64, 0);
        let mut buf = vec![0u8; req.len()];
        let mut got = 0;
        while got < req.len() {
            let n = conn.read(&mut buf[got..]).await?;
            if n == 0 {
                return Err(ProtocolError::Eof);
            }
            if got == 0 {
                self.record(Phase::Ttfb, t0);
            }
            self.bytes(0, n as u64);
            got += n;
        }
        if buf != *req {
            return Err(ProtocolError::Protocol(
                "the echo differs from the request".into(),
            ));
        }
        self.record(Phase::Total, t0);
        Ok(())
    }

    async fn canned(&self, conn: &mut Conn, t0: Instant) -> Result<(), ProtocolError> {
        let hello = &self.target.clienthello;
        conn.write_all(hello).await?;
        conn.flush().await?;
        self.bytes(hello.len() as u64, 0);
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(ProtocolError::Eof);
        }
        self.bytes(0, n as u64);
        self.record(Phase::Ttfb, t0);
        self.record(Phase::Total, t0);
        Ok(())
    }

    async fn http(
        &self,
        conn: &mut Conn,
        t0: Instant,
        keep_alive: bool,
    ) -> Result<bool, ProtocolError> {
        let req = if keep_alive {
            &self.target.http_keep_alive
        } else {
            &self.target.http_close
        };
        conn.write_all(req).await?;
        conn.flush().await?;
        self.bytes(req.len() as u64, 0);
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProtocolError::Eof);
            }
            if buf.is_empty() {
                self.record(Phase::Ttfb, t0);
            }
            self.bytes(0, n as u64);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(ProtocolError::Http("response head too large".into()));
            }
        };
        let head = ResponseHead::parse(&buf[..head_end])?;
        let mut body = buf.len() - head_end;
        let mut reusable = keep_alive && !head.close;
        match head.length {
            BodyLength::Known(len) => {
                while (body as u64) < len {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(ProtocolError::Eof);
                    }
                    self.bytes(0, n as u64);
                    body += n;
                }
            }
            BodyLength::Chunked => {
                // Enough for complete responses: read until the terminating zero-length chunk.
                let mut tail = buf[head_end..].to_vec();
                while !tail.ends_with(b"0\r\n\r\n") {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(ProtocolError::Eof);
                    }
                    self.bytes(0, n as u64);
                    tail.extend_from_slice(&chunk[..n]);
                    if tail.len() > 16 {
                        tail.drain(..tail.len() - 16);
                    }
                }
            }
            BodyLength::UntilClose => {
                reusable = false;
                loop {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    self.bytes(0, n as u64);
                }
            }
        }
        if head.status >= 400 {
            return Err(ProtocolError::Http(format!("status {}", head.status)));
        }
        self.record(Phase::Total, t0);
        Ok(reusable)
    }

    /// Throughput: writes `bytes` (in 64 KiB writes) and closes the write side, while reading until the server
    /// closes. Against an echo both directions carry `bytes`.
    pub async fn bulk(&self, conn: Conn, t0: Instant, bytes: u64) -> Result<(), ProtocolError> {
        let (mut rd, mut wr) = tokio::io::split(conn);
        let writer = async {
            let block = vec![b'x'; CHUNK];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                wr.write_all(&block[..n]).await?;
                self.bytes(n as u64, 0);
                left -= n as u64;
            }
            wr.shutdown().await?;
            Ok::<_, ProtocolError>(())
        };
        let reader = async {
            let mut buf = vec![0u8; CHUNK];
            let mut first = true;
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(n) => n,
                    // TLS peers may close without close_notify after echoing everything.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                    Err(e) => return Err(e.into()),
                };
                if n == 0 {
                    return Ok::<_, ProtocolError>(());
                }
                if first {
                    self.record(Phase::Ttfb, t0);
                    first = false;
                }
                self.bytes(0, n as u64);
            }
        };
        // Bulk transfers are bounded by the run's deadline, not by the per-operation timeout.
        tokio::try_join!(writer, reader)?;
        self.record(Phase::Total, t0);
        Ok(())
    }

    /// One UDP request on `sock` (connected to the target); the reply may be any size.
    pub async fn datagram(&self, sock: &UdpSocket, t0: Instant) -> Result<(), ProtocolError> {
        self.timed(async {
            let req = &self.target.request;
            sock.send(req).await?;
            self.bytes(req.len() as u64, 0);
            let mut buf = vec![0u8; 65_536];
            let n = sock.recv(&mut buf).await?;
            self.bytes(0, n as u64);
            self.record(Phase::Ttfb, t0);
            self.record(Phase::Total, t0);
            Ok(())
        })
        .await
    }

    /// A UDP socket connected to the target.
    pub async fn udp_socket(&self) -> Result<UdpSocket, ProtocolError> {
        let bind: SocketAddr = if self.target.addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(self.target.addr).await?;
        self.with(|s, at| s.connected(at));
        Ok(sock)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq)]
enum BodyLength {
    Known(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct ResponseHead {
    status: u16,
    length: BodyLength,
    close: bool,
}

impl ResponseHead {
    fn parse(head: &[u8]) -> Result<ResponseHead, ProtocolError> {
        let text = std::str::from_utf8(head)
            .map_err(|_| ProtocolError::Http("response head is not UTF-8".into()))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(ProtocolError::Http(format!("status line {status_line:?}")));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| ProtocolError::Http(format!("status line {status_line:?}")))?;
        let mut length = if status == 204 || status == 304 || (100..200).contains(&status) {
            BodyLength::Known(0)
        } else {
            BodyLength::UntilClose
        };
        let mut close = version == "HTTP/1.0";
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") && length != BodyLength::Chunked {
                let n = value
                    .parse()
                    .map_err(|_| ProtocolError::Http(format!("content-length {value:?}")))?;
                length = BodyLength::Known(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                length = BodyLength::Chunked;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        Ok(ResponseHead {
            status,
            length,
            close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_response_heads() {
        let h = ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(
            (h.status, h.length, h.close),
            (200, BodyLength::Known(12), false)
        );
        let h = ResponseHead::parse(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (h.status, h.length, h.close),
            (404, BodyLength::Chunked, true)
        );
        let h = ResponseHead::parse(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((h.length, h.close), (BodyLength::Known(0), true));
        assert!(ResponseHead::parse(b"SSH-2.0-x\r\n\r\n").is_err());
    }
}
