//! A synthetic model: feature vectors, firing probabilities, hierarchy, correlation factor,
//! magnitudes and bias ([`SyntheticModel`]), built from a [`SyntheticConfig`] with this crate's
//! seeded generator, and saved to / loaded from one safetensors file.
//!
//! The build follows SAELens 6.54's `SyntheticModel` step by step (hierarchy, correlation
//! factor, feature dictionary, then probabilities and magnitudes, each from its own seed
//! `seed + k`), with [`rand`]'s `StdRng` in place of torch's generator: a model built here is
//! equal to SAELens's in distribution, not bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Branching, HierarchyConfig, SyntheticConfig};
use crate::{GroundTruthError, Result};

/// One node of a [`Hierarchy`]: a feature (or a grouping node without one) and its children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HierarchyNode {
    /// The feature this node stands for (`None`: a grouping node; its children's parent is
    /// the nearest ancestor with a feature).
    pub feature: Option<u32>,
    /// Indices of the children in [`Hierarchy::nodes`], in order.
    pub children: Vec<usize>,
    /// At most one child feature fires (a uniformly chosen one among those that would).
    pub mutually_exclusive: bool,
    /// Children's magnitudes are multiplied by `parent activation / parent mean magnitude`
    /// rather than gated on/off.
    pub scale_children_by_parent: bool,
}

/// A forest of feature trees: a child feature can only fire when its parent feature fires.
///
/// Nodes are kept in breadth-first order (roots first, then every node's children in order),
/// so two hierarchies with the same trees compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hierarchy {
    nodes: Vec<HierarchyNode>,
    roots: Vec<usize>,
}

