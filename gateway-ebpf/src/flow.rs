//! Conntrack: flow entries in both directions, their TCP state bits, and admission of new flows (both entries,
//! with the SNAT port [`snat`](crate::snat) finds, which makes the reply direction's key unique).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{
    counter, direction, l2, tcp_seen, tls::splice, Backend, Config, Flow, FlowKey, PROTO_TCP,
};

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

/// The Ethernet destination and source of a frame, as its first 12 bytes hold them.
pub type FrameMacs = [u8; 12];

/// Looks up the packet's flow and records what it shows ([`record`]). `macs` gives the frame's Ethernet
/// addresses; it is called only when the other direction's entry is to learn them.
#[inline(always)]
pub fn track(pkt: &Packet, len: u32, macs: impl FnOnce() -> Option<FrameMacs>) -> Tracked {
    let Some(entry) = FLOWS.get_ptr_mut(pkt.key) else {
        return Tracked::New;
    };
    // SAFETY: pointer from a successful lookup; concurrent writers only OR bits and store timestamps, which
    // tolerate races (the agent's expiry allows for a stale timestamp of LAST_SEEN_GRANULARITY_NS).
    record(unsafe { &mut *entry }, pkt, len, macs)
}

/// Records a packet of the flow whose entry is `flow` (the map value itself): timestamp, TCP flags, packet and
/// byte counts. The first packet of a direction, and one every [`LAST_SEEN_GRANULARITY_NS`] after, teaches the
/// other direction's entry the Ethernet addresses to use on the XDP path ([`teach_peer`]).
#[inline(always)]
pub fn record(
    flow: &mut Flow,
    pkt: &Packet,
    len: u32,
    macs: impl FnOnce() -> Option<FrameMacs>,
) -> Tracked {
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
    let refreshed = now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_GRANULARITY_NS;
    if refreshed {
        flow.last_seen_ns = now;
    }
    if flow.splice == splice::NONE && (refreshed || flow.l2 & l2::TAUGHT == 0) {
        if let Some(macs) = macs() {
            teach_peer(flow, &pkt.key, &macs);
        }
    }
    Tracked::Flow(*flow)
}

/// Teaches the other direction's entry the Ethernet addresses for the XDP path: a packet of this direction came
/// from `macs`' source to its destination, so the other direction's packets go back from that destination to
/// that source (the path is assumed symmetric, as for the interface: see docs/l4.md). Done again every
/// [`LAST_SEEN_GRANULARITY_NS`] of traffic, so a changed neighbour is followed.
#[inline(always)]
fn teach_peer(flow: &mut Flow, key: &FlowKey, macs: &FrameMacs) {
    flow.l2 |= l2::TAUGHT;
    let Some(peer) = FLOWS.get_ptr_mut(flow.peer_key(key.proto)) else {
        return;
    };
    // SAFETY: pointer from a successful lookup. Another CPU may read the addresses while they change, which
    // happens only when the neighbour itself changed: at worst one packet goes to the old one.
    let peer = unsafe { &mut *peer };
    // Only the entry of this very flow: after a client reopened its 4-tuple, an old reply entry's peer key
    // names the new flow's entry, which may go to another backend.
    if peer.new_dst != key.src
        || peer.new_dport != key.sport
        || peer.new_src != key.dst
        || peer.new_sport != key.dport
    {
        return;
    }
    let (dst, src) = split_macs(macs);
    if peer.l2 & l2::KNOWN == 0 || peer.mac_dst != src || peer.mac_src != dst {
        peer.mac_dst = src;
        peer.mac_src = dst;
        peer.l2 |= l2::KNOWN;
    }
}

/// A frame's (destination, source) Ethernet addresses.
#[inline(always)]
fn split_macs(macs: &FrameMacs) -> ([u8; 6], [u8; 6]) {
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&macs[..6]);
    src.copy_from_slice(&macs[6..]);
    (dst, src)
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

/// Where a new flow's first packet came from: the reply direction goes back the same way.
pub struct Arrival {
    pub ifindex: u32,
    /// The frame's Ethernet addresses, which the reply entry turns around for the XDP path (`None`: unknown,
    /// the reply direction then stays on the TC path until its entry learns them).
    pub macs: Option<FrameMacs>,
}

/// Creates both conntrack entries for a new flow to `backend` and returns the original-direction entry.
///
/// The reply entry is inserted first with NOEXIST: that claims the SNAT port atomically. If another CPU admitted
/// the same flow meanwhile (a retransmitted SYN), its entry wins and ours is withdrawn.
#[inline(always)]
// Entries are passed to the map by reference: a by-value copy would put 88 bytes on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn admit(
    pkt: &Packet,
    len: u32,
    arrival: Arrival,
    backend: &Backend,
    ids: FlowIds,
    config: &Config,
    hash: u32,
) -> Result<&'static Flow, AdmitError> {
    let key = &pkt.key;
    // The new entries are built in the per-CPU search state, not on the stack: the TLS program that also admits
    // flows has no 88 bytes of stack to spare.
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
    let (mac_dst, mac_src, l2_bits) = match arrival.macs {
        // Turned around: the reply goes back to where the first packet came from.
        Some(macs) => {
            let (dst, src) = split_macs(&macs);
            (src, dst, l2::KNOWN)
        }
        None => ([0; 6], [0; 6], 0),
    };
    search.reply = Flow {
        new_src: key.dst,
        new_sport: key.dport,
        new_dst: key.src,
        new_dport: key.sport,
        out_ifindex: arrival.ifindex,
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
        mac_dst,
        mac_src,
        l2: l2_bits,
        _pad: [0; 3],
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
    // The backend's addresses are learned from its first reply; this packet already taught the reply entry.
    original.mac_dst = [0; 6];
    original.mac_src = [0; 6];
    original.l2 = l2::TAUGHT;
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
