#!/usr/bin/env bash
# The GPU check in one command; scripts/gpu_check.py says what each step does and what the output
# folder holds, benchmarks/README.md how to run it on a lent GPU machine.
#   bash scripts/gpu_check.sh OUTDIR [--minutes 8] [--only STEP,...] [--skip STEP,...]   # on the GPU machine
#   bash scripts/gpu_check.sh --cpu OUTDIR                                             # tiny sizes, on the CPU
# PYTHON picks the interpreter (default python3, the one with torch on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -u scripts/gpu_check.py "$@"
