//! Forwarding between the two joined connections: sequence and acknowledgement numbers are shifted by the
//! per-direction deltas fixed when the backend answered, and windows rescaled between the two connections'
//! window scales. Checksums are updated incrementally (`bpf_l4_csum_replace` handles every checksum state). The
//! NAT of addresses and ports is the ordinary L4 rewrite that follows.
use aya_ebpf::programs::TcContext;
use gateway_common::{counter, direction, Flow};

use crate::tcp_options as options;
use crate::{
    counters::count,
    headers::{Packet, TCP_ACK},
};

/// Most SACK blocks in one segment (40 bytes of options).
const MAX_SACK_BLOCKS: u32 = 4;

/// Whether the segment carries TCP options that need translating (SACK blocks from the client, which name
/// the backend's sequence numbers as the client knows them). Those segments take the `tls_flow` program; the
/// rest is translated in the ingress program.
#[inline(always)]
pub fn has_options_to_translate(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> bool {
    if flow.direction != direction::ORIGINAL || flow.ack_delta == 0 {
        return false;
    }
    match ctx.load::<u8>(pkt.l4_off as usize + 12) {
        Ok(doff) => doff >> 4 > 5,
        Err(_) => false,
    }
}

/// Shifts the SACK blocks of a client segment into the backend's sequence numbers.
#[inline(always)]
pub fn translate_sack(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> Result<(), ()> {
    if flow.direction != direction::ORIGINAL || flow.ack_delta == 0 {
        return Ok(());
    }
    let doff = ctx.load::<u8>(pkt.l4_off as usize + 12).map_err(|_| ())?;
    let Some((first, blocks)) = options::sack_blocks(ctx, pkt.l4_off, ((doff >> 4) as u32) * 4)
    else {
        return Ok(());
    };
    let mut i = 0;
    while i < MAX_SACK_BLOCKS * 2 {
        if i >= blocks * 2 {
            break;
        }
        let at = (first + i * 4) as usize;
        let old = ctx.load::<u32>(at).map_err(|_| ())?;
        shift(ctx, pkt.l4_off as usize, at, old, flow.ack_delta)?;
        i += 1;
    }
    count(counter::TLS_SACK_TRANSLATED);
    Ok(())
}

/// Rewrites the segment's sequence number, acknowledgement number and window for the other connection.
#[inline(always)]
pub fn translate(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> Result<(), ()> {
    let l4 = pkt.l4_off as usize;
    // Sequence number, acknowledgement number, and the word holding the window, read at once.
    let [seq, ack, word] = ctx.load::<[u32; 3]>(l4 + 4).map_err(|_| ())?;
    if flow.seq_delta != 0 {
        shift(ctx, l4, l4 + 4, seq, flow.seq_delta)?;
    }
    if flow.ack_delta != 0 && pkt.tcp_flags & TCP_ACK != 0 {
        shift(ctx, l4, l4 + 8, ack, flow.ack_delta)?;
    }
    if flow.win_shift >> 4 != flow.win_shift & 0x0f {
        // The window is the last two bytes of the word (network order in memory).
        let old = (word >> 16) as u16;
        let new = rescale(u16::from_be(old), flow.win_shift).to_be();
        if new != old {
            ctx.l4_csum_replace(l4 + 16, old as u64, new as u64, 2)
                .map_err(|_| ())?;
            ctx.store(l4 + 14, &new, 0).map_err(|_| ())?;
        }
    }
    Ok(())
}

/// Adds `delta` to the 32-bit number `old` (network order) at `at` in the TCP header at `l4`, updating the
/// checksum.
#[inline(always)]
fn shift(ctx: &TcContext, l4: usize, at: usize, old: u32, delta: u32) -> Result<(), ()> {
    let new = u32::from_be(old).wrapping_add(delta).to_be();
    ctx.l4_csum_replace(l4 + 16, old as u64, new as u64, 4)
        .map_err(|_| ())?;
    ctx.store(at, &new, 0).map_err(|_| ())
}

/// A window field in the sender's scale, in the receiver's: `(window << in) >> out`, saturating.
#[inline(always)]
pub fn rescale(window: u16, shift: u8) -> u16 {
    let bytes = (window as u64) << (shift >> 4);
    (bytes >> (shift & 0x0f)).min(0xffff) as u16
}
