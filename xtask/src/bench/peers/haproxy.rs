//! HAProxy 2.6 in `mode tcp` with `option splice-auto`, listening on the Gateway address, which is put on the
//! gateway namespace's `lo` for this run only (see `VipOnLo`). HAProxy has no UDP proxy: UDP is not measured.
//! For tls it waits for the ClientHello (`tcp-request inspect-delay`, `req.ssl_hello_type 1`) and picks the
//! backend by `req.ssl_sni`.
use std::{
    io::{Read, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use gateway_tests::{Netns, Process};

use super::{Peer, PeerKind, Proto};
use crate::bench::{loadgen, topology::VipOnLo, IPERF_PORT};

pub struct Haproxy<'a> {
    ns: &'a Netns,
    vip: Ipv4Addr,
    process: Process,
    dir: tempfile::TempDir,
    _vip: VipOnLo<'a>,
}

fn global(socket: &Path) -> String {
    format!(
        "global\n    maxconn 7000\n    nbthread {}\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    mode tcp\n    option splice-auto\n    timeout connect 5s\n    timeout client 60s\n    \
         timeout server 60s\n    maxconn 7000\n",
        crate::bench::cores::dataplane_threads(),
        socket.display()
    )
}

/// tls: one frontend on `port` that waits up to 5 s for a complete ClientHello, rejects anything else, and sends
/// each SNI of `snis` to the backend's `backend_port`; other SNIs match no backend and are closed.
pub fn tls_config(
    vip: Ipv4Addr,
    port: u16,
    snis: &[&str],
    backend: Ipv4Addr,
    backend_port: u16,
    socket: &Path,
) -> String {
    let mut c = global(socket);
    c.push_str(&format!(
        "\nfrontend fe_tls\n    bind {vip}:{port}\n    tcp-request inspect-delay 5s\n    \
         tcp-request content reject unless {{ req.ssl_hello_type 1 }}\n"
    ));
    for sni in snis {
        c.push_str(&format!(
            "    use_backend be_tls if {{ req.ssl_sni -i {sni} }}\n"
        ));
    }
    c.push_str(&format!(
        "backend be_tls\n    server backend {backend}:{backend_port}\n"
    ));
    c
}

pub fn config(vip: Ipv4Addr, backend: Ipv4Addr, socket: &Path) -> String {
    let mut c = global(socket);
    for port in [IPERF_PORT, loadgen::ACCEPT_CLOSE_PORT, loadgen::ECHO_PORT] {
        c.push_str(&format!(
            "\nfrontend fe_{port}\n    bind {vip}:{port}\n    default_backend be_{port}\n\
             backend be_{port}\n    server backend {backend}:{port}\n"
        ));
    }
    c
}

/// `CumConns` of `show info`: connections accepted since start.
pub fn cum_conns(socket: &Path) -> anyhow::Result<u64> {
    let info = stats_command(socket, "show info")?;
    info.lines()
        .find_map(|l| l.strip_prefix("CumConns:"))
        .context("no CumConns in `show info`")?
        .trim()
        .parse()
        .context("CumConns")
}

/// One command on the stats socket, its answer.
fn stats_command(socket: &Path, command: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl<'a> Haproxy<'a> {
    /// l4: the TCP ports proxied to the backend.
    pub fn start(ns: &'a Netns, vip: Ipv4Addr, backend: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_with(ns, vip, |socket| config(vip, backend, socket))
    }

    /// Runs HAProxy with the configuration `render(stats socket path)`.
    pub fn start_with(
        ns: &'a Netns,
        vip: Ipv4Addr,
        render: impl FnOnce(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let vip_guard = VipOnLo::add(ns, vip)?;
        let dir = gateway_tests::netns::temp_dir("bench-haproxy")?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, render(&dir.path().join("stats.sock")))?;
        let cfg_s = cfg.display().to_string();
        let mut process = ns.spawn(&["haproxy", "-db", "-f", &cfg_s])?;
        let socket = dir.path().join("stats.sock");
        // Ready once the stats socket answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cum_conns(&socket).is_err() {
            if let Some(st) = process.try_wait()? {
                bail!("haproxy exited ({st}):\n{}", process.log_tail(30));
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy's stats socket did not answer within 10 s:\n{}",
                    process.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Haproxy {
            ns,
            vip,
            process,
            dir,
            _vip: vip_guard,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("stats.sock")
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        let _ = self.process.terminate(Duration::from_secs(3));
    }
}

impl Peer for Haproxy<'_> {
    fn kind(&self) -> PeerKind {
        PeerKind::Haproxy
    }
    fn target(&self) -> Ipv4Addr {
        self.vip
    }
    fn udp(&self) -> bool {
        false
    }
    fn pids(&self) -> Vec<u32> {
        super::ns_processes(self.ns)
    }
    fn traffic_counter(&self, _: Proto) -> anyhow::Result<u64> {
        cum_conns(&self.socket())
    }
    fn counter_description(&self) -> &'static str {
        "`CumConns` of HAProxy's `show info` (stats socket)"
    }
    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::copy(self.dir.path().join("haproxy.cfg"), dir.join("haproxy.cfg"));
        let _ = std::fs::write(dir.join("haproxy.log"), self.process.log());
        if let Ok(s) = stats_command(&self.socket(), "show info") {
            let _ = std::fs::write(dir.join("haproxy-info.txt"), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_routes_by_sni_after_the_hello() {
        let c = tls_config(
            Ipv4Addr::new(198, 18, 100, 1),
            443,
            &["a.example.com", "b.example.com"],
            Ipv4Addr::new(198, 18, 11, 2),
            8443,
            Path::new("/run/s.sock"),
        );
        assert!(c.contains("bind 198.18.100.1:443\n    tcp-request inspect-delay 5s\n"));
        assert!(c.contains("tcp-request content reject unless { req.ssl_hello_type 1 }"));
        assert!(c.contains("use_backend be_tls if { req.ssl_sni -i b.example.com }"));
        assert!(c.contains("server backend 198.18.11.2:8443"));
        assert!(!c.contains("default_backend"), "no default route:\n{c}");
    }
}
