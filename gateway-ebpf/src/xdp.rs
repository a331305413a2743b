//! The XDP fast path, in front of the TC program on interfaces in XDP mode: a packet of an established plain L4
//! flow whose entry knows its Ethernet addresses is rewritten and redirected here, before the kernel builds an
//! skb for it (native mode). Everything else returns `XDP_PASS` untouched and the TC program on the same
//! interface handles it exactly as in TC mode: new flows and TCP SYN/FIN/RST (admission and state changes stay
//! in one place), TLS splices, ICMP, fragments, IPv4 options, malformed headers (counted there), packets too big
//! for the egress interface, and egress interfaces not in XDP mode.
//!
//! The next hop's Ethernet addresses come from the conntrack entry, learned from the other direction's packets
//! ([`flow::record`]): `bpf_fib_lookup` would need IP forwarding enabled, which the gateway does not require.
use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::{bpf_check_mtu, bpf_csum_diff},
    programs::XdpContext,
    EbpfContext,
};
use gateway_common::{
    checksum::{self, is_partial_seed, pseudo_header_sum},
    counter, direction, l2,
    tls::splice,
    Flow, FlowKey, CONFIG_KEY, PROTO_TCP, PROTO_UDP,
};

use crate::{
    counters::count,
    flow::{self, FrameMacs, Tracked},
    headers::{Ipv4Hdr, Packet, ETH_HLEN, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{CONFIG, FLOWS, XDP_EGRESS},
    served,
};

const ETH_P_IP: u16 = 0x0800;
/// Offset of the L4 header: the fast path takes IPv4 headers without options only.
const L4_OFF: usize = ETH_HLEN as usize + 20;
/// Chunks of [`CHUNK`] bytes the checksum completion sums at most: segments of a 1500-byte MTU fit.
const MAX_CHUNKS: usize = 24;
const CHUNK: usize = 64;

/// How the program is attached; it decides what a `CHECKSUM_PARTIAL` packet can become.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// In the driver: a redirected frame becomes an skb without checksum state at the other end, so a checksum
    /// the sender left for the device must be completed here.
    Native,
    /// On the skb (generic XDP): the skb keeps its checksum state, so a partial checksum must stay a partial
    /// one; such packets go on to the TC program, whose checksum helpers handle every state.
    Generic,
}

#[inline(always)]
pub fn run(ctx: &XdpContext, attach: Attach) -> u32 {
    try_forward(ctx, attach).unwrap_or(XDP_PASS)
}

