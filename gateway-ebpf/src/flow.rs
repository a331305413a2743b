//! Conntrack: flow entries in both directions, their TCP state bits, and admission of new flows with an SNAT
//! source port that makes the reply direction's key unique.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{counter, direction, tcp_seen, Backend, Config, Flow, FlowKey, PROTO_TCP};

use crate::{
    counters::count,
    headers::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::FLOWS,
};

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// Attempts at a free SNAT port before the flow is refused.
const SNAT_ATTEMPTS: u32 = 16;
/// A closed TCP flow's SNAT port may be reused once the flow has been quiet this long (its last FIN/ACK
/// retransmissions are over); after a RST at once.
const RECLAIM_CLOSED_NS: u64 = 1_000_000_000;
/// A UDP flow's SNAT port may be reused for a new flow once it has been idle this long.
const RECLAIM_UDP_NS: u64 = 5_000_000_000;
/// Timestamps are refreshed at most this often, to keep the shared cache line quiet under load.
const LAST_SEEN_GRANULARITY_NS: u64 = 500_000_000;

/// The [`tcp_seen`] bits a segment with these flags contributes.
#[inline(always)]
fn seen_bits(tcp_flags: u8) -> u8 {
    let mut bits = 0;
    if tcp_flags & TCP_SYN != 0 {
        bits |= if tcp_flags & TCP_ACK != 0 {
            tcp_seen::SYN_ACK
        } else {
            tcp_seen::SYN
        };
    } else if tcp_flags & TCP_ACK != 0 {
        bits |= tcp_seen::ESTABLISHED;
    }
    if tcp_flags & TCP_FIN != 0 {
        bits |= tcp_seen::FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= tcp_seen::RST;
    }
    bits
}

/// Key of the entry for the other direction of the flow `flow` belongs to.
#[inline(always)]
pub fn peer_key(flow: &Flow, proto: u8) -> FlowKey {
    FlowKey {
        src: flow.new_dst,
        dst: flow.new_src,
        sport: flow.new_dport,
        dport: flow.new_sport,
        proto,
        _pad: [0; 3],
    }
}

/// Looks up the packet's flow and records what it shows (timestamp, TCP flags). Returns a copy of the entry.
///
/// A bare SYN on an original-direction entry that has already closed (FIN or RST seen) is a new connection
/// reusing the 4-tuple: the old entries are removed and `None` is returned, so it is admitted afresh.
#[inline(always)]
pub fn track(pkt: &Packet, len: u32) -> Option<Flow> {
    let entry = FLOWS.get_ptr_mut(pkt.key)?;
    // SAFETY: pointer from a successful lookup; concurrent writers only OR bits and store timestamps, which
    // tolerate races (the agent's expiry allows for a stale timestamp of LAST_SEEN_GRANULARITY_NS).
    let flow = unsafe { &mut *entry };
    if pkt.key.proto == PROTO_TCP {
        let bits = seen_bits(pkt.tcp_flags);
        if bits == tcp_seen::SYN
            && flow.direction == direction::ORIGINAL
            && flow.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) != 0
        {
            let peer = peer_key(flow, pkt.key.proto);
            let _ = FLOWS.remove(peer);
            let _ = FLOWS.remove(pkt.key);
            return None;
        }
        if flow.tcp_flags & bits != bits {
            flow.tcp_flags |= bits;
        }
    }
    flow.packets += 1;
    flow.bytes += len as u64;
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    Some(*flow)
}

/// Frees the SNAT port held by the flow whose reply entry is `reply_key`, if that flow is over: TCP closed by a
/// RST, or by FINs both ways and quiet for a second; UDP idle for five seconds. Without this, a closed flow would
/// hold its port until the agent's expiry (seconds later), which caps new connections per backend endpoint.
#[inline(always)]
fn reclaim(reply_key: &FlowKey, now: u64) -> bool {
    // SAFETY: a plain read of a map value returned by a successful lookup.
    let Some(old_reply) = (unsafe { FLOWS.get(reply_key) }).copied() else {
        return false;
    };
    let original_key = peer_key(&old_reply, reply_key.proto);
    // SAFETY: as above.
    let original = unsafe { FLOWS.get(original_key) }.copied();
    let last_seen = match original {
        Some(o) => o.last_seen_ns.max(old_reply.last_seen_ns),
        None => old_reply.last_seen_ns,
    };
    let idle = now.saturating_sub(last_seen);
    let over = if reply_key.proto == PROTO_TCP {
        let both = original.map(|o| o.tcp_flags).unwrap_or(0);
        let rst = (both | old_reply.tcp_flags) & tcp_seen::RST != 0;
        let fins = both & tcp_seen::FIN != 0 && old_reply.tcp_flags & tcp_seen::FIN != 0;
        rst || (fins && idle > RECLAIM_CLOSED_NS)
            || (original.is_none() && idle > RECLAIM_CLOSED_NS)
    } else {
        idle > RECLAIM_UDP_NS
    };
    if !over {
        return false;
    }
    let _ = FLOWS.remove(original_key);
    let _ = FLOWS.remove(reply_key);
    count(counter::SNAT_RECLAIMED);
    true
}

