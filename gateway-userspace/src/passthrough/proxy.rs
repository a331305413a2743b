//! The passthrough proxy: listeners, ClientHello reading, routing, and splicing bytes to the backend.
//!
//! A connection's life: accept → take a pending-hello permit (per source address and in total) → read until the
//! ClientHello is complete (bounded by the handshake timeout) → look its SNI up in the listener's current
//! [`SniTable`] → pick a backend endpoint → connect → write the optional PROXY header and the buffered bytes →
//! splice(2) both directions through pipes until both sides have closed. Any rejection closes the client socket
//! with `SO_LINGER 0` (an RST): the client never sees a TLS alert, and nothing goes to a route it did not match.
//!
//! Tables are swapped with `arc-swap` by [`Proxy::update`]: a connection routes with the table current when its
//! ClientHello completed, and established connections are separate tasks that no update touches. Listeners whose
//! (address, port) disappear stop accepting; their established connections continue.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use nix::fcntl::{OFlag, SpliceFFlags};
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    clienthello::{self, ClientHelloError},
    local_route::LocalRoutes,
    proxy_protocol::{self, ProxyProtocol},
    router::SniTable,
};
use crate::{
    admin::metrics::PassthroughMetrics,
    ir::{Ir, ListenerKind, ObjectRef, TlsPassthrough},
};

/// Bytes moved per splice(2) call (the default pipe capacity).
const PIPE_CHUNK: usize = 64 * 1024;

/// Limits and timeouts of the passthrough proxy.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a client may take to send a complete ClientHello.
    pub handshake_timeout: Duration,
    /// How long connecting to a backend endpoint may take.
    pub connect_timeout: Duration,
    /// Connections still sending their ClientHello, in total.
    pub max_pending: usize,
    /// Connections still sending their ClientHello, per client address.
    pub max_pending_per_source: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_pending: 4096,
            max_pending_per_source: 256,
        }
    }
}

impl Settings {
    /// Defaults, overridden by `GATEWAY_TLS_HANDSHAKE_TIMEOUT` / `GATEWAY_TLS_CONNECT_TIMEOUT` (seconds, may be
    /// fractional), `GATEWAY_TLS_MAX_PENDING` and `GATEWAY_TLS_MAX_PENDING_PER_SOURCE`.
    pub fn from_env() -> Self {
        let mut s = Self::default();
        let secs = |name: &str| {
            std::env::var(name)
                .ok()?
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0)
        };
        let count = |name: &str| {
            std::env::var(name)
                .ok()?
                .parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
        };
        if let Some(v) = secs("GATEWAY_TLS_HANDSHAKE_TIMEOUT") {
            s.handshake_timeout = Duration::from_secs_f64(v);
        }
        if let Some(v) = secs("GATEWAY_TLS_CONNECT_TIMEOUT") {
            s.connect_timeout = Duration::from_secs_f64(v);
        }
        if let Some(v) = count("GATEWAY_TLS_MAX_PENDING") {
            s.max_pending = v;
        }
        if let Some(v) = count("GATEWAY_TLS_MAX_PENDING_PER_SOURCE") {
            s.max_pending_per_source = v;
        }
        s
    }
}

/// Why a connection was closed before being routed (beyond the ClientHello and route reasons).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    ClientHello(#[from] ClientHelloError),
    #[error(transparent)]
    Route(#[from] super::router::RouteError),
    /// The ClientHello named no host.
    #[error("no server name in the ClientHello")]
    NoServerName,
    /// The ClientHello did not complete within the handshake timeout.
    #[error("ClientHello not complete within the handshake timeout")]
    Timeout,
    /// Too many connections are still sending their ClientHello (from this address, or in total).
    #[error("too many pending ClientHellos")]
    Overloaded,
    /// Connecting to the picked endpoint failed or timed out.
    #[error("connecting to backend {backend} at {endpoint}: {source}")]
    BackendConnect {
        backend: String,
        endpoint: SocketAddr,
        source: io::Error,
    },
    /// Reading from the client failed before the ClientHello completed.
    #[error("reading the ClientHello: {0}")]
    ClientRead(io::Error),
}

impl ConnectionError {
    /// The counter label of this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientHello(e) => e.reason(),
            Self::Route(e) => e.reason(),
            Self::NoServerName => "no_sni",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::BackendConnect { .. } => "backend_unreachable",
            Self::ClientRead(_) => "client_error",
        }
    }
}

