//! ClientHello parsing in the kernel: TLS records captured from a connection's first flight are reassembled
//! into the handshake message and its `server_name` extracted and normalised, with the same outcomes as the
//! userspace parser (`gateway-clienthello/src/lib.rs`), which the tests compare it against.
//!
//! Verifier notes: the capture and the handshake live in a per-CPU scratch map value (too large for the 512-byte
//! stack); every byte read masks its offset to the buffer so it is provably in bounds, while explicit length
//! checks keep the parse correct. Records, extensions and names are walked with `bpf_loop` (one verified body
//! instead of an unrolled loop), and all walk state lives in the scratch value too: on the stack the verifier
//! would track it precisely and explore every iteration as a new state. Deliberate limits: at most 128 extensions and 8 `server_name` entries
//! (more is `malformed`); only `server_name`'s contents are validated, other extensions by their framing.
use aya_ebpf::{
    helpers::generated::{bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_kernel},
    macros::map,
    maps::Array,
};
use core::ffi::c_void;
use gateway_common::{
    clienthello::{
        outcome, sni_kind, SniKey, Verdict, CAPTURE_BUF, HANDSHAKE_BUF, MAX_BUFFERED,
        MAX_NAME,
    },
    CONFIG_KEY,
};

use crate::maps::{CONFIG, SNI_ROUTES};

/// Handshake bytes ever needed: a 16 KiB ClientHello body and its 4-byte header.
const HANDSHAKE_LIMIT: u32 = 16 * 1024 + 4;
const MAX_RECORD: u32 = 16 * 1024;
const MAX_EXTENSIONS: usize = 128;
const MAX_NAMES: u32 = 8;
const MASK: u32 = 0x7fff;
const RECORD_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;

/// Per-CPU working memory of the parser.
#[repr(C)]
pub struct Scratch {
    raw: [u8; CAPTURE_BUF],
    hs: [u8; HANDSHAKE_BUF],
    /// `seen[type] == epoch`: extension `type` appeared in the hello being parsed (a stamp per parse avoids
    /// clearing the table).
    seen: [u32; 65536],
    name: [u8; MAX_NAME],
    /// Never written: a source of zeros for clearing names.
    zeros: [u8; MAX_NAME],
    /// The SNI table key being looked up (too large for the stack).
    key: SniKey,
    walk: Walk,
}

/// The state of the walks (records, extensions, name), kept in the map value; see the module docs.
#[repr(C)]
struct Walk {
    epoch: u32,
    /// An outcome + 1 once a walk has finished (0 while walking).
    done: u32,
    len: u32,
    at: u32,
    hs_len: u32,
    body_len: u32,
    end: u32,
    count: u32,
    list_end: u32,
    hosts: u32,
    entries: u32,
    has_name: u32,
    name_off: u32,
    name_len: u32,
    label: u32,
    label_digits: u32,
    all_digits: u32,
    /// Route found by the SNI table walk (0: none yet).
    route: u32,
}

/// One slot per CPU (set to the number of CPUs at load); a TC program runs to completion on its CPU, so a slot
/// is never shared. An array, not a per-CPU array: per-CPU values are limited to 32 KiB.
#[map]
pub static HELLO_SCRATCH: Array<Scratch> = Array::with_max_entries(64, 0);

/// What each `bpf_loop` callback receives: which CPU's scratch to use.
#[repr(C)]
struct Slot {
    cpu: u32,
}

#[inline(always)]
fn scratch(cpu: u32) -> Option<*mut Scratch> {
    HELLO_SCRATCH.get_ptr_mut(cpu)
}

/// The scratch value and its walk state for a callback's `ctx`.
#[inline(always)]
fn slot(ctx: *mut c_void) -> Option<(*mut Scratch, &'static mut Walk)> {
    // SAFETY: bpf_loop passes back the pointer to the caller's `Slot`.
    let cpu = unsafe { (*(ctx as *const Slot)).cpu };
    let s = scratch(cpu)?;
    // SAFETY: `s` points to this CPU's scratch value, used by this program run only.
    Some((s, unsafe { &mut (*s).walk }))
}

#[inline(always)]
fn hs(s: *const Scratch, off: u32) -> u8 {
    // SAFETY: the mask keeps the index inside `hs` (HANDSHAKE_BUF > MASK).
    unsafe { (*s).hs[(off & MASK) as usize] }
}

