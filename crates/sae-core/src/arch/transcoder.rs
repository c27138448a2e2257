//! JumpReLU transcoders (Dunefsky et al. 2024; Gemma Scope's and Gemma Scope 2's MLP
//! transcoders): the latents of one hook predict the activation of another, ŷ = f(x)·W_dec +
//! b_dec (+ x·W_skip with the affine skip connection of Gemma Scope 2's "affine" transcoders).

use candle_core::{Tensor, Var};

use super::affine::{expect_shape, update_f32};
use super::{Architecture, JumpReluSae, Sae, TrainOutput, TrainableSae};
use crate::{Result, SaeError};

/// A JumpReLU transcoder: JumpReLU latents of the input hook, decoded into the output hook,
/// optionally plus an affine skip term x·W_skip.
///
/// [`Sae::decode`] is the latents' part f·W_dec + b_dec alone (as SAELens's `decode`);
/// [`Sae::forward`] and the training forward add the skip term, so they give the prediction
/// of the output hook. Input and output widths must be equal (they are for every Gemma Scope
/// transcoder: both are the model width).
#[derive(Debug, Clone)]
pub struct JumpReluTranscoder {
    /// The JumpReLU encoder, decoder and thresholds.
    pub sae: JumpReluSae,
    /// W_skip `[d_in, d_out]` (row-vector convention: the term is x·W_skip), if any.
    skip: Option<Var>,
}

impl JumpReluTranscoder {
    /// A transcoder from a JumpReLU SAE and an optional skip matrix `[d_in, d_out]` (x·W_skip,
    /// the layout of Gemma Scope 2's `affine_skip_connection`).
    pub fn new(sae: JumpReluSae, skip: Option<Tensor>) -> Result<Self> {
        let d_in = sae.d_in();
        let skip = match skip {
            Some(skip) => {
                if skip.rank() == 2 && skip.dim(0)? == d_in && skip.dim(1)? != d_in {
                    return Err(SaeError::Config(format!(
                        "transcoders whose output width ({}) differs from their input width \
                         ({d_in}) are not supported",
                        skip.dim(1)?
                    )));
                }
                expect_shape(&skip, "W_skip", &[d_in, d_in])?;
                Some(Var::from_tensor(&skip)?)
            }
            None => None,
        };
        Ok(Self { sae, skip })
    }

    /// W_skip `[d_in, d_out]`, if the transcoder has the affine skip connection.
    pub fn skip(&self) -> Option<&Tensor> {
        self.skip.as_ref().map(Var::as_tensor)
    }

    /// The decoded latents plus the skip term x·W_skip.
    fn predict(&self, x: &Tensor, decoded: Tensor) -> Result<Tensor> {
        match &self.skip {
            Some(skip) => Ok((decoded + x.matmul(skip.as_tensor())?)?),
            None => Ok(decoded),
        }
    }
}

impl Sae for JumpReluTranscoder {
    fn architecture(&self) -> Architecture {
        Architecture::JumpReluTranscoder {
            skip: self.skip.is_some(),
        }
    }
    fn d_in(&self) -> usize {
        self.sae.d_in()
    }
    fn d_sae(&self) -> usize {
        self.sae.d_sae()
    }
    fn apply_b_dec_to_input(&self) -> bool {
        self.sae.apply_b_dec_to_input()
    }
    fn pre_activations(&self, x: &Tensor) -> Result<Tensor> {
        self.sae.pre_activations(x)
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.sae.encode(x)
    }
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.sae.decode(latents)
    }
    fn decoder_weight(&self) -> &Tensor {
        self.sae.decoder_weight()
    }
    /// The JumpReLU tensors and, with the skip connection, `W_skip` in SAELens's layout
    /// `[d_out, d_in]` (its term is x·W_skipᵀ).
    fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let mut tensors = self.sae.tensors()?;
        if let Some(skip) = &self.skip {
            tensors.push(("W_skip", skip.as_tensor().t()?.contiguous()?));
        }
        Ok(tensors)
    }
    /// Input and output share the scale C, so the linear skip term is unchanged and the
    /// JumpReLU part folds as an SAE does.
    fn fold_scaling(&mut self, c: f64) -> Result<()> {
        self.sae.fold_scaling(c)
    }
    fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
        self.sae.unfold_scaling(c, pre_encoder_bias)
    }
    /// Folds C_in as [`Sae::fold_scaling`] does, then multiplies every term of the prediction
    /// (`W_dec`, `b_dec`, `W_skip`) by C_out / C_in: the folded transcoder predicts C_out × what
    /// it predicted of x / C_in.
    fn fold_scalings(&mut self, c_in: f64, c_out: f64) -> Result<()> {
        self.sae.fold_scaling(c_in)?;
        let ratio = c_out / c_in;
        self.sae.affine.scale_output(ratio)?;
        if let Some(skip) = &self.skip {
            update_f32(skip, |w| Ok(w.affine(ratio, 0.0)?))?;
        }
        Ok(())
    }
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let latents = self.encode(x)?;
        let decoded = self.decode(&latents)?;
        Ok((latents, self.predict(x, decoded)?))
    }
}

impl TrainableSae for JumpReluTranscoder {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        let mut vars = self.sae.vars();
        if let Some(skip) = &self.skip {
            vars.push(("W_skip", skip));
        }
        vars
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let mut out = self.sae.train_forward(x)?;
        out.reconstruction = self.predict(x, out.reconstruction)?;
        Ok(out)
    }
    fn threshold(&self) -> Result<Option<Tensor>> {
        self.sae.threshold()
    }
    fn set_threshold(&self, theta: &Tensor) -> Result<bool> {
        self.sae.set_threshold(theta)
    }
    fn project_parameters(&self) -> Result<()> {
        self.sae.project_parameters()
    }
    fn decoder_var(&self) -> &Var {
        self.sae.decoder_var()
    }
}
