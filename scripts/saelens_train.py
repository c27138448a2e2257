#!/usr/bin/env python3
"""Train SAELens JumpReLU SAEs on this project's activation store (the peer side of
`cargo xtask bench-quality`).

Reads the store's raw shards (manifest.json + shard-NNNNN.<hook>.bin, f32 rows) directly, so
both trainers see exactly the same activations; scales them to E‖x‖² = 1 with C estimated
from the first batches (as this project does), trains one SAELens `JumpReLUTrainingSAE` per
L0 coefficient with SAELens's own `SAETrainer.step` (its Adam, its linear lr warm-up and
end decay, its λ warm-up, its gradient clipping at norm 1), folds C into the weights and writes each SAE as
a SAELens inference directory (cfg.json + sae_weights.safetensors) that `sae_core` loads.

With `--gaussian ROWS --d-in D` the rows are standard-normal instead (seeded; the whole-run
benchmark of `cargo xtask bench-run`, which gives this project's trainer the same rows
distribution and recipe); `--autocast` trains in SAELens's bf16 autocast; `--no-save` keeps
only the statistics line.

Run it with the peers' environment (`bash ../shared/peers/setup.sh`):
  ~/.cache/sae-peer-venv/bin/python scripts/saelens_train.py --store runs/x/cache \\
      --hook blocks.9.hook_resid_post --out runs/x/saelens-seed0 --seed 0 \\
      --l0-coefficients 1e-4,3e-4 --steps 300 --batch 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import sae_lens  # noqa: E402
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, SAETrainer  # noqa: E402
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402


def load_rows(store: str, hook: str) -> np.ndarray:
    """Every stored row of `hook`, in storage order, as an f32 array [rows, width]."""
    with open(os.path.join(store, "manifest.json")) as f:
        manifest = json.load(f)
    spec = manifest["spec"]
    if spec["dtype"] != "f32":
        sys.exit(f"{store}: stores of {spec['dtype']} are not supported here (f32 only)")
    names = [h["name"] for h in spec["hooks"]]
    if hook not in names:
        sys.exit(f"{store}: no hook {hook} (it has {', '.join(names)})")
    index = names.index(hook)
    width = spec["hooks"][index]["width"]
    parts = []
    for shard in manifest["shards"]:
        file = shard["activations"][index]
        path = os.path.join(store, file["name"])
        if os.path.getsize(path) != file["bytes"]:
            sys.exit(f"{path}: {os.path.getsize(path)} bytes, the manifest says {file['bytes']}")
        parts.append(np.fromfile(path, dtype="<f4").reshape(-1, width))
    return np.concatenate(parts)


def batches(rows: np.ndarray, batch: int, seed: int):
    """Endless batches: a fresh permutation of the rows every epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(rows))
        for start in range(0, len(order) - batch + 1, batch):
            yield torch.from_numpy(rows[order[start : start + batch]])


