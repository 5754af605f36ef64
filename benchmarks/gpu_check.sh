#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py for what it checks):
#   benchmarks/gpu_check.sh          on a machine with a CUDA GPU, a few minutes
#   benchmarks/gpu_check.sh --cpu    tiny dry run on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT:-300}" "$PY" benchmarks/gpu_check.py "$@"
