//! The ingress pipeline: packets to ports the kernel path does not serve continue to the local stack at once;
//! existing flows are rewritten and redirected; new flows to a listener are admitted (or reset/dropped and
//! counted); everything else continues to the local stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_check_mtu, bpf_redirect_neigh},
    programs::TcContext,
};
use gateway_common::{
    counter, direction, listener_kind, tls::splice, Flow, ListenerKey, CONFIG_KEY, PROTO_TCP,
};

use crate::{
    counters::count,
    flow::{self, AdmitError, Arrival, FlowIds, FrameMacs, Tracked},
    headers::{self, IcmpError, Packet, Parsed, TCP_ACK, TCP_RST, TCP_SYN},
    icmp,
    maglev::{self, Pick},
    maps::{CONFIG, FLOWS, LISTENERS},
    nat, reset, served,
    snat::BackendSyn,
    tcp_options, tls,
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let pkt = match headers::parse(ctx) {
        Parsed::Other => return TC_ACT_OK,
        Parsed::Malformed => {
            count(counter::MALFORMED);
            return TC_ACT_SHOT;
        }
        Parsed::Icmp(err) => return icmp_error(ctx, &err),
        Parsed::Packet(pkt) => pkt,
    };
    let Some(config) = CONFIG.get(CONFIG_KEY) else {
        return TC_ACT_OK;
    };
    if !served::is_served(&pkt.key, config) {
        return TC_ACT_OK;
    }
    let len = ctx.len();
    let reopened = match flow::track(&pkt, len, || frame_macs(ctx)) {
        Tracked::Flow(flow) => {
            if pkt.first_fragment {
                count(counter::UNSUPPORTED_IP);
                return TC_ACT_SHOT;
            }
            if flow.splice != splice::NONE
                && (flow.splice != splice::SPLICED
                    || tls::has_options_to_translate(ctx, &pkt, &flow))
            {
                // A splice being set up, or a spliced segment with SACK blocks to translate.
                return tls::enter(ctx, tls::FLOW_PROGRAM);
            }
            return forward(ctx, &pkt, &flow);
        }
        Tracked::Reopened(closed) => Some(closed),
        Tracked::New => None,
    };
    let generation = config.generation;
    let listener_key = ListenerKey {
        generation,
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: a plain read of a map value returned by a successful lookup.
    let Some(listener) = (unsafe { LISTENERS.get(listener_key) }) else {
        return TC_ACT_OK;
    };
    let listener = *listener;
    if pkt.first_fragment {
        // Fragmented datagrams are not forwarded: later fragments carry no ports (see docs/l4.md).
        count(counter::UNSUPPORTED_IP);
        return TC_ACT_SHOT;
    }
    if listener.kind == listener_kind::TLS_KERNEL {
        return tls::enter(ctx, tls::LISTENER_PROGRAM);
    }
    let is_tcp = pkt.key.proto == PROTO_TCP;
    if is_tcp && (pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) != TCP_SYN {
        // A segment of no known flow (expired, or never admitted): tell the sender at once.
        if pkt.tcp_flags & TCP_RST != 0 {
            return TC_ACT_SHOT;
        }
        count(counter::NO_FLOW_RST);
        return reset::send(ctx, &pkt);
    }
    if listener.route_id == 0 {
        return reject(ctx, &pkt);
    }
    let hash = maglev::flow_hash(&pkt.key);
    let (backend_id, backend) = match maglev::pick(generation, listener.route_id, hash) {
        Pick::Backend(id, backend) => (id, backend),
        Pick::Reject => return reject(ctx, &pkt),
    };
    // SAFETY: reading the ingress ifindex of the program's own skb.
    let ingress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ids = FlowIds {
        listener_id: listener.listener_id,
        route_id: listener.route_id,
        backend_id,
        splice: splice::NONE,
        syn: if is_tcp {
            Some(backend_syn(ctx, &pkt))
        } else {
            None
        },
        reopened,
    };
    let arrival = Arrival {
        ifindex: ingress_ifindex,
        macs: frame_macs(ctx),
    };
    match flow::admit(&pkt, len, arrival, &backend, ids, config, hash) {
        Ok(flow) => forward(ctx, &pkt, flow),
        Err(AdmitError::TableFull) => {
            count(counter::TABLE_FULL);
            if is_tcp {
                reset::send(ctx, &pkt)
            } else {
                TC_ACT_SHOT
            }
        }
    }
}

/// The frame's Ethernet destination and source.
#[inline(always)]
fn frame_macs(ctx: &TcContext) -> Option<FrameMacs> {
    ctx.load::<FrameMacs>(0).ok()
}

/// The client's SYN as the backend will get it (NAT changes neither number): what admission needs to choose an
/// SNAT port the backend's TIME_WAIT accepts.
#[inline(always)]
fn backend_syn(ctx: &TcContext, pkt: &Packet) -> BackendSyn {
    BackendSyn {
        seq: ctx
            .load::<u32>(pkt.l4_off as usize + 4)
            .map(u32::from_be)
            .unwrap_or(0),
        tsval: tcp_options::tsval(ctx, pkt.l4_off, pkt.tcp_doff),
    }
}

/// No route or no valid backend: TCP is reset, UDP dropped; both counted.
#[inline(always)]
fn reject(ctx: &TcContext, pkt: &Packet) -> i32 {
    if pkt.key.proto == PROTO_TCP {
        count(counter::NO_BACKEND_RST);
        reset::send(ctx, pkt)
    } else {
        count(counter::NO_BACKEND_DROP);
        TC_ACT_SHOT
    }
}

/// An ICMP error quoting a packet the gateway sent for a NATed flow goes back, translated, to the peer of the
/// quoted packet's reverse direction. Other ICMP goes to the local stack.
#[inline(always)]
fn icmp_error(ctx: &TcContext, err: &IcmpError) -> i32 {
    let q = &err.inner;
    let reverse = gateway_common::FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        _pad: [0; 3],
    };
    // SAFETY: a plain read of a map value returned by a successful lookup.
    let Some(entry) = (unsafe { FLOWS.get(reverse) }) else {
        return TC_ACT_OK;
    };
    let entry = *entry;
    if icmp::translate_error(ctx, err, &entry).is_err() {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    }
    count(counter::ICMP_TRANSLATED);
    redirect(entry.out_ifindex)
}

