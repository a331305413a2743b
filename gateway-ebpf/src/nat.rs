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
    let l4 = L4Checksum {
        off: csum_off as usize,
        flags: l4_flags,
    };
    rewrite_addr(ctx, &l4, IP_SRC_OFF, key.src, flow.new_src)?;
    rewrite_addr(ctx, &l4, IP_DST_OFF, key.dst, flow.new_dst)?;
    rewrite_port(ctx, &l4, pkt.l4_off, key.sport, flow.new_sport)?;
    rewrite_port(ctx, &l4, pkt.l4_off + 2, key.dport, flow.new_dport)
}

/// Where the L4 checksum is and how `bpf_l4_csum_replace` must treat it.
struct L4Checksum {
    off: usize,
    flags: u64,
}

/// Replaces an IPv4 address at `at`, updating the IP checksum and the L4 checksum's pseudo-header.
#[inline(always)]
fn rewrite_addr(ctx: &TcContext, l4: &L4Checksum, at: u32, old: u32, new: u32) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(
        l4.off,
        old as u64,
        new as u64,
        l4.flags | BPF_F_PSEUDO_HDR | 4,
    )?;
    ctx.l3_csum_replace(IP_CHECK_OFF as usize, old as u64, new as u64, 4)?;
    ctx.store(at as usize, &new, 0)
}

/// Replaces a port at `at`, updating the L4 checksum.
#[inline(always)]
fn rewrite_port(ctx: &TcContext, l4: &L4Checksum, at: u32, old: u16, new: u16) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(l4.off, old as u64, new as u64, l4.flags | 2)?;
    ctx.store(at as usize, &new, 0)
}
