#!/usr/bin/env bash
# Materialize all six assets on the embedded default (SmolLM2-135M, bundled sample, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export DAGSTER_HOME="$PWD/dagster_home" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} MEDCOT_PROFILE=profiles/demo.yaml
.venv/bin/dagster asset materialize -m medcot_pipeline.definitions --select '*' -c profiles/demo.yaml