/// Why a new flow could not be admitted.
pub enum AdmitError {
    /// No SNAT port free for this backend, or the conntrack table is full.
    TableFull,
}

/// What a new flow is attached to, for counters and the agent's view, and the
/// [`gateway_common::tls::splice`] state its entries start in (`NONE` for plain L4 flows).
pub struct FlowIds {
    pub listener_id: u32,
    pub route_id: u32,
    pub backend_id: u32,
    pub splice: u8,
}

/// Creates both conntrack entries for a new flow to `backend` and returns the original-direction entry.
///
/// The reply entry is inserted first with NOEXIST: that claims the SNAT port atomically. If another CPU admitted
/// the same flow meanwhile (a retransmitted SYN), its entry wins and ours is withdrawn.
#[inline(always)]
pub fn admit(
    pkt: &Packet,
    len: u32,
    ingress_ifindex: u32,
    backend: &Backend,
    ids: FlowIds,
    config: &Config,
    hash: u32,
) -> Result<Flow, AdmitError> {
    let key = &pkt.key;
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let bits = if key.proto == PROTO_TCP {
        seen_bits(pkt.tcp_flags)
    } else {
        0
    };
    let reply = Flow {
        new_src: key.dst,
        new_sport: key.dport,
        new_dst: key.src,
        new_dport: key.sport,
        out_ifindex: ingress_ifindex,
        last_seen_ns: now,
        listener_id: ids.listener_id,
        route_id: ids.route_id,
        backend_id: ids.backend_id,
        direction: direction::REPLY,
        tcp_flags: 0,
        splice: ids.splice,
        win_shift: 0,
        seq_delta: 0,
        ack_delta: 0,
        packets: 0,
        bytes: 0,
    };
    let min = config.snat_port_min as u32;
    let span = (config.snat_port_max as u32).saturating_sub(min) + 1;
    let mut reply_key = FlowKey {
        src: backend.addr,
        dst: backend.snat_addr,
        sport: backend.port,
        dport: 0,
        proto: key.proto,
        _pad: [0; 3],
    };
    let mut claimed = false;
    let mut attempt = 0;
    while attempt < SNAT_ATTEMPTS {
        let port = min + (hash.wrapping_add(attempt.wrapping_mul(7919)) % span);
        reply_key.dport = (port as u16).to_be();
        if FLOWS.insert(reply_key, reply, BPF_NOEXIST).is_ok()
            || (reclaim(&reply_key, now) && FLOWS.insert(reply_key, reply, BPF_NOEXIST).is_ok())
        {
            claimed = true;
            break;
        }
        attempt += 1;
    }
    if !claimed {
        return Err(AdmitError::TableFull);
    }
    let original = Flow {
        new_src: backend.snat_addr,
        new_sport: reply_key.dport,
        new_dst: backend.addr,
        new_dport: backend.port,
        out_ifindex: backend.ifindex,
        last_seen_ns: now,
        listener_id: reply.listener_id,
        route_id: reply.route_id,
        backend_id: reply.backend_id,
        direction: direction::ORIGINAL,
        tcp_flags: bits,
        splice: ids.splice,
        win_shift: 0,
        seq_delta: 0,
        ack_delta: 0,
        packets: 1,
        bytes: len as u64,
    };
    if FLOWS.insert(key, original, BPF_NOEXIST).is_err() {
        let _ = FLOWS.remove(reply_key);
        // Lost a race with another CPU admitting the same packet's flow: use its entry.
        // SAFETY: a plain read of a map value returned by a successful lookup.
        return match unsafe { FLOWS.get(key) } {
            Some(existing) => Ok(*existing),
            None => Err(AdmitError::TableFull),
        };
    }
    count(counter::FLOWS_NEW);
    Ok(original)
}
