//! The replacement model: the MLPs of a set of layers all replaced at once, by a transcoder per
//! layer or by one cross-layer transcoder, as circuit analysis uses them.
//!
//! Each dictionary reads its layer's MLP input (`blocks.L.hook_mlp_in`) *in the replacement
//! model* — downstream of every earlier replacement — and its prediction takes the place of the
//! MLP's output (`blocks.L.hook_mlp_out`) at positions `1..len` (BOS and padding keep theirs,
//! as in [`crate::evaluate`]). A CLT's layer j output sums what the latents of every layer up to
//! j write to it, so one forward pass computes each layer's latents when it reaches that layer's
//! MLP input and decodes each output when it reaches that MLP's output.
//!
//! Reported: per layer, FVU, MSE and mean L0 of the dictionary on the clean model's
//! activations (what it is trained for; comparable across dictionaries at one layer), their
//! total L0, and the next-token loss of the replacement model against the clean model (delta
//! loss) and against every replaced MLP output zero-ablated or mean-ablated (CE loss recovered).

use std::collections::BTreeMap;
use std::sync::Mutex;

use activation_cache::Context;
use candle_core::{DType, Tensor};
use gemma_hooks::{HookPoint, HookedModel, Hooks, next_token_loss};
use sae_core::{Clt, Sae};
use serde::{Deserialize, Serialize};

use crate::evaluate::{
    EvalOptions, PositionSums, check_contexts, input_ids, kept_rows, mask_tensor, masked_replace,
    mean_shape, replaced_positions,
};
use crate::stats::ReconstructionStats;
use crate::{AnalysisError, Result};

/// What replaces the MLPs.
pub enum MlpDictionary<'a> {
    /// A transcoder per layer: `(layer, transcoder)`, each reading `blocks.L.hook_mlp_in` and
    /// predicting `blocks.L.hook_mlp_out` (on raw activations).
    Transcoders(Vec<(usize, &'a dyn Sae)>),
    /// A cross-layer transcoder whose layer k reads `blocks.{layers[k]}.hook_mlp_in` and writes
    /// to `blocks.{layers[j]}.hook_mlp_out` for every j ≥ k.
    Clt {
        /// The CLT (on raw activations).
        clt: &'a Clt,
        /// The model layer of each of its layers, increasing.
        layers: Vec<usize>,
    },
}

impl MlpDictionary<'_> {
    /// The model layers whose MLPs are replaced, in order.
    pub fn layers(&self) -> Vec<usize> {
        match self {
            MlpDictionary::Transcoders(transcoders) => {
                transcoders.iter().map(|(l, _)| *l).collect()
            }
            MlpDictionary::Clt { layers, .. } => layers.clone(),
        }
    }

    /// `transcoders` or `clt`.
    pub fn kind(&self) -> &'static str {
        match self {
            MlpDictionary::Transcoders(_) => "transcoders",
            MlpDictionary::Clt { .. } => "clt",
        }
    }

    /// Latents per layer (each layer's own for transcoders).
    fn widths(&self) -> Vec<usize> {
        match self {
            MlpDictionary::Transcoders(transcoders) => {
                transcoders.iter().map(|(_, t)| t.d_sae()).collect()
            }
            MlpDictionary::Clt { clt, layers } => vec![clt.shape().d_sae; layers.len()],
        }
    }

    /// An error unless the layers increase strictly (and, for a CLT, match its layers).
    fn check(&self) -> Result<()> {
        let layers = self.layers();
        if layers.is_empty() || layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(AnalysisError::Invalid(format!(
                "the replaced layers must be given in increasing order, at least one: {layers:?}"
            )));
        }
        if let MlpDictionary::Clt { clt, layers } = self
            && clt.shape().n_layers != layers.len()
        {
            return Err(AnalysisError::Invalid(format!(
                "a CLT of {} layers placed at {} model layers",
                clt.shape().n_layers,
                layers.len()
            )));
        }
        Ok(())
    }
}

/// One replaced layer's reconstruction on the clean model's activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacedLayer {
    /// The model layer.
    pub layer: usize,
    /// FVU of its MLP output.
    pub fvu: f64,
    /// Mean squared error (summed over the width, averaged over tokens).
    pub mse: f64,
    /// Mean active latents per token (a CLT's: that layer's).
    pub mean_l0: f64,
}

/// The replacement model's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacementEvaluation {
    /// A name for the tables.
    pub name: String,
    /// `transcoders` or `clt`.
    pub kind: String,
    /// Each replaced layer.
    pub layers: Vec<ReplacedLayer>,
    /// Σ of the layers' mean L0: active latents per token over the whole replacement.
    pub total_l0: f64,
    /// Tokens each dictionary read.
    pub tokens: u64,
    /// Predictions the losses average over.
    pub loss_tokens: u64,
    /// The clean model's next-token loss (nats).
    pub clean_loss: f64,
    /// The replacement model's.
    pub replaced_loss: f64,
    /// `replaced_loss − clean_loss`.
    pub delta_loss: f64,
    /// The loss with every replaced MLP's output zero-ablated.
    pub zero_ablation_loss: f64,
    /// (zero − replaced) / (zero − clean).
    pub ce_loss_recovered: f64,
    /// The loss with every replaced MLP's output mean-ablated, when every mean was given.
    pub mean_ablation_loss: Option<f64>,
    /// (mean − replaced) / (mean − clean).
    pub ce_loss_recovered_vs_mean: Option<f64>,
}

