//! Fleet mode under load: etcd plus N Envoys running the plugin with `fleet`, a lean receiver,
//! and what the fleet scenarios share (an API client per replica, killing and restarting a
//! replica, seeding etcd's registry straight from the bench).
//!
//! A fleet scenario starts a [`Fleet`], creates its subscriptions through a replica's API (they
//! point at [`Fleet::receiver`] or at a receiver of its own) and drives events at any replica's
//! listener with [`crate::bench::load`]:
//!
//! ```ignore
//! let mut fleet = Fleet::start(upstream.port(), FleetOptions::replicas(3)).await?;
//! fleet.create(0, json!({"url": fleet.receiver.url("/hook"), "events": ["*"]})).await?;
//! let outcome = load::run(fleet.port(1)?, &Shape::Post("/orders", body), &load).await?;
//! let killed_at = fleet.kill(1);            // SIGKILL: what the failover bench measures from
//! sites::wait_for_count(&fleet.receiver, outcome.ok, deadline).await?;
//! ```
//!
//! etcd is the test harness's [`Etcd`] (its process id gives scenario 11 etcd's CPU time).
//! Modules: [`grpc`] and [`gateway`] (etcd's KV API by gRPC and by the HTTP/JSON gateway, for
//! scenario 11 and for seeding).

pub mod gateway;
pub mod grpc;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use self::grpc::{KvClient, PutRequest, Request, RequestOp, TxnRequest};
use super::servers::Receiver;
use super::sites;
use crate::envoy::{Envoy, EnvoyConfig};
use crate::etcd::Etcd;
use crate::fleet::{etcd_cluster, ETCD_CLUSTER};
use crate::util::http_client;

/// The API key every replica accepts, and its SHA-256 (`printf bench-key | sha256sum`).
pub const API_KEY: &str = "bench-key";
const API_KEY_SHA256: &str = "b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7";
/// The consumer of that key.
pub const CONSUMER: &str = "bench";
/// A valid signing secret for records written straight into etcd.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How many puts the bench sends per txn when it seeds etcd (as the outbox batches them).
const SEED_BATCH: usize = 128;

/// How a fleet is configured.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub replicas: usize,
    /// `fleet.sync_interval`; docs/fleet.md's (and the default) 500 ms.
    pub sync_interval: String,
    /// `fleet.lease_ttl`.
    pub lease_ttl: String,
    /// `fleet.prefix`.
    pub prefix: String,
    /// Merged into every replica's plugin configuration (top-level fields replace ours).
    pub plugin: Value,
}

impl FleetOptions {
    /// `n` replicas with docs/fleet.md's fleet settings.
    pub fn replicas(n: usize) -> FleetOptions {
        FleetOptions {
            replicas: n,
            sync_interval: "500ms".to_string(),
            lease_ttl: "10s".to_string(),
            prefix: "/pw-bench".to_string(),
            plugin: json!({}),
        }
    }

    /// The plugin configuration of replica `node`.
    pub fn plugin_config(&self, node: &str) -> Value {
        let mut config = json!({
            // Key-less writes (the load) reach every subscription, as in the other scenarios.
            "audience": "all",
            "api": {"keys": [{"consumer": CONSUMER, "sha256": API_KEY_SHA256}],
                    "max_subscriptions_per_consumer": 100_000},
            "delivery": {"timeout": "5s", "allow_insecure_destinations": true},
            "fleet": {"cluster": ETCD_CLUSTER, "prefix": self.prefix, "node_id": node,
                      "sync_interval": self.sync_interval, "lease_ttl": self.lease_ttl},
        });
        if let (Some(ours), Some(extra)) = (config.as_object_mut(), self.plugin.as_object()) {
            for (key, value) in extra {
                ours.insert(key.clone(), value.clone());
            }
        }
        config
    }
}

/// etcd, the replicas (None once killed) and a lean receiver. Field order is drop order: the
/// Envoys stop before etcd.
pub struct Fleet {
    replicas: Vec<Option<Envoy>>,
    configs: Vec<EnvoyConfig>,
    pub receiver: Receiver,
    pub etcd: Etcd,
    pub options: FleetOptions,
    client: reqwest::Client,
}

/// The node id of replica `i`.
pub fn node_id(i: usize) -> String {
    format!("replica-{i}")
}

impl Fleet {
    /// Starts etcd, the receiver and `options.replicas` Envoys in front of the API on
    /// `upstream_port`, one after the other, each until it is ready.
    pub async fn start(upstream_port: u16, options: FleetOptions) -> Result<Fleet> {
        let mut fleet = Fleet::prepare(upstream_port, options).await?;
        fleet.start_replicas().await?;
        Ok(fleet)
    }

