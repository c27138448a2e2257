//! Gated SAE (Rajamanoharan et al. 2024a) with the r_mag re-parametrisation.

use candle_core::{Tensor, Var};

use super::affine::{AffineSae, expect_shape};
use super::{Architecture, Sae, TrainOutput, TrainableSae};
use crate::{Result, ste};

/// A Gated SAE.
///
/// With x̃ = x − b_dec (pre-encoder bias): π_gate = x̃·W_enc + b_gate decides *which* latents
/// are on, π_mag = x̃·(W_enc ⊙ exp(r_mag)) + b_mag *how much*, and f = H(π_gate)·ReLU(π_mag).
/// The gate path shares W_enc with the magnitude path up to the per-latent scale exp(r_mag).
///
/// Training: the L1 penalty acts on ReLU(π_gate) (see [`TrainOutput::sparsity_input`]) and
/// [`TrainableSae::auxiliary_loss`] adds ‖x − (ReLU(π_gate)·W_dec + b_dec)‖² with the decoder
/// frozen, which is what trains the gate.
#[derive(Debug, Clone)]
pub struct GatedSae {
    /// Encoder (gate path: `b_enc` is `b_gate`) and decoder.
    pub affine: AffineSae,
    /// `r_mag`, `[d_sae]`: log-scale of the magnitude path's encoder.
    pub r_mag: Var,
    /// `b_mag`, `[d_sae]`: bias of the magnitude path.
    pub b_mag: Var,
}

impl GatedSae {
    /// Builds the SAE from its affine part (whose `b_enc` is `b_gate`), `r_mag` and `b_mag`.
    pub fn new(affine: AffineSae, r_mag: Tensor, b_mag: Tensor) -> Result<Self> {
        expect_shape(&r_mag, "r_mag", &[affine.d_sae()])?;
        expect_shape(&b_mag, "b_mag", &[affine.d_sae()])?;
        Ok(Self {
            affine,
            r_mag: Var::from_tensor(&r_mag)?,
            b_mag: Var::from_tensor(&b_mag)?,
        })
    }

    /// W_mag = W_enc ⊙ exp(r_mag), `[d_in, d_sae]`.
    pub fn w_mag(&self) -> Result<Tensor> {
        Ok(self
            .affine
            .w_enc
            .as_tensor()
            .broadcast_mul(&self.r_mag.as_tensor().exp()?)?)
    }

    /// (π_gate, π_mag).
    fn gate_and_magnitude(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let projected = self
            .affine
            .encoder_input(x)?
            .matmul(self.affine.w_enc.as_tensor())?;
        let gate = projected.broadcast_add(self.affine.b_enc.as_tensor())?;
        let magnitude = projected
            .broadcast_mul(&self.r_mag.as_tensor().exp()?)?
            .broadcast_add(self.b_mag.as_tensor())?;
        Ok((gate, magnitude))
    }

    fn latents_of(gate: &Tensor, magnitude: &Tensor) -> Result<Tensor> {
        let open = ste::heaviside(gate, &Tensor::zeros((), gate.dtype(), gate.device())?)?;
        Ok((magnitude.relu()? * open)?)
    }
}

impl Sae for GatedSae {
    fn architecture(&self) -> Architecture {
        Architecture::Gated
    }
    super::delegate_to_affine!();
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, magnitude) = self.gate_and_magnitude(x)?;
        Self::latents_of(&gate, &magnitude)
    }
    fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let mut tensors = self.affine.tensors("b_gate");
        tensors.push(("r_mag", self.r_mag.as_tensor().clone()));
        tensors.push(("b_mag", self.b_mag.as_tensor().clone()));
        Ok(tensors)
    }
    fn fold_scaling(&mut self, c: f64) -> Result<()> {
        // b_mag first: folding it needs b_dec before it is scaled.
        self.affine
            .fold_encoder_bias(&self.b_mag, &self.w_mag()?, c)?;
        self.affine.fold_scaling(c)
    }
    fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
        self.affine.unfold_scaling(c, pre_encoder_bias)?;
        self.affine
            .unfold_encoder_bias(&self.b_mag, &self.w_mag()?, c, pre_encoder_bias)
    }
}

impl TrainableSae for GatedSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        let mut vars = self.affine.vars("b_gate");
        vars.push(("r_mag", &self.r_mag));
        vars.push(("b_mag", &self.b_mag));
        vars
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let (gate, magnitude) = self.gate_and_magnitude(x)?;
        let latents = Self::latents_of(&gate, &magnitude)?;
        let reconstruction = self.affine.decode(&latents)?;
        Ok(TrainOutput {
            input: x.clone(),
            target: x.clone(),
            sparsity_input: gate.relu()?,
            pre_activations: gate,
            latents,
            reconstruction,
        })
    }
    fn auxiliary_loss(&self, out: &TrainOutput) -> Result<Option<Tensor>> {
        let frozen = out
            .sparsity_input
            .matmul(&self.affine.w_dec.as_tensor().detach())?
            .broadcast_add(&self.affine.b_dec.as_tensor().detach())?;
        Ok(Some(crate::loss::squared_error(&out.target, &frozen)?))
    }
    fn decoder_var(&self) -> &Var {
        &self.affine.w_dec
    }
}
