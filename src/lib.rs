//! proxy-webhooks: a proxy-wasm plugin that turns an API's state-changing responses into
//! Standard Webhooks.
//!
//! Everything outside `host` is plain Rust with no host calls, so it is unit-tested natively;
//! what the roles ask of Envoy is the interface in `port` (the dispatcher is generic over it and
//! tested against a fake host); `host` is the thin proxy-wasm glue, compiled only for wasm32.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod api;
pub mod attempts;
pub mod audience;
mod buckets;
pub mod config;
pub mod delivery;
pub mod dispatcher;
pub mod etcd;
pub mod event;
pub mod fleet;
pub mod hashing;
pub mod identity;
pub mod ids;
pub mod outbox;
pub mod pacing;
pub mod port;
pub mod queue;
pub mod ratelimit;
mod record;
pub mod registry;
pub mod rules;
pub mod signing;
pub mod store;
pub mod stream;
pub mod subscription;
#[cfg(test)]
mod tests;
pub mod time;
pub mod url;
pub mod watchdog;

#[cfg(target_arch = "wasm32")]
mod host;
