//! TCP/TLS line protocol (`PING`, `IS_TLS`, `TEST`) and the UDP JSON echo.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::TlsAcceptor;

use super::{Identity, TcpEchoReply, TcpTlsInfo, TlsPem, UdpEchoReply, TCP_GREETING};

/// A session that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest command line accepted.
const MAX_LINE: usize = 4096;

/// Acceptors built from one certificate: without ALPN for the TCP protocol,
/// with `h2`/`http/1.1` for HTTPS.
pub(super) struct TlsAcceptors {
    pub tcp: TlsAcceptor,
    pub https: TlsAcceptor,
}

impl TlsAcceptors {
    pub fn new(pem: &TlsPem) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(pem.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing certificate PEM")?;
        anyhow::ensure!(!certs.is_empty(), "no certificate in PEM");
        let key =
            PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).context("parsing key PEM")?;
        let make = |alpn: Vec<Vec<u8>>| -> Result<TlsAcceptor> {
            let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())?;
            c.alpn_protocols = alpn;
            Ok(TlsAcceptor::from(Arc::new(c)))
        };
        Ok(TlsAcceptors {
            tcp: make(vec![])?,
            https: make(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
        })
    }
}

/// What the TCP echo reports besides the identity.
pub(super) struct TcpCtx {
    pub id: Arc<Identity>,
    pub tcpport: String,
    pub tlsport: String,
    /// Connections start with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
}

/// TLS facts in the TCP echo's format (`TLS 1.3`, Go cipher-suite names).
pub(super) fn tls_info(conn: &rustls::ServerConnection) -> TcpTlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let name = s
                .suite()
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{:?}", s.suite()));
            match name.strip_prefix("TLS13_") {
                Some(rest) => format!("TLS_{rest}"),
                None => name,
            }
        })
        .unwrap_or_default();
    let curves = conn
        .negotiated_key_exchange_group()
        .map(|g| match g.name() {
            rustls::NamedGroup::X25519 => "X25519".to_string(),
            rustls::NamedGroup::secp256r1 => "CurveP256".to_string(),
            rustls::NamedGroup::secp384r1 => "CurveP384".to_string(),
            rustls::NamedGroup::secp521r1 => "CurveP521".to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    TcpTlsInfo {
        version,
        server_name: conn.server_name().unwrap_or_default().to_string(),
        negotiated_protocol: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        curves,
        cipher_suite,
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    ctx: Arc<TcpCtx>,
    tls: Option<TlsAcceptor>,
) -> Result<()> {
    loop {
        let (mut stream, _peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let proxy = if ctx.proxy_protocol {
                let read = super::proxy_protocol::read_v2(&mut stream);
                match tokio::time::timeout(Duration::from_secs(10), read).await {
                    Ok(Ok(header)) => Some(header),
                    Ok(Err(e)) => {
                        println!("PROXY header refused: {e:#}");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                None
            };
            match tls {
                None => {
                    let _ = session(stream, &ctx, None, proxy).await;
                }
                Some(acc) => {
                    if let Ok(s) = acc.accept(stream).await {
                        let info = tls_info(s.get_ref().1);
                        let _ = session(s, &ctx, Some(info), proxy).await;
                    }
                }
            }
        });
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ctx: &TcpCtx,
    tls: Option<TcpTlsInfo>,
    proxy: Option<super::proxy_protocol::ProxyHeader>,
) -> Result<()> {
    let mut s = BufReader::new(stream);
    s.get_mut().write_all(TCP_GREETING.as_bytes()).await?;
    s.get_mut().flush().await?;
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut s).take(MAX_LINE as u64).read_line(&mut line),
        )
        .await??;
        if n == 0 {
            return Ok(());
        }
        let answer = match line.trim() {
            "PING" => "PONG\n".to_string(),
            "IS_TLS" => format!("{}\n", tls.is_some()),
            "TEST" => {
                let r = TcpEchoReply {
                    namespace: ctx.id.namespace.clone(),
                    ingress: ctx.id.ingress.clone(),
                    service: ctx.id.service.clone(),
                    pod: ctx.id.pod.clone(),
                    tcpport: ctx.tcpport.clone(),
                    tlsport: ctx.tlsport.clone(),
                    is_tls: tls.is_some(),
                    tls: tls.clone(),
                    proxy: proxy.clone(),
                };
                format!("{}\n", serde_json::to_string(&r)?)
            }
            "" => continue,
            other => format!("UNKNOWN COMMAND {other}\n"),
        };
        s.get_mut().write_all(answer.as_bytes()).await?;
        s.get_mut().flush().await?;
    }
}

pub(super) async fn serve_udp(sock: UdpSocket, id: Arc<Identity>) -> Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // Transient (e.g. a queued ICMP error); don't spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let r = UdpEchoReply {
            request: String::from_utf8_lossy(&buf[..n]).into_owned(),
            namespace: id.namespace.clone(),
            ingress: id.ingress.clone(),
            service: id.service.clone(),
            pod: id.pod.clone(),
        };
        let out = serde_json::to_vec(&r)?;
        // A send error (e.g. ICMP-induced ECONNREFUSED) must not stop the server.
        let _ = sock.send_to(&out, peer).await;
    }
}
