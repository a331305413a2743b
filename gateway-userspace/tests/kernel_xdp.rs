//! The XDP fast path run on crafted frames with BPF_PROG_TEST_RUN, against maps programmed by the real
//! `Dataplane::apply` and flows admitted by the real TC program: NAT of established flows both ways with
//! Ethernet addresses learned from the other direction and checksums verified independently (etherparse),
//! partial checksums completed (native) or left to TC (generic), and every packet the XDP path must leave to the
//! TC program returned with `XDP_PASS` and not one byte changed.
//!
//! Runs inside a network namespace with a client-side and a backend-side veth, both in XDP mode (attached for
//! real by `sync_interfaces`), so routes, MTUs and the egress devmap are real.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use gateway_common::{counter, tls::splice, Flow, FlowKey, ABI_VERSION};
use gateway_tests::netns::{unique_id, Netns};
use gateway_userspace::{
    dataplane::{Dataplane, Settings, XdpMode},
    ir::{Backend, Gateway, Ir, L4Route, Listener, ListenerKind, ObjectRef},
};

const TC_ACT_REDIRECT: i32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [198, 18, 100, 1];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
const GW_BACKEND_SIDE: [u8; 4] = [198, 18, 11, 1];
const BACKEND: [u8; 4] = [198, 18, 11, 2];

/// Ethernet addresses of the crafted frames: the client's router, the backend, and the gateway's two sides.
const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
const BACKEND_MAC: [u8; 6] = [2, 0xb1, 0, 0, 0, 2];
const GW_CLIENT_MAC: [u8; 6] = [2, 0x9a, 0, 0, 0, 1];
const GW_BACKEND_MAC: [u8; 6] = [2, 0x9b, 0, 0, 0, 1];

fn ir() -> Ir {
    let route = |kind: &str| L4Route {
        route: ObjectRef {
            kind: kind.into(),
            namespace: "default".into(),
            name: kind.to_lowercase(),
        },
        backends: vec![Backend {
            name: "default/echo:3000".into(),
            weight: 1,
            endpoints: vec![SocketAddr::from((BACKEND, 3000))],
            valid: true,
            protocol: Default::default(),
        }],
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
                Listener {
                    name: "tcp".into(),
                    port: 9000,
                    kind: ListenerKind::Tcp(Some(route("TCPRoute"))),
                },
                Listener {
                    name: "udp".into(),
                    port: 9001,
                    kind: ListenerKind::Udp(Some(route("UDPRoute"))),
                },
            ],
        }],
    }
}

/// A TCP segment: `flags` among "S", "A", "F", "R" (e.g. "SA").
struct Tcp<'a> {
    from: ([u8; 6], [u8; 4], u16),
    to: ([u8; 6], [u8; 4], u16),
    flags: &'a str,
    payload: &'a [u8],
}

impl Tcp<'_> {
    fn frame(&self) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(self.from.0, self.to.0)
            .ipv4(self.from.1, self.to.1, 64)
            .tcp(self.from.2, self.to.2, 1000, 64240);
        if self.flags.contains('S') {
            b = b.syn();
        }
        if self.flags.contains('A') {
            b = b.ack(5000);
        }
        if self.flags.contains('F') {
            b = b.fin();
        }
        if self.flags.contains('R') {
            b = b.rst();
        }
        let mut out = Vec::new();
        b.write(&mut out, self.payload).unwrap();
        out
    }
}

