//! Prometheus metrics of the agent and of the kernel data plane, encoded with prometheus-client.
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use gateway_common::counter;

use crate::dataplane::KernelCounters;

/// Names of the kernel's packet counters, by index (`gateway_common::counter`).
pub const KERNEL_COUNTERS: &[(u32, &str)] = &[
    (counter::PASSED, "passed"),
    (counter::FORWARDED, "forwarded"),
    (counter::REPLIED, "replied"),
    (counter::NO_BACKEND_RST, "no_backend_reset"),
    (counter::NO_BACKEND_DROP, "no_backend_dropped"),
    (counter::TABLE_FULL, "table_full"),
    (counter::MALFORMED, "malformed"),
    (counter::UNSUPPORTED_IP, "unsupported_ip"),
    (counter::NO_FLOW_RST, "no_flow_reset"),
    (counter::REDIRECT_FAILED, "redirect_failed"),
];

type Labels = Vec<(String, String)>;

/// Every metric the admin endpoint serves.
pub struct Metrics {
    registry: Registry,
    /// Kernel packet counters by outcome.
    pub packets: Family<Labels, Counter>,
    /// New flows admitted by the kernel.
    pub flows_admitted: Counter,
    /// Flows removed by conntrack expiry.
    pub flows_expired: Counter,
    /// Conntrack entries in use (two per flow) and capacity.
    pub conntrack_entries: Gauge,
    pub conntrack_capacity: Gauge,
    /// Configuration generation the kernel is serving.
    pub generation: Gauge,
    /// Configuration applies, by result.
    pub config_applies: Family<Labels, Counter>,
    /// Interfaces the program is attached to.
    pub interfaces: Gauge,
    /// Last kernel counter values, to turn them into increments.
    last_kernel: std::sync::Mutex<[u64; counter::COUNT as usize]>,
    /// Where to read the kernel counters at scrape time (set once the data plane is loaded).
    kernel: std::sync::Mutex<Option<KernelCounters>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let m = Self {
            registry: Registry::default(),
            packets: Family::default(),
            flows_admitted: Counter::default(),
            flows_expired: Counter::default(),
            conntrack_entries: Gauge::default(),
            conntrack_capacity: Gauge::default(),
            generation: Gauge::default(),
            config_applies: Family::default(),
            interfaces: Gauge::default(),
            last_kernel: std::sync::Mutex::new([0; counter::COUNT as usize]),
            kernel: std::sync::Mutex::new(None),
        };
        registry.register("kernel_packets", "Packets handled by the eBPF program, by outcome", m.packets.clone());
        registry.register("kernel_flows_admitted", "New flows admitted by the eBPF program", m.flows_admitted.clone());
        registry.register("conntrack_expired_flows", "Flows removed by conntrack expiry", m.flows_expired.clone());
        registry.register("conntrack_entries", "Conntrack entries in use (two per flow)", m.conntrack_entries.clone());
        registry.register("conntrack_capacity", "Conntrack map capacity in entries", m.conntrack_capacity.clone());
        registry.register("config_generation", "Configuration generation served by the kernel", m.generation.clone());
        registry.register("config_applies", "Configuration applies, by result", m.config_applies.clone());
        registry.register("attached_interfaces", "Interfaces with the TC program attached", m.interfaces.clone());
        Self { registry, ..m }
    }

    /// Folds a fresh read of the kernel counters into the Prometheus counters.
    pub fn observe_kernel(&self, now: &[u64; counter::COUNT as usize]) {
        let mut last = self.last_kernel.lock().expect("metrics lock");
        for (index, name) in KERNEL_COUNTERS {
            let i = *index as usize;
            let delta = now[i].saturating_sub(last[i]);
            if delta > 0 {
                self.packets.get_or_create(&vec![("outcome".to_string(), name.to_string())]).inc_by(delta);
            }
        }
        let i = counter::FLOWS_NEW as usize;
        self.flows_admitted.inc_by(now[i].saturating_sub(last[i]));
        *last = *now;
    }

    /// Reads the kernel counters at every scrape from now on.
    pub fn set_kernel_source(&self, counters: KernelCounters) {
        *self.kernel.lock().expect("metrics lock") = Some(counters);
    }

    /// Text exposition format, with the kernel's counters read now.
    pub fn encode(&self) -> String {
        if let Some(source) = self.kernel.lock().expect("metrics lock").as_ref() {
            match source.read() {
                Ok(now) => self.observe_kernel(&now),
                Err(e) => tracing::warn!(error = %e, "reading kernel counters failed"),
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
