//! One worker's connections to backend endpoints: HTTP/1.1 connections kept alive and reused one request at a
//! time, and one multiplexed h2c connection per endpoint. Only the worker's own thread uses them, so a pooled
//! connection is never handed between threads.
//!
//! An HTTP/1.1 connection goes back to the idle list when the response body it carries has ended (not when the
//! head arrived: the body still streams through it), is reused last-in first-out, and is closed after
//! `idle_timeout` unused. A request that a reused connection could not even start (the backend had closed it
//! meanwhile) is sent again on another one, as hyper's pooled client does; once it started, its error is the
//! answer. A 101 answer's connection becomes the tunnel and is never pooled.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use super::forward::ProxyBody;

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {endpoint}: no answer within {timeout:?}")]
    ConnectTimeout {
        endpoint: SocketAddr,
        timeout: Duration,
    },
    #[error("HTTP handshake with {endpoint}: {source}")]
    Handshake {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {endpoint}: {source}")]
    Request {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
}

/// How a backend is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1, one request at a time per connection; the request's URI must be in origin form.
    Http1,
    /// HTTP/2 with prior knowledge; the request's URI must be absolute.
    H2c,
}

/// How many times a request no reused connection could start is tried on another before a new connection.
const REUSE_ATTEMPTS: usize = 3;

/// An HTTP/1.1 connection waiting for its next request.
struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

#[derive(Default)]
struct Connections {
    http1: HashMap<SocketAddr, Vec<Idle>>,
    h2c: HashMap<SocketAddr, (http2::SendRequest<ProxyBody>, Instant)>,
}

/// The pool of one worker.
pub struct Pool {
    connections: Mutex<Connections>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connections: Mutex::new(Connections::default()),
            connect_timeout,
            idle_timeout,
        })
    }

    /// Sends `req` to `endpoint` over a pooled (or new) connection; the response's body keeps an HTTP/1.1
    /// connection out of the pool until it has ended.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        wire: Wire,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, BackendError> {
        match wire {
            Wire::Http1 => self.send_http1(endpoint, req).await,
            Wire::H2c => {
                let mut sender = self.h2c_sender(endpoint).await?;
                let response = sender
                    .send_request(req)
                    .await
                    .map_err(|source| BackendError::Request { endpoint, source })?;
                Ok(response.map(|body| PooledBody { body, lease: None }))
            }
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, BackendError> {
        let mut attempts = 0;
        let (sender, result) = loop {
            let reused = if attempts < REUSE_ATTEMPTS {
                self.idle_http1(endpoint).await
            } else {
                None
            };
            let mut sender = match reused {
                Some(sender) => sender,
                None => {
                    let mut sender = self.connect_http1(endpoint).await?;
                    let result = sender.send_request(req).await;
                    break (sender, result);
                }
            };
            attempts += 1;
            match sender.try_send_request(req).await {
                Ok(response) => break (sender, Ok(response)),
                Err(mut e) => match e.take_message() {
                    // Not started: the connection was closed under it; try another.
                    Some(back) => {
                        debug!(%endpoint, error = %e.error(), "pooled connection could not take the request");
                        req = back;
                    }
                    None => break (sender, Err(e.into_error())),
                },
            }
        };
        let response = result.map_err(|source| BackendError::Request { endpoint, source })?;
        // The connection of a 101 becomes the tunnel: it is not given back.
        let lease = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
            pool: Arc::downgrade(self),
            endpoint,
            sender: Some(sender),
        });
        Ok(response.map(|body| PooledBody { body, lease }))
    }

    /// The most recently used idle connection to `endpoint` that is still open and ready.
    async fn idle_http1(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        loop {
            let idle = {
                let mut connections = self.connections.lock().expect("pool lock");
                connections.http1.get_mut(&endpoint)?.pop()?
            };
            let mut sender = idle.sender;
            if sender.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // A connection is given back when its response body ended; its connection task may not have
            // asked for the next request yet, which it does at once (or closes, if the backend said so).
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<TokioIo<TcpStream>, BackendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| BackendError::ConnectTimeout {
                endpoint,
                timeout: self.connect_timeout,
            })?
            .map_err(|source| BackendError::Connect { endpoint, source })?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    async fn connect_http1(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http1::SendRequest<ProxyBody>, BackendError> {
        let io = self.connect(endpoint).await?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|source| BackendError::Handshake { endpoint, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(%endpoint, error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The endpoint's h2c connection, made if there is none open.
    async fn h2c_sender(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, BackendError> {
        {
            let mut connections = self.connections.lock().expect("pool lock");
            if let Some((sender, used)) = connections.h2c.get_mut(&endpoint) {
                if !sender.is_closed() {
                    *used = Instant::now();
                    return Ok(sender.clone());
                }
                connections.h2c.remove(&endpoint);
            }
        }
        let io = self.connect(endpoint).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|source| BackendError::Handshake { endpoint, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%endpoint, error = %e, "backend h2c connection ended with an error");
            }
        });
        // Requests that raced this one for a first connection each made one; the last stays pooled and the
        // others close when their streams end.
        self.connections
            .lock()
            .expect("pool lock")
            .h2c
            .insert(endpoint, (sender.clone(), Instant::now()));
        Ok(sender)
    }

    fn give_back(&self, endpoint: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        self.connections
            .lock()
            .expect("pool lock")
            .http1
            .entry(endpoint)
            .or_default()
            .push(Idle {
                sender,
                since: Instant::now(),
            });
    }

    /// Closes connections unused for `idle_timeout` (and forgets closed ones); run periodically.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout;
        let mut connections = self.connections.lock().expect("pool lock");
        connections.http1.retain(|_, idle| {
            idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < timeout);
            !idle.is_empty()
        });
        connections
            .h2c
            .retain(|_, (sender, used)| !sender.is_closed() && used.elapsed() < timeout);
    }

    /// HTTP/1.1 connections idle in the pool now.
    pub fn idle(&self) -> usize {
        let connections = self.connections.lock().expect("pool lock");
        connections.http1.values().map(Vec::len).sum()
    }
}