#[inline(always)]
fn hs16(s: *const Scratch, off: u32) -> u32 {
    ((hs(s, off) as u32) << 8) | hs(s, off + 1) as u32
}

#[inline(always)]
fn raw(s: *const Scratch, off: u32) -> u8 {
    // SAFETY: the mask keeps the index inside `raw` (CAPTURE_BUF = MASK + 1).
    unsafe { (*s).raw[(off & MASK) as usize] }
}

/// Copies `n` bytes from `raw[from..]` to `hs[to..]`, bounds checked here again for the verifier.
#[inline(always)]
fn copy_fragment(s: *mut Scratch, to: u32, from: u32, n: u32) -> bool {
    if to >= HANDSHAKE_LIMIT || n > MAX_RECORD || from >= CAPTURE_BUF as u32 {
        return false;
    }
    // SAFETY: the destination range [to, to + n) lies inside `hs` (HANDSHAKE_LIMIT + MAX_RECORD <= HANDSHAKE_BUF);
    // the source is the same map value, read with fault handling by the helper.
    unsafe {
        let dst = (*s).hs.as_mut_ptr().add(to as usize) as *mut c_void;
        let src = (*s).raw.as_ptr().add(from as usize) as *const c_void;
        bpf_probe_read_kernel(dst, n, src) == 0
    }
}

/// Validates the handshake header once its bytes are there: `Ok(Some(body length))`, `Ok(None)` (need more).
#[inline(always)]
fn handshake_header(s: *const Scratch, hs_len: u32) -> Result<Option<u32>, u32> {
    if hs_len == 0 {
        return Ok(None);
    }
    if hs(s, 0) != CLIENT_HELLO {
        return Err(outcome::MALFORMED);
    }
    if hs_len < 4 {
        return Ok(None);
    }
    let body = ((hs(s, 1) as u32) << 16) | ((hs(s, 2) as u32) << 8) | hs(s, 3) as u32;
    if body > 16 * 1024 {
        return Err(outcome::OVERSIZED);
    }
    Ok(Some(body))
}

#[inline(always)]
fn incomplete(len: u32) -> u32 {
    if len as usize >= MAX_BUFFERED {
        outcome::OVERSIZED
    } else {
        outcome::INCOMPLETE
    }
}

#[inline(always)]
fn finish(w: &mut Walk, o: u32) -> i64 {
    w.done = o + 1;
    1
}

/// One TLS record: its fragment is appended to the handshake; stops when the ClientHello is complete.
#[inline(never)]
extern "C" fn record_step(_index: u64, ctx: *mut c_void) -> i64 {
    let Some((s, w)) = slot(ctx) else { return 1 };
    let (at, len) = (w.at, w.len);
    if at > len || len - at < 5 {
        return finish(w, incomplete(len));
    }
    if raw(s, at) != RECORD_HANDSHAKE {
        return finish(w, outcome::MALFORMED);
    }
    if raw(s, at + 1) != 3 {
        return finish(
            w,
            if at == 0 {
                outcome::NOT_TLS
            } else {
                outcome::MALFORMED
            },
        );
    }
    let rlen = ((raw(s, at + 3) as u32) << 8) | raw(s, at + 4) as u32;
    if rlen > MAX_RECORD {
        return finish(w, outcome::OVERSIZED);
    }
    if rlen == 0 {
        return finish(w, outcome::MALFORMED);
    }
    let available = len - at - 5;
    let fragment = if rlen > available { available } else { rlen };
    let room = HANDSHAKE_LIMIT.saturating_sub(w.hs_len);
    let n = if fragment > room { room } else { fragment };
    if n > 0 && !copy_fragment(s, w.hs_len, at + 5, n) {
        return finish(w, outcome::MALFORMED);
    }
    w.hs_len += n;
    let header = handshake_header(s, w.hs_len);
    if rlen > available {
        // A partial record: reject garbage early, otherwise wait for more.
        return finish(w, header.err().unwrap_or_else(|| incomplete(len)));
    }
    w.at = at + 5 + rlen;
    match header {
        Err(o) => finish(w, o),
        Ok(Some(body)) if w.hs_len >= 4 + body => {
            w.body_len = body;
            finish(w, outcome::SNI)
        }
        Ok(_) => 0,
    }
}

