//! Scenario 9: does a consumer whose endpoints hang hold back another consumer's webhooks?
//!
//! Three Envoys with the plugin, one after the other: on one, consumer `a` has 20 subscriptions at an
//! endpoint that accepts connections, reads the request and never answers (timeout 10 s, so no
//! attempt of `a` ends during the measurement), beside consumer `b`'s one subscription at the
//! lean receiver; another has `b` alone, the baseline; a third is the first with
//! `max_in_flight: 32`, so few slots that `a`'s hanging attempts alone would take them all.
//! Each gets a warm-up, then the same open loop of numbered events, and `b`'s event → receiver
//! latency is measured as in scenario 3.

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
/// Fewer slots than `a`'s 20 pacing windows would hold (4 each while nothing answers, today).
const SMALL_MAX_IN_FLIGHT: usize = 32;

/// One site's measurement, and the attempts left hanging at `a`'s endpoint by then.
struct Measured {
    timed: Timed,
    hanging: usize,
    pending: u64,
}

pub async fn run(upstream: &Upstream, opts: &Options, report: &mut Report) -> Result<()> {
    let alone = Site::plugin("b alone", upstream.port(), |r| {
        plugin::fairness(r, None, None)
    })
    .await?;
    let baseline = measure(&alone, None, opts).await?;
    let beside = contended("b beside a", upstream, None, opts).await?;
    let small = contended(
        "b beside a, 32 slots",
        upstream,
        Some(SMALL_MAX_IN_FLIGHT),
        opts,
    )
    .await?;
    report.info(
        SCENARIO,
        "load",
        format!(
            "{} events/s for {} s after {} s of warm-up, on each site: {} / {} sent, {} / {} \
             timed (beside a / alone); {} attempts hanging at a's endpoint, {} messages pending",
            thousands(RATE),
            opts.duration.as_secs(),
            WARMUP.as_secs(),
            beside.timed.sent,
            baseline.timed.sent,
            beside.timed.pairs,
            baseline.timed.pairs,
            beside.hanging,
            beside.pending
        ),
    );
    report.check(
        SCENARIO,
        "b's latency beside a: p50 / p99",
        latencies(&beside.timed),
        "p99 ≤ 50 ms",
        ms(&beside.timed, 0.99) <= P99_BUDGET_MS,
    );
    report.info(
        SCENARIO,
        "b's latency alone (baseline, same run): p50 / p99",
        latencies(&baseline.timed),
    );
    report.info(
        SCENARIO,
        "b's p99 beside a ÷ alone",
        format!(
            "{:.2}",
            ratio(ms(&beside.timed, 0.99), ms(&baseline.timed, 0.99))
        ),
    );
    report.info(
        SCENARIO,
        "beside a with `max_in_flight: 32`: b's p50 / p99",
        format!(
            "{} ({} of a's attempts hanging: its share of the 32 slots)",
            latencies(&small.timed),
            small.hanging
        ),
    );
    Ok(())
}

/// `b` beside `a`'s hanging subscriptions, on an Envoy and a hanging endpoint of their own.
async fn contended(
    name: &'static str,
    upstream: &Upstream,
    max_in_flight: Option<usize>,
    opts: &Options,
) -> Result<Measured> {
    let hang = HostilePeer::start(Misbehaviour::Hang).await?;
    let hang_url = hang.url("");
    let site = Site::plugin(name, upstream.port(), |r| {
        plugin::fairness(r, Some((&hang_url, HANGING)), max_in_flight)
    })
    .await?;
    measure(&site, Some(&hang), opts).await
}

/// Warm-up, then the timed run.
async fn measure(site: &Site, hang: Option<&HostilePeer>, opts: &Options) -> Result<Measured> {
    let warmup = Load {
        rate: Some(RATE),
        ..Load::closed(8, WARMUP)
    };
    load::run(site.port(), &plugin::order_request(), &warmup).await?;
    site.delivered_all(Duration::from_secs(30)).await?;
    let timed = timed_run(site, RATE, opts.duration).await?;
    Ok(Measured {
        timed,
        hanging: hang.map_or(0, |h| h.requests()),
        pending: site.envoy.gauge("webhooks_queue_depth").await?,
    })
}

/// A latency quantile in milliseconds.
fn ms(timed: &Timed, q: f64) -> f64 {
    timed.latencies.value_at_quantile(q) as f64 / 1000.0
}

fn latencies(timed: &Timed) -> String {
    format!(
        "{:.2} / {:.2} ms (max {:.2} ms)",
        ms(timed, 0.5),
        ms(timed, 0.99),
        ms(timed, 1.0)
    )
}
