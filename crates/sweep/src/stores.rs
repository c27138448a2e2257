//! The stores of a sweep and the training runs that read them: a hook's store feeds its SAEs,
//! a layer's MLP store its transcoders, and the store of every transcoder layer's MLP input
//! and output feeds the cross-layer transcoders, one run each.

use gemma_hooks::HookPoint;

/// The name of the store that holds the MLP input and output of every transcoder layer, read
/// by the sweep's CLTs.
pub const CLT_STORE: &str = "mlp_all_layers";

/// What a store holds and whose dictionaries read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// One hook, read by the `saes` templates.
    Hook(HookPoint),
    /// One layer's MLP input and output, read by the `transcoders` templates.
    Mlp(usize),
    /// The MLP input and output of each of these layers (increasing), read by the `clts`
    /// templates.
    MlpLayers(Vec<usize>),
}

/// One store of a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepStore {
    /// Its name, which names its folder: the hook's (`blocks.9.hook_resid_post`),
    /// `blocks.L.mlp_transcoder`, or [`CLT_STORE`].
    pub name: String,
    /// What it holds.
    pub kind: StoreKind,
}

impl SweepStore {
    /// The store of the SAEs of `hook`.
    pub fn of_hook(hook: HookPoint) -> Self {
        Self {
            name: hook.to_string(),
            kind: StoreKind::Hook(hook),
        }
    }

    /// The store of the transcoders of layer `layer`'s MLP.
    pub fn of_mlp(layer: usize) -> Self {
        Self {
            name: format!("blocks.{layer}.mlp_transcoder"),
            kind: StoreKind::Mlp(layer),
        }
    }

    /// The store of the CLTs over `layers` (increasing).
    pub fn of_mlp_layers(layers: Vec<usize>) -> Self {
        Self {
            name: CLT_STORE.into(),
            kind: StoreKind::MlpLayers(layers),
        }
    }

    /// The hooks it holds, in order (an MLP's input, then its output).
    pub fn hooks(&self) -> Vec<HookPoint> {
        match &self.kind {
            StoreKind::Hook(hook) => vec![*hook],
            StoreKind::Mlp(layer) => vec![HookPoint::MlpIn(*layer), HookPoint::MlpOut(*layer)],
            StoreKind::MlpLayers(layers) => layers
                .iter()
                .flat_map(|&l| [HookPoint::MlpIn(l), HookPoint::MlpOut(l)])
                .collect(),
        }
    }

    /// The key of the sweep file its templates come from: `saes`, `transcoders` or `clts`.
    pub fn templates_key(&self) -> &'static str {
        match self.kind {
            StoreKind::Hook(_) => "saes",
            StoreKind::Mlp(_) => "transcoders",
            StoreKind::MlpLayers(_) => "clts",
        }
    }

    /// Whether its key in the sweep file is `transcoder_layers` (else `layers` or `hooks`).
    pub fn from_transcoder_layers(&self) -> bool {
        !matches!(self.kind, StoreKind::Hook(_))
    }
}

/// One training task of a sweep: the dictionaries it trains from one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingRun {
    /// The store it reads.
    pub store: SweepStore,
    /// Its run folder's name (`train/RUN/`) where it is not the store's: a CLT's own name.
    pub run: Option<String>,
    /// Each dictionary it trains: (template index among the store's kind's templates, width).
    pub dictionaries: Vec<(usize, usize)>,
}

impl TrainingRun {
    /// The name of its run folder (and of its checkpoints and evaluation).
    pub fn folder(&self) -> &str {
        self.run.as_deref().unwrap_or(&self.store.name)
    }
}

/// The training runs of `stores`, with `templates(key)` templates of each kind and `widths`:
/// one per SAE or transcoder store (every template at every width), one per CLT (template ×
/// width) on the CLT store, named `NAME-wWIDTH` by `name(key, template)`.
pub fn training_runs(
    stores: &[SweepStore],
    templates: &dyn Fn(&str) -> usize,
    widths: &[usize],
    name: &dyn Fn(&str, usize) -> String,
) -> Vec<TrainingRun> {
    let mut runs = Vec::new();
    for store in stores {
        let key = store.templates_key();
        let every: Vec<(usize, usize)> = (0..templates(key))
            .flat_map(|t| widths.iter().map(move |&w| (t, w)))
            .collect();
        match store.kind {
            StoreKind::MlpLayers(_) => {
                for (template, width) in every {
                    runs.push(TrainingRun {
                        store: store.clone(),
                        run: Some(format!("{}-w{width}", name(key, template))),
                        dictionaries: vec![(template, width)],
                    });
                }
            }
            _ => runs.push(TrainingRun {
                store: store.clone(),
                run: None,
                dictionaries: every,
            }),
        }
    }
    runs
}
