//! CPU accounting while a load runs: the whole machine from `/proc/stat` and the data plane's own processes
//! from `/proc/<pid>/stat`. Both are reported in "cores busy" (CPU seconds per wall-clock second), so 2.0
//! means both cores of a 2-core machine were busy for the whole phase.
use std::time::Instant;

/// `USER_HZ`: the unit of every tick count in `/proc/stat` and `/proc/<pid>/stat` (fixed at 100 on Linux,
/// whatever the kernel's internal HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// Busy ticks of the whole machine: user + nice + system + irq + softirq (idle, iowait and steal excluded;
/// guest time is already counted in user).
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    at(0) + at(1) + at(2) + at(5) + at(6)
}

/// utime + stime of one process (all its threads), 0 if it is gone.
pub fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid(4) ... utime is field 14, stime 15 (1-based over the whole line).
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// A CPU measurement in progress over a fixed set of data plane processes.
pub struct CpuMeter {
    started: Instant,
    machine: u64,
    /// Busy ticks of the data plane's CPUs (`cores`) and of the load's.
    dataplane_cpus: u64,
    load_cpus: u64,
    pids: Vec<(u32, u64)>,
}

/// Average cores busy over a phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// The whole machine (every process and softirq/irq work of every namespace).
    pub machine_cores: f64,
    /// The data plane's own processes (0 when it has none, as for plain forwarding).
    pub dataplane_cores: f64,
    /// The CPUs given to the data plane (`--cores split`: its processes and the gateway namespace's softirq
    /// work, the eBPF programs included; with `shared`, the whole machine).
    pub dataplane_cpu_cores: f64,
    /// The CPUs given to the load (clients and backends).
    pub load_cpu_cores: f64,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        let cores = super::cores::get();
        CpuMeter {
            started: Instant::now(),
            machine: machine_busy_ticks(),
            dataplane_cpus: super::cores::busy_ticks(&cores.dataplane),
            load_cpus: super::cores::busy_ticks(&cores.load),
            pids: pids.iter().map(|&p| (p, process_ticks(p))).collect(),
        }
    }

    pub fn stop(self) -> CpuUse {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let machine = machine_busy_ticks().saturating_sub(self.machine);
        let dataplane: u64 = self
            .pids
            .iter()
            .map(|&(p, t0)| process_ticks(p).saturating_sub(t0))
            .sum();
        let cores = super::cores::get();
        let dataplane_cpus =
            super::cores::busy_ticks(&cores.dataplane).saturating_sub(self.dataplane_cpus);
        let load_cpus = super::cores::busy_ticks(&cores.load).saturating_sub(self.load_cpus);
        let per_sec = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / secs;
        CpuUse {
            machine_cores: per_sec(machine),
            dataplane_cores: per_sec(dataplane),
            dataplane_cpu_cores: per_sec(dataplane_cpus),
            load_cpu_cores: per_sec(load_cpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_and_machine_ticks_are_read() {
        let t0 = process_ticks(std::process::id());
        let m0 = machine_busy_ticks();
        let until = Instant::now() + std::time::Duration::from_millis(120);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(process_ticks(std::process::id()) > t0);
        assert!(machine_busy_ticks() > m0);
        assert_eq!(process_ticks(u32::MAX), 0);
    }
}
