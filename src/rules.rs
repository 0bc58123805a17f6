//! Placeholder so the crate compiles on this branch; the real rules module is written elsewhere.

/// Throwaway stand-in for the real event rule type.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRule;
