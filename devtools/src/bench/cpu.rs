//! Envoy's CPU time by thread, from `/proc/<pid>/task/*/stat`.
//!
//! Throughput on a small, shared machine is noisy; CPU time per request is much steadier, and
//! split by thread it shows where the plugin's cost lands: the worker (the filter, on the
//! request path) or the main thread (the dispatcher: fan-out, signing, callouts).

use std::ops::{AddAssign, Sub};
use std::time::Duration;

use anyhow::{Context, Result};

/// Linux reports thread times in clock ticks of 1/100 s (`getconf CLK_TCK`).
const TICK: Duration = Duration::from_millis(10);

/// CPU time (user + system) of Envoy's threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// The main thread (`envoy`): admin, cluster manager, the dispatcher singleton.
    pub main: Duration,
    /// The worker thread(s) (`wrk:worker_N`): listeners, HTTP filters.
    pub workers: Duration,
    /// Everything else (watchdogs, gRPC, …).
    pub other: Duration,
}

impl Cpu {
    /// Envoy's CPU time so far.
    pub fn of(pid: u32) -> Result<Cpu> {
        let mut cpu = Cpu::default();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of process {pid}"))?;
        for task in tasks.flatten() {
            // A thread may end between listing and reading: skip it.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((name, time)) = parse_stat(&stat) {
                match name {
                    "envoy" => cpu.main += time,
                    n if n.starts_with("wrk:") => cpu.workers += time,
                    _ => cpu.other += time,
                }
            }
        }
        Ok(cpu)
    }

    /// Microseconds per unit of work (e.g. per request), main and workers.
    pub fn per(&self, count: u64) -> (f64, f64) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
        (us(self.main), us(self.workers))
    }
}

/// The thread name and utime + stime of one `stat` line.
fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state is field 3, utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u32 = fields.get(11)?.parse().ok()?;
    let stime: u32 = fields.get(12)?.parse().ok()?;
    Some((name, TICK * (utime + stime)))
}

impl Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            main: self.main.saturating_sub(earlier.main),
            workers: self.workers.saturating_sub(earlier.workers),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

impl AddAssign for Cpu {
    fn add_assign(&mut self, more: Cpu) {
        self.main += more.main;
        self.workers += more.workers;
        self.other += more.other;
    }
}
