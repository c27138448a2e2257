//! Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing"; Gemma Scope 2's `clt/`):
//! JumpReLU latents read from each layer's MLP input write to the MLP outputs of that layer and
//! every later one.
//!
//! With L layers, model width d and W latents per layer, source layer i has an encoder
//! `W_enc[i]` `[d, W]`, `b_enc[i]` `[W]`, a threshold θ[i] `[W]`, and a decoder `W_dec[i]`
//! `[W, L − i, d]` (Gemma Scope 2's `[feature, out_layer, d]`: row f, block k is what latent f
//! of layer i writes to layer i + k). Each output layer j has a bias `b_dec[j]` `[d]` and, in
//! the affine variant, a skip matrix `W_skip[j]` `[d, d]`:
//!
//! f_i = JumpReLU_θ[i](x_i·W_enc[i] + b_enc[i]),
//! ŷ_j = Σ_{i ≤ j} f_i·W_dec[i][:, j − i, :] + b_dec[j] (+ x_j·W_skip[j]).
//!
//! Each source layer's decoder is held as one `[W, (L − i)·d]` matrix, so decoding a layer's
//! latents is one product whatever the number of layers it writes to.

pub mod loss;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::arch::{ThresholdOptions, ThresholdParametrisation, expect_shape};
use crate::init::InitConfig;
use crate::ste;
use crate::{Result, SaeError};

pub use loss::{CltLossTerms, CltPenalty, CltTrainOutput, clt_training_loss};

/// The sizes of a cross-layer transcoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CltShape {
    /// Layers L (source and output layers are the same L MLPs).
    pub n_layers: usize,
    /// Model width d (every MLP input and output).
    pub d_model: usize,
    /// Latents per layer W.
    pub d_sae: usize,
    /// Whether each output layer has the affine skip x_j·W_skip[j].
    pub skip: bool,
}

impl CltShape {
    /// Checks that every size is positive.
    pub fn check(&self) -> Result<()> {
        if self.n_layers == 0 || self.d_model == 0 || self.d_sae == 0 {
            return Err(SaeError::Config(format!(
                "a cross-layer transcoder needs at least one layer, a positive width and latents, \
                 not {self:?}"
            )));
        }
        Ok(())
    }

    /// The decoder width of source layer `layer`: (L − layer)·d.
    pub fn decoder_width(&self, layer: usize) -> usize {
        (self.n_layers - layer) * self.d_model
    }

    /// Parameters in all (for memory estimates: 4 bytes each in f32, four times that to train
    /// with Adam).
    pub fn parameters(&self) -> u64 {
        let (l, d, w) = (self.n_layers as u64, self.d_model as u64, self.d_sae as u64);
        let encoders = l * (d * w + 2 * w);
        let decoders = w * d * l * (l + 1) / 2 + l * d;
        let skips = if self.skip { l * d * d } else { 0 };
        encoders + decoders + skips
    }
}

/// One source layer's encoder, threshold and decoder to its own and every later layer.
#[derive(Debug, Clone)]
pub struct CltLayer {
    /// `W_enc` `[d, W]`.
    pub w_enc: Var,
    /// `b_enc` `[W]`.
    pub b_enc: Var,
    /// θ as stored: itself, or its logarithm ([`ThresholdParametrisation`]).
    threshold: Var,
    /// `W_dec` `[W, (L − i)·d]`.
    pub w_dec: Var,
}

/// A cross-layer transcoder (see the module documentation).
#[derive(Debug, Clone)]
pub struct Clt {
    shape: CltShape,
    layers: Vec<CltLayer>,
    /// `b_dec[j]` `[d]` per output layer.
    b_dec: Vec<Var>,
    /// `W_skip[j]` `[d, d]` per output layer (row-vector convention: x_j·W_skip[j]).
    w_skip: Option<Vec<Var>>,
    options: ThresholdOptions,
}

/// The tensors of one source layer, as [`Clt::new`] takes them.
#[derive(Debug, Clone)]
pub struct CltLayerTensors {
    /// `W_enc` `[d, W]`.
    pub w_enc: Tensor,
    /// `b_enc` `[W]`.
    pub b_enc: Tensor,
    /// θ `[W]` (itself, whatever the parametrisation).
    pub threshold: Tensor,
    /// `W_dec` `[W, L − i, d]` or `[W, (L − i)·d]`.
    pub w_dec: Tensor,
}