/// Evaluates the replacement model of `dictionary` on `contexts` (all of one length); `means`
/// holds the mean of each `blocks.L.hook_mlp_out` for the mean-ablation baseline.
pub fn evaluate_replacement(
    model: &dyn HookedModel,
    name: &str,
    dictionary: &MlpDictionary<'_>,
    contexts: &[Context],
    means: &BTreeMap<HookPoint, Vec<f32>>,
    options: &EvalOptions,
) -> Result<ReplacementEvaluation> {
    dictionary.check()?;
    let length = check_contexts(contexts)?;
    let layers = dictionary.layers();
    let device = model.device().clone();
    let d_model = model.config().hidden_size;
    let mut stats: Vec<ReconstructionStats> = dictionary
        .widths()
        .into_iter()
        .map(|w| ReconstructionStats::new(d_model, w))
        .collect();
    let mean_outputs: Option<Vec<Tensor>> = layers
        .iter()
        .map(|&l| means.get(&HookPoint::MlpOut(l)))
        .collect::<Option<Vec<_>>>()
        .map(|means| {
            means
                .into_iter()
                .map(|m| Tensor::new(m.as_slice(), &device))
                .collect::<candle_core::Result<Vec<_>>>()
        })
        .transpose()?;
    let (mut clean, mut replaced) = (PositionSums::new(length), PositionSums::new(length));
    let mut zero = PositionSums::new(length);
    let mut mean = mean_outputs.as_ref().map(|_| PositionSums::new(length));
    for batch in contexts.chunks(options.batch_contexts.max(1)) {
        let ids = input_ids(batch, &device)?;
        let points = layers
            .iter()
            .flat_map(|&l| [HookPoint::MlpIn(l), HookPoint::MlpOut(l)]);
        let mut observing = Hooks::observing(points);
        let logits = model
            .forward(&ids, &mut observing)?
            .ok_or_else(|| AnalysisError::Invalid("the model stopped before its logits".into()))?;
        clean.add(&next_token_loss(&logits, &ids)?.to_vec2()?, batch);
        let take = |observing: &mut Hooks<'_>, point: HookPoint| {
            observing
                .take(point)
                .ok_or_else(|| AnalysisError::Invalid(format!("hook {point} was not reached")))
        };
        let mut inputs = Vec::with_capacity(layers.len());
        let mut outputs = Vec::with_capacity(layers.len());
        for &l in &layers {
            inputs.push(take(&mut observing, HookPoint::MlpIn(l))?);
            outputs.push(take(&mut observing, HookPoint::MlpOut(l))?);
        }
        let chosen = replaced_positions(batch, length, &outputs[0], None)?;
        let mask = mask_tensor(&chosen, batch.len(), length, &device)?;
        let kept = kept_rows(&chosen, &device)?;
        add_clean_stats(dictionary, &inputs, &outputs, &kept, &mut stats)?;
        replaced.add(&replacement_losses(model, &ids, dictionary, &mask)?, batch);
        let ablate = |fill: &dyn Fn(usize, &Tensor) -> Result<Tensor>| -> Result<Vec<Vec<f32>>> {
            let mut hooks = Hooks::new();
            for (k, (&l, output)) in layers.iter().zip(&outputs).enumerate() {
                let ablated = masked_replace(output, &fill(k, output)?, &mask)?;
                hooks.replace(HookPoint::MlpOut(l), move |_| Ok(ablated.clone()));
            }
            let logits = model.forward(&ids, &mut hooks)?.ok_or_else(|| {
                AnalysisError::Invalid("the model stopped before its logits".into())
            })?;
            Ok(next_token_loss(&logits, &ids)?.to_vec2()?)
        };
        zero.add(&ablate(&|_, output| Ok(output.zeros_like()?))?, batch);
        if let (Some(sums), Some(means)) = (&mut mean, &mean_outputs) {
            let losses = ablate(&|k, output| {
                Ok(means[k]
                    .to_dtype(output.dtype())?
                    .reshape(mean_shape(output))?
                    .broadcast_as(output.shape())?)
            })?;
            sums.add(&losses, batch);
        }
    }
    let (clean_loss, replaced_loss, zero_loss) = (clean.mean(), replaced.mean(), zero.mean());
    let mean_loss = mean.as_ref().map(PositionSums::mean);
    let layers: Vec<ReplacedLayer> = layers
        .iter()
        .zip(&stats)
        .map(|(&layer, s)| ReplacedLayer {
            layer,
            fvu: s.fvu(),
            mse: s.mse(),
            mean_l0: s.mean_l0(),
        })
        .collect();
    Ok(ReplacementEvaluation {
        name: name.to_string(),
        kind: dictionary.kind().to_string(),
        total_l0: layers.iter().map(|l| l.mean_l0).sum(),
        layers,
        tokens: stats.first().map_or(0, ReconstructionStats::tokens),
        loss_tokens: clean.total(),
        clean_loss,
        replaced_loss,
        delta_loss: replaced_loss - clean_loss,
        zero_ablation_loss: zero_loss,
        ce_loss_recovered: (zero_loss - replaced_loss) / (zero_loss - clean_loss),
        mean_ablation_loss: mean_loss,
        ce_loss_recovered_vs_mean: mean_loss.map(|m| (m - replaced_loss) / (m - clean_loss)),
    })
}

