//! # gemma-hooks: Gemma 2 and Gemma 3 forward passes with named hook points
//!
//! This crate will own the project's Gemma forward pass: every intermediate activation can be
//! read or replaced at a TransformerLens-named hook point (`blocks.{L}.hook_resid_post`,
//! `blocks.{L}.attn.hook_z`, `blocks.{L}.hook_mlp_out`, …), numerically equal to Hugging Face
//! `transformers`, with weights loaded from a model directory, the hf-hub cache or GGUF.
//!
//! Not implemented yet: see the project's issue on gemma-hooks.
