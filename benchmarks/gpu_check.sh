#!/usr/bin/env bash
# One-command GPU check (see benchmarks/gpu_check.py): one PASS / FAIL line per CUDA path; exit 0 without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
