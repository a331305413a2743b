//! NGINX 1.22 `stream` (TCP and UDP) with the Debian module `ngx_stream_module`, listening on the Gateway
//! address, which is put on the gateway namespace's `lo` for this run only (see `VipOnLo`).
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use gateway_tests::{sockets, Netns, Process};

use super::{Peer, PeerKind, Proto};
use crate::bench::{cpu, loadgen, topology::VipOnLo, IPERF_PORT};

pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub struct Nginx<'a> {
    ns: &'a Netns,
    vip: Ipv4Addr,
    process: Process,
    dir: tempfile::TempDir,
    vip_on_lo: Option<VipOnLo<'a>>,
}

fn main_context(dir: &Path, modules: &str, body: &str) -> String {
    let d = dir.display();
    let workers = crate::bench::cores::dataplane_threads();
    format!(
        "{modules}daemon off;\nmaster_process on;\nworker_processes {workers};\n\
         worker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 9000; }}\n{body}"
    )
}

/// tls: `ssl_preread` reads the ClientHello; a `map` sends each SNI of `snis` to the backend's `backend_port`.
/// Other SNIs map to nothing and the session is closed (no default route).
pub fn tls_config(
    vip: Ipv4Addr,
    port: u16,
    snis: &[&str],
    backend: Ipv4Addr,
    backend_port: u16,
    dir: &Path,
) -> String {
    let mut map = String::new();
    for sni in snis {
        map.push_str(&format!("        {sni} {backend}:{backend_port};\n"));
    }
    main_context(
        dir,
        &format!("load_module {STREAM_MODULE};\n"),
        &format!(
            "stream {{\n    access_log off;\n    map $ssl_preread_server_name $tls_backend {{\n{map}    }}\n    \
             server {{ listen {vip}:{port}; ssl_preread on; proxy_pass $tls_backend; }}\n}}\n"
        ),
    )
}

