//! `cargo xtask test`: set-up, eBPF build, workspace build, then every test (unit, eBPF program tests through
//! BPF_PROG_TEST_RUN, end-to-end tests in network namespaces), then a bounded fuzz run of the ClientHello
//! parser ([`crate::fuzz`]). Nothing is skipped: a test that needs eBPF fails when eBPF cannot load.
use std::time::Instant;

use anyhow::Context;

use crate::{build, cmd, fuzz, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the set-up step (for quick local iterations on a machine that has everything).
    #[arg(long)]
    pub no_setup: bool,
    /// How long the ClientHello parser is fuzzed after the tests (seconds; 0 leaves the fuzz run out, with a
    /// note).
    #[arg(long, default_value_t = 30)]
    pub fuzz_seconds: u64,
    /// Extra arguments for the test runner (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub runner_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    build::ebpf(true)?;
    build::binaries(build::TEST_FEATURES)?;
    let nextest = cmd::succeeds(cmd::cargo().args(["nextest", "--version"]));
    let mut runner = cmd::cargo();
    if nextest {
        // One process per test suits network namespaces; --no-fail-fast reports every failure in one run.
        runner.args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--failure-output",
            "final",
        ]);
        runner.args(build::TEST_FEATURES);
    } else {
        eprintln!("cargo-nextest not found; using cargo test");
        runner.args(["test", "--workspace", "--no-fail-fast"]);
        runner.args(build::TEST_FEATURES);
    }
    runner.args(&args.runner_args);
    let tests = cmd::run(&mut runner).context("tests failed");
    // Fuzzed even when tests failed, so one run reports everything.
    let fuzzed = if args.fuzz_seconds > 0 {
        fuzz::run(&fuzz::FuzzArgs {
            seconds: args.fuzz_seconds,
        })
    } else {
        eprintln!("fuzz run left out (--fuzz-seconds 0)");
        Ok(())
    };
    tests?;
    fuzzed?;
    eprintln!(
        "all tests passed ({:.0?} including set-up and builds)",
        started.elapsed()
    );
    Ok(())
}
