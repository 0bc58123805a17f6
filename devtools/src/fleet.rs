//! Several Envoy replicas in fleet mode (SPEC "Fleet mode") on one real etcd, all on 127.0.0.1:
//! one test API (upstream) and one webhook receiver shared by every replica, replica `i` running
//! the plugin with node id `a`, `b`, `c`, ... (see [`node_id`]).
//!
//! A replica can be stopped (SIGTERM as on `docker stop`, or SIGKILL as on a crash) and started
//! again with the same configuration, so with the same node id; etcd itself can be stopped and
//! started again through [`Fleet::etcd`] ([`Etcd::stop`], [`Etcd::start_again`]).

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::envoy::{Envoy, EnvoyConfig};
use crate::etcd::Etcd;
use crate::receiver::Receiver;
use crate::upstream::Upstream;
use crate::util::poll_until;

/// The name of the Envoy cluster of etcd that [`Fleet`] adds to every replica.
pub const ETCD_CLUSTER: &str = "webhooks_etcd";

/// How long a SIGTERMed Envoy may take to exit.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(15);

/// What [`Fleet`] puts in the plugin's `fleet` section unless the test's configuration sets it:
/// short intervals, so that tests wait little.
pub fn default_fleet_section() -> Value {
    json!({"cluster": ETCD_CLUSTER, "prefix": "/pw-test", "sync_interval": "200ms",
           "lease_ttl": "3s"})
}

/// The node id of replica `i`: `a`, `b`, ... `z`, then `n26`, `n27`, ...
pub fn node_id(i: usize) -> String {
    match u8::try_from(i) {
        Ok(n) if n < 26 => char::from(b'a' + n).to_string(),
        _ => format!("n{i}"),
    }
}

/// The Envoy cluster (named [`ETCD_CLUSTER`]) of `etcd`'s client port; over TLS with the
/// client certificate and etcd's CA when etcd requires them (as docs/fleet.md wires it).
pub fn etcd_cluster(etcd: &Etcd) -> Value {
    let mut cluster = json!({
        "name": ETCD_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": ETCD_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": etcd.client_port()}}}}]}]}
    });
    if let Some(tls) = etcd.tls() {
        let file = |path: &std::path::Path| json!({"filename": path.display().to_string()});
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": file(&tls.client_cert),
                                          "private_key": file(&tls.client_key)}],
                    "validation_context": {
                        "trusted_ca": file(&tls.ca),
                        "match_typed_subject_alt_names": [
                            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}]
                    }
                }
            }
        });
    }
    cluster
}

/// How a replica is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, as `docker stop` or a Kubernetes pod termination; waits for the exit.
    Term,
    /// SIGKILL, as a crash or the OOM killer: no shutdown code runs.
    Kill,
}

/// etcd, the shared upstream and receiver, and the replicas. Field order is drop order: the
/// replicas stop first, etcd last.
pub struct Fleet {
    /// Replica `i` has node id [`node_id`]`(i)`. A stopped one stays here (its log readable)
    /// until [`Fleet::start_again`] replaces it.
    pub replicas: Vec<Envoy>,
    pub receiver: Receiver,
    pub upstream: Upstream,
    pub etcd: Etcd,
    configs: Vec<EnvoyConfig>,
    prefix: String,
}

impl Fleet {
    /// Starts etcd, an upstream, a receiver and `n` replicas (at once), each with the plugin
    /// configuration `plugin` gives (it gets the receiver, to name its URLs) plus the `fleet`
    /// section: [`default_fleet_section`] under whatever `plugin`'s own `fleet` sets, and the
    /// replica's `node_id`.
    pub async fn start(n: usize, plugin: impl Fn(&Receiver) -> Value) -> Result<Fleet> {
        Fleet::start_with(n, plugin, |cfg| cfg).await
    }

    /// Like [`Fleet::start`], with a last change to every replica's Envoy configuration.
    pub async fn start_with(
        n: usize,
        plugin: impl Fn(&Receiver) -> Value,
        tweak: impl Fn(EnvoyConfig) -> EnvoyConfig,
    ) -> Result<Fleet> {
        Fleet::start_each(n, |_, receiver| plugin(receiver), tweak).await
    }

    /// Like [`Fleet::start_with`], with a plugin configuration of its own for each replica:
    /// replica `i` runs `plugin(i, receiver)` (e.g. a smaller `delivery.max_queue` on one).
    pub async fn start_each(
        n: usize,
        plugin: impl Fn(usize, &Receiver) -> Value,
        tweak: impl Fn(EnvoyConfig) -> EnvoyConfig,
    ) -> Result<Fleet> {
        Fleet::start_on(Etcd::start().await?, n, plugin, tweak).await
    }

