//! Prometheus metrics of the agent and of the kernel data plane, encoded with prometheus-client.
use std::sync::OnceLock;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use gateway_common::counter;

use crate::dataplane::{conntrack::FlowTotals, IdNames, KernelCounters};

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
    (counter::ICMP_TRANSLATED, "icmp_translated"),
    (counter::FRAG_NEEDED_SENT, "frag_needed_sent"),
    (counter::TOO_BIG_DROPPED, "too_big_dropped"),
    (counter::SNAT_RECLAIMED, "snat_reclaimed"),
    (counter::TLS_HANDSHAKES, "tls_handshakes"),
    (counter::TLS_SPLICED, "tls_spliced"),
    (counter::TLS_PENDING_FULL, "tls_pending_full"),
    (counter::TLS_NO_ROUTE, "tls_no_route"),
    (counter::TLS_REJECTED, "tls_rejected"),
    (counter::TLS_SYN_RETRANSMITS, "tls_syn_retransmits"),
    (counter::TLS_REPLAY_RETRANSMITS, "tls_replay_retransmits"),
    (counter::TLS_OUT_OF_ORDER, "tls_out_of_order"),
    (counter::TLS_UNEXPECTED, "tls_unexpected"),
    (counter::TLS_INVALID_BACKEND, "tls_invalid_backend"),
    (counter::TLS_SACK_TRANSLATED, "tls_sack_translated"),
    (counter::TLS_BACKEND_TIME_WAIT, "tls_backend_time_wait"),
    (counter::XDP_FORWARDED, "xdp_forwarded"),
    (counter::XDP_CHECKSUM_COMPLETED, "xdp_checksum_completed"),
    (counter::TLS_LONG_HELLOS, "tls_long_hellos"),
    (counter::TLS_REPLAY_ORPHANED, "tls_replay_orphaned"),
];

/// Kernel TLS passthrough counters that are connection outcomes, exported in
/// `gateway_tls_passthrough_connections` (label `path="kernel"`) beside the userspace proxy's, with the same
/// outcome and reason names.
const KERNEL_TLS_OUTCOMES: &[(u32, &str, &str)] = &[
    (counter::TLS_SPLICED, "routed", "route"),
    (counter::TLS_NO_ROUTE, "rejected", "no_route"),
    (counter::TLS_PENDING_FULL, "rejected", "overloaded"),
    // The kernel's Maglev table does not tell an invalid backendRef from a backend without ready endpoints.
    (counter::TLS_INVALID_BACKEND, "rejected", "invalid_backend"),
];

/// Reasons of the kernel parser's rejections, by `gateway_common::clienthello::outcome` (the userspace
/// parser's names).
pub const KERNEL_TLS_REJECTS: &[(usize, &str)] = &[
    (1, "truncated"),
    (2, "not_tls"),
    (3, "sslv2"),
    (4, "malformed"),
    (5, "oversized"),
    (6, "no_sni"),
    (7, "ambiguous_sni"),
    (8, "invalid_sni"),
];

type Labels = Vec<(String, String)>;

/// Traffic metrics of one scope (listener, route or backend), fed from conntrack totals.
#[derive(Default)]
pub struct ScopeMetrics {
    pub packets: Family<Labels, Counter>,
    pub bytes: Family<Labels, Counter>,
    pub flows: Family<Labels, Counter>,
    pub active_flows: Family<Labels, Gauge>,
}

impl ScopeMetrics {
    fn register(&self, registry: &mut Registry, scope: &str) {
        registry.register(
            format!("{scope}_packets"),
            format!("Packets of flows by {scope} and direction"),
            self.packets.clone(),
        );
        registry.register(
            format!("{scope}_bytes"),
            format!("Bytes of flows by {scope} and direction"),
            self.bytes.clone(),
        );
        registry.register(
            format!("{scope}_flows"),
            format!("Flows admitted by {scope}"),
            self.flows.clone(),
        );
        registry.register(
            format!("{scope}_active_flows"),
            format!("Flows in conntrack by {scope}"),
            self.active_flows.clone(),
        );
    }
}

