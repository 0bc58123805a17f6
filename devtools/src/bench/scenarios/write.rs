//! Scenarios 2 and 5 (and 3, which needs 2's figure): write traffic where every request is an
//! event with one matching subscription.
//!
//! Plain Envoy, the plugin with one subscription, and (for 5) the plugin with 10,000
//! subscriptions run side by side and take turns. After each plugin run the bench waits until
//! the receiver has one delivery per detected event: a run counts only if nothing was lost.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{cpu_per_request, cpu_ratio, latency, ratio, spread};
use crate::bench::cpu::Cpu;
use crate::bench::load::{self, per_second, Load, Outcome};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::Site;
use crate::bench::Options;

use super::Selection;

/// Subscriptions in the registry-size scenario.
const REGISTRY_SIZE: usize = 10_000;
/// How long the deliveries of one run may take after its load stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One measured run on one site.
pub(super) struct WriteRun {
    pub(super) load: Outcome,
    /// Deliveries the receiver counted from the load's start until it had them all.
    pub(super) delivered: u64,
    /// From the load's start until the last delivery.
    span: Duration,
    /// From the load's end until the last delivery.
    pub(super) lag: Duration,
    /// Envoy's CPU time from the load's start until the last delivery.
    cpu: Cpu,
}

/// All rounds of one site, summed.
pub(super) struct Totals {
    pub(super) load: Outcome,
    pub(super) delivered: u64,
    span: Duration,
    pub(super) max_lag: Duration,
    rates: Vec<f64>,
    pub(super) cpu: Cpu,
}

impl Totals {
    pub(super) fn new() -> Totals {
        Totals {
            load: Outcome::empty(),
            delivered: 0,
            span: Duration::ZERO,
            max_lag: Duration::ZERO,
            rates: Vec::new(),
            cpu: Cpu::default(),
        }
    }

    pub(super) fn add(&mut self, run: &WriteRun) {
        self.load.absorb(&run.load);
        self.delivered += run.delivered;
        self.span += run.span;
        self.max_lag = self.max_lag.max(run.lag);
        self.rates.push(run.load.rate());
        self.cpu += run.cpu;
    }

    pub(super) fn deliveries_per_second(&self) -> f64 {
        per_second(self.delivered, self.span)
    }
}

pub async fn run(
    upstream: &Upstream,
    opts: &Options,
    selection: &Selection,
    report: &mut Report,
) -> Result<()> {
    let mut sites = vec![
        Site::plain("plain", upstream.port()).await?,
        Site::plugin("plugin", upstream.port(), plugin::one_subscriber).await?,
    ];
    if selection.has(5) {
        // A registry that does not even start is scenario 5's failure; 2 and 3 still run.
        let big = |r: &_| plugin::registry(r, REGISTRY_SIZE);
        match Site::plugin("plugin, 10k subscriptions", upstream.port(), big).await {
            Ok(site) => sites.push(site),
            Err(error) => report.failed("5 registry (10,000 subscriptions)", &error),
        }
    }
    let totals = rounds(&sites, opts).await?;
    let [plain, one, rest @ ..] = totals.as_slice() else {
        anyhow::bail!("expected at least two sites");
    };
    add_write_rows(report, plain, one);
    if let Some(big) = rest.first() {
        add_registry_rows(report, &sites, one, big);
    }
    if selection.has(3) {
        let sustainable = one.load.rate().min(one.deliveries_per_second());
        latency::run(&sites[1], sustainable / 2.0, opts, report).await?;
    }
    Ok(())
}

/// Every site once per round; each round starts with the next site (A B C, B C A, …), so a
/// drift during the bench hits every site alike.
async fn rounds(sites: &[Site], opts: &Options) -> Result<Vec<Totals>> {
    let mut totals: Vec<Totals> = sites.iter().map(|_| Totals::new()).collect();
    for round in 1..=opts.rounds {
        for turn in 0..sites.len() {
            let i = (turn + round - 1) % sites.len();
            let (site, total) = (&sites[i], &mut totals[i]);
            let run = write_run(site, opts).await?;
            eprintln!(
                "2 write, round {round}, {}: {:.0} req/s, {} deliveries, last {} ms after the load",
                site.name,
                run.load.rate(),
                run.delivered,
                run.lag.as_millis()
            );
            total.add(&run);
        }
    }
    Ok(totals)
}

