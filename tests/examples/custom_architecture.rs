//! A researcher's own architecture and penalty, defined in one program without touching the
//! workspace's crates, through its whole life: a tied-weights ReLU SAE (the encoder is the
//! decoder's transpose) and a penalty on the latents' squared L2 norm are registered (one call
//! each), trained on a tiny Gemma 3's residual stream streamed from the model, saved as a
//! SAELens folder, loaded back from disk by `sae_core::format::load`, and served by the
//! explorer (loaded from that folder as the `explore` command loads it), which is asked over
//! HTTP which latents fire on a text.
//!
//! ```text
//! cargo run -p integration-tests --example custom_architecture [MODEL]
//! ```
//!
//! `MODEL` defaults to the tiny random Gemma 3 checkpoint of the gemma-hooks tests; any Gemma
//! 2 or 3 checkpoint with a tokenizer works. `cargo test` runs the program too.

use std::path::Path;

use activation_cache::{ContextConfig, StreamingSource};
use anyhow::{Context as _, ensure};
use candle_core::{DType, Device, Tensor, Var};
use gemma_hooks::{HookPoint, Kernels, load_model};
use sae_core::arch::NamedTensors;
use sae_core::{
    InitConfig, PenaltyContext, Sae, SaeShape, SparsityPenalty, TrainOutput, TrainableSae,
};
use trainer::{PenaltyConfig, Recipe, Registry, RunOptions, SaeConfig, TrainConfig, Trainer};

/// The tiny random Gemma 3 checkpoint (hidden 32, 7 layers, character-level tokenizer).
const TINY_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/gemma-hooks/tests/fixtures/tiny-gemma3"
);

/// A ReLU SAE whose encoder is its decoder's transpose: latents relu((x/s − b_dec)·W_decᵀ +
/// b_enc), reconstruction s·(latents·W_dec + b_dec), with `s` the folded input scale.
struct TiedSae {
    w_dec: Var,
    b_enc: Var,
    b_dec: Var,
    /// Held in f32, the precision files store it in, so a saved SAE reloads bit for bit.
    scale: f32,
}

impl TiedSae {
    fn new(shape: &SaeShape, init: &InitConfig) -> sae_core::Result<Self> {
        let (_, w_dec) = sae_core::init::gemma_scope_decoder(shape, init)?;
        Ok(Self {
            w_dec: Var::from_tensor(&w_dec)?,
            b_enc: Var::zeros(shape.d_sae, shape.dtype, &shape.device)?,
            b_dec: Var::zeros(shape.d_in, shape.dtype, &shape.device)?,
            scale: 1.0,
        })
    }

    /// Rebuilds the SAE from the arrays [`Sae::tensors`] wrote.
    fn load(tensors: &mut NamedTensors, apply_b_dec_to_input: bool) -> sae_core::Result<Self> {
        if !apply_b_dec_to_input {
            return Err(sae_core::SaeError::Config(
                "a tied SAE always subtracts b_dec from its input".into(),
            ));
        }
        let scale = tensors
            .take("scale")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let &[scale] = scale.as_slice() else {
            return Err(sae_core::SaeError::Config(format!(
                "`scale` holds {} values, not one",
                scale.len()
            )));
        };
        Ok(Self {
            w_dec: Var::from_tensor(&tensors.take("W_dec")?)?,
            b_enc: Var::from_tensor(&tensors.take("b_enc")?)?,
            b_dec: Var::from_tensor(&tensors.take("b_dec")?)?,
            scale,
        })
    }
}

