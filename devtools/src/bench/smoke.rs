//! `make bench-smoke`: scenario 2 for a moment against the plugin only, checking that every
//! event was delivered. Part of `make test`, so it must take seconds, not minutes.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::load::{self, Load, Outcome};
use super::plugin;
use super::servers::Upstream;
use super::sites::Site;

const DURATION: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 4;

/// One named check and whether it held.
struct Check {
    name: String,
    ok: bool,
}

/// Runs the smoke bench, prints one line per check and the summary line; true when all passed.
pub async fn run() -> Result<bool> {
    let upstream = Upstream::start().await?;
    let site = Site::plugin("plugin", upstream.port(), plugin::one_subscriber).await?;
    let start = Instant::now();
    let outcome = load::run(
        site.port(),
        &plugin::order_request(),
        &Load::closed(CONNECTIONS, DURATION),
    )
    .await?;
    let drained = site.delivered_all(Duration::from_secs(20)).await;
    let elapsed = start.elapsed();
    let checks = checks(&site, &outcome, drained.is_ok()).await?;
    for check in &checks {
        println!("{} {}", if check.ok { "ok  " } else { "FAIL" }, check.name);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!(
        "({} requests, {:.0} req/s, all delivered {:.2} s after the load started)",
        outcome.ok,
        outcome.rate(),
        elapsed.as_secs_f64()
    );
    if let Err(error) = drained {
        println!("{error:#}\nEnvoy log tail:\n{}", site.envoy.log_tail(20));
    }
    println!(
        "bench-smoke: {} passed, {failed} failed",
        checks.len() - failed
    );
    Ok(failed == 0)
}

async fn checks(site: &Site, outcome: &Outcome, drained: bool) -> Result<Vec<Check>> {
    // Events are counted when their stream ends, a moment after the client has its response:
    // wait for all of them (up to a deadline) before comparing.
    let expected = outcome.ok;
    let events = match site
        .envoy
        .wait_for_counter(
            "webhooks_events_detected",
            expected,
            Duration::from_secs(10),
        )
        .await
    {
        Ok(n) => n,
        Err(_) => site.envoy.counter("webhooks_events_detected").await?,
    };
    let received = site.receiver.as_ref().map_or(0, |r| r.count());
    let succeeded = wait_for_succeeded(site, events).await?;
    let check = |name: String, ok: bool| Check { name, ok };
    Ok(vec![
        check(
            format!(
                "{} requests answered 201, {} not",
                outcome.ok, outcome.errors
            ),
            outcome.ok > 0 && outcome.errors == 0,
        ),
        check(
            format!(
                "webhooks_events_detected {events} = requests {}",
                outcome.ok
            ),
            events == outcome.ok,
        ),
        check(
            format!("the receiver counted every event ({received} of {events})"),
            drained && received >= events,
        ),
        check(
            format!("no event delivered twice ({received} deliveries)"),
            received == events,
        ),
        check(
            format!("webhooks_deliveries_succeeded {succeeded} = events {events}"),
            succeeded == events,
        ),
    ])
}

/// The dispatcher counts a success once it has read the receiver's answer, a moment after the
/// receiver counted the request: give it that moment.
async fn wait_for_succeeded(site: &Site, events: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let succeeded = site.envoy.counter("webhooks_deliveries_succeeded").await?;
        if succeeded >= events || Instant::now() >= deadline {
            return Ok(succeeded);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