/// Warm-up (and its deliveries), then the measured run and its deliveries.
pub(super) async fn write_run(site: &Site, opts: &Options) -> Result<WriteRun> {
    let shape = plugin::order_request();
    load::run(
        site.port(),
        &shape,
        &Load::closed(opts.connections, opts.warmup),
    )
    .await?;
    site.delivered_all(DRAIN_TIMEOUT).await?;
    let before = site.receiver.as_ref().map_or(0, |r| r.count());
    let cpu_before = site.cpu()?;
    let start = Instant::now();
    let outcome = load::run(
        site.port(),
        &shape,
        &Load::closed(opts.connections, opts.duration),
    )
    .await?;
    let stopped = Instant::now();
    let done = site.delivered_all(DRAIN_TIMEOUT).await?;
    let after = site.receiver.as_ref().map_or(0, |r| r.count());
    let cpu = site.cpu()? - cpu_before;
    Ok(WriteRun {
        cpu,
        load: outcome,
        delivered: after - before,
        span: if site.receiver.is_some() {
            done - start
        } else {
            Duration::ZERO
        },
        lag: done.saturating_duration_since(stopped),
    })
}

fn add_write_rows(report: &mut Report, plain: &Totals, one: &Totals) {
    const SCENARIO: &str = "2 write (POST, 1 subscriber)";
    let throughput = ratio(one.load.rate(), plain.load.rate());
    let rounds: Vec<f64> = one
        .rates
        .iter()
        .zip(&plain.rates)
        .map(|(a, b)| ratio(*a, *b))
        .collect();
    report.check(
        SCENARIO,
        "throughput plugin / plain",
        format!(
            "{throughput:.3} ({} vs {} req/s; rounds {})",
            thousands(one.load.rate()),
            thousands(plain.load.rate()),
            spread(&rounds)
        ),
        "≥ 0.80",
        throughput >= 0.80,
    );
    report.check(
        SCENARIO,
        "deliveries / s",
        format!(
            "{} /s; all {} events delivered, the last {} ms after the load stopped",
            thousands(one.deliveries_per_second()),
            thousands(one.delivered as f64),
            one.max_lag.as_millis()
        ),
        "every event delivered",
        true,
    );
    report.info(
        SCENARIO,
        "p50 / p99 latency",
        format!(
            "plugin {:.2} / {:.2} ms, plain {:.2} / {:.2} ms",
            one.load.quantile_ms(0.5),
            one.load.quantile_ms(0.99),
            plain.load.quantile_ms(0.5),
            plain.load.quantile_ms(0.99)
        ),
    );
    report.info(
        SCENARIO,
        "Envoy CPU per request (incl. delivery)",
        cpu_per_request(
            ("plugin", &one.cpu, one.load.ok),
            ("plain", &plain.cpu, plain.load.ok),
        ),
    );
    let by_cpu = cpu_ratio((&one.cpu, one.load.ok), (&plain.cpu, plain.load.ok));
    report.info(
        SCENARIO,
        "throughput ratio implied by CPU / request",
        format!(
            "{by_cpu:.3} (Envoy's threads added up; {:.3} counting the worker alone)",
            ratio(plain.cpu.per(plain.load.ok).1, one.cpu.per(one.load.ok).1)
        ),
    );
}

fn add_registry_rows(report: &mut Report, sites: &[Site], one: &Totals, big: &Totals) {
    const SCENARIO: &str = "5 registry (10,000 subscriptions)";
    let throughput = ratio(big.load.rate(), one.load.rate());
    let rounds: Vec<f64> = big
        .rates
        .iter()
        .zip(&one.rates)
        .map(|(a, b)| ratio(*a, *b))
        .collect();
    report.check(
        SCENARIO,
        "throughput 10,000 subs / 1 sub",
        format!(
            "{throughput:.3} ({} vs {} req/s; rounds {}); {} deliveries/s",
            thousands(big.load.rate()),
            thousands(one.load.rate()),
            spread(&rounds),
            thousands(big.deliveries_per_second())
        ),
        "≥ 0.95",
        throughput >= 0.95,
    );
    report.info(
        SCENARIO,
        "Envoy CPU per request (incl. delivery)",
        cpu_per_request(
            ("10,000 subs", &big.cpu, big.load.ok),
            ("1 sub", &one.cpu, one.load.ok),
        ),
    );
    let start_ups: Vec<String> = sites
        .iter()
        .map(|s| format!("{} {:.1} s", s.name, s.start_up.as_secs_f64()))
        .collect();
    report.info(SCENARIO, "Envoy start-up (to /ready)", start_ups.join(", "));
}
