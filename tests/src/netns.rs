//! Network namespaces owned by a test: creation, deletion on drop, commands and
//! threads inside them, child processes with captured logs, and removal of
//! namespaces left behind by test processes that died.
//!
//! Every namespace created here is named `gwt-<pid>-<unique>-<role>` (see
//! [`unique_id`]), so parallel test processes never collide and a later run can
//! recognise leftovers whose owning pid is gone ([`cleanup_stale`]).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Prefix of every namespace (and bpffs directory) this harness creates.
pub const PREFIX: &str = "gwt-";

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicU64 = AtomicU64::new(0);
static STALE_CLEANUP: Once = Once::new();

/// A short id unique among all live test processes: `<pid>-<counter><4 random chars>`.
///
/// The pid comes first so [`cleanup_stale`] can tell whether the owner is still alive.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}{}", std::process::id(), n, random_suffix(4))
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut v = h.finish();
    (0..len)
        .map(|_| {
            let c = ALPHABET[(v % ALPHABET.len() as u64) as usize] as char;
            v /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The pid embedded in a harness-made name `gwt-<pid>-...`, if the name is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs [`cleanup_stale`] once per process; called by [`Netns::new`].
pub fn cleanup_stale_once() {
    STALE_CLEANUP.call_once(|| {
        let removed = cleanup_stale();
        if !removed.is_empty() {
            tracing::info!(?removed, "removed stale test namespaces");
        }
    });
}

/// Deletes every `gwt-<pid>-*` namespace (after killing its processes), every
/// `/sys/fs/bpf/ebpf-gateway-test/gwt-<pid>-*` directory and every
/// `$TMPDIR/gwt-<pid>-*` temp dir whose `pid` is no longer alive. Returns the names removed. Errors are ignored: another process may be
/// cleaning the same leftovers concurrently.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match owner_pid(&name) {
                Some(pid) if !pid_alive(pid) => {
                    kill_ns_pids(&name);
                    let _ = Command::new("ip")
                        .args(["netns", "del", &name])
                        .stderr(Stdio::null())
                        .status();
                    removed.push(name);
                }
                _ => {}
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(crate::gateway::BPFFS_TEST_ROOT) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name) {
                if !pid_alive(pid) && std::fs::remove_dir_all(e.path()).is_ok() {
                    removed.push(e.path().display().to_string());
                }
            }
        }
    }
    // Temp dirs are kept when logs were asked to be kept.
    let tmp = std::env::temp_dir();
    let tmp_entries = match std::env::var_os("GWT_KEEP_LOGS") {
        None => std::fs::read_dir(tmp).ok(),
        Some(_) => None,
    };
    if let Some(entries) = tmp_entries {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name) {
                if !pid_alive(pid) && std::fs::remove_dir_all(e.path()).is_ok() {
                    removed.push(e.path().display().to_string());
                }
            }
        }
    }
    removed
}

/// A temp dir named `gwt-<pid>-<kind>-XXXXXX` (so [`cleanup_stale`] can remove it
/// if this process dies without running destructors).
pub fn temp_dir(kind: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-{kind}-", std::process::id()))
        .tempdir()
}

/// Pids of processes whose network namespace is `name` (`ip netns pids`), never ours.
pub fn ns_pids(name: &str) -> Vec<u32> {
    let me = std::process::id();
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default()
}

fn kill_ns_pids(name: &str) {
    for pid in ns_pids(name) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn cmd_error(what: &str, out: &Output) -> anyhow::Error {
    anyhow!(
        "`{what}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        if out.stdout.is_empty() {
            String::new()
        } else {
            format!(" [stdout: {}]", String::from_utf8_lossy(&out.stdout).trim())
        }
    )
}

