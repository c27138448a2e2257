//! Resampling dead latents: what a resampled latent becomes, that the others stay bit-identical,
//! and that bad requests are refused without touching the SAE.

mod common;

use candle_core::{Device, Tensor};
use sae_core::arch::{AffineSae, GatedSae, JumpReluSae, ReluSae, ThresholdParametrisation};
use sae_core::resample::{ResampleRequest, Resampled};
use sae_core::{Sae, SteConfig, TrainableSae};

use common::seeded_normal;

const D_IN: usize = 16;
const D_SAE: usize = 40;

fn affine(pre_encoder_bias: bool) -> AffineSae {
    AffineSae::new(
        seeded_normal(1, &[D_IN, D_SAE], 0.3),
        seeded_normal(2, &[D_SAE], 0.05),
        seeded_normal(3, &[D_SAE, D_IN], 0.3),
        seeded_normal(4, &[D_IN], 0.5),
        pre_encoder_bias,
    )
    .unwrap()
}

fn jumprelu(pre_encoder_bias: bool) -> JumpReluSae {
    jumprelu_with_thresholds(pre_encoder_bias, 0.01)
}

/// Thresholds `unit`·(1 + i): the median of the kept ones is easy to state.
fn jumprelu_with_thresholds(pre_encoder_bias: bool, unit: f32) -> JumpReluSae {
    let theta: Vec<f32> = (0..D_SAE).map(|i| unit * (1 + i) as f32).collect();
    JumpReluSae::new(
        affine(pre_encoder_bias),
        Tensor::new(theta, &Device::Cpu).unwrap(),
        ThresholdParametrisation::Raw,
        SteConfig { bandwidth: 0.001 },
    )
    .unwrap()
}

/// The SAE's pre-activations and latents on `inputs`, as rows.
fn pre_activations_and_latents(
    sae: &JumpReluSae,
    inputs: &Tensor,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let pre = sae
        .pre_activations(inputs)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let latents = sae.encode(inputs).unwrap().to_vec2::<f32>().unwrap();
    (pre, latents)
}

fn values(sae: &dyn TrainableSae) -> Vec<(&'static str, Vec<f32>)> {
    sae.vars()
        .into_iter()
        .map(|(name, var)| {
            let v = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (name, v)
        })
        .collect()
}

const RESAMPLED: [usize; 3] = [3, 17, 39];

fn request_inputs() -> Tensor {
    seeded_normal(9, &[RESAMPLED.len(), D_IN], 2.0)
}

