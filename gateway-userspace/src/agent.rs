//! The agent loop: snapshots from the provider are translated, the IR is programmed into the kernel, and the
//! computed status is published on the admin endpoint and handed to the provider's status sink (Kubernetes).
//! Every provider is a [`Source`]: the agent loop is the same for YAML files and for a cluster. A tick follows new interfaces, expires flows and refreshes
//! metrics. The loop owns the data plane, so map updates never race each other.
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminError, AdminState},
    dataplane::{self, Dataplane, DataplaneError},
    http,
    ir::Ir,
    local_address::LocalAddresses,
    passthrough, provider,
    snapshot::Snapshot,
    status, translate,
};

/// How long packets may still be using the previous generation after a swap (far longer than any program run).
const GENERATION_GRACE: Duration = Duration::from_millis(50);
/// Interfaces, counters and conntrack are looked at this often.
const TICK: Duration = Duration::from_secs(1);
/// How long open HTTP connections may take to finish their requests on shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ProviderOptions {
    /// YAML files or directories (standalone mode), watched.
    Files(Vec<PathBuf>),
    /// The cluster the agent runs in (in-cluster config or `KUBECONFIG`).
    #[cfg(feature = "kubernetes")]
    Kubernetes(provider::kubernetes::Settings),
}

/// What a provider is to the agent: snapshots in, computed status out.
pub struct Source {
    /// The snapshots to serve, newest last.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Whether the receiver's current value is already a snapshot to serve (the file provider's first load); if
    /// not (Kubernetes, before every kind has listed) the agent waits for the first change and, meanwhile,
    /// leaves whatever a previous agent pinned in the kernel alone.
    pub serve_initial: bool,
    /// Where each computed status goes (the Kubernetes status writer), if anywhere besides the admin endpoint.
    pub status: Option<watch::Sender<Option<Arc<status::Status>>>>,
    /// The provider's background tasks, aborted when the source is dropped.
    pub tasks: Vec<JoinHandle<()>>,
    /// Whether this agent is the provider's elected leader, when the provider elects one.
    pub leader: Option<watch::Receiver<bool>>,
    /// Run by [`Source::shutdown`] once the tasks are stopped (the Kubernetes provider gives its Lease up).
    pub on_shutdown: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Source {
    /// Stops the provider: its tasks first, then its shutdown step (bounded to 2 s).
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Some(step) = self.on_shutdown.take() {
            if tokio::time::timeout(Duration::from_secs(2), step)
                .await
                .is_err()
            {
                warn!("the provider's shutdown step did not finish in 2 s");
            }
        }
    }

    /// The standalone file provider over `paths`.
    pub fn files(paths: Vec<PathBuf>) -> Source {
        let (snapshots, task) = provider::file::watch(paths);
        Source {
            snapshots,
            serve_initial: true,
            status: None,
            tasks: vec![task],
            leader: None,
            on_shutdown: None,
        }
    }

    async fn start(options: &ProviderOptions) -> Result<Source, AgentError> {
        match options {
            ProviderOptions::Files(paths) => Ok(Source::files(paths.clone())),
            #[cfg(feature = "kubernetes")]
            ProviderOptions::Kubernetes(settings) => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    AgentError::Provider(format!(
                        "no Kubernetes client (in-cluster service account or KUBECONFIG): {e}"
                    ))
                })?;
                Ok(provider::kubernetes::start(client, settings.clone()))
            }
        }
    }
}

/// Everything `gateway run` configures.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub provider: ProviderOptions,
    pub admin: SocketAddr,
    pub dataplane: dataplane::Settings,
    pub translate: translate::TranslateOptions,
    /// Limits of the TLS passthrough proxy.
    pub passthrough: passthrough::Settings,
    /// The HTTP proxy's worker threads, limits and timeouts.
    pub http: http::Settings,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("configuration provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Http(#[from] http::HttpProxyError),
}

