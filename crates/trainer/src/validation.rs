//! Every setting of a training config checked against its documented range when the config is
//! read, before any data is touched: a sweep's `plan` refuses what its training task would
//! refuse, and nothing non-finite, negative or unallocatable ever reaches a run.
//!
//! | setting | valid range |
//! |---|---|
//! | `name` | a plain name (`file_io::check_name`): the SAE's folder inside the run folder |
//! | `hook`, `hook_out` | plain names (the source must also provide them) |
//! | `d_sae` | 1 ..= [`MAX_D_SAE`] |
//! | `top_k` / `batch_top_k` `k` | 1 ..= `d_sae` |
//! | `lr`, `adam_eps`, `bandwidth`, `threshold_init`, `decoder_init_norm`, `grad_clip_norm`, `exclude_norm_above` | finite and > 0 |
//! | `adam_beta1`, `adam_beta2` | 0 ≤ β < 1 |
//! | `lr_warmup_start`, `lr_decay_fraction` | 0 ≤ x ≤ 1 |
//! | penalty `coefficient` | finite and ≥ 0 |
//! | `k_aux` (AuxK) | ≥ 1 |
//! | `target_l0` (the SAE's) | finite, > 0 and ≤ `d_sae`; needs a warmed-up penalty for the controller to drive; not for TopK / BatchTopK (their L0 is k); equal to a quadratic L0 penalty's own target |
//! | `l0_controller` gains | as [`crate::L0ControllerGains::check`] documents; only with `target_l0` |
//! | `homeostasis` | as [`crate::HomeostasisConfig::check`] documents; JumpReLU SAEs and transcoders only (thresholds) |
//! | quadratic `target_l0`, Matryoshka `widths`, pre-activation and resampling settings | as their own types document |
//! | `steps`, `batch_size`, `checkpoint_every`, `metrics_every`, `dead_window_tokens`, `scaling_batches` | ≥ 1 (`batch_size` ≤ [`MAX_BATCH_SIZE`], `scaling_batches` ≤ [`MAX_SCALING_BATCHES`]) |
//!
//! NaN and infinities are refused as such: a TOML file's `nan` or `inf` is named with its key
//! when the file is read ([`crate::TrainConfig::from_file`]), never turned into a default.

use sae_core::{Architecture, QuadraticL0};

use crate::config::{PenaltyConfig, SaeConfig, TrainConfig};
use crate::{Result, TrainError};

/// The widest dictionary a config may ask for: 2²⁴ latents (Gemma Scope's widest is 2²⁰).
pub const MAX_D_SAE: usize = 1 << 24;

/// The largest batch a config may ask for: 2²⁰ activations per step.
pub const MAX_BATCH_SIZE: usize = 1 << 20;

/// The most batches the estimate of the scaling constant C may read (the default is 16).
pub const MAX_SCALING_BATCHES: usize = 4096;

