//! Scenario 16: deliveries/s of one subscriber signed `v1a` (ed25519) and `v1,v1a`, beside the
//! same subscriber signed `v1` (HMAC), in the same run: the write load of scenario 2, each site
//! taking its turn round by round. Signing runs on every attempt on the dispatcher's one thread.

use anyhow::{bail, Result};

use super::write::{write_run, Totals};
use super::{cpu_per_request, ratio};
use crate::bench::plugin;
use crate::bench::report::{thousands, Report};
use crate::bench::servers::Upstream;
use crate::bench::sites::Site;
use crate::bench::Options;

const SCENARIO: &str = "16 signatures (v1a ÷ v1)";

pub async fn run(upstream: &Upstream, opts: &Options, report: &mut Report) -> Result<()> {
    let port = upstream.port();
    let sites = [
        Site::plugin("v1", port, |r| plugin::one_subscriber_signed(r, "v1")).await?,
        Site::plugin("v1a", port, |r| plugin::one_subscriber_signed(r, "v1a")).await?,
        Site::plugin("v1,v1a", port, |r| {
            plugin::one_subscriber_signed(r, "v1,v1a")
        })
        .await?,
    ];
    let mut totals: Vec<Totals> = sites.iter().map(|_| Totals::new()).collect();
    for round in 1..=opts.rounds {
        for turn in 0..sites.len() {
            let i = (turn + round - 1) % sites.len();
            let run = write_run(&sites[i], opts).await?;
            eprintln!(
                "16 signatures, round {round}, {}: {:.0} req/s, {} deliveries, last {} ms after the load",
                sites[i].name,
                run.load.rate(),
                run.delivered,
                run.lag.as_millis()
            );
            totals[i].add(&run);
        }
    }
    let [v1, v1a, both] = totals.as_slice() else {
        bail!("three sites");
    };
    let goal = ratio(v1a.deliveries_per_second(), v1.deliveries_per_second());
    report.check(
        SCENARIO,
        "deliveries/s v1a ÷ v1",
        format!(
            "{goal:.3} ({} vs {} deliveries/s; v1,v1a {} = {:.3}); every event delivered",
            thousands(v1a.deliveries_per_second()),
            thousands(v1.deliveries_per_second()),
            thousands(both.deliveries_per_second()),
            ratio(both.deliveries_per_second(), v1.deliveries_per_second()),
        ),
        "≥ 0.80",
        goal >= 0.80,
    );
    report.info(
        SCENARIO,
        "Envoy CPU per request (incl. delivery)",
        cpu_per_request(("v1a", &v1a.cpu, v1a.load.ok), ("v1", &v1.cpu, v1.load.ok)),
    );
    report.info(
        SCENARIO,
        "v1,v1a CPU per request",
        cpu_per_request(
            ("v1,v1a", &both.cpu, both.load.ok),
            ("v1", &v1.cpu, v1.load.ok),
        ),
    );
    Ok(())
}