/// Runs until `shutdown` completes. Pinned maps and links stay in place on exit, so forwarding and established
/// flows continue until the next agent adopts them.
pub async fn run(
    options: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // The provider first: a cluster that cannot be reached is reported before anything is attached.
    let mut source = Source::start(&options.provider).await?;
    let state = Arc::new(AdminState::default());
    let server = admin::bind(options.admin, state.clone()).await?;
    info!(address = %options.admin, "admin endpoint listening");
    let admin_task = tokio::spawn(server);
    if let Some(mut leader) = source.leader.take() {
        let gauge = state.metrics.leader.clone();
        source.tasks.push(tokio::spawn(async move {
            loop {
                gauge.set(i64::from(*leader.borrow_and_update()));
                if leader.changed().await.is_err() {
                    break;
                }
            }
        }));
    }

    let mut dataplane = Dataplane::load(options.dataplane.clone())?;
    state
        .metrics
        .conntrack_capacity
        .set(options.dataplane.conntrack_entries as i64);
    state.metrics.set_kernel_source(dataplane.open_counters()?);
    for name in dataplane.sync_interfaces()? {
        info!(interface = %name, "attached");
    }
    state
        .metrics
        .interfaces
        .set(dataplane.interfaces().len() as i64);
    state
        .metrics
        .xdp_interfaces
        .set(dataplane.xdp_interfaces().len() as i64);

    // TLS passthrough and HTTP listeners are served in userspace; both make Gateway addresses local through one
    // shared set of local routes.
    let local = LocalAddresses::adopt();
    let passthrough = passthrough::Proxy::with_local_routes(
        options.passthrough.clone(),
        state.metrics.passthrough.clone(),
        local.clone().into(),
    );
    // HTTP runs on worker threads of its own (thread per core), not on this runtime.
    let http = http::Proxy::new(
        options.http.clone(),
        state.metrics.http.clone(),
        local.claim("http"),
    )?;
    let mut agent = Agent {
        dataplane,
        passthrough,
        http,
        state: state.clone(),
        options,
        last_ir: None,
        last_status: None,
        next_sweep: std::time::Instant::now(),
        status_sink: source.status.take(),
    };
    if source.serve_initial {
        let snapshot = source.snapshots.borrow_and_update().clone();
        agent.reconcile(&snapshot).await;
    } else {
        info!("waiting for the first snapshot from the provider");
    }

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; pinned maps and links keep forwarding until the next agent adopts them");
                agent.http.drain(HTTP_DRAIN).await;
                source.shutdown().await;
                break;
            }
            changed = source.snapshots.changed() => {
                if changed.is_err() {
                    return Err(AgentError::Provider("the provider stopped".into()));
                }
                let snapshot = source.snapshots.borrow_and_update().clone();
                agent.reconcile(&snapshot).await;
            }
            _ = tick.tick() => agent.tick().await,
        }
    }
    admin_task.abort();
    Ok(())
}

struct Agent {
    dataplane: Dataplane,
    /// The userspace TLS passthrough proxy (listeners, SNI tables, local routes for Gateway addresses).
    passthrough: passthrough::Proxy,
    /// The userspace HTTP/gRPC proxy (HTTP and HTTPS listeners).
    http: http::Proxy,
    state: Arc<AdminState>,
    options: AgentOptions,
    last_ir: Option<Ir>,
    last_status: Option<status::Status>,
    /// When the next conntrack sweep is due (see [`sweep_interval`]).
    next_sweep: std::time::Instant,
    /// The provider's status sink, if it has one.
    status_sink: Option<watch::Sender<Option<Arc<status::Status>>>>,
}

/// Conntrack entries the agent reads per second at most: a sweep reads every entry with two syscalls, so a large
/// table is swept less often (up to every 10 s) rather than costing the node a core. Expiry is only about
/// freeing memory; SNAT ports of finished flows are reclaimed by the kernel itself at admission.
const SWEEP_ENTRIES_PER_SECOND: u64 = 20_000;

fn sweep_interval(entries: u64) -> Duration {
    Duration::from_secs((entries / SWEEP_ENTRIES_PER_SECOND).clamp(1, 10))
}

