//! What a harvest's settings must respect before any work starts: the context length a model
//! takes, and the memory a harvest needs.
//!
//! **Context length.** A context is BOS and at least one token, so at least
//! [`MIN_CONTEXT_LENGTH`] (2) positions, and at most the positions the model was trained on
//! ([`max_context_length`]: the configuration's `max_position_embeddings`).
//!
//! **Memory.** [`harvest_memory`] estimates, roughly, the bytes a harvest holds at its peak
//! beyond the model's weights (already loaded when it is called, so already out of the
//! available memory). With `B` contexts per forward pass, `T` positions per context, `S`
//! contexts per shard, `W` the sum of the stored hooks' widths, `e` the stored element size,
//! and the model's `d` (hidden size), `m` (MLP width), `H`/`K` (query/key-value heads) and `h`
//! (head width), all activations counted as 4-byte f32:
//!
//! - the shard being assembled: `S·(T−1)·(W·e + 32)` (its rows, token metadata and the
//!   metadata's byte copy when written);
//! - the hooks' activations of one pass: `2·B·T·W·4` (each hook's f32 tensor and its copy into
//!   rows);
//! - the forward pass itself (one block's activations are alive at a time):
//!   `4·(6·B·T·d + 3·B·T·m + 2·B·T·h·(H + 2K) + 2·B·H·T·h + 3·B·H·T² + 2·T²)` — the residual
//!   stream and its norms, the MLP's gate, up and product, queries, keys and values (and keys
//!   and values repeated per query head), the attention scores, masked scores and
//!   probabilities, and the two attention masks. On a GPU this term lives in device memory and
//!   is not counted against the host's.
//!
//! The attention term grows with `T²`: Gemma 3 270M at contexts of 32,768 and two per pass
//! needs about 100 GiB for the scores alone. The estimate leaves out the corpus and its
//! contexts (the spread sample tokenises the whole corpus) and allocator overheads; it is for
//! refusing what cannot fit ([`check_harvest_memory`]), not for sizing a machine exactly.

use gemma_hooks::{GemmaConfig, HookedModel};

use crate::store::StoreSpec;
use crate::{CacheError, Result};

pub use crate::contexts::MIN_CONTEXT_LENGTH;

/// The most positions a model of `config` takes: its `max_position_embeddings` (read from the
/// model's configuration, or the published figure of its family and size where the
/// configuration does not say: `gemma_hooks::config::published_max_positions`).
pub fn max_context_length(config: &GemmaConfig) -> usize {
    config.max_position_embeddings
}

/// Checks that `context_length` is at least [`MIN_CONTEXT_LENGTH`] and at most
/// [`max_context_length`] of `config`; the error names `setting` (how the caller's user set
/// it: `--context`, `contexts.context_length`) and the valid range.
pub fn check_context_length(
    config: &GemmaConfig,
    context_length: usize,
    setting: &str,
) -> Result<()> {
    let max = max_context_length(config);
    if (MIN_CONTEXT_LENGTH..=max).contains(&context_length) {
        return Ok(());
    }
    Err(CacheError::Setting {
        setting: setting.into(),
        value: context_length.to_string(),
        detail: format!(
            "a context length must be between {MIN_CONTEXT_LENGTH} (BOS and one token) and {max} (the positions this {:?} model takes), inclusive",
            config.family
        ),
    })
}

/// A harvest's memory at its peak, estimated term by term (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The shard being assembled.
    pub shard: u64,
    /// The hooks' activations of one forward pass, as tensors and as rows.
    pub hooks: u64,
    /// The forward pass's own activations (0 when it runs on a GPU).
    pub forward: u64,
}

impl MemoryEstimate {
    /// All the terms, in bytes (saturating).
    pub fn total(&self) -> u64 {
        self.shard
            .saturating_add(self.hooks)
            .saturating_add(self.forward)
    }
}

/// Estimates the memory a harvest of `spec` with a model of `config` holds at its peak, beyond
/// the model's weights; `forward_on_host` counts the forward pass's activations too (the model
/// runs on the CPU). The [module docs](self) give the formula.
pub fn harvest_memory(
    config: &GemmaConfig,
    spec: &StoreSpec,
    forward_on_host: bool,
) -> MemoryEstimate {
    // Products and sums saturate: absurd settings give u64::MAX, never a wrapped figure.
    let n = |value: usize| value as u128;
    let product = |factors: &[u128]| factors.iter().fold(1u128, |p, f| p.saturating_mul(*f));
    let sum = |terms: &[u128]| terms.iter().fold(0u128, |s, t| s.saturating_add(*t));
    let (b, t, s) = (
        n(spec.batch_contexts),
        n(spec.contexts.context_length),
        n(spec.contexts_per_shard),
    );
    let w = sum(&spec
        .hooks
        .iter()
        .map(|hook| n(hook.width))
        .collect::<Vec<_>>());
    let element = n(spec.dtype.size());
    let (d, m) = (n(config.hidden_size), n(config.intermediate_size));
    let (heads, kv, head) = (
        n(config.num_heads),
        n(config.num_kv_heads),
        n(config.head_dim),
    );
    let row = product(&[w, element]).saturating_add(32);
    let shard = product(&[s, t.saturating_sub(1), row]);
    let hooks = product(&[2, b, t, w, 4]);
    let forward = if forward_on_host {
        let qkv = heads.saturating_add(product(&[2, kv]));
        product(&[
            4,
            sum(&[
                product(&[6, b, t, d]),
                product(&[3, b, t, m]),
                product(&[2, b, t, head, qkv]),
                product(&[2, b, heads, t, head]),
                product(&[3, b, heads, t, t]),
                product(&[2, t, t]),
            ]),
        ])
    } else {
        0
    };
    let bytes = |value: u128| u64::try_from(value).unwrap_or(u64::MAX);
    MemoryEstimate {
        shard: bytes(shard),
        hooks: bytes(hooks),
        forward: bytes(forward),
    }
}

/// The memory this machine has available for new work, in bytes: `MemAvailable` of
/// `/proc/meminfo`; `None` where there is no such file (not Linux) or it cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line["MemAvailable:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

/// Refuses `estimate` when it exceeds `available` bytes, with both figures and the terms.
pub fn check_memory_fits(estimate: &MemoryEstimate, available: u64) -> Result<()> {
    let needed = estimate.total();
    if needed <= available {
        return Ok(());
    }
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    Err(CacheError::Memory {
        needed,
        available,
        detail: format!(
            "{:.0} MiB for the shard being assembled, {:.0} MiB for the hooks' activations of one forward pass, {:.0} MiB for the forward pass itself",
            mib(estimate.shard),
            mib(estimate.hooks),
            mib(estimate.forward)
        ),
    })
}

/// Refuses a harvest of `spec` through `model` that cannot fit in this machine's available
/// memory ([`harvest_memory`] against [`available_memory`]; the forward pass counts when the
/// model is on the CPU). Returns the estimate; where the available memory is unknown, nothing
/// is refused.
pub fn check_harvest_memory(model: &dyn HookedModel, spec: &StoreSpec) -> Result<MemoryEstimate> {
    let estimate = harvest_memory(model.config(), spec, model.device().is_cpu());
    if let Some(available) = available_memory() {
        check_memory_fits(&estimate, available)?;
    }
    Ok(estimate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       16314000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
    }
}
