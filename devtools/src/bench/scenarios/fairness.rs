//! Scenario 9: does a consumer whose endpoints hang hold back another consumer's webhooks?
//!
//! Two Envoys with the plugin, started together: on one, consumer `a` has 20 subscriptions at
//! an endpoint that accepts connections, reads the request and never answers (timeout 10 s, so
//! no attempt of `a` ends during the measurement), beside consumer `b`'s one subscription at the
//! lean receiver; the other has `b` alone, the baseline. Each gets a warm-up, then the same open
//! loop of numbered events, and `b`'s event → receiver latency is measured as in scenario 3.

use std::time::Duration;

use anyhow::Result;

use super::latency::{timed_run, Timed};
use super::ratio;
use crate::bench::load::{self, Load};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::Site;
use crate::bench::Options;
use crate::hostile::{HostilePeer, Misbehaviour};

const SCENARIO: &str = "9 fairness (another consumer's 20 endpoints hang)";
const HANGING: usize = 20;
/// Events per second, open loop.
const RATE: f64 = 200.0;
/// Unmeasured events at the same rate first: `b`'s connection opens, `a`'s attempts pile up.
const WARMUP: Duration = Duration::from_secs(1);
const P99_BUDGET_MS: f64 = 50.0;

pub async fn run(upstream: &Upstream, opts: &Options, report: &mut Report) -> Result<()> {
    let hang = HostilePeer::start(Misbehaviour::Hang).await?;
    let hang_url = hang.url("");
    let alone = Site::plugin("b alone", upstream.port(), |r| plugin::fairness(r, None)).await?;
    let beside = Site::plugin("b beside a", upstream.port(), |r| {
        plugin::fairness(r, Some((&hang_url, HANGING)))
    })
    .await?;
    let baseline = measure(&alone, opts).await?;
    let contended = measure(&beside, opts).await?;
    let hanging = hang.requests();
    let held = beside.envoy.gauge("webhooks_queue_depth").await?;
    let ms = |t: &Timed, q: f64| t.latencies.value_at_quantile(q) as f64 / 1000.0;
    report.info(
        SCENARIO,
        "load",
        format!(
            "{} events/s for {} s after {} s of warm-up, on each site: {} / {} sent, {} / {} \
             timed (beside a / alone); {hanging} attempts hanging at a's endpoint, \
             {} connections, {held} messages pending",
            thousands(RATE),
            opts.duration.as_secs(),
            WARMUP.as_secs(),
            contended.sent,
            baseline.sent,
            contended.pairs,
            baseline.pairs,
            hang.connections()
        ),
    );
    report.check(
        SCENARIO,
        "b's latency beside a: p50 / p99",
        format!(
            "{:.2} / {:.2} ms (max {:.2} ms)",
            ms(&contended, 0.5),
            ms(&contended, 0.99),
            ms(&contended, 1.0)
        ),
        "p99 ≤ 50 ms",
        ms(&contended, 0.99) <= P99_BUDGET_MS,
    );
    report.info(
        SCENARIO,
        "b's latency alone (baseline, same run): p50 / p99",
        format!(
            "{:.2} / {:.2} ms (max {:.2} ms)",
            ms(&baseline, 0.5),
            ms(&baseline, 0.99),
            ms(&baseline, 1.0)
        ),
    );
    report.info(
        SCENARIO,
        "b's p99 beside a ÷ alone",
        format!("{:.2}", ratio(ms(&contended, 0.99), ms(&baseline, 0.99))),
    );
    Ok(())
}

/// Warm-up, then the timed run.
async fn measure(site: &Site, opts: &Options) -> Result<Timed> {
    let warmup = Load {
        rate: Some(RATE),
        ..Load::closed(8, WARMUP)
    };
    load::run(site.port(), &plugin::order_request(), &warmup).await?;
    site.delivered_all(Duration::from_secs(30)).await?;
    timed_run(site, RATE, opts.duration).await
}