impl SaeConfig {
    /// Checks every setting against the range the [module documentation](self) gives, without
    /// the data (the hooks' presence and widths are checked when training starts). The error
    /// names the SAE and the key.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |problem: String| TrainError::Invalid(format!("SAE `{}`: {problem}", self.name));
        file_io::check_name(&self.name).map_err(|e| invalid(format!("name: {e}")))?;
        for (key, hook) in [
            ("hook", Some(&self.hook)),
            ("hook_out", self.hook_out.as_ref()),
        ] {
            if let Some(hook) = hook {
                file_io::check_name(hook).map_err(|e| invalid(format!("{key}: {e}")))?;
            }
        }
        if !(1..=MAX_D_SAE).contains(&self.d_sae) {
            return Err(invalid(format!(
                "d_sae must be between 1 and {MAX_D_SAE}, not {}",
                self.d_sae
            )));
        }
        if let Architecture::TopK { k } | Architecture::BatchTopK { k } = self.architecture
            && !(1..=self.d_sae).contains(&k)
        {
            return Err(invalid(format!(
                "k must be between 1 and d_sae ({}), not {k}",
                self.d_sae
            )));
        }
        let positive = [
            ("lr", self.lr),
            ("adam_eps", self.adam_eps),
            ("bandwidth", self.bandwidth),
            ("threshold_init", self.threshold_init),
            ("decoder_init_norm", self.decoder_init_norm),
            ("grad_clip_norm", self.grad_clip_norm),
            ("exclude_norm_above", self.exclude_norm_above),
        ];
        for (key, value) in positive {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(invalid(format!(
                    "{key} must be a finite number > 0, not {value}"
                )));
            }
        }
        for (key, value) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if let Some(value) = value.filter(|v| !(0.0..1.0).contains(v)) {
                return Err(invalid(format!("{key} must be in [0, 1), not {value}")));
            }
        }
        for (key, value) in [
            ("lr_warmup_start", self.lr_warmup_start),
            ("lr_decay_fraction", self.lr_decay_fraction),
        ] {
            if let Some(value) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(invalid(format!("{key} must be in [0, 1], not {value}")));
            }
        }
        for (index, penalty) in self.penalties.iter().flatten().enumerate() {
            check_penalty(penalty, self.d_sae)
                .map_err(|problem| invalid(format!("penalties.{index}: {problem}")))?;
        }
        check_combination(self).map_err(|problem| invalid(problem.into()))?;
        check_target_l0(self).map_err(invalid)?;
        if let Some(homeostasis) = &self.homeostasis {
            homeostasis.check().map_err(invalid)?;
            if !matches!(
                self.architecture,
                Architecture::JumpRelu | Architecture::JumpReluTranscoder { .. }
            ) {
                return Err(invalid(
                    "homeostasis nudges thresholds: it is for JumpReLU SAEs and transcoders".into(),
                ));
            }
        }
        if let Some(resample) = &self.resample {
            resample.validate(&self.name)?;
        }
        Ok(())
    }
}

/// One penalty's settings: a finite coefficient ≥ 0 and its own parameters.
fn check_penalty(penalty: &PenaltyConfig, d_sae: usize) -> std::result::Result<(), String> {
    let coefficient = penalty.coefficient();
    if !(coefficient.is_finite() && coefficient >= 0.0) {
        return Err(format!(
            "the {} penalty's coefficient must be a finite number ≥ 0, not {coefficient}",
            penalty_name(penalty)
        ));
    }
    match penalty {
        PenaltyConfig::Matryoshka { widths, .. } => {
            sae_core::Matryoshka::check(widths, d_sae).map_err(|e| e.to_string())
        }
        PenaltyConfig::QuadraticL0 { target_l0, .. } => {
            QuadraticL0::check_target(*target_l0).map_err(|e| e.to_string())
        }
        PenaltyConfig::Auxk { k_aux: 0, .. } => Err("k_aux must be at least 1".into()),
        PenaltyConfig::PreActivation {
            dead_after_tokens: 0,
            ..
        } => Err("the pre-activation penalty needs dead_after_tokens > 0".into()),
        _ => Ok(()),
    }
}

/// A penalty's name in messages.
fn penalty_name(penalty: &PenaltyConfig) -> &str {
    match penalty {
        PenaltyConfig::L0 { .. } => "L0",
        PenaltyConfig::QuadraticL0 { .. } => "quadratic L0",
        PenaltyConfig::L1 { .. } => "L1",
        PenaltyConfig::L1DecoderNorm { .. } => "decoder-norm L1",
        PenaltyConfig::Auxk { .. } => "AuxK",
        PenaltyConfig::PreActivation { .. } => "pre-activation",
        PenaltyConfig::Matryoshka { .. } => "Matryoshka",
        PenaltyConfig::Registered { name, .. } => name,
    }
}

