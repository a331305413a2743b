//! Segments the gateway writes itself during a TLS handshake it answers: SYN-ACK and ACKs to the client, the SYN
//! to the backend, and the replayed ClientHello segments. The program's own skb is resized with
//! `bpf_skb_change_tail` and overwritten; checksums are computed in full (the frame is new).
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::generated::{
        bpf_clone_redirect, bpf_csum_diff, bpf_probe_read_kernel, bpf_skb_change_tail,
        bpf_skb_store_bytes,
    },
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use core::ffi::c_void;
use crate::checksum::{fold, sum_words};
use crate::headers::ETH_HLEN;
use crate::tcp_options::{SynOptions, NO_WSCALE};

/// Ethernet + IPv4 without options + TCP without options.
pub const HEADER_LEN: u32 = 54;
/// Bytes of options announced in a SYN or SYN-ACK (MSS, window scale, SACK-permitted, NOP padded).
const SYN_OPTIONS_LEN: usize = 12;
/// Largest payload of one written segment (a power of two, so lengths can be masked for the verifier).
pub const MAX_PAYLOAD: u32 = 4096;
/// A power of two above every capture's length (`MAX_BUFFERED`): offsets into captures are masked to it.
const CAPTURE_LIMIT: usize = gateway_common::clienthello::CAPTURE_BUF;
const IP: usize = ETH_HLEN as usize;
const TCP: usize = IP + 20;

/// The TCP flags the gateway writes.
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A segment to write. Addresses and ports in network byte order (as in packets), numbers in host order.
pub struct Segment {
    /// Destination then source MAC (zeros when `bpf_redirect_neigh` will fill them in).
    pub macs: [u8; 12],
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Options to announce, for SYN and SYN-ACK segments only.
    pub syn_options: Option<SynOptions>,
}

/// Where frames are built: a per-CPU map value, not the stack. On the stack the verifier tracks every constant
/// byte, so each combination of options and flags would be a distinct state explored to the end of the program;
/// in a map value the bytes are unknown scalars and the states converge.
#[repr(C)]
pub struct Frame {
    bytes: [u8; FRAME_BUF],
    /// The payload of a replayed segment, copied here from the capture (short or long: see `capture`) so that
    /// checksum and store read one buffer of known size.
    payload: [u8; MAX_PAYLOAD as usize],
}

const FRAME_BUF: usize = HEADER_LEN as usize + SYN_OPTIONS_LEN;

#[map]
static FRAME: PerCpuArray<Frame> = PerCpuArray::with_max_entries(1, 0);

