//! Which CPUs the benchmark's work runs on. With `--cores split` (the default on a machine with two or more
//! CPUs) the data plane under test gets CPUs of its own — its processes, and the softirq work of the gateway
//! namespace's interfaces (where the eBPF programs and the kernel's forwarding run) — and the load (clients and
//! backends, their processes and their namespaces' softirq work) the others. A data plane's cost then shows as
//! its own CPUs' busy time, apart from what the load costs, and "per data-plane core-second" figures say how
//! much one core of a gateway machine carries. With `--cores shared` everything runs everywhere (as before).
//!
//! Mechanics: this process pins itself to the load CPUs first, so everything it starts inherits them; each
//! data plane's processes are moved to the data-plane CPUs once started (`taskset -a`); softirq work follows the
//! receiving interface through RPS (`rps_cpus` of each interface, set per namespace), which on veth pairs moves
//! a packet's receive processing to the CPUs of the namespace it arrives in.
use std::sync::OnceLock;

use anyhow::Context;
use gateway_tests::Netns;

use crate::cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CoreMode {
    /// The data plane on CPUs of its own (the last one), the load on the others.
    Split,
    /// Every process and interface on every CPU.
    Shared,
}

/// The CPUs of each side.
#[derive(Debug, Clone)]
pub struct Cores {
    pub mode: CoreMode,
    pub load: Vec<usize>,
    pub dataplane: Vec<usize>,
}

static CORES: OnceLock<Cores> = OnceLock::new();

/// Decides the split for this machine and pins this process to the load CPUs. `Split` on a machine with one
/// CPU falls back to `Shared`.
pub fn init(mode: CoreMode) -> anyhow::Result<&'static Cores> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all: Vec<usize> = (0..n).collect();
    let cores = match mode {
        CoreMode::Split if n >= 2 => Cores {
            mode,
            load: all[..n - 1].to_vec(),
            dataplane: vec![n - 1],
        },
        _ => Cores {
            mode: CoreMode::Shared,
            load: all.clone(),
            dataplane: all,
        },
    };
    if cores.mode == CoreMode::Split {
        pin_process(std::process::id(), &cores.load)
            .context("pinning the bench to the load CPUs")?;
    }
    Ok(CORES.get_or_init(|| cores))
}

/// The split in force (`Shared` over every CPU before [`init`]).
pub fn get() -> Cores {
    CORES.get().cloned().unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Cores {
            mode: CoreMode::Shared,
            load: (0..n).collect(),
            dataplane: (0..n).collect(),
        }
    })
}

/// Worker threads a proxy under test should run: one per data-plane CPU.
pub fn dataplane_threads() -> usize {
    get().dataplane.len()
}

/// Moves every process (all threads) of the gateway namespace to the data-plane CPUs. Called once a data plane
/// has started (threads it creates later inherit the placement).
pub fn pin_data_plane(gateway: &Netns) -> anyhow::Result<()> {
    let cores = get();
    if cores.mode == CoreMode::Shared {
        return Ok(());
    }
    for pid in gateway.pids() {
        // A process that exited meanwhile is no error.
        let _ = pin_process(pid, &cores.dataplane);
    }
    Ok(())
}

/// Steers the receive processing of `ns`'s interfaces (but `lo`) to `cpus` with RPS.
pub fn steer_receive(ns: &Netns, cpus: &[usize]) -> anyhow::Result<()> {
    let mask: u64 = cpus.iter().fold(0, |m, &c| m | (1 << c));
    ns.sh(&format!(
        "for f in /sys/class/net/*/queues/rx-*/rps_cpus; do \
           case $f in /sys/class/net/lo/*) continue;; esac; echo {mask:x} > $f; done"
    ))
    .with_context(|| format!("setting rps_cpus in {}", ns.name()))?;
    Ok(())
}

/// Steers the topology's namespaces: the gateway namespace to the data-plane CPUs, `load` namespaces to the
/// load CPUs. Nothing to do with `Shared`.
pub fn steer_topology(gateway: &Netns, load: &[&Netns]) -> anyhow::Result<()> {
    let cores = get();
    if cores.mode == CoreMode::Shared {
        return Ok(());
    }
    steer_receive(gateway, &cores.dataplane)?;
    for ns in load {
        steer_receive(ns, &cores.load)?;
    }
    Ok(())
}

fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    cmd::output(std::process::Command::new("taskset").args([
        "-a",
        "-p",
        "-c",
        &list.join(","),
        &pid.to_string(),
    ]))
    .map(|_| ())
}

/// Busy ticks (user + nice + system + irq + softirq) of `cpus`, from `/proc/stat`.
pub fn busy_ticks(cpus: &[usize]) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let cpu: usize = name.strip_prefix("cpu")?.parse().ok()?;
            cpus.contains(&cpu).then_some(rest)
        })
        .map(|rest| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            at(0) + at(1) + at(2) + at(5) + at(6)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_ticks_add_up_to_about_the_machine() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let all: Vec<usize> = (0..n).collect();
        let per_cpu = busy_ticks(&all);
        let machine = super::super::cpu::machine_busy_ticks();
        assert!(per_cpu > 0);
        // Read a moment apart: equal up to the ticks in between.
        assert!(
            per_cpu.abs_diff(machine) < 50 * n as u64,
            "{per_cpu} vs {machine}"
        );
        assert_eq!(busy_ticks(&[usize::MAX]), 0);
    }
}
