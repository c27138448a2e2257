//! A trained dictionary scored against the synthetic model it was trained on: its decoder matched
//! to the true features ([`crate::metrics::match_latents`]), then the sample-based metrics over
//! fresh samples of the model ([`crate::metrics::Evaluator`]).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sae_core::Sae;

use crate::metrics::{Activations, EvalRow, Evaluator, GroundTruthReport, match_latents};
use crate::model::SyntheticModel;
use crate::sample::Sampler;
use crate::{GroundTruthError, Result};

/// Rows an evaluation encodes at a time.
pub const EVAL_BATCH: usize = 2048;

/// Scores `sae` (on the model's raw activations: any input scaling folded in, as an exported
/// SAE is) against `model`'s true features over `samples` rows of stream `seed` (use a seed the
/// training stream did not: the samples should be unseen). Every [`GroundTruthReport`] field is
/// computed as SAELens's `eval_sae_on_synthetic_data` computes it.
pub fn evaluate_dictionary(
    sae: &dyn Sae,
    model: &Arc<SyntheticModel>,
    seed: u64,
    samples: u64,
) -> Result<GroundTruthReport> {
    let d_in = model.hidden_dim();
    if sae.d_in() != d_in {
        return Err(GroundTruthError::Invalid(format!(
            "the dictionary reads {} values per sample and the synthetic model makes {d_in}",
            sae.d_in()
        )));
    }
    if samples == 0 {
        return Err(GroundTruthError::Invalid(
            "an evaluation needs at least one sample".into(),
        ));
    }
    let decoder: Vec<f32> = sae
        .decoder_weight()
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let matching = match_latents(
        &decoder,
        sae.d_sae(),
        model.feature_vectors(),
        model.num_features(),
        d_in,
    )?;
    let mut evaluator = Evaluator::new(&matching, d_in)?;
    let sampler = Sampler::new(Arc::clone(model));
    let device = sae.decoder_weight().device().clone();
    let dtype = sae.decoder_weight().dtype();
    let mut done = 0u64;
    while done < samples {
        let rows = (samples - done).min(EVAL_BATCH as u64) as usize;
        let batch = sampler.sample(seed, done, rows)?;
        let x = batch.activations_tensor(&device)?.to_dtype(dtype)?;
        let (latents, reconstruction) = sae.forward(&x)?;
        let flat = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?)
        };
        let latents = flat(latents)?;
        let outputs = flat(reconstruction)?;
        let d_sae = sae.d_sae();
        let mut features: Vec<(usize, f32)> = Vec::new();
        for r in 0..rows {
            features.clear();
            features.extend(batch.features.row_pairs(r).map(|(f, v)| (f as usize, v)));
            evaluator.add_row(EvalRow {
                input: batch.activation_row(r),
                output: &outputs[r * d_in..(r + 1) * d_in],
                latents: Activations::Dense(&latents[r * d_sae..(r + 1) * d_sae]),
                features: Activations::Sparse(&features),
            })?;
        }
        done += rows as u64;
    }
    evaluator.report()
}
