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
    _vip: VipOnLo<'a>,
}

pub fn config(vip: Ipv4Addr, backend: Ipv4Addr, dir: &Path) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for port in [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT] {
        servers.push_str(&format!(
            "    server {{ listen {vip}:{port}; proxy_pass {backend}:{port}; }}\n"
        ));
    }
    servers.push_str(&format!(
        "    server {{ listen {vip}:{IPERF_PORT} udp; proxy_pass {backend}:{IPERF_PORT}; proxy_timeout 10s; }}\n"
    ));
    format!(
        "load_module {STREAM_MODULE};\ndaemon off;\nmaster_process on;\nworker_processes 2;\n\
         worker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 9000; }}\n\
         stream {{\n    access_log off;\n{servers}}}\n"
    )
}

impl<'a> Nginx<'a> {
    pub fn start(ns: &'a Netns, vip: Ipv4Addr, backend: Ipv4Addr) -> anyhow::Result<Self> {
        let vip_guard = VipOnLo::add(ns, vip)?;
        let dir = gateway_tests::netns::temp_dir("bench-nginx")?;
        let cfg = dir.path().join("nginx.conf");
        std::fs::write(&cfg, config(vip, backend, dir.path()))?;
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
            let listening = [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT]
                .iter()
                .all(|&p| {
                    sockets::listening_sockets(ns, p)
                        .map(|s| !s.is_empty())
                        .unwrap_or(false)
                });
            if listening && ns.pids().len() >= 3 {
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
            vip,
            process,
            dir,
            _vip: vip_guard,
        })
    }
}

impl Drop for Nginx<'_> {
    fn drop(&mut self) {
        // SIGTERM to the master: fast shutdown, workers exit with it.
        let _ = self.process.terminate(Duration::from_secs(3));
        // Workers left behind (should not happen) die with the namespace at the end; kill them now.
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