fn udp_frame(
    from: ([u8; 6], [u8; 4], u16),
    to: ([u8; 6], [u8; 4], u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(from.0, to.0)
        .ipv4(from.1, to.1, 64)
        .udp(from.2, to.2)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// Ethernet and IP addresses, ports, and whether every checksum is right, computed independently.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    checksums_ok: bool,
    udp_checksum: u16,
    payload: Vec<u8>,
}

fn inspect(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let eth = match p.link.expect("has Ethernet") {
        etherparse::LinkSlice::Ethernet2(e) => e.to_header(),
        other => panic!("not Ethernet II: {other:?}"),
    };
    let ip = match p.net.expect("has IP") {
        etherparse::NetSlice::Ipv4(ip) => ip,
        other => panic!("not IPv4: {other:?}"),
    };
    let header = ip.header().to_header();
    let ip_ok = header.calc_header_checksum() == header.header_checksum;
    let (sport, dport, l4_ok, udp_checksum, payload) = match p.transport.expect("has L4") {
        TransportSlice::Tcp(tcp) => {
            let h = tcp.to_header();
            let ok = h.calc_checksum_ipv4(&header, tcp.payload()).unwrap() == h.checksum;
            (h.source_port, h.destination_port, ok, 0, tcp.payload())
        }
        TransportSlice::Udp(udp) => {
            let h = udp.to_header();
            let ok = h.checksum == 0
                || h.calc_checksum_ipv4(&header, udp.payload()).unwrap() == h.checksum;
            (
                h.source_port,
                h.destination_port,
                ok,
                h.checksum,
                udp.payload(),
            )
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen {
        eth_dst: eth.destination,
        eth_src: eth.source,
        src: header.source,
        dst: header.destination,
        sport,
        dport,
        checksums_ok: ip_ok && l4_ok,
        udp_checksum,
        payload: payload.to_vec(),
    }
}

/// The data plane in a fresh namespace: `c0` towards the client (198.18.0.1/24), `d0` towards the backend
/// (198.18.11.1/24), both attached, both in XDP mode of `mode`.
struct Env<'a> {
    dp: &'a mut Dataplane,
    c0: u32,
    d0: u32,
    mode: XdpMode,
}

fn with_xdp(mode: XdpMode, body: impl FnOnce(&mut Env) + Send) {
    let ns = Netns::with_role("xdp").expect("namespace");
    for (a, b, cidr) in [
        ("c0", "c1", "198.18.0.1/24"),
        ("d0", "d1", "198.18.11.1/24"),
    ] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
        ns.ip(&["addr", "add", cidr, "dev", a]).unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/gwt-{}-xdp", unique_id()));
    let cleanup_root = root.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(move || {
            let settings = Settings {
                bpffs_root: root,
                interfaces: vec!["c0".into(), "d0".into()],
                xdp: [("c0".to_string(), mode), ("d0".to_string(), mode)].into(),
                ..Settings::default()
            };
            let mut dp =
                Dataplane::load(settings).expect("the eBPF object loads and passes the verifier");
            dp.sync_interfaces().expect("attach");
            assert_eq!(dp.xdp_interfaces().len(), 2);
            let report = dp.apply(&ir()).expect("apply");
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            let index = |name: &str| nix::net::if_::if_nametoindex(name).unwrap();
            let (c0, d0) = (index("c0"), index("d0"));
            body(&mut Env {
                dp: &mut dp,
                c0,
                d0,
                mode,
            });
        })
    }));
    let _ = std::fs::remove_dir_all(&cleanup_root);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

impl Env<'_> {
    fn client(&self, port: u16) -> ([u8; 6], [u8; 4], u16) {
        (CLIENT_MAC, CLIENT, port)
    }

    /// Opens a TCP flow through the TC program: the client's SYN on `c0`, the backend's SYN-ACK on `d0`.
    /// Returns the SNAT port.
    fn open_tcp(&mut self, client_port: u16) -> u16 {
        let syn = Tcp {
            from: self.client(client_port),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "S",
            payload: &[],
        };
        let (action, out) = self.dp.run_frame_on(&syn.frame(), self.c0).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let snat_port = inspect(&out).sport;
        let syn_ack = Tcp {
            from: (BACKEND_MAC, BACKEND, 3000),
            to: (GW_BACKEND_MAC, GW_BACKEND_SIDE, snat_port),
            flags: "SA",
            payload: &[],
        };
        let (action, _) = self.dp.run_frame_on(&syn_ack.frame(), self.d0).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        snat_port
    }

    fn xdp(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        self.dp.run_xdp_frame(frame, ingress, self.mode).unwrap()
    }

    fn counter(&self, index: u32) -> u64 {
        self.dp.counters().unwrap()[index as usize]
    }

    /// The pinned conntrack map, to put an entry in a state that is hard to reach with frames.
    fn flows_map(&self) -> BpfHashMap<MapData, FlowKey, Flow> {
        let pin = self.dp.pin_dir().join("FLOWS");
        let _ = ABI_VERSION; // the pin directory is versioned
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(pin).unwrap())).unwrap()
    }

    fn original_entry(&self, client_port: u16) -> (FlowKey, Flow) {
        self.dp
            .flows()
            .into_iter()
            .find(|(k, _)| k.sport == client_port.to_be() && k.src == u32::from_ne_bytes(CLIENT))
            .expect("the flow's original entry")
    }
}

