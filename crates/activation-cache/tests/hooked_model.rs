//! The model seam: a store harvested from a model that is not a Gemma at all — a mock
//! implementing `gemma_hooks::HookedModel`, whose residual stream at every position is a known
//! function of the token there — reads back exactly that function, row for row.

use activation_cache::store::{StoreDtype, StoreSpec};
use activation_cache::{
    ActivationSource, ContextConfig, Corpus, HarvestOptions, ShuffleConfig, StoreSource, harvest,
};
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{GemmaConfig, HookPoint, HookedModel, Hooks};

/// Width of the mock's residual stream.
const WIDTH: usize = 4;

/// The mock's activation of `token` at `blocks.0.hook_resid_post`.
fn activation_of(token: u32) -> [f32; WIDTH] {
    let t = token as f32;
    [t, 2.0 * t, t + 0.5, -t]
}

/// A "model" with one block whose residual stream is [`activation_of`] each token.
struct Mock {
    config: GemmaConfig,
}

impl HookedModel for Mock {
    fn config(&self) -> &GemmaConfig {
        &self.config
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn forward(
        &self,
        input_ids: &Tensor,
        hooks: &mut Hooks,
    ) -> gemma_hooks::Result<Option<Tensor>> {
        hooks.validate(&self.config)?;
        let (batch, positions) = input_ids.dims2()?;
        let values: Vec<f32> = input_ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .flat_map(activation_of)
            .collect();
        let resid = Tensor::from_vec(values, (batch, positions, WIDTH), &Device::Cpu)?;
        hooks.apply(HookPoint::ResidPost(0), resid)?;
        Ok(None)
    }
    fn kernel_description(&self) -> String {
        "mock".into()
    }
}

#[test]
fn a_store_harvested_from_a_mock_model_holds_the_mock_activations() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gemma-hooks/tests/fixtures/tiny-gemma3"
    );
    let loaded = gemma_hooks::load_model(fixture, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = loaded.tokenizer.expect("the fixture has a tokenizer");
    let mut config = loaded.model.config().clone();
    config.hidden_size = WIDTH;
    config.num_layers = 1;
    config.layer_types.truncate(1);
    let model = Mock { config };

    let work = tempfile::tempdir().unwrap();
    let book = work.path().join("book.txt");
    std::fs::write(&book, "the cat sat on the mat and the dog ran. ".repeat(30)).unwrap();
    let corpus = Corpus::from_spec(&book.display().to_string(), "text").unwrap();
    let hooks = [HookPoint::ResidPost(0)];
    let spec = StoreSpec {
        model: "mock".into(),
        tokenizer: "tiny".into(),
        corpus: corpus.describe(),
        contexts: ContextConfig {
            context_length: 16,
            min_tokens: 8,
        },
        hooks: activation_cache::hook_specs(model.config(), &hooks),
        dtype: StoreDtype::F32,
        contexts_per_shard: 2,
        batch_contexts: 2,
        target_rows: 120,
        sampling: activation_cache::contexts::ContextSampling::Spread { seed: 0 },
    };
    assert_eq!(spec.hooks[0].width, WIDTH);
    let dir = work.path().join("store");
    let documents = corpus.documents().unwrap();
    harvest(
        &dir,
        &model,
        &tokenizer,
        &documents,
        spec,
        &HarvestOptions::default(),
    )
    .unwrap();

    let mut source = StoreSource::open(&dir, ShuffleConfig::default(), false).unwrap();
    let batch = source.next_batch(64).unwrap().expect("rows");
    let rows = batch.activations[0].to_vec2::<f32>().unwrap();
    assert_eq!(rows.len(), 64);
    for (row, info) in rows.iter().zip(&batch.tokens) {
        assert_eq!(
            row.as_slice(),
            activation_of(info.token),
            "token {}",
            info.token
        );
    }
}
