//! The process-wide table of architectures defined outside this crate that files can hold:
//! name → how to rebuild the SAE from its arrays. [`from_tensors`](super::from_tensors) — and
//! through it [`crate::format::load`] and every command that reads SAE folders (explore,
//! inspect, convert, a sweep's evaluation) — builds a [`Architecture::Registered`] SAE with the
//! loader registered under its name, the way SAELens's `register_sae_class` makes its loaders
//! find a new class. `trainer::Registry::register_architecture` registers here, so one call
//! makes an architecture trainable, savable and loadable.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{Architecture, ArchitectureName, NamedTensors, TrainableSae};
use crate::{Result, SaeError};

/// Rebuilds an SAE of a registered architecture from the arrays its files hold (the names its
/// [`crate::Sae::tensors`] wrote); `apply_b_dec_to_input` is the file's setting. Arrays left
/// untaken are an error naming the file, as for the built-in architectures.
pub type SaeLoader = dyn Fn(&mut NamedTensors, bool) -> Result<Box<dyn TrainableSae>> + Send + Sync;

type Loaders = BTreeMap<ArchitectureName, Arc<SaeLoader>>;

static LOADERS: RwLock<Loaders> = RwLock::new(BTreeMap::new());

/// Registers `load` as the loader of the architecture `name` for this process (replacing any
/// earlier one of that name); returns the [`Architecture`] that names it.
pub fn register_loader(
    name: &str,
    load: impl Fn(&mut NamedTensors, bool) -> Result<Box<dyn TrainableSae>> + Send + Sync + 'static,
) -> Architecture {
    let name = ArchitectureName::new(name);
    LOADERS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name, Arc::new(load));
    Architecture::Registered { name }
}

/// The registered architecture called `name` in a file, if a loader is registered for it.
pub fn registered(name: &str) -> Option<Architecture> {
    let loaders = LOADERS.read().unwrap_or_else(|p| p.into_inner());
    loaders
        .keys()
        .find(|registered| registered.as_str() == name)
        .map(|&name| Architecture::Registered { name })
}

/// The names with a registered loader, sorted.
pub fn registered_names() -> Vec<&'static str> {
    let loaders = LOADERS.read().unwrap_or_else(|p| p.into_inner());
    loaders.keys().map(ArchitectureName::as_str).collect()
}

/// Builds an SAE of the registered architecture `name` from `tensors`.
pub(crate) fn load_registered(
    name: ArchitectureName,
    tensors: &mut NamedTensors,
    apply_b_dec_to_input: bool,
) -> Result<Box<dyn TrainableSae>> {
    let load = LOADERS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned()
        .ok_or_else(|| {
            SaeError::Config(format!(
                "no loader is registered for the architecture `{name}` (registered: {}); \
                 register it with sae_core::arch::register_loader (or \
                 trainer::Registry::register_architecture) before loading its files",
                describe_registered()
            ))
        })?;
    load(tensors, apply_b_dec_to_input)
}

/// The registered names as `a, b`, or `none`.
pub(crate) fn describe_registered() -> String {
    file_io::list_or_none(registered_names())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unregistered_name_is_refused_with_what_is_registered() {
        let name = ArchitectureName::new("registry-test-unregistered");
        let error = load_registered(name, &mut NamedTensors::default(), false)
            .err()
            .expect("nothing is registered under this name")
            .to_string();
        assert!(
            error.contains(
                "no loader is registered for the architecture `registry-test-unregistered`"
            ),
            "{error}"
        );
        assert_eq!(registered("registry-test-unregistered"), None);
    }

    #[test]
    fn a_registered_loader_is_found_by_its_file_name() {
        let architecture = register_loader("registry-test-registered", |tensors, _| {
            Err(SaeError::Config(format!("called with {tensors:?}")))
        });
        assert_eq!(registered("registry-test-registered"), Some(architecture));
        assert!(registered_names().contains(&"registry-test-registered"));
    }
}
