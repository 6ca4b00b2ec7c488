"""Follow a Dagster run until it finishes (run-pipeline.sh): its progress on stdout, one line an event worth seeing
(medcot_pipeline/defs/run_log.py), every event in LOG_FILE; exit 0 when it succeeded, 1 when it failed or was
canceled, 3 when it sits in the queue and no daemon is there to take it off (run-pipeline.sh then starts one).

`dagster-daemon liveness-check` counts a daemon as live for 30 minutes after its last heartbeat, so a `dagster dev`
stopped a minute ago still looks live and a run queued for its daemon would wait forever. A daemon writes a
heartbeat every 30 s; here one counts as live only with a heartbeat from the last LIVE_HEARTBEAT_SECONDS.

usage: wait_for_run.py RUN_ID LOG_FILE
       wait_for_run.py --daemon-is-live      (exit 0 when a daemon is live)
"""

import sys
import time
from pathlib import Path

import dagster as dg
from dagster._daemon.controller import all_daemons_live

from medcot_pipeline.defs.run_log import follow_run

LIVE_HEARTBEAT_SECONDS = 90
# How long a run may sit queued with no live daemon before we say so (a daemon just started needs a moment).
QUEUED_WITHOUT_DAEMON_SECONDS = 120
POLL_SECONDS = 1.0


def daemon_is_live(instance: dg.DagsterInstance) -> bool:
    return all_daemons_live(instance, heartbeat_tolerance_seconds=LIVE_HEARTBEAT_SECONDS)


class QueuedWithoutDaemon:
    """True once the run has sat queued with no live daemon for QUEUED_WITHOUT_DAEMON_SECONDS."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.since = None

    def __call__(self, run: dg.DagsterRun) -> bool:
        if run.status != dg.DagsterRunStatus.QUEUED or daemon_is_live(self.instance):
            self.since = None
            return False
        self.since = self.since or time.monotonic()
        return time.monotonic() - self.since >= QUEUED_WITHOUT_DAEMON_SECONDS


def wait(instance: dg.DagsterInstance, run_id: str, log_file: Path) -> int:
    run = follow_run(instance, run_id, sys.stdout, log_file, interval=POLL_SECONDS, give_up=QueuedWithoutDaemon(instance))
    if run is None:
        print(f"medcot: no run {run_id} in {instance.root_directory}", file=sys.stderr)
        return 1
    if not run.is_finished:
        print(
            f"medcot: run {run_id} is queued and no Dagster daemon has sent a heartbeat in the last "
            f"{LIVE_HEARTBEAT_SECONDS} s to take it off the queue",
            file=sys.stderr, flush=True,
        )
        return 3
    print(f"medcot: run {run_id} ended: {run.status.value}", flush=True)
    return 0 if run.status == dg.DagsterRunStatus.SUCCESS else 1


if __name__ == "__main__":
    with dg.DagsterInstance.get() as current:
        if sys.argv[1] == "--daemon-is-live":
            sys.exit(0 if daemon_is_live(current) else 1)
        sys.exit(wait(current, sys.argv[1], Path(sys.argv[2])))
