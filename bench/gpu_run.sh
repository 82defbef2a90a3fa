#!/usr/bin/env bash
# The GPU benchmark in one command, on a GPU host with PyTorch+CUDA, onnx and onnxruntime:
#   bash bench/gpu_run.sh        (results in $OUT, else docs/)
# It needs the built models (model_repository/*/1/model.onnx from `mobidem models build`) and
# onnx2torch; where onnx2torch is missing and the host is offline, put its wheel in $WHEELS (.whl/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import onnx2torch" 2>/dev/null; then
  if ls "${WHEELS:-.whl}"/onnx2torch-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/mobidem-site "${WHEELS:-.whl}"/onnx2torch-*.whl
  else
    "$PY" -m pip install -q --no-deps --target /tmp/mobidem-site onnx2torch
  fi
  export PYTHONPATH=/tmp/mobidem-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu_bench.py --out "${OUT:-docs}"
