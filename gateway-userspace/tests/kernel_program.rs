//! The TC program run on crafted frames with BPF_PROG_TEST_RUN against maps programmed by the real
//! `Dataplane::apply`: NAT rewrites with checksums verified independently (etherparse), reverse NAT, RSTs for
//! unserved TCP, traffic for other addresses untouched, malformed headers dropped and counted.
//!
//! Runs inside a network namespace with a link towards the backends, so route resolution is real.
use std::net::{Ipv4Addr, SocketAddr};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use gateway_common::{counter, direction};
use gateway_tests::netns::{unique_id, Netns};
use gateway_userspace::{
    dataplane::{Dataplane, Settings},
    ir::{Backend, Gateway, Ir, L4Route, Listener, ListenerKind, ObjectRef},
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

const VIP: [u8; 4] = [198, 18, 100, 1];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
const GW_BACKEND_SIDE: [u8; 4] = [198, 18, 11, 1];
const BACKEND: [u8; 4] = [198, 18, 11, 2];

fn route(kind: &str, name: &str) -> L4Route {
    L4Route {
        route: ObjectRef {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
        },
        backends: vec![Backend {
            name: "default/echo:3000".into(),
            weight: 1,
            endpoints: vec![SocketAddr::from((BACKEND, 3000))],
            valid: true,
            protocol: Default::default(),
        }],
    }
}

fn ir() -> Ir {
    let listener = |name: &str, port, kind| Listener {
        name: name.into(),
        port,
        kind,
    };
    Ir {
        gateways: vec![Gateway {
            gateway: ObjectRef {
                kind: "Gateway".into(),
                namespace: "default".into(),
                name: "gw".into(),
            },
            addresses: vec![Ipv4Addr::from(VIP).into()],
            listeners: vec![
                listener(
                    "tcp",
                    9000,
                    ListenerKind::Tcp(Some(route("TCPRoute", "tcp"))),
                ),
                listener(
                    "udp",
                    9001,
                    ListenerKind::Udp(Some(route("UDPRoute", "udp"))),
                ),
                listener("tcp-no-route", 9002, ListenerKind::Tcp(None)),
                listener("udp-no-route", 9003, ListenerKind::Udp(None)),
            ],
        }],
    }
}

fn tcp_frame(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(5000);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// Addresses, ports, and whether every checksum in the frame is right, computed independently of the kernel.
#[derive(Debug)]
struct Seen {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    checksums_ok: bool,
    tcp_rst: bool,
    tcp_ack_number: u32,
    udp_checksum: u16,
}

fn inspect(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let ip = match p.net.expect("has IP") {
        etherparse::NetSlice::Ipv4(ip) => ip,
        other => panic!("not IPv4: {other:?}"),
    };
    let header = ip.header().to_header();
    let ip_ok = header.calc_header_checksum() == header.header_checksum;
    match p.transport.expect("has L4") {
        TransportSlice::Tcp(tcp) => {
            let h = tcp.to_header();
            let ok = h.calc_checksum_ipv4(&header, tcp.payload()).unwrap() == h.checksum;
            Seen {
                src: header.source,
                dst: header.destination,
                sport: h.source_port,
                dport: h.destination_port,
                checksums_ok: ip_ok && ok,
                tcp_rst: h.rst,
                tcp_ack_number: h.acknowledgment_number,
                udp_checksum: 0,
            }
        }
        TransportSlice::Udp(udp) => {
            let h = udp.to_header();
            let ok = h.checksum == 0
                || h.calc_checksum_ipv4(&header, udp.payload()).unwrap() == h.checksum;
            Seen {
                src: header.source,
                dst: header.destination,
                sport: h.source_port,
                dport: h.destination_port,
                checksums_ok: ip_ok && ok,
                tcp_rst: false,
                tcp_ack_number: 0,
                udp_checksum: h.checksum,
            }
        }
        other => panic!("unexpected transport {other:?}"),
    }
}

/// Runs `body` with a freshly loaded and programmed data plane inside a new namespace.
fn with_dataplane(body: impl FnOnce(&mut Dataplane) + Send) {
    with_dataplane_settings(|_| {}, body)
}

/// [`with_dataplane`] with adjusted settings.
fn with_dataplane_settings(
    adjust: impl FnOnce(&mut Settings) + Send,
    body: impl FnOnce(&mut Dataplane) + Send,
) {
    let ns = Netns::with_role("prog").expect("namespace");
    // This kernel has no dummy driver: a veth pair whose far end stays in the namespace serves as the link
    // towards the backends.
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.11.1/24", "dev", "d0"])
        .unwrap();
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    ns.ip(&["link", "set", "d1", "up"]).unwrap();
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/gwt-{}-prog", unique_id()));
    let cleanup_root = root.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(move || {
            let mut settings = Settings {
                bpffs_root: root,
                ..Settings::default()
            };
            adjust(&mut settings);
            let mut dp =
                Dataplane::load(settings).expect("the eBPF object loads and passes the verifier");
            let report = dp.apply(&ir()).expect("apply");
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            body(&mut dp);
        })
    }));
    let _ = std::fs::remove_dir_all(&cleanup_root);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn tcp_syn_is_nated_to_the_backend_and_the_reply_back_to_the_client() {
    with_dataplane(|dp| {
        let syn = tcp_frame(CLIENT, 40000, VIP, 9000, true, false, &[]);
        let (action, out) = dp.run_frame(&syn).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let seen = inspect(&out);
        assert!(seen.checksums_ok, "checksums after DNAT/SNAT: {seen:?}");
        assert_eq!((seen.dst, seen.dport), (BACKEND, 3000));
        assert_eq!(
            seen.src, GW_BACKEND_SIDE,
            "SNAT to the gateway's address towards the backend"
        );
        assert!(
            (10000..=32767).contains(&seen.sport),
            "SNAT port {} in the configured range",
            seen.sport
        );

        let flows = dp.flows();
        assert_eq!(flows.len(), 2, "one entry per direction");
        assert_eq!(
            flows
                .iter()
                .filter(|(_, f)| f.direction == direction::ORIGINAL)
                .count(),
            1
        );

        // The backend's SYN-ACK comes back to the SNAT address and port.
        let mut syn_ack = tcp_frame(BACKEND, 3000, GW_BACKEND_SIDE, seen.sport, true, true, &[]);
        let (action, out) = dp.run_frame(&syn_ack).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let back = inspect(&out);
        assert!(back.checksums_ok, "checksums after reverse NAT: {back:?}");
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (VIP, 9000, CLIENT, 40000)
        );

        // Data in the established flow, with a payload, keeps valid checksums too.
        syn_ack = tcp_frame(
            CLIENT,
            40000,
            VIP,
            9000,
            false,
            true,
            b"hello through the kernel",
        );
        let (action, out) = dp.run_frame(&syn_ack).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        assert!(inspect(&out).checksums_ok);
        assert!(dp.counters().unwrap()[counter::FLOWS_NEW as usize] >= 1);
    });
}

