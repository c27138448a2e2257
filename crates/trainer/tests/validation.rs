//! Every setting is checked before work starts (issue 37): names stay inside the run folder,
//! NaN, infinities and out-of-range values are refused by key, widths that cannot be allocated
//! are refused instead of panicking, and a finished run reports success only when its export is
//! there.

use std::path::Path;

use proptest::prelude::*;
use sae_core::Architecture;
use trainer::{RunOptions, SaeConfig, TrainConfig, Trainer};

mod common;
use common::{HOOK, Synthetic, config};

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn refusal(sae: SaeConfig) -> String {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    let error = Trainer::new(config(vec![sae], 4), Synthetic::new(), &out)
        .err()
        .expect("the config is refused");
    assert!(
        files_under(root.path()).is_empty(),
        "nothing is written: {:?}",
        files_under(root.path())
    );
    error.to_string()
}

#[test]
fn sae_names_that_leave_the_run_folder_are_refused_before_anything_is_written() {
    for name in ["../escaped", "/tmp/absolute", "", "..", "a/b", "nul\0"] {
        let message = refusal(SaeConfig::new(name, HOOK, Architecture::JumpRelu, 16));
        assert!(message.contains("not a plain name"), "{name:?}: {message}");
    }
}

/// A change to an SAE's settings.
type Tweak = Box<dyn Fn(&mut SaeConfig)>;

#[test]
fn out_of_range_settings_are_refused_by_key() {
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "lr must be a finite number > 0, not -0.001",
            Box::new(|s| s.lr = Some(-1e-3)),
        ),
        (
            "lr must be a finite number > 0, not NaN",
            Box::new(|s| s.lr = Some(f64::NAN)),
        ),
        (
            "adam_beta2 must be in [0, 1)",
            Box::new(|s| s.adam_beta2 = Some(1.0)),
        ),
        (
            "lr_decay_fraction must be in [0, 1]",
            Box::new(|s| s.lr_decay_fraction = Some(2.0)),
        ),
        (
            "bandwidth must be a finite number > 0",
            Box::new(|s| s.bandwidth = Some(0.0)),
        ),
        ("d_sae must be between 1 and", Box::new(|s| s.d_sae = 0)),
        (
            "d_sae must be between 1 and",
            Box::new(|s| s.d_sae = usize::MAX),
        ),
        (
            "k must be between 1 and d_sae",
            Box::new(|s| s.architecture = Architecture::TopK { k: 17 }),
        ),
        (
            "penalties.0: the L0 penalty's coefficient must be a finite number ≥ 0, not inf",
            Box::new(|s| {
                s.penalties = Some(vec![trainer::PenaltyConfig::L0 {
                    coefficient: f64::INFINITY,
                }])
            }),
        ),
    ];
    for (expected, tweak) in cases {
        let mut sae = SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 16);
        tweak(&mut sae);
        let message = refusal(sae);
        assert!(
            message.contains("SAE `sae`") && message.contains(expected),
            "{expected}: {message}"
        );
    }
    let mut zero_steps = config(
        vec![SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 16)],
        0,
    );
    zero_steps.steps = 0;
    assert!(
        zero_steps
            .validate()
            .unwrap_err()
            .to_string()
            .contains("steps must be at least 1")
    );
}

#[test]
fn nan_and_infinity_in_a_toml_file_are_refused_by_key_not_defaulted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.toml");
    let sae = "[[saes]]\nname = \"s\"\nhook = \"blocks.0.hook_resid_post\"\nd_sae = 16\n\
               architecture = { kind = \"jump_relu\" }\n";
    for (line, key) in [
        ("lr = nan", "saes.0.lr"),
        ("lr = -inf", "saes.0.lr"),
        (
            "penalties = [{ kind = \"l0\", coefficient = inf }]",
            "saes.0.penalties.0.coefficient",
        ),
    ] {
        std::fs::write(&path, format!("{sae}{line}\n")).unwrap();
        let message = TrainConfig::from_file(&path, &[]).unwrap_err().to_string();
        assert!(
            message.starts_with(&path.display().to_string())
                && message.contains(&format!("`{key}` is not a finite number")),
            "{line}: {message}"
        );
    }
    std::fs::write(&path, format!("{sae}lr = -1e-3\n")).unwrap();
    let message = TrainConfig::from_file(&path, &[]).unwrap_err().to_string();
    assert!(
        message.contains("lr must be a finite number > 0"),
        "{message}"
    );
    std::fs::write(&path, sae).unwrap();
    for value in ["nan", "inf", "-Infinity"] {
        let message = TrainConfig::from_file(&path, &[format!("saes.0.lr={value}")])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("is not a finite number"),
            "{value}: {message}"
        );
    }
    assert!(TrainConfig::from_file(&path, &["saes.0.lr=1e-4".into()]).is_ok());
}

#[test]
fn a_finished_run_whose_export_was_removed_exports_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let saes = || vec![SaeConfig::new("jump", HOOK, Architecture::JumpRelu, 16)];
    Trainer::new(config(saes(), 6), Synthetic::new(), dir.path())
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    let exported = dir.path().join("jump/sae_weights.safetensors");
    let original = std::fs::read(&exported).unwrap();
    std::fs::remove_dir_all(dir.path().join("jump")).unwrap();
    Trainer::new(config(saes(), 6), Synthetic::new(), dir.path())
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        original,
        "the same bytes again"
    );
    // A changed file is noticed too.
    std::fs::write(&exported, b"damaged").unwrap();
    Trainer::new(config(saes(), 6), Synthetic::new(), dir.path())
        .unwrap()
        .run(&RunOptions::default())
        .unwrap();
    assert_eq!(std::fs::read(&exported).unwrap(), original);
}

