//! SAE architectures behind one small trait.
//!
//! Every architecture computes pre-activations π = (x − b_dec·[apply_b_dec_to_input])·W_enc + b_enc,
//! turns them into non-negative latents f, and reconstructs x̂ = f·W_dec + b_dec. They differ in
//! how π becomes f:
//!
//! | architecture | latents | file name (SAELens `architecture`) |
//! |---|---|---|
//! | [`JumpReluSae`] | ReLU(π)·H(π − θ), per-latent threshold θ, strict `>` | `jumprelu` |
//! | [`TopKSae`] | ReLU of the k largest π of each token | `topk` |
//! | [`BatchTopKSae`] | training: the k·batch largest ReLU(π) of the batch; inference: ReLU(π)·H(π − θ_global) | `batchtopk` |
//! | [`ReluSae`] | ReLU(π) (the standard SAE) | `standard` |
//! | [`GatedSae`] | H(π_gate)·ReLU(π_mag), with W_mag = W_enc ⊙ exp(r_mag) | `gated` |
//! | [`JumpReluTranscoder`] | JumpReLU latents of one hook decoded into another, ŷ = f·W_dec + b_dec (+ x·W_skip) | `jumprelu_transcoder`, `jumprelu_skip_transcoder` |
//!
//! Tensors are row-major with the row-vector convention of SAELens and Gemma Scope:
//! `W_enc` is `[d_in, d_sae]`, `W_dec` is `[d_sae, d_in]`, inputs are `[tokens, d_in]`.

mod affine;
mod batch_topk;
mod build;
mod gated;
mod jumprelu;
mod registry;
mod relu;
mod resample_affine;
pub(crate) mod sparse_form;
mod threshold;
mod topk_sae;
mod transcoder;

pub use affine::{AffineSae, expect_shape};
pub use batch_topk::BatchTopKSae;
pub(crate) use build::take_affine;
pub use build::{NamedTensors, ThresholdOptions, from_tensors, init};
pub use gated::GatedSae;
pub use jumprelu::JumpReluSae;
pub(crate) use registry::describe_registered as registry_names_description;
pub use registry::{SaeLoader, register_loader, registered, registered_names};
pub use relu::ReluSae;
pub use threshold::ThresholdParametrisation;
pub use topk_sae::TopKSae;
pub use transcoder::JumpReluTranscoder;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use self::sparse_form::{SparseForm, SparseStep};
use crate::resample::{ResampleRequest, Resampled};
use crate::{Result, SaeError};

/// Which architecture an SAE has, with the settings that change its forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// JumpReLU (Rajamanoharan et al. 2024b; Gemma Scope).
    JumpRelu,
    /// TopK (Gao et al. 2024): the `k` largest pre-activations of each token.
    TopK {
        /// Active latents per token.
        k: usize,
    },
    /// BatchTopK (Bussmann et al. 2024): `k · batch` latents over the batch.
    BatchTopK {
        /// Mean active latents per token.
        k: usize,
    },
    /// The standard ReLU SAE.
    Relu,
    /// Gated SAE (Rajamanoharan et al. 2024a) with the r_mag re-parametrisation.
    Gated,
    /// A JumpReLU transcoder ([`JumpReluTranscoder`]): reads one hook, predicts another.
    JumpReluTranscoder {
        /// Whether it has the affine skip connection x·W_skip (in a config, `false` when left
        /// out).
        #[serde(default)]
        skip: bool,
    },
    /// An architecture defined outside this crate: built by the registry it was registered in
    /// (`trainer::Registry`), loaded from files by the loader registered under its name
    /// ([`register_loader`]); in a config, `{"kind": "registered", "name": …}`.
    Registered {
        /// Its registered name.
        name: ArchitectureName,
    },
}

/// The name of a registered architecture: a string interned for the life of the process (one
/// small allocation per distinct name), so that [`Architecture`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchitectureName(&'static str);

impl ArchitectureName {
    /// The interned name `name`.
    pub fn new(name: &str) -> Self {
        static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let mut names = NAMES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(interned) = names.get(name) {
            return Self(interned);
        }
        let interned: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.insert(interned);
        Self(interned)
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Debug for ArchitectureName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

impl std::fmt::Display for ArchitectureName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for ArchitectureName {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ArchitectureName {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(Self::new(&name))
    }
}

impl Architecture {
    /// The short name used in messages and in SAELens' `architecture` field.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::JumpRelu => "jumprelu",
            Architecture::TopK { .. } => "topk",
            Architecture::BatchTopK { .. } => "batchtopk",
            Architecture::Relu => "standard",
            Architecture::Gated => "gated",
            Architecture::JumpReluTranscoder { skip: false } => "jumprelu_transcoder",
            Architecture::JumpReluTranscoder { skip: true } => "jumprelu_skip_transcoder",
            Architecture::Registered { name } => name.as_str(),
        }
    }
}

