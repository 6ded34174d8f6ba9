#!/usr/bin/env bash
# One command for a lent GPU machine, run from the repository root (about 5 minutes on an H200). It uses the machine's
# own PyTorch and transformers (nothing can be installed there) and forgetune from src/; the numbers go to
# $OUT/gpu.json (the device tool's output folder) or docs/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --json "${OUT:-docs}/gpu.json"
