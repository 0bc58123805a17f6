//! proxy-webhooks: a proxy-wasm plugin that turns an API's state-changing responses into
//! Standard Webhooks.
//!
//! The folders are the architecture, each using only the ones listed after it:
//! `host` (the proxy-wasm glue, wasm32 only) → `stream` (the filter) and `dispatcher` (the
//! main-thread singleton) → `api` (the subscription API) → `fleet` (etcd) → `registry` (shared
//! data) and `config` → `model` (the product's vocabulary) → `support` (plain helpers).
//! `port` is the host interface the roles are generic over; everything outside `host` is plain
//! Rust with no host calls, unit-tested natively against fakes. docs/architecture.md has the
//! picture and where a change goes.
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
pub mod config;
pub mod dispatcher;
pub mod fleet;
pub mod model;
pub mod port;
pub mod registry;
pub mod stream;
pub mod support;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
mod host;
