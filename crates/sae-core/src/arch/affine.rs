//! The encoder and decoder every architecture shares.

use candle_core::{DType, Tensor, Var};

use crate::{Result, SaeError};

/// The affine maps of an SAE: π = (x − b_dec·[pre-encoder bias])·W_enc + b_enc and
/// x̂ = f·W_dec + b_dec. Architectures differ only in what they do between the two.
#[derive(Debug, Clone)]
pub struct AffineSae {
    /// `W_enc`, `[d_in, d_sae]`.
    pub w_enc: Var,
    /// `b_enc`, `[d_sae]` (`b_gate` for a Gated SAE).
    pub b_enc: Var,
    /// `W_dec`, `[d_sae, d_in]`.
    pub w_dec: Var,
    /// `b_dec`, `[d_in]`.
    pub b_dec: Var,
    /// Whether the encoder sees x − b_dec.
    pub apply_b_dec_to_input: bool,
}

/// Checks that `tensor` has exactly `expected` dims, naming the array in the error.
pub fn expect_shape(tensor: &Tensor, array: &str, expected: &[usize]) -> Result<()> {
    if tensor.dims() != expected {
        return Err(SaeError::Shape {
            path: None,
            array: array.to_string(),
            expected: format!("{expected:?}"),
            got: tensor.dims().to_vec(),
        });
    }
    Ok(())
}

