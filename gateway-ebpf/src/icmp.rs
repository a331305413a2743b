//! ICMP for NATed flows: errors about packets the gateway rewrote are translated back to the peer that sent the
//! original (so PMTUD and "port unreachable" work through the gateway), and a packet too big for its egress
//! interface is answered with "fragmentation needed", as a router would.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use gateway_common::{Flow, PROTO_TCP};

use crate::checksum::{fold, sum_words};
use crate::headers::{IcmpError, Packet, ETH_HLEN, IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF};

/// Rewrites an ICMP error quoting a packet of a NATed flow. `entry` is the conntrack entry of the quoted packet's
/// reverse direction, i.e. the one whose rewrite leads back to the peer the error is for: the quoted packet
/// becomes the packet that peer sent, and the outer header goes from the address that peer talked to, to it.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, err: &IcmpError, entry: &Flow) -> Result<(), i64> {
    let icmp_csum = err.icmp_off as usize + 2;
    let inner = err.inner_off as usize;
    let q = &err.inner;
    // The quoted packet: (peer's address:port -> the address:port the peer talked to).
    let (new_src, new_sport, new_dst, new_dport) = (
        entry.new_dst,
        entry.new_dport,
        entry.new_src,
        entry.new_sport,
    );
    let old_inner_csum: u16 = ctx.load(inner + 10)?;
    if q.src != new_src {
        ctx.l3_csum_replace(inner + 10, q.src as u64, new_src as u64, 4)?;
        ctx.l4_csum_replace(icmp_csum, q.src as u64, new_src as u64, 4)?;
        ctx.store(inner + 12, &new_src, 0)?;
    }
    if q.dst != new_dst {
        ctx.l3_csum_replace(inner + 10, q.dst as u64, new_dst as u64, 4)?;
        ctx.l4_csum_replace(icmp_csum, q.dst as u64, new_dst as u64, 4)?;
        ctx.store(inner + 16, &new_dst, 0)?;
    }
    let new_inner_csum: u16 = ctx.load(inner + 10)?;
    ctx.l4_csum_replace(icmp_csum, old_inner_csum as u64, new_inner_csum as u64, 2)?;
    if q.sport != new_sport {
        ctx.l4_csum_replace(icmp_csum, q.sport as u64, new_sport as u64, 2)?;
        ctx.store(inner + 20, &new_sport, 0)?;
    }
    if q.dport != new_dport {
        ctx.l4_csum_replace(icmp_csum, q.dport as u64, new_dport as u64, 2)?;
        ctx.store(inner + 22, &new_dport, 0)?;
    }
    // A spliced flow: the quoted sequence number is in the numbers the gateway wrote; the peer checks it
    // against its own (Linux ignores errors quoting a sequence number outside its window), so shift it back.
    if q.proto == PROTO_TCP && entry.ack_delta != 0 {
        let old: u32 = ctx.load(inner + 24)?;
        let new = u32::from_be(old).wrapping_add(entry.ack_delta).to_be();
        ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 4)?;
        ctx.store(inner + 24, &new, 0)?;
    }
    // Outer header: from the address the peer talked to, to the peer.
    let (outer_src, outer_dst) = (entry.new_src, entry.new_dst);
    if err.outer_src != outer_src {
        ctx.l3_csum_replace(
            IP_CHECK_OFF as usize,
            err.outer_src as u64,
            outer_src as u64,
            4,
        )?;
        ctx.store(IP_SRC_OFF as usize, &outer_src, 0)?;
    }
    if err.outer_dst != outer_dst {
        ctx.l3_csum_replace(
            IP_CHECK_OFF as usize,
            err.outer_dst as u64,
            outer_dst as u64,
            4,
        )?;
        ctx.store(IP_DST_OFF as usize, &outer_dst, 0)?;
    }
    Ok(())
}

/// Ethernet + IPv4 + ICMP header + quoted IPv4 header + 8 bytes of the quoted payload.
const FRAG_NEEDED_LEN: usize = 14 + 20 + 8 + 28;

/// Replaces the packet with an ICMP "fragmentation needed" (type 3 code 4) carrying `mtu`, from the address the
/// sender talked to, and sends it back out of the ingress interface. Packets with IP options are dropped.
#[inline(always)]
pub fn send_frag_needed(ctx: &TcContext, pkt: &Packet, mtu: u32) -> i32 {
    if pkt.ihl != 20 {
        return TC_ACT_SHOT;
    }
    let Ok(original) = ctx.load::<[u8; 42]>(0) else {
        return TC_ACT_SHOT;
    };
    let mut f = [0u8; FRAG_NEEDED_LEN];
    f[0..6].copy_from_slice(&original[6..12]);
    f[6..12].copy_from_slice(&original[0..6]);
    f[12] = 0x08;
    let ip = ETH_HLEN as usize;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&((FRAG_NEEDED_LEN - ip) as u16).to_be_bytes());
    f[ip + 8] = 64;
    f[ip + 9] = 1; // ICMP
    f[ip + 12..ip + 16].copy_from_slice(&pkt.key.dst.to_ne_bytes());
    f[ip + 16..ip + 20].copy_from_slice(&pkt.key.src.to_ne_bytes());
    let icmp = ip + 20;
    f[icmp] = 3;
    f[icmp + 1] = 4;
    f[icmp + 6..icmp + 8].copy_from_slice(&(mtu as u16).to_be_bytes());
    f[icmp + 8..FRAG_NEEDED_LEN].copy_from_slice(&original[14..42]);
    let ip_sum = fold(sum_words(&f, ip, 20, 0));
    f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = fold(sum_words(&f, icmp, FRAG_NEEDED_LEN - icmp, 0));
    f[icmp + 2..icmp + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    // SAFETY: helper calls on the program's own skb with a constant length.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb.cast(), FRAG_NEEDED_LEN as u32, 0) != 0 {
            return TC_ACT_SHOT;
        }
    }
    if ctx.store(0, &f, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: reading the ingress ifindex of the program's own skb, then a plain redirect.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}
