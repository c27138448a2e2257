//! The Gemma 2 / Gemma 3 forward pass: one block implementation, two families, every
//! intermediate at a [`HookPoint`].

use candle_core::{D, DType, Device, Tensor};

use crate::config::{AttentionKind, Family, GemmaConfig, Rope};
use crate::weights::Weights;
use crate::{GemmaError, HookPoint, Hooks, Result, activation};
use cpu_blas::Kernels;

/// Gemma's RMSNorm: x / √(mean(x²) + ε) · (1 + w), computed in f32 and cast back.
#[derive(Debug, Clone)]
struct RmsNorm {
    /// 1 + w, in f32.
    gain: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(weights: &mut Weights, name: &str, width: usize, eps: f64) -> Result<Self> {
        let w = weights.take(name, &[width])?;
        Ok(Self {
            gain: w.to_dtype(DType::F32)?.affine(1.0, 1.0)?,
            eps,
        })
    }

    /// x / rms(x) in f32, without the gain.
    fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?)
    }

    /// The gain applied to a normalised f32 tensor, cast to `dtype`.
    fn scale(&self, normalized: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(normalized
            .to_dtype(DType::F32)?
            .broadcast_mul(&self.gain)?
            .to_dtype(dtype)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.scale(&self.normalize(x)?, x.dtype())
    }
}

/// A bias-free linear map y = x·Wᵀ with W `[out, in]`.
#[derive(Debug, Clone)]
struct Linear {
    /// `[out, in]`, as stored.
    weight: Tensor,
}

impl Linear {
    fn new(weights: &mut Weights, name: &str, out: usize, input: usize) -> Result<Self> {
        Ok(Self {
            weight: weights.take(name, &[out, input])?,
        })
    }

    /// One `[tokens, in] × [in, out]` product over all leading dimensions (a batched product
    /// per sequence runs the kernel on smaller, slower blocks): on the system's OpenBLAS for
    /// f32 on the CPU ([`cpu_blas::linear`]) unless `kernels` is generic, else candle's matmul.
    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let dims = x.dims();
        let (lead, input) = dims.split_at(dims.len().saturating_sub(1));
        let tokens = lead.iter().product::<usize>();
        let x = x.reshape((tokens, input.iter().product::<usize>()))?;
        let specialised = match kernels.specialised_on(x.device()) {
            true => cpu_blas::linear(&x, &self.weight)?,
            false => None,
        };
        let y = match specialised {
            Some(y) => y,
            None => x.matmul(&self.weight.t()?)?,
        };
        let mut shape = lead.to_vec();
        shape.push(y.dim(1)?);
        Ok(y.reshape(shape)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    kind: AttentionKind,
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    pre_feedforward_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_feedforward_norm: RmsNorm,
}

/// Per-forward tensors shared by all blocks: RoPE tables and attention masks.
struct Context {
    cos_global: Tensor,
    sin_global: Tensor,
    cos_local: Tensor,
    sin_local: Tensor,
    mask_global: Tensor,
    mask_local: Tensor,
}

/// A Gemma 2 or Gemma 3 text model with hook points.
#[derive(Debug, Clone)]
pub struct GemmaModel {
    config: GemmaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    dtype: DType,
    device: Device,
    kernels: Kernels,
}

impl GemmaModel {
    /// Builds the model from Hugging Face-named weights; every tensor's shape is checked
    /// against `config` (an error names the tensor and both shapes).
    ///
    /// Long because it takes every tensor of a block by name, with its expected shape: a flat
    /// list that mirrors the checkpoint's layout.
    pub fn new(config: GemmaConfig, mut weights: Weights) -> Result<Self> {
        let c = &config;
        let eps = c.rms_norm_eps;
        let (d, q_width, kv_width) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let embed = weights.take("model.embed_tokens.weight", &[c.vocab_size, d])?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for layer in 0..c.num_layers {
            let p = |name: &str| format!("model.layers.{layer}.{name}");
            let w = &mut weights;
            let (q_norm, k_norm) = match c.family {
                Family::Gemma2 => (None, None),
                Family::Gemma3 => (
                    Some(RmsNorm::new(
                        w,
                        &p("self_attn.q_norm.weight"),
                        c.head_dim,
                        eps,
                    )?),
                    Some(RmsNorm::new(
                        w,
                        &p("self_attn.k_norm.weight"),
                        c.head_dim,
                        eps,
                    )?),
                ),
            };
            blocks.push(Block {
                input_norm: RmsNorm::new(w, &p("input_layernorm.weight"), d, eps)?,
                attention: Attention {
                    q: Linear::new(w, &p("self_attn.q_proj.weight"), q_width, d)?,
                    k: Linear::new(w, &p("self_attn.k_proj.weight"), kv_width, d)?,
                    v: Linear::new(w, &p("self_attn.v_proj.weight"), kv_width, d)?,
                    o: Linear::new(w, &p("self_attn.o_proj.weight"), d, q_width)?,
                    q_norm,
                    k_norm,
                    kind: c.layer_types[layer],
                },
                post_attention_norm: RmsNorm::new(
                    w,
                    &p("post_attention_layernorm.weight"),
                    d,
                    eps,
                )?,
                pre_feedforward_norm: RmsNorm::new(
                    w,
                    &p("pre_feedforward_layernorm.weight"),
                    d,
                    eps,
                )?,
                gate: Linear::new(w, &p("mlp.gate_proj.weight"), c.intermediate_size, d)?,
                up: Linear::new(w, &p("mlp.up_proj.weight"), c.intermediate_size, d)?,
                down: Linear::new(w, &p("mlp.down_proj.weight"), d, c.intermediate_size)?,
                post_feedforward_norm: RmsNorm::new(
                    w,
                    &p("post_feedforward_layernorm.weight"),
                    d,
                    eps,
                )?,
            });
        }
        let final_norm = RmsNorm::new(&mut weights, "model.norm.weight", d, eps)?;
        let leftover: Vec<String> = weights
            .remaining()
            .into_iter()
            .filter(|n| n != "lm_head.weight")
            .collect();
        if !leftover.is_empty() {
            return Err(GemmaError::Invalid(format!(
                "{}: tensors the configuration does not use (does config.json match the weights?): {}",
                weights.source(),
                leftover.join(", ")
            )));
        }
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        Ok(Self {
            config,
            embed,
            blocks,
            final_norm,
            dtype,
            device,
            kernels: Kernels::default(),
        })
    }