/// Forwards the packet and returns the XDP action, or `None` to pass it on to the TC program unmodified.
#[inline(always)]
fn try_forward(ctx: &XdpContext, attach: Attach) -> Option<u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    let pkt = parse(start, end)?;
    if pkt.key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return None;
    }
    if !served::is_served(&pkt.key, CONFIG.get(CONFIG_KEY)?) {
        return None;
    }
    let entry = FLOWS.get_ptr_mut(pkt.key)?;
    // SAFETY: pointer from a successful lookup, valid for this program run; see `flow::track` for the races.
    let flow = unsafe { &mut *entry };
    if flow.splice != splice::NONE || flow.l2 & l2::KNOWN == 0 {
        return None;
    }
    // Only to interfaces in XDP mode (a veth's peer must be able to take redirected frames: docs/l4.md).
    XDP_EGRESS.get(flow.out_ifindex)?;
    let mut mtu: u32 = 0;
    // SAFETY: helper call on the program's own context with a pointer to a local.
    if unsafe { bpf_check_mtu(ctx.as_ptr(), flow.out_ifindex, &mut mtu, 0, 0) } != 0 {
        // Too big (the TC program answers "fragmentation needed") or no such interface.
        return None;
    }
    let l4 = start + L4_OFF;
    let check_off = if pkt.key.proto == PROTO_UDP { 6 } else { 16 };
    if l4 + check_off + 2 > end {
        return None;
    }
    // SAFETY: bounds checked just above.
    let check = unsafe { read_unaligned((l4 + check_off) as *const u16) };
    let l4_len = pkt.ip_len - 20;
    let pseudo = pseudo_header_sum(pkt.key.src, pkt.key.dst, pkt.key.proto, l4_len as u16);
    let udp_without_checksum = pkt.key.proto == PROTO_UDP && check == 0;
    let check = if !udp_without_checksum && is_partial_seed(check, pseudo) {
        if attach == Attach::Generic {
            return None;
        }
        let completed = complete_checksum(l4, l4_len as usize, end)?;
        count(counter::XDP_CHECKSUM_COMPLETED);
        completed
    } else {
        check
    };
    // Nothing below passes the packet on: it is recorded, rewritten and redirected.
    let len = (end - start) as u32;
    // SAFETY: `parse` checked the frame holds its Ethernet and IPv4 headers.
    let macs = unsafe { read_unaligned(start as *const FrameMacs) };
    if !matches!(
        flow::record(flow, &pkt, len, || Some(macs)),
        Tracked::Flow(_)
    ) {
        // Only a SYN can reopen a flow, and SYNs never come here.
        return None;
    }
    rewrite(start, &pkt, flow, check, udp_without_checksum);
    count(if flow.direction == direction::ORIGINAL {
        counter::FORWARDED
    } else {
        counter::REPLIED
    });
    count(counter::XDP_FORWARDED);
    Some(match XDP_EGRESS.redirect(flow.out_ifindex, 0) {
        Ok(action) => action,
        Err(_) => {
            // The interface left XDP mode since the lookup above; the packet is already rewritten.
            count(counter::REDIRECT_FAILED);
            XDP_DROP
        }
    })
}

/// Parses an IPv4 TCP/UDP frame without IP options or fragmentation. Anything else, truncated or inconsistent
/// headers included, is `None`: the TC program parses it again and decides (and counts) what it is.
#[inline(always)]
fn parse(start: usize, end: usize) -> Option<Packet> {
    if start + L4_OFF + 8 > end {
        return None;
    }
    // SAFETY: the Ethernet and IPv4 headers and 8 bytes of L4 header are inside the frame (checked above).
    let (eth_proto, ip, ports) = unsafe {
        (
            read_unaligned((start + 12) as *const u16),
            read_unaligned((start + ETH_HLEN as usize) as *const Ipv4Hdr),
            read_unaligned((start + L4_OFF) as *const [u16; 2]),
        )
    };
    let frag = u16::from_be(ip.frag_off);
    if eth_proto != ETH_P_IP.to_be() || ip.version_ihl != 0x45 || frag & 0x3fff != 0 {
        return None;
    }
    // The fixed-size headers are checked against the frame first, with constant offsets the verifier follows;
    // checked after the total length, LLVM would drop them as implied by it (the verifier cannot see why).
    let (tcp_doff, tcp_flags) = match ip.proto {
        PROTO_TCP => {
            if start + L4_OFF + 20 > end {
                return None;
            }
            // SAFETY: the 20-byte TCP header is inside the frame (checked above).
            let doff_flags = unsafe { read_unaligned((start + L4_OFF + 12) as *const [u8; 2]) };
            (((doff_flags[0] >> 4) as u32) * 4, doff_flags[1])
        }
        PROTO_UDP => (0, 0),
        _ => return None,
    };
    let ip_len = u16::from_be(ip.tot_len) as usize;
    let l4_min = if ip.proto == PROTO_TCP { 20 } else { 8 };
    if start + ETH_HLEN as usize + ip_len > end
        || ip_len < 20 + l4_min
        || (ip.proto == PROTO_TCP && (tcp_doff < 20 || tcp_doff as usize > ip_len - 20))
    {
        return None;
    }
    Some(Packet {
        key: FlowKey {
            src: ip.saddr,
            dst: ip.daddr,
            sport: ports[0],
            dport: ports[1],
            proto: ip.proto,
            _pad: [0; 3],
        },
        l4_off: L4_OFF as u32,
        ihl: 20,
        ip_len: ip_len as u32,
        tcp_doff,
        tcp_flags,
        first_fragment: false,
        dont_fragment: frag & 0x4000 != 0,
    })
}

