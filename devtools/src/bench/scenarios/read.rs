//! Scenario 1: read traffic (GET, never an event). What does merely having the filter in the
//! chain cost?

use anyhow::Result;

use super::{cpu_per_request, cpu_ratio, ratio, spread};
use crate::bench::cpu::Cpu;
use crate::bench::load::{self, Load, Outcome, Shape};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::Site;
use crate::bench::Options;

const SCENARIO: &str = "1 read (GET)";

pub async fn run(upstream: &Upstream, opts: &Options, report: &mut Report) -> Result<()> {
    let plain = Site::plain("plain", upstream.port()).await?;
    let plugin = Site::plugin("plugin", upstream.port(), plugin::one_subscriber).await?;
    let (mut plain_total, mut plugin_total) = (Outcome::empty(), Outcome::empty());
    let (mut plain_cpu, mut plugin_cpu) = (Cpu::default(), Cpu::default());
    let mut ratios = Vec::new();
    for round in 1..=opts.rounds {
        // Who goes first alternates (A B, B A, …): a drift during the bench hits both alike.
        let ((a, a_cpu), (b, b_cpu)) = if round % 2 == 1 {
            let a = read_run(&plain, opts).await?;
            (a, read_run(&plugin, opts).await?)
        } else {
            let b = read_run(&plugin, opts).await?;
            (read_run(&plain, opts).await?, b)
        };
        plain_cpu += a_cpu;
        plugin_cpu += b_cpu;
        eprintln!(
            "1 read, round {round}: plain {:.0} req/s, plugin {:.0} req/s",
            a.rate(),
            b.rate()
        );
        ratios.push(ratio(b.rate(), a.rate()));
        plain_total.absorb(&a);
        plugin_total.absorb(&b);
    }
    add_rows(report, &plain_total, &plugin_total, &ratios);
    report.info(
        SCENARIO,
        "Envoy CPU per request",
        cpu_per_request(
            ("plugin", &plugin_cpu, plugin_total.ok),
            ("plain", &plain_cpu, plain_total.ok),
        ),
    );
    let by_cpu = cpu_ratio((&plugin_cpu, plugin_total.ok), (&plain_cpu, plain_total.ok));
    report.info(
        SCENARIO,
        "throughput ratio implied by CPU / request",
        format!("{by_cpu:.3}"),
    );
    Ok(())
}

/// Warm-up, then the measured run and the CPU time Envoy spent on it.
async fn read_run(site: &Site, opts: &Options) -> Result<(Outcome, Cpu)> {
    let shape = Shape::Get("/orders/42");
    load::run(
        site.port(),
        &shape,
        &Load::closed(opts.connections, opts.warmup),
    )
    .await?;
    let before = site.cpu()?;
    let outcome = load::run(
        site.port(),
        &shape,
        &Load::closed(opts.connections, opts.duration),
    )
    .await?;
    Ok((outcome, site.cpu()? - before))
}

fn add_rows(report: &mut Report, plain: &Outcome, plugin: &Outcome, ratios: &[f64]) {
    let throughput = ratio(plugin.rate(), plain.rate());
    report.check(
        SCENARIO,
        "throughput plugin / plain",
        format!(
            "{throughput:.3} ({} vs {} req/s; rounds {})",
            thousands(plugin.rate()),
            thousands(plain.rate()),
            spread(ratios)
        ),
        "≥ 0.97",
        throughput >= 0.97,
    );
    let (p99_plain, p99_plugin) = (plain.quantile_ms(0.99), plugin.quantile_ms(0.99));
    let added = ratio(p99_plugin, p99_plain) - 1.0;
    report.check(
        SCENARIO,
        "p99 latency added",
        format!(
            "{:+.1}% ({p99_plugin:.2} vs {p99_plain:.2} ms)",
            added * 100.0
        ),
        "≤ 5%",
        added <= 0.05,
    );
    report.info(
        SCENARIO,
        "p50 latency",
        format!(
            "plugin {:.2} ms, plain {:.2} ms",
            plugin.quantile_ms(0.5),
            plain.quantile_ms(0.5)
        ),
    );
    report.info(
        SCENARIO,
        "errors",
        format!("plugin {}, plain {}", plugin.errors, plain.errors),
    );
}