    /// The same model computing with `kernels` ([`Kernels::Generic`]: candle's operations
    /// only, what a GPU runs; the default takes the CPU's fastest products and activation).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// The kernels the forward pass may use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The configuration.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the weights live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What computes this model's forward pass, precisely enough that two passes with the same
    /// description and inputs give the same bits: the device, the dtype and, on the CPU, the
    /// matrix-product kernels ([`cpu_blas::kernel_description`]).
    pub fn kernel_description(&self) -> String {
        let dtype = format!("{:?}", self.dtype).to_lowercase();
        match &self.device {
            Device::Cpu if self.kernels == Kernels::Fastest => {
                format!("cpu {dtype}: {}", cpu_blas::kernel_description())
            }
            Device::Cpu => format!(
                "cpu {dtype}: generic candle ops ({})",
                cpu_blas::gemm_description()
            ),
            other => format!("{other:?} {dtype}"),
        }
    }

    /// The (tied) embedding / unembedding matrix `[vocab, d_model]`.
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// The final norm's gain (1 + w), f32 `[d_model]`: with [`GemmaModel::embedding`], what
    /// maps a residual direction to logits.
    pub fn final_norm_gain(&self) -> &Tensor {
        &self.final_norm.gain
    }

    /// Maps directions in block `layer`'s `attn.hook_z` space (rows of `z`, `[n, heads ×
    /// head_dim]`) to the residual stream: through the output projection W_O, then scaled by
    /// the post-attention norm's gain (the norm's division by the RMS is left out, so this is
    /// the direction, not the exact contribution). For the logit effects of attention SAEs.
    pub fn attention_output_directions(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        let block = self.blocks.get(layer).ok_or_else(|| {
            GemmaError::Invalid(format!(
                "layer {layer} does not exist: the model has {} layers",
                self.blocks.len()
            ))
        })?;
        let residual = block
            .attention
            .o
            .forward(&z.to_dtype(self.dtype)?, self.kernels)?
            .to_dtype(DType::F32)?;
        Ok(residual.broadcast_mul(&block.post_attention_norm.gain.to_dtype(DType::F32)?)?)
    }