#[test]
fn udp_is_nated_and_a_zero_checksum_stays_zero() {
    with_dataplane(|dp| {
        let (action, out) = dp
            .run_frame(&udp_frame(CLIENT, 5353, VIP, 9001, b"ping"))
            .unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let seen = inspect(&out);
        assert!(seen.checksums_ok, "{seen:?}");
        assert_ne!(seen.udp_checksum, 0);
        assert_eq!(
            (seen.dst, seen.dport, seen.src),
            (BACKEND, 3000, GW_BACKEND_SIDE)
        );

        // A datagram without checksum (0 = none in IPv4) must not gain a wrong one.
        let mut no_sum = udp_frame(CLIENT, 5354, VIP, 9001, b"ping");
        let udp_csum = 14 + 20 + 6;
        no_sum[udp_csum] = 0;
        no_sum[udp_csum + 1] = 0;
        let (action, out) = dp.run_frame(&no_sum).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let seen = inspect(&out);
        assert_eq!(seen.udp_checksum, 0);
        assert!(seen.checksums_ok);
    });
}

#[test]
fn traffic_for_other_addresses_and_ports_is_untouched() {
    with_dataplane(|dp| {
        for frame in [
            tcp_frame(CLIENT, 40000, [198, 18, 100, 2], 9000, true, false, &[]),
            tcp_frame(CLIENT, 40000, VIP, 9999, true, false, &[]),
            udp_frame(CLIENT, 40000, VIP, 9000, b"tcp port, udp packet"),
            tcp_frame(CLIENT, 40000, GW_BACKEND_SIDE, 22, true, false, &[]),
        ] {
            let (action, out) = dp.run_frame(&frame).unwrap();
            assert_eq!(action, TC_ACT_OK);
            assert_eq!(out, frame, "a packet not for a listener is not modified");
        }
        assert!(dp.flows().is_empty());
    });
}