#[test]
fn established_tcp_is_forwarded_by_xdp_both_ways_with_learned_ethernet_addresses() {
    with_xdp(XdpMode::Native, |env| {
        let snat_port = env.open_tcp(40000);
        let data = Tcp {
            from: env.client(40000),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: b"hello through XDP",
        };
        let forwarded_before = env.counter(counter::FORWARDED);
        let (action, out) = env.xdp(&data.frame(), env.c0);
        assert_eq!(action, XDP_REDIRECT);
        let seen = inspect(&out);
        assert!(seen.checksums_ok, "checksums after NAT in XDP: {seen:?}");
        assert_eq!(
            (seen.eth_dst, seen.eth_src),
            (BACKEND_MAC, GW_BACKEND_MAC),
            "to the backend, from the gateway's backend side: learned from the SYN-ACK"
        );
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (GW_BACKEND_SIDE, snat_port, BACKEND, 3000)
        );
        assert_eq!(seen.payload, b"hello through XDP");

        let reply = Tcp {
            from: (BACKEND_MAC, BACKEND, 3000),
            to: (GW_BACKEND_MAC, GW_BACKEND_SIDE, snat_port),
            flags: "A",
            payload: b"and back",
        };
        let (action, out) = env.xdp(&reply.frame(), env.d0);
        assert_eq!(action, XDP_REDIRECT);
        let back = inspect(&out);
        assert!(back.checksums_ok, "{back:?}");
        assert_eq!(
            (back.eth_dst, back.eth_src),
            (CLIENT_MAC, GW_CLIENT_MAC),
            "back where the client's SYN came from"
        );
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (VIP, 9000, CLIENT, 40000)
        );

        assert_eq!(env.counter(counter::XDP_FORWARDED), 2);
        assert_eq!(env.counter(counter::FORWARDED), forwarded_before + 1);
        let (_, original) = env.original_entry(40000);
        assert_eq!(original.packets, 2, "the SYN (TC) and the data (XDP)");
    });
}

#[test]
fn udp_is_forwarded_by_xdp_and_a_zero_checksum_stays_zero() {
    with_xdp(XdpMode::Native, |env| {
        let to_vip = (GW_CLIENT_MAC, VIP, 9001);
        // The first datagram is admitted by the TC program; the reply teaches the original entry.
        let (action, out) = env
            .dp
            .run_frame_on(&udp_frame(env.client(5353), to_vip, b"one"), env.c0)
            .unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let snat_port = inspect(&out).sport;
        let from_backend = (BACKEND_MAC, BACKEND, 3000);
        let to_snat = (GW_BACKEND_MAC, GW_BACKEND_SIDE, snat_port);
        let (action, out) = env.xdp(&udp_frame(from_backend, to_snat, b"reply"), env.d0);
        assert_eq!(
            action, XDP_REDIRECT,
            "the reply entry knew the client's side"
        );
        let back = inspect(&out);
        assert!(back.checksums_ok && back.udp_checksum != 0, "{back:?}");
        assert_eq!(
            (back.eth_dst, back.src, back.dst),
            (CLIENT_MAC, VIP, CLIENT)
        );

        let (action, out) = env.xdp(&udp_frame(env.client(5353), to_vip, b"two"), env.c0);
        assert_eq!(action, XDP_REDIRECT);
        let seen = inspect(&out);
        assert!(seen.checksums_ok, "{seen:?}");
        assert_eq!(
            (seen.eth_dst, seen.dst, seen.dport),
            (BACKEND_MAC, BACKEND, 3000)
        );

        // No checksum (0) stays none.
        let mut no_sum = udp_frame(env.client(5353), to_vip, b"three");
        no_sum[14 + 20 + 6] = 0;
        no_sum[14 + 20 + 7] = 0;
        let (action, out) = env.xdp(&no_sum, env.c0);
        assert_eq!(action, XDP_REDIRECT);
        let seen = inspect(&out);
        assert_eq!(seen.udp_checksum, 0);
        assert!(seen.checksums_ok);
        assert_eq!(env.counter(counter::XDP_FORWARDED), 3);
    });
}

