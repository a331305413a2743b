//! `echo-backend`: a stand-in for the Gateway API conformance echo server
//! (`echo-basic`), see `gateway_tests::echo`. Prints `READY` once every
//! listener is bound; stops on SIGTERM/SIGINT.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use gateway_tests::echo::{self, EchoConfig, Identity, TlsPem};

#[derive(Debug, Parser)]
#[command(about = "Gateway API conformance-style echo backend (HTTP, h2c, HTTPS, TCP, TLS, UDP)")]
struct Args {
    /// Pod name reported in replies.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Namespace reported in replies.
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
    /// Service name reported in replies.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
    /// Ingress name reported in replies.
    #[arg(long, env = "INGRESS_NAME", default_value = "")]
    ingress: String,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// HTTP/1.1 port.
    #[arg(long, env = "HTTP_PORT")]
    http: Option<u16>,
    /// h2c (HTTP/2 prior knowledge, HTTP/1.1 too) port.
    #[arg(long, env = "H2C_PORT")]
    h2c: Option<u16>,
    /// HTTPS port (needs --cert/--key).
    #[arg(long, env = "HTTPS_PORT")]
    https: Option<u16>,
    /// TCP line-protocol port.
    #[arg(long, env = "TCP_PORT")]
    tcp: Option<u16>,
    /// TLS line-protocol port (needs --cert/--key).
    #[arg(long, env = "TLS_PORT")]
    tls: Option<u16>,
    /// UDP port.
    #[arg(long, env = "UDP_PORT")]
    udp: Option<u16>,
    /// Certificate chain (PEM).
    #[arg(long, env = "TLS_SERVER_CERT")]
    cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, env = "TLS_SERVER_PRIVKEY")]
    key: Option<PathBuf>,
    /// Print one line per HTTP request on stdout.
    #[arg(long)]
    log_requests: bool,
    /// Expect a PROXY protocol v2 header on the TCP/TLS listeners and report its addresses.
    #[arg(long)]
    proxy_protocol: bool,
    /// Also create this file once ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let tls_pem = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => Some(TlsPem {
            cert_pem: std::fs::read_to_string(c)
                .with_context(|| format!("reading {}", c.display()))?,
            key_pem: std::fs::read_to_string(k)
                .with_context(|| format!("reading {}", k.display()))?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--cert and --key go together"),
    };
    let cfg = EchoConfig {
        identity: Identity {
            pod: a.pod,
            namespace: a.namespace,
            service: a.service,
            ingress: a.ingress,
        },
        bind: a.bind,
        http: a.http,
        h2c: a.h2c,
        https: a.https,
        tcp: a.tcp,
        tls: a.tls,
        udp: a.udp,
        tls_pem,
        log_requests: a.log_requests,
        proxy_protocol: a.proxy_protocol,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bound = echo::bind(cfg).await?;
        if let Some(f) = &a.ready_file {
            std::fs::write(f, "READY\n")?;
        }
        println!("listening: {:?}", bound.addrs());
        println!("READY");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        bound
            .serve(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await
    })
}
