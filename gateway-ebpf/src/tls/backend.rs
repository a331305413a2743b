//! The backend's half until the splice is complete: the backend's SYN-ACK fixes the translation (its initial
//! sequence number, its window scale), the captured ClientHello is replayed to it in segments of its MSS, and
//! once it has acknowledged all of it both conntrack entries switch to spliced forwarding. Retransmission is
//! clocked by packets: a repeated SYN-ACK or a duplicate ACK from the backend, or the client resending the
//! segment the gateway holds, sends the unacknowledged part of the capture again. A segment that is to become
//! replayed data while a local socket still owns it goes around once without its owner first
//! (`segment::owned_by_a_socket`).
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::generated::{bpf_clone_redirect, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use gateway_common::{
    counter,
    tls::{splice as state, Handshake, CLIENT_WINDOW_SCALE},
    Flow, FlowKey, PROTO_TCP,
};

use super::{
    capture, handshake, ifindex, reply_macs,
    segment::{self, Segment, MAX_PAYLOAD},
    splice, Tcp, TLS_HANDSHAKES,
};
use crate::{
    counters::count,
    headers::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
    maps::FLOWS,
    tcp_options::{self as options, NO_WSCALE},
};

/// Segments replayed per packet that triggers a replay (bounded loop; more follow on the backend's ACKs).
const REPLAY_BURST: u32 = 8;
/// Smallest MSS accepted from a backend (RFC 9293's IPv4 default is 536).
const MIN_MSS: u32 = 88;

/// A client segment while the backend connection is being set up: the held last ClientHello segment coming
/// again means the backend has not answered (SYN again) or not acknowledged the replay (replay again). Anything
/// else is dropped: the client resends it once the splice is up.
#[inline(always)]
pub fn client_in_flight(ctx: &TcContext, pkt: &Packet, t: &Tcp, flow: &Flow) -> Option<i32> {
    let Some(hs) = TLS_HANDSHAKES.get_ptr_mut(pkt.key) else {
        return spliced_meanwhile(&pkt.key);
    };
    // SAFETY: pointer from a successful lookup of this flow's handshake.
    let h = unsafe { &mut *hs };
    if pkt.tcp_flags & TCP_RST != 0 {
        capture::forget(&pkt.key, h);
        if flow.splice == state::REPLAYING {
            // The backend connection is established: pass the reset on (numbers are translated by now).
            return None; // forwarded (and translated) by the caller
        }
        remove_flows(&pkt.key, flow);
        return Some(TC_ACT_SHOT);
    }
    if t.payload == 0 {
        h.client_window = t.window;
        return Some(TC_ACT_SHOT);
    }
    // A retransmission of captured bytes that were not acknowledged: the held last segment, possibly merged
    // with data sent after it (Linux collapses small segments when it retransmits), or the head of a
    // ClientHello that arrived as one GSO/GRO skb of several segments (none of them acknowledged). Later data
    // waits: the client sends it again once the splice is up.
    let start = t.seq.wrapping_sub(h.client_isn.wrapping_add(1));
    if start >= h.captured {
        return Some(TC_ACT_SHOT);
    }
    if flow.splice == state::SYN_SENT {
        count(counter::TLS_SYN_RETRANSMITS);
        return Some(handshake::send_backend_syn(ctx, h, flow));
    }
    if segment::owned_by_a_socket(ctx) {
        count(counter::TLS_REPLAY_ORPHANED);
        return Some(segment::again_without_owner(ctx));
    }
    count(counter::TLS_REPLAY_RETRANSMITS);
    Some(replay_one(ctx, &pkt.key, h, flow))
}

/// A backend segment while the splice is being set up.
#[inline(always)]
pub fn from_backend(ctx: &TcContext, pkt: &Packet, t: &Tcp, reply: &Flow) -> Option<i32> {
    let ckey = reply.peer_key(PROTO_TCP);
    let Some(hs) = TLS_HANDSHAKES.get_ptr_mut(ckey) else {
        return spliced_meanwhile(&pkt.key);
    };
    // SAFETY: pointer from a successful lookup of this flow's handshake.
    let h = unsafe { &mut *hs };
    if reply.splice == state::SYN_SENT {
        return Some(synack(ctx, pkt, t, reply, &ckey, h));
    }
    // REPLAYING.
    if pkt.tcp_flags & TCP_RST != 0 {
        capture::forget(&ckey, h);
        return None; // forwarded (and translated) by the caller
    }
    if pkt.tcp_flags & TCP_SYN != 0 {
        // The SYN-ACK again: the first replayed segment was lost.
        count(counter::TLS_REPLAY_RETRANSMITS);
        h.sent = h.acked;
        let window = window_for_backend(h, &ckey);
        return Some(replay(ctx, &ckey, h, h.acked, window));
    }
    if pkt.tcp_flags & TCP_ACK == 0 {
        return Some(TC_ACT_SHOT);
    }
    let acked = t.ack.wrapping_sub(h.client_isn.wrapping_add(1));
    if acked > h.captured {
        // Acknowledges more than was sent: not ours to believe.
        count(counter::TLS_UNEXPECTED);
        return Some(TC_ACT_SHOT);
    }
    if acked == h.captured {
        // Everything delivered: join the halves. This segment acknowledges the client's held segment (and may
        // already carry the ServerHello), so it goes on to the client translated.
        set_state(&ckey, state::SPLICED);
        set_state(&pkt.key, state::SPLICED);
        capture::forget(&ckey, h);
        count(counter::TLS_SPLICED);
        return None; // forwarded (and translated) by the caller
    }
    // The rest of the burst is still to send, or a duplicate ACK asks for the first unacknowledged segment again.
    let continues = h.sent < h.captured;
    let duplicate = acked == h.acked && t.payload == 0;
    if (continues || duplicate) && segment::owned_by_a_socket(ctx) {
        // This segment becomes replayed ones: first lose its owner (nothing above has changed the state, so the
        // copy is handled exactly like this one).
        count(counter::TLS_REPLAY_ORPHANED);
        return Some(segment::again_without_owner(ctx));
    }
    if acked > h.acked {
        h.acked = acked;
    }
    let from = if continues {
        h.sent
    } else if duplicate {
        count(counter::TLS_REPLAY_RETRANSMITS);
        h.acked
    } else {
        return Some(TC_ACT_SHOT);
    };
    let window = window_for_backend(h, &ckey);
    Some(replay(ctx, &ckey, h, from, window))
}

/// The backend accepted: fix the translation in both conntrack entries and start the replay.
#[inline(always)]
fn synack(
    ctx: &TcContext,
    pkt: &Packet,
    t: &Tcp,
    reply: &Flow,
    ckey: &FlowKey,
    h: &mut Handshake,
) -> i32 {
    if pkt.tcp_flags & TCP_RST != 0 {
        // Refused: the client learns it the same way.
        capture::forget(ckey, h);
        let seg = Segment {
            macs: [0; 12],
            saddr: reply.new_src,
            daddr: reply.new_dst,
            sport: reply.new_sport,
            dport: reply.new_dport,
            seq: h.gateway_isn.wrapping_add(1),
            ack: 0,
            flags: segment::RST,
            window: 0,
            syn_options: None,
        };
        let out = reply.out_ifindex;
        remove_flows(&pkt.key, reply);
        return handshake::send_to(ctx, &seg, out);
    }
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
        // An ACK for another connection: the backend holds this 4-tuple from an older one (TIME_WAIT refusing
        // the SYN). A client would reset it and retry; the gateway does both at once.
        count(counter::TLS_BACKEND_TIME_WAIT);
        return reset_and_resend_syn(ctx, pkt, t, h, ckey);
    }
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) != (TCP_SYN | TCP_ACK)
        || t.ack != h.client_isn.wrapping_add(1)
    {
        count(counter::TLS_UNEXPECTED);
        return TC_ACT_SHOT;
    }
    let Some(opts) = options::read(ctx, pkt.l4_off, t.doff) else {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    };
    h.backend_isn = t.seq;
    h.backend_mss = opts.mss;
    let client_scaled = h.client_wscale != NO_WSCALE;
    let backend_scaled = client_scaled && opts.wscale != NO_WSCALE;
    // Backend -> client: the backend's windows are in its scale; the client applies the gateway's.
    let to_client_in = if backend_scaled { opts.wscale } else { 0 };
    let to_client_out = if client_scaled {
        CLIENT_WINDOW_SCALE
    } else {
        0
    };
    // Client -> backend: the backend applies the client's scale when it accepted scaling, none otherwise.
    let to_backend_in = if client_scaled { h.client_wscale } else { 0 };
    let to_backend_out = if backend_scaled { h.client_wscale } else { 0 };
    // SAFETY: pointers from successful lookups; the entries are this flow's.
    if let Some(r) = FLOWS.get_ptr_mut(pkt.key) {
        unsafe {
            (*r).seq_delta = h.gateway_isn.wrapping_sub(h.backend_isn);
            (*r).ack_delta = 0;
            (*r).win_shift = (to_client_in << 4) | to_client_out;
            (*r).splice = state::REPLAYING;
        }
    }
    if let Some(o) = FLOWS.get_ptr_mut(*ckey) {
        // SAFETY: as above.
        unsafe {
            (*o).seq_delta = 0;
            (*o).ack_delta = h.backend_isn.wrapping_sub(h.gateway_isn);
            (*o).win_shift = (to_backend_in << 4) | to_backend_out;
            (*o).splice = state::REPLAYING;
        }
    }
    h.state = state::REPLAYING;
    h.acked = 0;
    h.sent = 0;
    let window = splice::rescale(h.client_window, (to_backend_in << 4) | to_backend_out);
    replay(ctx, ckey, h, 0, window)
}