    /// Like [`Fleet::start_each`], on an etcd the test started (e.g. with TLS and
    /// authentication, [`crate::etcd::EtcdOptions`]).
    pub async fn start_on(
        etcd: Etcd,
        n: usize,
        plugin: impl Fn(usize, &Receiver) -> Value,
        tweak: impl Fn(EnvoyConfig) -> EnvoyConfig,
    ) -> Result<Fleet> {
        let fleet = Fleet::start_on_at_ready(etcd, n, plugin, tweak).await?;
        for envoy in &fleet.replicas {
            wait_registry_read(envoy).await?;
        }
        Ok(fleet)
    }

    /// [`Fleet::start_on`] returning as soon as every Envoy is ready, before their first
    /// registry reads (for a replica that cannot read etcd at all).
    pub async fn start_on_at_ready(
        etcd: Etcd,
        n: usize,
        plugin: impl Fn(usize, &Receiver) -> Value,
        tweak: impl Fn(EnvoyConfig) -> EnvoyConfig,
    ) -> Result<Fleet> {
        ensure!(n > 0, "a fleet needs at least one replica");
        let upstream = Upstream::start().await?;
        let receiver = Receiver::start().await?;
        let mut configs = Vec::with_capacity(n);
        let mut prefix = String::new();
        for i in 0..n {
            let config = with_fleet_section(plugin(i, &receiver), &node_id(i))?;
            prefix = config["fleet"]["prefix"]
                .as_str()
                .context("fleet.prefix must be a string")?
                .to_string();
            let envoy = EnvoyConfig::new(config, upstream.port()).with_cluster(etcd_cluster(&etcd));
            configs.push(tweak(envoy));
        }
        let starts = configs.iter().cloned().map(Envoy::start);
        let replicas = futures_util::future::try_join_all(starts).await?;
        Ok(Fleet {
            replicas,
            receiver,
            upstream,
            etcd,
            configs,
            prefix,
        })
    }

    /// Replica `i`.
    pub fn replica(&self, i: usize) -> &Envoy {
        &self.replicas[i]
    }

    /// The etcd key prefix of every replica (`fleet.prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Envoy configuration replica `i` runs (and runs again when started again).
    pub fn config(&self, i: usize) -> &EnvoyConfig {
        &self.configs[i]
    }

    /// Stops replica `i` (`how`) and waits until the process is gone; returns how it exited.
    pub async fn stop(&mut self, i: usize, how: Stop) -> Result<ExitStatus> {
        let envoy = self
            .replicas
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        match how {
            Stop::Term => envoy.terminate(TERMINATE_DEADLINE).await,
            Stop::Kill => envoy.kill().await,
        }
    }

    /// Starts stopped replica `i` again with its configuration (same node id) and waits until
    /// it has read the registry from etcd. Its ports are new ones: use [`Envoy::url`] of the
    /// new replica.
    pub async fn start_again(&mut self, i: usize) -> Result<()> {
        self.start_again_at_ready(i).await?;
        wait_registry_read(self.replica(i)).await
    }

    /// [`Fleet::start_again`] returning as soon as Envoy is ready, before its first registry
    /// read (its API answers 503 until then).
    pub async fn start_again_at_ready(&mut self, i: usize) -> Result<()> {
        let config = self
            .configs
            .get(i)
            .with_context(|| format!("no replica {i}"))?;
        if self.replicas[i].is_running() {
            bail!("replica {} is running: stop it first", node_id(i));
        }
        self.replicas[i] = Envoy::start(config.clone()).await?;
        Ok(())
    }

    /// Changes the configuration replica `i` runs when next started (e.g. a rotated key).
    pub fn reconfigure(&mut self, i: usize, change: impl FnOnce(EnvoyConfig) -> EnvoyConfig) {
        if let Some(config) = self.configs.get_mut(i) {
            *config = change(config.clone());
        }
    }

    /// Gives replica `i` the plugin configuration `plugin` (completed as [`Fleet::start`]
    /// completes it: the `fleet` section and the replica's node id) from its next start on.
    pub fn reconfigure_plugin(&mut self, i: usize, plugin: Value) -> Result<()> {
        let config = with_fleet_section(plugin, &node_id(i))?;
        let envoy = self
            .configs
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        envoy.plugin_config = config.to_string();
        Ok(())
    }

    /// Stops replica `i` (`how`) and starts it again with the same node id.
    pub async fn restart(&mut self, i: usize, how: Stop) -> Result<()> {
        self.stop(i, how).await?;
        self.start_again(i).await
    }

    /// The etcd key of subscription `id`'s record.
    pub fn subscription_key(&self, id: &str) -> String {
        format!("{}/sub/{id}", self.prefix)
    }

