//! The training loss: reconstruction error plus weighted sparsity penalties.

use candle_core::{D, DType, Tensor};

use crate::Result;
use crate::arch::{TrainOutput, TrainableSae};
use crate::penalty::{PenaltyContext, SparsityPenalty};

/// Σ over dimensions of (x − x̂)², averaged over tokens, in f32: the Gemma Scope
/// reconstruction term (a sum over d_in, not a mean).
pub fn squared_error(x: &Tensor, reconstruction: &Tensor) -> Result<Tensor> {
    let diff = (x.to_dtype(DType::F32)? - reconstruction.to_dtype(DType::F32)?)?;
    Ok(diff.sqr()?.sum(D::Minus1)?.mean(0)?)
}

/// A penalty with its coefficient for this step.
#[derive(Debug, Clone, Copy)]
pub struct WeightedPenalty<'a> {
    /// The penalty.
    pub penalty: &'a dyn SparsityPenalty,
    /// Its coefficient (λ) at this step.
    pub coefficient: f64,
}

/// The terms of a training loss; every tensor is a scalar in f32.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The loss to differentiate.
    pub total: Tensor,
    /// Reconstruction error ([`squared_error`]).
    pub reconstruction: Tensor,
    /// Each penalty's unscaled term, by name.
    pub penalties: Vec<(&'static str, Tensor)>,
    /// The architecture's own auxiliary loss (Gated), unscaled and added with weight 1.
    pub auxiliary: Option<Tensor>,
}

/// Runs the training forward pass of `sae` on `x` and assembles
/// total = reconstruction + Σ λ·penalty + auxiliary.
pub fn training_loss(
    sae: &dyn TrainableSae,
    x: &Tensor,
    penalties: &[WeightedPenalty<'_>],
    context: &PenaltyContext,
) -> Result<(TrainOutput, LossTerms)> {
    training_loss_toward(sae, x, None, penalties, context)
}

/// [`training_loss`] with the reconstruction trained toward `target` instead of `x` (a
/// transcoder's output hook, `[tokens, d_in]` like `x`); `None` is `x` itself. The penalties
/// that compare a reconstruction with what it should be (AuxK's residual, Matryoshka's
/// prefixes) compare with the target too.
pub fn training_loss_toward(
    sae: &dyn TrainableSae,
    x: &Tensor,
    target: Option<&Tensor>,
    penalties: &[WeightedPenalty<'_>],
    context: &PenaltyContext,
) -> Result<(TrainOutput, LossTerms)> {
    let mut out = sae.train_forward(x)?;
    if let Some(target) = target {
        if target.dims() != out.reconstruction.dims() {
            return Err(crate::SaeError::Shape {
                path: None,
                array: "target".into(),
                expected: format!("{:?} (the reconstruction's)", out.reconstruction.dims()),
                got: target.dims().to_vec(),
            });
        }
        out.target = target.clone();
    }
    let reconstruction = squared_error(&out.target, &out.reconstruction)?;
    let mut total = reconstruction.clone();
    let mut terms = Vec::with_capacity(penalties.len());
    for weighted in penalties {
        let term = weighted.penalty.loss(sae, &out, context)?;
        total = (total + term.affine(weighted.coefficient, 0.0)?)?;
        terms.push((weighted.penalty.name(), term));
    }
    let auxiliary = sae.auxiliary_loss(&out)?;
    if let Some(aux) = &auxiliary {
        total = (total + aux)?;
    }
    Ok((
        out,
        LossTerms {
            total,
            reconstruction,
            penalties: terms,
            auxiliary,
        },
    ))
}