/// Answers a backend's ACK for an older connection (RFC 9293, SYN-SENT: `<SEQ=SEG.ACK><CTL=RST>`), which ends
/// the backend's TIME_WAIT for the 4-tuple (Linux, `tcp_rfc1337` off), and sends the SYN again right behind it
/// instead of waiting for the client's retransmission (which would meet the same TIME_WAIT until it expired).
#[inline(always)]
fn reset_and_resend_syn(
    ctx: &TcContext,
    pkt: &Packet,
    t: &Tcp,
    h: &Handshake,
    ckey: &FlowKey,
) -> i32 {
    let Some(macs) = reply_macs(ctx) else {
        return TC_ACT_SHOT;
    };
    let rst = Segment {
        macs,
        saddr: pkt.key.dst,
        daddr: pkt.key.src,
        sport: pkt.key.dport,
        dport: pkt.key.sport,
        seq: t.ack,
        ack: 0,
        flags: segment::RST,
        window: 0,
        syn_options: None,
    };
    if segment::write(ctx, &rst).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: helper call on the program's own skb: the reset goes out now, the skb is rewritten next.
    if unsafe { bpf_clone_redirect(ctx.skb.skb.cast(), ifindex(ctx), 0) } != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: a plain read of a map value returned by a successful lookup.
    match unsafe { FLOWS.get(ckey) } {
        Some(original) => handshake::send_backend_syn(ctx, h, original),
        None => TC_ACT_SHOT,
    }
}

