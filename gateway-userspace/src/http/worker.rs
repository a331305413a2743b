//! The HTTP data plane's workers, one thread per core: each runs a current-thread tokio runtime and owns a
//! `SO_REUSEPORT` listening socket per HTTP/HTTPS listener, its own pooled backend clients and its own copy of
//! every route table. The kernel spreads new connections over the workers' sockets, and a connection is
//! accepted, routed, forwarded and answered on one thread: no task is woken across threads (a profile of the
//! multi-thread runtime put ~28% of the proxy's time there).
//!
//! The agent drives workers from its own runtime through [`Worker`]: [`Worker::listen`] spawns an accept loop
//! onto the worker's runtime (its `JoinHandle` closes the listener when aborted), tables are swapped through
//! the `ArcSwap`s the accept loop was given, and the shared shutdown signal drains every connection.
use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use socket2::{Domain, Socket, Type};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, warn};

use super::{
    first_read::FirstRead,
    forward::{handle, Downstream, ProxyBody},
    pool::{Pool, Wire},
    proxy::{HttpProxyError, Settings},
    series::WorkerTable,
};
use crate::{admin::metrics::HttpMetrics, ir::BackendProtocol};

/// What every connection of one worker shares: the worker's backend clients (so pooled connections are used
/// by the thread that opened them), its metric handles and the shutdown signal.
pub struct WorkerContext {
    /// This worker's connections to backends.
    pub pool: Arc<Pool>,
    /// How HTTPS connections are served (HTTP/2 or HTTP/1.1 by the first bytes).
    server: auto::Builder<TokioExecutor>,
    /// How plaintext connections are served: HTTP/1.1, or h2c when they open with the HTTP/2 preface.
    http1: hyper::server::conn::http1::Builder,
    h2c: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub metrics: HttpMetrics,
    pub settings: Settings,
    /// `gateway_http_worker_requests_total{worker}`: requests this worker answered.
    pub requests: Counter,
    /// `gateway_http_worker_connections{worker}`: downstream connections this worker has open now.
    open: Gauge,
    shutdown: watch::Receiver<bool>,
    /// Downstream connections open on this worker (what drain waits for).
    connections: AtomicUsize,
}

impl WorkerContext {
    fn new(
        index: usize,
        settings: Settings,
        metrics: HttpMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (requests, open) = metrics.worker(index);
        // hyper times the head from the moment it starts reading one: a keep-alive connection idle between
        // requests is closed by the same timeout.
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.client_header_timeout);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.client_header_timeout);
        Self {
            pool: Pool::new(settings.connect_timeout, settings.pool_idle_timeout),
            server,
            http1,
            h2c: hyper::server::conn::http2::Builder::new(TokioExecutor::new()),
            metrics,
            settings,
            requests,
            open,
            shutdown,
            connections: AtomicUsize::new(0),
        }
    }

    /// How a backend is spoken to: h2c for gRPC and for `kubernetes.io/h2c` ports, HTTP/1.1 otherwise.
    pub fn wire(grpc: bool, protocol: BackendProtocol) -> (Wire, http::Version) {
        if grpc || protocol == BackendProtocol::H2c {
            (Wire::H2c, http::Version::HTTP_2)
        } else {
            (Wire::Http1, http::Version::HTTP_11)
        }
    }
}

