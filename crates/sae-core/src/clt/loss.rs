//! A cross-layer transcoder's training loss: every layer's reconstruction error summed, plus
//! an L0 penalty per source layer.
//!
//! Normalisation: the trainer divides each layer's input and target by that hook's own
//! scaling constant (mean squared norm d_model over the data, as Gemma Scope normalises every
//! SAE's input), so every layer's error is measured in units of its own activations' size and
//! the sum weighs the 18 layers of a Gemma 3 270M alike, however different their MLP output
//! norms are. The summed loss is then the sum of what the per-layer transcoders of the same
//! layers minimise one by one, which makes the two directly comparable.
//!
//! Sparsity: one penalty per source layer, with its own coefficient (so a target-L0 controller
//! can hold every layer at its own L0); a linear L0 with equal coefficients is the same as a
//! penalty on the total L0 across layers.

use candle_core::Tensor;

use super::Clt;
use crate::loss::squared_error;
use crate::penalty::{QuadraticL0, l0_counts};
use crate::ste::{self, SteConfig};
use crate::{Result, SaeError};

/// A CLT's training forward pass.
#[derive(Debug, Clone)]
pub struct CltTrainOutput {
    /// Each source layer's pre-activations `[tokens, W]`.
    pub pre_activations: Vec<Tensor>,
    /// Each source layer's latents, with the JumpReLU straight-through gradients.
    pub latents: Vec<Tensor>,
    /// Each output layer's prediction `[tokens, d]`.
    pub outputs: Vec<Tensor>,
}

/// The per-layer L0 penalty of a CLT.
#[derive(Debug, Clone, PartialEq)]
pub enum CltPenalty {
    /// The count of active latents of each layer (the JumpReLU paper's L0, straight-through).
    L0 {
        /// λ of each source layer.
        coefficients: Vec<f64>,
    },
    /// Gemma Scope 2's quadratic L0 toward `target` per token and layer ([`QuadraticL0`]).
    QuadraticL0 {
        /// The target L0 of each layer.
        target: f64,
        /// λ of each source layer.
        coefficients: Vec<f64>,
    },
}

impl CltPenalty {
    /// λ of each source layer.
    pub fn coefficients(&self) -> &[f64] {
        match self {
            CltPenalty::L0 { coefficients } | CltPenalty::QuadraticL0 { coefficients, .. } => {
                coefficients
            }
        }
    }
}

/// The terms of a CLT's loss; every tensor a scalar in f32.
#[derive(Debug, Clone)]
pub struct CltLossTerms {
    /// The loss to differentiate: Σ reconstruction + Σ λ_i·penalty_i.
    pub total: Tensor,
    /// Each output layer's squared error (Σ over d, mean over tokens).
    pub reconstruction: Vec<Tensor>,
    /// Each source layer's unscaled penalty term.
    pub penalties: Vec<Tensor>,
}

impl Clt {
    /// The training forward pass on `inputs` (one `[tokens, d]` per layer): the JumpReLU
    /// latents with the paper's straight-through gradients to θ ([`ste::jumprelu`]).
    pub fn train_forward(&self, inputs: &[Tensor]) -> Result<CltTrainOutput> {
        let ste = self.threshold_options().ste;
        let mut pre_activations = Vec::with_capacity(inputs.len());
        let mut latents = Vec::with_capacity(inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            let pre = self.pre_activations(i, x)?;
            latents.push(ste::jumprelu(&pre, &self.theta(i)?, ste)?);
            pre_activations.push(pre);
        }
        let outputs = self.decode(&latents, Some(inputs))?;
        Ok(CltTrainOutput {
            pre_activations,
            latents,
            outputs,
        })
    }
}

/// Runs the training forward pass of `clt` on `inputs` and assembles its loss toward
/// `targets` (one `[tokens, d]` per layer) with `penalty`.
pub fn clt_training_loss(
    clt: &Clt,
    inputs: &[Tensor],
    targets: &[Tensor],
    penalty: &CltPenalty,
) -> Result<(CltTrainOutput, CltLossTerms)> {
    let layers = clt.shape().n_layers;
    if targets.len() != layers || penalty.coefficients().len() != layers {
        return Err(SaeError::Config(format!(
            "a cross-layer transcoder of {layers} layers trains toward {layers} targets with \
             {layers} penalty coefficients, not {} and {}",
            targets.len(),
            penalty.coefficients().len()
        )));
    }
    let out = clt.train_forward(inputs)?;
    let ste: SteConfig = clt.threshold_options().ste;
    let mut reconstruction = Vec::with_capacity(layers);
    let mut total: Option<Tensor> = None;
    let mut add = |term: Tensor| -> Result<()> {
        total = Some(match total.take() {
            Some(sum) => (sum + term)?,
            None => term,
        });
        Ok(())
    };
    for (j, (target, output)) in targets.iter().zip(&out.outputs).enumerate() {
        if target.dims() != output.dims() {
            return Err(SaeError::Shape {
                path: None,
                array: format!("target[{j}]"),
                expected: format!("{:?} (the output's)", output.dims()),
                got: target.dims().to_vec(),
            });
        }
        let error = squared_error(target, output)?;
        add(error.clone())?;
        reconstruction.push(error);
    }
    let mut penalties = Vec::with_capacity(layers);
    for (i, pre) in out.pre_activations.iter().enumerate() {
        let counts = l0_counts(pre, &clt.theta(i)?, ste)?;
        let term = match penalty {
            CltPenalty::L0 { .. } => counts.mean(0)?,
            CltPenalty::QuadraticL0 { target, .. } => QuadraticL0 {
                ste,
                target: *target,
            }
            .loss_of_counts(&counts)?,
        };
        add(term.affine(penalty.coefficients()[i], 0.0)?)?;
        penalties.push(term);
    }
    let total = total.expect("a CLT has at least one layer");
    Ok((
        out,
        CltLossTerms {
            total,
            reconstruction,
            penalties,
        },
    ))
}
