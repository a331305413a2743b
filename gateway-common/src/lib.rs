//! Map keys and values shared by the kernel programs (`gateway-ebpf`) and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree byte for byte. Addresses and ports are
//! kept in network byte order, exactly as they appear in packets, so the kernel never swaps bytes on the hot path.
//! Any change to a layout here must bump [`ABI_VERSION`]: it is part of the bpffs pin path, so an agent never
//! adopts maps of another layout.
#![no_std]

pub mod checksum;

/// Version of the map layouts below; part of the pin path (`/sys/fs/bpf/ebpf-gateway/v{ABI_VERSION}/...`).
pub const ABI_VERSION: u32 = 8;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Size of a Maglev lookup table (a prime, as Maglev requires). 65537 would move fewer flows per change but costs
/// 256 KiB per route per generation; 4099 keeps the disruption of one backend change near 1/N for N up to ~40.
pub const MAGLEV_TABLE_SIZE: usize = 4099;

/// Backend id that means "reject": the share of traffic that belongs to invalid backend references.
pub const BACKEND_REJECT: u32 = 0;

/// Slot of [`Config`] in the single-entry `CONFIG` array.
pub const CONFIG_KEY: u32 = 0;

/// Global settings the agent writes; the kernel reads `generation` once per new flow.
///
/// Configuration maps are keyed by generation. The agent writes a complete new generation beside the old one, then
/// flips `generation` with one 4-byte store: a packet sees either the old or the new configuration, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The generation new flows are admitted under.
    pub generation: u32,
    /// First source port allocated for SNAT (host byte order).
    pub snat_port_min: u16,
    /// Last source port allocated for SNAT (host byte order, inclusive).
    pub snat_port_max: u16,
    /// Kernel TLS passthrough: handshakes in progress allowed per client address (0: no limit).
    pub tls_pending_per_source: u32,
}

/// What a listener is served by.
pub mod listener_kind {
    /// Forwarded by the L4 path: NAT to a backend chosen by Maglev.
    pub const L4: u8 = 1;
    /// TLS passthrough served in the kernel: handshake answered, ClientHello captured and routed by SNI, then
    /// spliced to a backend ([`crate::tls`]). `route_id` is unused: the SNI table gives the route.
    pub const TLS_KERNEL: u8 = 2;
}

/// The `SERVED_PORTS` bitmap: the TCP and UDP destination ports the kernel path may have work for (ports of L4
/// and kernel TLS listeners, and of the flows still open on them). A packet to another port, outside the SNAT
/// range too, goes to the local stack right after its headers are parsed: traffic of the HTTP proxy and of the
/// userspace TLS proxy pays for no conntrack or listener lookup.
pub mod served_ports {
    use crate::{PROTO_TCP, PROTO_UDP};

    /// Ports per bitmap word.
    const PORTS_PER_WORD: u32 = 64;
    /// Words per protocol: 65,536 ports.
    const WORDS_PER_PROTO: u32 = 65536 / PORTS_PER_WORD;
    /// Entries of the map: TCP's words, then UDP's (16 KiB).
    pub const WORDS: u32 = 2 * WORDS_PER_PROTO;

    /// The word holding `port` (host byte order) of `proto`, and the port's bit in it; `None` for other
    /// protocols.
    #[inline(always)]
    pub fn slot(proto: u8, port: u16) -> Option<(u32, u64)> {
        let base = match proto {
            PROTO_TCP => 0,
            PROTO_UDP => WORDS_PER_PROTO,
            _ => return None,
        };
        let port = port as u32;
        Some((
            base + port / PORTS_PER_WORD,
            1u64 << (port % PORTS_PER_WORD),
        ))
    }
}