/// Settings that are valid alone but not together.
fn check_combination(sae: &SaeConfig) -> std::result::Result<(), &'static str> {
    let transcoder = matches!(sae.architecture, Architecture::JumpReluTranscoder { .. });
    match (&sae.hook_out, transcoder) {
        (None, true) => Err("a transcoder needs hook_out, the hook it predicts"),
        (Some(_), false) => Err("hook_out is for transcoders (architecture jump_relu_transcoder)"),
        (Some(_), true) if sae.exclude_norm_above.is_some() => {
            Err("exclude_norm_above is not supported for transcoders")
        }
        (Some(_), true) if sae.resample.is_some() => {
            Err("resampling dead latents is not supported for transcoders")
        }
        _ if sae.resample.is_some() && sae.architecture == Architecture::Gated => {
            Err("resampling dead latents is not supported for Gated SAEs \
             (JumpReLU, ReLU, TopK and BatchTopK support it)")
        }
        _ => Ok(()),
    }
}

/// The target-L0 settings: a target in (0, d_sae], a penalty the controller can drive, and the
/// controller's gains only with a target.
fn check_target_l0(sae: &SaeConfig) -> std::result::Result<(), String> {
    let Some(target) = sae.target_l0 else {
        return match sae.l0_controller {
            Some(_) => Err("l0_controller is only used with target_l0".into()),
            None => Ok(()),
        };
    };
    if !(target.is_finite() && target > 0.0 && target <= sae.d_sae as f64) {
        return Err(format!(
            "target_l0 must be a number > 0 and at most d_sae ({}), not {target}",
            sae.d_sae
        ));
    }
    if let Architecture::TopK { .. } | Architecture::BatchTopK { .. } = sae.architecture {
        return Err(
            "target_l0 is for SAEs with a sparsity penalty: a TopK or BatchTopK SAE's L0 is its k"
                .into(),
        );
    }
    if let Some(gains) = &sae.l0_controller {
        gains.check()?;
    }
    let Some(penalties) = &sae.penalties else {
        // The architecture's recipe: every built-in one but TopK has a warmed-up penalty.
        return Ok(());
    };
    for penalty in penalties {
        if let PenaltyConfig::QuadraticL0 { target_l0, .. } = penalty
            && *target_l0 != target
        {
            return Err(format!(
                "target_l0 = {target}, but the quadratic L0 penalty pulls toward {target_l0}: \
                 give both the same target"
            ));
        }
    }
    if !penalties.iter().any(PenaltyConfig::warms_up) {
        return Err(
            "target_l0 needs a sparsity penalty whose λ the controller drives (L0, \
                    quadratic L0, L1, decoder-norm L1, or a registered penalty that warms up)"
                .into(),
        );
    }
    Ok(())
}

impl TrainConfig {
    /// Checks the run's settings and every SAE's ([`SaeConfig::validate`]) against the ranges
    /// the [module documentation](self) gives, and that the SAEs are there and uniquely named.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("steps", self.steps),
            ("checkpoint_every", self.checkpoint_every),
            ("metrics_every", self.metrics_every),
            ("dead_window_tokens", self.dead_window_tokens),
            ("scaling_batches", self.scaling_batches as u64),
        ] {
            if value == 0 {
                return Err(TrainError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.scaling_batches > MAX_SCALING_BATCHES {
            return Err(TrainError::Invalid(format!(
                "scaling_batches must be at most {MAX_SCALING_BATCHES}, not {}",
                self.scaling_batches
            )));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(TrainError::Invalid(format!(
                "batch_size must be between 1 and {MAX_BATCH_SIZE}, not {}",
                self.batch_size
            )));
        }
        if self.saes.is_empty() && self.clts.is_empty() {
            return Err(TrainError::Invalid(
                "the training config has no SAEs and no CLTs".into(),
            ));
        }
        for sae in &self.saes {
            sae.validate()?;
        }
        for clt in &self.clts {
            clt.validate()?;
        }
        // Names of folders in the run folder and of checkpoint entries (a CLT's are per layer).
        let mut names: Vec<String> = self.saes.iter().map(|s| s.name.clone()).collect();
        for clt in &self.clts {
            names.push(clt.name.clone());
            names.extend((0..clt.n_layers()).map(|i| clt.layer_name(i)));
        }
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(TrainError::Invalid(format!(
                "SAE names must be unique: `{}` is given twice",
                pair[0]
            )));
        }
        Ok(())
    }
}