/// The client's latest window, as the backend must read it (the client-direction entry knows the scales).
#[inline(always)]
fn window_for_backend(h: &Handshake, ckey: &FlowKey) -> u16 {
    // SAFETY: a plain read of a map value returned by a successful lookup.
    match unsafe { FLOWS.get(ckey) } {
        Some(o) => splice::rescale(h.client_window, o.win_shift),
        None => h.client_window,
    }
}

/// Replays the capture from `from` as up to [`REPLAY_BURST`] segments back out of the interface the backend's
/// segment came in on (all but the last as clones of the skb).
#[inline(always)]
fn replay(ctx: &TcContext, ckey: &FlowKey, h: &mut Handshake, from: u32, window: u16) -> i32 {
    let Some(data) = capture::bytes(ckey, h) else {
        return TC_ACT_SHOT;
    };
    let Some(macs) = reply_macs(ctx) else {
        return TC_ACT_SHOT;
    };
    let Ok(addrs) = ctx.load::<[u32; 2]>(crate::headers::IP_SRC_OFF as usize) else {
        return TC_ACT_SHOT;
    };
    let Ok(ports) = ctx.load::<[u16; 2]>(crate::headers::ETH_HLEN as usize + 20) else {
        return TC_ACT_SHOT;
    };
    let mut seg = Segment {
        macs,
        saddr: addrs[1],
        daddr: addrs[0],
        sport: ports[1],
        dport: ports[0],
        seq: 0,
        ack: h.backend_isn.wrapping_add(1),
        flags: segment::ACK,
        window,
        syn_options: None,
    };
    let out = ifindex(ctx);
    let mut off = from;
    let mut i = 0;
    while i < REPLAY_BURST {
        if off >= h.captured {
            break;
        }
        let Ok(next) = write_replayed(ctx, h, data, &mut seg, off) else {
            return TC_ACT_SHOT;
        };
        off = next;
        if off >= h.captured || i + 1 == REPLAY_BURST {
            // SAFETY: plain helper call; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
            return unsafe { bpf_redirect(out, 0) as i32 };
        }
        // SAFETY: helper call on the program's own skb: a copy goes out now, the skb is rewritten next.
        if unsafe { bpf_clone_redirect(ctx.skb.skb.cast(), out, 0) } != 0 {
            return TC_ACT_SHOT;
        }
        i += 1;
    }
    TC_ACT_SHOT
}

