//! `--device` and `--kernels`: where a command computes, and with which kernels.

use candle_core::{DType, Device};
use gemma_hooks::{Kernels, LoadedModel, load_model};

/// Where the model and the SAEs of a command compute. Every command that runs a model or
/// trains takes these options.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DeviceOptions {
    /// Where to compute: cpu, cuda[:N] or metal[:N] (the GPU backends need the `gemma-scope`
    /// crate's `cuda` or `metal` feature). Default: the CPU (`train` keeps its config's `device`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub device: Option<String>,
    /// `fastest` (the CPU's specialised kernels where they apply: OpenBLAS products, the
    /// sparsity-aware SAE step, fused activations, in-place Adam) or `generic` (candle's
    /// operations only: the path every device runs, shown on the CPU). Off the CPU only the
    /// generic path exists.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Kernels::Fastest))]
    pub kernels: Kernels,
    /// Spread the SAEs being trained over these devices, e.g. `cuda:0,cuda:1,cuda:2,cuda:3`:
    /// round-robin in config order, each device stepping its SAEs on a thread of its own, each
    /// batch read once (see `trainer::TrainConfig::sae_devices`). Default: every SAE on
    /// `--device`.
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub sae_devices: Vec<String>,
}

impl DeviceOptions {
    /// Generic kernels on `device` (`cpu`, `cuda:1`, …).
    pub fn generic(device: &str) -> Self {
        Self {
            device: Some(device.to_string()),
            kernels: Kernels::Generic,
            sae_devices: Vec::new(),
        }
    }

    /// The device's name as given, or `cpu`.
    pub fn name(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    /// The candle device; an error says why it is unknown or unavailable.
    pub fn device(&self) -> crate::Result<Device> {
        Ok(trainer::device_named(self.name())?)
    }

    /// The dtype a model computes in here: bf16 on a GPU (its tensor cores multiply bf16 with
    /// f32 accumulation; norms, softmax and the harvested activations stay f32), f32 on the
    /// CPU, where candle has no bf16 kernel (it widens bf16 to f32 to multiply) and the
    /// CPU-specialised kernels are f32 (what a CPU with AVX-512 BF16 or AMX would offer is
    /// [`sae_core::blas::bf16_support`]; no bf16 kernel uses it yet).
    pub fn model_dtype(&self) -> crate::Result<DType> {
        Ok(if self.device()?.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        })
    }

    /// Loads `model` (see [`load_model`]) onto the device in `dtype`, computing with these
    /// kernels.
    pub fn load_model(&self, model: &str, dtype: DType) -> crate::Result<LoadedModel> {
        let mut loaded = load_model(model, &self.device()?, dtype)?;
        loaded.model = loaded.model.with_kernels(self.kernels);
        Ok(loaded)
    }

    /// `config` set to train here: the device (when one was given), the SAEs' devices (when
    /// given) and the kernels.
    pub fn apply_to(&self, config: &mut trainer::TrainConfig) {
        if let Some(device) = &self.device {
            config.device = device.clone();
        }
        if !self.sae_devices.is_empty() {
            config.sae_devices = self.sae_devices.clone();
        }
        config.kernels = self.kernels;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_kernels_are_parsed_with_clear_errors() {
        let cpu = DeviceOptions::default();
        assert!(cpu.device().unwrap().is_cpu());
        assert_eq!(cpu.kernels, Kernels::Fastest);
        let error = |spec: &str| {
            DeviceOptions::generic(spec)
                .device()
                .unwrap_err()
                .to_string()
        };
        assert!(
            error("tpu").contains("unknown device `tpu`"),
            "{}",
            error("tpu")
        );
        assert!(
            error("cuda:x").contains("not a number"),
            "{}",
            error("cuda:x")
        );
        assert!(error("cpu:1").contains("no ordinals"), "{}", error("cpu:1"));
        assert_eq!(cpu.model_dtype().unwrap(), DType::F32);
        assert_eq!("generic".parse::<Kernels>().unwrap(), Kernels::Generic);
        assert!(
            "fast"
                .parse::<Kernels>()
                .unwrap_err()
                .contains("`fastest` or `generic`")
        );
        let mut config: trainer::TrainConfig = serde_json::from_value(serde_json::json!({
            "device": "cuda",
            "saes": [],
        }))
        .unwrap();
        DeviceOptions::default().apply_to(&mut config);
        assert_eq!(config.device, "cuda", "no --device keeps the config's");
        DeviceOptions::generic("cpu").apply_to(&mut config);
        assert_eq!(
            (config.device.as_str(), config.kernels),
            ("cpu", Kernels::Generic)
        );
    }
}
