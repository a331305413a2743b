//! Runs the product's `gateway` binary inside a namespace for end-to-end tests:
//! `gateway run --config <file>... --admin 127.0.0.1:9902 --bpffs-root <dir>`,
//! log captured, readiness awaited through `GET /readyz`, and SIGTERM/SIGKILL
//! plus removal of its private bpffs directory on drop.
//!
//! The process enters the namespace with `nsenter --net` rather than
//! `ip netns exec`: the latter remounts `/sys` in a private mount namespace,
//! which hides `/sys/fs/bpf`, so pins would neither be visible to the test nor
//! survive a restart.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{Enter, Netns, Process, SpawnOptions, PREFIX};

/// Parent of every test's bpffs root; children are named `gwt-<pid>-...` so
/// stale ones can be removed ([`crate::netns::cleanup_stale`]).
pub const BPFFS_TEST_ROOT: &str = "/sys/fs/bpf/ebpf-gateway-test";

/// Default admin address inside the gateway namespace.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9902";

/// How long [`GatewayProcess::start`] waits for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

const BUILD_HINT: &str =
    "build it first: cargo build -p gateway-userspace (cargo xtask test does this)";

/// Finds a binary of this workspace: env `env_var` if set, else
/// `<target>/<profile>/<name>` derived from the running executable (which lives
/// in `<target>/<profile>/deps/` for tests, or `<target>/<profile>/` itself).
pub fn sibling_binary(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let candidate = binary_next_to(&exe, name)
        .ok_or_else(|| anyhow!("cannot derive the target dir from {}", exe.display()))?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found (set {env_var} to override)",
            candidate.display()
        )
    }
}

/// `<target>/<profile>/<name>` for an executable at `<target>/<profile>/deps/x`
/// or `<target>/<profile>/x`.
pub fn binary_next_to(exe: &Path, name: &str) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()?
    } else {
        dir
    };
    Some(profile_dir.join(name))
}

/// The `gateway` binary: env `GATEWAY_BIN`, else next to the test executable.
pub fn gateway_bin() -> Result<PathBuf> {
    sibling_binary("GATEWAY_BIN", "gateway").map_err(|e| anyhow!("{e:#}; {BUILD_HINT}"))
}

/// The argument vector after the binary name.
pub fn gateway_args<P: AsRef<Path>>(
    configs: &[P],
    admin: SocketAddr,
    bpffs_root: &Path,
    extra: &[&str],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["run".into()];
    for c in configs {
        a.push("--config".into());
        a.push(c.as_ref().as_os_str().to_owned());
    }
    a.push("--admin".into());
    a.push(admin.to_string().into());
    a.push("--bpffs-root".into());
    a.push(bpffs_root.as_os_str().to_owned());
    a.extend(extra.iter().map(OsString::from));
    a
}

/// Mounts bpffs at `/sys/fs/bpf` if it is not mounted yet.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, mp, ty) = (f.next(), f.next(), f.next());
        mp == Some("/sys/fs/bpf") && ty == Some("bpf")
    });
    if !mounted {
        std::fs::create_dir_all("/sys/fs/bpf")?;
        let out = crate::netns::host_cmd(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
        // Another test process may have mounted it meanwhile.
        if let Err(e) = out {
            let again = std::fs::read_to_string("/proc/self/mounts")?;
            if !again.contains(" /sys/fs/bpf bpf ") {
                return Err(e.context("mounting bpffs"));
            }
        }
    }
    Ok(())
}

/// Writes `yaml` (common leading indentation removed) to `dir/manifests.yaml`
/// and returns the path.
pub fn write_manifests(dir: &Path, yaml: &str) -> Result<PathBuf> {
    write_manifest_file(dir, "manifests.yaml", yaml)
}

/// Writes `yaml` (dedented) to `dir/file_name`.
pub fn write_manifest_file(dir: &Path, file_name: &str, yaml: &str) -> Result<PathBuf> {
    let p = dir.join(file_name);
    std::fs::write(&p, dedent(yaml)).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Removes the common leading whitespace of all non-blank lines and a leading blank line.
pub fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: String = s
        .lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// A running `gateway` inside a namespace.
pub struct GatewayProcess<'ns> {
    ns: &'ns Netns,
    bin: PathBuf,
    args: Vec<OsString>,
    /// Where the extra arguments begin in `args`.
    extra_from: usize,
    admin: SocketAddr,
    bpffs_root: PathBuf,
    log_dir: tempfile::TempDir,
    /// Extra environment variables of the process.
    env: Vec<(OsString, OsString)>,
    process: Option<Process>,
}

impl std::fmt::Debug for GatewayProcess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProcess")
            .field("ns", &self.ns.name())
            .field("bin", &self.bin)
            .field("bpffs_root", &self.bpffs_root)
            .finish()
    }
}