/// Runs a command in the current (root) namespace; error includes stderr.
pub fn host_cmd<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let what = display_argv(argv);
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{what}`"))?;
    if !out.status.success() {
        return Err(cmd_error(&what, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn display_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a spawned process enters the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enter {
    /// `ip netns exec NAME ...`: also gets a private mount namespace with a fresh
    /// `/sys` for the netns (which hides `/sys/fs/bpf`!).
    #[default]
    IpNetnsExec,
    /// `nsenter --net=/run/netns/NAME ...`: only the network namespace changes, so
    /// the host's mounts (notably bpffs at `/sys/fs/bpf`) stay visible. Use this for
    /// anything that pins eBPF objects.
    NetOnly,
}

/// Options for [`Netns::spawn_with`].
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// How to enter the namespace.
    pub enter: Enter,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Log file to use (appended to) instead of a fresh one in a temp dir.
    pub log_path: Option<PathBuf>,
}

/// A network namespace created by this harness; deleted (after killing every
/// process inside it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (must start with [`PREFIX`] and carry our pid, see
    /// [`Netns::with_role`]) and brings up its `lo`.
    pub fn new(name: &str) -> Result<Self> {
        cleanup_stale_once();
        if !name.starts_with(PREFIX) {
            bail!("namespace name {name:?} must start with {PREFIX:?}");
        }
        // Concurrent first-time `ip netns add` in several processes can race on the
        // /run/netns mount setup; retry a few times.
        let mut last = None;
        for attempt in 0..3 {
            match host_cmd(&["ip", "netns", "add", name]) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
                }
            }
        }
        if let Some(e) = last {
            return Err(e.context(format!("creating namespace {name}")));
        }
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates `gwt-<unique_id>-<role>`.
    pub fn with_role(role: &str) -> Result<Self> {
        Self::new(&format!("{PREFIX}{}-{role}", unique_id()))
    }

    /// The namespace's name (as used by `ip netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME <args>`; returns stdout, fails with stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        host_cmd(&argv)
    }

    /// Runs `ip netns exec NAME argv...` and returns stdout; a non-zero exit is an
    /// error that includes the command and its stderr.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        let out = self.exec_output(argv)?;
        if !out.status.success() {
            return Err(cmd_error(
                &format!("ip netns exec {} {}", self.name, display_argv(argv)),
                &out,
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Netns::exec`] but returns the raw output whatever the exit status.
    pub fn exec_output<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        if argv.is_empty() {
            bail!("empty command");
        }
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run ip netns exec {}", self.name))
    }

    /// Runs a shell script (`sh -c`) inside the namespace; returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec(&["sh", "-c", script])
    }

    /// Reads a sysctl (`net.ipv4.ip_forward`) as seen inside the namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path))
            .map(|s| s.trim().to_string())
            .with_context(|| format!("reading {key} in {}", self.name))
    }

    /// Writes a sysctl inside the namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .with_context(|| format!("writing {key}={value} in {}", self.name))
    }

    /// Spawns `argv` inside the namespace via `ip netns exec`, stdout+stderr going to
    /// a log file. The child is killed and reaped when the [`Process`] drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Process> {
        self.spawn_with(argv, SpawnOptions::default())
    }

    /// [`Netns::spawn`] with options (entry method, env, log file).
    pub fn spawn_with<S: AsRef<OsStr>>(&self, argv: &[S], opts: SpawnOptions) -> Result<Process> {
        let (prog, args) = argv.split_first().context("empty command")?;
        let mut cmd = match opts.enter {
            Enter::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.name]).arg(prog);
                c
            }
            Enter::NetOnly => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", self.path().display()))
                    .arg("--")
                    .arg(prog);
                c
            }
        };
        cmd.args(args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let label = format!("[{}] {}", self.name, display_argv(argv));
        Process::spawn(cmd, label, opts.log_path)
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns`), and
    /// returns its result. Sockets opened in `f` live in the namespace. Panics in
    /// `f` propagate; failing to enter the namespace panics with a clear message.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open().unwrap_or_else(|e| panic!("{e:#}"));
        let name = &self.name;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {name} failed: {e}"));
                drop(file);
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Runs the future made by `f` on a current-thread tokio runtime (IO and time
    /// enabled) on a thread inside the namespace.
    pub fn run_async<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building tokio runtime")
                .block_on(f())
        })
    }

    /// Starts a detached (`'static`) thread inside the namespace, e.g. for a server
    /// that outlives the call. The caller joins it.
    pub fn spawn_thread<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("ns-{name}"))
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {name} failed: {e}"));
                drop(file);
                f()
            })
            .context("spawning namespace thread")
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }

    /// Pids of processes currently inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.name)
    }

    /// Whether `/run/netns/<name>` still exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill everything inside first (a netns with live processes would survive
        // `ip netns del` as long as they run).
        for _ in 0..3 {
            let pids = ns_pids(&self.name);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = host_cmd(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: deleting namespace {}: {e:#}", self.name);
        }
    }
}

/// A child process whose stdout and stderr go to a log file. Killed (SIGKILL)
/// and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    log_path: PathBuf,
    dirs: Vec<tempfile::TempDir>,
}

impl Process {
    /// Spawns a prepared command with output captured to `log_path` (appended) or a
    /// new log file in a temp dir. Set `GWT_KEEP_LOGS=1` to keep temp dirs.
    pub fn spawn(mut cmd: Command, label: String, log_path: Option<PathBuf>) -> Result<Self> {
        let mut dirs = Vec::new();
        let log_path = match log_path {
            Some(p) => p,
            None => {
                let dir = crate::netns::temp_dir("log")?;
                let p = dir.path().join("process.log");
                dirs.push(dir);
                p
            }
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log {}", log_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {label}"))?;
        Ok(Process {
            child,
            label,
            log_path,
            dirs,
        })
    }

    /// Keeps `dir` alive as long as the process (e.g. its certificate files).
    pub fn hold_dir(&mut self, dir: tempfile::TempDir) {
        self.dirs.push(dir);
    }

    /// The child's pid (with `ip netns exec`/`nsenter` it is the program itself, they exec).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A human-readable description (namespace and command line).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Path of the captured stdout+stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (lossy UTF-8).
    pub fn log(&self) -> String {
        let mut s = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `Some(status)` once exited (reaps it), `None` while running.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (ignored if it already exited).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        match kill(Pid::from_raw(self.child.id() as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(anyhow!("kill({}, {sig}): {e}", self.child.id())),
        }
    }

    /// Waits up to `timeout` for exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        Ok(self.child.wait()?)
    }

    /// Waits (bounded) until a log line equal to `line` (trimmed) appears. Fails
    /// early, with the log tail, if the process exits.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(|l| l.trim() == line) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited ({st}) before printing {line:?}; log:\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {line:?} within {timeout:?}; log:\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("GWT_KEEP_LOGS").is_some() {
            for d in self.dirs.drain(..) {
                eprintln!("keeping {} ({})", d.path().display(), self.label);
                let _ = d.keep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_differ_and_carry_pid() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        let name = format!("{PREFIX}{a}-gw");
        assert_eq!(owner_pid(&name), Some(std::process::id()));
        assert_eq!(owner_pid("other-1-x"), None);
        assert_eq!(owner_pid("gwt-notapid-x"), None);
    }
}
