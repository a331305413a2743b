//! The SNAT source port of a new flow: the reply direction's key (backend address and port, SNAT address and
//! port) must be unique, so admission tries hashed ports of the configured range, [`SNAT_ATTEMPTS`] at most,
//! and takes the first free one or the first whose closed flow may give it up ([`reclaim`]).
//!
//! Reuse and the backend's TIME_WAIT: when the backend closes first it keeps the connection's 4-tuple in
//! TIME_WAIT for 60 s, and accepts a new SYN on that tuple only if it is newer: a higher timestamp, or (without
//! timestamps) a higher sequence number. Clients pick timestamp offsets and initial sequence numbers per 4-tuple
//! (Linux hashes the ports in too), so a SYN from *another* client 4-tuple put on the same SNAT port is refused
//! half the time — the client then waits a second and retries. So a closed flow's entries stay as the record of
//! what the backend last saw on that port, and the port goes at once only to the same client 4-tuple or to a SYN
//! the TIME_WAIT is predicted to accept ([`time_wait_accepts`]); other SYNs try the next port.
//!
//! The attempts run in a `bpf_loop` callback over per-CPU state: inlined 16 times, the lookups and decisions
//! cost the verifier more than its instruction budget.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use core::ffi::c_void;
use gateway_common::{counter, tcp_seen, Backend, Config, Flow, FlowKey, PROTO_TCP};

use crate::{counters::count, flow::PreviousNat, maps::FLOWS};

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// Attempts at a free SNAT port before the flow is refused.
const SNAT_ATTEMPTS: u32 = 32;
/// A TCP flow closed by FINs both ways keeps its SNAT port this long after its last FIN, so that a lost final
/// ACK's retransmitted FIN still finds the flow; after a RST the port is free at once.
const RECLAIM_CLOSED_NS: u64 = 250_000_000;
/// After this long the backend's TIME_WAIT (60 s on Linux) is over and any SYN may take the port.
const TIME_WAIT_NS: u64 = 65_000_000_000;
/// A UDP flow's SNAT port may be reused for a new flow once it has been idle this long.
const RECLAIM_UDP_NS: u64 = 5_000_000_000;

/// What the backend gets as the SYN of a TCP flow: its sequence number and timestamp value.
#[derive(Clone, Copy)]
pub struct BackendSyn {
    pub seq: u32,
    pub tsval: Option<u32>,
}

/// One admission's search (per CPU; a TC program runs to completion on its CPU).
#[repr(C)]
pub struct PortSearch {
    /// The new flow's reply entry, inserted under the port found.
    pub reply: Flow,
    pub now: u64,
    client: FlowKey,
    reply_key: FlowKey,
    hash: u32,
    min: u32,
    span: u32,
    syn: Option<BackendSyn>,
    /// The port of a closed flow of the same client 4-tuple to the same backend, tried first (network order).
    reopened_port: Option<u16>,
    claimed: bool,
}

#[map]
static PORT_SEARCH: PerCpuArray<PortSearch> = PerCpuArray::with_max_entries(1, 0);

impl PortSearch {
    /// This CPU's search state, set up for a flow from `client` to `backend`; the caller fills in `reply`.
    #[inline(always)]
    pub fn start(
        client: &FlowKey,
        backend: &Backend,
        config: &Config,
        hash: u32,
        syn: Option<BackendSyn>,
        reopened: Option<PreviousNat>,
    ) -> Option<&'static mut PortSearch> {
        let ptr = PORT_SEARCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's scratch value, used by this program run only.
        let search = unsafe { &mut *ptr };
        // SAFETY: a helper with no arguments.
        search.now = unsafe { bpf_ktime_get_ns() };
        search.client = *client;
        search.reply_key = FlowKey {
            src: backend.addr,
            dst: backend.snat_addr,
            sport: backend.port,
            dport: 0,
            proto: client.proto,
            _pad: [0; 3],
        };
        search.hash = hash;
        search.min = config.snat_port_min as u32;
        search.span = (config.snat_port_max as u32).saturating_sub(search.min) + 1;
        search.syn = syn;
        search.reopened_port = match reopened {
            Some(prev)
                if prev.snat_addr == backend.snat_addr
                    && prev.backend_addr == backend.addr
                    && prev.backend_port == backend.port =>
            {
                Some(prev.snat_port)
            }
            _ => None,
        };
        search.claimed = false;
        Some(search)
    }
}

