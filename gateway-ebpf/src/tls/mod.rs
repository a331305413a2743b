//! TLS passthrough in the kernel: the gateway answers the client's TCP handshake itself, captures the
//! ClientHello ([`handshake`]), routes it by SNI, connects to the backend with the client's initial sequence
//! number and replays the captured bytes ([`backend`]), then splices the two connections: segments are forwarded
//! with sequence numbers and windows translated ([`splice`]) and the usual NAT. No socket exists in the gateway's
//! namespace for any of it. The final design is written down in docs/kernel-tls-passthrough.md.
//!
//! Trace a connection: client SYN -> [`on_listener`] -> `handshake::syn` (SYN-ACK) -> ClientHello segments ->
//! `handshake::client_segment` (capture, ACK, parse, route, backend SYN) -> backend SYN-ACK -> [`on_flow`] ->
//! `backend::synack` (replay) -> backend ACKs the capture -> spliced: [`on_flow`] -> `splice::translate`.
//!
//! The handshake work runs in its own programs (`tls_listener`, `tls_flow` in main.rs), entered from the ingress
//! program by tail call ([`enter`]): each is verified on its own with its own 512-byte stack, and the L4 path's
//! verification and stack are untouched. Spliced segments stay in the ingress program ([`translate`]).
mod backend;
mod capture;
mod handshake;
mod segment;
mod sources;
mod splice;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use gateway_common::{
    clienthello::Verdict, counter, direction, tls::splice as state, tls::Handshake, Flow, FlowKey,
    ListenerKey, ListenerValue, CONFIG_KEY, PROTO_TCP,
};

pub use splice::{has_options_to_translate, translate};

use crate::{
    counters::count,
    headers::{self, Packet, Parsed, TCP_ACK, TCP_RST, TCP_SYN},
    ingress,
    maps::{CONFIG, FLOWS, LISTENERS},
    reset,
};

/// Slots of [`TLS_PROGRAMS`].
pub const LISTENER_PROGRAM: u32 = 0;
pub const FLOW_PROGRAM: u32 = 1;

