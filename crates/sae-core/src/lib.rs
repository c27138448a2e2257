//! # sae-core: the maths of sparse autoencoders, exact to the papers
//!
//! Five architectures behind one small [`Sae`] trait ([`JumpReluSae`], [`TopKSae`],
//! [`BatchTopKSae`], [`ReluSae`], [`GatedSae`]) and JumpReLU transcoders
//! ([`JumpReluTranscoder`], with or without the affine skip) and cross-layer transcoders
//! ([`Clt`], latents of each layer writing to that and every later layer's MLP output); sparsity penalties behind
//! [`SparsityPenalty`] ([`L0Ste`], [`QuadraticL0`], [`L1`], [`DecoderNormL1`], [`AuxK`],
//! [`PreActivationLoss`], and [`Matryoshka`]'s nested-prefix reconstruction) that combine with
//! any architecture providing what they need; the straight-through estimators of the JumpReLU
//! paper ([`ste`]), Gemma Scope initialisation ([`init`](mod@init)), the decoder unit-norm
//! constraint ([`constraint`]), the input scaling constant C with folding ([`scaling`],
//! [`Sae::fold_scaling`]), and the file formats ([`format`]): Gemma Scope `params.npz`, Gemma
//! Scope 2 folders ([`format::gemma_scope_2`]) and the SAELens directory format, which is this
//! project's own. The training step picks its own path ([`step::step`]): the sparsity-aware
//! step over the active (token, latent) pairs or as products, its device-generic form, or
//! candle's autograd. Architectures defined elsewhere load from files once their loader is
//! registered ([`arch::register_loader`]).
//!
//! Everything runs on candle tensors on any [`candle_core::Device`], in f32 or bf16.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use sae_core::{Architecture, InitConfig, L0Ste, PenaltyContext, SaeShape, WeightedPenalty};
//!
//! # fn main() -> sae_core::Result<()> {
//! let shape = SaeShape { d_in: 16, d_sae: 64, dtype: DType::F32, device: Device::Cpu };
//! let sae = sae_core::init(Architecture::JumpRelu, &shape, &InitConfig::default())?;
//! let x = Tensor::randn(0f32, 1.0, (8, 16), &Device::Cpu)?;
//!
//! // Inference: latents and reconstruction.
//! let (latents, reconstruction) = sae.forward(&x)?;
//! assert_eq!(latents.dims(), &[8, 64]);
//! assert_eq!(reconstruction.dims(), &[8, 16]);
//!
//! // Training: reconstruction error + λ·L0 with the straight-through estimator.
//! let l0 = L0Ste::default();
//! let penalties = [WeightedPenalty { penalty: &l0, coefficient: 1e-3 }];
//! let (_, loss) = sae_core::training_loss(sae.as_ref(), &x, &penalties, &PenaltyContext::default())?;
//! let grads = loss.total.backward()?;
//! for (name, var) in sae.vars() {
//!     assert!(grads.get(var.as_tensor()).is_some(), "{name} gets a gradient");
//! }
//!
//! // Files: SAELens directory format (opens in SAELens) and Gemma Scope params.npz.
//! let dir = tempfile::tempdir().map_err(|e| sae_core::SaeError::io("tmp", e))?;
//! sae_core::format::save_saelens(sae.as_ref(), &dir.path().join("sae"), Default::default(), None)?;
//! let loaded = sae_core::format::load(&dir.path().join("sae"), &Device::Cpu, DType::F32)?;
//! assert_eq!(loaded.architecture(), Architecture::JumpRelu);
//! # Ok(())
//! # }
//! ```

pub mod arch;
pub mod clt;
/// The f32 products on the system's OpenBLAS ([`cpu_blas`]), as the sparse step uses them.
pub use cpu_blas as blas;
pub mod constraint;
mod error;
pub mod format;
pub mod init;
pub mod kernels;
pub mod loss;
pub mod matryoshka;
pub mod penalty;
pub mod resample;
pub mod scaling;
pub mod sparse;
pub mod ste;
pub mod step;
pub mod topk;

pub use arch::{
    AffineSae, Architecture, ArchitectureName, BatchTopKSae, GatedSae, JumpReluSae,
    JumpReluTranscoder, ReluSae, Sae, SaeShape, ThresholdOptions, ThresholdParametrisation,
    TopKSae, TrainOutput, TrainableSae, init,
};
pub use clt::{Clt, CltPenalty, CltShape, clt_training_loss};
pub use error::{Result, SaeError};
pub use init::InitConfig;
pub use loss::{LossTerms, WeightedPenalty, training_loss, training_loss_toward};
pub use matryoshka::Matryoshka;
pub use penalty::{
    AuxK, DecoderNormL1, L0Ste, L1, PenaltyContext, PreActivationLoss, QuadraticL0, SparsityPenalty,
};
pub use ste::SteConfig;
