#!/usr/bin/env bash
# Regenerate the Python code for protos/ into server/ (run by `make protos`; CI checks it is fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -Iprotos --python_out=server --pyi_out=server --grpc_python_out=server \
  $(cd protos && find . -name '*.proto' | sort | sed 's|^\./|protos/|' | sed 's|^protos/||' | sed 's|^|protos/|')
touch server/mobidem/v1/__init__.py
