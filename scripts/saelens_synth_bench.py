#!/usr/bin/env python3
"""Train and score SAEs on SynthSAEBench-16k with SAELens's own synthetic runner (the peer side of
this project's SynthSAEBench comparison).

Builds (once, then caches in --model-path) the published SynthSAEBench-16k synthetic model, trains
one SAE per architecture with SAELens's `SyntheticSAERunner` / `SyntheticSAERunnerConfig` (its data
iterator, its `SAETrainer`: Adam, lr schedule, coefficient warm-ups, dead-latent tracking), scores it
with SAELens's `eval_sae_on_synthetic_data` and writes one JSON, so the project's Rust results can be
put side by side with SAELens's at the same budget. Nothing here reimplements SAELens; the script
only configures and calls it.

Run it with the peers' environment (`bash ../shared/peers/setup.sh`):
  ~/.cache/sae-peer-venv/bin/python scripts/saelens_synth_bench.py \\
      --model-config synth-bench-16k --model-path /tmp/saelens-synth-16k \\
      --architectures batchtopk,matryoshka_batchtopk,jumprelu,standard \\
      --l0 25,20 --width 4096 --samples 1000000 --batch-size 1024 --lr 3e-4 \\
      --eval-samples 100000 --threads 2 --out results.json

Cost measured on this project's 2-core AMD EPYC box (AVX-512, torch 2.15 CPU, 2 threads; rough,
the box is shared). Model build 3,780 s while other work kept the load at 4-8 (the
orthogonalisation: 100 steps x 16 chunks of a 1024 x 16384 Gram product and its gradient; loading
the saved model takes 0.7 s). Width 4096, batch 1024, samples/s over the whole training loop
(generation included), quiet box (load ~0) / loaded box (load 4-8): data generation alone 1,429 /
560; BatchTopK 971 / 364; Matryoshka BatchTopK 937 / 337; JumpReLU 1,062 / 359; standard 1,071 /
375-473. Data generation is most of each step. Evaluating 100k samples takes ~4 min per SAE on
the loaded box (generation again, plus the 4096 x 16384 Hungarian matching for MCC). So 1M
training samples cost ~17 min per architecture on a quiet box; the paper's 200M are for a GPU.

Sources of every setting (SAELens 6.54 as installed in ~/.cache/sae-peer-venv, its docs page
docs/synth_sae_bench.md, and the paper's experiment code, github.com/decoderesearch/
synth-sae-bench-experiments, `experiments/sweeps/common.py` and `saes/*.py`, read at 66eee05,
2026-05-29):

Model (--model-config synth-bench-16k). SAELens 6.54 ships no preset or registry entry for it
(`sae_lens/synthetic/registry.py` only registers firing-probability and magnitude config classes);
the published model is the Hugging Face repo `decoderesearch/synth-sae-bench-16k-v2` (v1 lacks
`scale_children_by_parent=True`, per the docs page), which this offline machine cannot reach. So
the script builds a `SyntheticModelConfig` with exactly the published parameters, as in the docs
page's "Creating Custom Benchmark Models" block and the paper's `get_base_model_config`:
16,384 features, hidden_dim 768; `ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4,
min_prob=5e-4)`; `HierarchyConfig(total_root_nodes=128, branching_factor=4, max_depth=3,
mutually_exclusive_portion=1.0, mutually_exclusive_min_depth=0, compensate_probabilities=True,
scale_children_by_parent=True)`; `LowRankCorrelationConfig(rank=25, correlation_scale=0.1)`;
`OrthogonalizationConfig(num_steps=100, lr=3e-4)` (chunk_size left at SAELens's 1024);
`mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0)`;
`std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5)`; bias 0.5; seed 42;
dtype float32. The model is built once and saved with `SyntheticModel.save`; later runs load it
with `SyntheticModel.load_from_disk` (after checking its saved config equals this one) and hand it
to the runner as `override_synthetic_model`, so several runs share one model. It is the same
recipe and seeds as the v2 upload but not necessarily the same draw: `FeatureDictionary` draws its
vectors with `torch.Generator(device=device)`, so a model built on CPU (as here, --device cpu) has
different feature vectors (and low-rank correlation factors, also drawn on the device) from one
built on CUDA (the docs build with device="cuda"); the hierarchy, firing probabilities and
magnitudes are drawn on CPU / with Python's `random`, so they match, and the distributions (and
true L0) are the same.

Trainer (all architectures), as the paper's `create_runner_config`: lr 3e-4, batch 1,024, the
runner's defaults for everything else (constant lr, no warm-up or decay, Adam betas (0.9, 0.999),
dead_feature_window 1000, feature_sampling_window 2000). The paper trains 200M samples with
`autocast_sae=True, autocast_data=True` on CUDA; here the default is float32 without autocast
(`--autocast` turns both on) because bf16 autocast on CPU is a different numeric recipe and not
faster there. `n_batches_for_norm_estimate`: SAELens's default is 1000 batches (1M generated
samples before training starts), used only by JumpReLU's `expected_average_only_in`; here it is
--norm-estimate-batches (default 25 = 25,600 samples, plenty for one scalar mean norm; on this
2-core machine generation runs at 560-1,430 samples/s, so SAELens's 1000 batches would cost 12-30
minutes), and its time is reported apart (`norm_estimate_seconds`) and excluded from samples/s.
The paper evaluates on 1M samples (`eval_samples=1_000_000`); here --eval-samples (default 100k).
Evaluation is the runner's own final evaluation call (`eval_sae_on_synthetic_data` with
`batch_size` = the training batch), made by this script so that it can be timed apart.

batchtopk: `BatchTopKTrainingSAEConfig(k=L0, d_in=768, d_sae=width)` with SAELens defaults
(decoder_init_norm 0.1, aux_loss_coefficient 1.0, rescale_acts_by_decoder_norm True,
topk_threshold_lr 0.01), as the paper's `get_btk_config`.

matryoshka_batchtopk: `MatryoshkaBatchTopKTrainingSAEConfig(k=L0, matryoshka_widths=[128, 512,
2048] (those below width) + [width], use_matryoshka_aux_loss=True)`, as the paper's
`get_matryoshka_config` ("Inner widths are fixed at [128, 512, 2048], outer width = d_sae"; aux loss
on since commit 0bdace3 "updating matryoshka SAEs with aux loss"). The outer width is appended here
explicitly; SAELens would append it itself with a warning.

jumprelu: the paper does NOT use SAELens's quadratic target-L0 mode. Its JumpReLU is
`XJumpReLUTrainingSAE` (in the paper's repo, not in SAELens): SAELens's JumpReLU plus a
rate-damped integral controller that multiplies the L0 coefficient to reach the target L0. Its
current settings (commit d39cc57, "using deepmind-style jumprelu to match SAEBench"):
`jumprelu_sparsity_loss_mode="step"`, bandwidth 1.0, init threshold 1.0, `decoder_init_norm=0.5`,
`normalize_activations="expected_average_only_in"`, no pre-activation loss, l0_coefficient 1.0,
no L0 warm-up. (The paper-time version, e9c5a4e, used "tanh" with scale 4, bandwidth 2, init
threshold 0.5, l0_coefficient 0.2 and a TopK auxiliary loss that SAELens does not have.) The
docs' results table (same numbers as the paper) does not say which of the two produced them. Since this script only
calls SAELens, it keeps those d39cc57 settings and replaces the external autotuner with SAELens's
own way of aiming at an L0: `jumprelu_sparsity_loss_mode="quadratic"` with `target_l0=L0` (the
Gemma Scope 2 penalty, `l0_coefficient * 2/target * (L0 - target)^2` on the per-sample step-count
L0, `sae_lens/saes/jumprelu_sae.py`), l0_coefficient --jumprelu-l0-coefficient (default 1.0, the
SAELens default and the paper's base coefficient). `--jumprelu-mode step` gives plain SAELens
DeepMind-step JumpReLU with a fixed coefficient instead (no target; L0 is whatever it lands on).
SAELens's `jumprelu_ste_to_input` stays at its default False (DeepMind STE: the threshold gets the
pseudo-gradient, the pre-activations do not), which is what `Step.apply(hidden_pre, threshold,
bandwidth)` in the paper's code does too. Consequence for short CPU budgets: only the threshold
feels the L0 penalty, and Adam moves it by about lr = 3e-4 per step whatever the coefficient's
size (a larger coefficient, or the paper's autotuner, barely changes that), so from the init threshold 1.0 L0 falls slowly:
measured 370 after 20 steps, 323 after 50, 317 after 100 (target 25). Compare JumpReLU only at budgets where
its reported L0 has reached the target.

standard: `StandardTrainingSAEConfig(l1_coefficient=--l1-coefficient, l1_warm_up_steps=
total_steps // 3)` with SAELens defaults otherwise (decoder_init_norm 0.1, lp_norm 1, L1 weighted by
decoder row norms, no input normalisation), as the paper's `get_standard_config`, whose base
coefficient is 2.0 with the warm-up over the first third; the paper then lets its external
autotuner (from step total_steps // 3 on) scale the coefficient by a multiplier in [0.01, 100]
until L0 = target. Without that autotuner the coefficient is fixed: --l1-coefficient (default 2.0,
the paper's base value) and the resulting L0 is reported, not controlled.

Output JSON: `results`, one row per architecture and L0 (`architecture` in this project's names,
`batchtopk`, `matryoshka-batchtopk`, `jumprelu`, `l1`, as `reproduce synth-bench --saelens FILE`
reads them, and `target_l0`), the metrics of `eval_sae_on_synthetic_data` (MCC, F1, precision,
recall, accuracy, uniqueness, explained variance, L0, true L0, dead latents, shrinkage), the
training samples, training wall time (and the part spent estimating the norm), evaluation time,
samples/s over the training loop (data generation included: the runner generates every batch on
the fly), and the SAE config; at top level the model build (or load) time, the samples/s of data
generation alone (--generation-batches batches through the runner's `SyntheticActivationIterator`),
torch version, thread count, CPU model and AVX flags, SAELens version and the arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_MININTERVAL", "30")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402

import sae_lens  # noqa: E402
from sae_lens import (  # noqa: E402
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAEConfig,
)
from sae_lens.synthetic import (  # noqa: E402
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LinearMagnitudeConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticActivationIterator,
    SyntheticModelConfig,
    SyntheticSAERunner,
    SyntheticSAERunnerConfig,
    ZipfianFiringProbabilityConfig,
    eval_sae_on_synthetic_data,
)
from sae_lens.synthetic.synthetic_model import SYNTHETIC_MODEL_CONFIG_FILENAME  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402

ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk", "jumprelu", "standard")
# The names `cargo xtask reproduce synth-bench --saelens FILE` matches rows by.
PROJECT_NAMES = {
    "batchtopk": "batchtopk",
    "matryoshka_batchtopk": "matryoshka-batchtopk",
    "jumprelu": "jumprelu",
    "standard": "l1",
}
MATRYOSHKA_INNER_WIDTHS = (128, 512, 2048)


def synth_bench_16k_config() -> SyntheticModelConfig:
    """The published SynthSAEBench-16k configuration (docs/synth_sae_bench.md, SAELens)."""
    return SyntheticModelConfig(
        num_features=16_384,
        hidden_dim=768,
        firing_probability=ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=0.4, min_prob=5e-4
        ),
        hierarchy=HierarchyConfig(
            total_root_nodes=128,
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        orthogonalization=OrthogonalizationConfig(num_steps=100, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=42,
    )


MODEL_CONFIGS = {"synth-bench-16k": synth_bench_16k_config}


def log(message: str) -> None:
    print(f"[saelens-synth] {message}", file=sys.stderr, flush=True)


def build_or_load_model(name: str, path: str | None, device: str) -> tuple[SyntheticModel, dict]:
    """Load the model saved in `path` if there is one (checking its config), else build and save it."""
    cfg = MODEL_CONFIGS[name]()
    expected = json.loads(json.dumps(cfg.to_dict()))
    if path and os.path.exists(os.path.join(path, SYNTHETIC_MODEL_CONFIG_FILENAME)):
        with open(os.path.join(path, SYNTHETIC_MODEL_CONFIG_FILENAME)) as f:
            saved = json.load(f)
        if saved != expected:
            sys.exit(f"{path}: its saved config differs from {name}; use another --model-path")
        started = time.time()
        model = SyntheticModel.load_from_disk(path, device=device)
        seconds = time.time() - started
        log(f"loaded {name} from {path} in {seconds:.1f} s")
        return model, {"action": "loaded", "path": path, "seconds": seconds}
    log(f"building {name} (orthogonalisation of {cfg.num_features} x {cfg.hidden_dim}) ...")
    started = time.time()
    model = SyntheticModel(cfg, device=device)
    seconds = time.time() - started
    log(f"built {name} in {seconds:.1f} s")
    info = {"action": "built", "path": path, "seconds": seconds}
    if path:
        started = time.time()
        model.save(path)
        info["save_seconds"] = time.time() - started
        log(f"saved it to {path}")
    return model, info


MAGNITUDES_FILE = "magnitudes.safetensors"


def save_magnitudes(model: SyntheticModel, path: str) -> None:
    """Writes the per-feature magnitudes beside the saved model.

    `SyntheticModel.save` leaves them out (SAELens redraws them from the config's seed on load);
    with this file `cargo xtask reproduce synth-bench --saelens-model DIR` trains on exactly this
    model (`ground_truth::saelens::MAGNITUDES_FILE`)."""
    target = os.path.join(path, MAGNITUDES_FILE)
    if os.path.exists(target):
        return
    from safetensors.torch import save_file

    generator = model.activation_generator
    save_file(
        {
            "mean_firing_magnitudes": generator.mean_firing_magnitudes.contiguous().cpu(),
            "std_firing_magnitudes": generator.std_firing_magnitudes.contiguous().cpu(),
        },
        target + ".tmp",
    )
    os.replace(target + ".tmp", target)
    log(f"wrote {target}")


def sae_config(arch: str, l0: int, args: argparse.Namespace, d_in: int, total_steps: int):
    common = dict(d_in=d_in, d_sae=args.width, device=args.device, dtype="float32")
    if arch == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=l0, **common)
    if arch == "matryoshka_batchtopk":
        widths = [w for w in MATRYOSHKA_INNER_WIDTHS if w < args.width] + [args.width]
        return MatryoshkaBatchTopKTrainingSAEConfig(
            k=l0, matryoshka_widths=widths, use_matryoshka_aux_loss=True, **common
        )
    if arch == "jumprelu":
        quadratic = args.jumprelu_mode == "quadratic"
        return JumpReLUTrainingSAEConfig(
            normalize_activations="expected_average_only_in",
            jumprelu_sparsity_loss_mode=args.jumprelu_mode,
            target_l0=float(l0) if quadratic else None,
            jumprelu_bandwidth=args.jumprelu_bandwidth,
            jumprelu_init_threshold=args.jumprelu_init_threshold,
            pre_act_loss_coefficient=None,
            decoder_init_norm=0.5,
            l0_coefficient=args.jumprelu_l0_coefficient,
            l0_warm_up_steps=0,
            **common,
        )
    if arch == "standard":
        warm_up = total_steps // 3 if args.l1_warm_up_steps is None else args.l1_warm_up_steps
        return StandardTrainingSAEConfig(
            l1_coefficient=args.l1_coefficient, l1_warm_up_steps=warm_up, **common
        )
    raise ValueError(arch)


class NormEstimateTimer:
    """Times SAELens's own activation-norm estimate (JumpReLU only) without changing it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0
        self._original = ActivationScaler.estimate_scaling_factor

    def __enter__(self) -> "NormEstimateTimer":
        original, timer = self._original, self

        def timed(scaler, d_in, data_provider, n_batches_for_norm_estimate):
            started = time.time()
            try:
                return original(scaler, d_in, data_provider, n_batches_for_norm_estimate)
            finally:
                timer.seconds += time.time() - started
                timer.batches += n_batches_for_norm_estimate

        ActivationScaler.estimate_scaling_factor = timed
        return self

    def __exit__(self, *exc) -> None:
        ActivationScaler.estimate_scaling_factor = self._original


def run_one(arch: str, l0: int, model: SyntheticModel, model_source: str, args) -> dict:
    torch.manual_seed(args.seed)
    total_steps = args.samples // args.batch_size
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=model_source,
        sae=sae_config(arch, l0, args, model.cfg.hidden_dim, total_steps),
        training_samples=args.samples,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        autocast_sae=args.autocast,
        autocast_data=args.autocast,
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=os.path.join(args.save_dir, f"{arch}-l0-{l0}") if args.save_dir else None,
        eval_frequency=0,
        eval_samples=args.eval_samples,
        run_final_eval=False,  # run below, with the same call, so that it is timed apart
        n_batches_for_norm_estimate=args.norm_estimate_batches,
        logger=LoggingConfig(log_to_wandb=False),
    )
    sae_dict = cfg.sae.to_dict()
    runner = SyntheticSAERunner(cfg, override_synthetic_model=model)
    log(f"{arch} (L0 {l0}): training {args.samples:,} samples ({total_steps} steps) at width {args.width}")
    with NormEstimateTimer() as norm_timer:
        started = time.time()
        result = runner.run()
        train_seconds = time.time() - started
    loop_seconds = train_seconds - norm_timer.seconds
    trained = total_steps * args.batch_size
    log(
        f"{arch}: trained in {train_seconds:.1f} s ({norm_timer.seconds:.1f} s norm estimate), "
        f"{trained / loop_seconds:.0f} samples/s"
    )
    started = time.time()
    ev = eval_sae_on_synthetic_data(
        sae=result.sae,
        feature_dict=model.feature_dict,
        activations_generator=model.activation_generator,
        num_samples=args.eval_samples,
        batch_size=args.batch_size,
    )
    eval_seconds = time.time() - started
    out = {
        "architecture": PROJECT_NAMES[arch],
        "saelens_architecture": arch,
        "target_l0": float(l0),
        "mcc": ev.mcc,
        "f1": ev.classification.f1_score,
        "precision": ev.classification.precision,
        "recall": ev.classification.recall,
        "accuracy": ev.classification.accuracy,
        "uniqueness": ev.uniqueness,
        "variance_explained": ev.explained_variance,
        "l0": ev.sae_l0,
        "true_l0": ev.true_l0,
        "dead_latents": ev.dead_latents,
        "shrinkage": ev.shrinkage,
        "training_samples": trained,
        "training_steps": total_steps,
        "eval_samples": args.eval_samples,
        "train_seconds": train_seconds,
        "norm_estimate_seconds": norm_timer.seconds,
        "norm_estimate_samples": norm_timer.batches * args.batch_size,
        "samples_per_second": trained / loop_seconds if loop_seconds > 0 else None,
        "eval_seconds": eval_seconds,
        "sae_config": sae_dict,
    }
    log(
        f"{arch}: MCC {ev.mcc:.4f}  F1 {ev.classification.f1_score:.4f}  "
        f"uniq {ev.uniqueness:.4f}  VE {ev.explained_variance:.4f}  L0 {ev.sae_l0:.2f}  "
        f"dead {ev.dead_latents}  shrink {ev.shrinkage:.4f}  ({eval_seconds:.1f} s eval)"
    )
    return out


