#!/usr/bin/env bash
# Materialize all six assets on the embedded default (SmolLM2-135M, bundled sample, CPU) as one run of the
# `medcot_pipeline` job, recorded in dagster_home/ so `dagster dev` shows it (runs list, job, timeline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export DAGSTER_HOME="$PWD/dagster_home" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} MEDCOT_PROFILE=${MEDCOT_PROFILE:-profiles/demo.yaml}
started=$SECONDS
.venv/bin/dagster job execute -m medcot_pipeline.definitions -j medcot_pipeline -c "$MEDCOT_PROFILE"
echo
echo "medcot demo: done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s; artifacts/ holds $(du -sh artifacts | cut -f1)."
echo "  the UI:  DAGSTER_HOME=\$PWD/dagster_home HF_HUB_OFFLINE=1 MEDCOT_PROFILE=$MEDCOT_PROFILE .venv/bin/dagster dev"
echo "  ask:     .venv/bin/medcot ask \"What is the first-line treatment of croup?\"   # the newest merged model"