/// Key of the `LISTENERS` map: one entry per (generation, address, port, protocol) the gateway serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub generation: u32,
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the `LISTENERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerValue {
    /// Stable id of the listener, for counters.
    pub listener_id: u32,
    /// Id of the route that receives the traffic (the oldest attached L4 route); 0 = none (TCP answered with RST,
    /// UDP dropped, both counted).
    pub route_id: u32,
    /// One of [`listener_kind`].
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// Key of the `MAGLEV` map: the lookup table of one route in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub generation: u32,
    pub route_id: u32,
}

/// Value of the `MAGLEV` map: a Maglev permutation table; each slot holds a backend id (or [`BACKEND_REJECT`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    pub slots: [u32; MAGLEV_TABLE_SIZE],
}

/// Key of the `BACKENDS` map. Backend ids are stable across generations while the endpoint exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub generation: u32,
    pub backend_id: u32,
}

/// Value of the `BACKENDS` map: one endpoint and how to reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Endpoint address, network byte order.
    pub addr: u32,
    /// Gateway address used as the SNAT source towards this endpoint, network byte order.
    pub snat_addr: u32,
    /// Interface the endpoint is reached through (from the route table; the kernel resolves the next hop).
    pub ifindex: u32,
    /// Endpoint port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of the `FLOWS` conntrack map: a packet's 5-tuple as it arrives at the gateway.
///
/// Each NATed connection has two entries: the original direction (client -> listener) and the reply direction
/// (backend -> SNAT address and port). Both keys are unique, so one lookup per packet finds the rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Direction of a conntrack entry.
pub mod direction {
    /// Client -> gateway listener; rewritten to SNAT address -> backend.
    pub const ORIGINAL: u8 = 0;
    /// Backend -> SNAT address; rewritten to listener -> client.
    pub const REPLY: u8 = 1;
}

/// TCP flags seen on a flow, per direction (bits of [`Flow::tcp_flags`]).
pub mod tcp_seen {
    pub const SYN: u8 = 1;
    pub const SYN_ACK: u8 = 2;
    pub const FIN: u8 = 4;
    pub const RST: u8 = 8;
    /// A segment with ACK and no SYN after the handshake: the direction is established.
    pub const ESTABLISHED: u8 = 16;
    /// The SYN the backend got carried a timestamp option ([`Flow::ts_base`](super::Flow::ts_base) is valid).
    pub const TIMESTAMPS: u8 = 32;
    /// This direction's FIN came before the other's (or with it): its sender closed first, so it holds the
    /// connection's TIME_WAIT.
    pub const FIN_FIRST: u8 = 64;
}

/// Value of the `FLOWS` map: the rewrite to apply and the state needed to expire the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// New source address and port, network byte order.
    pub new_src: u32,
    pub new_sport: u16,
    /// New destination port, network byte order.
    pub new_dport: u16,
    /// New destination address, network byte order.
    pub new_dst: u32,
    /// Interface the rewritten packet leaves through.
    pub out_ifindex: u32,
    /// Last packet seen in this direction (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// Ids for counters and for the agent's view of flows.
    pub listener_id: u32,
    pub route_id: u32,
    pub backend_id: u32,
    /// One of [`direction`].
    pub direction: u8,
    /// Bits of [`tcp_seen`] seen in this direction.
    pub tcp_flags: u8,
    /// One of [`tls::splice`]: 0 for plain L4 flows.
    pub splice: u8,
    /// Window rescaling of a spliced flow: `(in << 4) | out`; the window field is multiplied by `2^in` (the
    /// sender's scale) and divided by `2^out` (the scale the receiver applies). 0 for plain flows.
    pub win_shift: u8,
    /// Added (wrapping) to the sequence and acknowledgement numbers of a spliced flow's segments: the two TCP
    /// connections of a splice have different initial sequence numbers in one direction. 0 for plain flows.
    pub seq_delta: u32,
    pub ack_delta: u32,
    /// Packets and bytes (as seen at ingress, L2 included) in this direction. Each direction has its own entry,
    /// usually handled by one CPU, so the counts live here at no extra lookup; the agent sums them per listener,
    /// route and backend.
    pub packets: u64,
    pub bytes: u64,
    /// TCP: the sequence number of the SYN the backend got. With [`Flow::ts_base`] it lets admission predict
    /// whether the backend's TIME_WAIT for this flow would accept another client's SYN on the same SNAT port.
    pub syn_seq: u32,
    /// TCP with [`tcp_seen::TIMESTAMPS`]: the client's timestamp clock at gateway time 0 (SYN `TSval` minus the
    /// gateway's monotonic milliseconds then), so `ts_base + now_ms` bounds any timestamp the flow sent.
    pub ts_base: u32,
    /// The Ethernet destination and source a packet forwarded through this entry gets on the XDP path (valid with
    /// [`l2::KNOWN`]): learned from the other direction's packets, whose source and destination they are, so
    /// the XDP path needs no route or neighbour lookup (see docs/l4.md, "XDP mode").
    pub mac_dst: [u8; 6],
    pub mac_src: [u8; 6],
    /// Bits of [`l2`].
    pub l2: u8,
    pub _pad: [u8; 3],
}

/// What an entry knows of the Ethernet addresses of its direction (bits of [`Flow::l2`]).
pub mod l2 {
    /// [`Flow::mac_dst`](super::Flow::mac_dst) and [`Flow::mac_src`](super::Flow::mac_src) are set.
    pub const KNOWN: u8 = 1;
    /// A packet of this direction has taught the other direction's entry its addresses.
    pub const TAUGHT: u8 = 2;
}

impl Flow {
    /// Key of the entry for the other direction of the flow this entry belongs to (`proto` is the flow's: the
    /// entry does not store it).
    #[inline(always)]
    pub fn peer_key(&self, proto: u8) -> FlowKey {
        FlowKey {
            src: self.new_dst,
            dst: self.new_src,
            sport: self.new_dport,
            dport: self.new_sport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Indexes of the per-CPU `COUNTERS` array (packets unless named otherwise).
pub mod counter {
    /// Packets that matched no listener or flow and went to the local stack untouched.
    pub const PASSED: u32 = 0;
    /// Packets forwarded in the original direction.
    pub const FORWARDED: u32 = 1;
    /// Packets forwarded in the reply direction.
    pub const REPLIED: u32 = 2;
    /// New flows admitted.
    pub const FLOWS_NEW: u32 = 3;
    /// TCP SYNs to a listener with no route or no valid backend, answered with RST.
    pub const NO_BACKEND_RST: u32 = 4;
    /// UDP datagrams to a listener with no route or no valid backend, dropped.
    pub const NO_BACKEND_DROP: u32 = 5;
    /// New flows refused because the conntrack table or the SNAT port range was full.
    pub const TABLE_FULL: u32 = 6;
    /// Packets whose headers were truncated or malformed for their protocol, dropped.
    pub const MALFORMED: u32 = 7;
    /// IPv4 fragments and packets with IP options addressed to a listener, dropped (see the L4 design notes).
    pub const UNSUPPORTED_IP: u32 = 8;
    /// Non-SYN TCP segments to a listener with no flow entry (e.g. after expiry), answered with RST.
    pub const NO_FLOW_RST: u32 = 9;
    /// Redirects the kernel refused.
    pub const REDIRECT_FAILED: u32 = 10;
    /// ICMP errors about NATed flows, translated for the peer that sent the quoted packet.
    pub const ICMP_TRANSLATED: u32 = 11;
    /// Packets too big for their egress interface, answered with ICMP "fragmentation needed".
    pub const FRAG_NEEDED_SENT: u32 = 12;
    /// Packets too big for their egress interface without DF, dropped (the gateway does not fragment).
    pub const TOO_BIG_DROPPED: u32 = 13;
    /// SNAT ports taken back from closed (or long idle UDP) flows to admit a new flow.
    pub const SNAT_RECLAIMED: u32 = 14;
    /// Kernel TLS passthrough: client SYNs answered with a SYN-ACK by the gateway (new handshakes).
    pub const TLS_HANDSHAKES: u32 = 15;
    /// Kernel TLS passthrough: connections whose ClientHello reached the backend (spliced from then on).
    pub const TLS_SPLICED: u32 = 16;
    /// Kernel TLS passthrough: SYNs reset because the table of pending handshakes was full, or the client's
    /// address already held its `tls_pending_per_source` of them.
    pub const TLS_PENDING_FULL: u32 = 17;
    /// Kernel TLS passthrough: ClientHellos whose SNI matched no route, reset.
    pub const TLS_NO_ROUTE: u32 = 18;
    /// Kernel TLS passthrough: first flights rejected by the parser (not TLS, malformed, no SNI, ...), reset;
    /// the reason is counted in `TLS_REJECTS`.
    pub const TLS_REJECTED: u32 = 19;
    /// Kernel TLS passthrough: backend SYNs sent again (the client retransmitted while the backend was silent).
    pub const TLS_SYN_RETRANSMITS: u32 = 20;
    /// Kernel TLS passthrough: captured ClientHello segments sent to the backend again.
    pub const TLS_REPLAY_RETRANSMITS: u32 = 21;
    /// Kernel TLS passthrough: client segments out of order during capture, dropped (the client resends them).
    pub const TLS_OUT_OF_ORDER: u32 = 22;
    /// Kernel TLS passthrough: segments the handshake could not use (unexpected flags or numbers), dropped.
    pub const TLS_UNEXPECTED: u32 = 23;
    /// Kernel TLS passthrough: ClientHellos whose route picked an invalid backend (or one with no ready
    /// endpoint) for the connection, reset.
    pub const TLS_INVALID_BACKEND: u32 = 24;
    /// Kernel TLS passthrough: client segments whose SACK blocks were translated into the backend's numbers.
    pub const TLS_SACK_TRANSLATED: u32 = 25;
    /// Kernel TLS passthrough: backends that answered the gateway's SYN with an ACK for an older connection on
    /// the same 4-tuple (a TIME_WAIT refusing it): reset, and the SYN sent again at once.
    pub const TLS_BACKEND_TIME_WAIT: u32 = 26;
    /// Packets forwarded by the XDP program (also counted as `FORWARDED` or `REPLIED`); the rest of a flow's
    /// packets went through the TC program.
    pub const XDP_FORWARDED: u32 = 27;
    /// XDP: packets whose L4 checksum was left for the device to finish (`CHECKSUM_PARTIAL`, from a local
    /// sender or a veth with checksum offload) and which the native XDP path completed before redirecting.
    pub const XDP_CHECKSUM_COMPLETED: u32 = 28;
    /// Kernel TLS passthrough: first flights longer than the handshake entry's own buffer
    /// ([`crate::clienthello::SHORT_CAPTURE`]), moved to a long capture (`TLS_LONG_CAPTURES`).
    pub const TLS_LONG_HELLOS: u32 = 29;
    /// Kernel TLS passthrough: segments from a socket on this host that were to be rewritten into a larger
    /// replayed ClientHello segment, sent through ingress once more as an ownerless copy first (see
    /// `tls::segment::owned_by_a_socket` in gateway-ebpf).
    pub const TLS_REPLAY_ORPHANED: u32 = 30;
    /// Number of counters.
    pub const COUNT: u32 = 32;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these types are #[repr(C)], made only of integers and arrays of integers, with explicit padding
    // fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ListenerValue {}
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for tls::Handshake {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn served_port_slots_are_distinct_per_protocol_and_port() {
        use super::served_ports::{slot, WORDS};
        let mut seen = [0u64; WORDS as usize];
        for proto in [PROTO_TCP, PROTO_UDP] {
            for port in 0..=u16::MAX {
                let (word, bit) = slot(proto, port).unwrap();
                assert_eq!(bit.count_ones(), 1);
                assert_eq!(seen[word as usize] & bit, 0, "{proto}/{port} shares a slot");
                seen[word as usize] |= bit;
            }
        }
        assert!(
            seen.iter().all(|w| *w == u64::MAX),
            "every slot is some port's"
        );
        assert_eq!(slot(1, 80), None, "ICMP has no ports");
    }

    /// Layouts are shared with the kernel: a size change is an ABI change and must bump ABI_VERSION.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Config>(), 12);
        assert_eq!(size_of::<ListenerKey>(), 12);
        assert_eq!(size_of::<ListenerValue>(), 12);
        assert_eq!(size_of::<RouteKey>(), 8);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<Flow>(), 88);
        assert_eq!(size_of::<tls::Handshake>(), 64 + clienthello::SHORT_BUF);
        // A handshake entry's element (hash node 48, key 16, value, allocator link 8) fills a 4 KiB slab
        // object exactly; one byte more and each would take 8 KiB.
        assert_eq!(48 + 16 + size_of::<tls::Handshake>() + 8, 4096);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_TABLE_SIZE);
    }
}

/// ClientHello capture and SNI extraction in the kernel (the in-kernel TLS passthrough path).
pub mod clienthello {
    /// Bytes of records the kernel buffers before the ClientHello must be complete: 16 KiB of handshake, its
    /// header, and a record header per 512 bytes (the userspace parser's `MAX_BUFFERED`, so both agree).
    pub const MAX_BUFFERED: usize = 16 * 1024 + 4 + 5 * (16 * 1024 / 512 + 1);
    /// Capture buffer size: a power of two above `MAX_BUFFERED`, so offsets can be masked for the verifier.
    pub const CAPTURE_BUF: usize = 32 * 1024;
    /// Bytes of a first flight kept in the handshake entry itself (`tls::Handshake::short`): every ClientHello
    /// in the corpus and today's browsers' post-quantum hellos (~1.8 KiB) fit. A longer first flight moves to a
    /// [`LongCapture`] allocated then. Small entries are what makes the kernel path's connection rate: inserting
    /// and freeing a 32 KiB entry per connection took ~22% of the machine in a profile.
    pub const SHORT_CAPTURE: usize = SHORT_BUF - SHORT_CHUNK;
    /// Largest copy into the short buffer at once: the buffer holds this much beyond [`SHORT_CAPTURE`], so a
    /// copy starting anywhere below it provably stays inside (the verifier bounds offset and length separately).
    pub const SHORT_CHUNK: usize = 1024;
    /// Size of the short buffer, chosen so a handshake entry's hash element is exactly 4 KiB.
    pub const SHORT_BUF: usize = 3960;
    /// Reassembled handshake buffer: a handshake offset (≤ 16 KiB + 4) plus one record (≤ 16 KiB) fits.
    pub const HANDSHAKE_BUF: usize = 32 * 1024 + 64;
    /// Longest host_name accepted on the wire: 253 characters plus a trailing dot.
    pub const MAX_NAME: usize = 256;

    /// Captured bytes of a connection's first flight (TLS records as the client sent them).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Capture {
        pub len: u32,
        /// The TLS passthrough listener the connection came to (selects its SNI table).
        pub listener_id: u32,
        pub data: [u8; CAPTURE_BUF],
    }

    /// A first flight longer than [`SHORT_CAPTURE`]: value of the `TLS_LONG_CAPTURES` map, keyed like the
    /// handshake. Holds the whole capture from its first byte once allocated.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LongCapture {
        pub data: [u8; CAPTURE_BUF],
    }

    /// Kinds of [`SniKey`] entries, looked up in this order: the exact name, wildcard suffixes from the longest
    /// (`a.b.example.com` tries `b.example.com`, then `example.com`, then `com`), then the catch-all.
    pub mod sni_kind {
        pub const EXACT: u32 = 0;
        /// `*.suffix`: `name` holds the suffix without `*.`.
        pub const WILDCARD: u32 = 1;
        /// `*`: any name (only from TLSRoutes without hostnames).
        pub const ANY: u32 = 2;
    }

    /// Key of the `SNI_ROUTES` map. Names are lower-case, zero-padded to `MAX_NAME`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct SniKey {
        pub generation: u32,
        pub listener_id: u32,
        /// One of [`sni_kind`].
        pub kind: u32,
        pub len: u32,
        pub name: [u8; MAX_NAME],
    }

    /// What the kernel's parser concluded.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Verdict {
        /// One of [`outcome`].
        pub outcome: u32,
        /// Length of the normalised name in `name` (when `outcome` is [`outcome::SNI`]).
        pub name_len: u32,
        /// Bytes of the capture the ClientHello's records occupy.
        pub records_len: u32,
        /// The route the name selects in the listener's SNI table (0: none).
        pub route_id: u32,
        pub name: [u8; MAX_NAME],
    }

    /// Parser outcomes; the names match the userspace parser's rejection reasons.
    pub mod outcome {
        /// A complete ClientHello with a valid host_name.
        pub const SNI: u32 = 0;
        /// More bytes are needed (for a capture that will not grow: `truncated`).
        pub const INCOMPLETE: u32 = 1;
        pub const NOT_TLS: u32 = 2;
        pub const SSLV2: u32 = 3;
        pub const MALFORMED: u32 = 4;
        pub const OVERSIZED: u32 = 5;
        pub const NO_SNI: u32 = 6;
        pub const AMBIGUOUS_SNI: u32 = 7;
        pub const INVALID_SNI: u32 = 8;
    }

    #[cfg(feature = "user")]
    mod pod {
        // SAFETY: #[repr(C)] integers and byte arrays with explicit padding: every bit pattern is valid.
        unsafe impl aya::Pod for super::Capture {}
        unsafe impl aya::Pod for super::LongCapture {}
        unsafe impl aya::Pod for super::Verdict {}
        unsafe impl aya::Pod for super::SniKey {}
    }
}

/// The in-kernel TLS passthrough ("splice"): the gateway answers the client's TCP handshake itself, captures the
/// ClientHello, routes it by SNI, opens the backend connection with the client's initial sequence number, replays
/// the captured bytes and from then on forwards both directions with translated sequence numbers and windows.
pub mod tls {
    use super::clienthello::SHORT_BUF;

    /// States of a spliced flow's conntrack entries ([`crate::Flow::splice`]).
    pub mod splice {
        /// Not spliced: a plain L4 flow.
        pub const NONE: u8 = 0;
        /// The backend SYN is out; the client's last ClientHello segment is held (unacknowledged) meanwhile.
        pub const SYN_SENT: u8 = 1;
        /// The backend answered; the captured bytes are being delivered until the backend acknowledges them all.
        pub const REPLAYING: u8 = 2;
        /// Both halves joined: segments are translated and forwarded.
        pub const SPLICED: u8 = 3;
    }

    /// Window scale the gateway announces to clients (RFC 7323); windows relayed from backends are rescaled to
    /// it. 2^9 keeps 512-byte precision and windows up to 32 MiB.
    pub const CLIENT_WINDOW_SCALE: u8 = 9;

    /// Value of the `TLS_HANDSHAKES` map, keyed by the client's 5-tuple: a connection between its SYN and the
    /// backend's acknowledgement of the whole ClientHello. Removed once spliced, so an established passthrough
    /// connection holds only its two conntrack entries.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Handshake {
        /// When the client's SYN arrived (`bpf_ktime_get_ns`); the agent expires stale handshakes.
        pub created_ns: u64,
        /// The client's initial sequence number (also the gateway's towards the backend).
        pub client_isn: u32,
        /// The gateway's initial sequence number towards the client.
        pub gateway_isn: u32,
        /// The backend's initial sequence number (once its SYN-ACK arrived).
        pub backend_isn: u32,
        /// Bytes the backend has acknowledged of the capture, and bytes sent to it.
        pub acked: u32,
        pub sent: u32,
        /// The client's MSS option (536 when absent) and the MSS the backend announced.
        pub client_mss: u16,
        pub backend_mss: u16,
        /// The client's SYN window (unscaled) and its latest window field.
        pub client_syn_window: u16,
        pub client_window: u16,
        /// The client's window scale option, or 0xff when it sent none.
        pub client_wscale: u8,
        /// 1 when the client sent SACK-permitted.
        pub client_sack: u8,
        /// One of [`crate::tls::splice`] (mirrors the conntrack entries once they exist).
        pub state: u8,
        /// 1 when the capture outgrew [`Handshake::short`] and lives in the flow's `LongCapture` entry.
        pub long: u8,
        /// Bytes captured of the first flight: from sequence number `client_isn + 1`. It stops growing once the
        /// ClientHello is complete; its last segment is held unacknowledged until the backend has acknowledged
        /// all of it.
        pub captured: u32,
        /// The TLS passthrough listener the connection came to (selects its SNI table).
        pub listener_id: u32,
        pub _pad: [u8; 16],
        /// The captured bytes while they fit ([`crate::clienthello::SHORT_CAPTURE`]).
        pub short: [u8; SHORT_BUF],
    }
}