/// Sends the first unacknowledged segment of the capture towards the backend from a client skb (the client's
/// retransmission is the timer).
#[inline(always)]
fn replay_one(ctx: &TcContext, ckey: &FlowKey, h: &mut Handshake, original: &Flow) -> i32 {
    if h.acked >= h.captured {
        return TC_ACT_SHOT;
    }
    let Some(data) = capture::bytes(ckey, h) else {
        return TC_ACT_SHOT;
    };
    let mut seg = Segment {
        macs: [0; 12],
        saddr: original.new_src,
        daddr: original.new_dst,
        sport: original.new_sport,
        dport: original.new_dport,
        seq: 0,
        ack: h.backend_isn.wrapping_add(1),
        flags: segment::ACK,
        window: splice::rescale(h.client_window, original.win_shift),
        syn_options: None,
    };
    if write_replayed(ctx, h, data, &mut seg, h.acked).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call without neighbour parameters.
    unsafe { bpf_redirect_neigh(original.out_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Writes the capture's segment starting at `off` (at most the backend's MSS) into the skb with `seg`'s
/// addresses; returns the offset after it. `data` is the capture's first byte (`capture::bytes`).
#[inline(always)]
fn write_replayed(
    ctx: &TcContext,
    h: &mut Handshake,
    data: *const u8,
    seg: &mut Segment,
    off: u32,
) -> Result<u32, ()> {
    let mss = (h.backend_mss as u32).clamp(MIN_MSS, MAX_PAYLOAD);
    let len = h.captured;
    if off >= len {
        return Err(());
    }
    let n = (len - off).min(mss);
    let end = off + n;
    seg.seq = h.client_isn.wrapping_add(1).wrapping_add(off);
    seg.flags = if end >= len {
        segment::ACK | segment::PSH
    } else {
        segment::ACK
    };
    segment::write_with_payload(ctx, seg, data, off, n)?;
    if end > h.sent {
        h.sent = end;
    }
    Ok(end)
}

/// A segment of a splice being set up whose handshake state is gone: if another CPU completed the splice since
/// this segment read its conntrack entry (the two directions arrive on different CPUs), it is a spliced segment
/// and goes on (`None`: the caller forwards and translates it; the numbers were set before the switch).
/// Otherwise it is dropped and counted.
#[inline(always)]
fn spliced_meanwhile(key: &FlowKey) -> Option<i32> {
    // SAFETY: a one-byte read of a map value returned by a successful lookup.
    if unsafe { FLOWS.get(key) }.is_some_and(|f| f.splice == state::SPLICED) {
        return None;
    }
    count(counter::TLS_UNEXPECTED);
    Some(TC_ACT_SHOT)
}

#[inline(always)]
fn set_state(key: &FlowKey, splice: u8) {
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup; a one-byte store.
        unsafe { (*f).splice = splice };
    }
}

/// Removes both conntrack entries of the flow `flow` (the entry for `key`) belongs to.
#[inline(always)]
fn remove_flows(key: &FlowKey, flow: &Flow) {
    let _ = FLOWS.remove(flow.peer_key(key.proto));
    let _ = FLOWS.remove(key);
}
