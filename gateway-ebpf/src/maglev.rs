//! Backend selection: a flow hash indexes the route's Maglev table (built by the agent, weights honoured), so a
//! backend change moves only about 1/N of new flows. Established flows never come here: conntrack pins them.
use gateway_common::{Backend, BackendKey, FlowKey, RouteKey, BACKEND_REJECT, MAGLEV_TABLE_SIZE};

use crate::maps::{BACKENDS, MAGLEV};

/// Hash of a 5-tuple (murmur3 finaliser rounds); also used to spread SNAT ports.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.sport as u32) << 16) | key.dport as u32;
    let mut h: u32 = 0x9e37_79b9 ^ key.proto as u32;
    h = mix(h ^ key.src);
    h = mix(h ^ key.dst);
    mix(h ^ ports)
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The outcome of a pick.
pub enum Pick {
    Backend(u32, Backend),
    /// The route has no usable backend for this flow (no table, an invalid backend's share, or a stale id).
    Reject,
}

#[inline(always)]
pub fn pick(generation: u32, route_id: u32, hash: u32) -> Pick {
    let Some(table) = MAGLEV.get_ptr(RouteKey {
        generation,
        route_id,
    }) else {
        return Pick::Reject;
    };
    let slot = hash % MAGLEV_TABLE_SIZE as u32;
    // LLVM proves the check below redundant after the modulo and deletes it, but the verifier cannot follow the
    // modulo (lowered to a multiply): reading through a volatile keeps the check, which bounds the index.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) } as usize;
    if slot >= MAGLEV_TABLE_SIZE {
        return Pick::Reject;
    }
    // SAFETY: the pointer comes from a successful map lookup and `slot` is bounds-checked above.
    let backend_id = unsafe { (*table).slots[slot] };
    if backend_id == BACKEND_REJECT {
        return Pick::Reject;
    }
    // SAFETY: a plain read of a map value returned by a successful lookup.
    match unsafe {
        BACKENDS.get(BackendKey {
            generation,
            backend_id,
        })
    } {
        Some(b) => Pick::Backend(backend_id, *b),
        None => Pick::Reject,
    }
}
