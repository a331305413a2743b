//! The TLS backend of `bench tls`: a rustls echo (TLS 1.3, ECDSA P-256 certificate from the harness's PKI) on
//! threads of the bench process inside the backend namespace. It counts accepted, completed-handshake and
//! currently open connections, so the memory phase knows when every connection is established end to end.
//!
//! In canned mode ([`TlsEcho::set_canned`]) it does no cryptography: it reads the ClientHello and answers with
//! [`CANNED_ANSWER`], then closes. The backend's handshake work then no longer bounds a connection-rate run, and
//! what is left to measure is the data planes' own cost per connection.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use gateway_tests::{server::ServerThread, Netns};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The canned-mode answer: the header of a TLS handshake record carrying a ServerHello (the client stops at the
/// first byte).
pub const CANNED_ANSWER: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];

#[derive(Default)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub handshakes: AtomicU64,
    pub open: AtomicU64,
    /// Canned mode (see the module docs).
    canned: AtomicBool,
}

/// A running echo; stopped (runtime shut down, thread joined) on drop.
pub struct TlsEcho {
    pub counts: Arc<Counts>,
    _server: ServerThread,
}

impl TlsEcho {
    /// Listens on 0.0.0.0:`port` in `ns` with `threads` runtime workers.
    pub fn start(
        ns: &Netns,
        port: u16,
        cert_pem: &str,
        key_pem: &str,
        threads: usize,
    ) -> anyhow::Result<Self> {
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
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        let server = ServerThread::start(
            ns,
            "the TLS echo",
            threads,
            move || bind(port),
            move |listener| async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        // EMFILE and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    c.accepted.fetch_add(1, Relaxed);
                    let _ = tcp.set_nodelay(true);
                    let (c, acceptor) = (Arc::clone(&c), acceptor.clone());
                    tokio::spawn(async move {
                        if c.canned.load(Relaxed) {
                            let mut tcp = tcp;
                            let mut hello = [0u8; 4096];
                            if matches!(tcp.read(&mut hello).await, Ok(1..)) {
                                let _ = tcp.write_all(CANNED_ANSWER).await;
                            }
                            return;
                        }
                        c.open.fetch_add(1, Relaxed);
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            c.handshakes.fetch_add(1, Relaxed);
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = tls.shutdown().await;
                        }
                        c.open.fetch_sub(1, Relaxed);
                    });
                }
            },
        )?;
        Ok(TlsEcho {
            counts,
            _server: server,
        })
    }

    pub fn open(&self) -> u64 {
        self.counts.open.load(Relaxed)
    }

    /// Switches canned mode (see the module docs) for the connections accepted from now on.
    pub fn set_canned(&self, canned: bool) {
        self.counts.canned.store(canned, Relaxed);
    }
}

/// A listener with a deep backlog (bursts of connections must not wait for SYN retries).
fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    s.listen(4096)?;
    Ok(s.into())
}
