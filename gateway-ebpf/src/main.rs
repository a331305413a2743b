//! The gateway's kernel data plane: one TC ingress program attached to every interface that carries Gateway
//! traffic (towards clients and towards backends), and on interfaces in XDP mode an XDP fast path in front of it
//! for established flows ([`xdp`]).
//!
//! Trace a packet in [`ingress`]: parse ([`headers`]) -> existing flow? ([`flow`]) -> else listener lookup and
//! admission: Maglev pick ([`maglev`]), SNAT port and conntrack entries ([`flow`]) -> NAT rewrite ([`nat`]) ->
//! redirect to the egress interface, where the kernel resolves the next hop. Kernel TLS passthrough listeners
//! take the [`tls`] path (handshake, ClientHello capture, SNI routing, splice). Anything not addressed to a
//! listener or a flow goes on to the local stack untouched.
#![no_std]
// `core::intrinsics::atomic_xadd` (tls/sources.rs): the BPF target has no `Atomic*` read-modify-write.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod checksum;
mod clienthello;
mod counters;
mod flow;
mod headers;
mod icmp;
mod ingress;
mod maglev;
mod maps;
mod nat;
mod reset;
mod served;
mod snat;
mod tcp_options;
mod tls;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress entry point.
#[classifier]
pub fn gateway_ingress(ctx: TcContext) -> i32 {
    ingress::run(&ctx)
}

/// XDP fast path, attached in the driver (native mode): established flows' packets are forwarded before an skb
/// exists; everything else is passed on to `gateway_ingress`.
#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx, xdp::Attach::Native)
}

/// XDP fast path attached on the skb (generic mode, for drivers without native XDP).
#[xdp]
pub fn gateway_xdp_generic(ctx: XdpContext) -> u32 {
    xdp::run(&ctx, xdp::Attach::Generic)
}

/// Kernel TLS passthrough, entered by tail call from `gateway_ingress`: a segment to a listener with no flow yet
/// (SYN, ClientHello capture, routing, backend SYN).
#[classifier]
pub fn tls_listener(ctx: TcContext) -> i32 {
    tls::listener_program(&ctx)
}

/// Kernel TLS passthrough, entered by tail call from `gateway_ingress`: a segment of a flow whose splice is
/// being set up (backend SYN-ACK, replay of the ClientHello, retransmissions).
#[classifier]
pub fn tls_flow(ctx: TcContext) -> i32 {
    tls::flow_program(&ctx)
}

/// Diagnostics entry point, run only through BPF_PROG_TEST_RUN: parses the ClientHello the agent put in
/// `HELLO_INPUT` with the kernel's parser and leaves the verdict in `HELLO_VERDICT`, so the kernel's parser can be
/// checked against the userspace one on the same bytes.
#[classifier]
pub fn clienthello_probe(_ctx: TcContext) -> i32 {
    if let (Some(input), Some(verdict)) = (
        maps::HELLO_INPUT.get_ptr(0),
        maps::HELLO_VERDICT.get_ptr_mut(0),
    ) {
        // SAFETY: `input` points to the map value; its `len` is bounded by the parser.
        let (data, len, listener_id) = unsafe {
            ((*input).data.as_ptr(), (*input).len.min((*input).data.len() as u32), (*input).listener_id)
        };
        clienthello::parse(data, len, listener_id, verdict);
    }
    aya_ebpf::bindings::TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic at run time; the verifier rejects unbounded loops, so this is never reached.
    loop {}
}

/// GPL-compatible: some helpers (raw SYN cookies, used by the TLS splice) are GPL-only.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