def time_generation(model: SyntheticModel, args) -> dict | None:
    """Samples/s of the runner's data iterator alone (SAELens's `SyntheticActivationIterator`)."""
    if args.generation_batches <= 0:
        return None
    data = SyntheticActivationIterator(
        feature_dict=model.feature_dict,
        activations_generator=model.activation_generator,
        batch_size=args.batch_size,
        autocast=args.autocast,
    )
    next(data)  # warm-up
    started = time.time()
    for _ in range(args.generation_batches):
        next(data)
    seconds = time.time() - started
    rate = args.generation_batches * args.batch_size / seconds
    log(f"data generation alone: {rate:.0f} samples/s ({args.generation_batches} batches)")
    return {"batches": args.generation_batches, "seconds": seconds, "samples_per_second": rate}


def cpu_info() -> dict:
    flags: set[str] = set()
    model_name = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "model name" and model_name is None:
                    model_name = value.strip()
    except OSError:
        pass
    return {
        "model_name": model_name,
        "logical_cpus": os.cpu_count(),
        "flags": sorted(f for f in flags if f == "avx2" or f.startswith("avx512")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", default="synth-bench-16k", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--model-path", default=None, help="save the built model here; load it if present")
    p.add_argument("--architectures", default=",".join(ARCHITECTURES))
    p.add_argument("--l0", default="25", help="target L0s, comma-separated: k for (Matryoshka) "
                   "BatchTopK, the quadratic target for JumpReLU")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--samples", type=int, default=1_000_000, help="training samples")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-samples", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before each SAE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast of SAE and data (paper, CUDA)")
    p.add_argument("--norm-estimate-batches", type=int, default=25,
                   help="batches for JumpReLU's expected_average_only_in estimate (SAELens: 1000)")
    p.add_argument("--l1-coefficient", type=float, default=2.0,
                   help="standard SAE L1 coefficient (the paper's base value; fixed here)")
    p.add_argument("--l1-warm-up-steps", type=int, default=None,
                   help="standard SAE L1 warm-up (default: a third of the steps, as the paper)")
    p.add_argument("--jumprelu-mode", default="quadratic", choices=["quadratic", "step", "tanh"])
    p.add_argument("--jumprelu-l0-coefficient", type=float, default=1.0)
    p.add_argument("--jumprelu-bandwidth", type=float, default=1.0)
    p.add_argument("--jumprelu-init-threshold", type=float, default=1.0)
    p.add_argument("--save-dir", default=None, help="also save each trained SAE under DIR/<arch>")
    p.add_argument("--generation-batches", type=int, default=5,
                   help="time this many batches of data generation alone (0: skip)")
    args = p.parse_args()

    archs = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        sys.exit(f"unknown architectures {unknown}; known: {', '.join(ARCHITECTURES)}")
    if args.samples < args.batch_size:
        sys.exit("--samples must be at least --batch-size")
    if args.threads:
        torch.set_num_threads(args.threads)

    report = {
        "tool": "saelens_synth_bench.py",
        "sae_lens": sae_lens.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "device": args.device,
        "args": vars(args),
        "model_config": args.model_config,
        "results": [],
    }
    model, model_info = build_or_load_model(args.model_config, args.model_path, args.device)
    report["model"] = model_info
    if args.model_path:
        save_magnitudes(model, args.model_path)
    report["model"]["config"] = model.cfg.to_dict()
    source = args.model_path or args.model_config
    report["data_generation"] = time_generation(model, args)

    def write() -> None:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.out)

    write()
    l0s = [int(v) for v in args.l0.split(",") if v.strip()]
    for l0 in l0s:
        for arch in archs:
            report["results"].append(run_one(arch, l0, model, source, args))
            write()  # keep what is done if a later architecture fails or is stopped
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
