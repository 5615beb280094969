//! harden: audit and adversarially harden ONNX classifiers, without the training framework.
//!
//! See ARCHITECTURE.md for the map of the code.

pub mod attack;
pub mod audit;
pub mod audit_log;
pub mod autodiff;
pub mod classifier;
pub mod cli;
pub mod data;
pub mod falsify;
pub mod files;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod npz;
pub mod ops;
pub mod oracle;
pub mod report;
pub mod rng;
pub mod robust;
pub mod runtime;
pub mod sanity;
pub mod shard;
pub mod spec;
#[cfg(test)]
mod testutil;
pub mod train;
