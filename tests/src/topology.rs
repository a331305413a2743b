//! The standard end-to-end topology: client namespace(s) → gateway namespace →
//! backend namespaces, wired with veth pairs created directly inside the
//! namespaces.
//!
//! ```text
//!  client  eth0 198.18.0.2/24 ──── eth0 198.18.0.1/24  gateway  bk{i} 198.18.{10+i}.1/24 ──── eth0 198.18.{10+i}.2/24  backend i
//!  (client j>1: eth0 198.18.{j-1}.2/24 ─── eth{j-1} 198.18.{j-1}.1/24)
//! ```
//!
//! Gateway virtual addresses live in 198.18.100.0/24 ([`vip`]) and are *not*
//! assigned to any interface: clients route everything via the gateway, whose
//! eBPF program answers for them. IP forwarding stays **off** in the gateway
//! namespace (checked at build time): the product must not rely on the kernel
//! forwarding packets between clients and backends.

use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{host_cmd, unique_id, Netns, PREFIX};

/// The network holding the gateway's virtual addresses.
pub const VIP_NET: &str = "198.18.100.0/24";

/// Gateway virtual address `198.18.100.n`.
pub fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 100, n)
}

/// Identifies one veth link of the topology (1-based indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Client j's `eth0` ↔ the gateway's `eth{j-1}`.
    Client(usize),
    /// Backend i's `eth0` ↔ the gateway's `bk{i}`.
    Backend(usize),
}

/// Builder for [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    clients: usize,
    backends: usize,
    tx_checksum_offload_off: bool,
    peer_gro: bool,
    mtus: Vec<(Link, u32)>,
    gateway_lo_addrs: Vec<String>,
    client_routes: Vec<String>,
    backend_routes: Vec<String>,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            clients: 1,
            backends: 1,
            tx_checksum_offload_off: true,
            peer_gro: false,
            mtus: Vec::new(),
            gateway_lo_addrs: Vec::new(),
            client_routes: Vec::new(),
            backend_routes: Vec::new(),
        }
    }
}

impl TopologyBuilder {
    /// Number of backend namespaces (1..=80, default 1).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// Number of client namespaces (1..=10, default 1).
    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }

    /// Whether to run `ethtool -K eth0 tx off` in the clients and backends
    /// (default `true`: veth checksum offload hides checksum bugs in rewritten packets).
    pub fn tx_checksum_offload_off(mut self, off: bool) -> Self {
        self.tx_checksum_offload_off = off;
        self
    }

    /// Whether to run `ethtool -K eth0 gro on` in the clients and backends (default `false`, the veth default).
    /// With GRO on, a veth runs NAPI on receive, which is what lets the gateway's XDP program redirect frames
    /// into the gateway-side end of the pair (without it the kernel drops them: see docs/l4.md, XDP mode).
    pub fn peer_gro(mut self, on: bool) -> Self {
        self.peer_gro = on;
        self
    }

    /// Sets the MTU on both ends of a link.
    pub fn mtu(mut self, link: Link, mtu: u32) -> Self {
        self.mtus.push((link, mtu));
        self
    }

    /// Assigns an address (CIDR, e.g. `198.18.100.1/32`) to the gateway's `lo`,
    /// for designs where the local stack owns the virtual address.
    pub fn gateway_lo_addr(mut self, cidr: &str) -> Self {
        self.gateway_lo_addrs.push(cidr.to_string());
        self
    }

    /// Adds an explicit route `cidr via <gateway>` in every client (the default
    /// route already covers everything; use for more specific designs).
    pub fn client_route(mut self, cidr: &str) -> Self {
        self.client_routes.push(cidr.to_string());
        self
    }

    /// Adds an explicit route `cidr via <gateway>` in every backend.
    pub fn backend_route(mut self, cidr: &str) -> Self {
        self.backend_routes.push(cidr.to_string());
        self
    }

    /// Creates the namespaces and links. On any failure everything created so far
    /// is removed (the partially built namespaces drop).
    pub fn build(self) -> Result<Topology> {
        ensure!(
            (1..=10).contains(&self.clients),
            "clients must be 1..=10, got {}",
            self.clients
        );
        ensure!(
            (1..=80).contains(&self.backends),
            "backends must be 1..=80, got {}",
            self.backends
        );
        let id = unique_id();
        let gateway = Netns::new(&format!("{PREFIX}{id}-gw"))?;
        let mut clients = Vec::new();
        for j in 1..=self.clients {
            let role = if j == 1 {
                "client".to_string()
            } else {
                format!("client{j}")
            };
            clients.push(Netns::new(&format!("{PREFIX}{id}-{role}"))?);
        }
        let mut backends = Vec::new();
        for i in 1..=self.backends {
            backends.push(Netns::new(&format!("{PREFIX}{id}-bk{i}"))?);
        }
        let topo = Topology {
            id,
            clients,
            gateway,
            backends,
        };
        topo.wire(&self)
            .with_context(|| format!("building topology {}", topo.id))?;
        Ok(topo)
    }
}

