#!/usr/bin/env bash
# kiln's CUDA artifacts on a GPU machine (Python 3.12, PyTorch with CUDA 13, no TVM, no network).
# Prepare the folder on a machine with kiln's compiler and nvcc (no GPU needed):
#   python benchmarks/gpu_check.py prepare gpu_check_out
# then, on the GPU machine, from the repository root (the folder travels with the tree):
#   bash benchmarks/gpu_check.sh gpu_check_out
# It checks every op and example against the interpreter and times the benchmark models
# against PyTorch eager and torch.compile (under 8 minutes on an H100).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 -c "import tvm_ffi" 2>/dev/null || pip install -q --no-index "$OUT"/wheels/*.whl
PYTHONPATH=. timeout 480 python3 benchmarks/gpu_check.py run "$OUT"
