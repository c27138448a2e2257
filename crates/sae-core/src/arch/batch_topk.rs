//! BatchTopK SAE (Bussmann et al. 2024).

use std::sync::RwLock;

use candle_core::{DType, Tensor, Var};

use super::affine::AffineSae;
use super::sparse_form::{SelectionRule, SparseForm, SparseStep};
use super::{Architecture, Sae, TrainOutput, TrainableSae};
use crate::topk::top_k_mask_flat;
use crate::{Result, SaeError};

/// Weight of the newest batch in the running estimate of the inference threshold.
pub const THRESHOLD_EMA_RATE: f64 = 0.01;

/// A BatchTopK SAE.
///
/// In training, the `k · batch` largest ReLU(π) of the whole batch are kept, so tokens share a
/// budget of active latents. For inference, where batches are not comparable, a single global
/// threshold θ replaces the batch selection: f = π·H(π − θ). θ is estimated during training as
/// an exponential moving average ([`THRESHOLD_EMA_RATE`]) of the smallest latent kept in each
/// batch, updated by [`TrainableSae::after_step`]; the first batch sets it directly.
#[derive(Debug)]
pub struct BatchTopKSae {
    /// Encoder and decoder.
    pub affine: AffineSae,
    k: usize,
    /// The global inference threshold; `None` until a training batch has been seen.
    threshold: RwLock<Option<f64>>,
}

impl BatchTopKSae {
    /// Builds the SAE; `k` must be between 1 and `d_sae`. `threshold` is the inference threshold
    /// (None for a new SAE: [`Sae::encode`] then fails until training has estimated it).
    pub fn new(affine: AffineSae, k: usize, threshold: Option<f64>) -> Result<Self> {
        if k == 0 || k > affine.d_sae() {
            return Err(SaeError::Config(format!(
                "BatchTopK needs 1 ≤ k ≤ d_sae = {}, got k = {k}",
                affine.d_sae()
            )));
        }
        Ok(Self {
            affine,
            k,
            threshold: RwLock::new(threshold),
        })
    }

    /// Mean active latents per token in training.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The global inference threshold, once estimated.
    pub fn global_threshold(&self) -> Option<f64> {
        *self.threshold.read().expect("threshold lock poisoned")
    }

    fn set_threshold(&self, value: f64) {
        *self.threshold.write().expect("threshold lock poisoned") = Some(value);
    }

    /// Moves the inference threshold towards the smallest latent kept in a training batch
    /// (sets it from the first batch); `None` when the batch kept nothing.
    fn record_smallest_kept(&self, smallest: Option<f32>) {
        let Some(smallest) = smallest.map(f64::from) else {
            return;
        };
        let updated = match self.global_threshold() {
            Some(theta) => (1.0 - THRESHOLD_EMA_RATE) * theta + THRESHOLD_EMA_RATE * smallest,
            None => smallest,
        };
        self.set_threshold(updated);
    }

    fn threshold_or_error(&self) -> Result<f64> {
        self.global_threshold().ok_or_else(|| {
            SaeError::Config(
                "this BatchTopK SAE has no inference threshold yet: train it for at least one step"
                    .into(),
            )
        })
    }

    /// The threshold as a `[d_sae]` tensor, as SAELens stores it.
    fn threshold_tensor(&self) -> Result<Tensor> {
        let theta = self.threshold_or_error()?;
        let w = self.affine.w_enc.as_tensor();
        Ok(Tensor::full(theta as f32, self.d_sae(), w.device())?.to_dtype(w.dtype())?)
    }
}

impl Clone for BatchTopKSae {
    fn clone(&self) -> Self {
        Self {
            affine: self.affine.clone(),
            k: self.k,
            threshold: RwLock::new(self.global_threshold()),
        }
    }
}

impl Sae for BatchTopKSae {
    fn architecture(&self) -> Architecture {
        Architecture::BatchTopK { k: self.k }
    }
    super::delegate_to_affine!();
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(x)?;
        // θ⁺ = max(θ, 0), as for JumpReLU: latents stay non-negative for any stored θ.
        let theta = self.threshold_or_error()?.max(0.0);
        let gate = pre.gt(theta)?.to_dtype(pre.dtype())?;
        Ok((pre * gate)?)
    }
    fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let mut tensors = self.affine.tensors("b_enc");
        tensors.push(("threshold", self.threshold_tensor()?));
        Ok(tensors)
    }
    fn fold_scaling(&mut self, c: f64) -> Result<()> {
        self.affine.fold_scaling(c)?;
        if let Some(theta) = self.global_threshold() {
            self.set_threshold(theta * c);
        }
        Ok(())
    }
    fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
        self.affine.unfold_scaling(c, pre_encoder_bias)?;
        if let Some(theta) = self.global_threshold() {
            self.set_threshold(theta / c);
        }
        Ok(())
    }
}

impl TrainableSae for BatchTopKSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        self.affine.vars("b_enc")
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let pre_activations = self.pre_activations(x)?;
        let tokens = pre_activations.dims()[0];
        let positive = pre_activations.relu()?;
        let mask = top_k_mask_flat(&positive, self.k * tokens)?;
        let latents = (positive * mask)?;
        self.affine.train_output(x, pre_activations, latents)
    }
    fn after_step(&mut self, out: &TrainOutput) -> Result<()> {
        // The smallest kept (positive) latent of the batch.
        let latents = out.latents.detach().to_dtype(DType::F32)?;
        let big = latents.max_all()?.to_scalar::<f32>()? + 1.0;
        let kept = latents.gt(0.0)?;
        let candidates =
            kept.where_cond(&latents, &latents.ones_like()?.affine(0.0, big as f64)?)?;
        let smallest = candidates.min_all()?.to_scalar::<f32>()?;
        // Nothing was kept in this batch when every candidate is the placeholder.
        self.record_smallest_kept((smallest < big).then_some(smallest));
        Ok(())
    }
    fn after_sparse_step(&mut self, step: &SparseStep) -> Result<()> {
        self.record_smallest_kept(step.smallest_active.filter(|&v| v > 0.0));
        Ok(())
    }
    fn sparse_form(&self) -> Result<Option<SparseForm<'_>>> {
        Ok(Some(SparseForm {
            affine: &self.affine,
            rule: SelectionRule::BatchTopK { k: self.k },
        }))
    }
    super::affine_training!();
    fn training_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut state = super::vars_state(&self.vars());
        if let Some(theta) = self.global_threshold() {
            let device = self.affine.w_enc.device();
            state.push(("global_threshold".into(), Tensor::new(&[theta], device)?));
        }
        Ok(state)
    }
    fn load_training_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        super::load_vars_state(&self.vars(), state)?;
        match state.get("global_threshold") {
            Some(theta) => self.set_threshold(theta.to_vec1::<f64>()?[0]),
            None => *self.threshold.write().expect("threshold lock poisoned") = None,
        }
        Ok(())
    }
}