impl Hierarchy {
    /// No trees: every feature independent.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A forest from its nodes and the indices of its roots. Refused: an index out of range, a
    /// node with two parents or that is also a root, a node no root reaches, a feature in two
    /// nodes, and mutual exclusion on a node with fewer than two children (as SAELens refuses).
    pub fn new(nodes: Vec<HierarchyNode>, roots: Vec<usize>) -> Result<Self> {
        let invalid = |m: String| GroundTruthError::Invalid(format!("hierarchy: {m}"));
        let mut parent_of = vec![None; nodes.len()];
        for &r in &roots {
            if r >= nodes.len() {
                return Err(invalid(format!(
                    "root {r} out of range ({} nodes)",
                    nodes.len()
                )));
            }
            if parent_of[r].replace(usize::MAX).is_some() {
                return Err(invalid(format!("node {r} is listed as a root twice")));
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            if node.mutually_exclusive && node.children.len() < 2 {
                return Err(invalid(format!(
                    "node {i} has mutually exclusive children but only {} child(ren)",
                    node.children.len()
                )));
            }
            for &c in &node.children {
                if c >= nodes.len() {
                    return Err(invalid(format!(
                        "node {i} has child {c}, out of range ({} nodes)",
                        nodes.len()
                    )));
                }
                if parent_of[c].replace(i).is_some() {
                    return Err(invalid(format!(
                        "node {c} has two parents (or is also a root)"
                    )));
                }
            }
        }
        // Breadth-first renumbering; with one parent per node, reaching every node from the
        // roots also rules out cycles.
        let mut order = roots.clone();
        let mut head = 0;
        while head < order.len() {
            order.extend(nodes[order[head]].children.iter().copied());
            head += 1;
        }
        if order.len() != nodes.len() {
            let reached: std::collections::HashSet<usize> = order.iter().copied().collect();
            let lost = (0..nodes.len()).find(|i| !reached.contains(i)).unwrap_or(0);
            return Err(invalid(format!(
                "node {lost} is not reachable from any root"
            )));
        }
        let mut new_index = vec![0; nodes.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut seen = std::collections::HashSet::new();
        let mut renumbered = Vec::with_capacity(nodes.len());
        for &old in &order {
            let node = &nodes[old];
            if let Some(f) = node.feature
                && !seen.insert(f)
            {
                return Err(invalid(format!("feature {f} appears in two nodes")));
            }
            renumbered.push(HierarchyNode {
                feature: node.feature,
                children: node.children.iter().map(|&c| new_index[c]).collect(),
                mutually_exclusive: node.mutually_exclusive,
                scale_children_by_parent: node.scale_children_by_parent,
            });
        }
        let roots = (0..roots.len()).collect();
        Ok(Self {
            nodes: renumbered,
            roots,
        })
    }

    /// Generates the forest `config` describes over `num_features` features, as SAELens's
    /// `generate_hierarchy` does: roots are features `0..roots`; breadth first, every node
    /// above `max_depth` gets `branching` children with the next feature indices (until the
    /// features run out); a random `mutually_exclusive_portion` of the eligible parents get
    /// mutually exclusive children; every parent scales its children if configured.
    pub fn generate(num_features: usize, config: &HierarchyConfig, rng: &mut impl Rng) -> Self {
        let mut nodes: Vec<HierarchyNode> = Vec::new();
        let leaf = |f: usize| HierarchyNode {
            feature: Some(f as u32),
            children: Vec::new(),
            mutually_exclusive: false,
            scale_children_by_parent: false,
        };
        let root_count = config.roots.min(num_features);
        nodes.extend((0..root_count).map(leaf));
        let mut parents: Vec<(usize, usize)> = (0..root_count).map(|r| (r, 0)).collect();
        let mut level: Vec<usize> = (0..root_count).collect();
        let mut depth = 0;
        while !level.is_empty() && depth < config.max_depth {
            let mut next_level = Vec::new();
            for &p in &level {
                let branching = match config.branching {
                    Branching::Fixed(b) => b,
                    Branching::Range { min, max } => rng.random_range(min..=max),
                };
                for _ in 0..branching {
                    if nodes.len() >= num_features {
                        break;
                    }
                    let child = nodes.len();
                    nodes.push(leaf(child));
                    nodes[p].children.push(child);
                    if depth + 1 < config.max_depth {
                        next_level.push(child);
                        parents.push((child, depth + 1));
                    }
                }
            }
            level = next_level;
            depth += 1;
        }
        let eligible: Vec<usize> = parents
            .iter()
            .filter(|&&(node, d)| {
                d >= config.mutually_exclusive_min_depth
                    && config.mutually_exclusive_max_depth.is_none_or(|m| d <= m)
                    && nodes[node].children.len() >= 2
            })
            .map(|&(node, _)| node)
            .collect();
        let chosen = (eligible.len() as f64 * config.mutually_exclusive_portion).floor() as usize;
        for i in rand::seq::index::sample(rng, eligible.len(), chosen.min(eligible.len())) {
            nodes[eligible[i]].mutually_exclusive = true;
        }
        if config.scale_children_by_parent {
            for &(node, _) in &parents {
                nodes[node].scale_children_by_parent = true;
            }
        }
        // Generated in breadth-first order already: this is the canonical form.
        Self {
            nodes,
            roots: (0..root_count).collect(),
        }
    }

    /// The nodes, breadth first.
    pub fn nodes(&self) -> &[HierarchyNode] {
        &self.nodes
    }

    /// Indices of the root nodes.
    pub fn roots(&self) -> &[usize] {
        &self.roots
    }

    /// Whether there are no trees.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The parent feature of each of `num_features` features (the nearest ancestor node with
    /// a feature; `None` for roots, features outside the trees, and features only grouping
    /// nodes lie above).
    pub fn parents(&self, num_features: usize) -> Vec<Option<u32>> {
        let mut parents = vec![None; num_features];
        let mut above: Vec<Option<u32>> = vec![None; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            // Breadth first: `above[i]` is final before node i is visited.
            let own = node.feature.or(above[i]);
            if let Some(f) = node.feature
                && let Some(slot) = parents.get_mut(f as usize)
            {
                *slot = above[i];
            }
            for &c in &node.children {
                above[c] = own;
            }
        }
        parents
    }

    /// Each group of mutually exclusive sibling features, with the parent feature (`None` for a
    /// group under a grouping node with no feature above it).
    pub fn exclusive_groups(&self) -> Vec<(Option<u32>, Vec<u32>)> {
        let parents = self.node_parent_features();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.mutually_exclusive)
            .filter_map(|(i, n)| {
                let siblings: Vec<u32> = n
                    .children
                    .iter()
                    .filter_map(|&c| self.nodes[c].feature)
                    .collect();
                (siblings.len() >= 2).then(|| (n.feature.or(parents[i]), siblings))
            })
            .collect()
    }

    /// For each node, the nearest feature strictly above it.
    fn node_parent_features(&self) -> Vec<Option<u32>> {
        let mut above: Vec<Option<u32>> = vec![None; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            let own = node.feature.or(above[i]);
            for &c in &node.children {
                above[c] = own;
            }
        }
        above
    }

    /// SAELens's probability compensation: `base` times, for a feature below a parent
    /// feature of base probability `P`, `1/P`, and for a member of a mutually exclusive group,
    /// `1 + (sum of its siblings' base probabilities) / P`; clamped to 1.
    pub fn compensated_probabilities(&self, base: &[f32]) -> Vec<f32> {
        let mut factor = vec![1f64; base.len()];
        let base_of = |f: u32| base.get(f as usize).copied().unwrap_or(0.0) as f64;
        // The probability a node's children see: its own feature's, or its parent's.
        let mut seen_prob = vec![1f64; self.nodes.len()];
        let mut parent_prob = vec![1f64; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            let above = parent_prob[i];
            seen_prob[i] = match node.feature {
                Some(f) => {
                    if above > 0.0
                        && let Some(slot) = factor.get_mut(f as usize)
                    {
                        *slot = 1.0 / above;
                    }
                    base_of(f)
                }
                None => above,
            };
            for &c in &node.children {
                parent_prob[c] = seen_prob[i];
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.mutually_exclusive || seen_prob[i] <= 0.0 {
                continue;
            }
            let members: Vec<u32> = node
                .children
                .iter()
                .filter_map(|&c| self.nodes[c].feature)
                .collect();
            if members.len() < 2 {
                continue;
            }
            let total: f64 = members.iter().map(|&f| base_of(f)).sum();
            for &f in &members {
                let others = (total - base_of(f)).max(0.0);
                if let Some(slot) = factor.get_mut(f as usize) {
                    *slot *= 1.0 + others / seen_prob[i];
                }
            }
        }
        base.iter()
            .zip(&factor)
            .map(|(&p, &k)| (p * k as f32).min(1.0))
            .collect()
    }
}

/// The low-rank correlation of the firing decisions: correlation matrix
/// `factor·factorᵀ + diag(diag)` with unit diagonal.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankCorrelation {
    /// Columns of `factor`.
    pub rank: usize,
    /// `num_features × rank`, row-major.
    pub factor: Vec<f32>,
    /// `1 − ‖factorᵢ‖²` per feature (> 0).
    pub diag: Vec<f32>,
}

impl LowRankCorrelation {
    /// SAELens's `generate_random_low_rank_correlation_matrix`: `N(0, scale²)` entries; rows
    /// whose squared norm exceeds 0.99 are shrunk to 0.99; `diag = 1 − ‖row‖²`.
    pub fn generate(num_features: usize, rank: usize, scale: f64, rng: &mut impl Rng) -> Self {
        const MIN_DIAG: f32 = 0.01;
        let mut factor: Vec<f32> = (0..num_features * rank)
            .map(|_| {
                let z: f32 = StandardNormal.sample(rng);
                z * scale as f32
            })
            .collect();
        let mut diag = Vec::with_capacity(num_features);
        for row in factor.chunks_mut(rank.max(1)).take(num_features) {
            let sq: f32 = row.iter().map(|v| v * v).sum();
            if 1.0 - sq < MIN_DIAG {
                let shrink = ((1.0 - MIN_DIAG) / sq).sqrt();
                row.iter_mut().for_each(|v| *v *= shrink);
            }
            let sq: f32 = row.iter().map(|v| v * v).sum();
            diag.push(1.0 - sq);
        }
        Self { rank, factor, diag }
    }
}

/// The parts of a [`SyntheticModel`], for building one from data made elsewhere
/// ([`SyntheticModel::from_parts`]) or taking one apart ([`SyntheticModel::into_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParts {
    /// What the model was made from (for an imported model: its translated settings).
    pub config: SyntheticConfig,
    /// `num_features × hidden_dim`, row-major, unit rows.
    pub feature_vectors: Vec<f32>,
    /// `hidden_dim` values added to every activation.
    pub bias: Vec<f32>,
    /// Per feature, after the hierarchy's compensation, in [0, 1].
    pub firing_probabilities: Vec<f32>,
    /// Per feature, mean magnitude when firing (≥ 0).
    pub mean_magnitudes: Vec<f32>,
    /// Per feature, standard deviation of the magnitude (≥ 0).
    pub std_magnitudes: Vec<f32>,
    /// Parent/child structure.
    pub hierarchy: Hierarchy,
    /// Correlation of the firing decisions, if any.
    pub correlation: Option<LowRankCorrelation>,
}

