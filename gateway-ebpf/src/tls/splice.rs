//! Forwarding between the two joined connections: sequence and acknowledgement numbers are shifted by the
//! per-direction deltas fixed when the backend answered, and windows rescaled between the two connections'
//! window scales. Checksums are updated incrementally (`bpf_l4_csum_replace` handles every checksum state). The
//! NAT of addresses and ports is the ordinary L4 rewrite that follows.
use aya_ebpf::programs::TcContext;
use gateway_common::Flow;

use crate::headers::{Packet, TCP_ACK};

/// Rewrites the segment's sequence number, acknowledgement number and window for the other connection.
#[inline(always)]
pub fn translate(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> Result<(), ()> {
    let l4 = pkt.l4_off as usize;
    let csum = l4 + 16;
    if flow.seq_delta != 0 {
        let old = ctx.load::<u32>(l4 + 4).map_err(|_| ())?;
        let new = u32::from_be(old).wrapping_add(flow.seq_delta).to_be();
        ctx.l4_csum_replace(csum, old as u64, new as u64, 4)
            .map_err(|_| ())?;
        ctx.store(l4 + 4, &new, 0).map_err(|_| ())?;
    }
    if flow.ack_delta != 0 && pkt.tcp_flags & TCP_ACK != 0 {
        let old = ctx.load::<u32>(l4 + 8).map_err(|_| ())?;
        let new = u32::from_be(old).wrapping_add(flow.ack_delta).to_be();
        ctx.l4_csum_replace(csum, old as u64, new as u64, 4)
            .map_err(|_| ())?;
        ctx.store(l4 + 8, &new, 0).map_err(|_| ())?;
    }
    if flow.win_shift >> 4 != flow.win_shift & 0x0f {
        let old = ctx.load::<u16>(l4 + 14).map_err(|_| ())?;
        let new = rescale(u16::from_be(old), flow.win_shift).to_be();
        if new != old {
            ctx.l4_csum_replace(csum, old as u64, new as u64, 2)
                .map_err(|_| ())?;
            ctx.store(l4 + 14, &new, 0).map_err(|_| ())?;
        }
    }
    Ok(())
}

/// A window field in the sender's scale, in the receiver's: `(window << in) >> out`, saturating.
#[inline(always)]
pub fn rescale(window: u16, shift: u8) -> u16 {
    let bytes = (window as u64) << (shift >> 4);
    (bytes >> (shift & 0x0f)).min(0xffff) as u16
}