/// Errors setting up listeners.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding TLS passthrough listener {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
}

/// The TLS passthrough proxy of the agent: one accept task per (address, port), tables swapped on update.
pub struct Proxy {
    settings: Settings,
    metrics: PassthroughMetrics,
    limits: Arc<PendingLimits>,
    listeners: HashMap<SocketAddr, ListenerHandle>,
    local_routes: LocalRoutes,
    proxy_protocol_routes: HashSet<ObjectRef>,
    last_ir: Option<Ir>,
}

struct ListenerHandle {
    table: Arc<ArcSwap<SniTable>>,
    task: JoinHandle<()>,
}

/// What one accept task shares with its connections.
struct ListenerContext {
    /// `namespace/gateway/listener`, the metrics label.
    name: String,
    table: Arc<ArcSwap<SniTable>>,
    settings: Settings,
    metrics: PassthroughMetrics,
    limits: Arc<PendingLimits>,
}

impl Proxy {
    /// A proxy with no listeners; adopts local routes a previous agent left so stale ones are removed on the first
    /// [`Self::update`].
    pub fn new(settings: Settings, metrics: PassthroughMetrics) -> Self {
        Self::with_local_routes(settings, metrics, LocalRoutes::adopt())
    }

    /// Like [`Self::new`] with the given local routes state (tests use an empty one).
    pub fn with_local_routes(
        settings: Settings,
        metrics: PassthroughMetrics,
        local_routes: LocalRoutes,
    ) -> Self {
        let limits = Arc::new(PendingLimits::new(
            settings.max_pending,
            settings.max_pending_per_source,
        ));
        Self {
            settings,
            metrics,
            limits,
            listeners: HashMap::new(),
            local_routes,
            proxy_protocol_routes: HashSet::new(),
            last_ir: None,
        }
    }

    /// Sets which routes send a PROXY v2 header; rebuilds the tables if that changed.
    pub fn set_proxy_protocol_routes(&mut self, routes: HashSet<ObjectRef>) {
        if routes == self.proxy_protocol_routes {
            return;
        }
        self.proxy_protocol_routes = routes;
        if let Some(ir) = self.last_ir.take() {
            self.update(&ir);
        }
    }

    /// Serves the TLS passthrough listeners of `ir`: local routes for their addresses, listeners opened and
    /// closed, and every table swapped. Established connections are not touched. Errors are logged; a listener
    /// that failed to bind is retried on the next update.
    pub fn update(&mut self, ir: &Ir) {
        let mut wanted: BTreeMap<SocketAddr, (String, &TlsPassthrough)> = BTreeMap::new();
        for gateway in &ir.gateways {
            for listener in &gateway.listeners {
                let ListenerKind::TlsPassthrough(tls) = &listener.kind else {
                    continue;
                };
                if tls.kernel {
                    // Served by the eBPF program: no socket, no local route.
                    continue;
                }
                let name = format!(
                    "{}/{}/{}",
                    gateway.gateway.namespace, gateway.gateway.name, listener.name
                );
                for addr in &gateway.addresses {
                    let address = SocketAddr::new(*addr, listener.port);
                    if let Some((other, _)) = wanted.get(&address) {
                        warn!(%address, listener = %name, served_by = %other, "address and port already served");
                        continue;
                    }
                    wanted.insert(address, (name.clone(), tls));
                }
            }
        }

        let addresses: BTreeSet<IpAddr> = wanted.keys().map(|a| a.ip()).collect();
        if let Err(e) = self.local_routes.sync(&addresses) {
            warn!(error = %e, "local routes for TLS passthrough addresses");
        }

        self.listeners.retain(|address, handle| {
            let keep = wanted.contains_key(address);
            if !keep {
                info!(%address, "TLS passthrough listener closed; established connections continue");
                handle.task.abort();
            }
            keep
        });

        let pp = |route: &ObjectRef| {
            if self.proxy_protocol_routes.contains(route) {
                ProxyProtocol::V2
            } else {
                ProxyProtocol::None
            }
        };
        for (address, (name, tls)) in &wanted {
            let table = Arc::new(SniTable::new(tls, pp));
            if let Some(handle) = self.listeners.get(address) {
                handle.table.store(table);
                continue;
            }
            let table = Arc::new(ArcSwap::new(table));
            match bind(*address) {
                Ok(listener) => {
                    info!(%address, listener = %name, routes = table.load().len(), "TLS passthrough listening");
                    let context = Arc::new(ListenerContext {
                        name: name.clone(),
                        table: table.clone(),
                        settings: self.settings.clone(),
                        metrics: self.metrics.clone(),
                        limits: self.limits.clone(),
                    });
                    let task = tokio::spawn(accept_loop(listener, context));
                    self.listeners
                        .insert(*address, ListenerHandle { table, task });
                }
                Err(e) => warn!(error = %e, "TLS passthrough listener not served"),
            }
        }
        self.last_ir = Some(ir.clone());
    }

