//! TCP reset: a connection the gateway cannot serve (no route, no valid backend, no flow) is answered with a RST
//! built in place and sent back out of the interface it came in on — never silently dropped.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};

use crate::checksum::{fold, sum_words};
use crate::headers::{Packet, ETH_HLEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Ethernet + IPv4 (no options) + TCP (no options).
const FRAME_LEN: usize = 54;

/// Turns the segment into a RST for its sender and redirects it back. Segments with IP options are dropped
/// (the caller counts them); a RST is never answered.
#[inline(always)]
pub fn send(ctx: &TcContext, pkt: &Packet) -> i32 {
    if pkt.ihl != 20 || pkt.tcp_flags & TCP_RST != 0 {
        return TC_ACT_SHOT;
    }
    let l4 = pkt.l4_off as usize;
    let (Ok(macs), Ok(seq), Ok(ack), Ok(doff)) = (
        ctx.load::<[u8; 12]>(0),
        ctx.load::<u32>(l4 + 4),
        ctx.load::<u32>(l4 + 8),
        ctx.load::<u8>(l4 + 12),
    ) else {
        return TC_ACT_SHOT;
    };
    let tcp_len = ((doff >> 4) as u32) * 4;
    let payload = pkt.ip_len.saturating_sub(pkt.ihl + tcp_len);
    // RFC 9293 §3.10.7.1: if the segment has ACK, the RST takes its sequence number from that ACK; otherwise
    // seq 0 and RST|ACK acknowledging everything the segment occupied.
    let (rst_seq, rst_ack, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (u32::from_be(ack), 0, TCP_RST)
    } else {
        let mut len = payload;
        if pkt.tcp_flags & TCP_SYN != 0 {
            len += 1;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, u32::from_be(seq).wrapping_add(len), TCP_RST | TCP_ACK)
    };

    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&macs[6..12]);
    f[6..12].copy_from_slice(&macs[0..6]);
    f[12] = 0x08; // IPv4
    let ip = ETH_HLEN as usize;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
    f[ip + 6] = 0x40; // DF
    f[ip + 8] = 64; // TTL
    f[ip + 9] = 6; // TCP
    f[ip + 12..ip + 16].copy_from_slice(&pkt.key.dst.to_ne_bytes());
    f[ip + 16..ip + 20].copy_from_slice(&pkt.key.src.to_ne_bytes());
    let t = ip + 20;
    f[t..t + 2].copy_from_slice(&pkt.key.dport.to_ne_bytes());
    f[t + 2..t + 4].copy_from_slice(&pkt.key.sport.to_ne_bytes());
    f[t + 4..t + 8].copy_from_slice(&rst_seq.to_be_bytes());
    f[t + 8..t + 12].copy_from_slice(&rst_ack.to_be_bytes());
    f[t + 12] = 5 << 4;
    f[t + 13] = flags;

    let ip_sum = fold(sum_words(&f, ip, 20, 0));
    f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
    // Pseudo-header: addresses, protocol, TCP length.
    let pseudo = sum_words(&f, ip + 12, 8, 6 + 20);
    let tcp_sum = fold(sum_words(&f, t, 20, pseudo));
    f[t + 16..t + 18].copy_from_slice(&tcp_sum.to_be_bytes());

    // SAFETY: helper calls on the program's own skb; the length is a constant the verifier checks.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb.cast(), FRAME_LEN as u32, 0) != 0 {
            return TC_ACT_SHOT;
        }
    }
    if ctx.store(0, &f, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: reading the ingress ifindex of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
