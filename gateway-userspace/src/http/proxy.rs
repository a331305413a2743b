//! The HTTP/gRPC proxy as the agent drives it: one listener per (Gateway address, port) serving HTTP/1.1,
//! HTTP/2 and h2c (hyper), HTTPS terminated with rustls (certificate chosen by SNI among the port's
//! listeners), requests routed by the port's [`RouteTable`] ([`forward`](super::forward)) and forwarded over
//! pooled connections.
//!
//! Thread per core: the proxy runs `workers` threads ([`Worker`]), each with its own listening socket per
//! address (`SO_REUSEPORT`), its own backend pools and its own copy of each route table, so no request crosses
//! threads. The agent's runtime only opens and closes listeners and swaps tables.
//!
//! Tables and certificates are swapped with `arc-swap` by [`Proxy::update`] (on every worker before it
//! returns): a request routes with the table current when it arrived, connections and in-flight requests are
//! never touched, and a TLS handshake picks the certificate current at that moment (so certificate changes
//! apply to new connections without dropping old ones). [`Proxy::drain`] stops accepting, asks every
//! connection on every worker to finish gracefully and waits.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{
    route_table::{ListenerRoutes, RouteTable},
    series::WorkerTable,
    tls::{self, CertTable},
    worker::{self, Worker},
};
use crate::{
    admin::metrics::HttpMetrics,
    ir::{HttpListener, Ir, ListenerKind},
    local_address::Claim,
};

/// Errors of the HTTP proxy area.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    #[error("binding HTTP listener {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("certificate from Secret {secret}: {message}")]
    Certificate { secret: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("starting HTTP worker {index}: {source}")]
    Worker { index: usize, source: io::Error },
}

/// Limits and timeouts of the HTTP proxy.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Worker threads serving HTTP (each with its own runtime, listening sockets and backend pools).
    pub workers: usize,
    /// Connecting to a backend endpoint.
    pub connect_timeout: Duration,
    /// Idle pooled connections to backends are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Request bodies copied to mirrors are buffered up to this size (larger ones are not mirrored).
    pub max_mirror_body: usize,
    /// An HTTP/1.1 client has this long to send each complete request head (the first one from the moment it
    /// connects, later ones from the end of the previous response); the connection is closed otherwise. `None`:
    /// no limit.
    pub client_header_timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            connect_timeout: Duration::from_secs(3),
            pool_idle_timeout: Duration::from_secs(60),
            max_mirror_body: 1 << 20,
            client_header_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// One worker per core the process may run on (cgroup quota and CPU affinity included).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One (address, port) served on every worker.
struct Listening {
    /// Each worker's table, in worker order.
    tables: Vec<Arc<ArcSwap<WorkerTable>>>,
    certs: Option<Arc<ArcSwap<CertTable>>>,
    /// Each worker's accept loop; aborting one closes that worker's listening socket.
    accept: Vec<JoinHandle<()>>,
}

impl Listening {
    fn close(&self) {
        for task in &self.accept {
            task.abort();
        }
    }
}

/// The agent's HTTP proxy.
pub struct Proxy {
    // Dropped after `listeners` (fields drop in order): the accept loops are aborted first, then each worker's
    // thread is stopped and joined.
    listeners: HashMap<SocketAddr, Listening>,
    workers: Vec<Worker>,
    shutdown: watch::Sender<bool>,
    local: Claim,
    metrics: HttpMetrics,
}

impl Proxy {
    /// A proxy with no listeners and `settings.workers` worker threads (at least one); Gateway addresses are
    /// made local through `local`.
    pub fn new(
        settings: Settings,
        metrics: HttpMetrics,
        local: Claim,
    ) -> Result<Self, HttpProxyError> {
        let (shutdown, rx) = watch::channel(false);
        let count = settings.workers.max(1);
        metrics.workers.set(count as i64);
        let workers = (0..count)
            .map(|index| Worker::start(index, settings.clone(), metrics.clone(), rx.clone()))
            .collect::<Result<_, _>>()?;
        info!(workers = count, "HTTP workers started");
        Ok(Self {
            listeners: HashMap::new(),
            workers,
            shutdown,
            local,
            metrics,
        })
    }

