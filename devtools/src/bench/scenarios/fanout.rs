//! Scenario 4: one event matching 1,000 subscriptions (each its own URL on the receiver).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::load::{self, Load};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::{wait_for_count, Site};

const SCENARIO: &str = "4 fan-out (1 event → 1,000 subscriptions)";
const SUBSCRIPTIONS: u64 = 1_000;
/// Events sent one after the other: the first one also opens the connections to the receiver.
const EVENTS: usize = 3;
const BUDGET: Duration = Duration::from_secs(2);

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    let site = Site::plugin("fan-out", upstream.port(), |r| {
        plugin::fan_out(r, SUBSCRIPTIONS as usize)
    })
    .await?;
    let mut times = Vec::new();
    for _ in 0..EVENTS {
        times.push(one_event(&site).await?);
    }
    let worst = times.iter().copied().max().unwrap_or_default();
    let listed: Vec<String> = times
        .iter()
        .map(|t| format!("{} ms", t.as_millis()))
        .collect();
    report.check(
        SCENARIO,
        "all delivered after",
        format!("{} (event 1 opens the connections)", listed.join(", ")),
        "≤ 2 s",
        worst <= BUDGET,
    );
    let best = times.iter().copied().min().unwrap_or_default();
    report.info(
        SCENARIO,
        "deliveries / s",
        format!(
            "{} /s (best event), {} /s (first)",
            thousands(SUBSCRIPTIONS as f64 / best.as_secs_f64().max(1e-9)),
            thousands(SUBSCRIPTIONS as f64 / times[0].as_secs_f64().max(1e-9))
        ),
    );
    report.info(
        SCENARIO,
        "Envoy start-up (to /ready)",
        format!("{:.1} s", site.start_up.as_secs_f64()),
    );
    Ok(())
}

/// From the client's API response until the receiver counted all 1,000 deliveries.
async fn one_event(site: &Site) -> Result<Duration> {
    let Some(receiver) = &site.receiver else {
        anyhow::bail!("the fan-out scenario needs a plugin site");
    };
    let before = receiver.count();
    let load = Load {
        budget: Some(1),
        ..Load::closed(1, Duration::from_secs(10))
    };
    let outcome = load::run(site.port(), &plugin::order_request(), &load).await?;
    let responded = Instant::now();
    anyhow::ensure!(outcome.ok == 1, "the event's API request failed");
    let done = wait_for_count(receiver, before + SUBSCRIPTIONS, Duration::from_secs(30)).await?;
    Ok(done - responded)
}
