//! The unit tests that span modules, and what tests share.

mod docs;
pub(crate) mod fixtures;
mod layout;
mod robustness;
