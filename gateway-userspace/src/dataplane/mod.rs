//! The kernel data plane: loads the embedded eBPF object with its maps pinned under a versioned bpffs path,
//! attaches the TC program to the gateway's interfaces, and the XDP fast path to those in XDP mode ([`links`]:
//! pinned links are adopted, so a restart never leaves an interface without a program), and turns the [`Ir`]
//! into map entries with one atomic generation swap.
//!
//! An object's path into the kernel: `ListenerKind::Tcp(route)` -> [`Dataplane::apply`] -> `LISTENERS`
//! (address, port, protocol) -> `MAGLEV` table of the route -> `BACKENDS` entries.
mod bpffs;
pub mod conntrack;
pub mod links;
pub mod maglev;
pub mod netif;

pub use links::XdpMode;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, ProgramArray},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use gateway_common::{
    clienthello::{LongCapture, SniKey},
    counter, listener_kind, served_ports,
    tls::Handshake,
    Backend, BackendKey, Config, Flow, FlowKey, ListenerKey, ListenerValue, MaglevTable, RouteKey,
    ABI_VERSION, CONFIG_KEY, PROTO_TCP, PROTO_UDP,
};
use tracing::{debug, info, warn};

use crate::ir::{self, Ir, ListenerKind};

/// The compiled eBPF object, embedded so that one file deploys (see build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GATEWAY_EBPF_OBJECT"));

/// The TLS handshake programs, in the order of their slots in `TLS_PROGRAMS` (see gateway-ebpf/src/tls).
const TLS_PROGRAMS: [&str; 2] = ["tls_listener", "tls_flow"];

/// A TC program of the object by name.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| DataplaneError::Load(format!("{name}: {e}")))
}

/// Name of the TC program in the object.
const PROGRAM: &str = "gateway_ingress";

/// Errors of the kernel data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object could not be loaded; for verifier rejections the message carries the verifier log.
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    /// bpffs is missing or a pin could not be created or opened.
    #[error("bpffs: {0}")]
    Bpffs(String),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Attaching to an interface failed.
    #[error("attaching to interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
    /// Reading interfaces or routes failed.
    #[error("network interfaces: {0}")]
    Netif(String),
    /// No route to a backend endpoint.
    #[error("no route to backend endpoint {0}")]
    NoRoute(String),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// Settings of the kernel data plane (from `gateway run` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Root of the agent's pins; maps and links live under `<root>/v{ABI_VERSION}/`.
    pub bpffs_root: PathBuf,
    /// Attach only to these interfaces (empty: every interface that is up, except loopback).
    pub interfaces: Vec<String>,
    /// Interfaces in XDP mode and how the XDP program runs on each; the others are TC only.
    pub xdp: BTreeMap<String, XdpMode>,
    /// SNAT source port range, inclusive.
    pub snat_ports: (u16, u16),
    /// Capacity of the conntrack map (entries; each flow takes two).
    pub conntrack_entries: u32,
    pub timeouts: conntrack::Timeouts,
    /// Capacity of the kernel TLS passthrough's table of connections between SYN and splice (4 KiB each; a
    /// first flight longer than the entry's buffer takes a 32 KiB long capture too).
    pub tls_pending: u32,
    /// Of those, how many one client address may hold (0: no limit); a SYN beyond it is reset.
    pub tls_pending_per_source: u32,
    /// How long a kernel TLS passthrough connection may take from its SYN to the backend acknowledging its
    /// ClientHello; older handshakes are removed (the client's next segment is then reset).
    pub tls_handshake_timeout: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bpffs_root: PathBuf::from("/sys/fs/bpf/ebpf-gateway"),
            interfaces: Vec::new(),
            xdp: BTreeMap::new(),
            snat_ports: (10000, 32767),
            conntrack_entries: 262_144,
            timeouts: conntrack::Timeouts::default(),
            tls_pending: 4096,
            tls_pending_per_source: 256,
            tls_handshake_timeout: std::time::Duration::from_secs(15),
        }
    }
}

/// What one [`Dataplane::apply`] programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub generation: u32,
    pub listeners: usize,
    pub routes: usize,
    pub backends: usize,
    /// Problems that made part of the configuration unservable (e.g. an endpoint with no route).
    pub warnings: Vec<String>,
}

/// Stable numeric ids for names, so counters and conntrack entries keep meaning across generations.
#[derive(Default)]
struct Ids {
    by_name: StdHashMap<String, u32>,
}

impl Ids {
    fn get(&mut self, name: String) -> u32 {
        let next = self.by_name.len() as u32 + 1; // 0 means "none" in every map.
        *self.by_name.entry(name).or_insert(next)
    }
}