/// Fills this CPU's frame with the headers of `seg` carrying `payload` bytes, the IP checksum set and the TCP
/// checksum left to the caller. Returns the frame and the TCP checksum's sum so far (pseudo-header, header).
#[inline(always)]
fn header(seg: &Segment, payload: u32) -> Option<(*mut Frame, u32)> {
    let frame = FRAME.get_ptr_mut(0)?;
    // SAFETY: this CPU's frame, used by this program run only.
    let f = unsafe { &mut (*frame).bytes };
    *f = [0u8; FRAME_BUF];
    let opt_len = if seg.syn_options.is_some() {
        SYN_OPTIONS_LEN
    } else {
        0
    };
    f[0..12].copy_from_slice(&seg.macs);
    f[12] = 0x08; // IPv4
    f[IP] = 0x45;
    let ip_len = (20 + 20 + opt_len as u32 + payload) as u16;
    f[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
    f[IP + 6] = 0x40; // DF
    f[IP + 8] = 64; // TTL
    f[IP + 9] = 6; // TCP
    f[IP + 12..IP + 16].copy_from_slice(&seg.saddr.to_ne_bytes());
    f[IP + 16..IP + 20].copy_from_slice(&seg.daddr.to_ne_bytes());
    f[TCP..TCP + 2].copy_from_slice(&seg.sport.to_ne_bytes());
    f[TCP + 2..TCP + 4].copy_from_slice(&seg.dport.to_ne_bytes());
    f[TCP + 4..TCP + 8].copy_from_slice(&seg.seq.to_be_bytes());
    f[TCP + 8..TCP + 12].copy_from_slice(&seg.ack.to_be_bytes());
    f[TCP + 12] = (((20 + opt_len) / 4) as u8) << 4;
    f[TCP + 13] = seg.flags;
    f[TCP + 14..TCP + 16].copy_from_slice(&seg.window.to_be_bytes());
    if let Some(o) = seg.syn_options {
        let t = TCP + 20;
        f[t] = 2; // MSS
        f[t + 1] = 4;
        f[t + 2..t + 4].copy_from_slice(&o.mss.to_be_bytes());
        // NOP, window scale (or four NOPs).
        f[t + 4] = 1;
        if o.wscale != NO_WSCALE {
            f[t + 5] = 3;
            f[t + 6] = 3;
            f[t + 7] = o.wscale;
        } else {
            f[t + 5] = 1;
            f[t + 6] = 1;
            f[t + 7] = 1;
        }
        // NOP, NOP, SACK-permitted (or NOPs).
        f[t + 8] = 1;
        f[t + 9] = 1;
        if o.sack_permitted {
            f[t + 10] = 4;
            f[t + 11] = 2;
        } else {
            f[t + 10] = 1;
            f[t + 11] = 1;
        }
    }
    let ip_sum = fold(sum_words(f, IP, 20, 0));
    f[IP + 10..IP + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_len = 20 + opt_len as u32 + payload;
    let pseudo = sum_words(f, IP + 12, 8, 6 + tcp_len);
    let sum = sum_words(f, TCP, 20 + opt_len, pseudo);
    Some((frame, sum))
}

/// Copies the first `len` bytes of the frame into the skb.
#[inline(always)]
fn store_frame(ctx: &TcContext, frame: *mut Frame, len: u32) -> Result<(), ()> {
    // SAFETY: the source is this CPU's frame (len <= FRAME_BUF by the callers' constants).
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            0,
            (*frame).bytes.as_ptr() as *const c_void,
            len,
            0,
        )
    };
    if rc != 0 {
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn set_checksum(frame: *mut Frame, csum: u16) {
    // SAFETY: this CPU's frame.
    let bytes = unsafe { &mut (*frame).bytes };
    bytes[TCP + 16..TCP + 18].copy_from_slice(&csum.to_be_bytes());
}

/// Whether the skb still belongs to a socket of this host (a client or backend in a local namespace or pod: the
/// socket is dropped only when the packet reaches the receiver's IP layer).
///
/// Such an skb must not be grown into a larger segment. When the kernel reallocates an skb's data for
/// `bpf_skb_change_tail`, it adds the new memory to `skb->truesize` only if no socket owns the skb
/// (`pskb_expand_head`), so a pure ACK turned into a 1,460-byte replayed segment keeps the truesize of an ACK. The
/// receiving TCP divides the length by the truesize to learn its memory overhead (`tcp_measure_rcv_mss`, an 8-bit
/// `scaling_ratio`): a length of one truesize wraps the ratio to zero, and the next receive-buffer update divides
/// by it (a kernel oops in `tcp_rcvbuf_grow`, seen here, which leaves the receiving socket locked for good); other
/// lengths leave it a wrong window. A SYN-ACK is safe to grow: it belongs to a request socket, whose destructor
/// `pskb_expand_head` accounts for.
#[inline(always)]
pub fn owned_by_a_socket(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the program's own context; volatile keeps it one 8-byte load, the only size the
    // verifier accepts for `__sk_buff.sk`.
    let sk = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).__bindgen_anon_2.sk) };
    !sk.is_null()
}

/// Sends a copy of the skb into the ingress of the interface it came in on and drops the original. A clone has
/// no owning socket, so the copy comes back to the program as a segment it may grow (see [`owned_by_a_socket`]).
#[inline(always)]
pub fn again_without_owner(ctx: &TcContext) -> i32 {
    const BPF_F_INGRESS: u64 = 1;
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: helper call on the program's own skb; the clone goes to the backlog, the original is dropped.
    unsafe { bpf_clone_redirect(ctx.skb.skb.cast(), ifindex, BPF_F_INGRESS) };
    TC_ACT_SHOT
}