/// The handshake programs, set by the agent after loading (`tls_listener`, `tls_flow`).
#[map]
pub static TLS_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Continues in handshake program `slot`; returns only if the tail call fails (the agent has not set the
/// program), in which case the segment is dropped and counted.
#[inline(always)]
pub fn enter(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: a tail call with the program's own context; on success it does not return.
    unsafe { TLS_PROGRAMS.tail_call(ctx, slot) };
    count(counter::TLS_UNEXPECTED);
    TC_ACT_SHOT
}

/// Program `tls_listener`: a segment to a kernel TLS passthrough listener with no conntrack entry.
#[inline(always)]
pub fn listener_program(ctx: &TcContext) -> i32 {
    let Parsed::Packet(pkt) = headers::parse(ctx) else {
        return TC_ACT_SHOT;
    };
    let Some(config) = CONFIG.get(CONFIG_KEY) else {
        return TC_ACT_SHOT;
    };
    let key = ListenerKey {
        generation: config.generation,
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: a plain read of a map value returned by a successful lookup.
    let Some(listener) = (unsafe { LISTENERS.get(key) }).copied() else {
        return TC_ACT_SHOT;
    };
    on_listener(ctx, &pkt, &listener, config.tls_pending_per_source)
}

/// Program `tls_flow`: a segment of a flow whose splice is being set up.
#[inline(always)]
pub fn flow_program(ctx: &TcContext) -> i32 {
    let Parsed::Packet(pkt) = headers::parse(ctx) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: a plain read of a map value returned by a successful lookup.
    let Some(flow) = (unsafe { FLOWS.get(pkt.key) }).copied() else {
        return TC_ACT_SHOT;
    };
    match on_flow(ctx, &pkt, &flow) {
        Some(rc) => rc,
        None => ingress::forward(ctx, &pkt, &flow),
    }
}

/// Connections between their SYN and the backend's acknowledgement of the whole ClientHello, keyed by the
/// client's 5-tuple. Allocated on demand (4 KiB each with the first flight's short buffer; see [`capture`]) and
/// bounded by the agent's `--tls-max-pending`; pinned, so handshakes in progress survive an agent restart.
#[map]
pub static TLS_HANDSHAKES: HashMap<FlowKey, Handshake> = HashMap::pinned(4096, BPF_F_NO_PREALLOC);

/// A zeroed handshake: new entries are inserted from it (the value is too large for the stack).
#[map]
static HANDSHAKE_TEMPLATE: Array<Handshake> = Array::with_max_entries(1, 0);

/// The parser's verdict on this CPU's current capture.
#[map]
static TLS_VERDICT: PerCpuArray<Verdict> = PerCpuArray::with_max_entries(1, 0);

/// First flights rejected by the kernel parser, by outcome (`gateway_common::clienthello::outcome`).
#[map]
pub static TLS_REJECTS: PerCpuArray<u64> = PerCpuArray::pinned(16, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// The TCP header fields the handshake needs (numbers in host order).
#[derive(Clone, Copy)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Header length in bytes, options included.
    pub doff: u32,
    /// Offset of the payload from the start of the frame, and its length.
    pub payload_off: u32,
    pub payload: u32,
}

#[inline(always)]
fn tcp(ctx: &TcContext, pkt: &Packet) -> Option<Tcp> {
    let h = ctx.load::<[u32; 4]>(pkt.l4_off as usize).ok()?;
    let seq = u32::from_be(h[1]);
    let ack = u32::from_be(h[2]);
    let word = u32::from_be(h[3]);
    let doff = (word >> 28) * 4;
    let window = (word & 0xffff) as u16;
    let headers = pkt.ihl + doff;
    if doff < 20 || pkt.ip_len < headers {
        return None;
    }
    Some(Tcp {
        seq,
        ack,
        window,
        doff,
        payload_off: pkt.l4_off + doff,
        payload: pkt.ip_len - headers,
    })
}

/// A segment to a kernel TLS passthrough listener with no conntrack entry: a new handshake, or a segment of one
/// in progress.
#[inline(always)]
/// `pending_per_source`: the agent's per-address limit of pending handshakes (`Config`).
fn on_listener(
    ctx: &TcContext,
    pkt: &Packet,
    listener: &ListenerValue,
    pending_per_source: u32,
) -> i32 {
    if pkt.key.proto != PROTO_TCP {
        count(counter::TLS_UNEXPECTED);
        return TC_ACT_SHOT;
    }
    if pkt.ihl != 20 {
        // IP options: the segments the gateway writes have none, so it does not take such connections.
        count(counter::UNSUPPORTED_IP);
        return TC_ACT_SHOT;
    }
    let Some(t) = tcp(ctx, pkt) else {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    };
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        return handshake::syn(ctx, pkt, &t, listener, pending_per_source);
    }
    match TLS_HANDSHAKES.get_ptr_mut(pkt.key) {
        Some(hs) => handshake::client_segment(ctx, pkt, &t, hs),
        None if pkt.tcp_flags & TCP_RST != 0 => TC_ACT_SHOT,
        None => {
            count(counter::NO_FLOW_RST);
            reset::send(ctx, pkt)
        }
    }
}

/// A segment of a flow the splice owns (`flow.splice != NONE`). Returns `None` when the segment is to be
/// forwarded by the caller (`ingress::forward`, which translates its numbers for the other connection).
#[inline(always)]
fn on_flow(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> Option<i32> {
    if flow.splice == state::SPLICED {
        // The ingress program sends spliced segments here only when their SACK blocks need translating; the
        // numbers and window are translated by `ingress::forward`.
        return match splice::translate_sack(ctx, pkt, flow) {
            Ok(()) => None,
            Err(()) => {
                count(counter::MALFORMED);
                Some(TC_ACT_SHOT)
            }
        };
    }
    if pkt.ihl != 20 {
        count(counter::UNSUPPORTED_IP);
        return Some(TC_ACT_SHOT);
    }
    let Some(t) = tcp(ctx, pkt) else {
        count(counter::MALFORMED);
        return Some(TC_ACT_SHOT);
    };
    if flow.direction == direction::ORIGINAL {
        backend::client_in_flight(ctx, pkt, &t, flow)
    } else {
        backend::from_backend(ctx, pkt, &t, flow)
    }
}

/// The Ethernet addresses of the skb, swapped: for a segment sent back out of the interface it came in on.
#[inline(always)]
fn reply_macs(ctx: &TcContext) -> Option<[u8; 12]> {
    let m = ctx.load::<[u8; 12]>(0).ok()?;
    let mut out = [0u8; 12];
    out[0..6].copy_from_slice(&m[6..12]);
    out[6..12].copy_from_slice(&m[0..6]);
    Some(out)
}

/// The ingress interface of the skb.
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own skb.
    unsafe { (*ctx.skb.skb).ifindex }
}