#[test]
fn tcp_to_a_listener_without_route_is_reset_and_udp_dropped() {
    with_dataplane(|dp| {
        let (action, out) = dp
            .run_frame(&tcp_frame(CLIENT, 40001, VIP, 9002, true, false, &[]))
            .unwrap();
        assert_eq!(
            action, TC_ACT_REDIRECT,
            "the RST goes back out of the ingress interface"
        );
        let rst = inspect(&out);
        assert!(rst.tcp_rst && rst.checksums_ok, "{rst:?}");
        assert_eq!(
            (rst.src, rst.sport, rst.dst, rst.dport),
            (VIP, 9002, CLIENT, 40001)
        );
        assert_eq!(rst.tcp_ack_number, 1001, "acknowledges the SYN");

        let (action, _) = dp
            .run_frame(&udp_frame(CLIENT, 40001, VIP, 9003, b"x"))
            .unwrap();
        assert_eq!(action, TC_ACT_SHOT);
        let c = dp.counters().unwrap();
        assert_eq!(c[counter::NO_BACKEND_RST as usize], 1);
        assert_eq!(c[counter::NO_BACKEND_DROP as usize], 1);
        assert!(dp.flows().is_empty(), "nothing admitted");
    });
}

#[test]
fn a_segment_of_no_known_flow_is_reset() {
    with_dataplane(|dp| {
        let (action, out) = dp
            .run_frame(&tcp_frame(
                CLIENT,
                40002,
                VIP,
                9000,
                false,
                true,
                b"late data",
            ))
            .unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let rst = inspect(&out);
        assert!(rst.tcp_rst && rst.checksums_ok);
        assert_eq!(dp.counters().unwrap()[counter::NO_FLOW_RST as usize], 1);
    });
}

#[test]
fn malformed_headers_are_dropped_and_counted() {
    with_dataplane(|dp| {
        let good = tcp_frame(CLIENT, 40003, VIP, 9000, true, false, &[]);
        // Truncated in the middle of the TCP header.
        let truncated = good[..14 + 20 + 8].to_vec();
        // IHL of 4 (16 bytes): invalid.
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        // Total length shorter than the headers.
        let mut short_len = good.clone();
        short_len[16] = 0;
        short_len[17] = 24;
        // TCP data offset below 5 words.
        let mut bad_doff = good.clone();
        bad_doff[14 + 20 + 12] = 0x20;
        for (name, frame) in [
            ("truncated", truncated),
            ("ihl", bad_ihl),
            ("tot_len", short_len),
            ("doff", bad_doff),
        ] {
            let (action, _) = dp.run_frame(&frame).unwrap();
            assert_eq!(action, TC_ACT_SHOT, "{name}");
        }
        assert_eq!(dp.counters().unwrap()[counter::MALFORMED as usize], 4);
        assert!(dp.flows().is_empty());
        // Frames too short for any header at all are not ours to judge: they pass.
        let (action, _) = dp.run_frame(&[0u8; 14]).unwrap();
        assert_eq!(action, TC_ACT_OK);
    });
}

#[test]
fn a_new_generation_replaces_the_old_atomically() {
    with_dataplane(|dp| {
        let first = dp.generation();
        let mut next = ir();
        next.gateways[0].listeners.retain(|l| l.port != 9000);
        dp.apply(&next).unwrap();
        assert_eq!(dp.generation(), first + 1);
        dp.collect_old_generations().unwrap();
        // Port 9000 is no longer a listener: a SYN passes to the stack.
        let (action, _) = dp
            .run_frame(&tcp_frame(CLIENT, 40004, VIP, 9000, true, false, &[]))
            .unwrap();
        assert_eq!(action, TC_ACT_OK);
        // The others still forward.
        let (action, _) = dp
            .run_frame(&udp_frame(CLIENT, 40004, VIP, 9001, b"x"))
            .unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
    });
}

