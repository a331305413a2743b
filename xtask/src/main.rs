//! Project tasks, run as `cargo xtask <task>`: set up a machine, build the eBPF object, run every test, show a
//! demo. Each task does the set-up it needs, so a fresh machine needs no other command.
mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Tasks for the eBPF gateway: setup, build-ebpf, test, fuzz, demo, bench"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (Debian packages, bpf-linker, rust-src). Idempotent.
    Setup(setup::SetupArgs),
    /// Build the eBPF programs for bpfel-unknown-none (the `gateway` binary embeds the object).
    BuildEbpf {
        /// Build the release profile (the default profile is optimised too: the verifier needs it).
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit, eBPF program and end-to-end tests in network namespaces. Does its own set-up.
    Test(test::TestArgs),
    /// Fuzz the TLS ClientHello parser for a bounded time (also part of `test`).
    Fuzz(fuzz::FuzzArgs),
    /// Build everything, run the gateway in network namespaces, send traffic through it and explain what happened.
    Demo(demo::DemoArgs),
    /// Benchmark the data plane side by side with plain kernel forwarding, HAProxy and NGINX (`bench l4`).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args),
        Task::BuildEbpf { release } => build::ebpf(release),
        Task::Test(args) => test::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