    /// Serves the HTTP and HTTPS listeners of `ir`: local routes for their addresses, listeners opened and
    /// closed, tables and certificates swapped on every worker. Errors are logged; a listener that failed to
    /// bind is retried on the next update.
    pub fn update(&mut self, ir: &Ir) {
        let mut wanted: BTreeMap<SocketAddr, Vec<(String, u16, &HttpListener)>> = BTreeMap::new();
        for gateway in &ir.gateways {
            for listener in &gateway.listeners {
                let ListenerKind::Http(http) = &listener.kind else {
                    continue;
                };
                let name = format!(
                    "{}/{}/{}",
                    gateway.gateway.namespace, gateway.gateway.name, listener.name
                );
                for addr in &gateway.addresses {
                    wanted
                        .entry(SocketAddr::new(*addr, listener.port))
                        .or_default()
                        .push((name.clone(), listener.port, http));
                }
            }
        }
        let addresses: BTreeSet<IpAddr> = wanted.keys().map(|a| a.ip()).collect();
        if let Err(e) = self.local.sync(&addresses) {
            warn!(error = %e, "local routes for HTTP listener addresses");
        }
        self.listeners.retain(|address, listening| {
            let tls = wanted.get(address).map(|l| l.iter().any(|(_, _, h)| h.tls));
            let keep = tls.is_some_and(|tls| tls == listening.certs.is_some());
            if !keep {
                info!(%address, "HTTP listener closed; open connections finish");
                listening.close();
            }
            keep
        });
        for (address, listeners) in &wanted {
            let tls = listeners.iter().any(|(_, _, h)| h.tls);
            // Every worker gets a table of its own (its own weighted-round-robin positions and reference
            // counts, touched by its thread only); problems are reported once.
            let tables: Vec<Arc<WorkerTable>> = (0..self.workers.len())
                .map(|worker| {
                    let routes = route_table(listeners, worker == 0);
                    Arc::new(WorkerTable::new(routes, &self.metrics))
                })
                .collect();
            let mut certs = Vec::new();
            for (name, _, http) in listeners {
                for cert in &http.certificates {
                    match tls::certified_key(cert) {
                        Ok(key) => certs.push((http.hostname.clone(), key)),
                        Err(e) => warn!(listener = %name, error = %e, "certificate not served"),
                    }
                }
            }
            let cert_table = Arc::new(CertTable::new(certs));
            if let Some(listening) = self.listeners.get(address) {
                for (slot, table) in listening.tables.iter().zip(tables) {
                    slot.store(table);
                }
                if let Some(c) = &listening.certs {
                    c.store(cert_table);
                }
                continue;
            }
            let certs = tls.then(|| Arc::new(ArcSwap::new(cert_table)));
            let acceptor = match certs.as_ref().map(|c| tls::acceptor(c.clone())).transpose() {
                Ok(a) => a,
                Err(e) => {
                    warn!(%address, error = %e, "HTTPS listener not served");
                    continue;
                }
            };
            // Every worker's socket, or none: a port half served would refuse some of its connections.
            let sockets = match (0..self.workers.len())
                .map(|_| worker::bind(*address))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "HTTP listener not served");
                    continue;
                }
            };
            let tables: Vec<_> = tables
                .into_iter()
                .map(|t| Arc::new(ArcSwap::new(t)))
                .collect();
            let accept = self
                .workers
                .iter()
                .zip(sockets)
                .zip(&tables)
                .map(|((worker, socket), table)| {
                    worker.listen(socket, table.clone(), acceptor.clone())
                })
                .collect();
            info!(%address, tls, workers = self.workers.len(), "HTTP listening");
            self.listeners.insert(
                *address,
                Listening {
                    tables,
                    certs,
                    accept,
                },
            );
        }
    }

    /// Addresses and ports being listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.listeners.keys().copied().collect();
        v.sort();
        v
    }

    /// Worker threads serving HTTP.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops accepting, asks every connection on every worker to close after its current requests (HTTP/1.1
    /// `Connection: close`, HTTP/2 GOAWAY) and waits until they have, or `timeout` passed.
    pub async fn drain(&mut self, timeout: Duration) {
        for listening in self.listeners.values() {
            listening.close();
        }
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        while self.connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(connections_left = self.connections(), "HTTP proxy drained");
    }

    fn connections(&self) -> usize {
        self.workers.iter().map(Worker::connections).sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for listening in self.listeners.values() {
            listening.close();
        }
    }
}

/// The route table of one (address, port) from its listeners; `report` logs matches that never match.
fn route_table(listeners: &[(String, u16, &HttpListener)], report: bool) -> RouteTable {
    let routes = listeners
        .iter()
        .map(|(name, port, http)| {
            let (table, errors) = ListenerRoutes::new(name.clone(), *port, http);
            for e in errors.iter().filter(|_| report) {
                warn!(listener = %name, error = %e, "match never matches");
            }
            table
        })
        .collect();
    RouteTable::new(routes)
}
