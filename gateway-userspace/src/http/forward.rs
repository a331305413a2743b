//! A request's life on a worker: listener by Host → best rule ([`RouteTable::lookup`]) → rule filters (header
//! modifiers, redirect, URL rewrite, mirrors) → backend by weighted round robin (invalid: 500; no ready
//! endpoint: 503; no backendRefs: 500) → backend filters → random ready endpoint → the worker's pooled client
//! (h2c for GRPCRoute and for Service ports with `appProtocol: kubernetes.io/h2c`, HTTP/1.1 otherwise) with the
//! rule's timeouts (504) → response filters. No route: 404. Every request is counted in
//! [`HttpMetrics`](crate::admin::metrics::HttpMetrics) and logged as JSON-able fields on the tracing target
//! `access`.
//!
//! Timeouts: `timeouts.request` runs from the request's arrival, `timeouts.backendRequest` from the moment it is
//! sent to the backend; both end when the response is complete. Exceeded before the response headers: 504;
//! exceeded while the body streams: the response is cut (HTTP/2 stream reset, HTTP/1.1 connection closed).
//!
//! HTTP/1.1 upgrades (WebSocket; `appProtocol: kubernetes.io/ws` needs nothing more) pass to HTTP/1.1 backends:
//! on a 101 the two connections become a byte tunnel in a task of its own (outside timeouts and drain).
//!
//! gRPC callers (`content-type: application/grpc…`) get the proxy's own answers as gRPC statuses, as Envoy
//! sends them: HTTP 200, trailers-only, `grpc-status` 12 UNIMPLEMENTED for no route, 14 UNAVAILABLE for an
//! invalid or unavailable backend and for timeouts (GRPCRoute: "UNAVAILABLE for invalid backends").
use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use super::{
    filters::{modify_headers, redirect_location, rewrite_path},
    pool::Wire,
    route_table::{normalize_host, pick_backend, RequestInfo},
    series::WorkerTable,
    worker::WorkerContext,
};
use crate::{
    admin::metrics::RequestSeries,
    ir::{HeaderModifier, HttpFilter, HttpRule, Mirror},
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Bodies in and out of the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body that fails once `deadline` passes (the request or backend timeout ran out while the body was
/// still streaming): hyper then resets the stream or closes the connection, so the client never takes a cut
/// body for a complete one.
struct DeadlineBody {
    inner: ProxyBody,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: ProxyBody, deadline: tokio::time::Instant) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(Some(Err("timeout while the response body streamed".into())))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Marks a response the proxy made itself (not a backend's), so gRPC callers get it as a gRPC status.
#[derive(Clone, Copy, Debug)]
struct LocalReply;

fn full(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(LocalReply);
    r
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`, …).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC status for one of the proxy's own HTTP answers (Envoy's mapping; invalid backends are UNAVAILABLE
/// as GRPCRoute requires).
fn grpc_status(status: StatusCode) -> (u8, &'static str) {
    match status.as_u16() {
        404 => (12, "no route"),
        500 | 502 | 503 => (14, "backend unavailable"),
        504 => (14, "upstream request timeout"),
        400 => (13, "bad request"),
        413 => (8, "request too large"),
        _ => (2, "unknown"),
    }
}

/// A trailers-only gRPC response carrying the status for one of the proxy's own HTTP answers.
fn as_grpc(response: &Response<ProxyBody>) -> Response<ProxyBody> {
    let (code, message) = grpc_status(response.status());
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    h.insert("grpc-message", HeaderValue::from_static(message));
    r
}

/// What the access log and metrics record of one request: the series it is counted in (which also names its
/// listener, route and backend) and the answer.
struct Outcome<'t> {
    series: &'t RequestSeries,
    response: Response<ProxyBody>,
}

/// The Host a request is routed by: HTTP/2's `:authority`, else the `Host` header (both cheap to keep: they
/// share the request's buffers).
enum Host {
    Authority(Authority),
    Header(HeaderValue),
    Missing,
}

impl Host {
    fn of(parts: &http::request::Parts) -> Self {
        if let Some(a) = parts.uri.authority() {
            return Host::Authority(a.clone());
        }
        match parts.headers.get(header::HOST) {
            Some(v) if v.to_str().is_ok() => Host::Header(v.clone()),
            _ => Host::Missing,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Host::Authority(a) => a.as_str(),
            Host::Header(v) => v.to_str().unwrap_or_default(),
            Host::Missing => "",
        }
    }
}

/// The downstream connection requests arrive on.
pub struct Downstream {
    pub peer: SocketAddr,
    /// Whether it is an HTTPS listener's (terminated here).
    pub tls: bool,
    /// The peer's address as an `X-Forwarded-For` value, formatted once per connection.
    forwarded_for: Option<HeaderValue>,
}

impl Downstream {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            tls,
            forwarded_for: HeaderValue::try_from(peer.ip().to_string()).ok(),
        }
    }
}

/// Answers one request on the worker `context` belongs to: routed by `table`, counted, logged.
pub async fn handle(
    table: &WorkerTable,
    context: &WorkerContext,
    req: Request<Incoming>,
    downstream: &Downstream,
) -> Response<ProxyBody> {
    let peer = downstream.peer;
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let version = parts.version;
    let host = Host::of(&parts);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let grpc = is_grpc(&parts.headers);
    let mut outcome = route(
        table,
        context,
        parts,
        body,
        &host,
        &path_and_query,
        downstream,
        start,
    )
    .await;
    let status = outcome.response.status().as_u16();
    let elapsed = start.elapsed();
    context.requests.inc();
    outcome.series.record(status, elapsed.as_secs_f64());
    info!(
        target: "access",
        client = %peer,
        listener = %outcome.series.listener,
        route = %outcome.series.route,
        backend = %outcome.series.backend,
        method = %method,
        host = %host.as_str(),
        path = %path_and_query.path(),
        protocol = ?version,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
    );
    if grpc && outcome.response.extensions().get::<LocalReply>().is_some() {
        outcome.response = as_grpc(&outcome.response);
    }
    outcome.response
}

/// Whether `name` is a hop-by-hop header (RFC 9110 §7.6.1 and the ones proxies agree on), never forwarded.
/// `TE` is one too, but `TE: trailers` goes on (see [`strip_hop_by_hop`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes the hop-by-hop headers: the fixed ones, those the `Connection` header lists, and `TE` unless it is
/// `trailers`. One pass over the names finds them (most messages carry at most `Connection`); only those found
/// are removed, each a hashed lookup.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names are unique among `keys()`, so at most seven match: no allocation.
    let mut found: [Option<HeaderName>; 7] = Default::default();
    let mut n = 0;
    let mut te = false;
    for name in headers.keys() {
        if n < found.len() && is_hop_by_hop(name) {
            found[n] = Some(name.clone());
            n += 1;
        }
        te |= name == header::TE;
    }
    if n == 0 && !te {
        return;
    }
    // Headers the Connection header lists are hop-by-hop too. The usual options (`keep-alive`, `close`,
    // `upgrade`) name no other header or one removed anyway: no parsing, no allocation for them.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| {
            !["keep-alive", "close", "upgrade"]
                .iter()
                .any(|usual| s.eq_ignore_ascii_case(usual))
        })
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for name in found.iter().flatten().chain(&listed) {
        headers.remove(name);
    }
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

#[allow(clippy::too_many_arguments)]
async fn route<'t>(
    table: &'t WorkerTable,
    context: &WorkerContext,
    mut parts: http::request::Parts,
    body: Incoming,
    host: &Host,
    path_and_query: &PathAndQuery,
    downstream: &Downstream,
    arrived: Instant,
) -> Outcome<'t> {
    let tls = downstream.tls;
    let path = path_and_query.path();
    let query = path_and_query.query();
    let info = RequestInfo {
        host: host.as_str(),
        path,
        query,
        method: parts.method.as_str(),
        headers: &parts.headers,
    };
    let (listener, matched) = table.routes.resolve(&info);
    let Some(m) = matched else {
        let series = match listener {
            Some(l) => table.series.unmatched(l),
            None => table.series.no_listener(),
        };
        return Outcome {
            series,
            response: full(StatusCode::NOT_FOUND, "no route\n"),
        };
    };
    let rule: &'t HttpRule = m.rule;
    let turn = m.next_turn();
    let route_info = m.route;
    let path_match = m.path_match;
    let listener_port = m.listener.port;
    let rule_series = table.series.rule(&m);

    let mut new_host: Option<&str> = None;
    let mut new_path: Option<String> = None;
    let mut response_mods: Vec<&HeaderModifier> = Vec::new();
    let mut mirrors: Vec<&Mirror> = Vec::new();
    let mut apply =
        |filters: &'t [HttpFilter], headers: &mut HeaderMap| -> Option<Response<ProxyBody>> {
            for f in filters {
                match f {
                    HttpFilter::RequestHeaderModifier(h) => modify_headers(h, headers),
                    HttpFilter::ResponseHeaderModifier(h) => response_mods.push(h),
                    HttpFilter::RequestRedirect(r) => {
                        let scheme = if tls { "https" } else { "http" };
                        let location = redirect_location(
                            r,
                            scheme,
                            &normalize_host(host.as_str()),
                            listener_port,
                            path,
                            query,
                            path_match,
                        );
                        let mut resp = full(
                            StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND),
                            "",
                        );
                        if let Ok(v) = HeaderValue::from_str(&location) {
                            resp.headers_mut().insert(header::LOCATION, v);
                        }
                        return Some(resp);
                    }
                    HttpFilter::UrlRewrite(u) => {
                        if let Some(h) = &u.hostname {
                            new_host = Some(h);
                        }
                        if let Some(p) = &u.path {
                            new_path = Some(rewrite_path(p, path, path_match));
                        }
                    }
                    HttpFilter::RequestMirror(mirror) => mirrors.push(mirror),
                }
            }
            None
        };
    if let Some(resp) = apply(&rule.filters, &mut parts.headers) {
        return Outcome {
            series: &rule_series.no_backend,
            response: resp,
        };
    }
    let Some((backend_index, chosen)) = pick_backend(&rule.backends, turn) else {
        return Outcome {
            series: &rule_series.no_backend,
            response: full(StatusCode::INTERNAL_SERVER_ERROR, "no backend\n"),
        };
    };
    let series = &rule_series.backends[backend_index];
    let outcome = |response| Outcome { series, response };
    if !chosen.backend.valid {
        return outcome(full(StatusCode::INTERNAL_SERVER_ERROR, "invalid backend\n"));
    }
    if chosen.backend.endpoints.is_empty() {
        return outcome(full(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoint\n"));
    }
    if let Some(resp) = apply(&chosen.filters, &mut parts.headers) {
        return outcome(resp);
    }
    let endpoint = chosen.backend.endpoints[fastrand::usize(..chosen.backend.endpoints.len())];

    // The request towards the backend.
    // An HTTP/1.1 upgrade (WebSocket): the client's half of the future tunnel, and the protocol asked for.
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let upgrade = upgrade_protocol(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let host_header = match (new_host, host) {
        (Some(h), _) => HeaderValue::from_str(h).ok(),
        (None, Host::Header(v)) => Some(v.clone()),
        (None, Host::Authority(a)) => HeaderValue::from_str(a.as_str()).ok(),
        (None, Host::Missing) => Some(HeaderValue::from_static("")),
    };
    if let Some(v) = host_header {
        parts.headers.insert(header::HOST, v);
    }
    let forwarded_for = match parts
        .headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", downstream.peer.ip())).ok(),
        None => downstream.forwarded_for.clone(),
    };
    if let Some(v) = forwarded_for {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    // The original path and query (shared with the request) unless a filter rewrote the path.
    let path_and_query = match &new_path {
        None => Some(path_and_query.clone()),
        Some(p) => match query {
            Some(q) => PathAndQuery::try_from(format!("{p}?{q}")).ok(),
            None => PathAndQuery::try_from(p.as_str()).ok(),
        },
    };
    let grpc = route_info.grpc;
    let (wire, version) = WorkerContext::wire(grpc, chosen.backend.protocol);
    // `timeouts.request` counts from the request's arrival (mirror buffering included); `backendRequest` from
    // the moment the request is sent, below.
    let request_deadline = rule
        .request_timeout_ms
        .map(|ms| tokio::time::Instant::from_std(arrived + Duration::from_millis(ms)));
    let timed_out = || outcome(full(StatusCode::GATEWAY_TIMEOUT, "request timeout\n"));
    // HTTP/1.1 requests name the path only (origin form); HTTP/2 ones the endpoint too (`:authority`).
    let uri = |addr: SocketAddr, wire: Wire| -> Option<Uri> {
        let path_and_query = path_and_query.clone()?;
        match wire {
            Wire::Http1 => Some(Uri::from(path_and_query)),
            Wire::H2c => Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(addr.to_string())
                .path_and_query(path_and_query)
                .build()
                .ok(),
        }
    };
    let Some(target) = uri(endpoint, wire) else {
        return outcome(full(StatusCode::BAD_REQUEST, "bad path\n"));
    };

    let body: ProxyBody = if mirrors.is_empty() {
        body.map_err(BoxError::from).boxed()
    } else {
        let collect = Limited::new(body, context.settings.max_mirror_body).collect();
        let collected = match request_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, collect).await {
                Ok(c) => c,
                Err(_) => return timed_out(),
            },
            None => collect.await,
        };
        match collected {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                for mirror in &mirrors {
                    if !mirror.backend.valid
                        || mirror.backend.endpoints.is_empty()
                        || fastrand::f64() * 100.0 >= mirror.percent
                    {
                        continue;
                    }
                    let ep =
                        mirror.backend.endpoints[fastrand::usize(..mirror.backend.endpoints.len())];
                    let (mirror_wire, version) = WorkerContext::wire(grpc, mirror.backend.protocol);
                    let Some(mirror_uri) = uri(ep, mirror_wire) else {
                        continue;
                    };
                    let mut copy =
                        Request::new(Full::new(bytes.clone()).map_err(|e| match e {}).boxed());
                    *copy.method_mut() = parts.method.clone();
                    *copy.uri_mut() = mirror_uri;
                    *copy.version_mut() = version;
                    *copy.headers_mut() = parts.headers.clone();
                    let pool = context.pool.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            if let Ok(resp) = pool.send(ep, mirror_wire, copy).await {
                                let _ = resp.into_body().collect().await;
                            }
                        })
                        .await;
                    });
                }
                Full::new(bytes).map_err(|e| match e {}).boxed()
            }
            Err(_) => {
                return outcome(full(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large to mirror\n",
                ))
            }
        }
    };
    // Upgrades pass between HTTP/1.1 peers only (an h2c backend gets the request without them).
    if let Some(protocol) =
        upgrade.filter(|_| parts.version == Version::HTTP_11 && version == Version::HTTP_11)
    {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    parts.uri = target;
    parts.version = version;
    let outbound = Request::from_parts(parts, body);
    let send = context.pool.send(endpoint, wire, outbound);
    let backend_deadline = rule
        .backend_timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let deadline = [request_deadline, backend_deadline]
        .into_iter()
        .flatten()
        .min();
    let result = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, send).await {
            Ok(r) => r,
            Err(_) => return timed_out(),
        },
        None => send.await,
    };
    let response = match result {
        Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel(resp, client_upgrade, &response_mods)
        }
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            for m in &response_mods {
                modify_headers(m, &mut parts.headers);
            }
            let body = body.map_err(BoxError::from).boxed();
            let body = match deadline {
                Some(deadline) => DeadlineBody::new(body, deadline).boxed(),
                None => body,
            };
            Response::from_parts(parts, body)
        }
        Err(e) => {
            debug!(backend = %series.backend, %endpoint, error = %e, "backend request failed");
            full(StatusCode::BAD_GATEWAY, "backend unavailable\n")
        }
    };
    outcome(response)
}

/// The protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` and `Upgrade: <protocol>`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// A backend's 101 answer: the client's and the backend's upgraded connections are joined into one tunnel (a
/// task of its own, outside the request's timeouts), and the 101 goes to the client with the protocol.
fn tunnel<B>(
    mut resp: Response<B>,
    client: Option<hyper::upgrade::OnUpgrade>,
    response_mods: &[&HeaderModifier],
) -> Response<ProxyBody> {
    let Some(client) = client else {
        return full(
            StatusCode::BAD_GATEWAY,
            "backend switched protocols unasked\n",
        );
    };
    let backend = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client, backend) {
            Ok((client, backend)) => {
                let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            }
            Err(e) => debug!(error = %e, "HTTP upgrade not completed"),
        }
    });
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for m in response_mods {
        modify_headers(m, &mut parts.headers);
    }
    if let Some(protocol) = protocol {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    Response::from_parts(
        parts,
        Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_the_rest_kept() {
        let mut h = headers(&[
            ("host", "a.example"),
            ("connection", "keep-alive, X-Listed"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "gzip"),
            ("x-listed", "1"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["host", "x-kept"]);

        let mut h = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "TE: trailers goes on: {h:?}");
        let mut h = headers(&[("host", "a.example"), ("x-kept", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn local_answers_become_trailers_only_grpc_statuses() {
        for (status, code) in [
            (StatusCode::NOT_FOUND, "12"),
            (StatusCode::INTERNAL_SERVER_ERROR, "14"),
            (StatusCode::SERVICE_UNAVAILABLE, "14"),
            (StatusCode::GATEWAY_TIMEOUT, "14"),
        ] {
            let r = as_grpc(&full(status, "x"));
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["grpc-status"], code, "{status}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
            assert!(
                http_body::Body::is_end_stream(r.body()),
                "trailers-only: no body"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_streaming_at_the_deadline_fails() {
        // A body whose only frame comes after 2 s, with a deadline at 1 s.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = Later(Some(rx)).boxed();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let body = DeadlineBody::new(slow, deadline);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tx.send(());
        });
        let err = body.collect().await.expect_err("cut at the deadline");
        assert!(err.to_string().contains("timeout"), "{err}");
        assert_eq!(
            tokio::time::Instant::now(),
            deadline,
            "not before the deadline"
        );

        // A body that ends before the deadline is passed through whole.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let quick = Full::new(Bytes::from_static(b"whole"))
            .map_err(|e| match e {})
            .boxed();
        let got = DeadlineBody::new(quick, deadline).collect().await.unwrap();
        assert_eq!(got.to_bytes(), Bytes::from_static(b"whole"));
    }

    /// A body of one data frame that arrives when `rx` fires.
    struct Later(Option<tokio::sync::oneshot::Receiver<()>>);

    impl http_body::Body for Later {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            let Some(rx) = self.0.as_mut() else {
                return std::task::Poll::Ready(None);
            };
            match std::pin::Pin::new(rx).poll(cx) {
                std::task::Poll::Ready(_) => {
                    self.0 = None;
                    let frame = http_body::Frame::data(Bytes::from_static(b"late"));
                    std::task::Poll::Ready(Some(Ok(frame)))
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }
    }
}