/// A synthetic model: the true features and how they fire. Sample it with
/// [`crate::sample::Sampler`] or [`crate::source::SyntheticSource`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticModel {
    parts: ModelParts,
}

/// The `format` metadata value of this crate's model files.
pub const FILE_FORMAT: &str = "ground-truth/synthetic-model";
/// The `version` metadata value of this crate's model files.
pub const FILE_VERSION: &str = "1";

impl SyntheticModel {
    /// Builds the model `config` describes (validated first). The orthogonalisation is the
    /// expensive part: `2·n·d²` multiply-adds per step (about a minute for SynthSAEBench-16k on
    /// two cores).
    pub fn build(config: &SyntheticConfig) -> Result<Self> {
        Self::build_with_progress(config, &mut |_, _| {})
    }

    /// [`SyntheticModel::build`], calling `progress(step, steps)` after each orthogonalisation
    /// step.
    pub fn build_with_progress(
        config: &SyntheticConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        config.validate()?;
        let (n, d) = (config.num_features, config.hidden_dim);
        let rng_for = |k: u64| StdRng::seed_from_u64(config.seed.wrapping_add(k));

        let hierarchy = match &config.hierarchy {
            Some(h) => Hierarchy::generate(n, h, &mut rng_for(3)),
            None => Hierarchy::empty(),
        };
        let correlation = config
            .correlation
            .as_ref()
            .map(|c| LowRankCorrelation::generate(n, c.rank, c.scale, &mut rng_for(4)));

        let mut rng = rng_for(0);
        let mut feature_vectors: Vec<f32> = (0..n * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        normalize_rows(&mut feature_vectors, d);
        let mut bias = vec![0f32; d];
        if config.bias_norm > 0.0 {
            bias.iter_mut()
                .for_each(|b| *b = StandardNormal.sample(&mut rng));
            let norm = bias.iter().map(|b| b * b).sum::<f32>().sqrt().max(1e-8);
            let scale = config.bias_norm as f32 / norm;
            bias.iter_mut().for_each(|b| *b *= scale);
        }
        if let Some(o) = &config.orthogonalization {
            orthogonalize(&mut feature_vectors, n, d, o.steps, o.lr, progress)?;
        }

        let base = config.firing_probability.probabilities(n, &mut rng_for(0));
        let firing_probabilities = match &config.hierarchy {
            Some(h) if h.compensate_probabilities => hierarchy.compensated_probabilities(&base),
            _ => base,
        };
        let std_magnitudes = config.std_magnitude.values(n, &mut rng_for(1));
        let mean_magnitudes = config.mean_magnitude.values(n, &mut rng_for(2));
        Self::from_parts(ModelParts {
            config: config.clone(),
            feature_vectors,
            bias,
            firing_probabilities,
            mean_magnitudes,
            std_magnitudes,
            hierarchy,
            correlation,
        })
    }

    /// The model from its parts, after checking that sizes agree and values are in range.
    pub fn from_parts(parts: ModelParts) -> Result<Self> {
        let invalid = |m: String| GroundTruthError::Invalid(m);
        parts.config.validate()?;
        let (n, d) = (parts.config.num_features, parts.config.hidden_dim);
        let sized = |name: &str, len: usize, want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name} has {len} values, the config's sizes need {want}"
                )))
            }
        };
        sized("feature_vectors", parts.feature_vectors.len(), n * d)?;
        sized("bias", parts.bias.len(), d)?;
        sized("firing_probabilities", parts.firing_probabilities.len(), n)?;
        sized("mean_magnitudes", parts.mean_magnitudes.len(), n)?;
        sized("std_magnitudes", parts.std_magnitudes.len(), n)?;
        let check = |name: &str, values: &[f32], ok: &dyn Fn(f32) -> bool, range: &str| match values
            .iter()
            .position(|&v| !ok(v))
        {
            None => Ok(()),
            Some(i) => Err(invalid(format!(
                "{name}[{i}] = {}: must be {range}",
                values[i]
            ))),
        };
        check(
            "feature_vectors",
            &parts.feature_vectors,
            &|v| v.is_finite(),
            "finite",
        )?;
        check("bias", &parts.bias, &|v| v.is_finite(), "finite")?;
        let probability = |v: f32| (0.0..=1.0).contains(&v);
        check(
            "firing_probabilities",
            &parts.firing_probabilities,
            &probability,
            "in [0, 1]",
        )?;
        let nonnegative = |v: f32| v.is_finite() && v >= 0.0;
        check(
            "mean_magnitudes",
            &parts.mean_magnitudes,
            &nonnegative,
            "finite and ≥ 0",
        )?;
        check(
            "std_magnitudes",
            &parts.std_magnitudes,
            &nonnegative,
            "finite and ≥ 0",
        )?;
        if let Some(c) = &parts.correlation {
            if c.rank == 0 {
                return Err(invalid("correlation rank 0".into()));
            }
            sized("correlation factor", c.factor.len(), n * c.rank)?;
            sized("correlation diag", c.diag.len(), n)?;
            check(
                "correlation factor",
                &c.factor,
                &|v| v.is_finite(),
                "finite",
            )?;
            check(
                "correlation diag",
                &c.diag,
                &|v| v.is_finite() && v > 0.0,
                "finite and > 0",
            )?;
        }
        let h = &parts.hierarchy;
        for node in h.nodes() {
            if let Some(f) = node.feature
                && f as usize >= n
            {
                return Err(invalid(format!(
                    "hierarchy: feature {f} out of range ({n} features)"
                )));
            }
        }
        // A scaling parent divides by its mean magnitude.
        let above = h.node_parent_features();
        for (i, node) in h.nodes().iter().enumerate() {
            if !node.scale_children_by_parent || node.children.is_empty() {
                continue;
            }
            if let Some(p) = node.feature.or(above[i])
                && parts.mean_magnitudes[p as usize] <= 0.0
            {
                return Err(invalid(format!(
                    "hierarchy: feature {p} scales its children by its activation / its mean magnitude, which is 0"
                )));
            }
        }
        Ok(Self { parts })
    }

    /// The parts, for changing and rebuilding ([`SyntheticModel::from_parts`]).
    pub fn into_parts(self) -> ModelParts {
        self.parts
    }

    /// The parts, read only.
    pub fn parts(&self) -> &ModelParts {
        &self.parts
    }

    /// What the model was made from.
    pub fn config(&self) -> &SyntheticConfig {
        &self.parts.config
    }

    /// Number of true features.
    pub fn num_features(&self) -> usize {
        self.parts.config.num_features
    }

    /// Dimension of the activations.
    pub fn hidden_dim(&self) -> usize {
        self.parts.config.hidden_dim
    }

    /// The feature vectors, `num_features × hidden_dim` row-major.
    pub fn feature_vectors(&self) -> &[f32] {
        &self.parts.feature_vectors
    }

    /// Feature `f`'s vector (`None` out of range).
    pub fn feature_vector(&self, f: usize) -> Option<&[f32]> {
        let d = self.hidden_dim();
        self.parts.feature_vectors.get(f * d..(f + 1) * d)
    }

    /// The feature vectors as a `[num_features, hidden_dim]` f32 tensor.
    pub fn feature_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.parts.feature_vectors,
            (self.num_features(), self.hidden_dim()),
            device,
        )?)
    }

    /// The bias added to every activation.
    pub fn bias(&self) -> &[f32] {
        &self.parts.bias
    }

    /// Per-feature firing probabilities (after compensation; before the hierarchy's gating, so
    /// not the rates at which features are seen active).
    pub fn firing_probabilities(&self) -> &[f32] {
        &self.parts.firing_probabilities
    }

    /// Per-feature mean magnitude when firing (before a parent's scaling).
    pub fn mean_magnitudes(&self) -> &[f32] {
        &self.parts.mean_magnitudes
    }

    /// Per-feature magnitude standard deviation.
    pub fn std_magnitudes(&self) -> &[f32] {
        &self.parts.std_magnitudes
    }

    /// The hierarchy (empty when none).
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.parts.hierarchy
    }

    /// The correlation of the firing decisions, if any.
    pub fn correlation(&self) -> Option<&LowRankCorrelation> {
        self.parts.correlation.as_ref()
    }

    /// SHA-256 (hex) of everything that determines the samples: the config and every array,
    /// in a fixed order. Equal digests: equal models.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(FILE_FORMAT.as_bytes());
        hash.update(FILE_VERSION.as_bytes());
        let config = serde_json::to_string(&self.parts.config).unwrap_or_default();
        hash.update((config.len() as u64).to_le_bytes());
        hash.update(config.as_bytes());
        for (name, dtype, shape, bytes) in self.arrays() {
            hash.update((name.len() as u64).to_le_bytes());
            hash.update(name.as_bytes());
            hash.update(format!("{dtype:?}{shape:?}").as_bytes());
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every array of the file format: name, dtype, shape, little-endian bytes.
    fn arrays(&self) -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        let p = &self.parts;
        let (n, d) = (self.num_features(), self.hidden_dim());
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut arrays = vec![
            (
                "feature_vectors",
                Dtype::F32,
                vec![n, d],
                f32s(&p.feature_vectors),
            ),
            ("bias", Dtype::F32, vec![d], f32s(&p.bias)),
            (
                "firing_probabilities",
                Dtype::F32,
                vec![n],
                f32s(&p.firing_probabilities),
            ),
            (
                "mean_magnitudes",
                Dtype::F32,
                vec![n],
                f32s(&p.mean_magnitudes),
            ),
            (
                "std_magnitudes",
                Dtype::F32,
                vec![n],
                f32s(&p.std_magnitudes),
            ),
        ];
        if let Some(c) = &p.correlation {
            arrays.push((
                "correlation_factor",
                Dtype::F32,
                vec![n, c.rank],
                f32s(&c.factor),
            ));
            arrays.push(("correlation_diag", Dtype::F32, vec![n], f32s(&c.diag)));
        }
        let nodes = p.hierarchy.nodes();
        if !nodes.is_empty() {
            let mut parent = vec![-1i64; nodes.len()];
            for (i, node) in nodes.iter().enumerate() {
                for &c in &node.children {
                    parent[c] = i as i64;
                }
            }
            let feature: Vec<i64> = nodes
                .iter()
                .map(|n| n.feature.map_or(-1, i64::from))
                .collect();
            let flags: Vec<u8> = nodes
                .iter()
                .map(|n| {
                    u8::from(n.mutually_exclusive) | (u8::from(n.scale_children_by_parent) << 1)
                })
                .collect();
            let m = nodes.len();
            arrays.push(("hierarchy_feature", Dtype::I64, vec![m], i64s(&feature)));
            arrays.push(("hierarchy_parent", Dtype::I64, vec![m], i64s(&parent)));
            arrays.push(("hierarchy_flags", Dtype::U8, vec![m], flags));
        }
        arrays
    }

    /// Writes the model to `path` (one safetensors file; metadata `format`, `version` and the
    /// config as JSON), atomically: a reader sees the old file or the whole new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let arrays = self.arrays();
        let views = arrays
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes).map(|v| (*name, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format_error(path, format!("cannot be written: {e}")))?;
        let config = serde_json::to_string(&self.parts.config)
            .map_err(|e| format_error(path, format!("config cannot be written: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), FILE_FORMAT.to_string()),
            ("version".to_string(), FILE_VERSION.to_string()),
            ("config".to_string(), config),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| format_error(path, format!("cannot be written: {e}")))?;
        file_io::write_bytes_atomically(path, &bytes)?;
        Ok(())
    }

    /// Reads a model [`SyntheticModel::save`] wrote; a missing, truncated or otherwise broken
    /// file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| GroundTruthError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let fail = |m: String| format_error(path, m);
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a readable safetensors file (truncated?): {e}")))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("not a readable safetensors file (truncated?): {e}")))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FILE_FORMAT) {
            return Err(fail(format!(
                "not a synthetic model file (metadata format is {:?}, expected {FILE_FORMAT:?})",
                meta.get("format")
            )));
        }
        if meta.get("version").map(String::as_str) != Some(FILE_VERSION) {
            return Err(fail(format!(
                "synthetic model file version {:?}; this build reads version {FILE_VERSION}",
                meta.get("version")
            )));
        }
        let config: SyntheticConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| fail("no config in the metadata".into()))?,
        )
        .map_err(|e| fail(format!("config in the metadata: {e}")))?;
        let (n, d) = (config.num_features, config.hidden_dim);
        let f32s = |name: &str, shape: &[usize]| read_f32(&tensors, name, shape, path);
        let correlation = if tensors.names().contains(&"correlation_factor") {
            let rank = tensors
                .tensor("correlation_factor")
                .map_err(|e| fail(format!("correlation_factor: {e}")))?
                .shape()
                .get(1)
                .copied()
                .unwrap_or(0);
            Some(LowRankCorrelation {
                rank,
                factor: f32s("correlation_factor", &[n, rank])?,
                diag: f32s("correlation_diag", &[n])?,
            })
        } else {
            None
        };
        let hierarchy = read_hierarchy(&tensors, path)?;
        Self::from_parts(ModelParts {
            feature_vectors: f32s("feature_vectors", &[n, d])?,
            bias: f32s("bias", &[d])?,
            firing_probabilities: f32s("firing_probabilities", &[n])?,
            mean_magnitudes: f32s("mean_magnitudes", &[n])?,
            std_magnitudes: f32s("std_magnitudes", &[n])?,
            hierarchy,
            correlation,
            config,
        })
        .map_err(|e| fail(e.to_string()))
    }

    /// The model cached at `path` if it was built from `config`; otherwise builds it and saves
    /// it there, saying in the returned [`CacheStatus`] whether a model built from another
    /// configuration was replaced. A file at `path` that does not read as a model is an error
    /// naming it, never overwritten: [`SyntheticModel::save`] writes atomically, so such a file
    /// is not an interrupted build of ours.
    pub fn load_or_build(
        path: &Path,
        config: &SyntheticConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Self, CacheStatus)> {
        let status = if path.exists() {
            let cached = Self::load(path)?;
            if cached.config() == config {
                return Ok((cached, CacheStatus::Loaded));
            }
            CacheStatus::ReplacedOtherConfig
        } else {
            CacheStatus::Built
        };
        let model = Self::build_with_progress(config, progress)?;
        model.save(path)?;
        Ok((model, status))
    }
}