const DIRECTIONS: [&str; 2] = ["to_backend", "to_client"];

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
    /// Interfaces with the XDP fast path in front of the TC program.
    pub xdp_interfaces: Gauge,
    /// 1 while this agent is the elected leader (Kubernetes provider), else 0.
    pub leader: Gauge,
    pub listeners: ScopeMetrics,
    pub routes: ScopeMetrics,
    pub backends: ScopeMetrics,
    /// Last absolute totals exported per (metric, labels), to turn totals into counter increments.
    last_totals: std::sync::Mutex<std::collections::HashMap<(String, Labels), u64>>,
    /// TLS passthrough (userspace) connections, bytes and ClientHello durations.
    pub passthrough: PassthroughMetrics,
    /// HTTP/gRPC proxy requests by route, backend, status class, and their latency.
    pub http: HttpMetrics,
    /// Last kernel counter values, to turn them into increments.
    last_kernel: std::sync::Mutex<[u64; counter::COUNT as usize]>,
    last_tls_rejects: std::sync::Mutex<[u64; 16]>,
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
            xdp_interfaces: Gauge::default(),
            leader: Gauge::default(),
            listeners: ScopeMetrics::default(),
            routes: ScopeMetrics::default(),
            backends: ScopeMetrics::default(),
            last_totals: Default::default(),
            passthrough: PassthroughMetrics::default(),
            http: HttpMetrics::default(),
            last_kernel: std::sync::Mutex::new([0; counter::COUNT as usize]),
            last_tls_rejects: std::sync::Mutex::new([0; 16]),
            kernel: std::sync::Mutex::new(None),
        };
        registry.register(
            "kernel_packets",
            "Packets handled by the eBPF program, by outcome",
            m.packets.clone(),
        );
        registry.register(
            "kernel_flows_admitted",
            "New flows admitted by the eBPF program",
            m.flows_admitted.clone(),
        );
        registry.register(
            "conntrack_expired_flows",
            "Flows removed by conntrack expiry",
            m.flows_expired.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Conntrack entries in use (two per flow)",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_capacity",
            "Conntrack map capacity in entries",
            m.conntrack_capacity.clone(),
        );
        registry.register(
            "config_generation",
            "Configuration generation served by the kernel",
            m.generation.clone(),
        );
        registry.register(
            "config_applies",
            "Configuration applies, by result",
            m.config_applies.clone(),
        );
        registry.register(
            "attached_interfaces",
            "Interfaces with the TC program attached",
            m.interfaces.clone(),
        );
        registry.register(
            "xdp_interfaces",
            "Interfaces with the XDP fast path attached in front of the TC program",
            m.xdp_interfaces.clone(),
        );
        registry.register(
            "leader",
            "1 while this agent is the elected leader writing status and Services (Kubernetes), else 0",
            m.leader.clone(),
        );
        m.listeners.register(&mut registry, "listener");
        m.routes.register(&mut registry, "route");
        m.backends.register(&mut registry, "backend");
        m.passthrough.register(&mut registry);
        m.http.register(&mut registry);
        Self { registry, ..m }
    }

    /// Folds a fresh read of the kernel counters into the Prometheus counters.
    pub fn observe_kernel(&self, now: &[u64; counter::COUNT as usize]) {
        let mut last = self.last_kernel.lock().expect("metrics lock");
        for (index, name) in KERNEL_COUNTERS {
            let i = *index as usize;
            let delta = now[i].saturating_sub(last[i]);
            if delta > 0 {
                self.packets
                    .get_or_create(&vec![("outcome".to_string(), name.to_string())])
                    .inc_by(delta);
            }
        }
        for (index, outcome, reason) in KERNEL_TLS_OUTCOMES {
            let i = *index as usize;
            let delta = now[i].saturating_sub(last[i]);
            if delta > 0 {
                self.passthrough.kernel_connections(outcome, reason, delta);
            }
        }
        let i = counter::FLOWS_NEW as usize;
        self.flows_admitted.inc_by(now[i].saturating_sub(last[i]));
        *last = *now;
    }

    /// Folds a fresh read of the kernel parser's rejections (by outcome) into the passthrough metrics.
    pub fn observe_kernel_tls_rejects(&self, now: &[u64; 16]) {
        let mut last = self.last_tls_rejects.lock().expect("metrics lock");
        for (i, reason) in KERNEL_TLS_REJECTS {
            let delta = now[*i].saturating_sub(last[*i]);
            if delta > 0 {
                self.passthrough
                    .kernel_connections("rejected", reason, delta);
            }
        }
        *last = *now;
    }

    /// Exports conntrack traffic totals by listener, route and backend, named by `names`.
    pub fn observe_flows(&self, totals: &FlowTotals, names: &IdNames) {
        let mut last = self.last_totals.lock().expect("metrics lock");
        let mut counter =
            |family: &Family<Labels, Counter>, metric: &str, labels: Labels, total: u64| {
                let previous = last
                    .entry((metric.to_string(), labels.clone()))
                    .or_insert(0);
                if total > *previous {
                    family.get_or_create(&labels).inc_by(total - *previous);
                    *previous = total;
                }
            };
        for (scope, metrics, traffic, names) in [
            (
                "listener",
                &self.listeners,
                &totals.listeners,
                &names.listeners,
            ),
            ("route", &self.routes, &totals.routes, &names.routes),
            ("backend", &self.backends, &totals.backends, &names.backends),
        ] {
            for (id, t) in traffic {
                let Some(name) = names.get(id) else { continue };
                let base = vec![(scope.to_string(), name.clone())];
                for (d, direction) in DIRECTIONS.iter().enumerate() {
                    let mut labels = base.clone();
                    labels.push(("direction".to_string(), direction.to_string()));
                    counter(
                        &metrics.packets,
                        &format!("{scope}_packets"),
                        labels.clone(),
                        t.packets[d],
                    );
                    counter(
                        &metrics.bytes,
                        &format!("{scope}_bytes"),
                        labels,
                        t.bytes[d],
                    );
                }
                counter(
                    &metrics.flows,
                    &format!("{scope}_flows"),
                    base.clone(),
                    t.flows,
                );
                metrics
                    .active_flows
                    .get_or_create(&base)
                    .set(t.active_flows as i64);
            }
        }
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
            match source.read_tls_rejects() {
                Ok(now) => self.observe_kernel_tls_rejects(&now),
                Err(e) => tracing::warn!(error = %e, "reading kernel TLS counters failed"),
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

/// TLS passthrough proxy metrics (`gateway_tls_passthrough_*`). Cloning shares the underlying counters.
#[derive(Clone)]
pub struct PassthroughMetrics {
    /// Connections by `listener`, `outcome` (`routed` | `rejected`) and `reason` (`route` for routed ones, the
    /// rejection reason otherwise: `no_sni`, `no_route`, `invalid_backend`, `not_tls`, `timeout`, ...).
    pub connections: Family<Labels, Counter>,
    /// Bytes forwarded, by `direction` (`client_to_backend` | `backend_to_client`).
    pub bytes: Family<Labels, Counter>,
    /// Connections currently routed and forwarding.
    pub active: Gauge,
    /// Connections still sending their ClientHello (holding a pending-hello slot).
    pub pending: Gauge,
    /// Kernel path: connections between their SYN and the splice (ClientHello captured or being replayed).
    pub kernel_pending: Gauge,
    pub kernel_long_captures: Gauge,
    /// Time from accept to a complete ClientHello (routed or not), in seconds.
    pub clienthello_duration: Histogram,
}

impl Default for PassthroughMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::exponential_buckets;
        Self {
            connections: Family::default(),
            bytes: Family::default(),
            active: Gauge::default(),
            pending: Gauge::default(),
            kernel_pending: Gauge::default(),
            kernel_long_captures: Gauge::default(),
            // 100 µs .. ~13 s
            clienthello_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
        }
    }
}