impl Sae for TiedSae {
    fn architecture(&self) -> sae_core::Architecture {
        sae_core::Architecture::Registered {
            name: sae_core::ArchitectureName::new("tied"),
        }
    }
    fn d_in(&self) -> usize {
        self.w_dec.dims()[1]
    }
    fn d_sae(&self) -> usize {
        self.w_dec.dims()[0]
    }
    fn apply_b_dec_to_input(&self) -> bool {
        true
    }
    fn pre_activations(&self, x: &Tensor) -> sae_core::Result<Tensor> {
        let centred = ((x / f64::from(self.scale))?.broadcast_sub(self.b_dec.as_tensor()))?;
        Ok(centred
            .matmul(&self.w_dec.as_tensor().t()?)?
            .broadcast_add(self.b_enc.as_tensor())?)
    }
    fn encode(&self, x: &Tensor) -> sae_core::Result<Tensor> {
        Ok(self.pre_activations(x)?.relu()?)
    }
    fn decode(&self, latents: &Tensor) -> sae_core::Result<Tensor> {
        let decoded = latents
            .matmul(self.w_dec.as_tensor())?
            .broadcast_add(self.b_dec.as_tensor())?;
        Ok((decoded * f64::from(self.scale))?)
    }
    fn decoder_weight(&self) -> &Tensor {
        self.w_dec.as_tensor()
    }
    fn tensors(&self) -> sae_core::Result<Vec<(&'static str, Tensor)>> {
        let scale = Tensor::new(&[self.scale], self.w_dec.device())?;
        Ok(vec![
            ("W_dec", self.w_dec.as_tensor().clone()),
            ("b_enc", self.b_enc.as_tensor().clone()),
            ("b_dec", self.b_dec.as_tensor().clone()),
            ("scale", scale),
        ])
    }
    fn fold_scaling(&mut self, c: f64) -> sae_core::Result<()> {
        self.scale = (f64::from(self.scale) * c) as f32;
        Ok(())
    }
    fn unfold_scaling(&mut self, c: f64, _pre_encoder_bias: bool) -> sae_core::Result<()> {
        self.scale = (f64::from(self.scale) / c) as f32;
        Ok(())
    }
}

impl TrainableSae for TiedSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        vec![
            ("W_dec", &self.w_dec),
            ("b_enc", &self.b_enc),
            ("b_dec", &self.b_dec),
        ]
    }
    fn train_forward(&self, x: &Tensor) -> sae_core::Result<TrainOutput> {
        let pre = self.pre_activations(x)?;
        let latents = pre.relu()?;
        let reconstruction = self.decode(&latents)?;
        Ok(TrainOutput::new(x, pre, latents, reconstruction))
    }
    fn decoder_var(&self) -> &Var {
        &self.w_dec
    }
}

/// The latents' squared L2 norm per token, averaged over the batch.
#[derive(Debug)]
struct LatentL2;

impl SparsityPenalty for LatentL2 {
    fn name(&self) -> &'static str {
        "latent_l2"
    }
    fn loss(
        &self,
        _sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> sae_core::Result<Tensor> {
        Ok(out.sparsity_input.sqr()?.sum(1)?.mean(0)?)
    }
}

/// The tiny model's residual stream at `hook`, streamed over the text file `book`.
fn stream(model: &str, book: &Path, hook: HookPoint) -> anyhow::Result<StreamingSource> {
    let loaded = load_model(model, &Device::Cpu, DType::F32)?;
    let tokenizer = loaded.tokenizer.context("the model has no tokenizer")?;
    let documents =
        activation_cache::Corpus::from_spec(&book.display().to_string(), "text")?.documents()?;
    let contexts = ContextConfig {
        context_length: 16,
        min_tokens: 8,
    };
    Ok(StreamingSource::new(
        loaded.model,
        tokenizer,
        documents,
        vec![hook],
        contexts,
        2,
        256,
        0,
    )?)
}

/// The fraction of `x`'s variance (about its mean) that `sae` leaves unexplained.
fn fvu(sae: &dyn Sae, x: &Tensor) -> anyhow::Result<f32> {
    let (_, reconstruction) = sae.forward(x)?;
    let error = (x - &reconstruction)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    let variance = x
        .broadcast_sub(&x.mean_keepdim(0)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(error / variance)
}

fn main() -> anyhow::Result<()> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| TINY_MODEL.to_string());
    run(&model)
}

