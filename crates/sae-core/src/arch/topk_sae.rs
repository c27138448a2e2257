//! TopK SAE (Gao et al. 2024).

use candle_core::{Tensor, Var};

use super::affine::AffineSae;
use super::sparse_form::{SelectionRule, SparseForm};
use super::{Architecture, Sae, TrainOutput, TrainableSae};
use crate::topk::top_k_mask;
use crate::{Result, SaeError};

/// A TopK SAE: f = ReLU(π) on the `k` largest pre-activations of each token, 0 elsewhere.
/// At most `k` latents are non-zero per token (fewer when some of the k are negative).
#[derive(Debug, Clone)]
pub struct TopKSae {
    /// Encoder and decoder.
    pub affine: AffineSae,
    k: usize,
}

impl TopKSae {
    /// Builds the SAE; `k` must be between 1 and `d_sae`.
    pub fn new(affine: AffineSae, k: usize) -> Result<Self> {
        if k == 0 || k > affine.d_sae() {
            return Err(SaeError::Config(format!(
                "TopK needs 1 ≤ k ≤ d_sae = {}, got k = {k}",
                affine.d_sae()
            )));
        }
        Ok(Self { affine, k })
    }

    /// Active latents per token.
    pub fn k(&self) -> usize {
        self.k
    }

    fn latents_of(&self, pre_activations: &Tensor) -> Result<Tensor> {
        let mask = top_k_mask(pre_activations, self.k)?;
        Ok((pre_activations.relu()? * mask)?)
    }
}

impl Sae for TopKSae {
    fn architecture(&self) -> Architecture {
        Architecture::TopK { k: self.k }
    }
    super::delegate_to_affine!();
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.latents_of(&self.pre_activations(x)?)
    }
    super::affine_parameters!();
}

impl TrainableSae for TopKSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        self.affine.vars("b_enc")
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let pre_activations = self.pre_activations(x)?;
        let latents = self.latents_of(&pre_activations)?;
        self.affine.train_output(x, pre_activations, latents)
    }
    super::affine_training!();
    fn sparse_form(&self) -> Result<Option<SparseForm<'_>>> {
        Ok(Some(SparseForm {
            affine: &self.affine,
            rule: SelectionRule::TopK { k: self.k },
        }))
    }
}
