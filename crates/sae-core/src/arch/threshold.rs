//! How a JumpReLU threshold is stored (shared by the SAE, the transcoder and the sparse step).

/// How the threshold θ is stored as a trainable variable.
///
/// The default is [`ThresholdParametrisation::Raw`]. The JumpReLU paper's appendix trains
/// τ = log θ to keep θ positive, but with Adam a log-parametrised threshold moves by about
/// lr·θ per step (7e-8 per step at θ = 0.001, lr = 7e-5), so thresholds barely leave their
/// initial value and L0 will not come down; SAELens (PR #718) and dictionary_learning switched
/// to training θ itself for that reason, and released files store θ, not log θ. Choose
/// [`ThresholdParametrisation::Log`] to follow the paper's appendix literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdParametrisation {
    /// Train θ directly (the default).
    #[default]
    Raw,
    /// Train log θ (JumpReLU paper, App. J).
    Log,
}
