"""Whether a run's processes still live, so that a run whose process was killed (kill -9, the OOM killer, a reboot)
is marked failed and gives back its `gpu` pool slot, instead of holding the pool, and every later GPU step, forever.

Dagster marks a run STARTED when its worker (the CLI of `dagster asset materialize`, or the run worker `dagster dev`
launches) begins, and frees a step's pool slot when that worker sees the step end. A worker killed without
warning does neither. Each run's worker therefore records who it is (`medcot/run_worker`: host, pid, the process's
start time and the host's boot time, so a reused pid or a reboot is not mistaken for it), and a run counts as dead
when that process is gone and no step process it started is still running. Two places act on it: the run monitoring
daemon (`MedcotRunLauncher.check_run_worker_health`, with `run_monitoring` in dagster.yaml) and, without any
daemon, a run whose step waits for the pool (`MedcotInstance`, which also says at INFO what the step waits for).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import dagster as dg
import psutil
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

WORKER_TAG = "medcot/run_worker"
# Processes whose start time is within this of the recorded one are the same process (clock granularity).
_START_TIME_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class WorkerIdentity:
    host: str
    pid: int
    started: float  # the process's start time (psutil create_time)
    boot: float  # the host's boot time

    def tag_value(self) -> str:
        return f"{self.host} {self.pid} {self.started:.2f} {self.boot:.0f}"

    @classmethod
    def parse(cls, value: str) -> WorkerIdentity | None:
        try:
            host, pid, started, boot = value.split(" ")
            return cls(host, int(pid), float(started), float(boot))
        except ValueError:
            return None

    @classmethod
    def current(cls) -> WorkerIdentity:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), psutil.boot_time())

    def is_here(self) -> bool:
        return self.host == socket.gethostname()

    def is_running(self) -> bool:
        """Whether this process still runs (only answerable on its own host: check is_here first)."""
        if abs(self.boot - psutil.boot_time()) > 2:
            return False  # the host rebooted since
        return _pid_started_at(self.pid, self.started)


def _pid_started_at(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) <= _START_TIME_SLACK_SECONDS
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # another user's process with that pid: alive, and not ours to judge
        return True


def worker_of(run: dg.DagsterRun) -> WorkerIdentity | None:
    value = run.tags.get(WORKER_TAG)
    return WorkerIdentity.parse(value) if value else None


def running_step_processes(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, int]]:
    """(step key, pid) of the run's steps that started and never ended and whose process still runs on this host.

    A step process (the multiprocess executor's child) outlives a killed worker until its own work ends; while it
    runs, the GPU it holds is in use and the run is not dead yet.
    """
    started: dict[str, tuple[int, float]] = {}
    for entry in instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    ):
        event = entry.dagster_event
        if event is None or entry.step_key is None:  # of_type keeps step events, which carry both
            continue
        if event.event_type == dg.DagsterEventType.STEP_START and event.pid is not None:
            started[entry.step_key] = (event.pid, entry.timestamp)
        else:
            started.pop(entry.step_key, None)
    alive = []
    for step_key, (pid, when) in started.items():
        try:
            # The step process existed before its STEP_START event; a pid reused later started after it.
            if psutil.Process(pid).create_time() <= when + _START_TIME_SLACK_SECONDS and _pid_started_at(pid, None):
                alive.append((step_key, pid))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            alive.append((step_key, pid))
    return alive


def dead_run_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why an unfinished run is dead (its worker is gone and none of its step processes runs), or None when it lives
    or cannot be judged here (no worker tag, or a worker on another host)."""
    if run.is_finished:
        return None
    worker = worker_of(run)
    if worker is None or not worker.is_here() or worker.is_running():
        return None
    if running_step_processes(instance, run.run_id):
        return None
    return (
        f"its process (pid {worker.pid} on {worker.host}) is gone without ending the run (killed, out of memory or a "
        "reboot) and none of its steps is still running"
    )


def holder_note(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """What to add when naming a live run that holds a pool: nothing while its process runs; that only its steps do
    when the process is gone (their slot comes back once they end)."""
    worker = worker_of(run)
    if worker is None or not worker.is_here() or worker.is_running():
        return ""
    steps = running_step_processes(instance, run.run_id)
    running = ", ".join(f"{step} as pid {pid}" for step, pid in steps)
    return f" (its process, pid {worker.pid}, is gone; {running} still running: the slot comes back when that ends)"


def fail_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun, reason: str) -> None:
    """Mark a dead run failed and give back every pool slot it held."""
    instance.report_run_failed(run, f"medcot marked this run failed: {reason}. Its pool slots were given back.")
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


class MedcotRunLauncher(DefaultRunLauncher):
    """Dagster's default run launcher, plus the health check the run monitoring daemon asks for: a run whose worker
    process is gone (and none of whose steps still runs) is reported FAILED, so the daemon marks it failed and, after
    `free_slots_after_run_end_seconds`, frees its pool slots."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        instance = self._instance
        reason = dead_run_reason(instance, run) if instance is not None else None
        if reason is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, reason)
        # Alive, or not judged from here (a worker on another host, a run from before the tag): the daemon treats
        # anything but RUNNING as a dead worker, so only a run known dead is reported otherwise.
        return CheckRunHealthResult(WorkerStatus.RUNNING)
