//! # activation-cache: activations from a model over a corpus, stored and read back shuffled
//!
//! This crate will harvest activations at any number of hook points in one model pass, store
//! them in checksummed shards with a manifest (atomic, resumable), and serve them to trainers
//! through an `ActivationSource` trait, from disk (memory-mapped, bucket-shuffled) or streamed
//! straight from the model.
//!
//! Not implemented yet: see the project's issue on activation-cache.
