//! HTTP side of the echo server: `/health`, `/status/NNN`, `?delay=`,
//! `X-Echo-Set-Header`, and the JSON echo of the request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{canonical_header_key, parse_go_duration, HttpEchoReply, HttpTlsInfo, Identity};

/// Which HTTP versions a listener speaks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Flavor {
    /// HTTP/1.x only (like Go's plain listener).
    Http1,
    /// HTTP/1.x or HTTP/2 (prior knowledge / ALPN), detected per connection.
    Auto,
}

/// Longest `?delay=` honoured.
const MAX_DELAY: Duration = Duration::from_secs(60);

pub(super) async fn serve(
    listener: TcpListener,
    id: Arc<Identity>,
    flavor: Flavor,
    tls: Option<TlsAcceptor>,
    log: bool,
) -> Result<()> {
    loop {
        let (stream, _peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let id = id.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(TokioIo::new(stream), id, port, None, flavor, log).await,
                Some(acc) => {
                    let Ok(s) = acc.accept(stream).await else {
                        return;
                    };
                    let info = http_tls_info(s.get_ref().1);
                    serve_conn(TokioIo::new(s), id, port, Some(info), flavor, log).await
                }
            }
        });
    }
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    id: Arc<Identity>,
    port: u16,
    tls: Option<HttpTlsInfo>,
    flavor: Flavor,
    log: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = Arc::new(tls);
    let svc =
        hyper::service::service_fn(move |req| handle(req, id.clone(), port, tls.clone(), log));
    let _ = match flavor {
        Flavor::Http1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
        Flavor::Auto => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(io, svc)
            .await
            .map_err(|e| e.to_string()),
    };
}

fn http_tls_info(conn: &rustls::ServerConnection) -> HttpTlsInfo {
    let l4 = super::l4::tls_info(conn);
    HttpTlsInfo {
        version: l4.version.replace("TLS ", "TLSv"),
        peer_certificates: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| crate::pki::der_to_pem("CERTIFICATE", c.as_ref()))
            .collect(),
        server_name: l4.server_name,
        negotiated_protocol: l4.negotiated_protocol,
        cipher_suite: l4.cipher_suite,
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(
    mut req: Request<Incoming>,
    id: Arc<Identity>,
    port: u16,
    tls: Arc<Option<HttpTlsInfo>>,
    log: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if log {
        let host = req
            .headers()
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        let uri = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        println!("request {} {host} {uri} {:?}", req.method(), req.version());
    }
    let query = req.uri().query().unwrap_or("").to_string();

    // An HTTP/1.1 upgrade (e.g. WebSocket): answer 101 with the same protocol, then echo raw bytes back.
    let upgrade = req
        .headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if let Some(protocol) = req
        .headers()
        .get(hyper::header::UPGRADE)
        .cloned()
        .filter(|_| upgrade)
    {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        resp.headers_mut().insert(hyper::header::UPGRADE, protocol);
        return Ok(resp);
    }
    if let Some(d) = query_param(&query, "delay").and_then(parse_go_duration) {
        tokio::time::sleep(d.min(MAX_DELAY)).await;
    }
    if path == "/health" {
        return Ok(text(StatusCode::OK, "OK"));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(
            match code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(s) => text(s, ""),
                None => text(StatusCode::BAD_REQUEST, "bad status code"),
            },
        );
    }

    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        if name == HOST {
            continue;
        }
        headers
            .entry(canonical_header_key(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let request_uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let proto = match req.version() {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    let reply = HttpEchoReply {
        path: request_uri,
        host,
        method: req.method().to_string(),
        proto: proto.to_string(),
        headers,
        namespace: id.namespace.clone(),
        ingress: id.ingress.clone(),
        service: id.service.clone(),
        pod: id.pod.clone(),
        http_port: port.to_string(),
        tls: (*tls).clone(),
    };
    let body = serde_json::to_string_pretty(&reply).unwrap_or_default();
    let mut resp = text(StatusCode::OK, &body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(set) = req.headers().get("x-echo-set-header") {
        for item in String::from_utf8_lossy(set.as_bytes()).split(',') {
            if let Some((k, v)) = item.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                ) {
                    h.append(k, v);
                }
            }
        }
    }
    Ok(resp)
}