    /// Runs the model on `input_ids` `[batch, pos]` (u32; rows of equal length, no padding)
    /// with `hooks`. Returns the logits `[batch, pos, vocab]` in f32 (after the final
    /// soft-cap), or `None` when the hooks stop early.
    pub fn forward(&self, input_ids: &Tensor, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            GemmaError::Invalid(format!(
                "input ids must be [batch, pos], got {:?}",
                input_ids.dims()
            ))
        })?;
        if seq == 0 {
            return Err(GemmaError::Invalid("input ids are empty".into()));
        }
        hooks.validate(&self.config)?;
        let ids = input_ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let max_id = ids.max_all()?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            return Err(GemmaError::Invalid(format!(
                "token id {max_id} is outside the vocabulary (size {})",
                self.config.vocab_size
            )));
        }
        let context = self.context(seq)?;
        let d = self.config.hidden_size;
        let embedded = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, seq, d))?;
        // HF multiplies by √d_model cast to the activation dtype (rounded in bf16).
        let mut x = hooks.apply(HookPoint::Embed, (embedded * (d as f64).sqrt())?)?;
        let stop = hooks
            .stop_layer()
            .unwrap_or(self.config.num_layers)
            .min(self.config.num_layers);
        for (layer, block) in self.blocks.iter().enumerate().take(stop) {
            x = self.block_forward(block, layer, x, &context, hooks)?;
        }
        if hooks.stop_layer().is_some() {
            return Ok(None);
        }
        let normalized =
            hooks.apply(HookPoint::LnFinalNormalized, self.final_norm.normalize(&x)?)?;
        let final_hidden = self.final_norm.scale(&normalized, self.dtype)?;
        let logits = final_hidden
            .broadcast_matmul(&self.embed.t()?)?
            .to_dtype(DType::F32)?;
        Ok(Some(match self.config.final_logit_softcap {
            Some(cap) => softcap(&logits, cap)?,
            None => logits,
        }))
    }

    fn context(&self, seq: usize) -> Result<Context> {
        let c = &self.config;
        let (cos_global, sin_global) = rope_tables(c.rope_global, c.head_dim, seq, &self.device)?;
        let (cos_local, sin_local) = rope_tables(c.rope_local, c.head_dim, seq, &self.device)?;
        Ok(Context {
            cos_global,
            sin_global,
            cos_local,
            sin_local,
            mask_global: attention_mask(seq, None, &self.device)?,
            mask_local: attention_mask(seq, Some(c.sliding_window), &self.device)?,
        })
    }

    fn block_forward(
        &self,
        block: &Block,
        layer: usize,
        x: Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let resid_pre = hooks.apply(HookPoint::ResidPre(layer), x)?;
        let attn_in = block.input_norm.forward(&resid_pre)?;
        let z = self.attention(&block.attention, layer, &attn_in, ctx, hooks)?;
        let attn_out = block
            .post_attention_norm
            .forward(&block.attention.o.forward(&z, self.kernels)?)?;
        let attn_out = hooks.apply(HookPoint::AttnOut(layer), attn_out)?;
        let resid_mid = hooks.apply(HookPoint::ResidMid(layer), (resid_pre + attn_out)?)?;
        let normalized = hooks.apply(
            HookPoint::Ln2Normalized(layer),
            block.pre_feedforward_norm.normalize(&resid_mid)?,
        )?;
        let mlp_in = hooks.apply(
            HookPoint::MlpIn(layer),
            block.pre_feedforward_norm.scale(&normalized, self.dtype)?,
        )?;
        let hidden = activation::gelu_mul(
            self.kernels,
            &block.gate.forward(&mlp_in, self.kernels)?,
            &block.up.forward(&mlp_in, self.kernels)?,
        )?;
        let hidden = hooks.apply(HookPoint::MlpPost(layer), hidden)?;
        let mlp_out = block
            .post_feedforward_norm
            .forward(&block.down.forward(&hidden, self.kernels)?)?;
        let mlp_out = hooks.apply(HookPoint::MlpOut(layer), mlp_out)?;
        hooks.apply(HookPoint::ResidPost(layer), (resid_mid + mlp_out)?)
    }

    /// Returns z `[batch, pos, heads·head_dim]` (after the `attn.hook_z` hook).
    fn attention(
        &self,
        attn: &Attention,
        layer: usize,
        x: &Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, seq, _) = x.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((batch, seq, n, c.head_dim));
        let mut q = heads(attn.q.forward(x, self.kernels)?, c.num_heads)?;
        let mut k = heads(attn.k.forward(x, self.kernels)?, c.num_kv_heads)?;
        let v = heads(attn.v.forward(x, self.kernels)?, c.num_kv_heads)?;
        if let (Some(q_norm), Some(k_norm)) = (&attn.q_norm, &attn.k_norm) {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        let q = hooks.apply(HookPoint::AttnQ(layer), q)?;
        let k = hooks.apply(HookPoint::AttnK(layer), k)?;
        let v = hooks.apply(HookPoint::AttnV(layer), v)?;

        // Attention maths in f32 whatever the activation dtype: [batch, heads, pos, head_dim].
        let to_heads_first = |t: Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?)
        };
        let (cos, sin, mask) = match attn.kind {
            AttentionKind::Global => (&ctx.cos_global, &ctx.sin_global, &ctx.mask_global),
            AttentionKind::Sliding => (&ctx.cos_local, &ctx.sin_local, &ctx.mask_local),
        };
        let q = candle_nn::rotary_emb::rope(&to_heads_first(q)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&to_heads_first(k)?, cos, sin)?;
        let v = to_heads_first(v)?;
        let group = c.num_heads / c.num_kv_heads;
        let (k, v) = (repeat_kv(k, group)?, repeat_kv(v, group)?);
        let scores = (q.matmul(&k.t()?)? * c.query_pre_attn_scalar.powf(-0.5))?;
        let scores = match c.attn_logit_softcap {
            Some(cap) => softcap(&scores, cap)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let z = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq, c.num_heads * c.head_dim))?
            .to_dtype(self.dtype)?;
        hooks.apply(HookPoint::AttnZ(layer), z)
    }
}