/// `[batch, pos, d]` → `[batch × pos, d]` f32 rows.
fn rows(activation: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, positions) = (activation.dims()[0], activation.dims()[1]);
    activation
        .reshape((batch * positions, ()))?
        .to_dtype(DType::F32)
}

/// Adds each layer's reconstruction of the clean model's MLP output from its clean input (at
/// the replaced rows `kept`) to `stats`.
fn add_clean_stats(
    dictionary: &MlpDictionary<'_>,
    inputs: &[Tensor],
    outputs: &[Tensor],
    kept: &Tensor,
    stats: &mut [ReconstructionStats],
) -> Result<()> {
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(rows)
        .collect::<candle_core::Result<_>>()?;
    let (latents, predictions) = match dictionary {
        MlpDictionary::Transcoders(transcoders) => {
            let mut latents = Vec::with_capacity(transcoders.len());
            let mut predictions = Vec::with_capacity(transcoders.len());
            for ((_, transcoder), x) in transcoders.iter().zip(&inputs) {
                let (f, y) = transcoder.forward(x)?;
                latents.push(f);
                predictions.push(y);
            }
            (latents, predictions)
        }
        MlpDictionary::Clt { clt, .. } => clt.forward(&inputs)?,
    };
    for (((stats, output), f), y) in stats
        .iter_mut()
        .zip(outputs)
        .zip(&latents)
        .zip(&predictions)
    {
        stats.update(
            &rows(output)?.index_select(kept, 0)?,
            &y.index_select(kept, 0)?,
            &f.index_select(kept, 0)?,
        )?;
    }
    Ok(())
}

/// What the replacement pass keeps between hook points: each layer's input rows and latents
/// (a CLT) or prediction (a transcoder), as it reaches them.
#[derive(Default)]
struct Carried {
    inputs: BTreeMap<usize, Tensor>,
    latents: BTreeMap<usize, Tensor>,
    predictions: BTreeMap<usize, Tensor>,
}

/// The next-token losses of the replacement model on `ids`, each layer's prediction spliced in
/// where `mask` is set.
fn replacement_losses(
    model: &dyn HookedModel,
    ids: &Tensor,
    dictionary: &MlpDictionary<'_>,
    mask: &Tensor,
) -> Result<Vec<Vec<f32>>> {
    let carried = Mutex::new(Carried::default());
    let carried = &carried;
    let to_candle = |e: AnalysisError| candle_core::Error::Msg(e.to_string());
    let mut hooks = Hooks::new();
    for (k, layer) in dictionary.layers().into_iter().enumerate() {
        hooks.replace(HookPoint::MlpIn(layer), move |x| {
            let x_rows = rows(x)?;
            let mut state = carried.lock().expect("one forward pass at a time");
            match dictionary {
                MlpDictionary::Transcoders(transcoders) => {
                    let (_, y) = transcoders[k]
                        .1
                        .forward(&x_rows)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    state.predictions.insert(k, y);
                }
                MlpDictionary::Clt { clt, .. } => {
                    let f = clt
                        .encode(k, &x_rows)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    state.latents.insert(k, f);
                    state.inputs.insert(k, x_rows);
                }
            }
            Ok(x.clone())
        });
        hooks.replace(HookPoint::MlpOut(layer), move |y| {
            let state = carried.lock().expect("one forward pass at a time");
            let prediction = match dictionary {
                MlpDictionary::Transcoders(_) => state.predictions[&k].clone(),
                MlpDictionary::Clt { clt, .. } => {
                    let latents: Vec<Tensor> = (0..=k).map(|i| state.latents[&i].clone()).collect();
                    clt.decode_layer(k, &latents, Some(&state.inputs[&k]))
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                }
            };
            let prediction = prediction.reshape(y.dims())?.to_dtype(y.dtype())?;
            masked_replace(y, &prediction, mask).map_err(to_candle)
        });
    }
    let logits = model
        .forward(ids, &mut hooks)?
        .ok_or_else(|| AnalysisError::Invalid("the model stopped before its logits".into()))?;
    Ok(next_token_loss(&logits, ids)?.to_vec2()?)
}
