//! A researcher's own architecture and penalty, defined here without touching the workspace's
//! crates: a tied-weights ReLU SAE (the encoder is the decoder's transpose) and a penalty on
//! the latents' squared L2 norm, each one registration line in a [`trainer::Registry`],
//! trained on a tiny Gemma 3's residual stream streamed from the model, then served by the
//! explorer and asked over HTTP which latents fire on a text.

use candle_core::{DType, Device, Tensor, Var};
use gemma_hooks::{HookPoint, load_model};
use sae_core::{
    InitConfig, PenaltyContext, Sae, SaeShape, SparsityPenalty, TrainOutput, TrainableSae,
};
use trainer::{PenaltyConfig, Recipe, Registry, RunOptions, SaeConfig, TrainConfig, Trainer};

mod common;

use common::MODEL;

/// A ReLU SAE whose encoder is its decoder's transpose: latents relu((x/s − b_dec)·W_decᵀ +
/// b_enc), reconstruction s·(latents·W_dec + b_dec), with `s` the folded input scale.
struct TiedSae {
    w_dec: Var,
    b_enc: Var,
    b_dec: Var,
    scale: f64,
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
        let centred = ((x / self.scale)?.broadcast_sub(self.b_dec.as_tensor()))?;
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
        Ok((decoded * self.scale)?)
    }
    fn decoder_weight(&self) -> &Tensor {
        self.w_dec.as_tensor()
    }
    fn tensors(&self) -> sae_core::Result<Vec<(&'static str, Tensor)>> {
        let scale = Tensor::new(&[self.scale as f32], self.w_dec.device())?;
        Ok(vec![
            ("W_dec", self.w_dec.as_tensor().clone()),
            ("b_enc", self.b_enc.as_tensor().clone()),
            ("b_dec", self.b_dec.as_tensor().clone()),
            ("scale", scale),
        ])
    }
    fn fold_scaling(&mut self, c: f64) -> sae_core::Result<()> {
        self.scale *= c;
        Ok(())
    }
    fn unfold_scaling(&mut self, c: f64, _pre_encoder_bias: bool) -> sae_core::Result<()> {
        self.scale /= c;
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

#[test]
fn a_registered_architecture_and_penalty_train_and_are_served_by_the_explorer() -> anyhow::Result<()>
{
    // The two registration lines.
    let mut registry = Registry::new();
    let tied = registry.register_architecture("tied", Recipe::generic(), |shape, init| {
        Ok(Box::new(TiedSae::new(shape, init)?))
    });
    registry.register_penalty("latent_l2", |_settings| Ok(Box::new(LatentL2)));

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

    let (source, _) = common::tiny_stream(&book, vec![hook])?;
    let out = work.path().join("train");
    let mut trainer = Trainer::with_registry(config, source, &out, &registry)?;
    trainer.run(&RunOptions::default())?;

    // The custom penalty was in the loss, warmed up, and training reduced the error.
    let first = trainer.metrics.first().expect("metrics were recorded");
    let last = trainer.metrics.last().expect("metrics were recorded");
    assert!(last.penalty > 0.0 && last.lambda == 1e-2, "{last:?}");
    assert!(last.fvu < first.fvu, "FVU {} → {}", first.fvu, last.fvu);
    // The export names the registered architecture.
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tied-l2/cfg.json"))?)?;
    assert_eq!(exported["architecture"], "tied");

    // The folded SAE reconstructs raw activations as well as training measured.
    let (resolved, sae) = trainer.into_saes()?.pop().expect("one SAE");
    assert_eq!(resolved.architecture, tied);
    let model = load_model(MODEL, &Device::Cpu, DType::F32)?;
    let tokenizer = model.tokenizer.expect("the fixture has a tokenizer");
    let ids = tokenizer.encode("the cat sat on the mat", true)?;
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let mut hooks = gemma_hooks::Hooks::observing([hook]);
    model.model.forward(&input, &mut hooks)?;
    let x = hooks
        .take(hook)
        .expect("the hook was observed")
        .squeeze(0)?;
    let (_, reconstruction) = sae.forward(&x)?;
    let error = (&x - &reconstruction)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    let variance = x
        .broadcast_sub(&x.mean_keepdim(0)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    assert!(error / variance < 1.0, "folded FVU {}", error / variance);

    // Served by the explorer, with dashboards computed over the book.
    let options = explorer::EvidenceOptions {
        model_name: "tiny".into(),
        corpus: book.display().to_string(),
        tokens: 200,
        context_length: 16,
        progress: false,
    };
    let store = work.path().join("evidence");
    let dashboards =
        explorer::dashboards::compute(&model.model, &tokenizer, hook, &*sae, &options, &store)?;
    let served = explorer::ExplorerSae::new("tied".into(), out.clone(), hook, sae, dashboards)?;
    let labels = work.path().join("labels.toml");
    let explorer = explorer::Explorer::new(model.model, tokenizer, vec![served], &labels);
    let server = explorer::spawn(explorer, "127.0.0.1:0".parse()?)?;
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        let body = ureq::get(format!("{}{path}", server.url))
            .call()?
            .into_body()
            .read_to_string()?;
        Ok(serde_json::from_str(&body)?)
    };
    let info = get("/api/info")?;
    assert_eq!(info["saes"][0]["id"], "tied");
    assert!(
        info["saes"][0]["architecture"]
            .as_str()
            .is_some_and(|a| a.contains("tied")),
        "{info}"
    );
    let fired = ureq::post(format!("{}/api/saes/tied/activations", server.url))
        .send_json(serde_json::json!({ "text": "the cat sat on the mat" }))?
        .into_body()
        .read_to_string()?;
    let fired: serde_json::Value = serde_json::from_str(&fired)?;
    assert!(
        fired["tokens"].as_array().is_some_and(|t| !t.is_empty()),
        "{fired}"
    );
    server.stop()?;
    Ok(())
}