/// What [`SyntheticModel::load_or_build`] did with its cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// The file held a model built from the same configuration: read, not rebuilt.
    Loaded,
    /// There was no file: built and saved.
    Built,
    /// The file held a model built from another configuration: built anew and saved over it.
    ReplacedOtherConfig,
}

pub(crate) fn format_error(path: &Path, problem: String) -> GroundTruthError {
    GroundTruthError::Format {
        path: path.to_path_buf(),
        problem,
    }
}

/// A tensor of `tensors` as f32 (from F32, F64, F16 or BF16), checked against `shape`.
pub(crate) fn read_f32(
    tensors: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    path: &Path,
) -> Result<Vec<f32>> {
    let view = tensors
        .tensor(name)
        .map_err(|e| format_error(path, format!("tensor `{name}`: {e}")))?;
    if view.shape() != shape {
        return Err(format_error(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                view.shape()
            ),
        ));
    }
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format_error(
                path,
                format!("tensor `{name}` has dtype {other:?}; expected a float type"),
            ));
        }
    })
}

fn read_i64(tensors: &SafeTensors<'_>, name: &str, path: &Path) -> Result<Vec<i64>> {
    let view = tensors
        .tensor(name)
        .map_err(|e| format_error(path, format!("tensor `{name}`: {e}")))?;
    if view.dtype() != Dtype::I64 || view.shape().len() != 1 {
        return Err(format_error(
            path,
            format!("tensor `{name}` must be a 1-d I64 array"),
        ));
    }
    Ok(view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect())
}

