//! # trainer: the Gemma Scope training recipe for any SAE architecture and penalty
//!
//! This crate will hold the training loops: generic over `sae_core::TrainableSae`, its
//! sparsity penalties and an activation source; many SAEs per activation stream; schedules,
//! checkpoints with bit-identical resume, metrics and export.
//!
//! Not implemented yet: see the project's issue on the trainer.