    /// Starts etcd and the receiver only: etcd can be seeded ([`seed`]) before
    /// [`Fleet::start_replicas`].
    pub async fn prepare(upstream_port: u16, options: FleetOptions) -> Result<Fleet> {
        let etcd = Etcd::start().await?;
        let receiver = Receiver::start().await?;
        let configs: Vec<EnvoyConfig> = (0..options.replicas)
            .map(|i| {
                EnvoyConfig::new(options.plugin_config(&node_id(i)), upstream_port)
                    .with_cluster(etcd_cluster(&etcd))
            })
            .collect();
        Ok(Fleet {
            replicas: Vec::new(),
            configs,
            receiver,
            etcd,
            options,
            client: http_client(),
        })
    }

    /// Starts the replicas not started yet, in order, each until it is ready; how long each took.
    pub async fn start_replicas(&mut self) -> Result<Vec<Duration>> {
        let mut took = Vec::new();
        for i in self.replicas.len()..self.configs.len() {
            let started = Instant::now();
            let envoy = self.start_replica(i).await?;
            took.push(started.elapsed());
            self.replicas.push(Some(envoy));
        }
        Ok(took)
    }

    async fn start_replica(&self, i: usize) -> Result<Envoy> {
        let config = self.configs.get(i).context("no such replica")?.clone();
        let (envoy, _) = sites::start(config)
            .await
            .with_context(|| format!("starting replica {i}"))?;
        Ok(envoy)
    }

    /// Replica `i`, unless it was killed.
    pub fn envoy(&self, i: usize) -> Result<&Envoy> {
        match self.replicas.get(i) {
            Some(Some(envoy)) => Ok(envoy),
            Some(None) => bail!("replica {i} was killed"),
            None => bail!("no replica {i}"),
        }
    }

    /// Replica `i`'s listener port (for [`crate::bench::load::run`]).
    pub fn port(&self, i: usize) -> Result<u16> {
        Ok(self.envoy(i)?.listener_port())
    }

    /// SIGKILL to replica `i`; the moment it was sent.
    pub fn kill(&mut self, i: usize) -> Instant {
        let at = Instant::now();
        if let Some(slot) = self.replicas.get_mut(i) {
            // Dropping an Envoy kills it (SIGKILL) and waits for it.
            slot.take();
        }
        at
    }

    /// Starts replica `i` again with its configuration (the same node id); the time to ready.
    pub async fn restart(&mut self, i: usize) -> Result<Duration> {
        let started = Instant::now();
        let envoy = self.start_replica(i).await?;
        let slot = self.replicas.get_mut(i).context("no such replica")?;
        *slot = Some(envoy);
        Ok(started.elapsed())
    }

    /// A subscription API call through replica `i` with the bench key: status and JSON body.
    pub async fn api(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .client
            .request(method, self.envoy(i)?.url(path))
            .header("x-api-key", API_KEY);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Creates a subscription through replica `i` (it must answer 201) once the replica has
    /// read the registry (503 before); its id.
    pub async fn create(&self, i: usize, body: Value) -> Result<String> {
        crate::fleet::wait_registry_read(self.envoy(i)?).await?;
        let (status, created) = self
            .api(
                i,
                reqwest::Method::POST,
                "/webhooks/subscriptions",
                Some(&body),
            )
            .await?;
        ensure!(
            status == 201,
            "create through replica {i}: {status} {created}"
        );
        Ok(created["id"].as_str().context("no id")?.to_string())
    }

    /// Waits until replica `i` counts `n` active subscriptions; the moment it did.
    pub async fn wait_active(&self, i: usize, n: u64, timeout: Duration) -> Result<Instant> {
        let envoy = self.envoy(i)?;
        let deadline = Instant::now() + timeout;
        loop {
            let active = envoy.stat("webhooks_subscriptions_active").await?;
            if active == Some(n) {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                bail!("replica {i} counts {active:?} active subscriptions, not {n}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// etcd's key of subscription `id`.
    pub fn record_key(&self, id: &str) -> Vec<u8> {
        format!("{}/sub/{id}", self.options.prefix).into_bytes()
    }
}

/// A subscription record as the plugin keeps it in etcd (what another replica's API writes), with
/// a description that pads it to about `bytes`.
pub fn record(id: &str, url: &str, events: &[&str], bytes: usize) -> Value {
    let mut record = json!({"id": id, "consumer": CONSUMER, "url": url, "events": events,
        "status": "active", "created_at_ms": 1_795_000_000_000u64,
        "updated_at_ms": 1_795_000_000_000u64, "secrets": [{"secret": SECRET}], "version": 1});
    let size = record.to_string().len();
    let pad = bytes.saturating_sub(size + 20).min(256);
    if pad > 0 {
        record["description"] = json!("d".repeat(pad));
    }
    record
}

/// Writes `records` (key, value) into etcd by gRPC, [`SEED_BATCH`] puts per txn.
pub async fn seed(etcd: &Etcd, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    let mut kv = KvClient::connect(etcd.client_port()).await?;
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let success = records
            .by_ref()
            .take(SEED_BATCH)
            .map(|(key, value)| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key,
                    value,
                    lease: 0,
                })),
            })
            .collect();
        let answer = kv
            .txn(TxnRequest {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            })
            .await?;
        ensure!(answer.succeeded, "a seeding txn failed");
    }
    Ok(())
}
