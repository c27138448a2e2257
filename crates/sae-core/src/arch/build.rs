//! Building any architecture from named tensors (files) or from scratch (initialisation).

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};

use super::{
    AffineSae, Architecture, ArchitectureName, BatchTopKSae, GatedSae, JumpReluSae,
    JumpReluTranscoder, ReluSae, SaeShape, ThresholdParametrisation, TopKSae, TrainableSae,
};
use crate::init::{InitConfig, gemma_scope_decoder};
use crate::ste::SteConfig;
use crate::{Result, SaeError};

/// Arrays by name, as read from a file; [`NamedTensors::take`] names the file in its errors.
#[derive(Debug, Default)]
pub struct NamedTensors {
    source: Option<PathBuf>,
    map: BTreeMap<String, Tensor>,
}

impl NamedTensors {
    /// Wraps `map`, read from `source` (used in error messages).
    pub fn new(source: Option<PathBuf>, map: BTreeMap<String, Tensor>) -> Self {
        Self { source, map }
    }

    /// Removes and returns the array `name`, or an error naming the file and the array.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.map.remove(name).ok_or_else(|| {
            self.error(format!(
                "missing array `{name}` (present: {})",
                self.map.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Fails if arrays are left that nothing took: an unknown array means the file is not
    /// what its configuration says, and dropping it silently would give a wrong SAE.
    pub fn finish(self) -> Result<()> {
        if self.map.is_empty() {
            Ok(())
        } else {
            let names = self.map.keys().cloned().collect::<Vec<_>>().join(", ");
            Err(self.error(format!(
                "unexpected array(s) for this architecture: {names}"
            )))
        }
    }

    fn error(&self, detail: String) -> SaeError {
        match &self.source {
            Some(path) => SaeError::format(path.clone(), detail),
            None => SaeError::Config(detail),
        }
    }

    /// Runs `build` on the arrays, then checks that it took every array; errors name the file.
    pub fn build<T>(mut self, build: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let built = build(&mut self).map_err(|e| self.locate(e))?;
        self.finish()?;
        Ok(built)
    }

    /// Attaches this map's file to a shape error.
    fn locate(&self, error: SaeError) -> SaeError {
        match (error, &self.source) {
            (
                SaeError::Shape {
                    path: None,
                    array,
                    expected,
                    got,
                },
                Some(path),
            ) => SaeError::Shape {
                path: Some(path.clone()),
                array,
                expected,
                got,
            },
            (error, _) => error,
        }
    }
}

/// Options of the JumpReLU threshold that files do not record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThresholdOptions {
    /// How θ is trained.
    pub parametrisation: ThresholdParametrisation,
    /// Straight-through estimator bandwidth.
    pub ste: SteConfig,
}

/// Builds an SAE of `architecture` from its inference-form arrays (SAELens names).
///
/// `threshold` of a BatchTopK SAE must be uniform (its global threshold, as SAELens stores it).
pub fn from_tensors(
    architecture: Architecture,
    tensors: NamedTensors,
    apply_b_dec_to_input: bool,
    options: ThresholdOptions,
) -> Result<Box<dyn TrainableSae>> {
    tensors.build(|tensors| {
        if let Architecture::Registered { name } = architecture {
            return super::registry::load_registered(name, tensors, apply_b_dec_to_input);
        }
        let b_enc_name = if architecture == Architecture::Gated {
            "b_gate"
        } else {
            "b_enc"
        };
        let affine = take_affine(tensors, b_enc_name, apply_b_dec_to_input)?;
        let jumprelu = |tensors: &mut NamedTensors, affine| {
            JumpReluSae::new(
                affine,
                tensors.take("threshold")?,
                options.parametrisation,
                options.ste,
            )
        };
        let sae: Box<dyn TrainableSae> = match architecture {
            Architecture::JumpRelu => Box::new(jumprelu(tensors, affine)?),
            Architecture::TopK { k } => Box::new(TopKSae::new(affine, k)?),
            Architecture::BatchTopK { k } => {
                let threshold = uniform_value(&tensors.take("threshold")?)
                    .map_err(|detail| tensors.error(format!("array `threshold`: {detail}")))?;
                Box::new(BatchTopKSae::new(affine, k, Some(threshold))?)
            }
            Architecture::Relu => Box::new(ReluSae::new(affine)),
            Architecture::Gated => Box::new(GatedSae::new(
                affine,
                tensors.take("r_mag")?,
                tensors.take("b_mag")?,
            )?),
            Architecture::JumpReluTranscoder { skip } => {
                let sae = jumprelu(tensors, affine)?;
                // Files hold SAELens's W_skip [d_out, d_in] (x·W_skipᵀ).
                let skip = match skip {
                    true => Some(tensors.take("W_skip")?.t()?.contiguous()?),
                    false => None,
                };
                Box::new(JumpReluTranscoder::new(sae, skip)?)
            }
            // Loaded by its registered loader above.
            Architecture::Registered { name } => return Err(not_built_here(name)),
        };
        Ok(sae)
    })
}

/// Takes `W_enc`, the encoder bias named `b_enc_name`, `W_dec` and `b_dec`.
pub(crate) fn take_affine(
    tensors: &mut NamedTensors,
    b_enc_name: &str,
    apply_b_dec_to_input: bool,
) -> Result<AffineSae> {
    AffineSae::new(
        tensors.take("W_enc")?,
        tensors.take(b_enc_name)?,
        tensors.take("W_dec")?,
        tensors.take("b_dec")?,
        apply_b_dec_to_input,
    )
}

/// The single value of a tensor whose entries are all equal.
fn uniform_value(t: &Tensor) -> std::result::Result<f64, String> {
    let values = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all()?.to_vec1::<f64>())
        .map_err(|e| e.to_string())?;
    let first = *values.first().ok_or("is empty")?;
    if values.iter().any(|v| *v != first) {
        return Err("a BatchTopK threshold must hold one global value in every entry".into());
    }
    Ok(first)
}