/// Whether the one's-complement sum over `bytes` (a header or message that includes its checksum) is valid.
fn internet_checksum_ok(bytes: &[u8]) -> bool {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// An ICMP error from `src` to `dst` quoting the first 28 bytes (IP header + 8) of `quoted` (an Ethernet frame).
fn icmp_error_frame(
    src: [u8; 4],
    dst: [u8; 4],
    icmp_type: u8,
    code: u8,
    mtu: u16,
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quoted[14..42]);
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 9, 0x08, 0x00];
    let total = (20 + icmp.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let ip_sum = !fold_sum(&f[14..34]);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = !fold_sum(&icmp);
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

fn fold_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        sum += u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn icmp_errors_about_nated_packets_are_translated_for_the_client() {
    with_dataplane(|dp| {
        let (_, out) = dp
            .run_frame(&tcp_frame(CLIENT, 40010, VIP, 9000, true, false, &[]))
            .unwrap();
        let sent = inspect(&out);
        // A router behind the gateway cannot forward the packet the gateway sent (SNAT address -> backend).
        let router = [198, 18, 11, 254];
        let icmp = icmp_error_frame(router, GW_BACKEND_SIDE, 3, 4, 1400, &out);
        assert!(internet_checksum_ok(&icmp[34..]), "test frame is valid");
        let (action, translated) = dp.run_frame(&icmp).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let ip = &translated[14..34];
        assert!(internet_checksum_ok(ip), "outer IPv4 checksum");
        assert_eq!(&ip[12..16], &VIP, "from the address the client talked to");
        assert_eq!(&ip[16..20], &CLIENT, "to the client");
        let icmp = &translated[34..];
        assert!(
            internet_checksum_ok(icmp),
            "ICMP checksum over the rewritten quote"
        );
        assert_eq!(
            (icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])),
            (3, 4, 1400)
        );
        let inner = &icmp[8..];
        assert!(internet_checksum_ok(&inner[..20]), "quoted IPv4 checksum");
        assert_eq!(
            (&inner[12..16], &inner[16..20]),
            (&CLIENT[..], &VIP[..]),
            "the quote is the client's own packet"
        );
        assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 40010);
        assert_eq!(u16::from_be_bytes([inner[22], inner[23]]), 9000);
        assert_ne!(sent.sport, 40010);
        assert_eq!(dp.counters().unwrap()[counter::ICMP_TRANSLATED as usize], 1);

        // An ICMP error about a packet of no flow is left to the local stack.
        let stray = icmp_error_frame(
            router,
            GW_BACKEND_SIDE,
            3,
            3,
            0,
            &tcp_frame(GW_BACKEND_SIDE, 1, BACKEND, 2, true, false, &[]),
        );
        assert_eq!(dp.run_frame(&stray).unwrap().0, TC_ACT_OK);
    });
}

/// A spliced TLS flow (kernel passthrough): an ICMP error about a segment the gateway sent to the client quotes
/// the sequence number in the gateway's numbering; the backend gets it back in its own, or Linux would ignore the
/// error as out of window and PMTUD would stall.
#[test]
fn icmp_errors_about_spliced_segments_quote_the_backends_sequence_numbers() {
    use aya::maps::{HashMap, Map, MapData};
    use gateway_common::{tls::splice, Flow, FlowKey};
    const DELTA: u32 = 0x1000_0000;
    with_dataplane(|dp| {
        // A flow through the L4 path, then marked spliced with the deltas the splice would have fixed.
        let (_, out) = dp
            .run_frame(&tcp_frame(CLIENT, 40020, VIP, 9000, true, false, &[]))
            .unwrap();
        let sent = inspect(&out);
        let data = MapData::from_pin(dp.pin_dir().join("FLOWS")).unwrap();
        let mut flows: HashMap<MapData, FlowKey, Flow> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        let entries: Vec<(FlowKey, Flow)> = flows.iter().filter_map(Result::ok).collect();
        for (key, mut flow) in entries {
            flow.splice = splice::SPLICED;
            if flow.direction == direction::ORIGINAL {
                flow.ack_delta = DELTA;
            } else {
                flow.seq_delta = DELTA.wrapping_neg();
            }
            flows.insert(key, flow, 0).unwrap();
        }
        // The segment the gateway sent the client: sequence number 1000 in the gateway's numbering.
        let to_client = tcp_frame(VIP, 9000, CLIENT, 40020, false, true, &[1; 8]);
        let router = [198, 18, 0, 254];
        let icmp = icmp_error_frame(router, VIP, 3, 4, 1400, &to_client);
        let (action, translated) = dp.run_frame(&icmp).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let ip = &translated[14..34];
        assert_eq!(&ip[16..20], &BACKEND, "to the backend");
        let icmp = &translated[34..];
        assert!(
            internet_checksum_ok(icmp),
            "ICMP checksum over the rewritten quote"
        );
        let inner = &icmp[8..];
        assert_eq!(
            (&inner[12..16], &inner[16..20]),
            (&BACKEND[..], &GW_BACKEND_SIDE[..])
        );
        assert_eq!(u16::from_be_bytes([inner[22], inner[23]]), sent.sport);
        let seq = u32::from_be_bytes(inner[24..28].try_into().unwrap());
        assert_eq!(
            seq,
            1000u32.wrapping_add(DELTA),
            "the backend's own sequence number"
        );
    });
}

