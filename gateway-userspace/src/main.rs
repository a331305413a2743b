//! `gateway`: an eBPF-accelerated Gateway API gateway. `gateway run` is the agent; `gateway validate` checks
//! configuration offline.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gateway_userspace::{
    agent::{self, AgentOptions, ProviderOptions},
    dataplane::{self, conntrack::Timeouts},
    translate::{PassthroughMode, TranslateOptions, DEFAULT_CONTROLLER_NAME},
    validate,
};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "An eBPF-accelerated Kubernetes Gateway API gateway",
    long_about = "An eBPF-accelerated Kubernetes Gateway API gateway.\n\nTCP and UDP routes are forwarded inside \
                  the kernel by a TC program (with an XDP fast path in front of it on interfaces given with \
                  --xdp); the agent translates Gateway API objects (from YAML files or Kubernetes) into the \
                  program's maps."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: watch the configuration, program the kernel, serve the admin endpoint.
    Run(RunArgs),
    /// Translate configuration offline and print every object with its computed status.
    Validate(validate::ValidateArgs),
    /// Drive load at a target (TCP, TLS, canned ClientHellos, UDP, HTTP) and report latencies and errors.
    Loadtest(gateway_userspace::loadtest::LoadtestArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where Gateway API objects come from: `file` (YAML given with --config, watched) or `kubernetes`.
    #[arg(long, value_enum, default_value_t = Provider::File)]
    provider: Provider,
    /// Gateway API YAML files or directories to serve (standalone mode); watched for changes.
    #[arg(long, short, value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics, /status).
    #[arg(long, default_value = "0.0.0.0:9902", value_name = "ADDR")]
    admin: SocketAddr,
    /// Attach only to these interfaces (repeatable). Default: every interface that is up, except loopback,
    /// including ones that appear later.
    #[arg(long = "interface", short = 'i', value_name = "NAME")]
    interfaces: Vec<String>,
    /// Put the XDP fast path in front of the TC program on this interface (repeatable): packets of established
    /// TCP/UDP flows are forwarded by XDP (before the kernel builds an skb, in `native` mode, the default; on the
    /// skb in `generic` mode, for drivers without native XDP); everything else still goes through the TC program.
    /// XDP only redirects to interfaces in XDP mode, so give it on both the client and the backend side. A veth
    /// in XDP mode needs its peer to take redirected frames (GRO on, or an XDP program there). Other interfaces
    /// stay TC only (the default; see docs/l4.md for when XDP is faster).
    #[arg(long = "xdp", value_name = "NAME[:native|generic]", value_parser = parse_xdp_interface)]
    xdp: Vec<(String, dataplane::XdpMode)>,
    /// Where maps and links are pinned (a bpffs). A restarted agent adopts what it finds there.
    #[arg(long, default_value = "/sys/fs/bpf/ebpf-gateway", value_name = "DIR")]
    bpffs_root: PathBuf,
    /// Gateway API controller name: GatewayClasses naming it are served.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Source ports used for SNAT towards backends (keep them clear of the local ephemeral range).
    #[arg(long, default_value = "10000-32767", value_parser = parse_port_range, value_name = "MIN-MAX")]
    snat_ports: (u16, u16),
    /// Conntrack capacity in entries (two per flow). When full, new flows are refused and counted.
    #[arg(long, default_value_t = 262_144)]
    conntrack_entries: u32,
    /// Idle timeout of established TCP flows, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    tcp_idle_timeout: u64,
    /// Idle timeout of UDP flows, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    udp_idle_timeout: u64,
    /// Worker threads serving HTTP/HTTPS listeners, each with its own runtime, listening socket per listener
    /// (SO_REUSEPORT) and backend connection pool, so a request never crosses threads. Default: one per CPU
    /// the agent may run on.
    #[arg(long, env = "GATEWAY_HTTP_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    http_workers: Option<u16>,
    /// Seconds an HTTP/1.1 client may take to send a complete request head: a new connection that stays
    /// silent, a head sent half way, or a keep-alive connection idle between requests is closed after it
    /// (NGINX's `client_header_timeout` and `keepalive_timeout`). 0: no timeout.
    #[arg(
        long,
        env = "GATEWAY_HTTP_CLIENT_TIMEOUT",
        default_value_t = 60.0,
        value_name = "SECONDS"
    )]
    http_client_timeout: f64,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
}