/// http: a reverse proxy (any host name) to the backend's `backend_port` with pooled keep-alive upstream
/// connections, HTTP/1.1 on `port` and h2c (prior knowledge) on `h2c_port` (NGINX 1.22 cannot serve both on one
/// cleartext port).
pub fn http_config(
    vip: Ipv4Addr,
    (port, h2c_port): (u16, u16),
    backend: Ipv4Addr,
    backend_port: u16,
    dir: &Path,
) -> String {
    let d = dir.display();
    main_context(
        dir,
        "",
        &format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             keepalive_requests 1000000;\n    \
             upstream backend {{ server {backend}:{backend_port}; keepalive 64; }}\n    \
             server {{\n        listen {vip}:{port};\n        listen {vip}:{h2c_port} http2;\n        server_name _;\n        location / {{\n            \
             proxy_pass http://backend;\n            proxy_http_version 1.1;\n            \
             proxy_set_header Connection \"\";\n            proxy_set_header Host $host;\n        }}\n    }}\n}}\n"
        ),
    )
}

/// The backend of the http suite: NGINX answering every GET with 200 and a small static `body` (`return`: from
/// memory, no file system on the path), HTTP/1.1 on `port` and h2c on `h2c_port` of every address.
pub fn static_backend_config((port, h2c_port): (u16, u16), body: &str, dir: &Path) -> String {
    assert!(
        body.chars().all(|c| c.is_ascii_alphanumeric() || c == ' '),
        "the body is written into nginx.conf unquoted-safe"
    );
    let d = dir.display();
    main_context(
        dir,
        "",
        &format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             keepalive_requests 1000000;\n    \
             server {{\n        listen {port};\n        listen {h2c_port} http2;\n        \
             location / {{ default_type text/plain; return 200 \"{body}\"; }}\n    }}\n}}\n"
        ),
    )
}

pub fn config(vip: Ipv4Addr, backend: Ipv4Addr, dir: &Path) -> String {
    let mut servers = String::new();
    for port in [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT] {
        servers.push_str(&format!(
            "    server {{ listen {vip}:{port}; proxy_pass {backend}:{port}; }}\n"
        ));
    }
    servers.push_str(&format!(
        "    server {{ listen {vip}:{IPERF_PORT} udp; proxy_pass {backend}:{IPERF_PORT}; proxy_timeout 10s; }}\n"
    ));
    main_context(
        dir,
        &format!("load_module {STREAM_MODULE};\n"),
        &format!("stream {{\n    access_log off;\n{servers}}}\n"),
    )
}

impl<'a> Nginx<'a> {
    /// l4: TCP and UDP stream proxies.
    pub fn start(ns: &'a Netns, vip: Ipv4Addr, backend: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_with(
            ns,
            Some(vip),
            &[IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT],
            |dir| config(vip, backend, dir),
        )
    }

    /// Runs NGINX with the configuration `render(run directory)`; ready once every port of `ports` listens.
    /// With `vip`, that address is on `lo` for the run (a data plane); without, NGINX is a backend.
    pub fn start_with(
        ns: &'a Netns,
        vip: Option<Ipv4Addr>,
        ports: &[u16],
        render: impl FnOnce(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let vip_guard = vip.map(|v| VipOnLo::add(ns, v)).transpose()?;
        let dir = gateway_tests::netns::temp_dir("bench-nginx")?;
        let cfg = dir.path().join("nginx.conf");
        std::fs::write(&cfg, render(dir.path()))?;
        let (cfg_s, prefix, err) = (
            cfg.display().to_string(),
            dir.path().display().to_string(),
            dir.path().join("error.log").display().to_string(),
        );
        let mut process = ns.spawn(&["nginx", "-p", &prefix, "-e", &err, "-c", &cfg_s])?;
        // Ready once the master process and its workers listen on every port.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = process.try_wait()? {
                bail!(
                    "nginx exited ({st}):\n{}\n{}",
                    process.log_tail(30),
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            let listening = ports.iter().all(|&p| {
                sockets::listening_sockets(ns, p)
                    .map(|s| !s.is_empty())
                    .unwrap_or(false)
            });
            if listening && ns.pids().len() > crate::bench::cores::dataplane_threads() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen within 10 s:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx {
            ns,
            vip: vip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            process,
            dir,
            vip_on_lo: vip_guard,
        })
    }
}

impl Drop for Nginx<'_> {
    fn drop(&mut self) {
        // SIGTERM to the master: fast shutdown, workers exit with it.
        let _ = self.process.terminate(Duration::from_secs(3));
        // Workers left behind (should not happen) die with the namespace at the end; kill them now. Only when
        // NGINX is the data plane: a backend NGINX shares its namespace with the benchmark's other servers.
        if self.vip_on_lo.is_none() {
            return;
        }
        for pid in self.ns.pids() {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Peer for Nginx<'_> {
    fn kind(&self) -> PeerKind {
        PeerKind::Nginx
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
    fn traffic_counter(&self, _: Proto) -> anyhow::Result<u64> {
        // NGINX's stream module exports no counters (the status modules are HTTP-only and access logs would
        // cost it a write per session): use the CPU ticks its processes spent, which only rise if they proxy.
        Ok(self.pids().iter().map(|&p| cpu::process_ticks(p)).sum())
    }
    fn counter_description(&self) -> &'static str {
        "CPU ticks of the NGINX master and worker processes (the stream module has no counters)"
    }
    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::copy(self.dir.path().join("nginx.conf"), dir.join("nginx.conf"));
        let _ = std::fs::copy(
            self.dir.path().join("error.log"),
            dir.join("nginx-error.log"),
        );
        let _ = std::fs::write(dir.join("nginx.log"), self.process.log());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const BE: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);

    #[test]
    fn tls_config_maps_snis_after_preread() {
        let c = tls_config(
            VIP,
            443,
            &["a.example.com", "b.example.com"],
            BE,
            8443,
            Path::new("/r"),
        );
        assert!(c.starts_with(&format!("load_module {STREAM_MODULE};")));
        assert!(c.contains("map $ssl_preread_server_name $tls_backend {\n        a.example.com 198.18.11.2:8443;\n        b.example.com 198.18.11.2:8443;\n    }"));
        assert!(c.contains("listen 198.18.100.1:443; ssl_preread on; proxy_pass $tls_backend;"));
        assert!(!c.contains("default "), "no default route:\n{c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn http_configs_proxy_and_serve() {
        let c = http_config(VIP, (80, 81), BE, 8080, Path::new("/r"));
        assert!(c.contains("upstream backend { server 198.18.11.2:8080; keepalive 64; }"));
        assert!(c.contains("listen 198.18.100.1:80;\n        listen 198.18.100.1:81 http2;"));
        assert!(
            c.contains("proxy_http_version 1.1;")
                && c.contains("proxy_set_header Connection \"\";")
        );
        assert!(!c.contains("load_module"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        let b = static_backend_config((8080, 8081), "xyz", Path::new("/r"));
        assert!(
            b.contains("listen 8080;\n        listen 8081 http2;")
                && b.contains("return 200 \"xyz\";")
        );
        assert_eq!(b.matches('{').count(), b.matches('}').count());
    }
}