/// Checks a resampled affine part: unit decoder row along x − b_dec, encoder column along it
/// with at least `encoder_scale` × the kept columns' mean norm, zero encoder bias, every other
/// latent bit-identical. Returns the encoder column norms of the resampled latents.
fn check_affine(
    before: &[(&str, Vec<f32>)],
    after: &[(&str, Vec<f32>)],
    b_dec: &[f32],
) -> Vec<f32> {
    let get = |set: &[(&str, Vec<f32>)], name: &str| {
        set.iter().find(|(n, _)| *n == name).unwrap().1.clone()
    };
    let inputs = request_inputs().to_vec2::<f32>().unwrap();
    let (enc0, enc1) = (get(before, "W_enc"), get(after, "W_enc"));
    let (dec1, benc1) = (get(after, "W_dec"), get(after, "b_enc"));
    let column = |w: &[f32], i: usize| (0..D_IN).map(|r| w[r * D_SAE + i]).collect::<Vec<f32>>();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let kept_mean: f32 = (0..D_SAE)
        .filter(|i| !RESAMPLED.contains(i))
        .map(|i| norm(&column(&enc0, i)))
        .sum::<f32>()
        / (D_SAE - RESAMPLED.len()) as f32;
    let mut norms = vec![];
    for (k, &i) in RESAMPLED.iter().enumerate() {
        let direction: Vec<f32> = inputs[k].iter().zip(b_dec).map(|(x, b)| x - b).collect();
        let unit: Vec<f32> = direction.iter().map(|v| v / norm(&direction)).collect();
        let row = &dec1[i * D_IN..(i + 1) * D_IN];
        // f32 division and a 16-term sum: 1e-6 relative.
        for (a, b) in row.iter().zip(&unit) {
            assert!(
                (a - b).abs() < 1e-6,
                "decoder row {i}: {row:?} against {unit:?}"
            );
        }
        let enc = column(&enc1, i);
        let n = norm(&enc);
        for (a, b) in enc.iter().zip(&unit) {
            assert!(
                (a / n - b).abs() < 1e-5,
                "encoder column {i} is not along the decoder row"
            );
        }
        assert!(
            n >= 0.2 * kept_mean * (1.0 - 1e-5),
            "encoder norm {n} below 0.2 × {kept_mean}"
        );
        assert_eq!(benc1[i], 0.0);
        norms.push(n);
    }
    for (name, old) in before {
        let new = get(after, name);
        let latent_of = |e: usize| match *name {
            "W_enc" => Some(e % D_SAE),
            "W_dec" => Some(e / D_IN),
            "b_dec" => None,
            _ => Some(e),
        };
        for (e, (a, b)) in old.iter().zip(&new).enumerate() {
            if latent_of(e).is_none_or(|l| !RESAMPLED.contains(&l)) {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{e}] changed");
            }
        }
    }
    norms
}

#[test]
fn a_resampled_jumprelu_latent_fires_on_its_input_from_the_median_threshold() {
    for pre_encoder_bias in [true, false] {
        let sae = jumprelu(pre_encoder_bias);
        let before = values(&sae);
        let inputs = request_inputs();
        let resampled = sae
            .resample_latents(&ResampleRequest {
                latents: &RESAMPLED,
                inputs: &inputs,
                encoder_scale: 0.2,
            })
            .unwrap();
        assert_eq!(resampled.latents, RESAMPLED.to_vec());
        assert_eq!(
            resampled.vars,
            vec![("W_enc", 1), ("b_enc", 0), ("W_dec", 0), ("threshold", 0)]
        );
        let b_dec = sae.affine.b_dec.as_tensor().to_vec1::<f32>().unwrap();
        check_affine(&before, &values(&sae), &b_dec);
        // The kept thresholds are 0.01·(1 + i) for the 37 other i; their median is the 19th.
        let kept: Vec<f32> = (0..D_SAE)
            .filter(|i| !RESAMPLED.contains(i))
            .map(|i| 0.01 * (1 + i) as f32)
            .collect();
        let median = kept[kept.len() / 2];
        let theta = sae.theta().unwrap().to_vec1::<f32>().unwrap();
        let (pre, latents) = pre_activations_and_latents(&sae, &inputs);
        for (k, &i) in RESAMPLED.iter().enumerate() {
            assert_eq!(theta[i], median);
            // At least 2θ on its own input (f32 rounding of a 16-term dot product).
            assert!(
                pre[k][i] >= 2.0 * median * (1.0 - 1e-5),
                "π = {} < 2θ",
                pre[k][i]
            );
            assert!(latents[k][i] > 0.0, "latent {i} does not fire on its input");
        }
    }
}