/// Inserts the search's `reply` (see [`PortSearch::start`]) under the first port that is free or given up;
/// returns its key, or `None` when every attempt failed (the range or the table is full).
#[inline(always)]
pub fn claim_port() -> Option<FlowKey> {
    // SAFETY: a bounded bpf_loop over a static callback; the callback finds its state in the per-CPU map.
    unsafe {
        bpf_loop(
            SNAT_ATTEMPTS + 1,
            attempt as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // Read back through the map: the callback wrote it behind the compiler's back (a reference held across the
    // call would let it assume nothing changed).
    let ptr = PORT_SEARCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch value.
    let search = unsafe { &*ptr };
    search.claimed.then_some(search.reply_key)
}

/// Attempt `index`: 0 is the reopened flow's old port (if any), then hashed ports. Returns 1 to stop.
#[inline(never)]
// The entry is passed to the map by reference: a by-value copy would put 88 bytes on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
extern "C" fn attempt(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(ptr) = PORT_SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value.
    let s = unsafe { &mut *ptr };
    let port = match s.reopened_port {
        Some(port) if index == 0 => port,
        _ if index == 0 => return 0,
        _ => {
            let step = (index as u32 - 1).wrapping_mul(7919);
            // `max(1)`: the span is at least 1 (see `start`), but read back from the map the compiler cannot know.
            ((s.min + s.hash.wrapping_add(step) % s.span.max(1)) as u16).to_be()
        }
    };
    s.reply_key.dport = port;
    if FLOWS.insert(s.reply_key, &s.reply, BPF_NOEXIST).is_ok()
        || (reclaim(&s.reply_key, &s.client, s.syn, s.now)
            && FLOWS.insert(s.reply_key, &s.reply, BPF_NOEXIST).is_ok())
    {
        s.claimed = true;
        return 1;
    }
    0
}

/// Frees the SNAT port held by the flow whose reply entry is `reply_key`, if that flow is over and the port may
/// carry `syn` (from `client`) now. UDP: idle for five seconds. TCP: closed by a RST; or closed by FINs both
/// ways, quiet for [`RECLAIM_CLOSED_NS`], and either the backend holds no TIME_WAIT (it closed second), or the
/// TIME_WAIT is over, or it accepts `syn` ([`time_wait_accepts`]; always for the same client 4-tuple). Without
/// this, a closed flow would hold its port until the agent's expiry, which caps new connections per backend.
#[inline(always)]
fn reclaim(reply_key: &FlowKey, client: &FlowKey, syn: Option<BackendSyn>, now: u64) -> bool {
    // The entries are read in place, field by field (copies would cost the TLS program stack it lacks); another
    // CPU changing them meanwhile at worst makes this admission skip the port.
    // SAFETY: a map value returned by a successful lookup, valid for this program run.
    let Some(old_reply) = (unsafe { FLOWS.get(reply_key) }) else {
        return false;
    };
    let original_key = old_reply.peer_key(reply_key.proto);
    // The original entry, if it still belongs to this reply entry: a client that reopened its 4-tuple has a
    // new original entry, mapped to another port, and this reply entry is then an orphan.
    // SAFETY: as above.
    let original = unsafe { FLOWS.get(original_key) }
        .filter(|o| o.new_sport == reply_key.dport && o.new_dst == reply_key.src);
    let last_seen = match original {
        Some(o) => o.last_seen_ns.max(old_reply.last_seen_ns),
        None => old_reply.last_seen_ns,
    };
    let idle = now.saturating_sub(last_seen);
    let over = if reply_key.proto != PROTO_TCP {
        idle > RECLAIM_UDP_NS
    } else {
        let client_flags = original.map(|o| o.tcp_flags).unwrap_or(0);
        let rst = (client_flags | old_reply.tcp_flags) & tcp_seen::RST != 0;
        // An orphan's client side closed (that is how it reopened); its original entry is gone.
        let client_fin = client_flags & tcp_seen::FIN != 0 || original.is_none();
        let backend_fin = old_reply.tcp_flags & tcp_seen::FIN != 0;
        // Only a backend that closed first holds a TIME_WAIT.
        let backend_time_wait = old_reply.tcp_flags & tcp_seen::FIN_FIRST != 0;
        if original_key == *client {
            // The same client 4-tuple: the backend sees the same tuple reopened, as without the gateway.
            rst || client_fin
        } else {
            rst || (client_fin
                && backend_fin
                && idle > RECLAIM_CLOSED_NS
                && (!backend_time_wait
                    || idle > TIME_WAIT_NS
                    || syn.is_some_and(|syn| {
                        time_wait_accepts(old_reply, original.map(|o| o.bytes), syn, now)
                    })))
        }
    };
    if !over {
        return false;
    }
    if original.is_some() {
        let _ = FLOWS.remove(original_key);
    }
    let _ = FLOWS.remove(reply_key);
    count(counter::SNAT_RECLAIMED);
    true
}

/// Whether the backend's TIME_WAIT for a closed flow would accept `syn` as a new connection on the same
/// 4-tuple, as Linux decides it (`tcp_timewait_state_process`): a timestamp newer than the last one the old
/// flow sent, or, without timestamps on either side, a sequence number after the old flow's last. `old` is the
/// flow's reply entry (it carries the flow's SYN, [`Flow::syn_seq`] and [`Flow::ts_base`]), `client_bytes` what
/// the client sent (unknown once its entry is gone). Both bounds are on the safe side: the old flow's last
/// timestamp is at most its clock now (`ts_base` + now in ms, for the usual 1 kHz timestamp clocks), its last
/// sequence number at most its SYN's plus every byte it sent, headers included.
#[inline(always)]
fn time_wait_accepts(old: &Flow, client_bytes: Option<u64>, syn: BackendSyn, now: u64) -> bool {
    let seq_after = client_bytes.is_some_and(|bytes| {
        is_after(
            syn.seq,
            old.syn_seq.wrapping_add(2).wrapping_add(bytes as u32),
        )
    });
    match syn.tsval {
        Some(tsval) if old.tcp_flags & tcp_seen::TIMESTAMPS != 0 => {
            let newest = old.ts_base.wrapping_add((now / 1_000_000) as u32);
            is_after(tsval, newest)
        }
        // The TIME_WAIT has no timestamp to compare (`ts_recent` 0): a positive one counts as newer.
        Some(tsval) => seq_after || (tsval as i32) > 0,
        None => seq_after,
    }
}

/// `a` is after `b` in 32-bit serial arithmetic, with a margin of 2^20 below the half-range for the bounds
/// above (they overestimate the old flow's last numbers by at most the TIME_WAIT's 65 s of milliseconds, or by
/// the headers counted in its bytes).
#[inline(always)]
fn is_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b) as i32;
    d > 0 && d < i32::MAX - (1 << 20)
}
