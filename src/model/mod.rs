//! The product's vocabulary: subscriptions, who receives an event, event detection, the webhook
//! body, Standard Webhooks signing, trace context and the filter → dispatcher queue messages. Pure data and
//! rules with no host calls and no configuration parsing (callers pass the fields they need).
//!
//! May use: `support`.

pub mod audience;
pub mod event;
pub mod identity;
pub mod queue;
pub mod rules;
pub mod session;
pub mod signing;
pub mod subscription;
pub mod trace;
