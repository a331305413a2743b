//! Where a handshake keeps the client's first flight until the backend has acknowledged it: in the handshake
//! entry's own short buffer (every common ClientHello fits), moved to a 32 KiB long capture allocated only when
//! a first flight outgrows it. Small entries keep the per-connection cost of the kernel path low: inserting and
//! freeing a 32 KiB entry for every connection took ~22% of the machine in a profile of the connection rate.
use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use core::ffi::c_void;
use gateway_common::{
    clienthello::{LongCapture, CAPTURE_BUF, MAX_BUFFERED, SHORT_CAPTURE, SHORT_CHUNK},
    counter,
    tls::Handshake,
    FlowKey,
};

use super::{sources, TLS_HANDSHAKES};
use crate::counters::count;

/// First flights longer than [`SHORT_CAPTURE`], keyed like their handshake (the client's 5-tuple). Allocated
/// on demand, bounded like the handshakes by the agent's `--tls-max-pending`, removed with the handshake.
#[map]
pub static TLS_LONG_CAPTURES: HashMap<FlowKey, LongCapture> =
    HashMap::pinned(4096, BPF_F_NO_PREALLOC);

/// A zeroed long capture to insert new ones from (far too large for the stack).
#[map]
static LONG_CAPTURE_TEMPLATE: Array<LongCapture> = Array::with_max_entries(1, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Why bytes could not be captured.
pub enum Refused {
    /// The first flight would pass `MAX_BUFFERED`, or the skb could not be read.
    Malformed,
    /// No long capture could be allocated (the table is full).
    Full,
}

/// Appends `n` bytes of the skb's payload at offset `from` to the handshake's capture, moving it to a long
/// capture first if it would outgrow the short buffer.
#[inline(always)]
pub fn append(
    ctx: &TcContext,
    key: &FlowKey,
    h: &mut Handshake,
    from: u32,
    n: u32,
) -> Result<(), Refused> {
    let end = h.captured + n;
    if end > MAX_BUFFERED as u32 {
        return Err(Refused::Malformed);
    }
    if h.long == 0 && end <= SHORT_CAPTURE as u32 {
        return append_short(ctx, h, from, end);
    }
    let long = match h.long {
        0 => grow(key, h)?,
        _ => TLS_LONG_CAPTURES
            .get_ptr_mut(key)
            .ok_or(Refused::Malformed)?,
    };
    append_long(ctx, h, long, from, end)
}

/// Copies payload into the short buffer up to `end`, in chunks of at most `SHORT_CHUNK`: each starts below
/// `SHORT_CAPTURE`, and the buffer has a chunk's room beyond that.
#[inline(always)]
fn append_short(ctx: &TcContext, h: &mut Handshake, from: u32, end: u32) -> Result<(), Refused> {
    const CHUNK: u32 = SHORT_CHUNK as u32;
    const ROUNDS: u32 = (SHORT_CAPTURE as u32).div_ceil(CHUNK);
    let buf = h.short.as_mut_ptr();
    copy_in::<CHUNK, ROUNDS>(ctx, h, buf, SHORT_CAPTURE as u32 - 1, from, end)
}

/// Copies payload into the long capture up to `end`, in chunks of at most 8 KiB: with the capture at most
/// `MAX_BUFFERED` (~16.2 KiB), that bound is what proves every chunk lies inside the 32 KiB buffer.
#[inline(always)]
fn append_long(
    ctx: &TcContext,
    h: &mut Handshake,
    long: *mut LongCapture,
    from: u32,
    end: u32,
) -> Result<(), Refused> {
    // SAFETY: only the address is taken of the map value.
    let buf = unsafe { (*long).data.as_mut_ptr() };
    copy_in::<8192, 3>(ctx, h, buf, MAX_BUFFERED as u32, from, end)
}

/// Appends skb bytes from offset `from` at `buf + h.captured` until `h.captured == end`, at most `ROUNDS` chunks
/// of at most `CHUNK` bytes (a power of two). The verifier bounds a chunk's start and length separately, so the
/// caller's buffer must hold `last_start + CHUNK` bytes: no chunk starts past `last_start`.
#[inline(always)]
fn copy_in<const CHUNK: u32, const ROUNDS: u32>(
    ctx: &TcContext,
    h: &mut Handshake,
    buf: *mut u8,
    last_start: u32,
    from: u32,
    end: u32,
) -> Result<(), Refused> {
    let mut src = from;
    let mut i = 0;
    while i < ROUNDS {
        let at = h.captured;
        if at >= end {
            break;
        }
        let left = (end - at).min(CHUNK);
        // Volatile reads keep LLVM from dropping the bounds the verifier needs as redundant.
        // SAFETY: reading locals.
        let at = unsafe { core::ptr::read_volatile(&at) } & (CAPTURE_BUF as u32 - 1);
        let len = 1 + (unsafe { core::ptr::read_volatile(&left) }.wrapping_sub(1) & (CHUNK - 1));
        if at > last_start {
            return Err(Refused::Malformed);
        }
        // SAFETY: the destination [at, at + len) lies inside the caller's buffer (at <= last_start,
        // len <= CHUNK); the helper bounds-checks the skb side.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                src,
                buf.add(at as usize) as *mut c_void,
                len,
            )
        };
        if rc != 0 {
            return Err(Refused::Malformed);
        }
        h.captured = at + len;
        src += len;
        i += 1;
    }
    Ok(())
}

