//! TLS termination for HTTPS listeners: the certificates of one (address, port), chosen by SNI at each
//! handshake from a table the agent swaps when Secrets change (new connections get the new certificate, open
//! ones keep theirs).
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::proxy::HttpProxyError;
use crate::{ir::TlsCertificate, translate::hostname};

/// The certificates of one port's HTTPS listeners, most specific hostname first.
#[derive(Debug, Default)]
pub struct CertTable {
    entries: Vec<(Option<String>, Arc<CertifiedKey>)>,
}

impl CertTable {
    /// A table from (listener hostname, certificate) pairs in any order.
    pub fn new(mut entries: Vec<(Option<String>, Arc<CertifiedKey>)>) -> Self {
        entries.sort_by(|a, b| {
            hostname::precedence(a.0.as_deref().unwrap_or("*"))
                .cmp(&hostname::precedence(b.0.as_deref().unwrap_or("*")))
        });
        Self { entries }
    }
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertTable>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.0.load();
        match hello.server_name() {
            Some(sni) => {
                let sni = sni.to_ascii_lowercase();
                table
                    .entries
                    .iter()
                    .find(|(h, _)| h.as_deref().is_none_or(|h| hostname::matches(h, &sni)))
            }
            None => table
                .entries
                .iter()
                .find(|(h, _)| h.is_none())
                .or(table.entries.first()),
        }
        .map(|(_, key)| key.clone())
    }
}

/// The signing key and chain of a listener's certificateRef.
pub fn certified_key(cert: &TlsCertificate) -> Result<Arc<CertifiedKey>, HttpProxyError> {
    let secret = format!("{}/{}", cert.secret.namespace, cert.secret.name);
    let err = |message: String| HttpProxyError::Certificate {
        secret: secret.clone(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(err("tls.crt holds no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&cert.key_pem).map_err(|e| err(format!("tls.key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(format!("tls.key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// An acceptor offering `h2` and `http/1.1` with the certificate `certs` holds at each handshake. One acceptor
/// (and so one session cache) serves a port on every worker: a client resuming its session may land on another.
pub fn acceptor(
    certs: Arc<ArcSwap<CertTable>>,
) -> Result<tokio_rustls::TlsAcceptor, HttpProxyError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Resolver(certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
