"""Wait for a Dagster run to finish (run-pipeline.sh): exit 0 when it succeeded, 1 when it failed or was canceled."""

import sys
import time

import dagster as dg

run_id = sys.argv[1]
instance = dg.DagsterInstance.get()
while True:
    run = instance.get_run_by_id(run_id)
    if run is None:
        sys.exit(f"medcot: no run {run_id} in {instance.root_directory}")
    if run.is_finished:
        print(f"medcot: run {run_id} ended: {run.status.value}", flush=True)
        sys.exit(0 if run.status == dg.DagsterRunStatus.SUCCESS else 1)
    time.sleep(5)