impl PassthroughMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tls_passthrough");
        r.register(
            "connections",
            "TLS passthrough connections by outcome and reason",
            self.connections.clone(),
        );
        r.register(
            "bytes",
            "Bytes forwarded by the TLS passthrough proxy",
            self.bytes.clone(),
        );
        r.register(
            "active_connections",
            "TLS passthrough connections forwarding now",
            self.active.clone(),
        );
        r.register(
            "pending_clienthellos",
            "TLS passthrough connections still sending their ClientHello",
            self.pending.clone(),
        );
        r.register(
            "kernel_pending_handshakes",
            "Kernel path: connections between SYN and splice",
            self.kernel_pending.clone(),
        );
        r.register(
            "kernel_long_captures",
            "Kernel path: pending handshakes whose first flight outgrew the entry's 4 KiB and took a 32 KiB capture",
            self.kernel_long_captures.clone(),
        );
        r.register(
            "clienthello_duration_seconds",
            "Time from accept until the ClientHello was complete",
            self.clienthello_duration.clone(),
        );
    }

    /// Counts `n` connections of the kernel path with this outcome (the kernel counts per node, not per
    /// listener: the label `path="kernel"` takes the listener's place).
    pub fn kernel_connections(&self, outcome: &str, reason: &str, n: u64) {
        let labels = vec![
            ("path".to_string(), "kernel".to_string()),
            ("outcome".to_string(), outcome.to_string()),
            ("reason".to_string(), reason.to_string()),
        ];
        self.connections.get_or_create(&labels).inc_by(n);
    }

    /// Counts one connection's outcome.
    pub fn connection(&self, listener: &str, outcome: &str, reason: &str) {
        let labels = vec![
            ("listener".to_string(), listener.to_string()),
            ("outcome".to_string(), outcome.to_string()),
            ("reason".to_string(), reason.to_string()),
        ];
        self.connections.get_or_create(&labels).inc();
    }
}