/// A seed for block (source, output) of a CLT seeded with `seed`: distinct for every block.
fn block_seed(seed: u64, source: usize, output: usize, n_layers: usize) -> u64 {
    let index = (source * n_layers + output) as u64 + 1;
    seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `rows` rows of `width` values, uniform directions (He-uniform draws rescaled) of norm
/// `norm`, from `seed`.
fn random_rows(rows: usize, width: usize, norm: f64, seed: u64) -> Vec<f32> {
    let bound = (6.0 / rows as f64).sqrt() as f32;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values: Vec<f32> = (0..rows * width)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    for row in values.chunks_mut(width) {
        let length = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let scale = (norm / length.max(f64::MIN_POSITIVE)) as f32;
        row.iter_mut().for_each(|v| *v *= scale);
    }
    values
}

impl Clt {
    /// A new CLT, reproducible from `init.seed`, initialised as Gemma Scope initialises a
    /// transcoder, block by block: each decoder block (i → j) has rows of uniform random
    /// direction and norm `decoder_row_norm / √(j + 1)` (output j sums j + 1 source layers, so
    /// it starts at one transcoder's scale); `W_enc[i]` is the transpose of block (i → i) at
    /// norm `decoder_row_norm`; biases and skips are zero; θ starts at `init.threshold`.
    pub fn init(shape: &CltShape, init: &InitConfig, device: &Device) -> Result<Self> {
        shape.check()?;
        let (l, d, w) = (shape.n_layers, shape.d_model, shape.d_sae);
        let mut layers = Vec::with_capacity(l);
        for i in 0..l {
            let encoder_rows =
                random_rows(w, d, init.decoder_row_norm, block_seed(init.seed, i, i, l));
            let w_enc = Tensor::from_vec(encoder_rows.clone(), (w, d), device)?
                .t()?
                .contiguous()?;
            let mut decoder = vec![0f32; w * (l - i) * d];
            for j in i..l {
                let scale = 1.0 / ((j + 1) as f64).sqrt();
                let block = if j == i {
                    encoder_rows.iter().map(|v| v * scale as f32).collect()
                } else {
                    random_rows(
                        w,
                        d,
                        init.decoder_row_norm * scale,
                        block_seed(init.seed, i, j, l),
                    )
                };
                for (f, row) in block.chunks(d).enumerate() {
                    let start = f * (l - i) * d + (j - i) * d;
                    decoder[start..start + d].copy_from_slice(row);
                }
            }
            layers.push(CltLayerTensors {
                w_enc,
                b_enc: Tensor::zeros(w, DType::F32, device)?,
                threshold: Tensor::full(init.threshold as f32, w, device)?,
                w_dec: Tensor::from_vec(decoder, (w, (l - i) * d), device)?,
            });
        }
        let b_dec = (0..l)
            .map(|_| Tensor::zeros(d, DType::F32, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let w_skip = if shape.skip {
            Some(
                (0..l)
                    .map(|_| Tensor::zeros((d, d), DType::F32, device))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Self::new(shape.clone(), layers, b_dec, w_skip, init.threshold_options)
    }

    /// A CLT from its tensors (checked against `shape`: a file that does not match its config
    /// is an error naming the array).
    pub fn new(
        shape: CltShape,
        layers: Vec<CltLayerTensors>,
        b_dec: Vec<Tensor>,
        w_skip: Option<Vec<Tensor>>,
        options: ThresholdOptions,
    ) -> Result<Self> {
        shape.check()?;
        let (l, d, w) = (shape.n_layers, shape.d_model, shape.d_sae);
        if layers.len() != l || b_dec.len() != l {
            return Err(SaeError::Config(format!(
                "a cross-layer transcoder of {l} layers needs {l} source layers and {l} decoder \
                 biases, not {} and {}",
                layers.len(),
                b_dec.len()
            )));
        }
        if w_skip.is_some() != shape.skip {
            return Err(SaeError::Config(format!(
                "the shape says skip = {}, but skip matrices were{} given",
                shape.skip,
                if w_skip.is_some() { "" } else { " not" }
            )));
        }
        let mut built = Vec::with_capacity(l);
        for (i, layer) in layers.into_iter().enumerate() {
            expect_shape(&layer.w_enc, &format!("W_enc[{i}]"), &[d, w])?;
            expect_shape(&layer.b_enc, &format!("b_enc[{i}]"), &[w])?;
            expect_shape(&layer.threshold, &format!("threshold[{i}]"), &[w])?;
            let w_dec = match layer.w_dec.rank() {
                3 => {
                    expect_shape(&layer.w_dec, &format!("W_dec[{i}]"), &[w, l - i, d])?;
                    layer.w_dec.reshape((w, (l - i) * d))?
                }
                _ => {
                    expect_shape(&layer.w_dec, &format!("W_dec[{i}]"), &[w, (l - i) * d])?;
                    layer.w_dec
                }
            };
            let threshold = match options.parametrisation {
                ThresholdParametrisation::Raw => layer.threshold,
                ThresholdParametrisation::Log => {
                    layer.threshold.clamp(f32::MIN_POSITIVE, f32::MAX)?.log()?
                }
            };
            built.push(CltLayer {
                w_enc: Var::from_tensor(&layer.w_enc.to_dtype(DType::F32)?)?,
                b_enc: Var::from_tensor(&layer.b_enc.to_dtype(DType::F32)?)?,
                threshold: Var::from_tensor(&threshold.to_dtype(DType::F32)?)?,
                w_dec: Var::from_tensor(&w_dec.to_dtype(DType::F32)?.contiguous()?)?,
            });
        }
        let b_dec = b_dec
            .into_iter()
            .enumerate()
            .map(|(j, b)| {
                expect_shape(&b, &format!("b_dec[{j}]"), &[d])?;
                Ok(Var::from_tensor(&b.to_dtype(DType::F32)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let w_skip = w_skip
            .map(|skips| {
                if skips.len() != l {
                    return Err(SaeError::Config(format!(
                        "{} skip matrices for {l} layers",
                        skips.len()
                    )));
                }
                skips
                    .into_iter()
                    .enumerate()
                    .map(|(j, s)| {
                        expect_shape(&s, &format!("W_skip[{j}]"), &[d, d])?;
                        Ok(Var::from_tensor(&s.to_dtype(DType::F32)?)?)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            shape,
            layers: built,
            b_dec,
            w_skip,
            options,
        })
    }

    /// Its sizes.
    pub fn shape(&self) -> &CltShape {
        &self.shape
    }

    /// The threshold parametrisation and estimator bandwidth.
    pub fn threshold_options(&self) -> ThresholdOptions {
        self.options
    }

    /// Source layer `layer`'s parameters.
    pub fn layer(&self, layer: usize) -> &CltLayer {
        &self.layers[layer]
    }

    /// θ of source layer `layer` `[W]`, differentiable with respect to the stored variable.
    pub fn theta(&self, layer: usize) -> Result<Tensor> {
        let stored = self.layers[layer].threshold.as_tensor();
        Ok(match self.options.parametrisation {
            ThresholdParametrisation::Raw => stored.clone(),
            ThresholdParametrisation::Log => stored.exp()?,
        })
    }

    /// Sets θ of source layer `layer` (clamped to what the parametrisation can hold).
    pub fn set_theta(&self, layer: usize, theta: &Tensor) -> Result<()> {
        expect_shape(theta, &format!("threshold[{layer}]"), &[self.shape.d_sae])?;
        let stored = match self.options.parametrisation {
            ThresholdParametrisation::Raw => theta.relu()?,
            ThresholdParametrisation::Log => theta.clamp(f32::MIN_POSITIVE, f32::MAX)?.log()?,
        };
        self.layers[layer]
            .threshold
            .set(&stored.to_dtype(DType::F32)?)?;
        Ok(())
    }

    /// The pre-activations x_i·W_enc[i] + b_enc[i] `[tokens, W]` of `x` `[tokens, d]`.
    pub fn pre_activations(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let encoder = &self.layers[layer];
        Ok(x.matmul(encoder.w_enc.as_tensor())?
            .broadcast_add(encoder.b_enc.as_tensor())?)
    }

    /// The latents of source layer `layer` on `x` `[tokens, d]`: JumpReLU with a strict `>`
    /// against θ⁺ (as [`crate::JumpReluSae`]).
    pub fn encode(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(layer, x)?;
        let gate = ste::heaviside(&pre, &ste::non_negative(&self.theta(layer)?)?)?;
        Ok((pre * gate)?)
    }

    /// The outputs ŷ_j of every layer `[tokens, d]` from every source layer's latents
    /// `[tokens, W]` (and, in the affine variant, every layer's input for the skip term).
    pub fn decode(&self, latents: &[Tensor], inputs: Option<&[Tensor]>) -> Result<Vec<Tensor>> {
        let (l, d) = (self.shape.n_layers, self.shape.d_model);
        self.check_layers(latents.len(), "latents")?;
        let mut outputs: Vec<Option<Tensor>> = vec![None; l];
        for (i, f) in latents.iter().enumerate() {
            let written = f.matmul(self.layers[i].w_dec.as_tensor())?;
            for (k, output) in outputs[i..].iter_mut().enumerate() {
                let block = written.narrow(1, k * d, d)?;
                *output = Some(match output.take() {
                    Some(sum) => (sum + block)?,
                    None => block,
                });
            }
        }
        let mut decoded = Vec::with_capacity(l);
        for (j, output) in outputs.into_iter().enumerate() {
            let output = output.expect("every layer j gets block (j → j)");
            let mut y = output.broadcast_add(self.b_dec[j].as_tensor())?;
            if let Some(skips) = &self.w_skip {
                let inputs = inputs.ok_or_else(|| {
                    SaeError::Config(
                        "an affine cross-layer transcoder decodes with its inputs (the skip term)"
                            .into(),
                    )
                })?;
                y = (y + inputs[j].matmul(skips[j].as_tensor())?)?;
            }
            decoded.push(y);
        }
        Ok(decoded)
    }

    /// Output layer `layer`'s prediction `[tokens, d]` alone, from the latents of source layers
    /// `0..=layer` (`latents[i]`, `[tokens, W]`) and, in the affine variant, the layer's input:
    /// for a forward pass that meets the layers one after another (the replacement model,
    /// where layer j's input depends on the outputs before it). Equal to [`Self::decode`]'s
    /// output `layer` up to f32 rounding (each block's product is taken on its own).
    pub fn decode_layer(
        &self,
        layer: usize,
        latents: &[Tensor],
        input: Option<&Tensor>,
    ) -> Result<Tensor> {
        let d = self.shape.d_model;
        if layer >= self.shape.n_layers || latents.len() < layer + 1 {
            return Err(SaeError::Config(format!(
                "output layer {layer} of a {}-layer CLT needs the latents of layers 0..={layer}, \
                 got {}",
                self.shape.n_layers,
                latents.len()
            )));
        }
        let mut y = self.b_dec[layer].as_tensor().unsqueeze(0)?;
        for (i, f) in latents.iter().enumerate().take(layer + 1) {
            let block = self.layers[i]
                .w_dec
                .as_tensor()
                .narrow(1, (layer - i) * d, d)?;
            y = y.broadcast_add(&f.matmul(&block.contiguous()?)?)?;
        }
        if let Some(skips) = &self.w_skip {
            let input = input.ok_or_else(|| {
                SaeError::Config(
                    "an affine cross-layer transcoder decodes with its inputs (the skip term)"
                        .into(),
                )
            })?;
            y = (y + input.matmul(skips[layer].as_tensor())?)?;
        }
        Ok(y)
    }

    /// Every layer's latents and every layer's output on `inputs` (one `[tokens, d]` per
    /// layer).
    pub fn forward(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        self.check_layers(inputs.len(), "inputs")?;
        let latents = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| self.encode(i, x))
            .collect::<Result<Vec<_>>>()?;
        let outputs = self.decode(&latents, Some(inputs))?;
        Ok((latents, outputs))
    }

    /// An error unless `count` is the number of layers.
    fn check_layers(&self, count: usize, what: &str) -> Result<()> {
        if count != self.shape.n_layers {
            return Err(SaeError::Config(format!(
                "a cross-layer transcoder of {} layers takes {} {what}, not {count}",
                self.shape.n_layers, self.shape.n_layers
            )));
        }
        Ok(())
    }

    /// `W_skip[j]`, if the CLT is affine.
    pub fn skip(&self, layer: usize) -> Option<&Tensor> {
        self.w_skip.as_ref().map(|s| s[layer].as_tensor())
    }

    /// `b_dec[j]`.
    pub fn b_dec(&self, layer: usize) -> &Tensor {
        self.b_dec[layer].as_tensor()
    }

    /// Sets `b_dec[j]`.
    pub fn set_b_dec(&self, layer: usize, value: &Tensor) -> Result<()> {
        expect_shape(value, &format!("b_dec[{layer}]"), &[self.shape.d_model])?;
        self.b_dec[layer].set(&value.to_dtype(DType::F32)?)?;
        Ok(())
    }

    /// The trainable variables of layer `layer`: its encoder, threshold and decoder, and the
    /// bias (and skip) of its output, named `W_enc`, `b_enc`, `threshold` (or `log_threshold`),
    /// `W_dec`, `b_dec`, `W_skip`. A layer's variables are updated together (an optimiser per
    /// layer, a checkpoint entry per layer).
    pub fn layer_vars(&self, layer: usize) -> Vec<(&'static str, &Var)> {
        let threshold = match self.options.parametrisation {
            ThresholdParametrisation::Raw => "threshold",
            ThresholdParametrisation::Log => "log_threshold",
        };
        let encoder = &self.layers[layer];
        let mut vars = vec![
            ("W_enc", &encoder.w_enc),
            ("b_enc", &encoder.b_enc),
            (threshold, &encoder.threshold),
            ("W_dec", &encoder.w_dec),
            ("b_dec", &self.b_dec[layer]),
        ];
        if let Some(skips) = &self.w_skip {
            vars.push(("W_skip", &skips[layer]));
        }
        vars
    }

    /// Every trainable variable, layer by layer, named `NAME.LAYER` ([`Self::layer_vars`]:
    /// `W_enc.3`, `log_threshold.3`, `b_dec.3`, …).
    pub fn vars(&self) -> Vec<(String, &Var)> {
        (0..self.shape.n_layers)
            .flat_map(|i| {
                self.layer_vars(i)
                    .into_iter()
                    .map(move |(name, var)| (format!("{name}.{i}"), var))
            })
            .collect()
    }

    /// Keeps every threshold in its domain after an update (θ ≥ 0 when stored raw; a log
    /// threshold is positive by construction).
    pub fn project_thresholds(&self) -> Result<()> {
        if self.options.parametrisation == ThresholdParametrisation::Raw {
            for layer in &self.layers {
                layer.threshold.set(&layer.threshold.as_tensor().relu()?)?;
            }
        }
        Ok(())
    }

    /// Source layer `layer`'s tensors as files hold them: θ itself, `W_dec` `[W, L − i, d]`.
    pub fn layer_tensors(&self, layer: usize) -> Result<CltLayerTensors> {
        let (l, d, w) = (self.shape.n_layers, self.shape.d_model, self.shape.d_sae);
        let encoder = &self.layers[layer];
        Ok(CltLayerTensors {
            w_enc: encoder.w_enc.as_tensor().clone(),
            b_enc: encoder.b_enc.as_tensor().clone(),
            threshold: self.theta(layer)?,
            w_dec: encoder.w_dec.as_tensor().reshape((w, l - layer, d))?,
        })
    }

    /// Folds per-layer scaling constants into the weights: a CLT trained on inputs x_i / c_in[i]
    /// toward outputs y_j / c_out[j] then reads raw inputs and writes raw outputs, with the same
    /// latents (`W_enc[i]` / c_in[i]; block (i → j), `b_dec[j]` × c_out[j]; `W_skip[j]` ×
    /// c_out[j] / c_in[j]).
    pub fn fold_scalings(&mut self, c_in: &[f64], c_out: &[f64]) -> Result<()> {
        let (l, d) = (self.shape.n_layers, self.shape.d_model);
        self.check_layers(c_in.len(), "input scales")?;
        self.check_layers(c_out.len(), "output scales")?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer
                .w_enc
                .set(&layer.w_enc.as_tensor().affine(1.0 / c_in[i], 0.0)?)?;
            let factors: Vec<f32> = (i..l)
                .flat_map(|j| std::iter::repeat_n(c_out[j] as f32, d))
                .collect();
            let factors = Tensor::from_vec(factors, (1, (l - i) * d), layer.w_dec.device())?;
            layer
                .w_dec
                .set(&layer.w_dec.as_tensor().broadcast_mul(&factors)?)?;
        }
        for (j, b) in self.b_dec.iter().enumerate() {
            b.set(&b.as_tensor().affine(c_out[j], 0.0)?)?;
        }
        if let Some(skips) = &self.w_skip {
            for (j, s) in skips.iter().enumerate() {
                s.set(&s.as_tensor().affine(c_out[j] / c_in[j], 0.0)?)?;
            }
        }
        Ok(())
    }
}
