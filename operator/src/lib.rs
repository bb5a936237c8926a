//! The Airlock operator: the `Plugin` controller (fetch → validate → verify → build → apply →
//! status), image and bundle verification, the hook router, audit stream and metrics.

pub mod build;
pub mod plan;
pub mod policy;
pub mod quantity;
pub mod status;
