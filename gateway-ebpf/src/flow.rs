//! Conntrack: flow entries in both directions, their TCP state bits, and admission of new flows (both entries,
//! with the SNAT port [`snat`](crate::snat) finds, which makes the reply direction's key unique).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{counter, direction, tcp_seen, Backend, Config, Flow, PROTO_TCP};

use crate::{
    counters::count,
    headers::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::FLOWS,
    snat::{self, BackendSyn, PortSearch},
};

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
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

/// What conntrack knows of a packet.
pub enum Tracked {
    /// A packet of this flow (a copy of its entry for the packet's direction).
    Flow(Flow),
    /// A bare SYN reusing the 4-tuple of a closed flow, which was NATed as given: a new connection, to be
    /// admitted afresh. The closed flow's reply entry stays as the record of its SNAT port.
    Reopened(PreviousNat),
    /// No flow.
    New,
}

/// Where a closed flow of the same 4-tuple went: its SNAT address and port, and its backend.
#[derive(Clone, Copy)]
pub struct PreviousNat {
    pub snat_addr: u32,
    pub snat_port: u16,
    pub backend_port: u16,
    pub backend_addr: u32,
}

/// Looks up the packet's flow and records what it shows (timestamp, TCP flags).
#[inline(always)]
pub fn track(pkt: &Packet, len: u32) -> Tracked {
    let Some(entry) = FLOWS.get_ptr_mut(pkt.key) else {
        return Tracked::New;
    };
    // SAFETY: pointer from a successful lookup; concurrent writers only OR bits and store timestamps, which
    // tolerate races (the agent's expiry allows for a stale timestamp of LAST_SEEN_GRANULARITY_NS).
    let flow = unsafe { &mut *entry };
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if pkt.key.proto == PROTO_TCP {
        let mut bits = seen_bits(pkt.tcp_flags);
        if bits == tcp_seen::SYN
            && flow.direction == direction::ORIGINAL
            && flow.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) != 0
        {
            let previous = PreviousNat {
                snat_addr: flow.new_src,
                snat_port: flow.new_sport,
                backend_port: flow.new_dport,
                backend_addr: flow.new_dst,
            };
            let _ = FLOWS.remove(pkt.key);
            return Tracked::Reopened(previous);
        }
        if bits & tcp_seen::FIN != 0 && flow.tcp_flags & tcp_seen::FIN == 0 {
            // This direction's first FIN: the flow's first unless the other direction has one already.
            // SAFETY: a plain read of a map value returned by a successful lookup.
            let other_closed = unsafe { FLOWS.get(flow.peer_key(pkt.key.proto)) }
                .is_some_and(|peer| peer.tcp_flags & tcp_seen::FIN != 0);
            if !other_closed {
                bits |= tcp_seen::FIN_FIRST;
            }
        }
        if flow.tcp_flags & bits != bits {
            flow.tcp_flags |= bits;
        }
        if bits & (tcp_seen::FIN | tcp_seen::RST) != 0 {
            // Closing segments are rare and date the close exactly (see RECLAIM_CLOSED_NS).
            flow.last_seen_ns = now;
        }
    }
    flow.packets += 1;
    flow.bytes += len as u64;
    if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    Tracked::Flow(*flow)
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
    /// TCP: the SYN the backend gets (see [`snat`](crate::snat)); `None` for UDP.
    pub syn: Option<BackendSyn>,
    /// Where the closed flow this 4-tuple had went ([`Tracked::Reopened`]): its SNAT port is tried first, since
    /// the backend's TIME_WAIT on it accepts the same client's new SYN.
    pub reopened: Option<PreviousNat>,
}

/// Creates both conntrack entries for a new flow to `backend` and returns the original-direction entry.
///
/// The reply entry is inserted first with NOEXIST: that claims the SNAT port atomically. If another CPU admitted
/// the same flow meanwhile (a retransmitted SYN), its entry wins and ours is withdrawn.
#[inline(always)]
// Entries are passed to the map by reference: a by-value copy would put 72 bytes on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn admit(
    pkt: &Packet,
    len: u32,
    ingress_ifindex: u32,
    backend: &Backend,
    ids: FlowIds,
    config: &Config,
    hash: u32,
) -> Result<&'static Flow, AdmitError> {
    let key = &pkt.key;
    // The new entries are built in the per-CPU search state, not on the stack: the TLS program that also admits
    // flows has no 72 bytes of stack to spare.
    let Some(search) = PortSearch::start(key, backend, config, hash, ids.syn, ids.reopened) else {
        return Err(AdmitError::TableFull);
    };
    let now = search.now;
    let mut bits = if key.proto == PROTO_TCP {
        seen_bits(pkt.tcp_flags)
    } else {
        0
    };
    let (syn_seq, ts_base) = match ids.syn {
        Some(syn) => {
            if let Some(tsval) = syn.tsval {
                bits |= tcp_seen::TIMESTAMPS;
                (syn.seq, tsval.wrapping_sub((now / 1_000_000) as u32))
            } else {
                (syn.seq, 0)
            }
        }
        None => (0, 0),
    };
    search.reply = Flow {
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
        // The reply entry outlives the original when the client reopens its 4-tuple: it keeps the SYN's facts.
        tcp_flags: bits & tcp_seen::TIMESTAMPS,
        splice: ids.splice,
        win_shift: 0,
        seq_delta: 0,
        ack_delta: 0,
        packets: 0,
        bytes: 0,
        syn_seq,
        ts_base,
    };
    let Some(reply_key) = snat::claim_port() else {
        return Err(AdmitError::TableFull);
    };
    // The original-direction entry is written over the reply entry: the map holds its own copy.
    let original = &mut search.reply;
    original.new_src = backend.snat_addr;
    original.new_sport = reply_key.dport;
    original.new_dst = backend.addr;
    original.new_dport = backend.port;
    original.out_ifindex = backend.ifindex;
    original.direction = direction::ORIGINAL;
    original.tcp_flags = bits;
    original.packets = 1;
    original.bytes = len as u64;
    if FLOWS.insert(key, &*original, BPF_NOEXIST).is_err() {
        let _ = FLOWS.remove(reply_key);
        // Lost a race with another CPU admitting the same packet's flow: use its entry.
        // SAFETY: a plain read of a map value returned by a successful lookup.
        return match unsafe { FLOWS.get(key) } {
            Some(existing) => Ok(existing),
            None => Err(AdmitError::TableFull),
        };
    }
    count(counter::FLOWS_NEW);
    Ok(original)
}
