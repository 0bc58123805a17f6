//! Fleet mode (docs/fleet.md): several replicas share their subscriptions and a durable outbox
//! in etcd. Pure logic over [`etcd`]'s builders and parsers (the v3 HTTP/JSON gateway): the
//! key layout ([`keys`]), API writes ([`commit`]), registry reads ([`sync`]), static
//! subscriptions' shared status ([`statics`]), the durable outbox ([`journal`], [`stored`],
//! [`dead`], [`recover`]), what is sealed there ([`vault`]), the delivery log every replica
//! answers alike ([`log`]) with each replica's health summaries ([`health`]), portal session
//! revocations ([`revocations`]), and etcd's own authentication ([`auth`]). The roles send the
//! requests through their host interface and feed the answers back.
//!
//! May use: `model`, `registry`, `support`.

pub mod auth;
pub mod commit;
pub mod dead;
pub mod etcd;
pub mod health;
pub mod journal;
pub mod keys;
pub mod log;
pub mod recover;
pub mod revocations;
pub mod statics;
pub mod stored;
pub mod sync;
pub mod vault;
