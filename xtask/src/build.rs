//! Building the eBPF object and the workspace binaries.
use std::time::Instant;

use anyhow::Context;

use crate::cmd;

/// Builds `gateway-ebpf` for `bpfel-unknown-none` with the stable toolchain (`RUSTC_BOOTSTRAP=1` enables
/// `-Z build-std=core`, see ../shared/TOOLCHAIN.md). The object lands in `gateway-ebpf/target/`, where the
/// userspace build script finds it.
pub fn ebpf(release: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = cmd::root();
    let dir = root.join("gateway-ebpf");
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&dir)
        .args(["build", "--target-dir"])
        .arg(dir.join("target"))
        .env("RUSTC_BOOTSTRAP", "1")
        // The object's location must not move with the caller's target dir, and the crate's own rustflags
        // (BTF for bpf_loop) must apply.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("PATH", path_with_cargo_bin());
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
        .context("building the eBPF programs (is bpf-linker installed? run `cargo xtask setup`)")?;
    let profile = if release { "release" } else { "debug" };
    let object = dir.join(format!("target/bpfel-unknown-none/{profile}/gateway-ebpf"));
    // Make the object the userspace build will embed unambiguous: the build script prefers release.
    if !release {
        let other = dir.join("target/bpfel-unknown-none/release/gateway-ebpf");
        let _ = std::fs::remove_file(other);
    }
    eprintln!(
        "eBPF object: {} ({:.1?})",
        object.display(),
        started.elapsed()
    );
    Ok(())
}

/// PATH with `~/.cargo/bin` first, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> String {
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    format!("{home}/bin:{}", std::env::var("PATH").unwrap_or_default())
}

/// Features the test and demo builds enable: the Kubernetes provider is behind a cargo feature (it pulls in
/// kube-rs), and its tests (against a mock API server) run with all the others. The demo builds with the same
/// features so `cargo xtask demo` and `cargo xtask test` share one build.
pub const TEST_FEATURES: &[&str] = &["--features", "gateway-userspace/kubernetes"];

/// Builds every binary of the workspace (the `gateway` agent and the test helpers) in the dev profile, with
/// `features` (e.g. [`TEST_FEATURES`]).
pub fn binaries(features: &[&str]) -> anyhow::Result<()> {
    cmd::run(
        cmd::cargo()
            .args(["build", "--workspace", "--bins"])
            .args(features),
    )
    .context("building the workspace binaries")
}
