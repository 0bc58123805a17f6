//! Fleet mode (SPEC "Fleet mode"): several replicas share their subscriptions and a durable
//! outbox in etcd. Pure logic over [`crate::etcd`]'s builders and parsers; the roles send the
//! requests through their host interface and feed the answers back.

pub mod commit;
pub mod dead;
pub mod journal;
pub mod keys;
pub mod stored;
pub mod sync;