impl<'ns> GatewayProcess<'ns> {
    /// Starts the gateway in `ns` with one or more config files and waits (≤ 20 s)
    /// for `/readyz` to answer 200; fails with the log tail otherwise.
    pub fn start<P: AsRef<Path>>(
        ns: &'ns Netns,
        configs: &[P],
        extra_args: &[&str],
    ) -> Result<Self> {
        let mut g = Self::spawn(ns, configs, extra_args)?;
        g.wait_ready(READY_TIMEOUT)?;
        Ok(g)
    }

    /// Starts without waiting for readiness (to test startup failures).
    pub fn spawn<P: AsRef<Path>>(
        ns: &'ns Netns,
        configs: &[P],
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::spawn_with_bin(ns, gateway_bin()?, configs, extra_args)
    }

    /// [`GatewayProcess::start`] with an explicit binary (e.g. a stand-in).
    pub fn start_with_bin<P: AsRef<Path>>(
        ns: &'ns Netns,
        bin: PathBuf,
        configs: &[P],
        extra_args: &[&str],
    ) -> Result<Self> {
        let mut g = Self::spawn_with_bin(ns, bin, configs, extra_args)?;
        g.wait_ready(READY_TIMEOUT)?;
        Ok(g)
    }

    /// [`GatewayProcess::spawn`] with extra environment variables (e.g. `KUBECONFIG`).
    pub fn spawn_with_env<P: AsRef<Path>>(
        ns: &'ns Netns,
        configs: &[P],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::spawn_inner(ns, gateway_bin()?, configs, extra_args, env)
    }

    /// [`GatewayProcess::spawn`] with an explicit binary.
    pub fn spawn_with_bin<P: AsRef<Path>>(
        ns: &'ns Netns,
        bin: PathBuf,
        configs: &[P],
        extra_args: &[&str],
    ) -> Result<Self> {
        Self::spawn_inner(ns, bin, configs, extra_args, &[])
    }

    fn spawn_inner<P: AsRef<Path>>(
        ns: &'ns Netns,
        bin: PathBuf,
        configs: &[P],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        ensure_bpffs()?;
        let bpffs_root = Path::new(BPFFS_TEST_ROOT).join(format!(
            "{PREFIX}{}-{}",
            crate::netns::unique_id(),
            ns.name().rsplit('-').next().unwrap_or("gw")
        ));
        std::fs::create_dir_all(&bpffs_root)
            .with_context(|| format!("creating {}", bpffs_root.display()))?;
        let admin: SocketAddr = DEFAULT_ADMIN.parse()?;
        let args = gateway_args(configs, admin, &bpffs_root, extra_args);
        let extra_from = args.len() - extra_args.len();
        let log_dir = crate::netns::temp_dir("gateway")?;
        let mut g = GatewayProcess {
            ns,
            bin,
            args,
            extra_from,
            admin,
            bpffs_root,
            log_dir,
            env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            process: None,
        };
        g.launch()?;
        Ok(g)
    }

    fn launch(&mut self) -> Result<()> {
        let mut argv: Vec<OsString> = vec![self.bin.clone().into_os_string()];
        argv.extend(self.args.iter().cloned());
        let opts = SpawnOptions {
            enter: Enter::NetOnly,
            env: [("RUST_BACKTRACE".into(), "1".into())]
                .into_iter()
                .chain(self.env.iter().cloned())
                .collect(),
            log_path: Some(self.log_path()),
        };
        self.process = Some(self.ns.spawn_with(&argv, opts)?);
        Ok(())
    }