def train_one(rows, scale, mean, coefficient, args) -> tuple[dict, dict]:
    torch.manual_seed(args.seed)
    d_in = rows.shape[1]
    cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=args.d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        decoder_init_norm=args.decoder_init_norm,
        jumprelu_init_threshold=args.threshold_init,
        jumprelu_bandwidth=args.bandwidth,
        jumprelu_sparsity_loss_mode="step",
        jumprelu_ste_to_input=False,
        l0_coefficient=coefficient,
        l0_warm_up_steps=args.l0_warmup,
        pre_act_loss_coefficient=args.pre_act_loss,
    )
    sae = JumpReLUTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_dec.data = torch.from_numpy(mean / scale).to(sae.b_dec.dtype)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.batch * args.steps,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=args.lr_warmup,
        lr_decay_steps=args.lr_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=0.999,
        dead_feature_window=args.dead_window,
        device="cpu",
        autocast=args.autocast,
        logger=LoggingConfig(log_to_wandb=False),
    )
    data = (b / scale for b in batches(rows, args.batch, args.seed))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    started = time.time()
    trace = []
    every = max(1, args.steps // 10)
    for step in range(args.steps):
        out = trainer.step(next(data))
        trainer.n_training_steps += 1
        if (step + 1) % every == 0 or step + 1 == args.steps:
            l0 = float((out.feature_acts > 0).float().sum(-1).mean())
            trace.append([step + 1, round(time.time() - started, 3), l0])
            print(f"[saelens] step {step + 1}: L0 {l0:.1f}, {trace[-1][1]:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.time() - started
    with torch.no_grad():
        threshold = sae.threshold.detach().clamp(min=0.0)
        # Fold C: the SAE saw x / C; on raw x the encoder is W_enc / C (thresholds and
        # latents unchanged) and the decoder, b_dec included, is C times larger.
        weights = {
            "W_enc": (sae.W_enc.detach() / scale).contiguous(),
            "b_enc": sae.b_enc.detach().contiguous(),
            "W_dec": (sae.W_dec.detach() * scale).contiguous(),
            "b_dec": (sae.b_dec.detach() * scale).contiguous(),
            "threshold": (threshold).contiguous(),
        }
    stats = {
        "l0_coefficient": coefficient,
        "seconds": elapsed,
        "tokens_per_second": args.batch * args.steps / elapsed,
        "last_loss": float(out.loss.detach()),
        "last_l0": float((out.feature_acts > 0).float().sum(-1).mean()),
        "l0_trace": trace,
        "autocast_bf16": bool(args.autocast),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return weights, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="the activation store (or --gaussian)")
    ap.add_argument("--hook", default="gaussian")
    ap.add_argument("--gaussian", type=int, default=None,
                    help="train on this many seeded standard-normal rows of width --d-in instead of a store")
    ap.add_argument("--d-in", type=int, default=None)
    ap.add_argument("--autocast", action="store_true", help="SAELens's bf16 autocast")
    ap.add_argument("--no-save", action="store_true", help="print the statistics only")
    ap.add_argument("--out", required=True, help="folder; one sub-folder per coefficient")
    ap.add_argument("--names", required=True, help="comma-separated folder names, one per coefficient")
    ap.add_argument("--l0-coefficients", required=True, help="comma-separated λ")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--lr-warmup", type=int, default=30)
    ap.add_argument("--lr-decay", type=int, default=0, help="steps of linear decay to 0 at the end")
    ap.add_argument("--l0-warmup", type=int, default=150)
    ap.add_argument("--adam-beta1", type=float, default=0.0)
    ap.add_argument("--bandwidth", type=float, default=0.001)
    ap.add_argument("--threshold-init", type=float, default=0.001)
    ap.add_argument("--decoder-init-norm", type=float, default=1.0)
    ap.add_argument("--scaling-batches", type=int, default=4)
    ap.add_argument("--exclude-norm-above", type=float, default=None,
                    help="leave rows with a larger raw norm out of training (as this project's policy)")
    ap.add_argument("--pre-act-loss", type=float, default=None,
                    help="coefficient of Anthropic's pre-activation loss on dead latents (none by default)")
    ap.add_argument("--dead-window", type=int, default=1000,
                    help="steps without firing after which a latent counts as dead (SAELens's default 1000)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.gaussian is not None:
        if args.d_in is None:
            sys.exit("--gaussian needs --d-in")
        rows = np.random.default_rng(1000 + args.seed).standard_normal((args.gaussian, args.d_in), dtype=np.float32)
    elif args.store is not None:
        rows = load_rows(args.store, args.hook)
    else:
        sys.exit("give --store (and --hook) or --gaussian ROWS --d-in D")
    total = len(rows)
    if args.exclude_norm_above is not None:
        rows = rows[np.linalg.norm(rows.astype(np.float64), axis=1) <= args.exclude_norm_above]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    first = rows[np.random.default_rng(args.seed).permutation(len(rows))[: args.batch * args.scaling_batches]]
    scale = float(np.sqrt((first.astype(np.float64) ** 2).sum(1).mean()))
    mean = first.astype(np.float64).mean(0).astype(np.float32)

    coefficients = [float(c) for c in args.l0_coefficients.split(",")]
    names = args.names.split(",")
    if len(names) != len(coefficients):
        sys.exit("--names and --l0-coefficients must have the same length")
    for name, coefficient in zip(names, coefficients):
        folder = os.path.join(args.out, name)
        if os.path.exists(os.path.join(folder, "cfg.json")):
            print(f"[saelens] {folder} exists, kept", file=sys.stderr)
            continue
        weights, stats = train_one(rows, scale, mean, coefficient, args)
        if args.no_save:
            print(json.dumps({"sae": name, **stats}), flush=True)
            continue
        tmp = folder + ".partial"
        os.makedirs(tmp, exist_ok=True)
        save_file(weights, os.path.join(tmp, "sae_weights.safetensors"))
        cfg = {
            "architecture": "jumprelu",
            "d_in": rows.shape[1],
            "d_sae": args.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {
                "hook_name": args.hook,
                "trainer": f"sae_lens {sae_lens.__version__}",
                "scaling_factor_folded": scale,
                "rows_trained_on": len(rows),
                "rows_in_store": total,
                "settings": vars(args),
                **stats,
            },
        }
        with open(os.path.join(tmp, "cfg.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        os.replace(tmp, folder)
        print(json.dumps({"sae": name, **stats}), flush=True)


if __name__ == "__main__":
    main()