/// The loaded programs and their maps.
pub struct Dataplane {
    /// Keeps the program (and links not yet pinned) alive.
    ebpf: Ebpf,
    settings: Settings,
    pin_dir: PathBuf,
    config: Array<MapData, Config>,
    listeners: HashMap<MapData, ListenerKey, ListenerValue>,
    maglev: HashMap<MapData, RouteKey, MaglevTable>,
    backends: HashMap<MapData, BackendKey, Backend>,
    /// SNI tables of TLS passthrough listeners (used by the in-kernel passthrough path and its probe).
    sni_routes: HashMap<MapData, SniKey, u32>,
    flows: HashMap<MapData, FlowKey, Flow>,
    /// Kernel TLS passthrough connections between SYN and splice.
    tls_handshakes: HashMap<MapData, FlowKey, Handshake>,
    /// First flights of those handshakes that outgrew the entry's own buffer.
    tls_long_captures: HashMap<MapData, FlowKey, LongCapture>,
    /// Handshakes in progress per client address (kept by the kernel, reconciled at every sweep).
    tls_pending_sources: HashMap<MapData, u32, i64>,
    /// When each pending handshake started, as read from its entry (see [`Dataplane::expire_handshakes`]).
    handshakes_started: StdHashMap<FlowKey, u64>,
    counters: PerCpuArray<MapData, u64>,
    /// The `SERVED_PORTS` bitmap, and the words it holds now.
    served_ports: Array<MapData, u64>,
    served_words: Vec<u64>,
    /// (protocol, port) of the listeners of every generation in `LISTENERS`, by generation: until a generation
    /// is collected, a packet that read it may still admit a flow on its ports.
    listener_ports: BTreeMap<u32, BTreeSet<(u8, u16)>>,
    generation: u32,
    links: links::LinkPins,
    /// Interfaces the program is attached to: name -> ifindex.
    attached: BTreeMap<String, u32>,
    /// Interfaces with the XDP program in front of the TC program: name -> (ifindex, mode). Their ifindexes are
    /// the keys of `xdp_egress`.
    xdp_attached: BTreeMap<String, (u32, XdpMode)>,
    /// The egress interfaces the XDP program may redirect to (the `XDP_EGRESS` devmap).
    xdp_egress: DevMapHash<MapData>,
    /// Whether XDP links and devmap entries a previous agent left for interfaces not in XDP mode now were
    /// removed (on the first interface scan).
    xdp_swept: bool,
    listener_ids: Ids,
    route_ids: Ids,
    backend_ids: Ids,
    /// Final counts of expired flows, by listener, route and backend.
    closed: conntrack::FlowTotals,
}

/// What a sweep of the kernel TLS passthrough handshakes found ([`Dataplane::expire_handshakes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeSweep {
    /// Handshakes still in progress.
    pub pending: usize,
    /// Handshakes removed for taking longer than the timeout.
    pub expired: usize,
    /// Long captures held after the sweep (first flights that outgrew the handshake entry).
    pub long_captures: usize,
}

/// Names of the ids the kernel counts by.
#[derive(Clone, Debug, Default)]
pub struct IdNames {
    pub listeners: StdHashMap<u32, String>,
    pub routes: StdHashMap<u32, String>,
    pub backends: StdHashMap<u32, String>,
}

