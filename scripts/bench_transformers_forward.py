"""Forward-pass tokens/s of Hugging Face `transformers` on a GGUF model, for `cargo xtask bench --peers`.

Loads the same GGUF file the Rust side runs (dequantised to float32 by transformers), feeds the
same synthetic token ids (2 + (i * 7919) % 20000), and times (a) the full pass with the LM head and
(b) a harvest to the middle layer (the decoder layers after it removed: the same work as the Rust
side's early stop). Prints one JSON line per measurement.

    python scripts/bench_transformers_forward.py --gguf ~/.cache/gemma-scope-rs/gemma-3-270m-q4_k_m.gguf
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    n = args.batch * args.context
    ids = torch.tensor([2 + (i * 7919) % 20000 for i in range(n)]).reshape(args.batch, args.context)
    layers = model.model.layers
    middle = len(layers) // 2
    for label, harvest in [("full pass + LM head", False), ("harvest to middle layer", True)]:
        if harvest:
            model.model.layers = layers[: middle + 1]
        best = float("inf")
        with torch.inference_mode():
            for repeat in range(args.repeats + 1):
                start = time.perf_counter()
                if harvest:
                    model.model(input_ids=ids)
                else:
                    model(input_ids=ids)
                if repeat > 0:
                    best = min(best, time.perf_counter() - start)
        model.model.layers = layers
        print(json.dumps({
            "impl": "transformers",
            "what": label,
            "tokens_per_s": n / best,
            "batch": args.batch,
            "context": args.context,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
        }), flush=True)


if __name__ == "__main__":
    main()
