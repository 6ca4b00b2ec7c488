#!/usr/bin/env bash
# Run the `medcot_pipeline` job (every asset) with the profile in MEDCOT_PROFILE, recorded in DAGSTER_HOME.
#
# The run is launched against the code location that pyproject.toml's [tool.dagster] names (`medcot_pipeline`,
# what `dagster dev` loads) and taken off the queue by the Dagster daemon, as a run launched from the UI is,
# so the UI files it under the job and on the Overview timeline (a `dagster job execute` run has no code
# location: it shows in the runs list only). Its log streams here. With `dagster dev` already running on
# the same DAGSTER_HOME, its daemon runs it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MEDCOT_PROFILE:?set MEDCOT_PROFILE to a profile file, e.g. profiles/h100.yaml}"
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/dagster_home}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")

started=$SECONDS
run_id=$("$PY" -c 'import uuid; print(uuid.uuid4())')
# The terminal shows the run's progress (wait_for_run.py: medcot's lines, each step's start, end and time, each
# check, every warning and error); every event goes to $logs/run-<id>.log, and what the processes print
# (Dagster's DEBUG events, progress bars, library warnings) to $logs/daemon.log. The UI keeps all of it.
# Not $DAGSTER_HOME/logs: that is Dagster's telemetry folder, which its uploader moves away and sends.
logs="$DAGSTER_HOME/medcot_logs"
mkdir -p "$logs"
# The run's config is the profile resolved (`extends` applied), which is what Dagster's -c takes.
run_config=$(mktemp --suffix=.yaml)
trap 'rm -f "$run_config"' EXIT
if ! "$PY" -m medcot_pipeline.profiles "$MEDCOT_PROFILE" >"$run_config" \
  || ! launched=$("$BIN/dagster" job launch -j medcot_pipeline -c "$run_config" --run-id "$run_id" 2>&1); then
  printf '%s\n' "${launched:-}" >&2  # a profile that fails its checks: the error is the point
  exit 1
fi
printf '%s\n' "$launched" >>"$logs/daemon.log"
echo "medcot: run $run_id launched (job medcot_pipeline, profile $MEDCOT_PROFILE)"
daemon=""
start_daemon() {
  setsid "$BIN/dagster-daemon" run >>"$logs/daemon.log" 2>&1 &  # its own process group, so it and its code server stop together
  daemon=$!
  trap 'rm -f "$run_config"; [ -n "$daemon" ] && kill -- -"$daemon" 2>/dev/null; wait 2>/dev/null || true' EXIT
}
# A daemon counts as running only with a heartbeat from the last 90 s (`dagster-daemon liveness-check` accepts
# one 30 minutes old, so a `dagster dev` stopped a minute ago would look live and the run would wait forever).
if ! "$PY" scripts/wait_for_run.py --daemon-is-live; then
  start_daemon
fi
status=0
"$PY" scripts/wait_for_run.py "$run_id" "$logs/run-$run_id.log" || status=$?
if [ "$status" -eq 3 ] && [ -z "$daemon" ]; then
  # The daemon that looked live stopped before it took the run: start one here and wait again.
  echo "medcot: starting a Dagster daemon here" >&2
  start_daemon
  status=0
  "$PY" scripts/wait_for_run.py "$run_id" "$logs/run-$run_id.log" || status=$?
fi
elapsed=$((SECONDS - started))
root=$("$PY" -c 'import sys; from medcot_pipeline.model_paths import artifacts_root; print(artifacts_root())')
echo "medcot: run $run_id finished in $((elapsed / 60)) min $((elapsed % 60)) s; $root/ holds $(du -sh "$root" | cut -f1)."
where="medcot: every event of the run: $logs/run-$run_id.log"
[ -n "$daemon" ] && where="$where; what its processes printed: $logs/daemon.log"
echo "$where"
exit $status
