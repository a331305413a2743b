//! The client's half before a backend is chosen: the SYN is answered with a SYN-ACK, ClientHello segments are
//! captured in order and acknowledged, and once the ClientHello is complete it is parsed and routed by SNI. The
//! segment that completes it is held (not acknowledged) while the backend connection opens: if the backend is
//! slow or a SYN is lost, the client's own retransmission of that segment is the clock that sends the SYN again.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::generated::{
        bpf_check_mtu, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh,
    },
    programs::TcContext,
};
use gateway_common::{
    clienthello::{outcome, MAX_BUFFERED},
    counter,
    tls::{splice as state, Handshake, CLIENT_WINDOW_SCALE},
    Flow, ListenerValue, CONFIG_KEY,
};

use super::{
    capture::{self, Refused, TLS_LONG_CAPTURES},
    ifindex, reply_macs,
    segment::{self, Segment},
    sources,
    Tcp, HANDSHAKE_TEMPLATE, TLS_HANDSHAKES, TLS_REJECTS, TLS_VERDICT,
};
use crate::{
    clienthello,
    counters::count,
    flow::{self, FlowIds},
    headers::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maglev::{self, Pick},
    maps::CONFIG,
    reset,
    tcp_options::{self as options, SynOptions, NO_WSCALE},
};

/// Sequence-number state before any backend exists (the conntrack entries carry the later states).
const CAPTURING: u8 = state::NONE;
/// SACK is offered to both sides when the client offers it; the client's SACK blocks are translated into the
/// backend's numbers (`splice::translate_sack`), the backend's need none (they name the client's numbers).
const OFFER_SACK: bool = true;

/// A client SYN: a new handshake entry (or the existing one, for a retransmitted SYN) and a SYN-ACK. A new
/// handshake is refused when the client's address already holds `pending_per_source` (0: no limit).
#[inline(always)]
pub fn syn(
    ctx: &TcContext,
    pkt: &Packet,
    t: &Tcp,
    listener: &ListenerValue,
    pending_per_source: u32,
) -> i32 {
    let Some(opts) = options::read(ctx, pkt.l4_off, t.doff) else {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    };
    let existing = TLS_HANDSHAKES.get_ptr_mut(pkt.key);
    let hs = match existing {
        // SAFETY: pointer from a successful lookup.
        Some(hs) if unsafe { (*hs).client_isn == t.seq && (*hs).state == CAPTURING } => hs,
        _ => {
            // SAFETY: pointer from a successful lookup.
            if existing.is_some_and(|old| unsafe { (*old).long != 0 }) {
                // An older connection's handshake on this 4-tuple is replaced: its long capture goes with it.
                let _ = TLS_LONG_CAPTURES.remove(pkt.key);
            }
            let Some(template) = HANDSHAKE_TEMPLATE.get(0) else {
                return TC_ACT_SHOT;
            };
            // A new connection counts against its address's share of the table; one replacing an older
            // connection's entry on this 4-tuple takes that entry's place in the count.
            if existing.is_none() && !sources::admit(pkt.key.src, pending_per_source) {
                count(counter::TLS_PENDING_FULL);
                return reset::send(ctx, pkt);
            }
            if TLS_HANDSHAKES.insert(pkt.key, template, 0).is_err() {
                if existing.is_none() {
                    sources::release(pkt.key.src);
                }
                count(counter::TLS_PENDING_FULL);
                return reset::send(ctx, pkt);
            }
            let Some(hs) = TLS_HANDSHAKES.get_ptr_mut(pkt.key) else {
                return TC_ACT_SHOT;
            };
            // SAFETY: pointer from a successful lookup; helpers without arguments.
            unsafe {
                let h = &mut *hs;
                h.created_ns = bpf_ktime_get_ns();
                h.client_isn = t.seq;
                h.gateway_isn = bpf_get_prandom_u32();
                h.backend_isn = 0;
                h.acked = 0;
                h.sent = 0;
                h.client_mss = opts.mss;
                h.backend_mss = 0;
                h.client_syn_window = t.window;
                h.client_window = t.window;
                h.client_wscale = opts.wscale;
                h.client_sack = opts.sack_permitted as u8;
                h.state = CAPTURING;
                h.long = 0;
                h.captured = 0;
                h.listener_id = listener.listener_id;
            }
            count(counter::TLS_HANDSHAKES);
            hs
        }
    };
    // SAFETY: pointer from a successful lookup.
    let h = unsafe { &*hs };
    let Some(macs) = reply_macs(ctx) else {
        return TC_ACT_SHOT;
    };
    let seg = Segment {
        macs,
        saddr: pkt.key.dst,
        daddr: pkt.key.src,
        sport: pkt.key.dport,
        dport: pkt.key.sport,
        seq: h.gateway_isn,
        ack: h.client_isn.wrapping_add(1),
        flags: segment::SYN | segment::ACK,
        // Unscaled in a SYN-ACK: room for a whole first flight, no more.
        window: MAX_BUFFERED as u16,
        syn_options: Some(SynOptions {
            mss: h.client_mss.min(interface_mss(ctx, 0)),
            wscale: if h.client_wscale != NO_WSCALE {
                CLIENT_WINDOW_SCALE
            } else {
                NO_WSCALE
            },
            sack_permitted: OFFER_SACK && h.client_sack != 0,
        }),
    };
    send_back(ctx, &seg)
}