/// A new SAE of `architecture` with the Gemma Scope initialisation (see [`crate::init`]).
pub fn init(
    architecture: Architecture,
    shape: &SaeShape,
    init: &InitConfig,
) -> Result<Box<dyn TrainableSae>> {
    let (w_enc, w_dec) = gemma_scope_decoder(shape, init)?;
    let zeros_sae = || Tensor::zeros(shape.d_sae, shape.dtype, &shape.device);
    let affine = AffineSae::new(
        w_enc,
        zeros_sae()?,
        w_dec,
        Tensor::zeros(shape.d_in, shape.dtype, &shape.device)?,
        init.pre_encoder_bias,
    )?;
    let jumprelu = |affine| {
        JumpReluSae::new(
            affine,
            Tensor::full(init.threshold as f32, shape.d_sae, &shape.device)?
                .to_dtype(shape.dtype)?,
            init.threshold_options.parametrisation,
            init.threshold_options.ste,
        )
    };
    let sae: Box<dyn TrainableSae> = match architecture {
        Architecture::JumpRelu => Box::new(jumprelu(affine)?),
        Architecture::TopK { k } => Box::new(TopKSae::new(affine, k)?),
        Architecture::BatchTopK { k } => Box::new(BatchTopKSae::new(affine, k, None)?),
        Architecture::Relu => Box::new(ReluSae::new(affine)),
        Architecture::Gated => Box::new(GatedSae::new(affine, zeros_sae()?, zeros_sae()?)?),
        Architecture::JumpReluTranscoder { skip } => {
            let sae = jumprelu(affine)?;
            let skip = match skip {
                true => Some(Tensor::zeros(
                    (shape.d_in, shape.d_in),
                    shape.dtype,
                    &shape.device,
                )?),
                false => None,
            };
            Box::new(JumpReluTranscoder::new(sae, skip)?)
        }
        Architecture::Registered { name } => return Err(not_built_here(name)),
    };
    Ok(sae)
}

/// The error for a registered architecture asked of this crate's builders.
fn not_built_here(name: ArchitectureName) -> SaeError {
    SaeError::Config(format!(
        "`{name}` is a registered architecture: the registry it was registered in builds it \
         (trainer::Registry), not sae_core's builders"
    ))
}
