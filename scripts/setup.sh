#!/usr/bin/env bash
# Create ./.venv with everything this repository needs (idempotent: reruns are quick).
#   bash scripts/setup.sh
# torch: an already-installed torch in .venv is kept. Otherwise TORCH_SPEC is installed if set
# (e.g. TORCH_SPEC="torch==2.4.1"); else plain "torch" on machines with an NVIDIA driver (the CUDA
# build), and "torch==2.13.0" on machines without one, falling back to plain "torch".
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=".venv/bin/python -m pip"
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    $pip install -q "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    $pip install -q torch
  else
    $pip install -q torch==2.13.0 || $pip install -q torch
  fi
fi
$pip install -q -r requirements-test.txt
echo "setup done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
