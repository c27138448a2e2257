//! `gemma-scope dump-activations`: a model's activations at named hook points, its logits and
//! per-token loss, written to one safetensors file.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, Hooks, next_token_loss};

use lab::device::DeviceOptions;

/// Arguments of `dump-activations`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// A Hugging Face model directory, a .gguf file, a repo id in the hf-hub cache, or
    /// `gemma-3-270m` (the embedded model, fetched once).
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Text to run (tokenised with BOS first, one row).
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub text: Option<String>,
    /// JSON file `{"input_ids": [[2, …], …]}`: equal-length rows run as one batch.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Hook names (`blocks.3.hook_resid_post` …) or `all`.
    #[arg(long, num_args = 1.., required = true)]
    pub hooks: Vec<String>,
    /// Output safetensors file (an existing file is replaced only if this tool wrote it).
    #[arg(long)]
    pub out: PathBuf,
    /// Activation dtype of the forward pass (the file is always f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Where the model computes.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Token ids `[batch, pos]` from `--text` or `--tokens`.
fn input_ids(
    args: &DumpArgs,
    tokenizer: Option<&gemma_hooks::GemmaTokenizer>,
) -> anyhow::Result<Tensor> {
    if let Some(text) = &args.text {
        let tokenizer = tokenizer.context(
            "this model has no tokenizer.json beside it: pass --tokens instead of --text",
        )?;
        let ids = tokenizer.encode(text, true)?;
        return Ok(Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?);
    }
    let path = args
        .tokens
        .as_ref()
        .context("neither a text nor a tokens file to run the model on (--text or --tokens)")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let rows: Vec<Vec<u32>> = serde_json::from_value(
        json.get("input_ids").cloned().unwrap_or_default(),
    )
    .with_context(|| {
        format!(
            "{}: expected {{\"input_ids\": [[int, …], …]}}",
            path.display()
        )
    })?;
    ensure!(
        !rows.is_empty() && !rows[0].is_empty(),
        "{}: input_ids is empty",
        path.display()
    );
    if let Some(row) = rows.iter().find(|r| r.len() != rows[0].len()) {
        bail!(
            "{}: rows have different lengths ({} and {}); pad them or run them separately",
            path.display(),
            rows[0].len(),
            row.len()
        );
    }
    let (batch, pos) = (rows.len(), rows[0].len());
    Ok(Tensor::from_vec(rows.concat(), (batch, pos), &Device::Cpu)?)
}

/// Runs the model and writes the file.
pub fn run(args: &DumpArgs) -> anyhow::Result<()> {
    let dtype = if args.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let loaded = args.device.load_model(&args.model, dtype)?;
    let layers = loaded.model.config().num_layers;
    let points: Vec<HookPoint> = if args.hooks.iter().any(|h| h == "all") {
        HookPoint::all(layers)
    } else {
        args.hooks
            .iter()
            .map(|h| h.parse())
            .collect::<Result<_, _>>()?
    };
    let ids = input_ids(args, loaded.tokenizer.as_ref())?.to_device(loaded.model.device())?;
    let mut hooks = Hooks::observing(points.iter().copied());
    let logits = loaded
        .model
        .forward(&ids, &mut hooks)?
        .context("the forward pass stopped early")?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for point in &points {
        let activation = hooks
            .take(*point)
            .with_context(|| format!("{point} was not reached"))?;
        out.insert(
            point.to_string(),
            activation
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        );
    }
    if ids.dims()[1] >= 2 {
        let loss = next_token_loss(&logits, &ids)?.to_device(&Device::Cpu)?;
        out.insert("loss".into(), loss);
    }
    out.insert(
        "logits".into(),
        logits.to_device(&Device::Cpu)?.contiguous()?,
    );
    // A forward pass that overflowed (bf16) or a model that slipped past the load checks: an
    // error naming the tensor, never a file of NaN reported as success.
    for (name, tensor) in &out {
        sae_core::format::check_finite(tensor, name, None)
            .with_context(|| format!("the model's `{name}` is not finite; nothing was written"))?;
    }
    out.insert(
        "input_ids".into(),
        ids.to_dtype(DType::I64)?.to_device(&Device::Cpu)?,
    );
    lab::output::write_safetensors(&args.out, &out)?;
    println!(
        "wrote {} tensors ({} hook points) to {}",
        out.len(),
        points.len(),
        args.out.display()
    );
    Ok(())
}