impl Dataplane {
    /// Loads the object, adopting maps already pinned by a previous agent (their flows and configuration keep
    /// serving until the first [`apply`](Self::apply) replaces the configuration).
    pub fn load(settings: Settings) -> Result<Self, DataplaneError> {
        let pin_dir = settings.bpffs_root.join(format!("v{ABI_VERSION}"));
        bpffs::ensure_dir(&pin_dir)?;
        let links = links::LinkPins::new(&pin_dir)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| DataplaneError::Load(format!("{what}: {e}")))?
            as u32;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries("FLOWS", settings.conntrack_entries)
            .map_max_entries("HELLO_SCRATCH", cpus)
            .map_max_entries("TLS_HANDSHAKES", settings.tls_pending.max(1))
            .map_max_entries("TLS_LONG_CAPTURES", settings.tls_pending.max(1))
            .map_max_entries("TLS_PENDING_SOURCES", settings.tls_pending.max(1))
            .load(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Load(format!("{e:#}")))?;
        // The TLS handshake programs are entered by tail call from the ingress program: load them and put them
        // in its program array first, so the ingress program never runs with an empty slot.
        for (slot, name) in TLS_PROGRAMS.iter().enumerate() {
            let fd = {
                let program = classifier(&mut ebpf, name)?;
                program
                    .load()
                    .map_err(|e| DataplaneError::Load(verifier_message(name, &e)))?;
                program
                    .fd()
                    .map_err(|e| DataplaneError::Load(format!("{name}: {e}")))?
                    .try_clone()
                    .map_err(|e| DataplaneError::Load(format!("{name}: {e}")))?
            };
            let mut slots: ProgramArray<&mut MapData> = ebpf
                .map_mut("TLS_PROGRAMS")
                .ok_or_else(|| DataplaneError::Load("map TLS_PROGRAMS missing".into()))?
                .try_into()
                .map_err(map_err("TLS_PROGRAMS"))?;
            slots
                .set(slot as u32, &fd, 0)
                .map_err(map_err("TLS_PROGRAMS"))?;
        }
        classifier(&mut ebpf, PROGRAM)?
            .load()
            .map_err(|e| DataplaneError::Load(verifier_message(PROGRAM, &e)))?;
        // The XDP programs of the modes in use, verified before anything is attached.
        for mode in settings.xdp.values() {
            links::xdp_program(&mut ebpf, *mode)?;
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| DataplaneError::Load(format!("map {name} missing from the object")))
        };
        let config: Array<MapData, Config> = take(&mut ebpf, "CONFIG")?
            .try_into()
            .map_err(map_err("CONFIG"))?;
        let listeners: HashMap<MapData, ListenerKey, ListenerValue> = take(&mut ebpf, "LISTENERS")?
            .try_into()
            .map_err(map_err("LISTENERS"))?;
        let maglev = take(&mut ebpf, "MAGLEV")?
            .try_into()
            .map_err(map_err("MAGLEV"))?;
        let sni_routes = take(&mut ebpf, "SNI_ROUTES")?
            .try_into()
            .map_err(map_err("SNI_ROUTES"))?;
        let backends = take(&mut ebpf, "BACKENDS")?
            .try_into()
            .map_err(map_err("BACKENDS"))?;
        let flows = take(&mut ebpf, "FLOWS")?
            .try_into()
            .map_err(map_err("FLOWS"))?;
        let counters = take(&mut ebpf, "COUNTERS")?
            .try_into()
            .map_err(map_err("COUNTERS"))?;
        let tls_handshakes = take(&mut ebpf, "TLS_HANDSHAKES")?
            .try_into()
            .map_err(map_err("TLS_HANDSHAKES"))?;
        let tls_long_captures = take(&mut ebpf, "TLS_LONG_CAPTURES")?
            .try_into()
            .map_err(map_err("TLS_LONG_CAPTURES"))?;
        let tls_pending_sources = take(&mut ebpf, "TLS_PENDING_SOURCES")?
            .try_into()
            .map_err(map_err("TLS_PENDING_SOURCES"))?;
        let xdp_egress = take(&mut ebpf, "XDP_EGRESS")?
            .try_into()
            .map_err(map_err("XDP_EGRESS"))?;
        let served_ports: Array<MapData, u64> = take(&mut ebpf, "SERVED_PORTS")?
            .try_into()
            .map_err(map_err("SERVED_PORTS"))?;
        // Adopted maps: the bitmap as a previous agent left it, and the ports of its listeners.
        let served_words = (0..served_ports::WORDS)
            .map(|i| served_ports.get(&i, 0))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(map_err("SERVED_PORTS"))?;
        let mut listener_ports: BTreeMap<u32, BTreeSet<(u8, u16)>> = BTreeMap::new();
        for key in listeners.keys() {
            let key: ListenerKey = key.map_err(map_err("LISTENERS"))?;
            listener_ports
                .entry(key.generation)
                .or_default()
                .insert((key.proto, u16::from_be(key.port)));
        }
        let generation = config
            .get(&CONFIG_KEY, 0)
            .map_err(map_err("CONFIG"))?
            .generation;
        info!(pins = %pin_dir.display(), generation, "eBPF data plane loaded");
        Ok(Self {
            ebpf,
            settings,
            pin_dir,
            config,
            listeners,
            maglev,
            backends,
            sni_routes,
            flows,
            tls_handshakes,
            tls_long_captures,
            tls_pending_sources,
            handshakes_started: StdHashMap::new(),
            counters,
            served_ports,
            served_words,
            listener_ports,
            generation,
            links,
            attached: BTreeMap::new(),
            xdp_attached: BTreeMap::new(),
            xdp_egress,
            xdp_swept: false,
            listener_ids: Ids::default(),
            route_ids: Ids::default(),
            backend_ids: Ids::default(),
            closed: conntrack::FlowTotals::default(),
        })
    }

    /// Attaches to interfaces that appeared since the last call and forgets those that vanished; puts the XDP
    /// fast path in front on interfaces in XDP mode. A pinned link left by a previous agent is taken over with an
    /// atomic program replacement, so the interface is never without a program and never has two.
    pub fn sync_interfaces(&mut self) -> Result<Vec<String>, DataplaneError> {
        let wanted = netif::candidate_interfaces(&self.settings.interfaces)?;
        let mut newly = Vec::new();
        let present: BTreeMap<String, u32> =
            wanted.iter().map(|i| (i.name.clone(), i.index)).collect();
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, index)| present.get(*name) != Some(index))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.attached.remove(&name);
            let _ = std::fs::remove_file(self.links.tc(&name));
            self.leave_xdp(&name);
            info!(interface = %name, "interface gone");
        }
        for iface in wanted {
            if !self.attached.contains_key(&iface.name) {
                let how = links::attach_tc(
                    &mut self.ebpf,
                    PROGRAM,
                    &self.links.tc(&iface.name),
                    &iface.name,
                )?;
                info!(interface = %iface.name, how = how.describe(), "TC ingress program in place");
                self.attached.insert(iface.name.clone(), iface.index);
                newly.push(iface.name.clone());
            }
            match self.settings.xdp.get(&iface.name).copied() {
                Some(mode) if self.xdp_attached.get(&iface.name) != Some(&(iface.index, mode)) => {
                    self.enter_xdp(&iface.name, iface.index, mode)?;
                }
                Some(_) => {}
                None if self.xdp_attached.contains_key(&iface.name) => self.leave_xdp(&iface.name),
                None => {}
            }
        }
        if !self.xdp_swept {
            self.sweep_xdp();
        }
        Ok(newly)
    }

    /// Puts the XDP program in front of the TC program on `interface` and lets the XDP path redirect to it.
    fn enter_xdp(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(), DataplaneError> {
        for other in XdpMode::ALL.into_iter().filter(|m| *m != mode) {
            // An interface takes one XDP mode: the other mode's link goes first (the TC program carries the
            // traffic meanwhile).
            if links::detach_xdp(&self.links, interface, other) {
                info!(
                    interface,
                    mode = other.name(),
                    "XDP program of the previous mode removed"
                );
            }
        }
        let how = links::attach_xdp(&mut self.ebpf, &self.links, interface, mode)?;
        self.xdp_egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::Attach {
                interface: interface.to_string(),
                reason: format!("XDP_EGRESS: {e}"),
            })?;
        self.xdp_attached
            .insert(interface.to_string(), (ifindex, mode));
        info!(
            interface,
            mode = mode.name(),
            how = how.describe(),
            "XDP program in place"
        );
        Ok(())
    }

    /// Takes `interface` out of XDP mode: no XDP redirect goes to it any more, then its XDP link is removed.
    fn leave_xdp(&mut self, interface: &str) {
        if let Some((ifindex, _)) = self.xdp_attached.remove(interface) {
            let _ = self.xdp_egress.remove(ifindex);
        }
        for mode in XdpMode::ALL {
            if links::detach_xdp(&self.links, interface, mode) {
                info!(interface, mode = mode.name(), "XDP program removed");
            }
        }
    }

    /// After the first scan: removes what a previous agent left for interfaces that are not in XDP mode now
    /// (their pinned XDP links, their devmap entries), so switching an interface back to TC mode across a restart
    /// leaves exactly one program on it.
    fn sweep_xdp(&mut self) {
        for (interface, mode) in self.links.pinned_xdp() {
            if self.xdp_attached.get(&interface).map(|(_, m)| *m) != Some(mode)
                && links::detach_xdp(&self.links, &interface, mode)
            {
                info!(
                    interface,
                    mode = mode.name(),
                    "XDP program left by a previous agent removed"
                );
            }
        }
        let ours: std::collections::HashSet<u32> = self
            .xdp_attached
            .values()
            .map(|(index, _)| *index)
            .collect();
        let stale: Vec<u32> = self
            .xdp_egress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ours.contains(k))
            .collect();
        for ifindex in stale {
            let _ = self.xdp_egress.remove(ifindex);
        }
        self.xdp_swept = true;
    }

    /// Interfaces in XDP mode, with their mode.
    pub fn xdp_interfaces(&self) -> Vec<(String, XdpMode)> {
        self.xdp_attached
            .iter()
            .map(|(name, (_, mode))| (name.clone(), *mode))
            .collect()
    }

    /// Interfaces the program is attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    /// Programs the whole [`Ir`] as a new generation, then makes it current with one store.
    pub fn apply(&mut self, ir: &Ir) -> Result<ApplyReport, DataplaneError> {
        let next = self.generation.wrapping_add(1).max(1);
        let mut report = ApplyReport {
            generation: next,
            ..Default::default()
        };
        let mut ports = BTreeSet::new();
        for gateway in &ir.gateways {
            let gw_name = format!("{}/{}", gateway.gateway.namespace, gateway.gateway.name);
            for listener in &gateway.listeners {
                let (proto, route, kind) = match &listener.kind {
                    ListenerKind::Tcp(route) => (PROTO_TCP, route, listener_kind::L4),
                    ListenerKind::Udp(route) => (PROTO_UDP, route, listener_kind::L4),
                    ListenerKind::TlsPassthrough(table) => {
                        self.write_sni_table(next, &gw_name, &listener.name, table, &mut report)?;
                        if !table.kernel {
                            // Served by the userspace proxy through the local stack.
                            continue;
                        }
                        (PROTO_TCP, &None, listener_kind::TLS_KERNEL)
                    }
                    // HTTP listeners are served by the local stack.
                    ListenerKind::Http(_) => continue,
                };
                let listener_id = self
                    .listener_ids
                    .get(format!("{gw_name}/{}", listener.name));
                let route_id = match route {
                    Some(route) => {
                        let r = &route.route;
                        let id = self.route_ids.get(format!(
                            "{gw_name}/{}/{}/{}/{}",
                            listener.name, r.kind, r.namespace, r.name
                        ));
                        let table = self.maglev_table(next, route, &mut report)?;
                        self.maglev
                            .insert(
                                RouteKey {
                                    generation: next,
                                    route_id: id,
                                },
                                table,
                                0,
                            )
                            .map_err(map_err("MAGLEV"))?;
                        report.routes += 1;
                        id
                    }
                    None => 0,
                };
                for addr in &gateway.addresses {
                    let IpAddr::V4(v4) = addr else {
                        report.warnings.push(format!(
                            "{gw_name}: IPv6 address {addr} is not served by the kernel path"
                        ));
                        continue;
                    };
                    let key = ListenerKey {
                        generation: next,
                        addr: u32::from(*v4).to_be(),
                        port: listener.port.to_be(),
                        proto,
                        _pad: 0,
                    };
                    let value = ListenerValue {
                        listener_id,
                        route_id,
                        kind,
                        _pad: [0; 3],
                    };
                    self.listeners
                        .insert(key, value, 0)
                        .map_err(map_err("LISTENERS"))?;
                    ports.insert((proto, listener.port));
                    report.listeners += 1;
                }
            }
        }
        // The new listeners' ports are served before the generation that has them is: ports only leave the
        // bitmap at a conntrack sweep ([`Self::expire_flows`]), once no flow and no live generation has them.
        self.listener_ports.insert(next, ports);
        let mut words = self.listener_port_words();
        for (word, served) in words.iter_mut().zip(&self.served_words) {
            *word |= served;
        }
        self.write_served_ports(words)?;
        let (snat_port_min, snat_port_max) = self.settings.snat_ports;
        self.config
            .set(
                CONFIG_KEY,
                Config {
                    generation: next,
                    snat_port_min,
                    snat_port_max,
                    tls_pending_per_source: self.settings.tls_pending_per_source,
                },
                0,
            )
            .map_err(map_err("CONFIG"))?;
        self.generation = next;
        for w in &report.warnings {
            warn!("{w}");
        }
        info!(
            generation = next,
            listeners = report.listeners,
            routes = report.routes,
            backends = report.backends,
            "configuration applied"
        );
        Ok(report)
    }

    /// Builds a route's Maglev table for generation `generation`, writing its backends.
    fn maglev_table(
        &mut self,
        generation: u32,
        route: &ir::L4Route,
        report: &mut ApplyReport,
    ) -> Result<MaglevTable, DataplaneError> {
        self.maglev_table_for(generation, &route.backends, report)
    }

    /// Builds the Maglev table over `backends` for generation `generation`, writing their endpoints.
    fn maglev_table_for(
        &mut self,
        generation: u32,
        backends: &[ir::Backend],
        report: &mut ApplyReport,
    ) -> Result<MaglevTable, DataplaneError> {
        let mut entries = Vec::new();
        for backend in backends {
            // Weights are split evenly over a backend's endpoints; integer scaling keeps the ratios exact enough.
            let scaled = backend.weight as u64 * 1_000_000;
            let reachable: Vec<(SocketAddr, netif::Path)> = if backend.valid {
                backend
                    .endpoints
                    .iter()
                    .filter_map(|ep| match ep {
                        SocketAddr::V4(v4) => match netif::path_to(*v4) {
                            Ok(path) => Some((*ep, path)),
                            Err(e) => {
                                report
                                    .warnings
                                    .push(format!("backend {}: {e}", backend.name));
                                None
                            }
                        },
                        SocketAddr::V6(_) => {
                            report.warnings.push(format!(
                                "backend {}: IPv6 endpoint {ep} skipped",
                                backend.name
                            ));
                            None
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if reachable.is_empty() {
                // An invalid backend, or one with no ready endpoint: its share of flows is rejected.
                entries.push(maglev::Entry {
                    name: format!("reject:{}", backend.name),
                    id: 0,
                    weight: scaled,
                });
                continue;
            }
            let per_endpoint = scaled / reachable.len() as u64;
            for (ep, path) in reachable {
                let SocketAddr::V4(v4) = ep else { continue };
                let id = self.backend_ids.get(ep.to_string());
                let value = Backend {
                    addr: u32::from(*v4.ip()).to_be(),
                    snat_addr: u32::from(path.source).to_be(),
                    ifindex: path.ifindex,
                    port: v4.port().to_be(),
                    _pad: 0,
                };
                self.backends
                    .insert(
                        BackendKey {
                            generation,
                            backend_id: id,
                        },
                        value,
                        0,
                    )
                    .map_err(map_err("BACKENDS"))?;
                report.backends += 1;
                entries.push(maglev::Entry {
                    name: ep.to_string(),
                    id,
                    weight: per_endpoint,
                });
            }
        }
        let slots = maglev::build(&entries);
        let mut table = MaglevTable {
            slots: [0; gateway_common::MAGLEV_TABLE_SIZE],
        };
        table.slots.copy_from_slice(&slots);
        Ok(table)
    }

    /// Writes a TLS passthrough listener's SNI table for generation `generation`, and for a kernel-served
    /// listener each route's Maglev table. The IR lists routes in lookup order, so the first entry for a name
    /// wins, as in the userspace table.
    fn write_sni_table(
        &mut self,
        generation: u32,
        gw_name: &str,
        listener: &str,
        table: &ir::TlsPassthrough,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        use gateway_common::clienthello::{sni_kind, MAX_NAME};
        let listener_id = self.listener_ids.get(format!("{gw_name}/{listener}"));
        for entry in &table.routes {
            let r = &entry.route;
            let route_id = self.route_ids.get(format!(
                "{gw_name}/{listener}/{}/{}/{}",
                r.kind, r.namespace, r.name
            ));
            let key = RouteKey {
                generation,
                route_id,
            };
            if table.kernel && self.maglev.get(&key, 0).is_err() {
                let maglev = self.maglev_table_for(generation, &entry.backends, report)?;
                self.maglev
                    .insert(key, maglev, 0)
                    .map_err(map_err("MAGLEV"))?;
                report.routes += 1;
            }
            let host = entry.hostname.to_ascii_lowercase();
            let (kind, name) = match host.strip_prefix("*.") {
                _ if host == "*" => (sni_kind::ANY, ""),
                Some(suffix) => (sni_kind::WILDCARD, suffix),
                None => (sni_kind::EXACT, host.as_str()),
            };
            if name.len() >= MAX_NAME {
                continue;
            }
            let mut key = SniKey {
                generation,
                listener_id,
                kind,
                len: name.len() as u32,
                name: [0; MAX_NAME],
            };
            key.name[..name.len()].copy_from_slice(name.as_bytes());
            if self.sni_routes.get(&key, 0).is_err() {
                self.sni_routes
                    .insert(key, route_id, 0)
                    .map_err(map_err("SNI_ROUTES"))?;
            }
        }
        Ok(())
    }

    /// The id of listener `listener` of Gateway `namespace/name`, once it has been programmed.
    pub fn listener_id(&self, gateway: &ir::ObjectRef, listener: &str) -> Option<u32> {
        self.listener_ids
            .by_name
            .get(&format!(
                "{}/{}/{listener}",
                gateway.namespace, gateway.name
            ))
            .copied()
    }

    /// Removes configuration entries of generations other than the current one. Call it a moment after
    /// [`apply`](Self::apply), once packets that read the previous generation have finished.
    pub fn collect_old_generations(&mut self) -> Result<usize, DataplaneError> {
        let current = self.generation;
        let mut removed = 0;
        let old: Vec<ListenerKey> = self
            .listeners
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != current)
            .collect();
        for k in old {
            self.listeners.remove(&k).map_err(map_err("LISTENERS"))?;
            removed += 1;
        }
        let old: Vec<RouteKey> = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != current)
            .collect();
        for k in old {
            self.maglev.remove(&k).map_err(map_err("MAGLEV"))?;
            removed += 1;
        }
        let old: Vec<BackendKey> = self
            .backends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != current)
            .collect();
        for k in old {
            self.backends.remove(&k).map_err(map_err("BACKENDS"))?;
            removed += 1;
        }
        let old: Vec<SniKey> = self
            .sni_routes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation != current)
            .collect();
        for k in old {
            self.sni_routes.remove(&k).map_err(map_err("SNI_ROUTES"))?;
            removed += 1;
        }
        self.listener_ports
            .retain(|generation, _| *generation == current);
        debug!(removed, "old generations collected");
        Ok(removed)
    }

    /// Current values of the kernel's counters (summed over CPUs), indexed by `gateway_common::counter`.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], DataplaneError> {
        read_counters(&self.counters)
    }

    /// A second handle on the pinned counters, for readers outside the agent loop (the metrics endpoint reads
    /// the kernel's counters at scrape time).
    pub fn open_counters(&self) -> Result<KernelCounters, DataplaneError> {
        let data = MapData::from_pin(self.pin_dir.join("COUNTERS")).map_err(map_err("COUNTERS"))?;
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(map_err("COUNTERS"))?;
        let data =
            MapData::from_pin(self.pin_dir.join("TLS_REJECTS")).map_err(map_err("TLS_REJECTS"))?;
        let tls_rejects = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(map_err("TLS_REJECTS"))?;
        Ok(KernelCounters { map, tls_rejects })
    }

    /// Removes kernel TLS passthrough handshakes older than the handshake timeout, with their long captures
    /// and the conntrack entries of those that had reached a backend, and long captures whose handshake is gone.
    ///
    /// Each entry carries a 4 KiB capture buffer, so a value is read when its key is first seen (to learn when
    /// the handshake started) and again only once that start is older than the timeout (the key may belong to a
    /// newer handshake by then), not at every sweep.
    pub fn expire_handshakes(&mut self) -> Result<HandshakeSweep, DataplaneError> {
        let limit = self.settings.tls_handshake_timeout;
        let keys: Vec<FlowKey> = self.tls_handshakes.keys().filter_map(Result::ok).collect();
        let present: std::collections::HashSet<FlowKey> = keys.iter().copied().collect();
        self.handshakes_started.retain(|k, _| present.contains(k));
        let now = conntrack::now_ns();
        let (mut pending, mut expired) = (0, 0);
        // Handshakes left pending, by client address: what the kernel's per-address counts should say.
        let mut by_source: StdHashMap<u32, i64> = StdHashMap::new();
        for key in keys {
            let known = self.handshakes_started.get(&key).copied();
            if known.is_some_and(|started| now.saturating_sub(started) < limit.as_nanos() as u64) {
                pending += 1;
                *by_source.entry(key.src).or_default() += 1;
                continue;
            }
            let Ok(h) = self.tls_handshakes.get(&key, 0) else {
                self.handshakes_started.remove(&key); // finished meanwhile
                continue;
            };
            if now.saturating_sub(h.created_ns) < limit.as_nanos() as u64 {
                self.handshakes_started.insert(key, h.created_ns);
                pending += 1;
                *by_source.entry(key.src).or_default() += 1;
                continue;
            }
            let _ = self.tls_handshakes.remove(&key);
            let _ = self.tls_long_captures.remove(&key);
            if let Ok(original) = self.flows.get(&key, 0) {
                let _ = self.flows.remove(&original.peer_key(key.proto));
                let _ = self.flows.remove(&key);
            }
            self.handshakes_started.remove(&key);
            expired += 1;
        }
        if expired > 0 {
            debug!(expired, pending, "kernel TLS handshakes timed out");
        }
        // A long capture outlives its handshake only if the kernel lost a race with this sweep; its key is
        // read again just before removal, since a new handshake may have taken it meanwhile.
        let orphans: Vec<FlowKey> = self
            .tls_long_captures
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !present.contains(k))
            .collect();
        self.reconcile_pending_sources(by_source);
        let mut long_captures = self.tls_long_captures.keys().count();
        for key in orphans {
            if self.tls_handshakes.get(&key, 0).is_err()
                && self.tls_long_captures.remove(&key).is_ok()
            {
                long_captures = long_captures.saturating_sub(1);
            }
        }
        Ok(HandshakeSweep {
            pending,
            expired,
            long_captures,
        })
    }

    /// Rewrites the kernel's per-address counts of pending handshakes to `counts`, what this sweep left in the
    /// handshake table. The kernel counts a handshake in when it answers a SYN and out when the handshake ends;
    /// handshakes this agent expires are counted out here, and a count the kernel updated between this sweep's
    /// reads and writes is off by that much until the next sweep, never for longer.
    fn reconcile_pending_sources(&mut self, counts: StdHashMap<u32, i64>) {
        let stale: Vec<u32> = self
            .tls_pending_sources
            .keys()
            .filter_map(Result::ok)
            .filter(|src| !counts.contains_key(src))
            .collect();
        for src in stale {
            let _ = self.tls_pending_sources.remove(&src);
        }
        for (src, n) in counts {
            if self.tls_pending_sources.get(&src, 0).ok() != Some(n) {
                let _ = self.tls_pending_sources.insert(src, n, 0);
            }
        }
    }

    /// Expires conntrack entries whose timeouts have passed; returns the occupancy after the sweep and the
    /// traffic totals by listener, route and backend.
    /// The ports served shrink to those of live generations and of the flows left.
    pub fn expire_flows(&mut self) -> Result<conntrack::Sweep, DataplaneError> {
        let sweep = conntrack::sweep(
            &mut self.flows,
            self.settings.conntrack_entries,
            &self.settings.timeouts,
            &mut self.closed,
        )?;
        // A flow admitted since the sweep read the table is on a port of a live generation, which stays.
        let mut words = self.listener_port_words();
        set_port_bits(&mut words, sweep.flow_ports.iter().copied());
        self.write_served_ports(words)?;
        Ok(sweep)
    }

    /// `SERVED_PORTS` words with the ports of the listeners of every generation not yet collected.
    fn listener_port_words(&self) -> Vec<u64> {
        let mut words = vec![0; served_ports::WORDS as usize];
        set_port_bits(&mut words, self.listener_ports.values().flatten().copied());
        words
    }

    /// Writes the words of `SERVED_PORTS` that differ from `words`.
    fn write_served_ports(&mut self, words: Vec<u64>) -> Result<(), DataplaneError> {
        for (i, (new, old)) in words.iter().zip(&self.served_words).enumerate() {
            if new != old {
                self.served_ports
                    .set(i as u32, new, 0)
                    .map_err(map_err("SERVED_PORTS"))?;
            }
        }
        self.served_words = words;
        Ok(())
    }

    /// Names of listener, route and backend ids (`namespace/gateway/listener`, `namespace/gateway/listener/Kind/
    /// namespace/name`, `address:port`).
    pub fn id_names(&self) -> IdNames {
        let invert = |ids: &Ids| {
            ids.by_name
                .iter()
                .map(|(name, id)| (*id, name.clone()))
                .collect()
        };
        IdNames {
            listeners: invert(&self.listener_ids),
            routes: invert(&self.route_ids),
            backends: invert(&self.backend_ids),
        }
    }

    /// Runs the TC program once on `frame` (BPF_PROG_TEST_RUN) against the live maps, returning the TC action
    /// and the frame as the program left it. Redirects are reported, not performed. For tests and diagnostics.
    pub fn run_frame(&self, frame: &[u8]) -> Result<(i32, Vec<u8>), DataplaneError> {
        self.run_frame_on(frame, 0)
    }

    /// [`run_frame`](Self::run_frame) as if the frame arrived on the interface `ifindex` (0: the namespace's
    /// loopback).
    pub fn run_frame_on(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<(i32, Vec<u8>), DataplaneError> {
        use aya::programs::{TestRun, TestRunOptions};
        let program: &SchedClassifier = self
            .ebpf
            .program(PROGRAM)
            .expect("checked at load")
            .try_into()
            .expect("checked at load");
        // struct __sk_buff up to `ifindex` (offset 40), the only field set: the kernel gives the skb that device.
        let mut skb = [0u8; 44];
        skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len().max(128) + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: (ifindex != 0).then_some(&skb[..]),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Load(format!("BPF_PROG_TEST_RUN: {e}")))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value as i32, out))
    }

    /// Runs the XDP program of `mode` once on `frame` (BPF_PROG_TEST_RUN) as if it arrived on the interface
    /// `ingress_ifindex`, against the live maps; returns the XDP action and the frame as the program left it.
    /// Redirects are reported, not performed. For tests and diagnostics.
    pub fn run_xdp_frame(
        &mut self,
        frame: &[u8],
        ingress_ifindex: u32,
        mode: XdpMode,
    ) -> Result<(u32, Vec<u8>), DataplaneError> {
        use aya::programs::{TestRun, TestRunOptions};
        let program = links::xdp_program(&mut self.ebpf, mode)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len().max(128) + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Load(format!("BPF_PROG_TEST_RUN: {e}")))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Parses `hello` (a connection's first bytes) with the kernel's ClientHello parser, through the
    /// `clienthello_probe` program and BPF_PROG_TEST_RUN. For tests and diagnostics: it is how the kernel parser
    /// is checked against the userspace one.
    pub fn parse_clienthello_in_kernel(
        &mut self,
        hello: &[u8],
        listener_id: u32,
    ) -> Result<KernelVerdict, DataplaneError> {
        use aya::programs::{TestRun, TestRunOptions};
        use gateway_common::clienthello::{Capture, Verdict, CAPTURE_BUF};
        let mut capture = Box::new(Capture {
            len: 0,
            listener_id: 0,
            data: [0; CAPTURE_BUF],
        });
        let n = hello.len().min(CAPTURE_BUF);
        capture.data[..n].copy_from_slice(&hello[..n]);
        capture.len = hello.len().min(u32::MAX as usize) as u32;
        capture.listener_id = listener_id;
        {
            let map = self
                .ebpf
                .map_mut("HELLO_INPUT")
                .ok_or_else(|| DataplaneError::Load("HELLO_INPUT missing".into()))?;
            let mut input: Array<&mut MapData, Capture> =
                Array::try_from(map).map_err(map_err("HELLO_INPUT"))?;
            input.set(0, *capture, 0).map_err(map_err("HELLO_INPUT"))?;
        }
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut("clienthello_probe")
            .ok_or_else(|| DataplaneError::Load("clienthello_probe missing".into()))?
            .try_into()
            .map_err(|e| DataplaneError::Load(format!("{e}")))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| DataplaneError::Load(verifier_message("clienthello_probe", &e)))?;
        }
        let frame = [0u8; 64];
        program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Load(format!("BPF_PROG_TEST_RUN: {e}")))?;
        let map = self
            .ebpf
            .map("HELLO_VERDICT")
            .ok_or_else(|| DataplaneError::Load("HELLO_VERDICT missing".into()))?;
        let verdict: Array<&MapData, Verdict> =
            Array::try_from(map).map_err(map_err("HELLO_VERDICT"))?;
        let v = verdict.get(&0, 0).map_err(map_err("HELLO_VERDICT"))?;
        let name = String::from_utf8_lossy(&v.name[..(v.name_len as usize).min(v.name.len())])
            .into_owned();
        let route = self.id_names().routes.get(&v.route_id).cloned();
        Ok(KernelVerdict {
            outcome: v.outcome,
            name,
            records_len: v.records_len,
            route,
        })
    }

    /// Every conntrack entry (for tests, diagnostics and the admin endpoint).
    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// The current configuration generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// The kernel ClientHello parser's verdict (see `gateway_common::clienthello::outcome`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    pub outcome: u32,
    /// The normalised host_name when `outcome` is `SNI`.
    pub name: String,
    pub records_len: u32,
    /// The route the name selected in the listener's SNI table (`gateway/listener/Kind/namespace/name`).
    pub route: Option<String>,
}

