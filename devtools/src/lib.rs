//! Test harness and demo programs for proxy-webhooks.
//!
//! This crate is native (never wasm) and deliberately does not depend on the `proxy-webhooks`
//! crate: the integration tests treat the plugin as a black box — a `.wasm` file loaded by a real
//! Envoy — and check it only against the public contract (`SPEC.md`). Signatures are verified with
//! the independent `standardwebhooks` crate, never with the plugin's own signer.
//!
//! Modules:
//! - [`etcd`]: a real one-member etcd on free ports (fleet mode's store), stopped and started
//!   again on demand;
//! - [`fleet`]: etcd and several Envoy replicas in fleet mode (node ids a, b, c...), restarted
//!   with SIGTERM or SIGKILL;
//! - [`api`]: calls to the subscription API through an Envoy with an API key;
//! - [`browser`]: a headless Chromium through chromedriver (network log, axe-core, screenshots);
//! - [`envoy`]: render the shipped `envoy.yaml` for a test and run Envoy on free ports;
//! - [`upstream`]: a programmable API server that answers anything (behaviour from request headers);
//! - [`receiver`]: a recording, programmable webhook receiver;
//! - [`hostile`]: raw-socket receivers that misbehave (resets, garbage, short bodies, hangs);
//! - [`manifests`]: the Envoy parts of the Istio and Envoy Gateway manifests in `deploy/`;
//! - [`files`]: the repository's YAML files as JSON, the plugin configuration inside envoy.yaml;
//! - [`paced`]: a healthy but slow receiver (a rate, a small backlog, a connection limit);
//! - [`orders`]: the in-memory demo "orders" API used by `make run`;
//! - [`show`]: how the demo prints a webhook;
//! - [`stack`]: upstream + receiver + Envoy with the plugin, started together;
//! - [`bench`]: the `make bench` load generator, lean servers and scenarios;
//! - [`util`]: free ports, deadlines, workspace paths, an HTTP client.

pub mod api;
pub mod bench;
pub mod browser;
pub mod envoy;
pub mod etcd;
pub mod files;
pub mod fleet;
pub mod hostile;
pub mod manifests;
pub mod orders;
pub mod paced;
pub mod portal;
pub mod receiver;
pub mod server;
pub mod show;
pub mod stack;
pub mod upstream;
pub mod util;

pub use api::{api, api_sent};
pub use envoy::{Envoy, EnvoyConfig};
pub use etcd::Etcd;
pub use fleet::{Fleet, Stop};
pub use receiver::{Received, Receiver, Reply};
pub use stack::{Sent, Stack};
pub use upstream::Upstream;
pub use util::{free_port, http_client, poll_until, workspace_root};
