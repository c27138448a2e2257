//! What builds the SAEs and penalties a [`crate::TrainConfig`] names: the built-in
//! architectures and penalties, and any a researcher registers. A new architecture is its own
//! file (a type implementing [`TrainableSae`]) plus one [`Registry::register_architecture`]
//! call (its recipe, its builder, its loader); a new penalty, a [`SparsityPenalty`] plus one [`Registry::register_penalty`] line.
//! Configs then name them: `{"kind": "registered", "name": "…"}` as an SAE's architecture,
//! `{"kind": "registered", "name": "…", "coefficient": …}` among its penalties.

use std::collections::BTreeMap;

use sae_core::arch::NamedTensors;
use sae_core::{
    Architecture, ArchitectureName, AuxK, DecoderNormL1, InitConfig, L0Ste, L1, Matryoshka,
    PreActivationLoss, QuadraticL0, SaeShape, SparsityPenalty, SteConfig, TrainableSae,
};
use serde_json::Value;

use crate::config::{PenaltyConfig, Recipe};
use crate::{Result, TrainError};

/// Builds a new SAE of a registered architecture (the trainer's initialisation settings in
/// `InitConfig`; inputs are scaled to unit mean squared norm when `normalise_inputs` is on).
pub type SaeBuilder =
    dyn Fn(&SaeShape, &InitConfig) -> sae_core::Result<Box<dyn TrainableSae>> + Send + Sync;

/// Builds a registered penalty from the `settings` of its config entry.
pub type PenaltyBuilder = dyn Fn(&Value) -> Result<Box<dyn SparsityPenalty>> + Send + Sync;

/// A registered architecture: its recipe and its builder.
struct RegisteredArchitecture {
    recipe: Recipe,
    build: Box<SaeBuilder>,
}

/// The architectures and penalties a trainer can build: the built-in ones always, and those
/// registered on this value.
#[derive(Default)]
pub struct Registry {
    architectures: BTreeMap<ArchitectureName, RegisteredArchitecture>,
    penalties: BTreeMap<String, Box<PenaltyBuilder>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "architectures",
                &self.architectures.keys().collect::<Vec<_>>(),
            )
            .field("penalties", &self.penalties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// The built-in architectures and penalties only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an architecture under `name` for its whole life: trained with the defaults of
    /// `recipe` ([`Recipe::generic`] when it has none of its own), built new by `build`, and
    /// loaded from its files by `load` (registered process-wide with
    /// [`sae_core::arch::register_loader`], so `sae_core::format::load` and every command that
    /// reads SAE folders rebuild it). Returns the [`Architecture`] a [`crate::SaeConfig`] names
    /// it by.
    pub fn register_architecture(
        &mut self,
        name: &str,
        recipe: Recipe,
        build: impl Fn(&SaeShape, &InitConfig) -> sae_core::Result<Box<dyn TrainableSae>>
        + Send
        + Sync
        + 'static,
        load: impl Fn(&mut NamedTensors, bool) -> sae_core::Result<Box<dyn TrainableSae>>
        + Send
        + Sync
        + 'static,
    ) -> Architecture {
        sae_core::arch::register_loader(name, load);
        let name = ArchitectureName::new(name);
        self.architectures.insert(
            name,
            RegisteredArchitecture {
                recipe,
                build: Box::new(build),
            },
        );
        Architecture::Registered { name }
    }

    /// Registers a penalty under `name`: [`PenaltyConfig::Registered`] entries with this name
    /// are built by `build` from their `settings`.
    pub fn register_penalty(
        &mut self,
        name: &str,
        build: impl Fn(&Value) -> Result<Box<dyn SparsityPenalty>> + Send + Sync + 'static,
    ) {
        self.penalties.insert(name.to_string(), Box::new(build));
    }

    /// The recipe `architecture` is trained with by default.
    pub fn recipe(
        &self,
        architecture: Architecture,
        d_in: usize,
        total_steps: u64,
    ) -> Result<Recipe> {
        match architecture {
            Architecture::Registered { name } => Ok(self.registered(name)?.recipe.clone()),
            builtin => Ok(Recipe::published(builtin, d_in, total_steps)),
        }
    }

    /// A new SAE of `architecture`.
    pub fn build_sae(
        &self,
        architecture: Architecture,
        shape: &SaeShape,
        init: &InitConfig,
    ) -> Result<Box<dyn TrainableSae>> {
        match architecture {
            Architecture::Registered { name } => Ok((self.registered(name)?.build)(shape, init)?),
            builtin => Ok(sae_core::init(builtin, shape, init)?),
        }
    }

    /// The penalty `config` describes (`ste`: the straight-through estimator of the L0
    /// penalties).
    pub fn build_penalty(
        &self,
        config: &PenaltyConfig,
        ste: SteConfig,
    ) -> Result<Box<dyn SparsityPenalty>> {
        Ok(match config {
            PenaltyConfig::L0 { .. } => Box::new(L0Ste { ste }),
            PenaltyConfig::QuadraticL0 { target_l0, .. } => Box::new(QuadraticL0 {
                ste,
                target: *target_l0,
            }),
            PenaltyConfig::L1 { .. } => Box::new(L1),
            PenaltyConfig::L1DecoderNorm { .. } => Box::new(DecoderNormL1),
            PenaltyConfig::Auxk { k_aux, .. } => Box::new(AuxK { k_aux: *k_aux }),
            PenaltyConfig::PreActivation {
                dead_after_tokens, ..
            } => Box::new(PreActivationLoss {
                dead_after_tokens: *dead_after_tokens,
            }),
            PenaltyConfig::Matryoshka { widths, .. } => Box::new(Matryoshka {
                widths: widths.clone(),
            }),
            PenaltyConfig::Registered { name, settings, .. } => {
                let build = self.penalties.get(name).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "the penalty `{name}` is not registered (registered: {})",
                        file_io::list_or_none(self.penalties.keys())
                    ))
                })?;
                build(settings)?
            }
        })
    }

    fn registered(&self, name: ArchitectureName) -> Result<&RegisteredArchitecture> {
        self.architectures.get(&name).ok_or_else(|| {
            TrainError::Invalid(format!(
                "the architecture `{name}` is not registered (registered: {})",
                file_io::list_or_none(self.architectures.keys())
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_names_are_refused_with_what_is_registered() {
        let mut registry = Registry::new();
        registry.register_penalty("mine", |_| Ok(Box::new(L1)));
        let missing = PenaltyConfig::Registered {
            name: "other".into(),
            coefficient: 1.0,
            warm_up: false,
            settings: Value::Null,
        };
        let error = registry
            .build_penalty(&missing, SteConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`other` is not registered (registered: mine)"),
            "{error}"
        );
        let unknown = Architecture::Registered {
            name: ArchitectureName::new("nobody-registered-this"),
        };
        let error = registry.recipe(unknown, 4, 10).unwrap_err().to_string();
        assert!(error.contains("registered: none"), "{error}");
    }

    #[test]
    fn built_in_recipes_are_the_published_ones() {
        let registry = Registry::new();
        let recipe = registry.recipe(Architecture::JumpRelu, 16, 100).unwrap();
        assert_eq!(recipe, Recipe::published(Architecture::JumpRelu, 16, 100));
        assert_eq!(
            recipe.penalties,
            vec![PenaltyConfig::L0 { coefficient: 6e-4 }]
        );
    }
}