    /// Polls `GET /readyz` until 200, the process exits, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.process.as_mut() {
                if let Some(st) = p.try_wait()? {
                    bail!(
                        "gateway exited ({st}) before becoming ready; log tail:\n{}",
                        self.log_tail(60)
                    );
                }
            } else {
                bail!("gateway is not running");
            }
            let last = match self.admin_get("/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((s, body)) => format!("/readyz answered {s}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "gateway not ready within {timeout:?} ({last}); log tail:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on the admin endpoint (from inside the namespace): status and body.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let admin = self.admin;
        let r = self
            .ns
            .run(|| crate::clients::http_request(admin, "GET", &admin.to_string(), path, &[]))?;
        Ok((r.status, r.text()))
    }

    /// The value of one Prometheus sample from `GET /metrics`, by its full series name with labels, e.g.
    /// `gateway_kernel_packets_total{outcome="forwarded"}`; 0 when the series does not exist (yet).
    pub fn metric(&self, series: &str) -> Result<u64> {
        let (status, body) = self.admin_get("/metrics")?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}");
        Ok(body
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0))
    }

    /// The (protocol, port) pairs set in the kernel's `SERVED_PORTS` bitmap (the ports the kernel path looks
    /// at), read from the agent's pinned map.
    pub fn served_ports(&self) -> Result<std::collections::BTreeSet<(u8, u16)>> {
        use gateway_common::{served_ports, ABI_VERSION, PROTO_TCP, PROTO_UDP};
        let path = self
            .bpffs_root
            .join(format!("v{ABI_VERSION}"))
            .join("SERVED_PORTS");
        let map = aya::maps::MapData::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let array: aya::maps::Array<_, u64> = aya::maps::Map::Array(map).try_into()?;
        let words = (0..served_ports::WORDS)
            .map(|i| array.get(&i, 0))
            .collect::<Result<Vec<u64>, _>>()?;
        let mut ports = std::collections::BTreeSet::new();
        for proto in [PROTO_TCP, PROTO_UDP] {
            for port in 0..=u16::MAX {
                let (word, bit) = served_ports::slot(proto, port).expect("TCP and UDP have ports");
                if words[word as usize] & bit != 0 {
                    ports.insert((proto, port));
                }
            }
        }
        Ok(ports)
    }

    /// A kernel packet counter by outcome (`gateway_kernel_packets_total{outcome=...}`).
    pub fn kernel_packets(&self, outcome: &str) -> Result<u64> {
        self.metric(&format!(
            "gateway_kernel_packets_total{{outcome=\"{outcome}\"}}"
        ))
    }

    /// The whole log (stdout+stderr of every run, restarts appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("gateway.log")
    }

    /// The bpffs directory given to this gateway (kept across restarts).
    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    /// The exact arguments passed after the binary.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// SIGKILL (simulates a crash); pins in bpffs stay.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status if it was running.
    pub fn stop(&mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        match self.process.take() {
            Some(mut p) => Ok(Some(p.terminate(grace)?)),
            None => Ok(None),
        }
    }

    /// Stops gracefully (if running) and starts again with the same arguments and
    /// bpffs root, waiting for readiness.
    pub fn restart(&mut self) -> Result<()> {
        self.stop(Duration::from_secs(5))?;
        self.launch()?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Starts again after [`GatewayProcess::kill9`] or [`GatewayProcess::stop`], with other extra arguments
    /// (same configuration and bpffs root), e.g. to change an interface's mode across a restart.
    pub fn start_again_with(&mut self, extra_args: &[&str]) -> Result<()> {
        self.args.truncate(self.extra_from);
        self.args.extend(extra_args.iter().map(OsString::from));
        self.start_again()
    }

    /// Starts again after [`GatewayProcess::kill9`] or [`GatewayProcess::stop`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("gateway is still running");
        }
        self.launch()?;
        self.wait_ready(READY_TIMEOUT)
    }
}

impl Drop for GatewayProcess<'_> {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(3));
        if self.bpffs_root.starts_with(BPFFS_TEST_ROOT) {
            let _ = std::fs::remove_dir_all(&self.bpffs_root);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}\n--- end gateway log ---",
                self.ns.name(),
                self.log_tail(80)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_lookup_from_deps_and_profile_dir() {
        assert_eq!(
            binary_next_to(Path::new("/t/debug/deps/harness-abc"), "gateway"),
            Some(PathBuf::from("/t/debug/gateway"))
        );
        assert_eq!(
            binary_next_to(Path::new("/t/release/echo"), "gateway"),
            Some(PathBuf::from("/t/release/gateway"))
        );
    }

    #[test]
    fn missing_binary_error_says_how_to_build() {
        // Point the env override at nothing: the error must still carry the hint.
        let e = sibling_binary("GWT_TEST_SURELY_UNSET_VAR", "surely-not-built-xyz").unwrap_err();
        assert!(format!("{e:#}").contains("surely-not-built-xyz"));
        assert!(BUILD_HINT.contains("cargo build -p gateway-userspace"));
    }

    #[test]
    fn args_are_built_in_order() {
        let a = gateway_args(
            &[PathBuf::from("/c/a.yaml"), PathBuf::from("/c/b.yaml")],
            "127.0.0.1:9902".parse().unwrap(),
            Path::new("/sys/fs/bpf/ebpf-gateway-test/gwt-1-0abc-gw"),
            &["--log-level", "debug"],
        );
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "run",
                "--config",
                "/c/a.yaml",
                "--config",
                "/c/b.yaml",
                "--admin",
                "127.0.0.1:9902",
                "--bpffs-root",
                "/sys/fs/bpf/ebpf-gateway-test/gwt-1-0abc-gw",
                "--log-level",
                "debug"
            ]
        );
    }

    #[test]
    fn dedent_and_write() {
        let d = tempfile::tempdir().unwrap();
        let p = write_manifests(d.path(), "\n    a: 1\n    b:\n      c: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(p).unwrap(), "a: 1\nb:\n  c: 2\n");
    }
}