/// Client namespaces, one gateway namespace and backend namespaces, all removed on drop.
#[derive(Debug)]
pub struct Topology {
    id: String,
    // Field order = drop order: clients and backends first, gateway last.
    clients: Vec<Netns>,
    backends: Vec<Netns>,
    gateway: Netns,
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    host_cmd(&[
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    Ok(())
}

impl Topology {
    /// Starts a builder (1 client, 1 backend, tx checksum offload off).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    fn wire(&self, opts: &TopologyBuilder) -> Result<()> {
        for j in 1..=self.clients.len() {
            let (c, gif) = (&self.clients[j - 1], Self::gateway_client_if(j));
            veth(c, "eth0", &self.gateway, &gif)?;
            let prefix = format!("{}/24", self.gateway_client_addr_n(j));
            self.gateway.ip(&["addr", "add", &prefix, "dev", &gif])?;
            self.gateway.ip(&["link", "set", &gif, "up"])?;
            let caddr = format!("{}/24", self.client_addr_n(j));
            c.ip(&["addr", "add", &caddr, "dev", "eth0"])?;
            c.ip(&["link", "set", "eth0", "up"])?;
            let gw = self.gateway_client_addr_n(j).to_string();
            c.ip(&["route", "add", "default", "via", &gw])?;
            for r in &opts.client_routes {
                c.ip(&["route", "add", r, "via", &gw])?;
            }
        }
        for i in 1..=self.backends.len() {
            let b = &self.backends[i - 1];
            let gif = Self::gateway_backend_if(i);
            veth(b, "eth0", &self.gateway, &gif)?;
            let gaddr = format!("{}/24", self.gateway_backend_addr(i));
            self.gateway.ip(&["addr", "add", &gaddr, "dev", &gif])?;
            self.gateway.ip(&["link", "set", &gif, "up"])?;
            let baddr = format!("{}/24", self.backend_addr(i));
            b.ip(&["addr", "add", &baddr, "dev", "eth0"])?;
            b.ip(&["link", "set", "eth0", "up"])?;
            let gw = self.gateway_backend_addr(i).to_string();
            b.ip(&["route", "add", "default", "via", &gw])?;
            for r in &opts.backend_routes {
                b.ip(&["route", "add", r, "via", &gw])?;
            }
        }
        for cidr in &opts.gateway_lo_addrs {
            self.gateway.ip(&["addr", "add", cidr, "dev", "lo"])?;
        }
        for &(link, mtu) in &opts.mtus {
            let mtu = mtu.to_string();
            let (ns, gif) = match link {
                Link::Client(j) if (1..=self.clients.len()).contains(&j) => {
                    (&self.clients[j - 1], Self::gateway_client_if(j))
                }
                Link::Backend(i) if (1..=self.backends.len()).contains(&i) => {
                    (&self.backends[i - 1], Self::gateway_backend_if(i))
                }
                other => bail!("no such link {other:?}"),
            };
            ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
            self.gateway.ip(&["link", "set", &gif, "mtu", &mtu])?;
        }
        if opts.tx_checksum_offload_off {
            for ns in self.clients.iter().chain(&self.backends) {
                ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])
                    .context("ethtool -K eth0 tx off (is ethtool installed?)")?;
            }
        }
        if opts.peer_gro {
            for ns in self.clients.iter().chain(&self.backends) {
                ns.exec(&["ethtool", "-K", "eth0", "gro", "on"])
                    .context("ethtool -K eth0 gro on")?;
            }
        }
        // The product must not depend on kernel forwarding: a new netns starts with
        // ip_forward=0; make sure nothing changed that.
        let fwd = self.gateway.sysctl("net.ipv4.ip_forward")?;
        ensure!(
            fwd == "0",
            "ip_forward is {fwd} in the gateway namespace, expected 0"
        );
        Ok(())
    }

    /// The unique id embedded in all namespace names (`gwt-<id>-<role>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Client 1.
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// Client `j` (1-based). Panics if out of range.
    pub fn client_n(&self, j: usize) -> &Netns {
        &self.clients[j - 1]
    }

    /// All client namespaces.
    pub fn clients(&self) -> &[Netns] {
        &self.clients
    }

    /// The gateway namespace.
    pub fn gateway(&self) -> &Netns {
        &self.gateway
    }

    /// Backend `i` (1-based). Panics if out of range.
    pub fn backend(&self, i: usize) -> &Netns {
        &self.backends[i - 1]
    }

    /// All backend namespaces (index 0 is backend 1).
    pub fn backends(&self) -> &[Netns] {
        &self.backends
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Names of every namespace of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        self.clients
            .iter()
            .chain(std::iter::once(&self.gateway))
            .chain(&self.backends)
            .map(|n| n.name().to_string())
            .collect()
    }

    /// Client 1's address, 198.18.0.2.
    pub fn client_addr(&self) -> Ipv4Addr {
        self.client_addr_n(1)
    }

    /// Client j's address, 198.18.{j-1}.2.
    pub fn client_addr_n(&self, j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (j - 1) as u8, 2)
    }

    /// The gateway's address towards client 1, 198.18.0.1.
    pub fn gateway_client_addr(&self) -> Ipv4Addr {
        self.gateway_client_addr_n(1)
    }

    /// The gateway's address towards client j, 198.18.{j-1}.1.
    pub fn gateway_client_addr_n(&self, j: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (j - 1) as u8, 1)
    }

    /// The gateway's address towards backend i, 198.18.{10+i}.1.
    pub fn gateway_backend_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (10 + i) as u8, 1)
    }

    /// Backend i's address, 198.18.{10+i}.2.
    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, (10 + i) as u8, 2)
    }

    /// The gateway's interface towards client j: `eth{j-1}`.
    pub fn gateway_client_if(j: usize) -> String {
        format!("eth{}", j - 1)
    }

    /// The gateway's interface towards backend i: `bk{i}`.
    pub fn gateway_backend_if(i: usize) -> String {
        format!("bk{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_is_in_vip_net() {
        assert_eq!(vip(7).to_string(), "198.18.100.7");
        assert!(VIP_NET.starts_with("198.18.100."));
        assert_eq!(Topology::gateway_backend_if(3), "bk3");
        assert_eq!(Topology::gateway_client_if(1), "eth0");
    }
}
