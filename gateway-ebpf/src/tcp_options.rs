//! TCP options: those of a handshake segment (MSS, window scale, SACK-permitted, timestamp) and where a
//! segment's SACK blocks are, read from the skb into a per-CPU
//! scratch value and walked with `bpf_loop`: data-dependent offsets into the stack are rejected by the verifier,
//! and an open-coded walk costs it hundreds of thousands of instructions (see ../shared/KERNEL-SPLICE-NOTES.md).
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use core::ffi::c_void;

/// No window scale option was present.
pub const NO_WSCALE: u8 = 0xff;
/// RFC 9293: the MSS a sender assumes when the SYN carries none.
pub const DEFAULT_MSS: u16 = 536;
/// RFC 7323: larger shifts are treated as 14.
const MAX_WSCALE: u8 = 14;

const KIND_END: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_MSS: u8 = 2;
const KIND_WSCALE: u8 = 3;
const KIND_SACK_PERMITTED: u8 = 4;
const KIND_SACK: u8 = 5;
const KIND_TIMESTAMP: u8 = 8;

/// The options a SYN or SYN-ACK announced.
#[derive(Clone, Copy)]
pub struct SynOptions {
    pub mss: u16,
    /// [`NO_WSCALE`] when absent.
    pub wscale: u8,
    pub sack_permitted: bool,
}

/// The walk's buffer and state (per CPU; a TC program runs to completion on its CPU).
#[repr(C)]
pub struct Walk {
    buf: [u8; 64],
    len: u32,
    pos: u32,
    mss: u32,
    wscale: u32,
    sack_permitted: u32,
    /// Offset of the SACK option inside the options, and its length (0: none).
    sack_at: u32,
    sack_len: u32,
    has_tsval: u32,
    tsval: u32,
}

#[map]
static TCP_OPTIONS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Reads the options of the TCP header at `l4_off` whose data offset is `doff_bytes` (20..=60).
#[inline(always)]
pub fn read(ctx: &TcContext, l4_off: u32, doff_bytes: u32) -> Option<SynOptions> {
    let walk = walk(ctx, l4_off, doff_bytes)?;
    Some(SynOptions {
        mss: walk.mss as u16,
        wscale: walk.wscale as u8,
        sack_permitted: walk.sack_permitted != 0,
    })
}

/// The `TSval` of the segment's timestamp option, if it has one.
#[inline(always)]
pub fn tsval(ctx: &TcContext, l4_off: u32, doff_bytes: u32) -> Option<u32> {
    let walk = walk(ctx, l4_off, doff_bytes)?;
    (walk.has_tsval != 0).then_some(walk.tsval)
}

/// Where the SACK blocks of a segment are: the frame offset of the first block and the number of blocks.
#[inline(always)]
pub fn sack_blocks(ctx: &TcContext, l4_off: u32, doff_bytes: u32) -> Option<(u32, u32)> {
    let walk = walk(ctx, l4_off, doff_bytes)?;
    if walk.sack_len < 10 {
        return None;
    }
    Some((l4_off + 20 + walk.sack_at + 2, (walk.sack_len - 2) / 8))
}

#[inline(always)]
fn walk(ctx: &TcContext, l4_off: u32, doff_bytes: u32) -> Option<&'static Walk> {
    let w = TCP_OPTIONS.get_ptr_mut(0)?;
    // SAFETY: `w` is this CPU's scratch value, used by this program run only.
    let walk = unsafe { &mut *w };
    walk.pos = 0;
    walk.mss = DEFAULT_MSS as u32;
    walk.wscale = NO_WSCALE as u32;
    walk.sack_permitted = 0;
    walk.sack_at = 0;
    walk.sack_len = 0;
    walk.has_tsval = 0;
    walk.len = 0;
    let len = doff_bytes.saturating_sub(20);
    if len > 0 {
        // 1 + ((len - 1) & 63) keeps the length provably in 1..=64 (the buffer's size) for the verifier; the
        // data offset field caps it at 40 anyway.
        // SAFETY: reading a local.
        let n = 1 + (unsafe { core::ptr::read_volatile(&len) }.wrapping_sub(1) & 63);
        // SAFETY: the destination is the scratch buffer (64 bytes, n <= 64).
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                l4_off + 20,
                walk.buf.as_mut_ptr() as *mut c_void,
                n,
            )
        };
        if rc != 0 {
            return None;
        }
        walk.len = n;
        // SAFETY: a bounded bpf_loop over a static callback; the callback finds its state in the per-CPU map.
        unsafe { bpf_loop(40, step as *mut c_void, core::ptr::null_mut(), 0) };
    }
    Some(walk)
}

/// One option per call: returns 1 to stop (end of list, malformed framing), 0 to go on.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = TCP_OPTIONS.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value.
    let w = unsafe { &mut *w };
    let pos = w.pos;
    if pos >= w.len || pos >= 40 {
        return 1;
    }
    let kind = w.buf[(pos & 63) as usize];
    if kind == KIND_END {
        return 1;
    }
    if kind == KIND_NOP {
        w.pos = pos + 1;
        return 0;
    }
    if pos + 1 >= w.len {
        return 1;
    }
    let olen = w.buf[((pos + 1) & 63) as usize] as u32;
    if olen < 2 || pos + olen > w.len {
        return 1;
    }
    let at = |i: u32| w.buf[((pos + i) & 63) as usize];
    match (kind, olen) {
        (KIND_MSS, 4) => {
            let mss = ((at(2) as u32) << 8) | at(3) as u32;
            if mss != 0 {
                w.mss = mss;
            }
        }
        (KIND_WSCALE, 3) => w.wscale = at(2).min(MAX_WSCALE) as u32,
        (KIND_SACK_PERMITTED, 2) => w.sack_permitted = 1,
        (KIND_TIMESTAMP, 10) => {
            w.tsval = u32::from_be_bytes([at(2), at(3), at(4), at(5)]);
            w.has_tsval = 1;
        }
        (KIND_SACK, _) => {
            w.sack_at = pos;
            w.sack_len = olen;
        }
        _ => {}
    }
    w.pos = pos + olen;
    0
}
