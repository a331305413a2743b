//! Small blocking clients for the echo protocols, all with timeouts. They use
//! plain std sockets, so run them inside a namespace with
//! [`Netns::run`](crate::netns::Netns::run):
//!
//! ```no_run
//! # use gateway_tests::{clients, topology::Topology};
//! # let topo = Topology::builder().build().unwrap();
//! let addr = "198.18.11.2:3000".parse().unwrap();
//! let reply = topo.gateway().run(|| clients::tcp_echo_test(addr)).unwrap();
//! assert_eq!(clients::deployment_of(&reply.pod), "tcp-backend");
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::echo::{HttpEchoReply, TcpEchoReply, UdpEchoReply, TCP_GREETING};

/// Connect timeout of every helper.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Read/write timeout of every helper.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response any helper reads.
const MAX_RESPONSE: u64 = 4 << 20;

/// Opens a connection to the conformance TCP echo at `addr` from namespace `ns` and reads its greeting; the
/// stream stays usable from any thread afterwards (a socket belongs to the namespace it was created in). For
/// connections held open across a test's changes, checked with [`ping_held`].
pub fn open_held(ns: &crate::Netns, addr: SocketAddr) -> Result<TcpStream> {
    ns.run(|| {
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut greeting = String::new();
        BufReader::new(&s).read_line(&mut greeting)?;
        ensure!(greeting.starts_with(TCP_GREETING), "greeting {greeting:?}");
        Ok(s)
    })
}

/// One PING/PONG exchange on a connection from [`open_held`].
pub fn ping_held(stream: &mut TcpStream) -> Result<()> {
    stream.write_all(b"PING\n")?;
    let mut line = String::new();
    BufReader::new(&*stream)
        .read_line(&mut line)
        .context("reading PONG")?;
    ensure!(line == "PONG\n", "held connection answered {line:?}");
    Ok(())
}

/// Conformance's mapping of a pod name `<deploy>-<rshash>-<podhash>` to `<deploy>`
/// (drops the last two `-` segments; returns the input if it has fewer).
pub fn deployment_of(pod: &str) -> &str {
    let mut end = pod.len();
    for _ in 0..2 {
        match pod[..end].rfind('-') {
            Some(i) => end = i,
            None => return pod,
        }
    }
    &pod[..end]
}

/// Connects with the usual timeouts (`CONNECT_TIMEOUT`, then `IO_TIMEOUT` for reads and writes).
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    with_timeouts(s)
}

/// Connects from local port `local_port`.
fn connect_from(addr: SocketAddr, local_port: u16) -> Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&unspecified(addr, local_port).into())
        .with_context(|| format!("binding local port {local_port}"))?;
    socket
        .connect_timeout(&addr.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr} from port {local_port}"))?;
    with_timeouts(socket.into())
}

fn unspecified(peer: SocketAddr, port: u16) -> SocketAddr {
    if peer.is_ipv4() {
        SocketAddr::from(([0u8; 4], port))
    } else {
        SocketAddr::from(([0u16; 8], port))
    }
}

fn with_timeouts(s: TcpStream) -> Result<TcpStream> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Runs the line protocol on an established stream: reads the greeting, sends
/// `cmd` and returns the answer line (without the newline).
fn line_command<S: Read + Write>(stream: S, cmds: &[&str]) -> Result<Vec<String>> {
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.by_ref()
        .take(4096)
        .read_line(&mut greeting)
        .context("reading greeting")?;
    ensure!(greeting == TCP_GREETING, "unexpected greeting {greeting:?}");
    let mut out = Vec::new();
    for cmd in cmds {
        r.get_mut().write_all(format!("{cmd}\n").as_bytes())?;
        r.get_mut().flush()?;
        let mut line = String::new();
        r.by_ref()
            .take(MAX_RESPONSE)
            .read_line(&mut line)
            .with_context(|| format!("reading answer to {cmd}"))?;
        ensure!(
            line.ends_with('\n'),
            "connection closed after {cmd} ({line:?})"
        );
        out.push(line.trim_end().to_string());
    }
    Ok(out)
}

/// Connects to a TCP echo, checks the greeting, sends `TEST` and parses the JSON.
pub fn tcp_echo_test(addr: SocketAddr) -> Result<TcpEchoReply> {
    let lines = line_command(connect(addr)?, &["TEST"])?;
    serde_json::from_str(&lines[0]).with_context(|| format!("parsing TEST reply {:?}", lines[0]))
}

