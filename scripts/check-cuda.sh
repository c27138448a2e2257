#!/usr/bin/env bash
# Checks that the CUDA backend compiles (`--features cuda`) on a machine without a GPU or a
# CUDA installation: NVIDIA's nvcc, runtime headers and CCCL come from PyPI wheels into a
# cached virtual environment, candle's kernels are compiled to PTX for CUDA_COMPUTE_CAP
# (default 90, the H100), and `cargo check` type-checks every crate with the feature, in a
# target directory of its own. Linking a binary needs the driver library (libcuda.so), which
# only a GPU machine has: build the binary there, or here with the toolkit's stubs.
#
#   scripts/check-cuda.sh            # ≈ 30 min the first time on 2 cores (wheels, kernels)
#   CUDA_COMPUTE_CAP=80 scripts/check-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/gemma-scope-rs"
venv="$cache/cuda-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet \
        "nvidia-cuda-nvcc==13.5.37" "nvidia-cuda-runtime==13.5.37" "nvidia-cuda-cccl==13.3.5.0.6"
fi
root="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
# The runtime wheel ships libcudart.so.13 only; the linker looks for libcudart.so.
[ -e "$root/lib/libcudart.so" ] || ln -s libcudart.so.13 "$root/lib/libcudart.so"

export CUDA_HOME="$root" CUDA_PATH="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# cudarc names the toolkit versions it has bindings for; 13.5's driver API is 13.4's.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$cache/target-cuda}"

nvcc --version | tail -1
cargo check --package xtask --features cuda "$@"
echo "CUDA backend: compiles (kernels for sm_$CUDA_COMPUTE_CAP, CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