/// One step of the extension walk: an extension header or, inside `server_name`, one name entry (or the end of
/// the list), so the callback has no loop of its own.
#[inline(never)]
extern "C" fn extension_step(_index: u64, ctx: *mut c_void) -> i64 {
    let Some((s, w)) = slot(ctx) else { return 1 };
    let q = w.at;
    if w.list_end != 0 {
        if q >= w.list_end {
            if w.hosts > 1 {
                return finish(w, outcome::AMBIGUOUS_SNI);
            }
            w.has_name = w.hosts;
            w.list_end = 0;
            return 0;
        }
        w.entries += 1;
        if w.entries > MAX_NAMES || q + 3 > w.list_end {
            return finish(w, outcome::MALFORMED);
        }
        let name_len = hs16(s, q + 1);
        if q + 3 + name_len > w.list_end {
            return finish(w, outcome::MALFORMED);
        }
        if hs(s, q) == 0 {
            if w.hosts == 0 {
                w.name_off = q + 3;
                w.name_len = name_len;
            }
            w.hosts += 1;
        }
        w.at = q + 3 + name_len;
        return 0;
    }
    let end = w.end;
    if q >= end {
        return 1;
    }
    if q + 4 > end {
        return finish(w, outcome::MALFORMED);
    }
    let ty = hs16(s, q) as u16;
    let len = hs16(s, q + 2);
    if q + 4 + len > end {
        return finish(w, outcome::MALFORMED);
    }
    w.count += 1;
    if w.count as usize > MAX_EXTENSIONS {
        return finish(w, outcome::MALFORMED);
    }
    // SAFETY: a u16 index into a 65536-entry array.
    let stamp = unsafe { &mut (*s).seen[ty as usize] };
    if *stamp == w.epoch {
        return finish(w, outcome::MALFORMED);
    }
    *stamp = w.epoch;
    if ty != 0 {
        w.at = q + 4 + len;
        return 0;
    }
    // server_name: a non-empty list of entries that must fill the extension exactly.
    if len <= 2 || hs16(s, q + 4) != len - 2 {
        return finish(w, outcome::MALFORMED);
    }
    w.list_end = q + 4 + len;
    w.hosts = 0;
    w.entries = 0;
    w.at = q + 6;
    0
}

/// One character of the host_name: lower-cased into `name`, labels checked.
#[inline(never)]
extern "C" fn name_step(index: u64, ctx: *mut c_void) -> i64 {
    let Some((s, w)) = slot(ctx) else { return 1 };
    let i = index as u32;
    if i >= w.len {
        return 1;
    }
    let c = hs(s, w.name_off + i).to_ascii_lowercase();
    if c == b'.' {
        if w.label == 0 {
            return finish(w, outcome::INVALID_SNI);
        }
        w.all_digits &= w.label_digits;
        w.label = 0;
        w.label_digits = 1;
    } else {
        if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
            return finish(w, outcome::INVALID_SNI);
        }
        w.label += 1;
        if w.label > 63 {
            return finish(w, outcome::INVALID_SNI);
        }
        w.label_digits &= c.is_ascii_digit() as u32;
    }
    // SAFETY: the index is masked into the array.
    unsafe { (*s).name[(i & 0xff) as usize] = c };
    0
}

/// Parses the `len` captured bytes at `data` into `out` and, for a valid name, looks up its route in the SNI
/// table of listener `listener_id`. `data` is only read through `bpf_probe_read_kernel`, so it may point into
/// any capture (a handshake's short buffer or a long capture) as long as `len` bytes are there.
#[inline(always)]
pub fn parse(data: *const u8, len: u32, listener_id: u32, out: *mut Verdict) {
    // SAFETY: `out` points to a map value.
    unsafe { (*out).route_id = 0 };
    let o = parse_into(data, len, out);
    if o == outcome::SNI {
        // SAFETY: `out` points to a map value.
        unsafe { (*out).route_id = route(listener_id, (*out).name_len) };
    }
    // SAFETY: `out` points to a map value.
    unsafe { (*out).outcome = o };
}

/// Looks up `key` as it stands in the scratch value.
#[inline(always)]
// Passing the key by reference is the point: by value it would be copied onto the 512-byte stack.
#[allow(clippy::needless_borrows_for_generic_args)]
fn lookup_key(s: *mut Scratch) -> u32 {
    // SAFETY: the key lives in a map value; the result is a plain read of a map value.
    unsafe { SNI_ROUTES.get(&(*s).key).copied().unwrap_or(0) }
}

