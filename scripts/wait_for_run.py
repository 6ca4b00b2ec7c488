"""Wait for a Dagster run to finish (run-pipeline.sh): exit 0 when it succeeded, 1 when it failed or was canceled,
3 when it sits in the queue and no daemon is there to take it off (run-pipeline.sh then starts one).

`dagster-daemon liveness-check` counts a daemon as live for 30 minutes after its last heartbeat, so a `dagster dev`
stopped a minute ago still looks live and a run queued for its daemon would wait forever. A daemon writes a
heartbeat every 30 s; here one counts as live only with a heartbeat from the last LIVE_HEARTBEAT_SECONDS.

`python scripts/wait_for_run.py --daemon-is-live` answers only that question: exit 0 when a daemon is live.
"""

import sys
import time

import dagster as dg
from dagster._daemon.controller import all_daemons_live

LIVE_HEARTBEAT_SECONDS = 90
# How long a run may sit queued with no live daemon before we say so (a daemon just started needs a moment).
QUEUED_WITHOUT_DAEMON_SECONDS = 120
POLL_SECONDS = 5


def daemon_is_live(instance: dg.DagsterInstance) -> bool:
    return all_daemons_live(instance, heartbeat_tolerance_seconds=LIVE_HEARTBEAT_SECONDS)


def wait(instance: dg.DagsterInstance, run_id: str) -> int:
    queued_without_daemon_since = None
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            print(f"medcot: no run {run_id} in {instance.root_directory}", file=sys.stderr)
            return 1
        if run.is_finished:
            print(f"medcot: run {run_id} ended: {run.status.value}", flush=True)
            return 0 if run.status == dg.DagsterRunStatus.SUCCESS else 1
        if run.status == dg.DagsterRunStatus.QUEUED and not daemon_is_live(instance):
            queued_without_daemon_since = queued_without_daemon_since or time.monotonic()
            if time.monotonic() - queued_without_daemon_since >= QUEUED_WITHOUT_DAEMON_SECONDS:
                print(
                    f"medcot: run {run_id} is queued and no Dagster daemon has sent a heartbeat in the last "
                    f"{LIVE_HEARTBEAT_SECONDS} s to take it off the queue",
                    file=sys.stderr, flush=True,
                )
                return 3
        else:
            queued_without_daemon_since = None
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    with dg.DagsterInstance.get() as current:
        if sys.argv[1] == "--daemon-is-live":
            sys.exit(0 if daemon_is_live(current) else 1)
        sys.exit(wait(current, sys.argv[1]))