    /// Addresses and ports being listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.listeners.keys().copied().collect();
        v.sort();
        v
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for handle in self.listeners.values() {
            handle.task.abort();
        }
    }
}

/// Binds a listener to an address that may not be local yet (IP_FREEBIND), so binding never races the route.
fn bind(address: SocketAddr) -> Result<TcpListener, ListenerError> {
    let err = |source| ListenerError::Bind { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true).map_err(err)?;
    } else {
        socket.set_freebind_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&address.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

async fn accept_loop(listener: TcpListener, context: Arc<ListenerContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Bytes are relayed as they come: Nagle would hold small TLS records back for a delayed ACK
                // (~40 ms added to time-to-first-byte, found by `gateway loadtest`).
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(context.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, listener = %context.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection; every outcome is counted.
async fn serve(context: Arc<ListenerContext>, client: TcpStream, peer: SocketAddr) {
    let metrics = &context.metrics;
    match route(&context, client, peer).await {
        Ok(Routed {
            client,
            backend,
            route,
        }) => {
            metrics.connection(&context.name, "routed", "route");
            debug!(%peer, %route, "routed");
            metrics.active.inc();
            splice_both(client, backend, metrics).await;
            metrics.active.dec();
        }
        Err((client, error)) => {
            metrics.connection(&context.name, "rejected", error.reason());
            debug!(%peer, listener = %context.name, %error, "connection rejected");
            reset(client);
        }
    }
}

struct Routed {
    client: TcpStream,
    backend: TcpStream,
    route: String,
}

/// Reads the ClientHello, routes it and connects; on failure hands the client socket back to be reset.
async fn route(
    context: &ListenerContext,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Result<Routed, (TcpStream, ConnectionError)> {
    let started = Instant::now();
    let Some(pending) = context.limits.acquire(peer.ip()) else {
        return Err((client, ConnectionError::Overloaded));
    };
    context.metrics.pending.inc();
    let mut buffered = Vec::with_capacity(2048);
    let read = tokio::time::timeout(
        context.settings.handshake_timeout,
        read_client_hello(&mut client, &mut buffered),
    );
    let hello = match read.await {
        Err(_) => Err(ConnectionError::Timeout),
        Ok(result) => result,
    };
    drop(pending);
    context.metrics.pending.dec();
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => return Err((client, e)),
    };
    context
        .metrics
        .clienthello_duration
        .observe(started.elapsed().as_secs_f64());

    let Some(server_name) = hello.server_name else {
        return Err((client, ConnectionError::NoServerName));
    };
    let table = context.table.load_full();
    let Some(route) = table.lookup(&server_name) else {
        return Err((client, super::router::RouteError::NoRoute.into()));
    };
    let (backend_name, endpoint) = match route.pick() {
        Ok(pick) => (pick.backend.to_string(), pick.endpoint),
        Err(e) => return Err((client, e.into())),
    };
    let proxy_protocol = route.proxy_protocol;
    let route_name = format!(
        "{}/{} ({})",
        route.route.namespace, route.route.name, route.hostname
    );
    drop(table);

    let connect = tokio::time::timeout(
        context.settings.connect_timeout,
        TcpStream::connect(endpoint),
    );
    let mut backend = match connect.await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            s
        }
        Ok(Err(source)) => {
            return Err((
                client,
                ConnectionError::BackendConnect {
                    backend: backend_name,
                    endpoint,
                    source,
                },
            ))
        }
        Err(_) => {
            let source = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return Err((
                client,
                ConnectionError::BackendConnect {
                    backend: backend_name,
                    endpoint,
                    source,
                },
            ));
        }
    };
    let mut first = Vec::with_capacity(buffered.len() + 64);
    if proxy_protocol == ProxyProtocol::V2 {
        let local = client.local_addr().unwrap_or(endpoint);
        first.extend_from_slice(&proxy_protocol::v2_header(peer, local));
    }
    first.extend_from_slice(&buffered);
    if let Err(source) = backend.write_all(&first).await {
        return Err((
            client,
            ConnectionError::BackendConnect {
                backend: backend_name,
                endpoint,
                source,
            },
        ));
    }
    context
        .metrics
        .bytes
        .get_or_create(&direction("client_to_backend"))
        .inc_by(buffered.len() as u64);
    Ok(Routed {
        client,
        backend,
        route: route_name,
    })
}

/// Reads until [`clienthello::parse`] has an answer; never buffers more than [`clienthello::MAX_BUFFERED`].
async fn read_client_hello(
    client: &mut TcpStream,
    buffered: &mut Vec<u8>,
) -> Result<clienthello::ClientHello, ConnectionError> {
    let mut chunk = [0u8; 4096];
    loop {
        let room = (clienthello::MAX_BUFFERED - buffered.len()).clamp(1, chunk.len());
        let n = client
            .read(&mut chunk[..room])
            .await
            .map_err(ConnectionError::ClientRead)?;
        if n == 0 {
            return Err(ClientHelloError::Truncated.into());
        }
        buffered.extend_from_slice(&chunk[..n]);
        if let Some(hello) = clienthello::parse(buffered)? {
            return Ok(hello);
        }
    }
}

/// Closes with an RST (SO_LINGER 0), never with a TLS alert.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn direction(d: &str) -> Vec<(String, String)> {
    vec![("direction".to_string(), d.to_string())]
}

