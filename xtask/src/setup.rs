//! Machine set-up: Debian packages, bpf-linker built against LLVM 22, the `rust-src` component, bpffs. Every
//! step checks first, so a machine that has everything is done in seconds.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{build::path_with_cargo_bin, cmd};

/// Packages the build and the tests need.
const PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22 (Debian 12's default LLVM 14 is too old; bookworm-security has 22).
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    // Network namespaces, links, addresses, routes; traffic and inspection tools used by tests and the demo.
    "iproute2",
    "iptables",
    "nftables",
    "ethtool",
    "iperf3",
    "openssl",
    "curl",
    "socat",
    "tcpdump",
    "bpftool",
    // h2load: HTTP/2 load in the HTTP end-to-end tests.
    "nghttp2-client",
];

/// Extra packages for `cargo xtask bench` (the peers measured side by side).
const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "wrk"];

#[derive(clap::Args, Default)]
pub struct SetupArgs {
    /// Also install the benchmark peers (HAProxy, NGINX, wrk, h2load).
    #[arg(long)]
    pub bench: bool,
}

/// One set-up step: a check and an installer.
struct Step {
    name: &'static str,
    done: Box<dyn Fn() -> bool>,
    install: Box<dyn Fn() -> anyhow::Result<()>>,
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !nix_is_root() {
        bail!("setup installs packages and needs root; run it as root (CI and the dev machines are root)");
    }
    let mut packages: Vec<&'static str> = PACKAGES.to_vec();
    if args.bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    let steps = vec![
        Step {
            name: "Debian packages",
            done: Box::new({
                let p = packages.clone();
                move || missing_packages(&p).is_empty()
            }),
            install: Box::new(move || install_packages(&packages)),
        },
        Step {
            name: "rust-src for the stable toolchain (-Z build-std=core)",
            done: Box::new(has_rust_src),
            install: Box::new(|| {
                cmd::run(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "stable",
                ]))
            }),
        },
        Step {
            name: "bpf-linker 0.13 (LLVM 22)",
            done: Box::new(has_bpf_linker),
            install: Box::new(install_bpf_linker),
        },
        Step {
            name: "bpffs at /sys/fs/bpf",
            done: Box::new(bpffs_mounted),
            install: Box::new(mount_bpffs),
        },
    ];
    let bar = ProgressBar::new(steps.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} setup [{bar:20.cyan/blue}] {pos}/{len} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    for step in &steps {
        bar.set_message(step.name);
        if (step.done)() {
            bar.suspend(|| eprintln!("  ok       {}", step.name));
        } else {
            bar.suspend(|| eprintln!("  install  {}", step.name));
            bar.suspend(|| (step.install)())
                .with_context(|| format!("setting up {}", step.name))?;
            if !(step.done)() {
                bail!("{} still missing after installing it", step.name);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("setup complete ({:.1?})", started.elapsed());
    Ok(())
}

fn nix_is_root() -> bool {
    cmd::output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            !cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    eprintln!("installing: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed; check that Debian's package mirror is reachable")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed; LLVM 22 comes from Debian's bookworm-security suite")
}

fn has_rust_src() -> bool {
    cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "stable",
    ]))
    .map(|s| s.lines().any(|l| l.starts_with("rust-src")))
    .unwrap_or(false)
}

fn has_bpf_linker() -> bool {
    cmd::output(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", path_with_cargo_bin()),
    )
    .map(|s| s.contains("0.13"))
    .unwrap_or(false)
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let llvm = "/usr/lib/llvm-22";
    if !Path::new(llvm).exists() {
        bail!("{llvm} is missing: the llvm-22-dev package must be installed first");
    }
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", llvm)
            .env("PATH", format!("{llvm}/bin:{}", path_with_cargo_bin()))
            .env_remove("CARGO_TARGET_DIR"),
    )
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.starts_with("bpf ")
            })
        })
        .unwrap_or(false)
}

fn mount_bpffs() -> anyhow::Result<()> {
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