#[test]
fn a_packet_too_big_for_the_egress_link_gets_fragmentation_needed() {
    with_dataplane(|dp| {
        // 1600-byte datagram with DF towards a backend behind a 1500-byte link.
        let mut big = udp_frame(CLIENT, 40011, VIP, 9001, &[7u8; 1600]);
        big[20] |= 0x40; // DF
        big[24] = 0;
        big[25] = 0;
        let sum = !fold_sum(&big[14..34]);
        big[24..26].copy_from_slice(&sum.to_be_bytes());
        let (action, out) = dp.run_frame(&big).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT, "sent back to the client");
        assert!(internet_checksum_ok(&out[14..34]));
        assert_eq!((&out[26..30], &out[30..34]), (&VIP[..], &CLIENT[..]));
        let icmp = &out[34..];
        assert!(internet_checksum_ok(icmp));
        assert_eq!(
            (icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])),
            (3, 4, 1500)
        );
        assert_eq!(
            &icmp[8 + 12..8 + 20],
            &big[26..34],
            "quotes the client's packet as sent"
        );
        assert_eq!(
            dp.counters().unwrap()[counter::FRAG_NEEDED_SENT as usize],
            1
        );

        // Without DF the gateway does not fragment: dropped and counted.
        let mut no_df = udp_frame(CLIENT, 40012, VIP, 9001, &[7u8; 1600]);
        no_df[20] &= !0x40;
        no_df[24] = 0;
        no_df[25] = 0;
        let sum = !fold_sum(&no_df[14..34]);
        no_df[24..26].copy_from_slice(&sum.to_be_bytes());
        let (action, _) = dp.run_frame(&no_df).unwrap();
        assert_eq!(action, TC_ACT_SHOT);
        assert_eq!(dp.counters().unwrap()[counter::TOO_BIG_DROPPED as usize], 1);
    });
}

#[test]
fn flows_count_packets_and_bytes_per_direction() {
    with_dataplane(|dp| {
        let syn = tcp_frame(CLIENT, 40013, VIP, 9000, true, false, &[]);
        let (_, out) = dp.run_frame(&syn).unwrap();
        let sport = inspect(&out).sport;
        let data = tcp_frame(CLIENT, 40013, VIP, 9000, false, true, &[1u8; 100]);
        dp.run_frame(&data).unwrap();
        dp.run_frame(&tcp_frame(
            BACKEND,
            3000,
            GW_BACKEND_SIDE,
            sport,
            true,
            true,
            &[],
        ))
        .unwrap();
        let flows = dp.flows();
        let original = flows
            .iter()
            .find(|(_, f)| f.direction == direction::ORIGINAL)
            .unwrap()
            .1;
        let reply = flows
            .iter()
            .find(|(_, f)| f.direction == direction::REPLY)
            .unwrap()
            .1;
        assert_eq!(
            (original.packets, original.bytes),
            (2, (syn.len() + data.len()) as u64)
        );
        assert_eq!(reply.packets, 1);
        let sweep = dp.expire_flows().unwrap();
        let listener = sweep.totals.listeners.values().next().unwrap();
        assert_eq!(
            (listener.packets, listener.flows, listener.active_flows),
            ([2, 1], 1, 1)
        );
    });
}

fn tcp_flags_frame(sport: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT, VIP, 64)
        .tcp(sport, 9000, 2000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'R' => b.rst(),
            'F' => b.fin(),
            _ => b,
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn a_closed_flow_gives_its_snat_port_to_the_next_flow() {
    with_dataplane_settings(
        |s| s.snat_ports = (20000, 20000),
        |dp| {
            let (action, out) = dp.run_frame(&tcp_flags_frame(41000, "S")).unwrap();
            assert_eq!((action, inspect(&out).sport), (TC_ACT_REDIRECT, 20000));
            // The client resets the connection: the flow is over.
            let (action, _) = dp.run_frame(&tcp_flags_frame(41000, "RA")).unwrap();
            assert_eq!(
                action, TC_ACT_REDIRECT,
                "the RST is forwarded to the backend"
            );
            // The only SNAT port is taken back for the next connection at once.
            let (action, out) = dp.run_frame(&tcp_flags_frame(41001, "S")).unwrap();
            assert_eq!((action, inspect(&out).sport), (TC_ACT_REDIRECT, 20000));
            assert_eq!(dp.counters().unwrap()[counter::SNAT_RECLAIMED as usize], 1);
            assert_eq!(dp.flows().len(), 2, "the old flow's entries are gone");
            // While that flow is open, there is no port for a third: refused with a RST, counted.
            let (action, out) = dp.run_frame(&tcp_flags_frame(41002, "S")).unwrap();
            assert_eq!(action, TC_ACT_REDIRECT);
            assert!(inspect(&out).tcp_rst);
            assert_eq!(dp.counters().unwrap()[counter::TABLE_FULL as usize], 1);
        },
    );
}
