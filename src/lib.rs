//! proxy-webhooks: a proxy-wasm plugin that turns an API's state-changing responses into
//! Standard Webhooks.
//!
//! Everything outside `host` is plain Rust with no host calls, so it is unit-tested natively;
//! `host` is the thin proxy-wasm glue, compiled only for wasm32.
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
pub mod event;
pub mod identity;
pub mod ids;
pub mod outbox;
pub mod pacing;
pub mod port;
pub mod queue;
pub mod ratelimit;
pub mod registry;
#[cfg(test)]
mod robustness;
pub mod rules;
pub mod signing;
pub mod stream;
pub mod time;
pub mod url;
pub mod watchdog;

#[cfg(target_arch = "wasm32")]
mod host;