/// The route for the normalised name in the scratch value (`len` bytes): exact, then wildcard suffixes from
/// the longest, then the catch-all; 0 when none matches.
#[inline(always)]
fn route(listener_id: u32, len: u32) -> u32 {
    // SAFETY: a helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = scratch(cpu) else { return 0 };
    let Some(config) = CONFIG.get(CONFIG_KEY) else {
        return 0;
    };
    // SAFETY: `s` points to this CPU's scratch value.
    unsafe {
        (*s).key.generation = config.generation;
        (*s).key.listener_id = listener_id;
        (*s).key.kind = sni_kind::EXACT;
        (*s).key.len = len;
        (*s).key.name = (*s).name;
    }
    let found = lookup_key(s);
    if found != 0 {
        return found;
    }
    // SAFETY: as above.
    let w = unsafe { &mut (*s).walk };
    w.route = 0;
    w.len = len;
    let mut slot = Slot { cpu };
    run(MAX_NAME as u32, suffix_step, &mut slot);
    // SAFETY: as above.
    let found = unsafe { (*s).walk.route };
    if found != 0 {
        return found;
    }
    // SAFETY: as above.
    unsafe {
        (*s).key.kind = sni_kind::ANY;
        (*s).key.len = 0;
        (*s).key.name = (*s).zeros;
    }
    lookup_key(s)
}

/// At each dot of the name, looks up the wildcard entry for the suffix after it.
#[inline(never)]
extern "C" fn suffix_step(index: u64, ctx: *mut c_void) -> i64 {
    let Some((s, w)) = slot(ctx) else { return 1 };
    let i = index as u32;
    if i >= w.len || i >= MAX_NAME as u32 - 1 {
        return 1;
    }
    // SAFETY: the index is masked into the array.
    if unsafe { (*s).name[(i & 0xff) as usize] } != b'.' {
        return 0;
    }
    let suffix = w.len - i - 1;
    if suffix == 0 || suffix >= MAX_NAME as u32 {
        return 0;
    }
    // The check above keeps the mask an identity, but LLVM would drop it as redundant; the volatile read keeps
    // it, and the mask is what proves the size's bounds to the verifier.
    // SAFETY: reading a local.
    let suffix = unsafe { core::ptr::read_volatile(&suffix) } & 0xff;
    if suffix == 0 {
        return 0;
    }
    // SAFETY: the key's name is cleared, then `suffix` (< MAX_NAME) bytes from inside `name` are copied to its
    // start; `i + 1 + suffix == len <= MAX_NAME` keeps the source inside `name` too.
    unsafe {
        (*s).key.kind = sni_kind::WILDCARD;
        (*s).key.len = suffix;
        (*s).key.name = (*s).zeros;
        let src = (*s).name.as_ptr().add(((i + 1) & 0xff) as usize) as *const c_void;
        bpf_probe_read_kernel((*s).key.name.as_mut_ptr() as *mut c_void, suffix, src);
    }
    let found = lookup_key(s);
    if found != 0 {
        w.route = found;
        return 1;
    }
    0
}

#[inline(always)]
fn run(steps: u32, callback: extern "C" fn(u64, *mut c_void) -> i64, slot: &mut Slot) {
    // SAFETY: a bounded bpf_loop over a static callback with a pointer to a local.
    unsafe {
        bpf_loop(
            steps,
            callback as *mut c_void,
            slot as *mut Slot as *mut c_void,
            0,
        )
    };
}