    /// The subscription record etcd holds for `id`, parsed.
    pub async fn stored(&self, id: &str) -> Result<Option<Value>> {
        let Some(bytes) = self.etcd.get(&self.subscription_key(id)).await? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&bytes)
            .with_context(|| format!("the record of {id} in etcd is not JSON"))?;
        Ok(Some(record))
    }

    /// Writes a subscription record straight into etcd (as another replica's API would).
    pub async fn put_stored(&self, id: &str, record: &Value) -> Result<()> {
        self.etcd
            .put(&self.subscription_key(id), record.to_string().as_bytes())
            .await
    }

    /// Deletes a subscription record straight from etcd; true when it existed.
    pub async fn delete_stored(&self, id: &str) -> Result<bool> {
        self.etcd.delete(&self.subscription_key(id)).await
    }

    /// How many subscription records etcd holds.
    pub async fn stored_count(&self) -> Result<u64> {
        self.etcd.count(&self.subscription_key("")).await
    }

    /// Waits until replica `i` counts `n` active subscriptions (`webhooks_subscriptions_active`,
    /// its cache of etcd's registry).
    pub async fn wait_active(&self, i: usize, n: u64, timeout: Duration) -> Result<()> {
        let envoy = self.replica(i);
        let what = format!(
            "webhooks_subscriptions_active {n} on replica {}",
            node_id(i)
        );
        let waited = poll_until(timeout, &what, async || {
            envoy
                .stat("webhooks_subscriptions_active")
                .await
                .ok()
                .flatten()
                == Some(n)
        })
        .await;
        if waited.is_ok() {
            return Ok(());
        }
        let mut seen = Vec::new();
        for name in [
            "webhooks_subscriptions_active",
            "webhooks_fleet_sync_lag_ms",
            "webhooks_fleet_etcd_errors",
        ] {
            seen.push(format!(
                "{name} {:?}",
                envoy.stat(name).await.ok().flatten()
            ));
        }
        waited.with_context(|| {
            format!(
                "{}; log tail of {}:\n{}",
                seen.join(", "),
                node_id(i),
                envoy.log_tail(20)
            )
        })
    }

    /// [`Fleet::wait_active`] on every replica.
    pub async fn wait_all_active(&self, n: u64, timeout: Duration) -> Result<()> {
        for i in 0..self.replicas.len() {
            self.wait_active(i, n, timeout).await?;
        }
        Ok(())
    }

    /// The sum of counter `name` over every replica (each counts since it started).
    pub async fn counter_sum(&self, name: &str) -> Result<u64> {
        let mut sum = 0;
        for envoy in &self.replicas {
            sum += envoy.counter(name).await?;
        }
        Ok(sum)
    }
}

/// `plugin` with its `fleet` section completed from [`default_fleet_section`] and `node_id` set
/// (unless `plugin` sets one: e.g. two replicas given the same one).
fn with_fleet_section(mut plugin: Value, node: &str) -> Result<Value> {
    let Some(config) = plugin.as_object_mut() else {
        bail!("the plugin configuration must be a JSON object: {plugin}");
    };
    let mut fleet = default_fleet_section();
    match config.get("fleet") {
        None | Some(Value::Null) => {}
        Some(Value::Object(own)) => {
            for (field, value) in own {
                fleet[field] = value.clone();
            }
        }
        Some(other) => bail!("the plugin's fleet section must be an object: {other}"),
    }
    if fleet.get("node_id").is_none() {
        fleet["node_id"] = json!(node);
    }
    config.insert("fleet".to_string(), fleet);
    Ok(plugin)
}

/// How long a started replica may take to apply its first registry read.
const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `envoy` has applied its first registry read (`webhooks_fleet_registry_read` 1):
/// before that its subscription API answers 503. A test that means to see those 503s starts
/// Envoy itself.
pub async fn wait_registry_read(envoy: &Envoy) -> Result<()> {
    poll_until(
        REGISTRY_READ_TIMEOUT,
        "the first registry read",
        async || envoy.gauge("webhooks_fleet_registry_read").await.ok() == Some(1),
    )
    .await
    .with_context(|| format!("log tail:\n{}", envoy.log_tail(20)))
}

/// `POST /orders` through `envoy`, answered 201 by the test upstream: one `orders.created`
/// event whose `data.object` is `{"n": n}`.
pub async fn produce(envoy: &Envoy, n: impl serde::Serialize) -> Result<()> {
    let response = envoy
        .client()
        .post(envoy.url("/orders"))
        .header("x-test-body", json!({ "n": n }).to_string())
        .send()
        .await?;
    let sent = crate::stack::Sent::read(response).await?;
    ensure!(sent.status == 201, "POST /orders answered {}", sent.status);
    Ok(())
}

/// Waits (up to `timeout`) until `receiver` got event `n` of [`produce`] at `path`, then
/// checks its signature with `secret`.
pub async fn delivered(
    receiver: &Receiver,
    path: &str,
    n: u64,
    secret: &str,
    timeout: Duration,
) -> Result<()> {
    let find = || {
        receiver.received().into_iter().find(|hook| {
            let event = hook.json().ok();
            hook.path == path && event.and_then(|b| b["data"]["object"]["n"].as_u64()) == Some(n)
        })
    };
    poll_until(timeout, &format!("event {n} at {path}"), async || {
        find().is_some()
    })
    .await
    .with_context(|| crate::receiver::describe(&receiver.received()))?;
    find()
        .context("gone")?
        .verify(secret)
        .with_context(|| format!("event {n} signed with the subscription's secret"))?;
    Ok(())
}