/// The memory, in bytes, that training the SAEs of `config` on the CPU holds at its peak,
/// roughly: per SAE of `d_sae` latents on inputs of width `d_in` (`widths[i]`, the width of SAE
/// i's hook), its parameters (`2·d_in·d_sae + 3·d_sae + 2·d_in` values) five times over (the
/// parameters, their gradients, Adam's two moments and the checkpoint's copy), and per batch
/// row three `d_sae`-wide rows (pre-activations, activations, their gradient) and four
/// `d_in`-wide ones (input, target, reconstruction, its gradient), every value a 4-byte f32.
/// A CLT of L layers on `d`-wide hooks (`clt_widths[i]` for CLT i) holds its parameters
/// ([`sae_core::CltShape::parameters`]) five times over and per batch row L·(3·W + 4·d) values
/// and twice the (L·(L + 1)/2)·d values its decoders write. For refusing what cannot fit, not
/// for sizing a machine exactly.
pub fn training_memory(config: &TrainConfig, widths: &[usize], clt_widths: &[usize]) -> u64 {
    // Widths are at most 2⁶⁴ each, so every product of two fits in u128; sums saturate.
    let n = |value: usize| value as u128;
    let batch = n(config.batch_size);
    let total = config
        .saes
        .iter()
        .zip(widths)
        .map(|(sae, &d_in)| {
            let (d_in, d_sae) = (n(d_in), n(sae.d_sae));
            let parameters = (d_in * d_sae)
                .saturating_mul(2)
                .saturating_add(3 * d_sae + 2 * d_in);
            let rows = batch.saturating_mul(3 * d_sae + 4 * d_in);
            parameters
                .saturating_mul(5)
                .saturating_add(rows)
                .saturating_mul(4)
        })
        .fold(0u128, u128::saturating_add);
    let clts = config
        .clts
        .iter()
        .zip(clt_widths)
        .map(|(clt, &d)| {
            let layers = n(clt.n_layers());
            let (d, w) = (n(d), n(clt.d_sae));
            let parameters = u128::from(clt.parameters(d as usize));
            let written = layers.saturating_mul(layers + 1) / 2 * d * 2;
            let rows = batch.saturating_mul(layers.saturating_mul(3 * w + 4 * d) + written);
            parameters
                .saturating_mul(5)
                .saturating_add(rows)
                .saturating_mul(4)
        })
        .fold(0u128, u128::saturating_add);
    u64::try_from(total.saturating_add(clts)).unwrap_or(u64::MAX)
}

/// Refuses training the SAEs and CLTs of `config` (`widths[i]`: SAE i's input width,
/// `clt_widths[i]` CLT i's hook width) on the CPU when
/// [`training_memory`] exceeds this machine's available memory
/// (`activation_cache::limits::available_memory`), with both figures; where the available
/// memory is unknown, nothing is refused.
pub fn check_training_memory(
    config: &TrainConfig,
    widths: &[usize],
    clt_widths: &[usize],
) -> Result<()> {
    let needed = training_memory(config, widths, clt_widths);
    match activation_cache::limits::available_memory() {
        Some(available) if needed > available => {
            let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
            Err(TrainError::Invalid(format!(
                "training these SAEs needs about {:.1} GiB of memory (parameters, gradients, \
                 Adam's moments and a batch of {} rows; see trainer::validation::training_memory) \
                 and this machine has {:.1} GiB available: lower d_sae or batch_size, or train \
                 fewer SAEs at once",
                gib(needed),
                config.batch_size,
                gib(available)
            )))
        }
        _ => Ok(()),
    }
}