/// Forwards both directions until both have ended. A read EOF is passed on as a write shutdown (half-close); an
/// error on either side resets both, so the other direction does not wait forever.
async fn splice_both(client: TcpStream, backend: TcpStream, metrics: &PassthroughMetrics) {
    let up = metrics
        .bytes
        .get_or_create(&direction("client_to_backend"))
        .clone();
    let down = metrics
        .bytes
        .get_or_create(&direction("backend_to_client"))
        .clone();
    let abort = |e: &io::Error| {
        debug!(error = %e, "forwarding ended with an error; resetting both sides");
        for s in [&client, &backend] {
            let sock = SockRef::from(s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    };
    let upstream = async {
        if let Err(e) = pump(&client, &backend, &up).await {
            abort(&e);
        }
    };
    let downstream = async {
        if let Err(e) = pump(&backend, &client, &down).await {
            abort(&e);
        }
    };
    tokio::join!(upstream, downstream);
}

/// Moves bytes `from` → `to` with splice(2) through a pipe: socket → pipe, then pipe → socket until it is empty,
/// so at most one pipe's worth is in flight (backpressure: nothing is read while `to` cannot take more).
async fn pump(from: &TcpStream, to: &TcpStream, bytes: &Counter) -> io::Result<()> {
    let (pipe_out, pipe_in): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = loop {
            from.readable().await?;
            let r = from.try_io(Interest::READABLE, || {
                nix::fcntl::splice(from, None, &pipe_in, None, PIPE_CHUNK, flags)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // EOF from `from`: half-close towards `to`, keep the other direction running.
            let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let r = to.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(&pipe_out, None, to, None, left, flags).map_err(io::Error::from)
            });
            match r {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.inc_by(n as u64);
    }
}

/// Bounds on connections that have not completed their ClientHello: a semaphore for the total and a counter per
/// client address.
pub struct PendingLimits {
    total: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
}

/// Held while a connection sends its ClientHello; releases both limits on drop.
pub struct PendingPermit<'a> {
    _total: OwnedSemaphorePermit,
    limits: &'a PendingLimits,
    source: IpAddr,
}

impl PendingLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total)),
            per_source: Mutex::default(),
            max_per_source,
        }
    }

    /// A permit, or `None` when the total or this source's limit is reached.
    pub fn acquire(&self, source: IpAddr) -> Option<PendingPermit<'_>> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut per_source = self.per_source.lock().expect("limits lock");
        let count = per_source.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(PendingPermit {
            _total: total,
            limits: self,
            source,
        })
    }
}

impl Drop for PendingPermit<'_> {
    fn drop(&mut self) {
        let mut per_source = self.limits.per_source.lock().expect("limits lock");
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_limits_per_source_and_total() {
        let limits = PendingLimits::new(3, 2);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert!(limits.acquire(a).is_none(), "per-source limit");
        let _p3 = limits.acquire(b).unwrap();
        assert!(limits.acquire(b).is_none(), "total limit");
        drop(p1);
        assert!(limits.acquire(a).is_some());
    }
}