/// The inference face of a sparse autoencoder.
///
/// Inputs are `[tokens, d_in]` in the SAE's space (raw activations for a folded SAE, see
/// [`crate::scaling`]); latents are `[tokens, d_sae]`.
pub trait Sae: Send + Sync {
    /// The architecture and its settings.
    fn architecture(&self) -> Architecture;
    /// Input width.
    fn d_in(&self) -> usize;
    /// Number of latents (dictionary size).
    fn d_sae(&self) -> usize;
    /// Whether `b_dec` is subtracted from the input before encoding (the pre-encoder bias).
    fn apply_b_dec_to_input(&self) -> bool;
    /// Pre-activations π, `[tokens, d_sae]` (the gate pre-activations for a Gated SAE).
    fn pre_activations(&self, x: &Tensor) -> Result<Tensor>;
    /// Latents f, `[tokens, d_sae]`, non-negative.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;
    /// Reconstruction x̂ = f·W_dec + b_dec, `[tokens, d_in]`.
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// The decoder matrix `W_dec`, `[d_sae, d_in]`; row i is latent i's direction.
    fn decoder_weight(&self) -> &Tensor;
    /// Every parameter in its inference form, under the SAELens names (`W_enc`, `threshold`, …).
    fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>>;
    /// Folds an input scaling constant C and the pre-encoder bias into the weights
    /// (Gemma Scope App. A): afterwards the SAE takes raw activations x_raw = C·x, its latents are
    /// C × the latents before folding, its reconstruction is C × the reconstruction before
    /// folding, and `apply_b_dec_to_input` is false.
    fn fold_scaling(&mut self, c: f64) -> Result<()>;
    /// The inverse of [`Sae::fold_scaling`]: divides out C and, when `pre_encoder_bias` is true,
    /// moves `b_dec` back in front of the encoder.
    fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()>;
    /// [`Sae::fold_scaling`] for a dictionary trained on inputs divided by `c_in` to predict
    /// outputs divided by `c_out` (a transcoder whose target has its own scale): afterwards it
    /// maps raw inputs to raw outputs. Only a transcoder's output is apart from its input; the
    /// default refuses a `c_out` other than `c_in`.
    fn fold_scalings(&mut self, c_in: f64, c_out: f64) -> Result<()> {
        if c_in != c_out {
            return Err(SaeError::Config(format!(
                "{:?} reconstructs its own input: its output scale ({c_out}) must be its input \
                 scale ({c_in})",
                self.architecture()
            )));
        }
        self.fold_scaling(c_in)
    }

    /// Latents and reconstruction of `x` in one call.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let latents = self.encode(x)?;
        let reconstruction = self.decode(&latents)?;
        Ok((latents, reconstruction))
    }
}

/// The training-time forward pass of an SAE: everything a loss needs, with gradients attached.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// The input x (training space).
    pub input: Tensor,
    /// What the reconstruction is trained toward: the input for an SAE, the output hook's
    /// activation for a transcoder ([`crate::loss::training_loss_toward`]).
    pub target: Tensor,
    /// Pre-activations π (gate pre-activations for Gated).
    pub pre_activations: Tensor,
    /// Latents f, with each architecture's training gradients (the STE for JumpReLU).
    pub latents: Tensor,
    /// The non-negative activations magnitude penalties (L1) act on: the latents, or
    /// ReLU(π_gate) for a Gated SAE.
    pub sparsity_input: Tensor,
    /// Reconstruction x̂.
    pub reconstruction: Tensor,
}

