#!/usr/bin/env bash
# Regenerate the Python code for protos/ into server/ (`make protos`; `make check-protos` fails when stale).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -Iprotos --python_out=server --pyi_out=server --grpc_python_out=server \
  $(find protos -name '*.proto' | sort)
touch server/mobidem/v1/__init__.py