/// Metrics of the HTTP/gRPC proxy ([`crate::http`]).
#[derive(Clone)]
pub struct HttpMetrics {
    /// Requests by `listener`, `route` (`namespace/name`, empty when none matched), `backend` (empty when none
    /// was picked) and `code` class (`2xx`, `4xx`, ...).
    pub requests: Family<Labels, Counter>,
    /// Request duration until the response head, in seconds, by `route` and `code` class.
    pub duration: Family<Labels, Histogram>,
    /// Downstream connections open now.
    pub connections: Gauge,
    /// Worker threads serving HTTP.
    pub workers: Gauge,
    /// Requests answered, by `worker` (the thread that accepted the connection and served it).
    pub worker_requests: Family<Labels, Counter>,
    /// Downstream connections open now, by `worker`.
    pub worker_connections: Family<Labels, Gauge>,
}

/// The series requests of one (listener, route, backend) are counted in: made when a route table is built, with
/// each status class's handles resolved on first use (a class never seen adds no series) and kept, so counting a
/// request allocates nothing and hashes no label. Empty names stand for "none" (no listener, route or backend).
pub struct RequestSeries {
    metrics: HttpMetrics,
    pub listener: String,
    pub route: String,
    pub backend: String,
    /// By status class: index 1 is `1xx`, … 9 is `9xx`.
    classes: [OnceLock<(Counter, Histogram)>; 10],
}

impl RequestSeries {
    pub fn new(metrics: &HttpMetrics, listener: &str, route: &str, backend: &str) -> Self {
        Self {
            metrics: metrics.clone(),
            listener: listener.to_string(),
            route: route.to_string(),
            backend: backend.to_string(),
            classes: Default::default(),
        }
    }

    /// Counts one finished request with its status and duration.
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).min(9);
        let (requests, duration) = self.classes[class].get_or_init(|| {
            self.metrics.request_handles(
                &self.listener,
                &self.route,
                &self.backend,
                &format!("{class}xx"),
            )
        });
        requests.inc();
        duration.observe(seconds);
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::exponential_buckets;
        Self {
            requests: Family::default(),
            // 100 µs .. ~26 s
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
            connections: Gauge::default(),
            workers: Gauge::default(),
            worker_requests: Family::default(),
            worker_connections: Family::default(),
        }
    }
}

impl HttpMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("http");
        r.register(
            "requests",
            "HTTP requests by listener, route, backend and status class",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "HTTP request latency until the response head, by route and status class",
            self.duration.clone(),
        );
        r.register(
            "active_connections",
            "Downstream HTTP connections open now",
            self.connections.clone(),
        );
        r.register(
            "workers",
            "Worker threads serving HTTP (one runtime, listening socket per listener and backend pool each)",
            self.workers.clone(),
        );
        r.register(
            "worker_requests",
            "HTTP requests answered, by worker thread",
            self.worker_requests.clone(),
        );
        r.register(
            "worker_connections",
            "Downstream HTTP connections open now, by worker thread",
            self.worker_connections.clone(),
        );
    }

    /// Worker `index`'s handles: its requests counter and its open connections gauge.
    pub fn worker(&self, index: usize) -> (Counter, Gauge) {
        let labels = vec![("worker".to_string(), index.to_string())];
        (
            self.worker_requests.get_or_create(&labels).clone(),
            self.worker_connections.get_or_create(&labels).clone(),
        )
    }

    /// The request counter and latency histogram of (listener, route, backend) for one status class (`2xx`).
    fn request_handles(
        &self,
        listener: &str,
        route: &str,
        backend: &str,
        class: &str,
    ) -> (Counter, Histogram) {
        let labels = vec![
            ("listener".to_string(), listener.to_string()),
            ("route".to_string(), route.to_string()),
            ("backend".to_string(), backend.to_string()),
            ("code".to_string(), class.to_string()),
        ];
        let requests = self.requests.get_or_create(&labels).clone();
        let labels = vec![
            ("route".to_string(), route.to_string()),
            ("code".to_string(), class.to_string()),
        ];
        (requests, self.duration.get_or_create(&labels).clone())
    }
}