impl Agent {
    /// Translates a snapshot, publishes its status and programs its IR if it changed.
    async fn reconcile(&mut self, snapshot: &Snapshot) {
        // Translation is pure: the clock is read here, so unchanged conditions keep their lastTransitionTime and
        // changed ones get the current time.
        let options = self.options.translate.at(status::Timestamp::now());
        let (ir, status) =
            translate::translate_with_previous(snapshot, &options, self.last_status.as_ref());
        *self.state.status.write().expect("status lock") =
            status::objects_with_status(snapshot, &status);
        if let Some(sink) = &self.status_sink {
            sink.send_if_modified(|last| {
                let modified = last.as_deref() != Some(&status);
                if modified {
                    *last = Some(Arc::new(status.clone()));
                }
                modified
            });
        }
        self.last_status = Some(status);
        // PROXY protocol is chosen by a TLSRoute annotation, which the IR does not carry.
        self.passthrough
            .set_proxy_protocol_routes(passthrough::proxy_protocol::routes_from_snapshot(snapshot));
        if self.last_ir.as_ref() == Some(&ir) {
            return;
        }
        self.program(ir).await;
    }

    async fn program(&mut self, ir: Ir) {
        let labels = |result: &str| vec![("result".to_string(), result.to_string())];
        // Userspace listeners do not depend on the kernel generation: serve them even if the kernel apply fails.
        self.passthrough.update(&ir);
        self.http.update(&ir);
        match self.dataplane.apply(&ir) {
            Ok(report) => {
                self.state
                    .metrics
                    .config_applies
                    .get_or_create(&labels("ok"))
                    .inc();
                self.state.metrics.generation.set(report.generation as i64);
                tokio::time::sleep(GENERATION_GRACE).await;
                if let Err(e) = self.dataplane.collect_old_generations() {
                    warn!(error = %e, "removing the previous generation failed; it will be retried");
                }
                self.last_ir = Some(ir);
                self.state.set_ready();
            }
            Err(e) => {
                // The previous generation keeps serving: it is only replaced by a complete new one.
                self.state
                    .metrics
                    .config_applies
                    .get_or_create(&labels("error"))
                    .inc();
                error!(error = %e, "programming the kernel failed; the previous configuration keeps serving");
            }
        }
    }

    async fn tick(&mut self) {
        match self.dataplane.sync_interfaces() {
            Ok(new) if !new.is_empty() => {
                self.state
                    .metrics
                    .interfaces
                    .set(self.dataplane.interfaces().len() as i64);
                self.state
                    .metrics
                    .xdp_interfaces
                    .set(self.dataplane.xdp_interfaces().len() as i64);
                // Paths to backends may have changed with the interfaces: program again.
                if let Some(ir) = self.last_ir.take() {
                    self.program(ir).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "scanning interfaces failed"),
        }
        match self.dataplane.expire_handshakes() {
            Ok(sweep) => {
                let m = &self.state.metrics;
                m.passthrough.kernel_pending.set(sweep.pending as i64);
                m.passthrough
                    .kernel_long_captures
                    .set(sweep.long_captures as i64);
                if sweep.expired > 0 {
                    m.passthrough
                        .kernel_connections("rejected", "timeout", sweep.expired as u64);
                }
            }
            Err(e) => warn!(error = %e, "kernel TLS handshake expiry failed"),
        }
        if std::time::Instant::now() < self.next_sweep {
            return;
        }
        match self.dataplane.expire_flows() {
            Ok(sweep) => {
                self.next_sweep = std::time::Instant::now() + sweep_interval(sweep.entries);
                self.state
                    .metrics
                    .conntrack_entries
                    .set(sweep.entries as i64);
                self.state.metrics.flows_expired.inc_by(sweep.expired_flows);
                self.state
                    .metrics
                    .observe_flows(&sweep.totals, &self.dataplane.id_names());
            }
            Err(e) => warn!(error = %e, "conntrack expiry failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_tables_are_swept_less_often() {
        assert_eq!(sweep_interval(0), Duration::from_secs(1));
        assert_eq!(sweep_interval(30_000), Duration::from_secs(1));
        assert_eq!(sweep_interval(100_000), Duration::from_secs(5));
        assert_eq!(sweep_interval(10_000_000), Duration::from_secs(10));
    }
}
