//! What a Gemma Scope release path says about its SAE: the layer, the site, the width and the
//! release's average L0, read from folder names such as
//! `gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz`.

use std::path::{Path, PathBuf};

use crate::{Result, SaeError};

/// The site a Gemma Scope SAE reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseSite {
    /// The residual stream after the block (`…-res`, `blocks.L.hook_resid_post`).
    Residual,
    /// The MLP's output (`…-mlp`, `blocks.L.hook_mlp_out`).
    Mlp,
    /// The attention heads' concatenated outputs before `o_proj` (`…-att`,
    /// `blocks.L.attn.hook_z`).
    Attention,
}

impl ReleaseSite {
    /// The site's short name in release folder names: `res`, `mlp`, `att`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Residual => "res",
            Self::Mlp => "mlp",
            Self::Attention => "att",
        }
    }

    /// The site named `res`, `mlp` or `att`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Residual, Self::Mlp, Self::Attention]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// The TransformerLens hook name of this site at `layer`.
    pub fn hook_name(self, layer: usize) -> String {
        match self {
            Self::Residual => format!("blocks.{layer}.hook_resid_post"),
            Self::Mlp => format!("blocks.{layer}.hook_mlp_out"),
            Self::Attention => format!("blocks.{layer}.attn.hook_z"),
        }
    }
}

/// A released SAE's identity, read from its path.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePath {
    /// The `params.npz` file.
    pub path: PathBuf,
    /// The layer (`layer_N`).
    pub layer: usize,
    /// The site (a folder ending in `-res`, `-mlp` or `-att`, or given).
    pub site: ReleaseSite,
    /// `16k`, `65k`, … (`width_…`; `?` when the path has none).
    pub width: String,
    /// The release's `average_l0_K`, when the path has one.
    pub average_l0: Option<f64>,
}

impl ReleasePath {
    /// Reads layer, site, width and average L0 from the folder names of `path` (a `params.npz`
    /// file or its folder). `site` (`res`, `mlp`, `att`) overrides the path's.
    pub fn parse(path: &Path, site: Option<&str>) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("params.npz")
        } else {
            path.to_path_buf()
        };
        let parts: Vec<String> = file
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let value = |prefix: &str| {
            parts
                .iter()
                .find_map(|p| p.strip_prefix(prefix).map(str::to_string))
        };
        let layer = value("layer_")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| SaeError::format(&file, "no `layer_N` folder in the path"))?;
        let site = match site {
            Some(name) => ReleaseSite::parse(name).ok_or_else(|| {
                SaeError::format(&file, format!("unknown site `{name}` (res, mlp or att)"))
            })?,
            None => [
                ReleaseSite::Residual,
                ReleaseSite::Mlp,
                ReleaseSite::Attention,
            ]
            .into_iter()
            .find(|s| parts.iter().any(|p| p.ends_with(&format!("-{}", s.name()))))
            .ok_or_else(|| {
                SaeError::format(
                    &file,
                    "the path names no site (…-res, …-mlp, …-att); pass the site",
                )
            })?,
        };
        Ok(Self {
            layer,
            width: value("width_").unwrap_or_else(|| "?".into()),
            average_l0: value("average_l0_").and_then(|v| v.parse().ok()),
            site,
            path: file,
        })
    }

    /// The hook name Gemma Scope trained this SAE on.
    pub fn hook_name(&self) -> String {
        self.site.hook_name(self.layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_paths_name_layer_site_width_and_l0() {
        let release = ReleasePath::parse(
            Path::new("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz"),
            None,
        )
        .unwrap();
        assert_eq!(release.layer, 12);
        assert_eq!(release.site, ReleaseSite::Residual);
        assert_eq!(release.width, "16k");
        assert_eq!(release.average_l0, Some(82.0));
        assert_eq!(release.hook_name(), "blocks.12.hook_resid_post");
        let att = ReleasePath::parse(Path::new("x/layer_3/params.npz"), Some("att")).unwrap();
        assert_eq!(att.hook_name(), "blocks.3.attn.hook_z");
        assert!(ReleasePath::parse(Path::new("x/layer_3/params.npz"), None).is_err());
        assert!(ReleasePath::parse(Path::new("x-res/params.npz"), None).is_err());
        assert!(ReleasePath::parse(Path::new("x/layer_3/params.npz"), Some("mlp2")).is_err());
    }
}