/// Resizes the skb to `len` bytes (dropping what it carried beyond that).
#[inline(always)]
fn resize(ctx: &TcContext, len: u32) -> Result<(), ()> {
    // SAFETY: helper call on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb.cast(), len, 0) } != 0 {
        return Err(());
    }
    Ok(())
}

/// Turns the skb into `seg` without payload.
#[inline(always)]
pub fn write(ctx: &TcContext, seg: &Segment) -> Result<(), ()> {
    let (frame, sum) = header(seg, 0).ok_or(())?;
    set_checksum(frame, fold(sum));
    let len = if seg.syn_options.is_some() {
        HEADER_LEN + SYN_OPTIONS_LEN as u32
    } else {
        HEADER_LEN
    };
    resize(ctx, len)?;
    store_frame(ctx, frame, len)
}

/// Turns the skb into `seg` carrying `len` bytes from `data + off` (`seg.syn_options` must be `None`). `data` is
/// a capture's first byte (`capture::bytes`) and the caller guarantees `off + len` lies within what it captured.
#[inline(always)]
pub fn write_with_payload(
    ctx: &TcContext,
    seg: &Segment,
    data: *const u8,
    off: u32,
    len: u32,
) -> Result<(), ()> {
    // Bounds the verifier can follow: the length in 1..=MAX_PAYLOAD, the offset masked to the largest capture.
    // Volatile reads keep LLVM from dropping the masks as redundant.
    if len == 0 || len > MAX_PAYLOAD || off as usize >= CAPTURE_LIMIT {
        return Err(());
    }
    // SAFETY: reading locals.
    let len = 1 + (unsafe { core::ptr::read_volatile(&len) }.wrapping_sub(1) & (MAX_PAYLOAD - 1));
    let off = unsafe { core::ptr::read_volatile(&off) } & (CAPTURE_LIMIT as u32 - 1);
    let (frame, sum) = header(seg, len).ok_or(())?;
    // SAFETY: this CPU's frame; the destination is its payload buffer (len <= MAX_PAYLOAD). The source is not
    // checked by the verifier (the helper reads any kernel address, failing cleanly on a fault): the caller
    // keeps it inside the capture.
    let payload = unsafe { (*frame).payload.as_mut_ptr() };
    let rc = unsafe {
        bpf_probe_read_kernel(
            payload as *mut c_void,
            len,
            data.add(off as usize) as *const c_void,
        )
    };
    if rc != 0 {
        return Err(());
    }
    // The payload's sum: whole 32-bit words by the kernel (`bpf_csum_diff` only takes multiples of 4), the last
    // 0-3 bytes here. csum_partial sums host-order words; on this little-endian target its folded result is the
    // byte-swapped big-endian sum, which one's-complement arithmetic allows adding after a swap.
    let words = len & !3;
    // SAFETY: `payload[..words]` lies inside the frame.
    let partial = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, payload as *mut u32, words, 0) };
    if partial < 0 {
        return Err(());
    }
    let partial = partial as u64;
    let mut folded = (partial & 0xffff) + ((partial >> 16) & 0xffff) + (partial >> 32);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    let mut sum = sum + (folded as u16).swap_bytes() as u32;
    // The last 0-3 bytes, unrolled (a loop bound the verifier cannot see would be explored up to the mask).
    let rem = len & 3;
    let byte = |i: u32| -> u32 {
        // SAFETY: the index is masked into the payload buffer.
        unsafe { (*frame).payload[((words + i) & (MAX_PAYLOAD - 1)) as usize] as u32 }
    };
    if rem >= 1 {
        sum += byte(0) << 8;
    }
    if rem >= 2 {
        sum += byte(1);
    }
    if rem == 3 {
        sum += byte(2) << 8;
    }
    set_checksum(frame, fold(sum));
    resize(ctx, HEADER_LEN + len)?;
    store_frame(ctx, frame, HEADER_LEN)?;
    // SAFETY: the source range lies inside this CPU's frame; the helper bounds-checks the skb.
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            HEADER_LEN,
            payload as *const c_void,
            len,
            0,
        )
    };
    if rc != 0 {
        return Err(());
    }
    Ok(())
}