/// One worker thread as the agent sees it.
pub struct Worker {
    runtime: tokio::runtime::Handle,
    context: Arc<WorkerContext>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `index` (thread `http-worker-<index>`).
    pub fn start(
        index: usize,
        settings: Settings,
        metrics: HttpMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, HttpProxyError> {
        let err = |source| HttpProxyError::Worker { index, source };
        let (started, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("http-worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let context = Arc::new(WorkerContext::new(index, settings, metrics, shutdown));
                // Idle backend connections are closed after the idle timeout even when no request comes.
                let pool = Arc::downgrade(&context.pool);
                let every = (context.settings.pool_idle_timeout / 2).max(Duration::from_secs(1));
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        match pool.upgrade() {
                            Some(pool) => pool.sweep(),
                            None => break,
                        }
                    }
                });
                if started
                    .send(Ok((runtime.handle().clone(), context)))
                    .is_err()
                {
                    return;
                }
                // Serves whatever the agent spawns onto this runtime until the proxy is dropped; dropping the
                // runtime then cancels the worker's tasks (listeners, connections, pooled clients).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(err)?;
        let (runtime, context) = ready
            .recv()
            .map_err(|_| err(io::Error::other("the worker thread exited while starting")))?
            .map_err(err)?;
        Ok(Self {
            runtime,
            context,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Serves `listener` on this worker with the tables `routes` holds; TLS first when `acceptor` is given.
    /// Aborting the returned handle closes the listening socket; accepted connections go on.
    pub fn listen(
        &self,
        listener: std::net::TcpListener,
        routes: Arc<ArcSwap<WorkerTable>>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> JoinHandle<()> {
        let context = self.context.clone();
        self.runtime.spawn(async move {
            // Registered with this worker's reactor, so it must be made inside the worker's runtime.
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, routes, acceptor, context).await,
                Err(e) => warn!(error = %e, "HTTP listener not registered with its worker"),
            }
        })
    }

    /// Downstream connections open on this worker.
    pub fn connections(&self) -> usize {
        self.context.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One worker's listening socket for `address`: `SO_REUSEPORT`, so every worker binds its own and the kernel
/// spreads connections over them; `IP_FREEBIND`, so binding never races the address's local route;
/// `TCP_NODELAY`, inherited by every accepted connection.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, HttpProxyError> {
    let err = |source| HttpProxyError::Bind { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true).map_err(err)?;
    } else {
        socket.set_freebind_v6(true).map_err(err)?;
    }
    // Accepted connections inherit it on Linux: no `setsockopt` per connection. Responses are written whole
    // (head and body in one `writev`), so Nagle only ever delayed the last segment of streamed bodies.
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&address.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    routes: Arc<ArcSwap<WorkerTable>>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    context: Arc<WorkerContext>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        let context = context.clone();
        let acceptor = acceptor.clone();
        // The connection's large futures (hyper's connection, the TLS handshake) are boxed: tokio copies a
        // task's future into the task when it is spawned and overwrites it when it ends, and a task holding
        // them inline made those copies a tenth of the proxy's own time per `Connection: close` request.
        tokio::spawn(async move {
            context.connections.fetch_add(1, Ordering::Relaxed);
            context.open.inc();
            context.metrics.connections.inc();
            match acceptor {
                None => {
                    let mut shutdown = context.shutdown.clone();
                    // A connection that has sent nothing yet is simply closed by a drain, or when the client
                    // has not started a request within the header timeout.
                    let first = tokio::select! {
                        first = within(context.settings.client_header_timeout, FirstRead::read(stream)) => {
                            first.unwrap_or_else(|| {
                                debug!(%peer, "no request from the client within the header timeout");
                                Ok(None)
                            })
                        }
                        _ = shutdown.wait_for(|s| *s) => Ok(None),
                    };
                    match first {
                        Ok(Some(io)) => {
                            Box::pin(serve_plaintext(io, routes, context.clone(), peer)).await
                        }
                        Ok(None) => {}
                        Err(e) => debug!(%peer, error = %e, "reading the first bytes failed"),
                    }
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match Box::pin(handshake).await {
                        Ok(Ok(tls)) => {
                            Box::pin(serve_tls(tls, routes, context.clone(), peer)).await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            context.metrics.connections.dec();
            context.open.dec();
            context.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// `work`'s output, or `None` if `limit` passed first.
async fn within<T>(limit: Option<Duration>, work: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
        None => Some(work.await),
    }
}

/// Serves a plaintext connection as HTTP/1.1 or h2c (prior knowledge), told by the bytes already read. Served
/// by hyper's own builders rather than hyper-util's detection, which would split the request at the preface's
/// 24 bytes: hyper then parsed it in two reads and grew its 8 KiB read buffer (a copy) for every connection.
async fn serve_plaintext(
    io: FirstRead,
    routes: Arc<ArcSwap<WorkerTable>>,
    context: Arc<WorkerContext>,
    peer: SocketAddr,
) {
    let service = service(routes, context.clone(), Downstream::new(peer, false));
    if io.is_h2c() {
        let conn = context.h2c.serve_connection(TokioIo::new(io), service);
        drive(conn, |c| c.graceful_shutdown(), &context, peer).await
    } else {
        let conn = context
            .http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        drive(conn, |c| c.graceful_shutdown(), &context, peer).await
    }
}

/// Serves a terminated HTTPS connection: HTTP/2 or HTTP/1.1 by its first bytes (ALPN told the client which).
async fn serve_tls<I>(
    io: I,
    routes: Arc<ArcSwap<WorkerTable>>,
    context: Arc<WorkerContext>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(routes, context.clone(), Downstream::new(peer, true));
    let conn = context
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    drive(conn, |c| c.graceful_shutdown(), &context, peer).await
}

/// The proxy as a hyper service: each request is answered by [`handle`] with the route table current when it
/// arrived (it serves the request to the end, whatever is swapped meanwhile).
fn service(
    routes: Arc<ArcSwap<WorkerTable>>,
    context: Arc<WorkerContext>,
    downstream: Downstream,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<ProxyBody>, Infallible>> + Send + 'static,
> + Clone {
    let downstream = Arc::new(downstream);
    service_fn(move |req| {
        let table = routes.load_full();
        let context = context.clone();
        let downstream = downstream.clone();
        async move { Ok::<_, Infallible>(handle(&table, &context, req, &downstream).await) }
    })
}

/// Runs a connection to its end; on the drain signal, lets it finish what it has in flight (`graceful_shutdown`:
/// the connection type's own method, as hyper's three connection types share no trait for it).
async fn drive<C, E>(
    conn: C,
    graceful_shutdown: fn(Pin<&mut C>),
    context: &WorkerContext,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut shutdown = context.shutdown.clone();
    tokio::pin!(conn);
    if *shutdown.borrow() {
        graceful_shutdown(conn.as_mut());
    }
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    graceful_shutdown(conn.as_mut());
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker sets no option per accepted connection: `TCP_NODELAY` must come from the listener.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener =
            TcpListener::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