/// Scales every row of `v` (rows of `d`) to unit norm (norms below 1e-8 count as 1e-8).
fn normalize_rows(v: &mut [f32], d: usize) {
    v.par_chunks_mut(d.max(1)).for_each(|row| {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
        row.iter_mut().for_each(|x| *x /= norm);
    });
}

/// SAELens's `orthogonalize_embeddings`: Adam (β = 0.9, 0.999, ε = 1e-8) on
/// `L = Σ_{i≠j} (vᵢ·vⱼ)² + n·Σᵢ (‖vᵢ‖² − 1)²` from the unit-normalised rows, then unit rows
/// again.
///
/// The gradient `∂L/∂vₖ = 4·[(V·Vᵀ·V)ₖ − ‖vₖ‖²·vₖ + n·(‖vₖ‖² − 1)·vₖ]` is computed as
/// `V·(Vᵀ·V)`: two `n·d²` products per step through the `d × d` Gram matrix instead of the
/// `n × n` one (SAELens forms `n × n` in chunks), so memory stays at a few copies of `V`.
fn orthogonalize(
    v: &mut [f32],
    n: usize,
    d: usize,
    steps: usize,
    lr: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f32 = 1e-8;
    normalize_rows(v, d);
    let mut first = vec![0f32; n * d];
    let mut second = vec![0f32; n * d];
    let n_f = n as f32;
    for step in 1..=steps {
        let vt = Tensor::from_slice(v, (n, d), &Device::Cpu)?;
        let gram = vt.t()?.matmul(&vt)?;
        let product: Vec<f32> = vt.matmul(&gram)?.flatten_all()?.to_vec1()?;
        drop(vt);
        let correction1 = (1.0 - BETA1.powi(step as i32)) as f32;
        let sqrt_correction2 = (1.0 - BETA2.powi(step as i32)).sqrt() as f32;
        let step_size = lr as f32 / correction1;
        let (b1, b2) = (BETA1 as f32, BETA2 as f32);
        v.par_chunks_mut(d)
            .zip(product.par_chunks(d))
            .zip(first.par_chunks_mut(d))
            .zip(second.par_chunks_mut(d))
            .for_each(|(((row, p), m), s)| {
                let sq: f32 = row.iter().map(|x| x * x).sum();
                let own = n_f * (sq - 1.0) - sq;
                for i in 0..row.len() {
                    let g = 4.0 * (p[i] + own * row[i]);
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    s[i] = b2 * s[i] + (1.0 - b2) * g * g;
                    let denom = s[i].sqrt() / sqrt_correction2 + EPS;
                    row[i] -= step_size * m[i] / denom;
                }
            });
        progress(step, steps);
    }
    normalize_rows(v, d);
    Ok(())
}

