//! What the agent needs to know of its network namespace: the interfaces to attach to, and for each backend
//! endpoint the interface it is reached through and the gateway address to use as SNAT source.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
};

use super::DataplaneError;

/// An interface the program may be attached to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// Interfaces that are up, except loopback, optionally narrowed to `only` (the `--interface` flag).
///
/// Without `--interface` every such interface is chosen: a Gateway address announced by MetalLB or routed to
/// the node can arrive on any of them, and replies from backends arrive on the interfaces towards the backends.
/// On an interface that carries no Gateway traffic the program costs a few loads per packet.
pub fn candidate_interfaces(only: &[String]) -> Result<Vec<Interface>, DataplaneError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| DataplaneError::Netif(format!("getifaddrs: {e}")))?;
    let mut names = BTreeSet::new();
    for ifa in addrs {
        let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let loopback = ifa
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
        if up && !loopback && (only.is_empty() || only.contains(&ifa.interface_name)) {
            names.insert(ifa.interface_name);
        }
    }
    let mut out = Vec::new();
    for name in names {
        // An interface can vanish between the two calls; skip it, the next scan settles it.
        if let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) {
            out.push(Interface { name, index });
        }
    }
    Ok(out)
}

/// How the gateway reaches one backend endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// Egress interface.
    pub ifindex: u32,
    /// The address the kernel would use as source towards the endpoint: the SNAT address.
    pub source: Ipv4Addr,
}

/// Resolves the path to `endpoint` from this namespace's main routing table (longest prefix match) and the
/// kernel's own source address selection.
pub fn path_to(endpoint: SocketAddrV4) -> Result<Path, DataplaneError> {
    // thread-self: a thread that entered another network namespace (tests do) sees that namespace's routes.
    let table = std::fs::read_to_string("/proc/thread-self/net/route")
        .map_err(|e| DataplaneError::Netif(format!("reading /proc/thread-self/net/route: {e}")))?;
    let route = longest_prefix_match(&table, *endpoint.ip())
        .ok_or_else(|| DataplaneError::NoRoute(endpoint.to_string()))?;
    let ifindex = nix::net::if_::if_nametoindex(route.as_str())
        .map_err(|e| DataplaneError::Netif(format!("interface {route}: {e}")))?;
    // Connecting a UDP socket sends nothing; it asks the kernel which source address it would choose.
    let probe = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(endpoint).map(|_| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| DataplaneError::NoRoute(format!("{endpoint}: {e}")))?;
    let source = match probe.ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => {
            return Err(DataplaneError::NoRoute(format!(
                "{endpoint}: source {other} is not IPv4"
            )))
        }
    };
    Ok(Path { ifindex, source })
}

/// Picks the interface of the most specific IPv4 route for `dst` in `/proc/net/route` text.
fn longest_prefix_match(table: &str, dst: Ipv4Addr) -> Option<String> {
    let dst = u32::from(dst);
    let mut best: Option<(u32, u32, String)> = None; // (prefix len, metric, iface)
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Destination and mask are printed as the kernel's u32 in host (little-endian) byte order.
        let (Ok(net), Ok(mask), Ok(metric)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[7], 16),
            f[6].parse::<u32>(),
        ) else {
            continue;
        };
        let (net, mask) = (u32::from_be(net.to_le()), u32::from_be(mask.to_le()));
        if dst & mask != net {
            continue;
        }
        let len = mask.count_ones();
        let better = match &best {
            None => true,
            Some((l, m, _)) => len > *l || (len == *l && metric < *m),
        };
        if better {
            best = Some((len, metric, f[0].to_string()));
        }
    }
    best.map(|(_, _, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
bk1\t000B12C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
bk2\t020B12C6\t00000000\t0001\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn most_specific_route_wins() {
        assert_eq!(
            longest_prefix_match(TABLE, "198.18.11.7".parse().unwrap()).as_deref(),
            Some("bk1")
        );
        assert_eq!(
            longest_prefix_match(TABLE, "198.18.11.2".parse().unwrap()).as_deref(),
            Some("bk2")
        );
        assert_eq!(
            longest_prefix_match(TABLE, "198.18.0.9".parse().unwrap()).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            longest_prefix_match(TABLE, "203.0.113.1".parse().unwrap()).as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn no_route_is_none() {
        let no_default: String = TABLE
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l.to_string() + "\n")
            .collect();
        assert_eq!(
            longest_prefix_match(&no_default, "203.0.113.1".parse().unwrap()),
            None
        );
    }
}