/// An HTTP/1.1 connection lent to one response: given back to the pool when its body has ended, closed
/// otherwise (a body dropped half way leaves the connection in the middle of a message).
struct Lease {
    pool: Weak<Pool>,
    endpoint: SocketAddr,
    sender: Option<http1::SendRequest<ProxyBody>>,
}

impl Lease {
    fn give_back(&mut self) {
        if let (Some(pool), Some(sender)) = (self.pool.upgrade(), self.sender.take()) {
            pool.give_back(self.endpoint, sender);
        }
    }
}

/// A backend's response body; an HTTP/1.1 connection goes back to the pool when the body has ended.
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("body", &self.body)
            .field("pooled", &self.lease.is_some())
            .finish()
    }
}

impl PooledBody {
    fn ended(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.ended(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody polled to its end may still have ended (an empty body: HEAD, 204, 304).
        if self.body.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// How the test backend answers each request of a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200 hello`, keep-alive.
        Hello,
        /// `200 hello`, then the backend closes the connection (as on its idle timeout).
        HelloThenClose,
        /// A chunked body whose first chunk comes at once and the rest never.
        Endless,
        /// `101 Switching Protocols`.
        Upgrade,
    }

    /// A backend on loopback; counts connections accepted and connections the client closed.
    struct Backend {
        address: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn backend(answer: Answer) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply: &[u8] = match answer {
                                Answer::Hello | Answer::HelloThenClose => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
                                }
                                Answer::Endless => {
                                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
                                }
                                Answer::Upgrade => {
                                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
                                }
                            };
                            stream.write_all(reply).await.unwrap();
                            if matches!(answer, Answer::HelloThenClose) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            address,
            accepted,
            closed,
        }
    }

    fn get() -> Request<ProxyBody> {
        let mut req = Request::new(Empty::new().map_err(|e| match e {}).boxed());
        *req.uri_mut() = http::Uri::from_static("/");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("backend"),
        );
        req
    }

    async fn hello(pool: &Arc<Pool>, backend: &Backend) -> Bytes {
        let response = pool
            .send(backend.address, Wire::Http1, get())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn pool() -> Arc<Pool> {
        Pool::new(Duration::from_secs(2), Duration::from_secs(60))
    }

    /// Polls `done` every 10 ms for up to 2 s.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_has_ended() {
        let backend = backend(Answer::Hello).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(hello(&pool, &backend).await, "hello");
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);

        // A response still being read keeps its connection: a second request opens another.
        let first = pool
            .send(backend.address, Wire::Http1, get())
            .await
            .unwrap();
        assert_eq!(pool.idle(), 0);
        assert_eq!(hello(&pool, &backend).await, "hello");
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
        first.into_body().collect().await.unwrap();
        assert_eq!(pool.idle(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_used_again() {
        let backend = backend(Answer::HelloThenClose).await;
        let pool = pool();
        for round in 1..=3 {
            assert_eq!(hello(&pool, &backend).await, "hello");
            // The backend's FIN reaches the idle connection before the next request.
            assert!(
                eventually(|| pool.idle() == 0 || {
                    let c = pool.connections.lock().unwrap();
                    c.http1.values().flatten().all(|i| i.sender.is_closed())
                })
                .await
            );
            assert_eq!(backend.accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn a_body_dropped_half_way_closes_its_connection() {
        let backend = backend(Answer::Endless).await;
        let pool = pool();
        let response = pool
            .send(backend.address, Wire::Http1, get())
            .await
            .unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        drop(body);
        assert_eq!(
            pool.idle(),
            0,
            "a connection in the middle of a message is not pooled"
        );
        assert!(eventually(|| backend.closed.load(Ordering::SeqCst) == 1).await);
    }

    #[tokio::test]
    async fn the_connection_of_a_101_is_not_pooled() {
        let backend = backend(Answer::Upgrade).await;
        let pool = pool();
        let response = pool
            .send(backend.address, Wire::Http1, get())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        drop(response);
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let backend = backend(Answer::Hello).await;
        let pool = Pool::new(Duration::from_secs(2), Duration::from_millis(100));
        assert_eq!(hello(&pool, &backend).await, "hello");
        assert_eq!(pool.idle(), 1);
        pool.sweep();
        assert_eq!(pool.idle(), 1, "not idle for long enough yet");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert_eq!(pool.idle(), 0);
        assert!(eventually(|| backend.closed.load(Ordering::SeqCst) == 1).await);
    }

    #[tokio::test]
    async fn an_endpoint_that_refuses_is_a_connect_error() {
        // A port just released by a listener: nothing listens there.
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = pool().send(address, Wire::Http1, get()).await.unwrap_err();
        assert!(matches!(err, BackendError::Connect { .. }), "{err}");
    }
}