/// The hierarchy a model file stores (`hierarchy_feature`, `hierarchy_parent`,
/// `hierarchy_flags`), or none.
fn read_hierarchy(tensors: &SafeTensors<'_>, path: &Path) -> Result<Hierarchy> {
    let fail = |m: String| format_error(path, m);
    if !tensors.names().contains(&"hierarchy_feature") {
        return Ok(Hierarchy::empty());
    }
    let feature = read_i64(tensors, "hierarchy_feature", path)?;
    let parent = read_i64(tensors, "hierarchy_parent", path)?;
    let flags = tensors
        .tensor("hierarchy_flags")
        .map_err(|e| fail(format!("hierarchy_flags: {e}")))?
        .data()
        .to_vec();
    if parent.len() != feature.len() || flags.len() != feature.len() {
        return Err(fail("hierarchy arrays of different lengths".into()));
    }
    let mut nodes: Vec<HierarchyNode> = feature
        .iter()
        .zip(&flags)
        .map(|(&f, &flag)| {
            Ok(HierarchyNode {
                feature: if f < 0 {
                    None
                } else {
                    Some(
                        u32::try_from(f)
                            .map_err(|_| fail(format!("hierarchy feature {f} out of range")))?,
                    )
                },
                children: Vec::new(),
                mutually_exclusive: flag & 1 != 0,
                scale_children_by_parent: flag & 2 != 0,
            })
        })
        .collect::<Result<_>>()?;
    let mut roots = Vec::new();
    for (i, &p) in parent.iter().enumerate() {
        if p < 0 {
            roots.push(i);
        } else if (p as usize) < nodes.len() {
            nodes[p as usize].children.push(i);
        } else {
            return Err(fail(format!("hierarchy parent {p} out of range")));
        }
    }
    Hierarchy::new(nodes, roots).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The V·(VᵀV) gradient equals the n × n formula on a small case.
    #[test]
    fn gram_gradient_matches_the_pairwise_formula() {
        let (n, d) = (7, 3);
        let mut rng = StdRng::seed_from_u64(1);
        let v: Vec<f64> = (0..n * d).map(|_| rng.random::<f64>() - 0.5).collect();
        let dot = |i: usize, j: usize| (0..d).map(|k| v[i * d + k] * v[j * d + k]).sum::<f64>();
        // Finite differences of L.
        let loss = |v: &[f64]| {
            let dot = |i: usize, j: usize| (0..d).map(|k| v[i * d + k] * v[j * d + k]).sum::<f64>();
            let mut l = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        l += dot(i, j).powi(2);
                    }
                }
                l += n as f64 * (dot(i, i) - 1.0).powi(2);
            }
            l
        };
        for k in 0..n {
            for c in 0..d {
                let mut p = v.clone();
                p[k * d + c] += 1e-6;
                let mut m = v.clone();
                m[k * d + c] -= 1e-6;
                let numeric = (loss(&p) - loss(&m)) / 2e-6;
                let gv: f64 = (0..n).map(|j| dot(k, j) * v[j * d + c]).sum();
                let sq = dot(k, k);
                let analytic = 4.0 * (gv + (n as f64 * (sq - 1.0) - sq) * v[k * d + c]);
                assert!((numeric - analytic).abs() < 1e-4 * (1.0 + analytic.abs()));
            }
        }
    }
}
