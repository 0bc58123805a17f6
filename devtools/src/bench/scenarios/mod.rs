//! The scenarios of the benchmark issue, numbered as there. Each adds its rows to the report; one
//! that fails adds an error row and the others still run.

mod etcd_transport;
mod fairness;
mod fanout;
mod fifo;
mod first_sync;
mod latency;
mod memory;
mod outage;
mod outbox;
mod propagation;
mod read;
mod signatures;
mod slow;
mod write;

use anyhow::Result;

use super::cpu::Cpu;
use super::report::Report;
use super::servers::Upstream;
use super::Options;
use crate::envoy::wasm_path;
use crate::util::workspace_root;

/// The size budget of the release `.wasm`.
const WASM_BUDGET_BYTES: u64 = 1024 * 1024;

/// Which scenarios to run, by the issues' numbers (1–7 of the benchmark issue, 8 and 9 of the
/// pacing one, 10–15 of the fleet one, 16 and 17 of the delivery features one: signatures,
/// FIFO). 3 needs 2's throughput: asking for 3 runs 2.
#[derive(Clone, Debug)]
pub struct Selection(pub Vec<u8>);

impl Selection {
    pub fn all() -> Selection {
        Selection((1..=17).collect())
    }

    pub fn has(&self, n: u8) -> bool {
        self.0.contains(&n)
    }
}

/// Runs the selected scenarios in order and returns the table.
pub async fn run(opts: &Options, selection: &Selection) -> Result<Report> {
    let mut report = Report::default();
    let upstream = Upstream::start().await?;
    if selection.has(1) {
        let result = read::run(&upstream, opts, &mut report).await;
        note_failure(&mut report, "1 read", result);
    }
    if selection.has(2) || selection.has(3) || selection.has(5) {
        let result = write::run(&upstream, opts, selection, &mut report).await;
        note_failure(&mut report, "2/3/5 write", result);
    }
    if selection.has(4) {
        let result = fanout::run(&upstream, &mut report).await;
        note_failure(&mut report, "4 fan-out", result);
    }
    if selection.has(6) {
        let result = memory::run(&upstream, &mut report).await;
        note_failure(&mut report, "6 memory", result);
    }
    if selection.has(7) {
        let result = wasm_size(&mut report);
        note_failure(&mut report, "7 size", result);
    }
    if selection.has(8) {
        let result = slow::run(&upstream, &mut report).await;
        note_failure(&mut report, "8 slow receiver", result);
    }
    if selection.has(9) {
        let result = fairness::run(&upstream, opts, &mut report).await;
        note_failure(&mut report, "9 fairness", result);
    }
    if selection.has(10) {
        let result = propagation::run(&upstream, &mut report).await;
        note_failure(&mut report, "10 fleet propagation", result);
    }
    if selection.has(11) {
        let result = etcd_transport::run(&mut report).await;
        note_failure(&mut report, "11 etcd gateway vs gRPC", result);
    }
    if selection.has(12) {
        let result = first_sync::run(&upstream, &mut report).await;
        note_failure(&mut report, "12 fleet first sync", result);
    }
    if selection.has(13) {
        let result = outbox::run_throughput(&upstream, opts, &mut report).await;
        note_failure(&mut report, "13 durable outbox", result);
    }
    if selection.has(14) {
        let result = outbox::run_failover(&upstream, &mut report).await;
        note_failure(&mut report, "14 fleet failover", result);
    }
    if selection.has(15) {
        let result = outage::run(&upstream, opts, &mut report).await;
        note_failure(&mut report, "15 etcd down", result);
    }
    if selection.has(16) {
        let result = signatures::run(&upstream, opts, &mut report).await;
        note_failure(&mut report, "16 signatures", result);
    }
    if selection.has(17) {
        let result = fifo::run(&upstream, &mut report).await;
        note_failure(&mut report, "17 FIFO ordering", result);
    }
    Ok(report)
}

fn note_failure(report: &mut Report, scenario: &str, result: Result<()>) {
    if let Err(error) = result {
        eprintln!("{scenario} failed: {error:#}");
        report.failed(scenario, &error);
    }
}

/// Scenario 7: the size of the release `.wasm` that users deploy.
fn wasm_size(report: &mut Report) -> Result<()> {
    let bytes = std::fs::metadata(wasm_path(&workspace_root()))?.len();
    report.check(
        "7 size",
        "`.wasm` (release)",
        format!("{} bytes ({:.0} KB)", bytes, bytes as f64 / 1024.0),
        "≤ 1 MiB",
        bytes <= WASM_BUDGET_BYTES,
    );
    Ok(())
}

/// A ratio as `0.97`.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The smallest and largest of per-round ratios, as `0.95–0.99`.
fn spread(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

/// `plugin: worker 40 µs + main 25 µs; plain: worker 30 µs + main 0 µs`, from each side's name,
/// CPU time and the number of requests it was spent on.
fn cpu_per_request(a: (&str, &Cpu, u64), b: (&str, &Cpu, u64)) -> String {
    let side = |(name, cpu, n): (&str, &Cpu, u64)| {
        let (main, workers) = cpu.per(n);
        format!("{name}: worker {workers:.0} µs + main {main:.0} µs")
    };
    format!("{}; {}", side(a), side(b))
}

/// Plain Envoy's CPU per request over the plugin's (main thread and workers together): the
/// throughput ratio to expect where Envoy's CPU is the limit. Much less noisy than throughput.
fn cpu_ratio(plugin: (&Cpu, u64), plain: (&Cpu, u64)) -> f64 {
    let per_request = |(cpu, n): (&Cpu, u64)| {
        let (main, workers) = cpu.per(n);
        main + workers
    };
    ratio(per_request(plain), per_request(plugin))
}