/// Kubernetes provider settings (`--provider kubernetes`).
#[derive(clap::Args)]
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
struct KubernetesArgs {
    /// Name of the leader-election Lease (coordination.k8s.io/v1) in the agent's namespace. Agents sharing it
    /// elect one leader, which writes status and manages the Gateways' LoadBalancer Services.
    #[arg(long, default_value = "ebpf-gateway-leader", value_name = "NAME")]
    leader_election_lease: String,
    /// Namespace of the Lease (default: the client's namespace, e.g. the pod's service account namespace).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// This agent's identity in the Lease (default: the pod name, else the node name, else the host name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    identity: Option<String>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected MIN-MAX, e.g. 10000-32767")?;
    let (a, b) = (
        a.trim().parse::<u16>().map_err(|e| e.to_string())?,
        b.trim().parse::<u16>().map_err(|e| e.to_string())?,
    );
    if a == 0 || a > b {
        return Err(format!("{a}-{b} is not a range of non-zero ports"));
    }
    Ok((a, b))
}

fn parse_xdp_interface(s: &str) -> Result<(String, dataplane::XdpMode), String> {
    // Interface names cannot contain ':' (the kernel's dev_valid_name), so it separates the mode.
    let (name, mode) = match s.split_once(':') {
        Some((name, mode)) => (name, mode.parse()?),
        None => (s, dataplane::XdpMode::Native),
    };
    if name.is_empty() {
        return Err("expected an interface name, e.g. eth0 or eth0:generic".into());
    }
    Ok((name.to_string(), mode))
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// mimalloc instead of glibc's allocator: the HTTP proxy allocates per request (headers, bodies, futures), and
/// glibc's malloc/free took ~10% of its CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => validate::run(&args),
        Command::Loadtest(args) => gateway_userspace::loadtest::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Provider {
    File,
    Kubernetes,
}

/// TLS passthrough limits (the environment variables are the older way to set them and still work).
#[derive(clap::Args)]
struct TlsArgs {
    /// Seconds a client may take to send a complete ClientHello.
    #[arg(
        long,
        env = "GATEWAY_TLS_HANDSHAKE_TIMEOUT",
        default_value_t = 10.0,
        value_name = "SECONDS"
    )]
    tls_handshake_timeout: f64,
    /// Seconds connecting to a TLS passthrough backend may take.
    #[arg(
        long,
        env = "GATEWAY_TLS_CONNECT_TIMEOUT",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    tls_connect_timeout: f64,
    /// Connections still sending their ClientHello, in total; more are reset.
    #[arg(long, env = "GATEWAY_TLS_MAX_PENDING", default_value_t = 4096)]
    tls_max_pending: usize,
    /// Connections still sending their ClientHello, per client address; more are reset.
    #[arg(
        long,
        env = "GATEWAY_TLS_MAX_PENDING_PER_SOURCE",
        default_value_t = 256
    )]
    tls_max_pending_per_source: usize,
    /// Which path serves TLS passthrough listeners: `kernel` (the eBPF program answers the handshake, routes by
    /// SNI and splices — no socket per connection) or `userspace` (the proxy). A Gateway overrides it with the
    /// annotation `gateway.ebpf.dev/tls-passthrough: kernel|userspace`.
    #[arg(
        long,
        env = "GATEWAY_TLS_PASSTHROUGH",
        value_enum,
        default_value_t = PassthroughMode::Userspace
    )]
    tls_passthrough: PassthroughMode,
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Checked here, before anything is loaded or attached (clap's conditional `required` ignores defaults).
    if args.provider == Provider::File && args.config.is_empty() {
        anyhow::bail!("standalone mode needs the configuration to serve: --config <file-or-directory> (repeatable)");
    }
    if args.provider == Provider::Kubernetes && !args.config.is_empty() {
        anyhow::bail!("--config is for --provider file; the Kubernetes provider reads the cluster");
    }
    let mut xdp = std::collections::BTreeMap::new();
    for (name, mode) in args.xdp {
        if !args.interfaces.is_empty() && !args.interfaces.contains(&name) {
            anyhow::bail!(
                "--xdp {name}: the interface is not among --interface {:?}",
                args.interfaces
            );
        }
        if xdp.insert(name.clone(), mode).is_some_and(|m| m != mode) {
            anyhow::bail!("--xdp {name} is given with two modes");
        }
    }
    let provider = match args.provider {
        Provider::File => ProviderOptions::Files(args.config),
        Provider::Kubernetes => kubernetes_provider(&args.kubernetes, &args.controller_name)?,
    };
    let seconds = |s: f64, flag: &str| {
        anyhow::ensure!(
            s.is_finite() && s > 0.0,
            "{flag} must be a positive number of seconds"
        );
        Ok(Duration::from_secs_f64(s))
    };
    let passthrough = gateway_userspace::passthrough::Settings {
        handshake_timeout: seconds(args.tls.tls_handshake_timeout, "--tls-handshake-timeout")?,
        connect_timeout: seconds(args.tls.tls_connect_timeout, "--tls-connect-timeout")?,
        max_pending: args.tls.tls_max_pending.max(1),
        max_pending_per_source: args.tls.tls_max_pending_per_source.max(1),
    };
    // The kernel path's handshake spans the ClientHello and the backend connection.
    let kernel_handshake_timeout = passthrough.handshake_timeout + passthrough.connect_timeout;
    let http = gateway_userspace::http::Settings {
        workers: args
            .http_workers
            .map_or_else(gateway_userspace::http::proxy::default_workers, usize::from),
        client_header_timeout: match args.http_client_timeout {
            0.0 => None,
            s => Some(seconds(s, "--http-client-timeout")?),
        },
        ..Default::default()
    };
    let options = AgentOptions {
        http,
        passthrough,
        provider,
        admin: args.admin,
        dataplane: dataplane::Settings {
            bpffs_root: args.bpffs_root,
            interfaces: args.interfaces,
            xdp,
            snat_ports: args.snat_ports,
            conntrack_entries: args.conntrack_entries,
            tls_pending: args.tls.tls_max_pending.clamp(1, u32::MAX as usize) as u32,
            tls_pending_per_source: args
                .tls
                .tls_max_pending_per_source
                .clamp(1, u32::MAX as usize) as u32,
            tls_handshake_timeout: kernel_handshake_timeout,
            timeouts: Timeouts {
                tcp_established: Duration::from_secs(args.tcp_idle_timeout),
                udp: Duration::from_secs(args.udp_idle_timeout),
                ..Timeouts::default()
            },
        },
        translate: TranslateOptions {
            controller_name: args.controller_name,
            tls_passthrough: args.tls.tls_passthrough,
            ..TranslateOptions::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime
        .block_on(agent::run(options, shutdown_signal()))
        .context("the agent stopped")
}

#[cfg(feature = "kubernetes")]
fn kubernetes_provider(args: &KubernetesArgs, controller: &str) -> anyhow::Result<ProviderOptions> {
    use gateway_userspace::provider::kubernetes::{
        leader::LeaseSettings, Settings, DEFAULT_DEBOUNCE,
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .context("no identity for leader election: set --identity (or POD_NAME)")?;
    // Without a namespace flag, the service account's namespace (in a pod), else `default`.
    let namespace = args.leader_election_namespace.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "default".into())
    });
    Ok(ProviderOptions::Kubernetes(Settings {
        controller_name: controller.to_owned(),
        lease: LeaseSettings::new(&namespace, &args.leader_election_lease, &identity),
        debounce: DEFAULT_DEBOUNCE,
    }))
}

#[cfg(not(feature = "kubernetes"))]
fn kubernetes_provider(_: &KubernetesArgs, _: &str) -> anyhow::Result<ProviderOptions> {
    anyhow::bail!(
        "this `gateway` binary was built without Kubernetes support; build it with \
         `cargo build --release -p gateway-userspace --features kubernetes` (the release image is), or run \
         standalone with --config <file-or-directory>"
    )
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
