//! `make bench`: the plugin measured side by side with plain Envoy, in one process.
//!
//! Everything runs on 127.0.0.1: a lean upstream and a lean receiver ([`servers`], plain hyper so
//! they take as little CPU from Envoy as possible), Envoy with `--concurrency 1`, and a load
//! generator of our own ([`load`]: one hyper connection per task, latencies in an HDR histogram).
//! Scenarios that compare with plain Envoy run both Envoys at once and alternate the load between
//! them round by round, so slow drifts of a noisy machine hit both sides alike.
//!
//! Modules: [`scenarios`] (the numbered scenarios of the issue), [`smoke`] (`make bench-smoke`),
//! [`report`] (the table), [`plugin`] (plugin configurations), [`sites`] (starting Envoys,
//! waiting for deliveries), [`timeline`] (the clock shared by client and receiver), [`fleet`]
//! (etcd and several Envoys in fleet mode, etcd's API by gRPC and by its gateway).

pub mod cpu;
pub mod fleet;
pub mod load;
pub mod plugin;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod sites;
pub mod smoke;
pub mod timeline;

use std::time::Duration;

/// How hard and how long the full bench pushes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rounds per side in the interleaved comparisons (A B A B …).
    pub rounds: usize,
    /// Measured load per run.
    pub duration: Duration,
    /// Unmeasured load before each run (connections, caches, JIT warm).
    pub warmup: Duration,
    /// Concurrent client connections in closed-loop runs.
    pub connections: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rounds: 3,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: 16,
        }
    }
}