#[inline(always)]
fn parse_into(data: *const u8, len: u32, out: *mut Verdict) -> u32 {
    // SAFETY: a helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = scratch(cpu) else {
        return outcome::MALFORMED;
    };
    let mut slot = Slot { cpu };
    if len == 0 {
        return outcome::INCOMPLETE;
    }
    let len = if len as usize > MAX_BUFFERED {
        MAX_BUFFERED as u32
    } else {
        len
    };
    // SAFETY: the destination lies inside the scratch value (len <= MAX_BUFFERED < CAPTURE_BUF); the caller
    // guarantees `len` bytes at `data`.
    unsafe {
        let dst = (*s).raw.as_mut_ptr() as *mut c_void;
        let src = data as *const c_void;
        if bpf_probe_read_kernel(dst, len, src) != 0 {
            return outcome::MALFORMED;
        }
    }
    let first = raw(s, 0);
    if first != RECORD_HANDSHAKE {
        // SSLv2 CLIENT-HELLO: a 2-byte length with the high bit set, then msg_type 1.
        return if first & 0x80 != 0 && (len < 3 || raw(s, 2) == CLIENT_HELLO) {
            outcome::SSLV2
        } else {
            outcome::NOT_TLS
        };
    }
    // SAFETY: `s` points to this CPU's scratch value.
    let w = unsafe { &mut (*s).walk };
    w.epoch = w.epoch.wrapping_add(1).max(1);
    w.done = 0;
    w.len = len;
    w.at = 0;
    w.hs_len = 0;
    w.body_len = 0;
    run(4096, record_step, &mut slot);
    // SAFETY: as above; re-borrowed after the callbacks wrote to it.
    let w = unsafe { &mut (*s).walk };
    match w.done {
        0 => return outcome::OVERSIZED, // more records than a 16 KiB hello can have
        d if d - 1 != outcome::SNI => return d - 1,
        _ => {}
    }
    // SAFETY: `out` points to a map value.
    unsafe { (*out).records_len = w.at };
    let end = 4 + w.body_len;
    // version (2) + random (32), then session id, cipher suites, compression methods.
    let mut p = 4 + 34;
    if p + 1 > end {
        return outcome::MALFORMED;
    }
    p += 1 + hs(s, p) as u32;
    if p + 2 > end {
        return outcome::MALFORMED;
    }
    let suites = hs16(s, p);
    if suites % 2 == 1 {
        return outcome::MALFORMED;
    }
    p += 2 + suites;
    if p + 1 > end {
        return outcome::MALFORMED;
    }
    p += 1 + hs(s, p) as u32;
    if p > end {
        return outcome::MALFORMED;
    }
    if p == end {
        return outcome::NO_SNI;
    }
    if p + 2 > end || p + 2 + hs16(s, p) != end {
        return outcome::MALFORMED;
    }
    w.done = 0;
    w.at = p + 2;
    w.end = end;
    w.count = 0;
    w.list_end = 0;
    w.has_name = 0;
    // Steps: every extension header, plus every name entry and the list end of server_name.
    run(
        MAX_EXTENSIONS as u32 + MAX_NAMES + 3,
        extension_step,
        &mut slot,
    );
    // SAFETY: as above.
    let w = unsafe { &mut (*s).walk };
    if w.done != 0 {
        return w.done - 1;
    }
    if w.at < w.end || w.list_end != 0 {
        return outcome::MALFORMED;
    }
    if w.has_name == 0 {
        return outcome::NO_SNI;
    }
    normalize(s, &mut slot, out)
}

/// Lower-cases the host_name into `out`, drops one trailing dot, and checks it is a DNS name, not an IP literal.
#[inline(always)]
fn normalize(s: *mut Scratch, slot: &mut Slot, out: *mut Verdict) -> u32 {
    // SAFETY: `s` points to this CPU's scratch value.
    let w = unsafe { &mut (*s).walk };
    let (off, len) = (w.name_off, w.name_len);
    if len == 0 {
        return outcome::INVALID_SNI;
    }
    let n = if hs(s, off + len - 1) == b'.' {
        len - 1
    } else {
        len
    };
    if n == 0 || n > 253 {
        return outcome::INVALID_SNI;
    }
    // Clear the name first: SNI table keys are zero-padded.
    // SAFETY: both ranges are whole MAX_NAME arrays inside this CPU's scratch value.
    unsafe {
        let dst = (*s).name.as_mut_ptr() as *mut c_void;
        bpf_probe_read_kernel(dst, MAX_NAME as u32, (*s).zeros.as_ptr() as *const c_void);
    }
    let w = unsafe { &mut (*s).walk };
    w.done = 0;
    w.len = n;
    w.label = 0;
    w.label_digits = 1;
    w.all_digits = 1;
    run(253, name_step, slot);
    // SAFETY: as above.
    let w = unsafe { &mut (*s).walk };
    if w.done != 0 {
        return w.done - 1;
    }
    if w.label == 0 || (w.all_digits & w.label_digits) != 0 {
        return outcome::INVALID_SNI;
    }
    // SAFETY: both are whole arrays of MAX_NAME bytes inside map values.
    unsafe {
        (*out).name = (*s).name;
        (*out).name_len = n;
    }
    outcome::SNI
}