/// A segment of a handshake still capturing its ClientHello.
#[inline(always)]
pub fn client_segment(ctx: &TcContext, pkt: &Packet, t: &Tcp, hs: *mut Handshake) -> i32 {
    // SAFETY: pointer from a successful lookup of this flow's entry.
    let h = unsafe { &mut *hs };
    if pkt.tcp_flags & TCP_RST != 0 {
        capture::forget(&pkt.key, h);
        return TC_ACT_SHOT;
    }
    if pkt.tcp_flags & TCP_SYN != 0
        || h.state != CAPTURING
        || pkt.tcp_flags & TCP_ACK == 0
        || t.ack != h.gateway_isn.wrapping_add(1)
    {
        // Not a segment of the handshake the gateway answered: reset it (RFC 9293 for unacceptable ACKs).
        count(counter::TLS_UNEXPECTED);
        capture::forget(&pkt.key, h);
        return reset::send(ctx, pkt);
    }
    h.client_window = t.window;
    if t.payload == 0 {
        if pkt.tcp_flags & TCP_FIN != 0 {
            return reject(ctx, pkt, h, outcome::INCOMPLETE);
        }
        // The handshake's final ACK, or a window update: nothing to answer.
        return TC_ACT_SHOT;
    }
    let captured = h.captured;
    let seg_off = t.seq.wrapping_sub(h.client_isn.wrapping_add(1));
    if seg_off > captured {
        // A gap: the client resends from the acknowledged point after the duplicate ACK.
        count(counter::TLS_OUT_OF_ORDER);
        return acknowledge(ctx, pkt, h);
    }
    let skip = captured - seg_off;
    if skip >= t.payload {
        // All of it was captured already (our ACK was lost): acknowledge again.
        return acknowledge(ctx, pkt, h);
    }
    let room = MAX_BUFFERED as u32 - captured;
    let n = (t.payload - skip).min(room);
    if n > 0 {
        match capture::append(ctx, &pkt.key, h, t.payload_off + skip, n) {
            Ok(()) => {}
            Err(Refused::Malformed) => {
                count(counter::MALFORMED);
                return TC_ACT_SHOT;
            }
            Err(Refused::Full) => {
                count(counter::TLS_PENDING_FULL);
                capture::forget(&pkt.key, h);
                return reset::send(ctx, pkt);
            }
        }
    }
    let (Some(verdict), Some(bytes)) = (TLS_VERDICT.get_ptr_mut(0), capture::bytes(&pkt.key, h))
    else {
        return TC_ACT_SHOT;
    };
    clienthello::parse(bytes, h.captured, h.listener_id, verdict);
    // SAFETY: this CPU's verdict value, just written by the parser.
    let (result, route_id) = unsafe { ((*verdict).outcome, (*verdict).route_id) };
    match result {
        outcome::INCOMPLETE if h.captured < MAX_BUFFERED as u32 => acknowledge(ctx, pkt, h),
        outcome::INCOMPLETE => reject(ctx, pkt, h, outcome::OVERSIZED),
        outcome::SNI if route_id != 0 => connect(ctx, pkt, h, route_id),
        outcome::SNI => {
            count(counter::TLS_NO_ROUTE);
            capture::forget(&pkt.key, h);
            reset::send(ctx, pkt)
        }
        other => reject(ctx, pkt, h, other),
    }
}

/// Acknowledges everything captured so far, with the room left in the capture as the window.
#[inline(always)]
fn acknowledge(ctx: &TcContext, pkt: &Packet, h: &Handshake) -> i32 {
    let Some(macs) = reply_macs(ctx) else {
        return TC_ACT_SHOT;
    };
    let room = (MAX_BUFFERED as u32).saturating_sub(h.captured);
    let shift = if h.client_wscale != NO_WSCALE {
        CLIENT_WINDOW_SCALE as u32
    } else {
        0
    };
    let seg = Segment {
        macs,
        saddr: pkt.key.dst,
        daddr: pkt.key.src,
        sport: pkt.key.dport,
        dport: pkt.key.sport,
        seq: h.gateway_isn.wrapping_add(1),
        ack: h.client_isn.wrapping_add(1).wrapping_add(h.captured),
        flags: segment::ACK,
        window: (room >> shift).min(0xffff) as u16,
        syn_options: None,
    };
    send_back(ctx, &seg)
}

