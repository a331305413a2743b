//! Test PKI: a throw-away CA and leaf certificates (ECDSA P-256, rcgen) written
//! as PEM files into a temp dir, for TLS echo backends and for `kubernetes.io/tls`
//! Secrets in test manifests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, as PEM strings and files.
#[derive(Debug, Clone)]
pub struct CertBundle {
    /// File stem used in the PKI dir.
    pub name: String,
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// `<dir>/<name>.crt`.
    pub cert_path: PathBuf,
    /// `<dir>/<name>.key`.
    pub key_path: PathBuf,
}

impl CertBundle {
    /// A `kubernetes.io/tls` Secret manifest holding this certificate.
    pub fn tls_secret_yaml(&self, name: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            base64(self.cert_pem.as_bytes()),
            base64(self.key_pem.as_bytes())
        )
    }
}

/// A CA plus the directory its files live in (removed on drop).
pub struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn san(s: &str) -> Result<SanType> {
    Ok(if s.contains("://") {
        SanType::URI(s.try_into().context("URI SAN")?)
    } else if let Ok(ip) = s.parse() {
        SanType::IpAddress(ip)
    } else {
        SanType::DnsName(s.try_into().context("DNS SAN")?)
    })
}

fn leaf_params(cn: &str, sans: &[&str]) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(p)
}

impl Pki {
    /// Generates a new CA named `common_name` in a fresh temp dir (`ca.crt`, `ca.key`).
    pub fn new(common_name: &str) -> Result<Self> {
        let dir = crate::netns::temp_dir("pki")?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        let ca_pem = cert.pem();
        let ca_key_pem = key.serialize_pem();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem)?;
        std::fs::write(dir.path().join("ca.key"), &ca_key_pem)?;
        Ok(Pki {
            dir,
            ca_pem,
            ca_key_pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// The directory holding every PEM file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM), e.g. for a client's root store or a `ca.crt` ConfigMap.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's private key (PEM).
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// `<dir>/ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a leaf (server and client auth) signed by the CA for `sans` (DNS
    /// names incl. wildcards, IPs, or URIs such as `spiffe://...`).
    pub fn issue(&self, name: &str, sans: &[&str]) -> Result<CertBundle> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(sans.first().copied().unwrap_or(name), sans)?
            .signed_by(&key, &self.issuer)?;
        self.write(name, cert.pem(), key.serialize_pem())
    }

    /// A self-signed leaf for `sans` (like conformance's `certificate` Secrets).
    pub fn self_signed(&self, name: &str, sans: &[&str]) -> Result<CertBundle> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(sans.first().copied().unwrap_or(name), sans)?.self_signed(&key)?;
        self.write(name, cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, cert_pem: String, key_pem: String) -> Result<CertBundle> {
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, &cert_pem)?;
        std::fs::write(&key_path, &key_pem)?;
        Ok(CertBundle {
            name: name.to_string(),
            cert_pem,
            key_pem,
            cert_path,
            key_path,
        })
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// DER bytes to a PEM block with the given label.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b = base64(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn ca_and_leaves() {
        let pki = Pki::new("gwt test ca").unwrap();
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.ca_path().exists());
        let leaf = pki
            .issue(
                "abc",
                &[
                    "abc.example.com",
                    "spiffe://abc.example.com/test-identity",
                    "other.example.com",
                ],
            )
            .unwrap();
        assert!(leaf.cert_path.exists() && leaf.key_path.exists());
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        let ss = pki.self_signed("star", &["*", "*.org"]).unwrap();
        assert!(ss.cert_pem.contains("CERTIFICATE"));
        let y = leaf.tls_secret_yaml("tls-checks-certificate", "infra");
        assert!(y.contains("type: kubernetes.io/tls") && y.contains("tls.crt: LS0t"));
    }
}