#[test]
fn thresholds_too_large_for_the_input_restart_at_half_its_pre_activation() {
    // Kept thresholds of 100–4,000 against inputs of norm ≈ 8: reaching 2θ would take an
    // encoder norm of hundreds. The scale stops at 1 (the pre-activation is then the input's
    // extent along its direction) and θ restarts at half of it.
    let sae = jumprelu_with_thresholds(true, 100.0);
    let before = values(&sae);
    let inputs = request_inputs();
    sae.resample_latents(&ResampleRequest {
        latents: &RESAMPLED,
        inputs: &inputs,
        encoder_scale: 0.2,
    })
    .unwrap();
    let b_dec = sae.affine.b_dec.as_tensor().to_vec1::<f32>().unwrap();
    let norms = check_affine(&before, &values(&sae), &b_dec);
    let theta = sae.theta().unwrap().to_vec1::<f32>().unwrap();
    let (pre, latents) = pre_activations_and_latents(&sae, &inputs);
    let rows = inputs.to_vec2::<f32>().unwrap();
    for (k, &i) in RESAMPLED.iter().enumerate() {
        let extent = rows[k]
            .iter()
            .zip(&b_dec)
            .map(|(x, b)| (x - b).powi(2))
            .sum::<f32>()
            .sqrt();
        // f32 sums of 16 terms: 1e-5 relative.
        assert!((norms[k] - 1.0).abs() < 1e-5, "encoder norm {}", norms[k]);
        assert!(
            (pre[k][i] / extent - 1.0).abs() < 1e-5,
            "π = {} against {extent}",
            pre[k][i]
        );
        assert!(
            (theta[i] / (0.5 * pre[k][i]) - 1.0).abs() < 1e-5,
            "θ = {}",
            theta[i]
        );
        assert!(latents[k][i] > 0.0, "latent {i} does not fire on its input");
    }
}

#[test]
fn a_relu_latent_is_resampled_with_its_affine_part_only() {
    let sae = ReluSae::new(affine(false));
    let before = values(&sae);
    let resampled = sae
        .resample_latents(&ResampleRequest {
            latents: &RESAMPLED,
            inputs: &request_inputs(),
            encoder_scale: 0.2,
        })
        .unwrap();
    assert_eq!(resampled, Resampled::affine(RESAMPLED.to_vec()));
    let b_dec = sae.affine.b_dec.as_tensor().to_vec1::<f32>().unwrap();
    let norms = check_affine(&before, &values(&sae), &b_dec);
    // Without a threshold to reach, the encoder norm is exactly 0.2 × the kept mean.
    assert!(
        norms.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-5 * w[0]),
        "{norms:?}"
    );
}

#[test]
fn an_input_at_b_dec_has_no_direction_and_leaves_its_latent_alone() {
    let sae = jumprelu(true);
    let before = values(&sae);
    let b_dec = sae.affine.b_dec.as_tensor().unsqueeze(0).unwrap();
    let resampled = sae
        .resample_latents(&ResampleRequest {
            latents: &[5],
            inputs: &b_dec,
            encoder_scale: 0.2,
        })
        .unwrap();
    assert!(resampled.latents.is_empty());
    assert_eq!(before, values(&sae));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let sae = jumprelu(true);
    let before = values(&sae);
    let two = seeded_normal(5, &[2, D_IN], 1.0);
    let cases: [(&[usize], Tensor, f64, &str); 4] = [
        (&[1, 1], two.clone(), 0.2, "twice"),
        (&[1, D_SAE], two.clone(), 0.2, "out of range"),
        (&[1], two.clone(), 0.2, "resampling inputs"),
        (&[1, 2], two, f64::NAN, "encoder scale"),
    ];
    for (latents, inputs, encoder_scale, expected) in cases {
        let error = sae
            .resample_latents(&ResampleRequest {
                latents,
                inputs: &inputs,
                encoder_scale,
            })
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
        assert_eq!(before, values(&sae));
    }
}

#[test]
fn gated_saes_say_they_cannot_be_resampled() {
    let sae = GatedSae::new(
        affine(true),
        seeded_normal(6, &[D_SAE], 0.1),
        seeded_normal(7, &[D_SAE], 0.1),
    )
    .unwrap();
    let error = sae
        .resample_latents(&ResampleRequest {
            latents: &[0],
            inputs: &seeded_normal(8, &[1, D_IN], 1.0),
            encoder_scale: 0.2,
        })
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Gated") && error.contains("resampling"),
        "{error}"
    );
}