/// [`tcp_echo_test`] from local port `local_port`: a test that picks its source ports sends the same 5-tuples,
/// hence the same flow hashes, on every run, so a statistical check (weights) gives the same answer every time.
pub fn tcp_echo_test_from(addr: SocketAddr, local_port: u16) -> Result<TcpEchoReply> {
    let lines = line_command(connect_from(addr, local_port)?, &["TEST"])?;
    serde_json::from_str(&lines[0]).with_context(|| format!("parsing TEST reply {:?}", lines[0]))
}

/// Sends the given line commands (e.g. `["PING", "IS_TLS"]`) to a TCP echo and
/// returns the answer lines.
pub fn tcp_commands(addr: SocketAddr, cmds: &[&str]) -> Result<Vec<String>> {
    line_command(connect(addr)?, cmds)
}

/// A rustls client config trusting only `ca_pem` (one or more PEM certificates).
pub fn tls_client_config(ca_pem: &str, alpn: &[&str]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("parsing CA PEM")?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name =
        ServerName::try_from(sni.to_string()).map_err(|e| anyhow!("bad SNI {sni:?}: {e}"))?;
    let conn = rustls::ClientConnection::new(cfg, name)?;
    let mut s = rustls::StreamOwned::new(conn, connect(addr)?);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .with_context(|| format!("TLS handshake with {addr} (SNI {sni})"))?;
    }
    Ok(s)
}

/// Like [`tcp_echo_test`] over TLS with SNI `sni`, verifying the server against `ca_pem`.
pub fn tls_echo_test(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<TcpEchoReply> {
    let s = tls_connect(addr, sni, tls_client_config(ca_pem, &[])?)?;
    let lines = line_command(s, &["TEST"])?;
    serde_json::from_str(&lines[0]).with_context(|| format!("parsing TEST reply {:?}", lines[0]))
}

/// Sends one datagram and waits (≤ `IO_TIMEOUT`) for the JSON reply.
pub fn udp_echo(addr: SocketAddr, payload: &str) -> Result<UdpEchoReply> {
    udp_echo_timeout(addr, payload, IO_TIMEOUT)
}

/// [`udp_echo`] with an explicit timeout.
pub fn udp_echo_timeout(
    addr: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<UdpEchoReply> {
    udp_exchange(
        UdpSocket::bind(unspecified(addr, 0))?,
        addr,
        payload,
        timeout,
    )
}

/// [`udp_echo`] from local port `local_port` (see [`tcp_echo_test_from`] for why a test picks it).
pub fn udp_echo_from(addr: SocketAddr, local_port: u16, payload: &str) -> Result<UdpEchoReply> {
    let s = UdpSocket::bind(unspecified(addr, local_port))
        .with_context(|| format!("binding local UDP port {local_port}"))?;
    udp_exchange(s, addr, payload, IO_TIMEOUT)
}

fn udp_exchange(
    s: UdpSocket,
    addr: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<UdpEchoReply> {
    s.connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(payload.as_bytes())
        .with_context(|| format!("sending to {addr}"))?;
    let mut buf = [0u8; 65536];
    let n = s
        .recv(&mut buf)
        .with_context(|| format!("no UDP reply from {addr} within {timeout:?}"))?;
    serde_json::from_slice(&buf[..n])
        .with_context(|| format!("parsing UDP reply {:?}", String::from_utf8_lossy(&buf[..n])))
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body parsed as the echo server's JSON.
    pub fn echo(&self) -> Result<HttpEchoReply> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not echo JSON: {:?}", self.text()))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
/// `headers` are added after `Host`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    http_request_within(addr, method, host, path, headers, IO_TIMEOUT)
}

/// [`http_request`] waiting up to `timeout` for each read (for requests answered slowly on purpose).
pub fn http_request_within(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading HTTP response from {addr}"))?;
    parse_http_response(&raw, method == "HEAD")
}

/// `GET path` with `Host: host`; returns the status and the body as JSON (a JSON
/// string value if the body is not JSON, e.g. `/health`'s `OK`).
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    let r = http_request(addr, "GET", host, path, &[])?;
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| serde_json::Value::String(r.text()));
    Ok((r.status, v))
}

/// An HTTP/1.1 connection kept open across requests (keep-alive), e.g. to check that it survives a
/// configuration or certificate change, or how long the gateway keeps it when idle.
pub struct KeepAlive<S> {
    stream: S,
}

/// A keep-alive connection over TLS.
pub type KeepAliveHttps = KeepAlive<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

impl KeepAliveHttps {
    /// Connects and completes the TLS handshake (SNI `sni`, server verified against `ca_pem`, ALPN http/1.1).
    pub fn connect(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<Self> {
        let stream = tls_connect(addr, sni, tls_client_config(ca_pem, &["http/1.1"])?)?;
        Ok(Self { stream })
    }
}

impl KeepAlive<TcpStream> {
    /// Connects in cleartext, with the usual timeouts.
    pub fn plain(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            stream: connect(addr)?,
        })
    }
}

