//! # ground-truth: synthetic activations with known features, and the metrics that score a dictionary against them
//!
//! SynthSAEBench (Chanin & Garriga-Alonso 2026) gives a sparse dictionary learner data whose
//! generating features are known: a [`SyntheticModel`] of feature vectors, firing
//! probabilities, a hierarchy and correlations, sampled by [`SyntheticSource`] as an
//! `activation_cache::ActivationSource` (the trainer reads it like a store). [`metrics`] then
//! scores a trained dictionary against the true features: MCC by optimal one-to-one
//! matching, per-latent precision / recall / F1, uniqueness, variance explained, L0, dead
//! latents and shrinkage.

pub mod config;
mod error;
pub mod evaluate;
pub mod metrics;
pub mod model;
pub mod saelens;
pub mod sample;
pub mod source;

pub use config::SyntheticConfig;
pub use error::{GroundTruthError, Result};
pub use model::{CacheStatus, Hierarchy, SyntheticModel};
pub use sample::{SampleBatch, Sampler, SparseFeatures};
pub use source::SyntheticSource;
