//! The receiving side of PROXY protocol v2 (HAProxy's specification, section 2.2), written independently of the
//! gateway's sender so end-to-end tests check the header on the wire: signature, version 2, command PROXY,
//! TCP over IPv4 or IPv6, source then destination address and port.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The addresses a PROXY v2 header carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyHeader {
    /// The client's address and port as the gateway saw them.
    pub source: SocketAddr,
    /// The address and port the client connected to.
    pub destination: SocketAddr,
}

/// Parses a complete v2 header (the 16 fixed bytes and the address block; TLVs after the addresses are
/// ignored).
pub fn parse_v2(header: &[u8]) -> Result<ProxyHeader> {
    ensure!(header.len() >= 16, "PROXY v2 header shorter than 16 bytes");
    ensure!(header[..12] == SIGNATURE, "no PROXY v2 signature");
    ensure!(
        header[12] == 0x21,
        "version/command {:#04x}, expected 2/PROXY",
        header[12]
    );
    let len = u16::from_be_bytes([header[14], header[15]]) as usize;
    let body = &header[16..];
    ensure!(body.len() == len, "length field {len}, got {}", body.len());
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match header[13] {
        0x11 => {
            ensure!(len >= 12, "IPv4 address block of {len} bytes");
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Ok(ProxyHeader {
                source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            })
        }
        0x21 => {
            ensure!(len >= 36, "IPv6 address block of {len} bytes");
            let ip = |b: &[u8]| {
                let a: [u8; 16] = b.try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(a))
            };
            Ok(ProxyHeader {
                source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            })
        }
        other => bail!("family/transport {other:#04x}, expected TCP over IPv4 or IPv6"),
    }
}

/// Reads exactly one v2 header from `stream` (nothing more) and parses it.
pub async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader> {
    let mut header = vec![0u8; 16];
    stream.read_exact(&mut header).await?;
    ensure!(header[..12] == SIGNATURE, "no PROXY v2 signature");
    let len = u16::from_be_bytes([header[14], header[15]]) as usize;
    header.resize(16 + len, 0);
    stream.read_exact(&mut header[16..]).await?;
    parse_v2(&header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_from_the_specification_layout() {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend([192, 0, 2, 1, 198, 51, 100, 7]);
        h.extend(40000u16.to_be_bytes());
        h.extend(443u16.to_be_bytes());
        let p = parse_v2(&h).unwrap();
        assert_eq!(p.source, "192.0.2.1:40000".parse().unwrap());
        assert_eq!(p.destination, "198.51.100.7:443".parse().unwrap());
        h[12] = 0x20; // LOCAL command
        assert!(parse_v2(&h).is_err());
        h[12] = 0x21;
        h[0] = b'X';
        assert!(parse_v2(&h).is_err());
    }
}