/// Names built from the pieces that make paths escape or look alike.
fn hostile_name() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "..", ".", "/", "\\", "\0", "sae", "．", "∕", "~", " ", "\u{202e}",
    ]);
    prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever the SAE's name, the run is refused or writes only inside its folder.
    #[test]
    fn any_sae_name_is_refused_or_stays_inside_the_run_folder(name in hostile_name()) {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        let saes = vec![SaeConfig::new(&name, HOOK, Architecture::JumpRelu, 8)];
        let accepted = Trainer::new(config(saes, 2), Synthetic::new(), &out);
        prop_assert!(!(accepted.is_ok() && Path::new(&name).is_absolute()), "{:?}", name);
        if let Ok(mut trainer) = accepted {
            trainer.run(&RunOptions::default()).unwrap();
            prop_assert!(out.join(&name).join("cfg.json").exists());
        }
        for file in files_under(root.path()) {
            prop_assert!(file.starts_with("run/"), "{} escaped", file);
        }
    }
}

/// The leaf keys of a JSON value, as dotted paths.
fn leaf_keys(value: &serde_json::Value, at: &str, keys: &mut Vec<String>) {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                leaf_keys(value, &join(key), keys);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                leaf_keys(value, &join(&index.to_string()), keys);
            }
        }
        _ => keys.push(at.to_string()),
    }
}

/// Hostile values for every key of a training config with every setting given: each is
/// refused with an error or trains; none panics.
#[test]
fn hostile_values_for_every_config_key_are_errors_never_panics() {
    let mut sae = SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 16);
    sae.lr = Some(1e-3);
    sae.adam_beta1 = Some(0.0);
    sae.adam_beta2 = Some(0.999);
    sae.adam_eps = Some(1e-8);
    sae.lr_warmup_steps = Some(1);
    sae.lr_warmup_start = Some(0.1);
    sae.lr_decay_fraction = Some(0.2);
    sae.penalties = Some(vec![
        trainer::PenaltyConfig::L0 { coefficient: 1e-3 },
        trainer::PenaltyConfig::Matryoshka {
            coefficient: 1.0,
            widths: vec![8],
        },
    ]);
    sae.lambda_warmup_steps = Some(1);
    sae.bandwidth = Some(1e-3);
    sae.threshold_init = Some(1e-3);
    sae.decoder_constraint = Some(true);
    sae.decoder_init_norm = Some(1.0);
    sae.pre_encoder_bias = Some(true);
    sae.sparse_step = Some(true);
    sae.normalise_inputs = Some(true);
    sae.grad_clip_norm = Some(1.0);
    sae.exclude_norm_above = Some(1e6);
    sae.seed = Some(1);
    let mut base = serde_json::to_value(config(vec![sae], 2)).unwrap();
    base["batch_size"] = 32.into();
    base["scaling_batches"] = 1.into();
    let mut keys = Vec::new();
    leaf_keys(&base, "", &mut keys);
    assert!(keys.len() > 30, "{keys:?}");
    let hostile: Vec<serde_json::Value> = serde_json::json!([
        -1,
        0,
        1e308,
        -1e308,
        u64::MAX,
        "",
        "../x",
        null,
        true,
        [],
        {},
        "nan"
    ])
    .as_array()
    .unwrap()
    .clone();
    let mut panics = Vec::new();
    for key in &keys {
        for value in &hostile {
            let outcome = std::panic::catch_unwind(|| {
                let mut edited = base.clone();
                let pointer = format!("/{}", key.replace('.', "/"));
                *edited.pointer_mut(&pointer).unwrap() = value.clone();
                let dir = tempfile::tempdir().unwrap();
                let Ok(config) = TrainConfig::from_value(edited, &[]) else {
                    return;
                };
                if let Ok(mut trainer) = Trainer::new(config, Synthetic::new(), dir.path()) {
                    // `steps` may now be 2⁶⁴ − 1: a few steps show the settings train.
                    let options = RunOptions {
                        stop_after_steps: Some(3),
                        ..RunOptions::default()
                    };
                    let _ = trainer.run(&options);
                }
            });
            if outcome.is_err() {
                panics.push(format!("{key} = {value}"));
            }
        }
    }
    assert!(panics.is_empty(), "panicked: {panics:#?}");
}

#[test]
fn training_that_cannot_fit_in_memory_is_refused_with_the_figure() {
    let sae = SaeConfig::new(
        "wide",
        HOOK,
        Architecture::JumpRelu,
        trainer::validation::MAX_D_SAE,
    );
    let mut config = config(vec![sae], 2);
    config.batch_size = trainer::validation::MAX_BATCH_SIZE;
    let needed = trainer::validation::training_memory(&config, &[common::D_IN], &[]);
    assert!(needed > 100 << 40, "{needed}");
    let root = tempfile::tempdir().unwrap();
    let error = Trainer::new(config, Synthetic::new(), &root.path().join("run"))
        .err()
        .expect("refused");
    assert!(error.to_string().contains("GiB of memory"), "{error}");
    assert!(files_under(root.path()).is_empty());
}