/// The dtype parameter arithmetic (folding) is done in: f64 stays f64, the rest use f32.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Replaces a variable's value by `f(value)` computed in [`compute_dtype`], cast back.
pub(crate) fn update_f32(var: &Var, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<()> {
    let dtype = var.dtype();
    let value = f(&var.as_tensor().to_dtype(compute_dtype(dtype))?)?;
    var.set(&value.to_dtype(dtype)?)?;
    Ok(())
}

impl AffineSae {
    /// Wraps the four tensors as variables after checking that their shapes agree.
    pub fn new(
        w_enc: Tensor,
        b_enc: Tensor,
        w_dec: Tensor,
        b_dec: Tensor,
        apply_b_dec_to_input: bool,
    ) -> Result<Self> {
        let (d_in, d_sae) = w_enc.dims2().map_err(|_| SaeError::Shape {
            path: None,
            array: "W_enc".into(),
            expected: "[d_in, d_sae]".into(),
            got: w_enc.dims().to_vec(),
        })?;
        expect_shape(&b_enc, "b_enc", &[d_sae])?;
        expect_shape(&w_dec, "W_dec", &[d_sae, d_in])?;
        expect_shape(&b_dec, "b_dec", &[d_in])?;
        Ok(Self {
            w_enc: Var::from_tensor(&w_enc)?,
            b_enc: Var::from_tensor(&b_enc)?,
            w_dec: Var::from_tensor(&w_dec)?,
            b_dec: Var::from_tensor(&b_dec)?,
            apply_b_dec_to_input,
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[0]
    }

    /// Number of latents.
    pub fn d_sae(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// Checks that `x` is `[tokens, d_in]`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        match x.dims() {
            [_, d] if *d == self.d_in() => Ok(()),
            got => Err(SaeError::Shape {
                path: None,
                array: "input".into(),
                expected: format!("[tokens, d_in = {}]", self.d_in()),
                got: got.to_vec(),
            }),
        }
    }

    /// What the encoder sees: x, or x − b_dec with the pre-encoder bias.
    pub fn encoder_input(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        if self.apply_b_dec_to_input {
            Ok(x.broadcast_sub(self.b_dec.as_tensor())?)
        } else {
            Ok(x.clone())
        }
    }

    /// π = encoder_input(x)·W_enc + b_enc.
    pub fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        let input = self.encoder_input(x)?;
        Ok(input
            .matmul(self.w_enc.as_tensor())?
            .broadcast_add(self.b_enc.as_tensor())?)
    }

    /// The training forward of an SAE built on this affine part: `latents` (computed by the
    /// architecture from `pre_activations`) decoded, with the pass's tensors for the loss.
    pub fn train_output(
        &self,
        x: &Tensor,
        pre_activations: Tensor,
        latents: Tensor,
    ) -> Result<super::TrainOutput> {
        let reconstruction = self.decode(&latents)?;
        Ok(super::TrainOutput::new(
            x,
            pre_activations,
            latents,
            reconstruction,
        ))
    }

    /// x̂ = f·W_dec + b_dec.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        match latents.dims() {
            [_, m] if *m == self.d_sae() => {}
            got => {
                return Err(SaeError::Shape {
                    path: None,
                    array: "latents".into(),
                    expected: format!("[tokens, d_sae = {}]", self.d_sae()),
                    got: got.to_vec(),
                });
            }
        }
        Ok(latents
            .matmul(self.w_dec.as_tensor())?
            .broadcast_add(self.b_dec.as_tensor())?)
    }

    /// b_dec·W for an encoder matrix W `[d_in, d_sae]`, in [`compute_dtype`]: what the
    /// pre-encoder bias contributes to the pre-activations.
    pub(crate) fn pre_encoder_shift(&self, w: &Tensor) -> Result<Tensor> {
        let dtype = compute_dtype(w.dtype());
        let b_dec = self.b_dec.as_tensor().to_dtype(dtype)?.unsqueeze(0)?;
        Ok(b_dec.matmul(&w.to_dtype(dtype)?)?.squeeze(0)?)
    }

    /// Folds a bias of the encoder side (`b_enc`, `b_gate`, `b_mag`) whose matrix is `w`:
    /// b′ = C·b − C·b_dec·W when the pre-encoder bias is on, C·b otherwise.
    pub(crate) fn fold_encoder_bias(&self, bias: &Var, w: &Tensor, c: f64) -> Result<()> {
        let shift = if self.apply_b_dec_to_input {
            Some(self.pre_encoder_shift(w)?)
        } else {
            None
        };
        update_f32(bias, |b| {
            let b = match &shift {
                Some(shift) => (b - shift)?,
                None => b.clone(),
            };
            Ok(b.affine(c, 0.0)?)
        })
    }

    /// The inverse of [`AffineSae::fold_encoder_bias`]; call after `b_dec` was unfolded.
    pub(crate) fn unfold_encoder_bias(
        &self,
        bias: &Var,
        w: &Tensor,
        c: f64,
        pre_encoder_bias: bool,
    ) -> Result<()> {
        let shift = if pre_encoder_bias {
            Some(self.pre_encoder_shift(w)?)
        } else {
            None
        };
        update_f32(bias, |b| {
            let b = b.affine(1.0 / c, 0.0)?;
            Ok(match &shift {
                Some(shift) => (b + shift)?,
                None => b,
            })
        })
    }

    /// Folds C and the pre-encoder bias into `b_enc` and `b_dec` (W_enc and W_dec unchanged).
    pub fn fold_scaling(&mut self, c: f64) -> Result<()> {
        check_scale(c)?;
        self.fold_encoder_bias(&self.b_enc, self.w_enc.as_tensor(), c)?;
        update_f32(&self.b_dec, |b| Ok(b.affine(c, 0.0)?))?;
        self.apply_b_dec_to_input = false;
        Ok(())
    }

    /// Multiplies the decoder's output by `factor` (`W_dec` and `b_dec`): for a folded SAE,
    /// whose `b_dec` is no longer subtracted from its input.
    pub(crate) fn scale_output(&self, factor: f64) -> Result<()> {
        check_scale(factor)?;
        if self.apply_b_dec_to_input {
            return Err(SaeError::Config(
                "cannot scale the output of an SAE that applies b_dec to its input (fold it first)"
                    .into(),
            ));
        }
        update_f32(&self.w_dec, |w| Ok(w.affine(factor, 0.0)?))?;
        update_f32(&self.b_dec, |b| Ok(b.affine(factor, 0.0)?))
    }

    /// The inverse of [`AffineSae::fold_scaling`].
    pub fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
        check_scale(c)?;
        if self.apply_b_dec_to_input {
            return Err(SaeError::Config(
                "cannot unfold an SAE that still applies b_dec to its input (it is not folded)"
                    .into(),
            ));
        }
        update_f32(&self.b_dec, |b| Ok(b.affine(1.0 / c, 0.0)?))?;
        self.unfold_encoder_bias(&self.b_enc, self.w_enc.as_tensor(), c, pre_encoder_bias)?;
        self.apply_b_dec_to_input = pre_encoder_bias;
        Ok(())
    }

    /// The four tensors under their SAELens names, `b_enc` named as given.
    pub fn tensors(&self, b_enc_name: &'static str) -> Vec<(&'static str, Tensor)> {
        vec![
            ("W_enc", self.w_enc.as_tensor().clone()),
            (b_enc_name, self.b_enc.as_tensor().clone()),
            ("W_dec", self.w_dec.as_tensor().clone()),
            ("b_dec", self.b_dec.as_tensor().clone()),
        ]
    }

    /// The four variables under their names, `b_enc` named as given.
    pub fn vars(&self, b_enc_name: &'static str) -> Vec<(&'static str, &Var)> {
        vec![
            ("W_enc", &self.w_enc),
            (b_enc_name, &self.b_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ]
    }
}

/// C must be a positive finite number.
pub(crate) fn check_scale(c: f64) -> Result<()> {
    if c.is_finite() && c > 0.0 {
        Ok(())
    } else {
        Err(SaeError::Config(format!(
            "the scaling constant C must be positive and finite, got {c}"
        )))
    }
}
