//! HTTP/2 for the load tester (hyper's client connection): a [`Link`] is what an attempt holds — a byte
//! stream for the other protocols, or an HTTP/2 connection (h2c by prior knowledge, or TLS with ALPN `h2`)
//! whose requests are multiplexed. Concurrent mode sends its requests one after the other on one HTTP/2
//! connection per `--connections`; rate mode opens one connection per request.
//!
//! Bytes counted for HTTP/2 are response body bytes received (headers are HPACK-compressed and framed, so
//! their size on the wire is not what the server wrote).
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

use super::{
    protocols::{Conn, Ctx, ProtocolError},
    stats::Phase,
};

/// An open connection of an attempt.
pub enum Link {
    /// TCP or TLS byte stream (tcp, tls, tls-canned, http, https).
    Stream(Conn),
    /// An HTTP/2 connection; its connection task runs on the runtime until the last sender is dropped.
    H2(SendRequest<Empty<Bytes>>),
}

impl Link {
    /// Closes the connection: the write side of a stream (bounded), or the HTTP/2 sender (the connection task
    /// then ends the connection with GOAWAY).
    pub async fn close(self) {
        match self {
            Link::Stream(mut c) => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), c.shutdown()).await;
            }
            Link::H2(sender) => drop(sender),
        }
    }
}

fn hyper_error(e: hyper::Error) -> ProtocolError {
    ProtocolError::Http(e.to_string())
}

impl Ctx {
    /// Connects (TLS handshake included) and, for HTTP/2, does the HTTP/2 handshake.
    pub async fn connect(&self, t0: Instant) -> Result<Link, ProtocolError> {
        let conn = self.open(t0).await?;
        if !self.target.protocol.is_h2() {
            return Ok(Link::Stream(conn));
        }
        let (sender, connection) = self
            .timed(async {
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(conn))
                    .await
                    .map_err(hyper_error)
            })
            .await?;
        tokio::spawn(async move {
            // Errors surface on the requests; the task only drives the connection.
            let _ = connection.await;
        });
        Ok(Link::H2(sender))
    }

    /// One exchange on `link` (see [`Ctx::exchange`]); for HTTP/2 a GET of the target's URI, its body read to
    /// the end. Returns whether the link can carry another exchange.
    pub async fn request(
        &self,
        link: &mut Link,
        t0: Instant,
        keep_alive: bool,
    ) -> Result<bool, ProtocolError> {
        match link {
            Link::Stream(conn) => self.exchange(conn, t0, keep_alive).await,
            Link::H2(sender) => {
                self.timed(self.h2_get(sender, t0)).await?;
                Ok(keep_alive)
            }
        }
    }

    async fn h2_get(
        &self,
        sender: &mut SendRequest<Empty<Bytes>>,
        t0: Instant,
    ) -> Result<(), ProtocolError> {
        sender.ready().await.map_err(hyper_error)?;
        let req = http::Request::get(self.target.h2_uri.clone())
            .header(http::header::USER_AGENT, "gateway-loadtest")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProtocolError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(hyper_error)?;
        self.record(Phase::Ttfb, t0);
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(hyper_error)?;
            if let Some(data) = frame.data_ref() {
                self.bytes(0, data.len() as u64);
            }
        }
        if status.as_u16() >= 400 {
            return Err(ProtocolError::Http(format!("status {}", status.as_u16())));
        }
        self.record(Phase::Total, t0);
        Ok(())
    }
}
