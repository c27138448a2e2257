//! # analysis: evaluation and interpretation of SAEs
//!
//! This crate will judge SAEs as Gemma Scope did (L0, FVU, delta LM loss with the SAE spliced
//! in, feature densities) and explain their latents (top activating contexts, logit effects,
//! automatic and manual labels).
//!
//! Not implemented yet: see the project's issue on analysis.
