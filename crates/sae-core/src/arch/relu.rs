//! The standard ReLU SAE.

use candle_core::{Tensor, Var};

use super::affine::AffineSae;
use super::{Architecture, Sae, TrainOutput, TrainableSae};
use crate::Result;

/// The standard SAE: f = ReLU(π). Trained with an L1 penalty, plain or weighted by decoder
/// row norms (Anthropic, April 2024).
#[derive(Debug, Clone)]
pub struct ReluSae {
    /// Encoder and decoder.
    pub affine: AffineSae,
}

impl ReluSae {
    /// Builds the SAE from its affine part.
    pub fn new(affine: AffineSae) -> Self {
        Self { affine }
    }
}

impl Sae for ReluSae {
    fn architecture(&self) -> Architecture {
        Architecture::Relu
    }
    super::delegate_to_affine!();
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.pre_activations(x)?.relu()?)
    }
    super::affine_parameters!();
}

impl TrainableSae for ReluSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        self.affine.vars("b_enc")
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let pre_activations = self.pre_activations(x)?;
        let latents = pre_activations.relu()?;
        self.affine.train_output(x, pre_activations, latents)
    }
    super::affine_training!();
}