/// A TCP data frame whose checksum field holds what a `CHECKSUM_PARTIAL` sender leaves for the device: the
/// folded pseudo-header sum.
fn with_partial_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let l4_len = (frame.len() - 34) as u32;
    let mut sum: u32 = 0;
    for w in frame[26..34].chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    sum += 6 + l4_len;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[50..52].copy_from_slice(&(sum as u16).to_be_bytes());
    frame
}

#[test]
fn a_partial_checksum_is_completed_in_native_mode() {
    with_xdp(XdpMode::Native, |env| {
        let snat_port = env.open_tcp(40001);
        // Odd length, longer than several 64-byte chunks: every part of the summing loop runs.
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        let data = Tcp {
            from: env.client(40001),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: &payload,
        };
        let partial = with_partial_checksum(data.frame());
        assert!(
            !inspect(&partial).checksums_ok,
            "the seed is not a checksum"
        );
        let (action, out) = env.xdp(&partial, env.c0);
        assert_eq!(action, XDP_REDIRECT);
        let seen = inspect(&out);
        assert!(seen.checksums_ok, "completed and NATed: {seen:?}");
        assert_eq!((seen.dst, seen.sport), (BACKEND, snat_port));
        assert_eq!(seen.payload, payload);
        assert_eq!(env.counter(counter::XDP_CHECKSUM_COMPLETED), 1);
    });
}

#[test]
fn generic_mode_leaves_a_partial_checksum_to_tc_and_forwards_complete_ones() {
    with_xdp(XdpMode::Generic, |env| {
        env.open_tcp(40002);
        let data = Tcp {
            from: env.client(40002),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: b"partial",
        };
        let partial = with_partial_checksum(data.frame());
        let (action, out) = env.xdp(&partial, env.c0);
        assert_eq!((action, &out), (XDP_PASS, &partial));
        let (action, out) = env.xdp(&data.frame(), env.c0);
        assert_eq!(action, XDP_REDIRECT);
        assert!(inspect(&out).checksums_ok);
        assert_eq!(env.counter(counter::XDP_CHECKSUM_COMPLETED), 0);
        assert_eq!(env.counter(counter::XDP_FORWARDED), 1);
    });
}

