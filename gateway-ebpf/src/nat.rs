//! Address and port rewriting with incremental checksum updates. `bpf_l3_csum_replace`/`bpf_l4_csum_replace`
//! handle every checksum state (CHECKSUM_PARTIAL from veth, COMPLETE from NICs), which writing a full checksum
//! would not.
use aya_ebpf::programs::TcContext;
use gateway_common::{Flow, PROTO_UDP};

use crate::headers::{Packet, IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF};

/// `bpf_l4_csum_replace` flags.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Rewrites the packet's addresses and ports to the ones the flow entry names.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> Result<(), i64> {
    let key = &pkt.key;
    let (csum_off, l4_flags) = if key.proto == PROTO_UDP {
        // A UDP checksum of 0 means "none": MARK_MANGLED_0 keeps it 0 and never produces a 0 by accident.
        (pkt.l4_off + 6, BPF_F_MARK_MANGLED_0)
    } else {
        (pkt.l4_off + 16, 0)
    };
    let csum_off = csum_off as usize;
    if flow.new_src != key.src {
        ctx.l4_csum_replace(
            csum_off,
            key.src as u64,
            flow.new_src as u64,
            l4_flags | BPF_F_PSEUDO_HDR | 4,
        )?;
        ctx.l3_csum_replace(
            IP_CHECK_OFF as usize,
            key.src as u64,
            flow.new_src as u64,
            4,
        )?;
        ctx.store(IP_SRC_OFF as usize, &flow.new_src, 0)?;
    }
    if flow.new_dst != key.dst {
        ctx.l4_csum_replace(
            csum_off,
            key.dst as u64,
            flow.new_dst as u64,
            l4_flags | BPF_F_PSEUDO_HDR | 4,
        )?;
        ctx.l3_csum_replace(
            IP_CHECK_OFF as usize,
            key.dst as u64,
            flow.new_dst as u64,
            4,
        )?;
        ctx.store(IP_DST_OFF as usize, &flow.new_dst, 0)?;
    }
    if flow.new_sport != key.sport {
        ctx.l4_csum_replace(
            csum_off,
            key.sport as u64,
            flow.new_sport as u64,
            l4_flags | 2,
        )?;
        ctx.store(pkt.l4_off as usize, &flow.new_sport, 0)?;
    }
    if flow.new_dport != key.dport {
        ctx.l4_csum_replace(
            csum_off,
            key.dport as u64,
            flow.new_dport as u64,
            l4_flags | 2,
        )?;
        ctx.store(pkt.l4_off as usize + 2, &flow.new_dport, 0)?;
    }
    Ok(())
}
