//! The unit tests that span modules, and what tests share.

pub(crate) mod fixtures;
mod layout;
mod robustness;