/// The training face of an SAE: trainable variables and a differentiable forward pass.
pub trait TrainableSae: Sae {
    /// The trainable variables with their names (`W_enc`, `log_threshold`, …), in a fixed order.
    fn vars(&self) -> Vec<(&'static str, &Var)>;
    /// The differentiable forward pass used for training.
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput>;
    /// The per-latent threshold θ as a differentiable tensor, for architectures that have one.
    fn threshold(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Sets the per-latent threshold θ `[d_sae]` (θ itself, whatever the parametrisation);
    /// false, and nothing changed, for architectures without one.
    fn set_threshold(&self, _theta: &Tensor) -> Result<bool> {
        Ok(false)
    }
    /// An architecture's own auxiliary loss (Gated's frozen-decoder reconstruction), if any.
    fn auxiliary_loss(&self, _out: &TrainOutput) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The SAE's affine part and selection rule, for architectures the sparsity-aware step
    /// ([`crate::sparse`]) can train; `None` (the default) keeps them on the dense step.
    fn sparse_form(&self) -> Result<Option<SparseForm<'_>>> {
        Ok(None)
    }
    /// Restores the parameters' invariants after an optimiser step: a raw JumpReLU threshold is
    /// projected back to θ ≥ 0 (as SAELens does before each step). The default has none.
    fn project_parameters(&self) -> Result<()> {
        Ok(())
    }
    /// Updates running statistics after an optimiser step (BatchTopK's inference threshold).
    fn after_step(&mut self, _out: &TrainOutput) -> Result<()> {
        Ok(())
    }
    /// [`TrainableSae::after_step`] for a step taken by [`crate::sparse::sparse_step`].
    fn after_sparse_step(&mut self, _step: &SparseStep) -> Result<()> {
        Ok(())
    }
    /// The decoder variable (for the unit-norm constraint).
    fn decoder_var(&self) -> &Var;

    /// Gives dead latents new parameters from badly reconstructed inputs
    /// ([`crate::resample`]). The default: the architecture does not support it.
    fn resample_latents(&self, _request: &ResampleRequest<'_>) -> Result<Resampled> {
        Err(SaeError::Config(format!(
            "{:?} SAEs do not support resampling dead latents",
            self.architecture()
        )))
    }

    /// Everything that changes during training, by name, for checkpoints: the variables (in
    /// their trained parametrisation, so a restore is bit-exact) plus running statistics.
    fn training_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vars_state(&self.vars()))
    }

    /// Restores what [`TrainableSae::training_state`] returned (same architecture and shapes).
    fn load_training_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        load_vars_state(&self.vars(), state)
    }
}

/// The variables' current values by name.
pub fn vars_state(vars: &[(&'static str, &Var)]) -> Vec<(String, Tensor)> {
    vars.iter()
        .map(|(name, var)| (name.to_string(), var.as_tensor().clone()))
        .collect()
}

/// Sets every variable from `state` (by name, shapes checked).
pub fn load_vars_state(
    vars: &[(&'static str, &Var)],
    state: &HashMap<String, Tensor>,
) -> Result<()> {
    for (name, var) in vars {
        let value = state
            .get(*name)
            .ok_or_else(|| crate::SaeError::Config(format!("training state has no `{name}`")))?;
        expect_shape(value, name, var.dims())?;
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Shape, dtype and device of a new SAE.
#[derive(Debug, Clone)]
pub struct SaeShape {
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Parameter dtype (f32 or bf16 are the tested ones).
    pub dtype: DType,
    /// Where the parameters live.
    pub device: Device,
}

/// The [`Sae`] methods every architecture answers from its `affine` field.
macro_rules! delegate_to_affine {
    () => {
        fn d_in(&self) -> usize {
            self.affine.d_in()
        }
        fn d_sae(&self) -> usize {
            self.affine.d_sae()
        }
        fn apply_b_dec_to_input(&self) -> bool {
            self.affine.apply_b_dec_to_input
        }
        fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
            self.affine.pre_activations(x)
        }
        fn decode(&self, latents: &Tensor) -> Result<Tensor> {
            self.affine.decode(latents)
        }
        fn decoder_weight(&self) -> &Tensor {
            self.affine.w_dec.as_tensor()
        }
    };
}
pub(crate) use delegate_to_affine;

/// The parameter-related [`Sae`] methods of architectures whose only parameters are the
/// affine ones (ReLU, TopK).
macro_rules! affine_parameters {
    () => {
        fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
            Ok(self.affine.tensors("b_enc"))
        }
        fn fold_scaling(&mut self, c: f64) -> Result<()> {
            self.affine.fold_scaling(c)
        }
        fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
            self.affine.unfold_scaling(c, pre_encoder_bias)
        }
    };
}
pub(crate) use affine_parameters;

/// The training hooks of an SAE whose trainable decoder and resampling are its affine part's
/// (ReLU, TopK, BatchTopK).
macro_rules! affine_training {
    () => {
        fn decoder_var(&self) -> &Var {
            &self.affine.w_dec
        }
        fn resample_latents(
            &self,
            request: &crate::resample::ResampleRequest<'_>,
        ) -> Result<crate::resample::Resampled> {
            self.affine.resample_only(request)
        }
    };
}
pub(crate) use affine_training;

impl TrainOutput {
    /// The output of an architecture whose L1 penalty acts on its latents (all but Gated).
    pub fn new(
        input: &Tensor,
        pre_activations: Tensor,
        latents: Tensor,
        reconstruction: Tensor,
    ) -> Self {
        Self {
            input: input.clone(),
            target: input.clone(),
            pre_activations,
            sparsity_input: latents.clone(),
            latents,
            reconstruction,
        }
    }
}