/// A first flight the parser rejected: counted by reason, the handshake dropped, the client reset.
#[inline(always)]
fn reject(ctx: &TcContext, pkt: &Packet, h: &Handshake, reason: u32) -> i32 {
    count(counter::TLS_REJECTED);
    if let Some(slot) = TLS_REJECTS.get_ptr_mut(reason & 15) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
    capture::forget(&pkt.key, h);
    reset::send(ctx, pkt)
}

/// The ClientHello is complete and routed: pick a backend, create the conntrack entries (SNAT port claimed)
/// and send the backend a SYN made from this segment, which stays unacknowledged meanwhile.
#[inline(always)]
fn connect(ctx: &TcContext, pkt: &Packet, h: &mut Handshake, route_id: u32) -> i32 {
    let Some(config) = CONFIG.get(CONFIG_KEY) else {
        return TC_ACT_SHOT;
    };
    let hash = maglev::flow_hash(&pkt.key);
    let (backend_id, backend) = match maglev::pick(config.generation, route_id, hash) {
        Pick::Backend(id, backend) => (id, backend),
        Pick::Reject => {
            count(counter::TLS_INVALID_BACKEND);
            capture::forget(&pkt.key, h);
            return reset::send(ctx, pkt);
        }
    };
    let ids = FlowIds {
        listener_id: h.listener_id,
        route_id,
        backend_id,
        splice: state::SYN_SENT,
        // The backend SYN is the gateway's (send_backend_syn): the client's ISN, no timestamps.
        syn: Some(crate::snat::BackendSyn {
            seq: h.client_isn,
            tsval: None,
        }),
        reopened: None,
    };
    // A spliced flow never takes the XDP path: its entries need no Ethernet addresses.
    let arrival = flow::Arrival {
        ifindex: ifindex(ctx),
        macs: None,
    };
    let flow = match flow::admit(pkt, ctx.len(), arrival, &backend, ids, config, hash) {
        Ok(flow) => flow,
        Err(_) => {
            count(counter::TABLE_FULL);
            capture::forget(&pkt.key, h);
            return reset::send(ctx, pkt);
        }
    };
    h.state = state::SYN_SENT;
    send_backend_syn(ctx, h, flow)
}

/// Turns the skb into the backend SYN of the spliced connection: the client's initial sequence number (so the
/// client's numbers need no translation towards the backend), the client's MSS and window scale (so its window
/// fields need none either).
#[inline(always)]
pub fn send_backend_syn(ctx: &TcContext, h: &Handshake, original: &Flow) -> i32 {
    let seg = Segment {
        macs: [0; 12],
        saddr: original.new_src,
        daddr: original.new_dst,
        sport: original.new_sport,
        dport: original.new_dport,
        seq: h.client_isn,
        ack: 0,
        flags: segment::SYN,
        window: h.client_syn_window,
        syn_options: Some(SynOptions {
            mss: h.client_mss.min(interface_mss(ctx, original.out_ifindex)),
            wscale: h.client_wscale,
            sack_permitted: OFFER_SACK && h.client_sack != 0,
        }),
    };
    send_to(ctx, &seg, original.out_ifindex)
}

/// The MSS an interface's MTU allows (0: the skb's own interface).
#[inline(always)]
pub fn interface_mss(ctx: &TcContext, ifindex: u32) -> u16 {
    let mut mtu: u32 = 0;
    // SAFETY: helper call on the program's own skb with a pointer to a local; it reports the interface MTU.
    unsafe { bpf_check_mtu(ctx.skb.skb.cast(), ifindex, &mut mtu, 0, 0) };
    if (576..=65535).contains(&mtu) {
        (mtu - 40) as u16
    } else {
        1460
    }
}

/// Writes `seg` into the skb and sends it back out of the interface it came in on.
#[inline(always)]
pub fn send_back(ctx: &TcContext, seg: &Segment) -> i32 {
    if segment::write(ctx, seg).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    unsafe { bpf_redirect(ifindex(ctx), 0) as i32 }
}

/// Writes `seg` into the skb and sends it out of `out_ifindex`, the kernel resolving the next hop.
#[inline(always)]
pub fn send_to(ctx: &TcContext, seg: &Segment, out_ifindex: u32) -> i32 {
    if segment::write(ctx, seg).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call without neighbour parameters.
    unsafe { bpf_redirect_neigh(out_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
