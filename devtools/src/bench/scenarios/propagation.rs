//! Scenario 10: fleet propagation. A subscription created through replica A (its 201 read by the
//! client) until the first webhook replica B delivers to it, for an event B detected.
//!
//! Each subscription wants an event type of its own (`probe_<k>.created`, which inference makes of
//! `POST /probe_<k>`), so exactly one subscription matches each probe and the fan-out never grows.
//! Right after the 201, B is sent `POST /probe_<k>` every [`PROBE_EVERY`] until the receiver has
//! a webhook for it: what is measured is when B learnt of the subscription (its sync), to within
//! one probe period plus a delivery (~1 ms, scenario 3), not when an event happened to come.
//! Before each create the bench waits a random part of `sync_interval`, so creates fall at every
//! phase of B's sync timer, as real ones do. Baseline, in the same run and interleaved: the same
//! with the create through B itself (no propagation: the replica that wrote to etcd serves the
//! subscription at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::bench::fleet::{Fleet, FleetOptions};
use crate::bench::report::Report;
use crate::bench::servers::Upstream;
use crate::bench::timeline::Timeline;
use crate::util::http_client;

const SCENARIO: &str = "10 fleet propagation (2 replicas)";
/// Creates per side (the issue asks for at least 50).
const SAMPLES: u64 = 60;
/// docs/fleet.md's `sync_interval` (and the default).
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How often B is sent a probe event while the bench waits for the webhook.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Far beyond any expected propagation: a sample that takes longer fails the scenario.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(10);
const A: usize = 0;
const B: usize = 1;

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    let mut options = FleetOptions::replicas(2);
    options.sync_interval = format!("{}ms", SYNC_INTERVAL.as_millis());
    let fleet = Fleet::start(upstream.port(), options).await?;
    let capacity = usize::try_from(2 * SAMPLES)?;
    let across = Arc::new(Timeline::new(capacity));
    let local = Arc::new(Timeline::new(capacity));
    let mut phase = XorShift(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut probes = 0;
    for k in 0..2 * SAMPLES {
        // Even samples across replicas, odd ones the baseline: drifts hit both alike.
        let (timeline, creator) = if k % 2 == 0 {
            (&across, A)
        } else {
            (&local, B)
        };
        fleet.receiver.set_timeline(Some(timeline.clone()));
        tokio::time::sleep(SYNC_INTERVAL.mul_f64(phase.unit())).await;
        probes += sample(&fleet, timeline, creator, k)
            .await
            .with_context(|| format!("sample {k} (created through replica {creator})"))?;
    }
    fleet.receiver.set_timeline(None);
    let took = started.elapsed();

    let (across, n_across) = across.latencies();
    let (local, n_local) = local.latencies();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let p99 = ms(&across, 0.99);
    report.info(
        SCENARIO,
        "set-up",
        format!(
            "{n_across} creates through A and {n_local} through B, interleaved, each after a \
             random wait within sync_interval ({} ms); B probed every {} ms after each 201 \
             ({probes} probe events in all); {:.0} s",
            SYNC_INTERVAL.as_millis(),
            PROBE_EVERY.as_millis(),
            took.as_secs_f64()
        ),
    );
    report.check(
        SCENARIO,
        "created through A → first delivery by B: p50 / p99",
        format!(
            "{:.0} / {p99:.0} ms (min {:.0}, max {:.0} ms)",
            ms(&across, 0.5),
            ms(&across, 0.0),
            ms(&across, 1.0)
        ),
        "p99 ≤ 1 s",
        p99 <= 1000.0,
    );
    report.info(
        SCENARIO,
        "baseline: created through B → first delivery by B: p50 / p99",
        format!(
            "{:.1} / {:.1} ms (max {:.1} ms)",
            ms(&local, 0.5),
            ms(&local, 0.99),
            ms(&local, 1.0)
        ),
    );
    report.info(
        SCENARIO,
        "across replicas ÷ sync_interval: p50 / p99",
        format!(
            "{:.2} / {:.2}",
            ms(&across, 0.5) / SYNC_INTERVAL.as_secs_f64() / 1000.0,
            p99 / SYNC_INTERVAL.as_secs_f64() / 1000.0
        ),
    );
    let mut errors = Vec::new();
    for i in [A, B] {
        let envoy = fleet.envoy(i)?;
        errors.push(
            envoy
                .counter("webhooks_fleet_etcd_errors")
                .await
                .unwrap_or(0),
        );
    }
    report.info(
        SCENARIO,
        "etcd errors (`webhooks_fleet_etcd_errors`, A / B)",
        format!("{} / {}", errors[0], errors[1]),
    );
    Ok(())
}

/// One create through `creator` and the probing of B until its webhook arrived; the probes sent.
async fn sample(fleet: &Fleet, timeline: &Timeline, creator: usize, k: u64) -> Result<u64> {
    let resource = format!("probe_{}", letters(k));
    let body = json!({"url": fleet.receiver.url(&format!("/p/{k}")),
                      "events": [format!("{resource}.created")]});
    fleet.create(creator, body).await?;
    timeline.mark_responded(k);
    let client = http_client();
    let url = fleet.envoy(B)?.url(&format!("/{resource}"));
    let deadline = Instant::now() + SAMPLE_DEADLINE;
    let mut probes = 0;
    while !timeline.arrived(k) {
        if Instant::now() >= deadline {
            bail!("no webhook from B after {SAMPLE_DEADLINE:?} ({probes} probes)");
        }
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .body(json!({"seq": k}).to_string())
            .send()
            .await?;
        if sent.status() != 201 {
            bail!("probe through B answered {}", sent.status());
        }
        probes += 1;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok(probes)
}

/// `k` in letters (`aaa`, `aab`, …): event types inferred from a path are letters only.
fn letters(k: u64) -> String {
    let mut out = Vec::new();
    let mut n = k;
    for _ in 0..4 {
        out.push(b'a' + u8::try_from(n % 26).unwrap_or(0));
        n /= 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A small deterministic generator for the waits (the same phases every run).
struct XorShift(u64);

impl XorShift {
    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
