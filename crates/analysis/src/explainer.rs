//! An LLM explainer for latents, as Neuronpedia's auto-interpretability does, over any
//! OpenAI-compatible chat-completions endpoint configured by environment variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `SAE_EXPLAINER_URL` | base URL, e.g. `http://localhost:8000/v1` or `https://api.openai.com/v1` (required) |
//! | `SAE_EXPLAINER_MODEL` | model name (default `gpt-4o-mini`) |
//! | `SAE_EXPLAINER_API_KEY` | bearer token (falls back to `OPENAI_API_KEY`; optional for local servers) |
//!
//! **Method.** The latent's top examples are split: even ranks are shown to the explainer
//! (firing token marked ⟦…⟧, with its activation), odd ranks are held out as positives for
//! scoring. The explainer answers with a short phrase. **Detection score**: a second request
//! shows the explanation and a shuffled (seeded) mix of the held-out positives and as many
//! negatives (other latents' top examples; at densities below 1 % the latent almost surely
//! does not fire on them), unmarked, and asks for one 0/1 per text: is the feature present?
//! The score is the balanced accuracy of those answers (0.5 is chance, 1 is perfect).

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::dashboard::{LatentDashboard, example_text};
use crate::evidence::Example;
use crate::{AnalysisError, Result};

/// Where the explainer's LLM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmConfig {
    /// Base URL of the OpenAI-compatible API (`…/v1`).
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Bearer token, if any.
    pub api_key: Option<String>,
}

impl LlmConfig {
    /// The configuration from the environment (module docs), or `None` when
    /// `SAE_EXPLAINER_URL` is unset.
    pub fn from_env() -> Option<Self> {
        let base_url = std::env::var("SAE_EXPLAINER_URL").ok()?;
        Some(Self {
            base_url,
            model: std::env::var("SAE_EXPLAINER_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into()),
            api_key: std::env::var("SAE_EXPLAINER_API_KEY")
                .or_else(|_| std::env::var("OPENAI_API_KEY"))
                .ok(),
        })
    }
}

/// An LLM's explanation of a latent and how well it predicts where the latent fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmExplanation {
    /// The explanation.
    pub explanation: String,
    /// Balanced accuracy of detection with the explanation (module docs).
    pub detection_score: f64,
    /// The model that explained.
    pub model: String,
}

/// Explains one latent and scores the explanation. `negatives` are examples of other latents.
pub fn explain(
    config: &LlmConfig,
    dashboard: &LatentDashboard,
    negatives: &[Example],
    token_text: &dyn Fn(u32) -> String,
) -> Result<LlmExplanation> {
    let top = &dashboard.evidence.top;
    if top.len() < 2 {
        return Err(AnalysisError::Invalid(format!(
            "latent {} has {} example(s); explaining needs at least 2",
            dashboard.latent(),
            top.len()
        )));
    }
    let shown: Vec<String> = top
        .iter()
        .step_by(2)
        .map(|e| {
            format!(
                "{} (activation {:.3})",
                example_text(e, token_text),
                e.activation
            )
        })
        .collect();
    let explanation = chat(
        config,
        "You explain features of a sparse autoencoder trained on a language model's activations. \
         Each example shows text with the token the feature fired on marked ⟦like this⟧. \
         Answer with one short phrase (at most 12 words) saying when the feature fires; no preamble.",
        &shown.join("\n"),
    )?
    .trim()
    .trim_matches('"')
    .to_string();

    let positives: Vec<&Example> = top.iter().skip(1).step_by(2).collect();
    let mut trials: Vec<(String, bool)> = positives
        .iter()
        .map(|e| (plain_text(e, token_text), true))
        .chain(
            negatives
                .iter()
                .take(positives.len())
                .map(|e| (plain_text(e, token_text), false)),
        )
        .collect();
    trials.shuffle(&mut StdRng::seed_from_u64(dashboard.latent() as u64));
    let listing: Vec<String> = trials
        .iter()
        .enumerate()
        .map(|(i, (text, _))| format!("{}. {text}", i + 1))
        .collect();
    let answer = chat(
        config,
        "You predict where a language-model feature is active from its explanation. For each \
         numbered text answer 1 if the feature is active somewhere in it, else 0. Reply with the \
         digits only, one per text, in order, separated by spaces.",
        &format!("Explanation: {explanation}\n\n{}", listing.join("\n")),
    )?;
    let predictions: Vec<bool> = answer
        .chars()
        .filter_map(|c| match c {
            '0' => Some(false),
            '1' => Some(true),
            _ => None,
        })
        .collect();
    if predictions.len() != trials.len() {
        return Err(AnalysisError::Invalid(format!(
            "the explainer gave {} answers for {} texts: {answer:?}",
            predictions.len(),
            trials.len()
        )));
    }
    Ok(LlmExplanation {
        explanation,
        detection_score: balanced_accuracy(&trials, &predictions),
        model: config.model.clone(),
    })
}

/// Mean of the true-positive and true-negative rates.
fn balanced_accuracy(trials: &[(String, bool)], predictions: &[bool]) -> f64 {
    let rate = |truth: bool| {
        let (hits, total) = trials
            .iter()
            .zip(predictions)
            .filter(|((_, t), _)| *t == truth)
            .fold((0, 0), |(h, n), (_, &p)| {
                (h + usize::from(p == truth), n + 1)
            });
        if total == 0 {
            1.0
        } else {
            hits as f64 / total as f64
        }
    };
    (rate(true) + rate(false)) / 2.0
}

fn plain_text(example: &Example, token_text: &dyn Fn(u32) -> String) -> String {
    example.tokens.iter().map(|&t| token_text(t)).collect()
}

/// One chat completion: the reply's text.
fn chat(config: &LlmConfig, system: &str, user: &str) -> Result<String> {
    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let body = serde_json::json!({
        "model": config.model,
        "temperature": 0,
        "messages": [
            { "role": "system", "content": system },
            { "role": "user", "content": user },
        ],
    });
    let mut request = ureq::post(&url);
    if let Some(key) = &config.api_key {
        request = request.header("Authorization", &format!("Bearer {key}"));
    }
    let failed =
        |detail: String| AnalysisError::Invalid(format!("explainer request to {url}: {detail}"));
    let reply: serde_json::Value = request
        .send_json(&body)
        .map_err(|e| failed(e.to_string()))?
        .body_mut()
        .read_json()
        .map_err(|e| failed(e.to_string()))?;
    reply["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| failed(format!("no choices[0].message.content in {reply}")))
}