/// Applies the flow's NAT (and a splice's translation) and hands the packet to the egress interface. `bpf_redirect_neigh` lets the kernel
/// route and resolve the next hop itself, which (unlike `bpf_fib_lookup`) does not require IP forwarding to be
/// enabled in the gateway's namespace. A packet too big for the egress interface is answered like a router
/// would: ICMP "fragmentation needed" (DF set) or dropped and counted (the gateway does not fragment).
#[inline(always)]
pub fn forward(ctx: &TcContext, pkt: &Packet, flow: &Flow) -> i32 {
    let mut mtu: u32 = 0;
    // SAFETY: helper call on the program's own skb with a pointer to a local.
    let too_big =
        unsafe { bpf_check_mtu(ctx.skb.skb.cast(), flow.out_ifindex, &mut mtu, 0, 0) } > 0;
    if too_big {
        if pkt.dont_fragment {
            count(counter::FRAG_NEEDED_SENT);
            return icmp::send_frag_needed(ctx, pkt, mtu);
        }
        count(counter::TOO_BIG_DROPPED);
        return TC_ACT_SHOT;
    }
    // A spliced flow's numbers and window are translated after the MTU check, so a "fragmentation needed"
    // quotes the segment as its sender wrote it.
    if flow.splice != splice::NONE && tls::translate(ctx, pkt, flow).is_err() {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    }
    if nat::rewrite(ctx, pkt, flow).is_err() {
        count(counter::MALFORMED);
        return TC_ACT_SHOT;
    }
    count(if flow.direction == direction::ORIGINAL {
        counter::FORWARDED
    } else {
        counter::REPLIED
    });
    redirect(flow.out_ifindex)
}

#[inline(always)]
fn redirect(ifindex: u32) -> i32 {
    // SAFETY: plain helper call without neighbour parameters.
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if rc != TC_ACT_REDIRECT {
        count(counter::REDIRECT_FAILED);
    }
    rc
}
