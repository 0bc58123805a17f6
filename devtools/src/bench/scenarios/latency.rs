//! Scenario 3: event → receiver latency at a steady rate well below saturation.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;

use crate::bench::load::{self, Load, Shape};
use crate::bench::report::{thousands, Report};
use crate::bench::sites::Site;
use crate::bench::timeline::Timeline;
use crate::bench::Options;

const SCENARIO: &str = "3 event → receiver latency";
/// Open-loop connections: enough that a slow answer never holds the schedule back.
const CONNECTIONS: usize = 8;

/// Sends `rate` events per second for the run duration and measures, per event, receiver arrival
/// minus the moment the client had the API's response.
pub async fn run(site: &Site, rate: f64, opts: &Options, report: &mut Report) -> Result<()> {
    let timed = timed_run(site, rate, opts.duration).await?;
    let (hist, pairs) = (&timed.latencies, timed.pairs);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report.info(
        SCENARIO,
        "steady rate",
        format!(
            "{} events/s (half of scenario 2's sustainable rate) for {} s: {} sent, {} timed",
            thousands(rate),
            opts.duration.as_secs(),
            timed.sent,
            pairs
        ),
    );
    let from_request = &timed.from_request;
    let ms_from = |q: f64| from_request.value_at_quantile(q) as f64 / 1000.0;
    report.info(
        SCENARIO,
        "from the API request's start (includes the API call)",
        format!("p50 {:.2} ms, p99 {:.2} ms", ms_from(0.5), ms_from(0.99)),
    );
    report.check(
        SCENARIO,
        "p50",
        format!("{:.2} ms", ms(0.5)),
        "≤ 5 ms",
        ms(0.5) <= 5.0,
    );
    report.check(
        SCENARIO,
        "p99",
        format!("{:.2} ms (max {:.2} ms)", ms(0.99), ms(1.0)),
        "≤ 25 ms",
        ms(0.99) <= 25.0,
    );
    Ok(())
}

/// One open-loop run of numbered events, all delivered.
pub(super) struct Timed {
    /// Events the API answered 2xx.
    pub sent: u64,
    /// Receiver arrival minus the client's response, µs, per event seen on both sides.
    pub latencies: Histogram<u64>,
    /// How many events those were.
    pub pairs: u64,
    /// Receiver arrival minus the start of the API request, µs.
    pub from_request: Histogram<u64>,
}

/// `rate` numbered events per second for `duration` over [`CONNECTIONS`] connections to `site`,
/// then waits until its receiver had one delivery per detected event.
pub(super) async fn timed_run(site: &Site, rate: f64, duration: Duration) -> Result<Timed> {
    let Some(receiver) = &site.receiver else {
        bail!("a latency run needs a plugin site with a receiver");
    };
    let expected = (rate * duration.as_secs_f64()).ceil() as usize;
    let timeline = Arc::new(Timeline::new(expected * 2 + 100));
    receiver.set_timeline(Some(timeline.clone()));
    let load = Load {
        connections: CONNECTIONS,
        duration,
        budget: None,
        rate: Some(rate),
    };
    let shape = Shape::Numbered("/orders", timeline.clone());
    let outcome = load::run(site.port(), &shape, &load).await;
    let delivered = site.delivered_all(Duration::from_secs(30)).await;
    receiver.set_timeline(None);
    let outcome = outcome?;
    delivered?;
    let (latencies, pairs) = timeline.latencies();
    let (from_request, _) = timeline.latencies_from_request();
    Ok(Timed {
        sent: outcome.ok,
        latencies,
        pairs,
        from_request,
    })
}