/// The whole life of the custom architecture on `model`.
fn run(model: &str) -> anyhow::Result<()> {
    let model = model.to_string();

    // Registration: the architecture (recipe, builder, loader) and the penalty.
    let mut registry = Registry::new();
    let tied = registry.register_architecture(
        "tied",
        Recipe::generic(),
        |shape, init| Ok(Box::new(TiedSae::new(shape, init)?)),
        |tensors, apply_b_dec_to_input| Ok(Box::new(TiedSae::load(tensors, apply_b_dec_to_input)?)),
    );
    registry.register_penalty("latent_l2", |_settings| Ok(Box::new(LatentL2)));

    // Training, with the export (a SAELens folder) at the end.
    let work = tempfile::tempdir()?;
    let book = work.path().join("book.txt");
    std::fs::write(
        &book,
        "the cat sat on the mat and the dog ran in the park. ".repeat(60),
    )?;
    let hook = HookPoint::ResidPost(1);
    let mut sae = SaeConfig::new("tied-l2", &hook.to_string(), tied, 16);
    sae.lr = Some(3e-3);
    sae.penalties = Some(vec![PenaltyConfig::Registered {
        name: "latent_l2".into(),
        coefficient: 1e-2,
        warm_up: true,
        settings: serde_json::Value::Null,
    }]);
    let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &[])?;
    config.saes.push(sae);
    config.steps = 40;
    config.batch_size = 64;
    config.metrics_every = 10;
    config.scaling_batches = 2;
    let out = work.path().join("train");
    let mut trainer =
        Trainer::with_registry(config, stream(&model, &book, hook)?, &out, &registry)?;
    trainer.run(&RunOptions::default())?;

    // The penalty was in the loss, warmed up, and training reduced the error.
    let first = trainer
        .metrics
        .first()
        .context("no metrics were recorded")?;
    let last = trainer.metrics.last().context("no metrics were recorded")?;
    ensure!(last.penalty > 0.0 && last.lambda == 1e-2, "{last:?}");
    ensure!(last.fvu < first.fvu, "FVU {} → {}", first.fvu, last.fvu);
    let (resolved, trained) = trainer.into_saes()?.pop().context("no SAE was trained")?;
    ensure!(resolved.architecture == tied, "{:?}", resolved.architecture);

    // Saved under its registered name, and loaded back from disk by the generic loader.
    let folder = out.join("tied-l2");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("cfg.json"))?)?;
    ensure!(exported["architecture"] == "tied", "{exported}");
    let reloaded = sae_core::format::load(&folder, &Device::Cpu, DType::F32)?;
    ensure!(
        reloaded.architecture() == tied,
        "{:?}",
        reloaded.architecture()
    );

    // The reloaded SAE is the trained one: the same reconstruction of raw activations (the
    // same f32 arrays through the same operations, so the same bits), better than the mean.
    let loaded = load_model(&model, &Device::Cpu, DType::F32)?;
    let tokenizer = loaded.tokenizer.context("the model has no tokenizer")?;
    let ids = tokenizer.encode("the cat sat on the mat", true)?;
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let mut hooks = gemma_hooks::Hooks::observing([hook]);
    loaded.model.forward(&input, &mut hooks)?;
    let x = hooks
        .take(hook)
        .context("the hook was not observed")?
        .squeeze(0)?;
    let (trained_fvu, reloaded_fvu) = (fvu(&*trained, &x)?, fvu(&*reloaded, &x)?);
    ensure!(
        trained_fvu == reloaded_fvu && reloaded_fvu < 1.0,
        "FVU of the trained SAE {trained_fvu}, of the reloaded one {reloaded_fvu}"
    );
    println!("trained and reloaded `tied`: FVU {reloaded_fvu:.4} on a held-out sentence");

    // Explored: the folder loaded as `gemma-scope explore` loads it, dashboards computed over
    // the book, and the server asked which latents fire on a text.
    let explorer = explorer::load(&explorer::LoadOptions {
        model: model.clone(),
        saes: vec![format!("{}@{hook}", folder.display())],
        labels: Some(work.path().join("labels.toml")),
        evidence: explorer::EvidenceOptions {
            model_name: "tiny".into(),
            corpus: book.display().to_string(),
            tokens: 200,
            context_length: 16,
            progress: false,
        },
        device: Device::Cpu,
        kernels: Kernels::Fastest,
    })?;
    let server = explorer::spawn(explorer, "127.0.0.1:0".parse()?)?;
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        let body = ureq::get(format!("{}{path}", server.url))
            .call()?
            .into_body()
            .read_to_string()?;
        Ok(serde_json::from_str(&body)?)
    };
    let info = get("/api/info")?;
    let id = info["saes"][0]["id"]
        .as_str()
        .context("no SAE is served")?
        .to_string();
    ensure!(
        info["saes"][0]["architecture"]
            .as_str()
            .is_some_and(|a| a.contains("tied")),
        "{info}"
    );
    let fired = ureq::post(format!("{}/api/saes/{id}/activations", server.url))
        .send_json(serde_json::json!({ "text": "the cat sat on the mat" }))?
        .into_body()
        .read_to_string()?;
    let fired: serde_json::Value = serde_json::from_str(&fired)?;
    let tokens = fired["tokens"].as_array().map_or(0, Vec::len);
    ensure!(tokens > 0, "{fired}");
    println!(
        "served by the explorer at {}: activations on {tokens} tokens",
        server.url
    );
    server.stop()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The program runs to its end on the tiny model: every check above held. (Not through
    /// `main`: the test harness's own arguments are not a model.)
    #[test]
    fn the_custom_architecture_program_runs() {
        super::run(super::TINY_MODEL).unwrap();
    }
}
