//! Socket inspection inside a namespace, to prove e.g. that the gateway holds
//! no userspace socket for a listener port that the eBPF path serves.
//!
//! Reads `/proc/thread-self/net/{tcp,tcp6,udp,udp6}` from a thread that joined
//! the namespace ([`Netns::run`]): `/proc/self/net` would show the namespace of
//! the *process*' main thread, `/proc/thread-self/net` that of the calling thread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{anyhow, Context, Result};

use crate::netns::Netns;

/// TCP state number of LISTEN in `/proc/net/tcp`.
pub const TCP_LISTEN: u8 = 0x0A;

/// Which table a socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `/proc/net/tcp`.
    Tcp,
    /// `/proc/net/tcp6`.
    Tcp6,
    /// `/proc/net/udp`.
    Udp,
    /// `/proc/net/udp6`.
    Udp6,
}

impl Proto {
    fn file(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }
    /// Whether this is a TCP table.
    pub fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tcp6)
    }
}

/// One row of a `/proc/net/{tcp,udp}{,6}` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    /// Table.
    pub proto: Proto,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address (0.0.0.0:0 for listeners).
    pub remote: SocketAddr,
    /// Kernel state number (TCP: 0x0A = LISTEN, 0x01 = ESTABLISHED; UDP: 0x07 = unconnected).
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
}

impl SocketEntry {
    /// A TCP listener.
    pub fn is_tcp_listener(&self) -> bool {
        self.proto.is_tcp() && self.state == TCP_LISTEN
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr> {
    let (ip, port) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("bad address {s:?}"))?;
    let port = u16::from_str_radix(port, 16)?;
    let words = |hex: &str| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for i in (0..hex.len()).step_by(8) {
            let w = u32::from_str_radix(&hex[i..i + 8], 16)?;
            // The kernel prints each 32-bit word in host byte order.
            out.extend_from_slice(&w.to_ne_bytes());
        }
        Ok(out)
    };
    let ip = match ip.len() {
        8 => {
            let b = words(ip)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        32 => {
            let b: [u8; 16] = words(ip)?.try_into().map_err(|_| anyhow!("bad v6"))?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err(anyhow!("bad address {s:?}")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses one `/proc/net/{tcp,udp}{,6}` table (header line skipped).
pub fn parse_table(proto: Proto, text: &str) -> Result<Vec<SocketEntry>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        out.push(SocketEntry {
            proto,
            local: parse_addr(f[1])?,
            remote: parse_addr(f[2])?,
            state: u8::from_str_radix(f[3], 16)?,
            inode: f[9].parse()?,
        });
    }
    Ok(out)
}

/// Every TCP and UDP socket (v4 and v6) of the calling thread's namespace.
pub fn current_thread_sockets() -> Result<Vec<SocketEntry>> {
    let mut all = Vec::new();
    for proto in [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6] {
        let path = format!("/proc/thread-self/net/{}", proto.file());
        match std::fs::read_to_string(&path) {
            Ok(text) => all.extend(parse_table(proto, &text).with_context(|| path.clone())?),
            // tcp6/udp6 are absent when IPv6 is disabled.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("reading {path}: {e}")),
        }
    }
    Ok(all)
}

/// Every TCP and UDP socket in `ns`.
pub fn sockets(ns: &Netns) -> Result<Vec<SocketEntry>> {
    ns.run(current_thread_sockets)
}

/// Sockets in `ns` whose *local* port is `port` (any state, TCP and UDP).
pub fn sockets_on_port(ns: &Netns, port: u16) -> Result<Vec<SocketEntry>> {
    Ok(sockets(ns)?
        .into_iter()
        .filter(|s| s.local.port() == port)
        .collect())
}

/// TCP listeners and UDP sockets bound to local `port` in `ns`.
pub fn listening_sockets(ns: &Netns, port: u16) -> Result<Vec<SocketEntry>> {
    Ok(sockets_on_port(ns, port)?
        .into_iter()
        .filter(|s| s.is_tcp_listener() || !s.proto.is_tcp())
        .collect())
}

/// Whether any TCP or UDP socket in `ns` has local port `port`.
pub fn has_socket_on_port(ns: &Netns, port: u16) -> Result<bool> {
    Ok(!sockets_on_port(ns, port)?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:268E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n";
        let e = parse_table(Proto::Tcp, v4).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].local, "127.0.0.1:9870".parse().unwrap());
        assert!(e[0].is_tcp_listener());
        assert_eq!(e[0].inode, 12345);
        let v6 = "header\n   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        let e = parse_table(Proto::Tcp6, v6).unwrap();
        assert_eq!(e[0].local, "[::1]:3000".parse().unwrap());
    }
}