impl KernelVerdict {
    /// The verdict in the corpus's words: `sni:<name>` or `reject:<reason>`.
    pub fn describe(&self) -> String {
        use gateway_common::clienthello::outcome;
        match self.outcome {
            outcome::SNI => format!("sni:{}", self.name),
            outcome::INCOMPLETE => "reject:truncated".into(),
            outcome::NOT_TLS => "reject:not_tls".into(),
            outcome::SSLV2 => "reject:sslv2".into(),
            outcome::MALFORMED => "reject:malformed".into(),
            outcome::OVERSIZED => "reject:oversized".into(),
            outcome::NO_SNI => "reject:no_sni".into(),
            outcome::AMBIGUOUS_SNI => "reject:ambiguous_sni".into(),
            outcome::INVALID_SNI => "reject:invalid_sni".into(),
            other => format!("reject:unknown-{other}"),
        }
    }
}

/// Read-only access to the kernel's packet counters.
pub struct KernelCounters {
    map: PerCpuArray<MapData, u64>,
    tls_rejects: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Current values, summed over CPUs, indexed by `gateway_common::counter`.
    pub fn read(&self) -> Result<[u64; counter::COUNT as usize], DataplaneError> {
        read_counters(&self.map)
    }

    /// ClientHellos the kernel parser rejected, by `gateway_common::clienthello::outcome`.
    pub fn read_tls_rejects(&self) -> Result<[u64; 16], DataplaneError> {
        let mut out = [0u64; 16];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .tls_rejects
                .get(&(i as u32), 0)
                .map_err(map_err("TLS_REJECTS"))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// Sets the bits of `ports` ((protocol, port) pairs) in `SERVED_PORTS` words.
fn set_port_bits(words: &mut [u64], ports: impl Iterator<Item = (u8, u16)>) {
    for (proto, port) in ports {
        if let Some((word, bit)) = served_ports::slot(proto, port) {
            words[word as usize] |= bit;
        }
    }
}

fn read_counters(
    map: &PerCpuArray<MapData, u64>,
) -> Result<[u64; counter::COUNT as usize], DataplaneError> {
    let mut out = [0u64; counter::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = map.get(&(i as u32), 0).map_err(map_err("COUNTERS"))?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

/// Formats a program load error with the verifier's log, which says why a program was rejected.
fn verifier_message(program: &str, e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("the verifier rejected {program}: {io_error}\n{verifier_log}")
        }
        other => other.to_string(),
    }
}
