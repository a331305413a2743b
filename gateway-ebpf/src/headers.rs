//! Packet parsing: Ethernet, IPv4 and the TCP/UDP ports, read with `bpf_skb_load_bytes` so that non-linear skbs
//! (GSO, paged data) parse the same as linear ones. Values stay in network byte order.
use aya_ebpf::programs::TcContext;
use gateway_common::{FlowKey, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;

/// Offsets inside the IPv4 header.
pub const IP_CHECK_OFF: u32 = ETH_HLEN + 10;
pub const IP_SRC_OFF: u32 = ETH_HLEN + 12;
pub const IP_DST_OFF: u32 = ETH_HLEN + 16;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A parsed TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct Packet {
    /// The 5-tuple as it arrived (network byte order).
    pub key: FlowKey,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: u32,
    /// IPv4 header length in bytes (20 without options).
    pub ihl: u32,
    /// IPv4 total length (host order).
    pub ip_len: u32,
    /// TCP header length in bytes, options included (0 for UDP).
    pub tcp_doff: u32,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// First fragment of a fragmented datagram (has ports, but the rest will not follow the same path).
    pub first_fragment: bool,
    /// The DF bit: the sender wants "fragmentation needed" rather than fragments.
    pub dont_fragment: bool,
}

/// An ICMP error (destination unreachable, time exceeded) quoting a TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct IcmpError {
    /// Offset of the ICMP header.
    pub icmp_off: u32,
    /// Offset of the quoted (inner) IPv4 header; it has no options.
    pub inner_off: u32,
    /// The quoted packet's 5-tuple, as the gateway sent it.
    pub inner: FlowKey,
    /// The outer addresses.
    pub outer_src: u32,
    pub outer_dst: u32,
}

/// ICMP types whose errors are translated.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
const PROTO_ICMP: u8 = 1;

/// What the parser found.
pub enum Parsed {
    /// An ICMP error about a TCP or UDP packet; it may belong to a NATed flow.
    Icmp(IcmpError),
    /// Not IPv4 TCP/UDP (ARP, IPv6, ICMP, non-first fragments, ...): the local stack handles it.
    Other,
    /// IPv4 TCP/UDP whose headers are truncated or inconsistent.
    Malformed,
    Packet(Packet),
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(eth_proto) = ctx.load::<u16>(12) else {
        return Parsed::Other;
    };
    if u16::from_be(eth_proto) != ETH_P_IP {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN as usize) else {
        return Parsed::Malformed;
    };
    if ip.proto == PROTO_ICMP {
        return parse_icmp_error(ctx, &ip);
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Other;
    }
    let ihl = ((ip.version_ihl & 0x0f) as u32) * 4;
    let ip_len = u16::from_be(ip.tot_len) as u32;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || ip_len < ihl {
        return Parsed::Malformed;
    }
    let frag = u16::from_be(ip.frag_off);
    if frag & 0x1fff != 0 {
        // Non-first fragment: it carries no ports, so it cannot be matched to a flow here.
        return Parsed::Other;
    }
    let l4_off = ETH_HLEN + ihl;
    let Ok(ports) = ctx.load::<[u16; 2]>(l4_off as usize) else {
        return Parsed::Malformed;
    };
    let mut tcp_flags = 0;
    let mut tcp_doff = 0;
    if ip.proto == PROTO_TCP {
        let Ok(doff_flags) = ctx.load::<[u8; 2]>(l4_off as usize + 12) else {
            return Parsed::Malformed;
        };
        if ((doff_flags[0] >> 4) as u32) * 4 < 20 || ip_len < ihl + 20 {
            return Parsed::Malformed;
        }
        tcp_flags = doff_flags[1];
        tcp_doff = ((doff_flags[0] >> 4) as u32) * 4;
    } else if ip_len < ihl + 8 {
        return Parsed::Malformed;
    }
    Parsed::Packet(Packet {
        key: FlowKey {
            src: ip.saddr,
            dst: ip.daddr,
            sport: ports[0],
            dport: ports[1],
            proto: ip.proto,
            _pad: [0; 3],
        },
        l4_off,
        ihl,
        ip_len,
        tcp_doff,
        tcp_flags,
        first_fragment: frag & 0x2000 != 0,
        dont_fragment: frag & 0x4000 != 0,
    })
}

/// Parses an ICMP destination-unreachable or time-exceeded message quoting a TCP or UDP packet. Anything else
/// (echo, quotes with IP options, truncated quotes) is left to the local stack.
#[inline(always)]
fn parse_icmp_error(ctx: &TcContext, ip: &Ipv4Hdr) -> Parsed {
    let ihl = ((ip.version_ihl & 0x0f) as u32) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Parsed::Other;
    }
    let icmp_off = ETH_HLEN + ihl;
    let Ok(icmp_type) = ctx.load::<u8>(icmp_off as usize) else {
        return Parsed::Other;
    };
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Parsed::Other;
    }
    let inner_off = icmp_off + 8;
    let Ok(inner) = ctx.load::<Ipv4Hdr>(inner_off as usize) else {
        return Parsed::Other;
    };
    if inner.version_ihl != 0x45 || (inner.proto != PROTO_TCP && inner.proto != PROTO_UDP) {
        return Parsed::Other;
    }
    let Ok(ports) = ctx.load::<[u16; 2]>(inner_off as usize + 20) else {
        return Parsed::Other;
    };
    Parsed::Icmp(IcmpError {
        icmp_off,
        inner_off,
        inner: FlowKey {
            src: inner.saddr,
            dst: inner.daddr,
            sport: ports[0],
            dport: ports[1],
            proto: inner.proto,
            _pad: [0; 3],
        },
        outer_src: ip.saddr,
        outer_dst: ip.daddr,
    })
}
