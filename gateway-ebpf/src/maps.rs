//! The maps shared with the agent. All are pinned by name under the agent's versioned bpffs path, so a restarted
//! agent adopts them (and the flows in them) instead of starting empty.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use gateway_common::{
    clienthello::{Capture, SniKey, Verdict},
    counter, served_ports, Backend, BackendKey, Config, Flow, FlowKey, ListenerKey, ListenerValue,
    MaglevTable, RouteKey,
};

/// Map flag: allocate entries on demand (the Maglev tables are 16 KiB each).
const BPF_F_NO_PREALLOC: u32 = 1;

/// Global settings, including the active configuration generation.
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// (generation, address, port, protocol) -> listener.
#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::pinned(4096, 0);

/// Bitmap of the TCP and UDP ports the kernel path serves (see `gateway_common::served_ports`): the agent keeps
/// it a superset of every listener port and of every open flow's destination port.
#[map]
pub static SERVED_PORTS: Array<u64> = Array::pinned(served_ports::WORDS, 0);

/// (generation, route) -> Maglev table of backend ids.
#[map]
pub static MAGLEV: HashMap<RouteKey, MaglevTable> = HashMap::pinned(2048, BPF_F_NO_PREALLOC);

/// (generation, backend id) -> endpoint.
#[map]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(65536, 0);

/// Conntrack: one entry per direction of every NATed flow. A plain hash (not LRU) on purpose: when it is full, new
/// flows fail fast and are counted, and established flows are never evicted to admit new ones. The agent expires
/// entries by their timestamps. Its size is set by the agent at load time.
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::pinned(262144, 0);

/// Packet counters by reason (see `gateway_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Input of the `clienthello_probe` diagnostics program.
#[map]
pub static HELLO_INPUT: Array<Capture> = Array::with_max_entries(1, 0);

/// Output of the `clienthello_probe` diagnostics program.
#[map]
pub static HELLO_VERDICT: Array<Verdict> = Array::with_max_entries(1, 0);

/// (generation, listener, kind, name) -> route id: the SNI tables of TLS passthrough listeners.
#[map]
pub static SNI_ROUTES: HashMap<SniKey, u32> = HashMap::pinned(16384, 0);

/// Interfaces in XDP mode, by ifindex: the only egress interfaces the XDP program redirects to (a packet for
/// another goes on to the TC program). The agent keeps it equal to its set of XDP interfaces.
#[map]
pub static XDP_EGRESS: DevMapHash = DevMapHash::pinned(4096, 0);
