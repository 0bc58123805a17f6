//! Starting the Envoys of a scenario and waiting for their deliveries.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use super::cpu::Cpu;
use super::servers::Receiver;
use crate::envoy::{Envoy, EnvoyConfig};

/// How often the receiver's count is looked at while waiting for deliveries (it is an atomic in
/// this process: polling it costs Envoy nothing, unlike polling Envoy's admin stats).
const POLL: Duration = Duration::from_millis(1);

/// An Envoy under test and, with the plugin, the receiver its subscriptions point at.
pub struct Site {
    pub name: &'static str,
    pub envoy: Envoy,
    pub receiver: Option<Receiver>,
    /// From spawning Envoy until its admin `/ready` answered (polled every 50 ms).
    pub start_up: Duration,
}

impl Site {
    /// Plain Envoy in front of the upstream: the baseline.
    pub async fn plain(name: &'static str, upstream_port: u16) -> Result<Site> {
        let (envoy, start_up) = start(EnvoyConfig::plain(upstream_port)).await?;
        Ok(Site {
            name,
            envoy,
            receiver: None,
            start_up,
        })
    }

    /// Envoy with the plugin, configured by `config` for a receiver of its own.
    pub async fn plugin(
        name: &'static str,
        upstream_port: u16,
        config: impl FnOnce(&Receiver) -> Value,
    ) -> Result<Site> {
        let receiver = Receiver::start().await?;
        let (envoy, start_up) = start(EnvoyConfig::new(config(&receiver), upstream_port)).await?;
        Ok(Site {
            name,
            envoy,
            receiver: Some(receiver),
            start_up,
        })
    }

    /// Envoy with the plugin configured by `config`, for a receiver the scenario keeps itself
    /// (the site has none: waiting for deliveries is the scenario's business).
    pub async fn plugin_with(
        name: &'static str,
        upstream_port: u16,
        config: Value,
    ) -> Result<Site> {
        let (envoy, start_up) = start(EnvoyConfig::new(config, upstream_port)).await?;
        Ok(Site {
            name,
            envoy,
            receiver: None,
            start_up,
        })
    }

    pub fn port(&self) -> u16 {
        self.envoy.listener_port()
    }

    /// Waits until the receiver has counted at least one request per event Envoy detected and
    /// returns when that happened. Plain sites return at once.
    pub async fn delivered_all(&self, timeout: Duration) -> Result<Instant> {
        let Some(receiver) = &self.receiver else {
            return Ok(Instant::now());
        };
        let events = self.envoy.counter("webhooks_events_detected").await?;
        wait_for_count(receiver, events, timeout).await
    }

    /// Envoy's CPU time so far, by thread.
    pub fn cpu(&self) -> Result<Cpu> {
        Cpu::of(self.envoy.pid())
    }

    /// Envoy's resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.envoy.pid())
    }
}

/// Another Envoy configuration to start from than the workspace's `envoy.yaml` (`--envoy-yaml`),
/// e.g. to compare two ways of wiring the filter. Set once, before any site starts.
static BASE_CONFIG: OnceLock<PathBuf> = OnceLock::new();

/// Makes every later site start from `path` instead of the workspace's `envoy.yaml`.
pub fn use_base_config(path: PathBuf) {
    let _ = BASE_CONFIG.set(path);
}

/// Envoy as the bench runs it: one worker, warnings only (logging costs the same on both sides,
/// but the bench wants to measure the plugin, not the log).
pub(crate) async fn start(mut config: EnvoyConfig) -> Result<(Envoy, Duration)> {
    if let Some(path) = BASE_CONFIG.get() {
        config.base_config = path.clone();
    }
    let started = Instant::now();
    let envoy = Envoy::start(config.concurrency(1).log_level("warn")).await?;
    Ok((envoy, started.elapsed()))
}

/// Polls until `receiver` counted `n` requests; the moment it did.
pub async fn wait_for_count(receiver: &Receiver, n: u64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if receiver.count() >= n {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!(
                "the receiver counted {} of {n} deliveries after {timeout:?}",
                receiver.count()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub use crate::envoy::rss_bytes;
