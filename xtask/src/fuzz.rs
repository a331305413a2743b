//! The bounded fuzz run of the ClientHello parser (`gateway-userspace/fuzz`, crate `gateway-clienthello`), part
//! of `cargo xtask test` and runnable alone as `cargo xtask fuzz`.
//!
//! cargo-fuzz is installed into ~/.cargo/bin when missing. It needs unstable compiler flags: the stable
//! toolchain is used with `RUSTC_BOOTSTRAP=1` (see ../shared/TOOLCHAIN.md). No sanitizer: the parser is safe
//! Rust, so what the run can find is a panic (overflow checks and debug assertions are on), a hang, or memory
//! growth, which libFuzzer reports without one; leaving ASan out keeps the instrumented build to about a
//! minute. The run starts from the repository's corpus (`gateway-userspace/tests/corpus/clienthello`) plus the
//! inputs earlier runs found (kept in the target directory), and fails on any crash, timeout or out-of-memory.
use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context};

use crate::cmd;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long libFuzzer runs (the build before it is not counted).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
}

/// Installs cargo-fuzz if needed, builds the target and fuzzes it for `seconds`.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !cmd::succeeds(cmd::cargo().args(["fuzz", "--version"])) {
        eprintln!("cargo-fuzz not found: installing it (once, into ~/.cargo/bin)");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }
    let root = cmd::root();
    let fuzz_dir = root.join("gateway-userspace/fuzz");
    // The fuzz crate is its own workspace: start its lock file from the main one, so it resolves the same
    // versions (ones that build with the installed toolchain) instead of the newest.
    let lock = fuzz_dir.join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(root.join("Cargo.lock"), &lock).context("seeding the fuzz Cargo.lock")?;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("fuzz");
    let found = target.join("corpus-clienthello");
    let artifacts = target.join("artifacts-clienthello");
    std::fs::create_dir_all(&found)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("gateway-userspace/tests/corpus/clienthello");
    let mut fuzz = cmd::cargo();
    fuzz.current_dir(root.join("gateway-userspace"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "clienthello", "--sanitizer", "none"])
        .arg("--target-dir")
        .arg(&target)
        .arg(&found)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // Inputs up to the parser's buffer limit and a bit beyond; one input may take 10 s at most; the whole
        // process stays under 512 MiB.
        .args(["-max_len=20000", "-timeout=10", "-rss_limit_mb=512"])
        .args(["-print_final_stats=1", "-verbosity=0"]);
    let result = cmd::run(&mut fuzz);
    eprintln!(
        "fuzz: clienthello, {} s budget: {}; {:.0?} in all with the build",
        args.seconds,
        if result.is_ok() {
            "no failure"
        } else {
            "FAILED"
        },
        started.elapsed()
    );
    if let Err(e) = result {
        bail!(
            "{e:#}\nthe ClientHello fuzz target failed: the input is in {} (add it to the corpus with its \
             expected outcome once fixed)",
            artifacts.display()
        );
    }
    Ok(())
}
