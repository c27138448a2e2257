//! Matryoshka training (Bussmann et al. 2025, Nabeshima 2024; one of Gemma Scope 2's recipe
//! changes): nested prefixes of the dictionary must each reconstruct the input on their own.
//!
//! With prefix widths w₁ < … < w_K < d_sae, the prefix reconstruction of width w is
//! x̂_w = Σ_{j < w} fⱼ·W_dec[j] + b_dec, computed from the *same* latents as the full
//! reconstruction (the architecture's selection — JumpReLU's thresholds, BatchTopK's batch
//! top-k — runs once over the whole dictionary). The term is Σₖ ‖x − x̂_{wₖ}‖², summed over
//! dimensions and averaged over tokens like the reconstruction term; with coefficient 1, the
//! loss weighs every prefix and the full dictionary equally, as Bussmann et al. do. Early
//! latents are pushed to carry the general directions, later ones to refine them, which
//! counters feature absorption and splitting.
//!
//! The term works with every architecture whose decoder is f·W_dec + b_dec (all of this
//! crate's) in the dense step, and the sparse step ([`crate::sparse`]) computes it and its gradients over the
//! active pairs only (equal to the dense step, test `sparse_step.rs`).

use candle_core::{DType, Tensor};

use crate::arch::{TrainOutput, TrainableSae};
use crate::penalty::{PenaltyContext, SparsityPenalty};
use crate::{Result, SaeError};

/// The Matryoshka reconstruction term over the prefixes of widths `widths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matryoshka {
    /// The inner prefix widths, strictly increasing, each in 1..d_sae (the full dictionary is
    /// the ordinary reconstruction term and is not listed).
    pub widths: Vec<usize>,
}

impl Matryoshka {
    /// Checks the widths against an SAE with `d_sae` latents: non-empty, strictly increasing,
    /// each at least 1 and below `d_sae`.
    pub fn check(widths: &[usize], d_sae: usize) -> Result<()> {
        let increasing = widths.windows(2).all(|pair| pair[0] < pair[1]);
        let in_range = widths.iter().all(|&w| w >= 1 && w < d_sae);
        if widths.is_empty() || !increasing || !in_range {
            return Err(SaeError::Config(format!(
                "Matryoshka prefix widths must be strictly increasing, each in 1..{d_sae} \
                 (the SAE's d_sae, which is the full reconstruction and is not listed); got {widths:?}"
            )));
        }
        Ok(())
    }

    /// The group of latent `latent`: how many prefix widths are ≤ it, so latent j belongs to
    /// the prefixes `group(j)..K` (0-based) and group K is the latents outside every prefix.
    pub fn group(widths: &[usize], latent: usize) -> usize {
        widths.partition_point(|&w| w <= latent)
    }

    /// Each prefix's reconstruction x̂_w, `[tokens, d_in]`, from the latents of a forward pass:
    /// the first w latents times the first w rows of W_dec, plus b_dec (the decoder must be the
    /// linear f·W_dec + b_dec, as every architecture here has). Costs Σ w/d_sae of a full
    /// decode, not one decode per prefix.
    pub fn prefix_reconstructions(
        &self,
        sae: &dyn TrainableSae,
        latents: &Tensor,
    ) -> Result<Vec<Tensor>> {
        Self::check(&self.widths, sae.d_sae())?;
        let w_dec = sae.decoder_var().as_tensor();
        // b_dec, with its gradient, as the decoder's output for no active latent.
        let b_dec = sae.decode(&Tensor::zeros(
            (1, sae.d_sae()),
            latents.dtype(),
            latents.device(),
        )?)?;
        self.widths
            .iter()
            .map(|&width| {
                let prefix = latents.narrow(1, 0, width)?.contiguous()?;
                Ok(prefix
                    .matmul(&w_dec.narrow(0, 0, width)?)?
                    .broadcast_add(&b_dec)?)
            })
            .collect()
    }
}

impl SparsityPenalty for Matryoshka {
    fn name(&self) -> &'static str {
        "matryoshka"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, out.target.device())?;
        for prefix in self.prefix_reconstructions(sae, &out.latents)? {
            total = (total + crate::loss::squared_error(&out.target, &prefix)?)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::Matryoshka;

    #[test]
    fn widths_are_checked_and_latents_grouped() {
        assert!(Matryoshka::check(&[4, 8], 16).is_ok());
        for bad in [&[][..], &[8, 4], &[4, 4], &[0, 4], &[4, 16]] {
            assert!(Matryoshka::check(bad, 16).is_err(), "{bad:?}");
        }
        let groups: Vec<usize> = (0..10).map(|j| Matryoshka::group(&[3, 6], j)).collect();
        assert_eq!(groups, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]);
    }
}
