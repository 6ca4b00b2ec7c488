#!/usr/bin/env bash
# Materialize all six assets on the embedded default (SmolLM2-135M, bundled sample, CPU): one run of the
# `medcot_pipeline` job, recorded in dagster_home/ so `dagster dev` shows it (runs list, job, timeline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export DAGSTER_HOME="$PWD/dagster_home" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} MEDCOT_PROFILE=profiles/demo.yaml
bash scripts/run-pipeline.sh
echo "  the UI:  DAGSTER_HOME=\$PWD/dagster_home HF_HUB_OFFLINE=1 .venv/bin/dagster dev    # http://127.0.0.1:3000"
echo "  ask:     .venv/bin/medcot ask \"What is the first-line treatment of croup?\"        # the newest merged model"