/// cap·tanh(x / cap).
fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}

/// Repeats each key/value head `group` times: `[b, kv, t, d]` → `[b, kv·group, t, d]`.
fn repeat_kv(x: Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, group, t, d))?
        .reshape((b, kv * group, t, d))?)
}

/// (cos, sin) `[seq, head_dim/2]` in f32 for the non-interleaved (NeoX / HF) rotary layout.
fn rope_tables(
    rope: Rope,
    head_dim: usize,
    seq: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            (1.0 / rope.theta.powf(2.0 * i as f64 / head_dim as f64) / rope.linear_factor) as f32
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
    let positions = Tensor::arange(0u32, seq as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((seq, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive mask `[seq, seq]`: 0 where query i may see key j (j ≤ i, and i − j < window for a
/// sliding layer), −∞ elsewhere.
fn attention_mask(seq: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..seq).map(move |j| {
                let visible = j <= i && window.is_none_or(|w| i - j < w);
                if visible { 0.0 } else { f32::NEG_INFINITY }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (seq, seq), device)?)
}

/// Per-token next-token cross-entropy in nats, `[batch, pos − 1]`, from logits `[batch, pos, vocab]`.
pub fn next_token_loss(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let (batch, seq, _) = logits.dims3()?;
    if seq < 2 {
        return Err(GemmaError::Invalid(
            "next-token loss needs at least 2 positions".into(),
        ));
    }
    let log_probs = candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, seq - 1)?.to_dtype(DType::F32)?,
        D::Minus1,
    )?;
    let targets = input_ids
        .narrow(1, 1, seq - 1)?
        .to_dtype(DType::U32)?
        .to_device(logits.device())?
        .unsqueeze(2)?;
    Ok(log_probs
        .gather(&targets.contiguous()?, 2)?
        .squeeze(2)?
        .neg()?
        .reshape((batch, seq - 1))?)
}
