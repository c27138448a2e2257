//! Helpers shared by the sae-core integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every tensor of a fixture safetensors file.
pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).expect("fixture loads")
}

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use test_support::floats::{assert_close, max_abs, max_abs_diff};

/// A tensor of f32 values from a seeded generator, shape `dims`, normal(0, std).
pub fn seeded_normal(seed: u64, dims: &[usize], std: f32) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0f32, std).unwrap();
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}