impl<S: Read + Write> KeepAlive<S> {
    /// The connection itself, e.g. to wait for the gateway to close it.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// `GET path` with `Host: host` on this connection, which stays open; the response must carry a
    /// Content-Length.
    pub fn get(&mut self, host: &str, path: &str) -> Result<HttpResponse> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        self.stream.flush()?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .context("keep-alive response without Content-Length")?
                    .trim()
                    .parse()?;
                if raw.len() >= end + 4 + length {
                    return parse_http_response(&raw[..end + 4 + length], false);
                }
            }
            let n = self.stream.read(&mut chunk)?;
            ensure!(n > 0, "connection closed after {} bytes", raw.len());
            raw.extend_from_slice(&chunk[..n]);
            ensure!(raw.len() as u64 <= MAX_RESPONSE, "response too large");
        }
    }
}

/// One HTTP/1.1 request over TLS (SNI `sni`, server verified against `ca_pem`,
/// ALPN `http/1.1`), `Connection: close`.
pub fn https_request(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    host: &str,
    path: &str,
) -> Result<HttpResponse> {
    let mut s = tls_connect(addr, sni, tls_client_config(ca_pem, &["http/1.1"])?)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    s.flush()?;
    let mut raw = Vec::new();
    // A peer closing without close_notify is reported as an error after the data:
    // keep what was read and let the parser decide whether it is complete.
    if let Err(e) = s.take(MAX_RESPONSE).read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(anyhow!(e).context(format!("reading HTTPS response from {addr}")));
        }
    }
    parse_http_response(&raw, false)
}

/// `GET path` over HTTP/2 with prior knowledge (h2c), `:authority` = `authority`.
/// Runs its own current-thread runtime, so call it from a plain (e.g.
/// [`Netns::run`](crate::netns::Netns::run)) thread, not from async code.
pub fn h2c_get(addr: SocketAddr, authority: &str, path: &str) -> Result<HttpResponse> {
    h2c_request(addr, "GET", authority, path, &[], Vec::new())
}

/// A gRPC call over h2c with an empty message: `POST /service/method`, `content-type: application/grpc`,
/// `te: trailers`. The response's trailers (e.g. `grpc-status`) are appended to its headers.
pub fn grpc_call(addr: SocketAddr, authority: &str, path: &str) -> Result<HttpResponse> {
    // One length-prefixed message: uncompressed, zero bytes long.
    let empty_message = vec![0u8; 5];
    h2c_request(
        addr,
        "POST",
        authority,
        path,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        empty_message,
    )
}

/// One request over HTTP/2 with prior knowledge (h2c), `:authority` = `authority`; the response's trailers are
/// appended to its headers. Runs its own current-thread runtime (call it from a plain thread).
pub fn h2c_request(
    addr: SocketAddr,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse> {
    use http_body_util::{BodyExt, Full};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .context("h2 handshake")?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(format!("http://{authority}{path}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(bytes::Bytes::from(body)))?;
            let resp = send.send_request(req).await.context("h2 request")?;
            let status = resp.status().as_u16();
            let pairs = |h: &hyper::HeaderMap| -> Vec<(String, String)> {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect()
            };
            let mut headers = pairs(resp.headers());
            let collected = resp.into_body().collect().await?;
            if let Some(trailers) = collected.trailers() {
                headers.extend(pairs(trailers));
            }
            let body = collected.to_bytes().to_vec();
            anyhow::Ok(HttpResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("h2c request to {addr} timed out"))?
    })
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or until EOF).
pub fn parse_http_response(raw: &[u8], head_only: bool) -> Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("non-UTF-8 HTTP head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        ensure!(
            rest.len() >= len,
            "body truncated: {} of {len} bytes",
            rest.len()
        );
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_str = std::str::from_utf8(&data[..eol])?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16).context("bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_mapping() {
        assert_eq!(deployment_of("tcp-backend-6c9f-abcde"), "tcp-backend");
        assert_eq!(deployment_of("infra-backend-v1-7d8-x9"), "infra-backend-v1");
        assert_eq!(deployment_of("a-b"), "a-b");
        assert_eq!(deployment_of("plain"), "plain");
    }

    #[test]
    fn parses_responses() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nOKjunk",
            false,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.text().as_str(), r.header("x-a")),
            (200, "OK", Some("b"))
        );
        let r = parse_http_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abcde"));
        let r = parse_http_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope", false).unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "nope"));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n", false).is_err());
    }
}
