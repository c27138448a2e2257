//! The penalty terms a sparse step takes, with this step's coefficients.

/// The AuxK term for dead latents ([`crate::AuxK`]) as the sparse step takes it.
#[derive(Debug, Clone)]
pub struct AuxKTerm {
    /// Dead latents reconstructing the residual, per token.
    pub k_aux: usize,
    /// The term's coefficient α.
    pub coefficient: f64,
    /// Which latents are dead, `[d_sae]`.
    pub dead: Vec<bool>,
}

/// The pre-activation loss for dead latents ([`crate::PreActivationLoss`]) as the sparse step
/// takes it; needs [`SelectionRule::Threshold`](crate::sparse::SelectionRule::Threshold).
#[derive(Debug, Clone)]
pub struct PreActivationTerm {
    /// The term's coefficient c.
    pub coefficient: f64,
    /// Which latents are dead, `[d_sae]`.
    pub dead: Vec<bool>,
}

/// The Matryoshka term ([`crate::Matryoshka`]) as the sparse step takes it.
#[derive(Debug, Clone)]
pub struct MatryoshkaTerm {
    /// The inner prefix widths, strictly increasing, each below d_sae.
    pub widths: Vec<usize>,
    /// The term's coefficient.
    pub coefficient: f64,
}

/// The penalties of a sparse step, with this step's coefficients.
#[derive(Debug, Clone, Default)]
pub struct SparsePenalties {
    /// λ of the L0 penalty ([`crate::L0Ste`], or [`crate::QuadraticL0`] with
    /// [`SparsePenalties::l0_target`]); needs [`SelectionRule::Threshold`](crate::sparse::SelectionRule::Threshold). 0 for none.
    pub l0: f64,
    /// The target L0 of Gemma Scope 2's quadratic L0 penalty ([`crate::QuadraticL0`]); `None`
    /// for the linear L0 penalty.
    pub l0_target: Option<f64>,
    /// The AuxK term, if the SAE is trained with one.
    pub auxk: Option<AuxKTerm>,
    /// The pre-activation loss, if the SAE is trained with one.
    pub pre_activation: Option<PreActivationTerm>,
    /// The Matryoshka prefixes' reconstruction term, if the SAE is trained with one.
    pub matryoshka: Option<MatryoshkaTerm>,
}