#[test]
fn packets_the_tc_program_must_handle_pass_unmodified() {
    with_xdp(XdpMode::Native, |env| {
        let to_vip = (GW_CLIENT_MAC, VIP, 9000);
        let data = |port, flags: &'static str| Tcp {
            from: (CLIENT_MAC, CLIENT, port),
            to: to_vip,
            flags,
            payload: b"x",
        };
        // Before the backend answered, the original entry knows no Ethernet addresses (no neighbour): TC.
        let syn = data(40010, "S").frame();
        env.dp.run_frame_on(&syn, env.c0).unwrap();
        let mut must_pass = vec![("no neighbour learned yet", data(40010, "A").frame())];
        env.open_tcp(40011);
        must_pass.extend([
            ("no flow", data(40099, "A").frame()),
            ("new flow (SYN)", data(40098, "S").frame()),
            ("SYN of an established flow", data(40011, "S").frame()),
            ("FIN", data(40011, "FA").frame()),
            ("RST", data(40011, "R").frame()),
        ]);
        let good = data(40011, "A").frame();
        let mut options = good.clone();
        // IHL 6 with 4 bytes of options (NOPs); lengths and checksums stay consistent enough for the parser.
        options.splice(34..34, [1u8, 1, 1, 1]);
        options[14] = 0x46;
        let total = (options.len() - 14) as u16;
        options[16..18].copy_from_slice(&total.to_be_bytes());
        let mut more_fragments = good.clone();
        more_fragments[20] |= 0x20;
        let mut fragment_offset = good.clone();
        fragment_offset[21] = 8;
        let mut icmp = good.clone();
        icmp[23] = 1;
        let truncated = good[..14 + 20 + 12].to_vec();
        let mut long_tot_len = good.clone();
        long_tot_len[16..18].copy_from_slice(&2000u16.to_be_bytes());
        let mut bad_doff = good.clone();
        bad_doff[14 + 20 + 12] = 0x20;
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        must_pass.extend([
            ("IPv4 options", options),
            ("more fragments", more_fragments),
            ("fragment offset", fragment_offset),
            ("ICMP", icmp),
            ("truncated TCP header", truncated),
            ("total length beyond the frame", long_tot_len),
            ("TCP data offset below 5", bad_doff),
            ("not IPv4", ipv6),
            ("too short for any header", vec![0u8; 20]),
        ]);
        for (what, frame) in &must_pass {
            let (action, out) = env.xdp(frame, env.c0);
            assert_eq!(action, XDP_PASS, "{what}");
            assert_eq!(&out, frame, "{what}: passed unmodified");
        }
        assert_eq!(env.counter(counter::XDP_FORWARDED), 0);

        // A TLS splice flow, and a flow whose egress interface is not in XDP mode (loopback): TC.
        let (key, entry) = env.original_entry(40011);
        let mut flows = env.flows_map();
        let spliced = Flow {
            splice: splice::SPLICED,
            ..entry
        };
        flows.insert(key, spliced, 0).unwrap();
        let (action, out) = env.xdp(&good, env.c0);
        assert_eq!((action, &out), (XDP_PASS, &good), "TLS splice flow");
        let elsewhere = Flow {
            out_ifindex: 1,
            ..entry
        };
        flows.insert(key, elsewhere, 0).unwrap();
        let (action, out) = env.xdp(&good, env.c0);
        assert_eq!((action, &out), (XDP_PASS, &good), "egress not in XDP mode");
        flows.insert(key, entry, 0).unwrap();
        let (action, _) = env.xdp(&good, env.c0);
        assert_eq!(action, XDP_REDIRECT, "the same packet, entry restored");
    });
}

#[test]
fn a_packet_too_big_for_the_egress_interface_is_left_to_tc() {
    with_xdp(XdpMode::Native, |env| {
        env.open_tcp(40020);
        // The backend side gets a small MTU (we are inside the namespace: plain `ip` applies here).
        let status = std::process::Command::new("ip")
            .args(["link", "set", "d0", "mtu", "1000"])
            .status()
            .unwrap();
        assert!(status.success());
        let big = Tcp {
            from: env.client(40020),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: &[7u8; 1100],
        }
        .frame();
        let (action, out) = env.xdp(&big, env.c0);
        assert_eq!((action, &out), (XDP_PASS, &big));
        let small = Tcp {
            from: env.client(40020),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: &[7u8; 900],
        }
        .frame();
        assert_eq!(env.xdp(&small, env.c0).0, XDP_REDIRECT);
    });
}

#[test]
fn a_changed_neighbour_is_learned_again_within_a_second() {
    with_xdp(XdpMode::Native, |env| {
        let snat_port = env.open_tcp(40030);
        let data = Tcp {
            from: env.client(40030),
            to: (GW_CLIENT_MAC, VIP, 9000),
            flags: "A",
            payload: b"d",
        }
        .frame();
        assert_eq!(inspect(&env.xdp(&data, env.c0).1).eth_dst, BACKEND_MAC);
        // The backend moved to another MAC address; its packets come from there now.
        let moved = [2, 0xb1, 0, 0, 0, 0x77];
        std::thread::sleep(Duration::from_millis(600));
        let reply = Tcp {
            from: (moved, BACKEND, 3000),
            to: (GW_BACKEND_MAC, GW_BACKEND_SIDE, snat_port),
            flags: "A",
            payload: b"r",
        };
        assert_eq!(env.xdp(&reply.frame(), env.d0).0, XDP_REDIRECT);
        assert_eq!(
            inspect(&env.xdp(&data, env.c0).1).eth_dst,
            moved,
            "the client's next packet goes to the backend's new address"
        );
    });
}
