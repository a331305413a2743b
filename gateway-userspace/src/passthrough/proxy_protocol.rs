//! PROXY protocol v2 headers towards backends, so a passthrough backend learns the client's address.
//!
//! Enabled per TLSRoute with the annotation `gateway.ebpf.dev/proxy-protocol: v2` (read from the snapshot by
//! [`routes_from_snapshot`], since the IR carries no annotations). The header is the binary v2 format of the
//! HAProxy specification: signature, `PROXY` command, TCP over IPv4 or IPv6, source then destination address and
//! port. It is written before the buffered ClientHello.
use std::{collections::HashSet, net::SocketAddr};

use crate::{ir::ObjectRef, snapshot::Snapshot};

/// The TLSRoute annotation that turns PROXY protocol on for its backends.
pub const ANNOTATION: &str = "gateway.ebpf.dev/proxy-protocol";

/// The 12-byte v2 signature.
const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// Whether a route's backend connections start with a PROXY protocol header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    #[default]
    None,
    V2,
}

/// Errors of this area: an annotation value that is not understood.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error("unsupported {ANNOTATION} value {0:?} (only \"v2\")")]
    UnsupportedValue(String),
}

impl std::str::FromStr for ProxyProtocol {
    type Err = ProxyProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v2" | "2" => Ok(Self::V2),
            "" | "none" | "off" | "false" => Ok(Self::None),
            other => Err(ProxyProtocolError::UnsupportedValue(other.to_string())),
        }
    }
}

/// The TLSRoutes whose annotation asks for PROXY protocol v2. Unknown values are logged and ignored.
pub fn routes_from_snapshot(snapshot: &Snapshot) -> HashSet<ObjectRef> {
    snapshot
        .tls_routes
        .iter()
        .filter_map(|route| {
            let value = route.metadata.annotations.get(ANNOTATION)?;
            match value.parse::<ProxyProtocol>() {
                Ok(ProxyProtocol::V2) => Some(ObjectRef {
                    kind: "TLSRoute".into(),
                    namespace: route.metadata.namespace().into(),
                    name: route.metadata.name.clone(),
                }),
                Ok(ProxyProtocol::None) => None,
                Err(e) => {
                    tracing::warn!(route = %route.metadata.name, error = %e, "ignoring annotation");
                    None
                }
            }
        })
        .collect()
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination` (the Gateway address the client
/// connected to). Mixed families (impossible on one TCP connection) fall back to the IPv6-mapped form.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                SocketAddr::V6(a) => a.ip().octets(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s));
            out.extend_from_slice(&v6(d));
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let h = v2_header(
            "198.18.0.2:40000".parse().unwrap(),
            "198.18.100.1:443".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[198, 18, 0, 2]);
        assert_eq!(&h[20..24], &[198, 18, 100, 1]);
        assert_eq!(&h[24..28], &[0x9c, 0x40, 0x01, 0xbb]);
    }

    #[test]
    fn annotation_values() {
        assert_eq!("v2".parse::<ProxyProtocol>().unwrap(), ProxyProtocol::V2);
        assert_eq!(
            "none".parse::<ProxyProtocol>().unwrap(),
            ProxyProtocol::None
        );
        assert!("v1".parse::<ProxyProtocol>().is_err());
    }
}
