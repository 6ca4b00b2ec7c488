"""Follow a Dagster run until it finishes (run-pipeline.sh): its progress on stdout, one line an event worth seeing
(medcot_pipeline/defs/run_log.py), every event in LOG_FILE; exit 0 when it succeeded, 1 when it failed or was canceled.

usage: wait_for_run.py RUN_ID LOG_FILE
"""

import sys
from pathlib import Path

import dagster as dg

from medcot_pipeline.defs.run_log import follow_run

run_id, log_file = sys.argv[1], Path(sys.argv[2])
instance = dg.DagsterInstance.get()
run = follow_run(instance, run_id, sys.stdout, log_file)
if run is None:
    sys.exit(f"medcot: no run {run_id} in {instance.root_directory}")
print(f"medcot: run {run_id} ended: {run.status.value}", flush=True)
sys.exit(0 if run.status == dg.DagsterRunStatus.SUCCESS else 1)