/// The L4 checksum a device would have written for a segment whose sender left it `CHECKSUM_PARTIAL`: the
/// one's-complement sum of the segment as it is (the seed in its checksum field stands in for the
/// pseudo-header). `None` when the segment is longer than [`MAX_CHUNKS`] chunks (the TC program takes it).
#[inline(always)]
fn complete_checksum(l4: usize, len: usize, end: usize) -> Option<u16> {
    let mut sum: u32 = 0;
    let mut off = 0;
    for _ in 0..MAX_CHUNKS {
        if off + CHUNK > len {
            break;
        }
        let at = l4 + off;
        if at + CHUNK > end {
            return None;
        }
        // SAFETY: `at..at + CHUNK` is inside the frame (checked above); the helper only reads it.
        let s =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at as *mut u32, CHUNK as u32, sum) };
        if s < 0 {
            return None;
        }
        sum = s as u32;
        off += CHUNK;
    }
    if off + CHUNK <= len {
        return None;
    }
    // The rest (< 64 bytes): 16-bit words, then an odd last byte (padded with zero, as the checksum defines).
    let mut acc: u32 = 0;
    for _ in 0..CHUNK / 2 {
        if off + 2 > len {
            break;
        }
        let at = l4 + off;
        if at + 2 > end {
            return None;
        }
        // SAFETY: inside the frame (checked above).
        acc += unsafe { read_unaligned(at as *const u16) } as u32;
        off += 2;
    }
    if off < len {
        let at = l4 + off;
        if at + 1 > end {
            return None;
        }
        // SAFETY: inside the frame (checked above).
        acc += unsafe { *(at as *const u8) } as u32;
    }
    let folded = checksum::fold(sum) as u32 + checksum::fold(acc) as u32;
    Some(!checksum::fold(folded))
}

/// Writes the entry's Ethernet addresses and NAT into the frame, with the IPv4 and L4 checksums updated
/// incrementally from `check` (the L4 checksum as found, or as completed).
#[inline(always)]
fn rewrite(start: usize, pkt: &Packet, flow: &Flow, check: u16, udp_without_checksum: bool) {
    let key = &pkt.key;
    let ip = start + ETH_HLEN as usize;
    let l4 = start + L4_OFF;
    let check_off = if key.proto == PROTO_UDP { 6 } else { 16 };
    // SAFETY: `parse` checked that the frame holds the Ethernet, IPv4 (20 bytes) and L4 headers written here
    // (TCP: 20 bytes; UDP: 8), and `try_forward` the L4 checksum field.
    unsafe {
        write_unaligned(start as *mut [u8; 6], flow.mac_dst);
        write_unaligned((start + 6) as *mut [u8; 6], flow.mac_src);
        let ip_check = read_unaligned((ip + 10) as *const u16);
        let ip_check = checksum::replace32(ip_check, key.src, flow.new_src);
        write_unaligned(
            (ip + 10) as *mut u16,
            checksum::replace32(ip_check, key.dst, flow.new_dst),
        );
        write_unaligned((ip + 12) as *mut u32, flow.new_src);
        write_unaligned((ip + 16) as *mut u32, flow.new_dst);
        write_unaligned(l4 as *mut u16, flow.new_sport);
        write_unaligned((l4 + 2) as *mut u16, flow.new_dport);
        if !udp_without_checksum {
            let mut c = checksum::replace32(check, key.src, flow.new_src);
            c = checksum::replace32(c, key.dst, flow.new_dst);
            c = checksum::replace16(c, key.sport, flow.new_sport);
            c = checksum::replace16(c, key.dport, flow.new_dport);
            if key.proto == PROTO_UDP {
                c = checksum::udp_nonzero(c);
            }
            write_unaligned((l4 + check_off) as *mut u16, c);
        }
    }
}