/// Allocates the handshake's long capture and moves what the short buffer holds into it.
#[inline(always)]
fn grow(key: &FlowKey, h: &mut Handshake) -> Result<*mut LongCapture, Refused> {
    let template = LONG_CAPTURE_TEMPLATE.get(0).ok_or(Refused::Full)?;
    TLS_LONG_CAPTURES
        .insert(key, template, 0)
        .map_err(|_| Refused::Full)?;
    let long = TLS_LONG_CAPTURES.get_ptr_mut(key).ok_or(Refused::Full)?;
    let moved = h.captured;
    if moved > 0 {
        // SAFETY: reading locals (volatile: see `append_short`).
        let moved = unsafe { core::ptr::read_volatile(&moved) };
        if moved > SHORT_CAPTURE as u32 {
            return Err(Refused::Malformed);
        }
        // SAFETY: both ranges lie inside their map values (moved <= SHORT_CAPTURE < CAPTURE_BUF).
        let rc = unsafe {
            bpf_probe_read_kernel(
                (*long).data.as_mut_ptr() as *mut c_void,
                moved,
                h.short.as_ptr() as *const c_void,
            )
        };
        if rc != 0 {
            return Err(Refused::Malformed);
        }
    }
    h.long = 1;
    count(counter::TLS_LONG_HELLOS);
    Ok(long)
}

/// The first byte of the handshake's captured flight (`h.captured` bytes from there). Only read through
/// `bpf_probe_read_kernel`, with `offset + length <= h.captured` checked by the reader.
#[inline(always)]
pub fn bytes(key: &FlowKey, h: &Handshake) -> Option<*const u8> {
    if h.long == 0 {
        return Some(h.short.as_ptr());
    }
    // SAFETY: only the address is taken of the map value.
    TLS_LONG_CAPTURES
        .get_ptr(key)
        .map(|long| unsafe { (*long).data.as_ptr() })
}

/// Removes the handshake of `key` (whose entry `h` is) and its long capture, if it had one, and counts it out
/// of its client address's pending handshakes.
#[inline(always)]
pub fn forget(key: &FlowKey, h: &Handshake) {
    let long = h.long;
    if TLS_HANDSHAKES.remove(key).is_ok() {
        sources::release(key.src);
    }
    if long != 0 {
        let _ = TLS_LONG_CAPTURES.remove(key);
    }
}
