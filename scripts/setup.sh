#!/usr/bin/env bash
# Create ./.venv with everything this repository needs (idempotent: reruns are quick).
#   bash scripts/setup.sh
# torch: an already-installed torch in .venv is kept. Otherwise TORCH_SPEC is installed if set
# (e.g. TORCH_SPEC="torch==2.4.1"); else plain "torch" on machines with an NVIDIA driver (the CUDA
# build), and "torch==2.13.0" on machines without one, falling back to plain "torch".
# It says what it does at each step and shows pip's progress (a first run downloads about 1 GB
# and takes a few minutes); set SETUP_QUIET=1 for pip's quiet mode.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ "${SETUP_QUIET:-0}" = 1 ]; then pip_flags=(-q); else pip_flags=(--progress-bar=on); fi
step() { echo "[setup] $*"; }

if [ -x .venv/bin/python ]; then
  step "using the existing virtual environment .venv"
else
  step "creating the virtual environment .venv with $("$python" --version 2>&1)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
if .venv/bin/python -c 'import torch' 2>/dev/null; then
  step "keeping torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already in .venv"
else
  if [ -n "${TORCH_SPEC:-}" ]; then
    step "installing $TORCH_SPEC (from TORCH_SPEC)"
    "${pip[@]}" install "${pip_flags[@]}" "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    step "installing torch (CUDA build; NVIDIA driver found): the largest download, a few minutes"
    "${pip[@]}" install "${pip_flags[@]}" torch
  else
    step "installing torch==2.13.0 (no NVIDIA driver found): the largest download, a few minutes"
    "${pip[@]}" install "${pip_flags[@]}" torch==2.13.0 || {
      step "torch==2.13.0 is not available here; installing the newest torch instead"
      "${pip[@]}" install "${pip_flags[@]}" torch
    }
  fi
fi
step "installing the other packages of requirements-test.txt (runtime: $(grep -v '^\s*\(#\|-r\|$\)' requirements.txt | cut -d'>' -f1 | cut -d'=' -f1 | cut -d'<' -f1 | tr '\n' ' '); tests: pytest)"
"${pip[@]}" install "${pip_flags[@]}" -r requirements-test.txt | { grep -v '^Requirement already satisfied' || true; }
echo "[setup] done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'). Activate it with: source .venv/bin/activate"
