//! Scenario 12: the first registry read of a fresh replica at scale. etcd already holds the
//! subscription records (written by the bench, as other replicas' APIs would have), then one
//! Envoy starts in fleet mode; the scenario polls its admin stats every [`POLL`] until it counts
//! every record as an active subscription. The plugin reads the whole prefix in one unpaged
//! gateway answer, so this shows whether that answer gets through (etcd, Envoy's callout, the
//! plugin's parser) at 10,000 records, how long loading takes against a registry of 100 in the
//! same run, and how long Envoy's main thread (the dispatcher's, which also serves admin) stays
//! busy applying it: the slowest admin answer while polling is a lower bound of that stall.
//!
//! The records spread over 100 consumers (100 each: the default per-consumer limit). The 10,000
//! are loaded twice: all wanting the same event type (one popular event, the usual case) and each
//! wanting an event type of its own.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::bench::fleet::gateway::Gateway;
use crate::bench::fleet::grpc::prefix_end;
use crate::bench::fleet::{record, seed, Fleet, FleetOptions};
use crate::bench::report::{megabytes, thousands, Report};
use crate::bench::servers::Upstream;

const SCENARIO: &str = "12 fleet first sync";
/// Each record about this size (docs/fleet.md's ~1 KB per subscription with key and base64).
const RECORD_BYTES: usize = 600;
const CONSUMERS: u64 = 100;
const POLL: Duration = Duration::from_millis(100);
const LOAD_DEADLINE: Duration = Duration::from_secs(90);

/// What the registry in etcd looks like.
#[derive(Clone, Copy)]
struct Registry {
    records: u64,
    /// Every record wants the same event type (else each its own).
    same_event: bool,
}

impl Registry {
    fn name(self) -> String {
        let events = if self.same_event {
            "one event type"
        } else {
            "an event type each"
        };
        format!("{} records, {events}", thousands(self.records as f64))
    }
}

const REGISTRIES: [Registry; 3] = [
    Registry {
        records: 100,
        same_event: true,
    },
    Registry {
        records: 10_000,
        same_event: true,
    },
    Registry {
        records: 10_000,
        same_event: false,
    },
];

/// How one registry loaded.
struct Loaded {
    /// From spawning Envoy until it counted every record (None: not within the deadline).
    all_in: Option<Duration>,
    /// From spawning Envoy until admin `/ready`.
    ready: Duration,
    active: u64,
    /// The slowest admin answer while polling.
    stall: Duration,
    errors: u64,
    log: String,
}

pub async fn run(upstream: &Upstream, report: &mut Report) -> Result<()> {
    let mut baseline = None;
    for registry in REGISTRIES {
        let what = registry.name();
        let mut fleet = Fleet::prepare(upstream.port(), FleetOptions::replicas(1)).await?;
        let (answer, record_bytes) = fill(&fleet, registry).await?;
        let loaded = load(&mut fleet, registry.records).await?;
        report.info(
            SCENARIO,
            &format!("{what}: the gateway's answer to the first read"),
            format!(
                "{} ({} of record JSON)",
                megabytes(answer as f64),
                megabytes(record_bytes as f64)
            ),
        );
        let measured = match loaded.all_in {
            Some(all_in) => format!(
                "all {} active {:.2} s after the start ({:.2} s to /ready); etcd errors {}",
                thousands(loaded.active as f64),
                all_in.as_secs_f64(),
                loaded.ready.as_secs_f64(),
                loaded.errors
            ),
            None => format!(
                "{} of {} active after {:.0} s; etcd errors {}; Envoy's log: {}",
                thousands(loaded.active as f64),
                thousands(registry.records as f64),
                LOAD_DEADLINE.as_secs_f64(),
                loaded.errors,
                loaded.log
            ),
        };
        report.check(
            SCENARIO,
            &format!("{what}: loaded by a fresh replica"),
            measured,
            "all",
            loaded.all_in.is_some(),
        );
        report.info(
            SCENARIO,
            &format!("{what}: Envoy's main thread busy (slowest admin answer)"),
            format!("{:.2} s", loaded.stall.as_secs_f64()),
        );
        match (baseline, loaded.all_in) {
            (None, Some(all_in)) => baseline = Some(all_in),
            (Some(base), Some(all_in)) => report.info(
                SCENARIO,
                &format!("{what}: start to all loaded, ÷ 100 records' (same run)"),
                format!("{:.2}", all_in.as_secs_f64() / base.as_secs_f64().max(1e-9)),
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Writes the registry into etcd; the size of the gateway's answer to the whole prefix and of the
/// record values.
async fn fill(fleet: &Fleet, registry: Registry) -> Result<(usize, usize)> {
    let url = fleet.receiver.url("/seed");
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..registry.records)
        .map(|i| {
            let id = format!("sub_seed_{i:05}");
            let event = if registry.same_event {
                "orders.created".to_string()
            } else {
                format!("{}.created", letters(i))
            };
            let mut value = record(&id, &url, &[event.as_str()], RECORD_BYTES);
            value["consumer"] = json!(format!("consumer_{}", i % CONSUMERS));
            (fleet.record_key(&id), value.to_string().into_bytes())
        })
        .collect();
    let record_bytes = records.iter().map(|(_, v)| v.len()).sum();
    seed(&fleet.etcd, records).await?;
    let prefix = fleet.record_key("");
    let body = json!({"key": b64(&prefix), "range_end": b64(&prefix_end(&prefix))});
    let gateway = Gateway::new(fleet.etcd.client_port());
    let answer = gateway
        .post("/v3/kv/range", body.to_string().into_bytes())
        .await?;
    Ok((answer.to_string().len(), record_bytes))
}

/// Starts the replica and polls until it counts `records` active subscriptions.
async fn load(fleet: &mut Fleet, records: u64) -> Result<Loaded> {
    let started = Instant::now();
    let ready = fleet
        .start_replicas()
        .await?
        .first()
        .copied()
        .unwrap_or_default();
    let envoy = fleet.envoy(0)?;
    let mut stall = Duration::ZERO;
    let mut active = 0;
    let mut all_in = None;
    while started.elapsed() < LOAD_DEADLINE {
        let asked = Instant::now();
        active = envoy
            .stat("webhooks_subscriptions_active")
            .await?
            .unwrap_or(0);
        stall = stall.max(asked.elapsed());
        if active == records {
            all_in = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let log: Vec<String> = envoy
        .log_contents()
        .lines()
        .filter(|l| l.contains("fleet") || l.contains("etcd"))
        .take(3)
        .map(str::to_string)
        .collect();
    Ok(Loaded {
        all_in,
        ready,
        active,
        stall,
        errors: envoy
            .counter("webhooks_fleet_etcd_errors")
            .await
            .unwrap_or(0),
        log: log.join(" / "),
    })
}

/// `k` in letters: inferable event types are letters only.
fn letters(k: u64) -> String {
    (0..4u32)
        .rev()
        .map(|d| char::from(b'a' + u8::try_from((k / 26u64.pow(d)) % 26).unwrap_or(0)))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
