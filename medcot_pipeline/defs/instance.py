"""The Dagster instance that medcot's dagster.yaml files name (`instance_class`): it refuses a run whose config
carries a secret before the run is stored, records which process runs each run and gives back the pool slots of a
run whose process was killed (run_workers.py), says at INFO what a step waiting for a pool waits for, and creates
a new SQLite home's tables one process at a time.

Dagster checks run config against the job's schema before it creates a run, and that schema refuses `token:`
under the `hub` resource. But the implicit asset job behind the asset graph's Materialize button and
`dagster asset materialize` accepts config for resources and ops the selected assets do not use, unchecked, and
stores it with the run. Every launch path (the launchpad, `--config-json`, schedules, sensors, re-executions)
creates its run through `DagsterInstance.create_run`, so this is the one place that sees them all before the run
storage does. The executor's check (run_config_checks.py) stays for instances configured without this class.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import yaml
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData

from medcot_pipeline.defs import run_workers
from medcot_pipeline.defs.run_config_checks import secret_paths
from medcot_pipeline.profiles import SECRET_ENV

logger = logging.getLogger(__name__)
# Dagster's engine event, at DEBUG, for a step that could not claim a pool slot ("Step still blocked ..." repeats it).
_BLOCKED_MESSAGES = ("Step blocked by limit for pool ", "Step still blocked by limit for pool ")
# How often a step waiting for a pool has the runs that hold it checked for dead processes.
POOL_WATCH_SECONDS = 15


class SecretInRunConfigError(dg.DagsterError):
    """Run config with a key named like a secret; the run was not created."""

    def __init__(self, paths: list[tuple[str, ...]]):
        keys = ", ".join(".".join(path) for path in paths)
        sources = ", ".join(sorted({SECRET_ENV[path[-1]] for path in paths}))
        super().__init__(
            f"run config {keys}: secrets come from the environment ({sources}), never from run config; "
            "the run was refused before anything was stored"
        )


def refuse_secrets(run_config: Mapping[str, Any] | None) -> None:
    paths = secret_paths(run_config or {})
    if paths:
        raise SecretInRunConfigError(paths)


class MedcotInstance(dg.DagsterInstance):
    """`DagsterInstance` that never stores run config holding a secret key (token, api_key).

    Each public way to create a run is checked before it reaches the run storage; a re-execution without new
    config reuses its parent's, which was checked when the parent was created.
    """

    # What InstanceRef asks of an `instance_class`: its own config keys (none) and the default storages.
    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, Any]:
        from dagster._core.instance.ref import InstanceRef

        defaults = dict(InstanceRef.config_defaults(base_dir))
        # Where dagster.yaml names no storage (SQLite in the home): Dagster's own, with its tables created under a lock.
        defaults["storage"] = ConfigurableClassData(
            __name__, LockedSqliteStorage.__name__, yaml.dump({"base_dir": base_dir}, default_flow_style=False)
        )
        return defaults

    def create_run(self, *, run_config, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_run(run_config=run_config, **kwargs)

    def create_run_for_job(self, job_def, execution_plan=None, run_id=None, run_config=None, *args, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_run_for_job(job_def, execution_plan, run_id, run_config, *args, **kwargs)

    def create_reexecuted_run(self, *, run_config=None, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_reexecuted_run(run_config=run_config, **kwargs)

    def register_managed_run(self, job_name, run_id, run_config, *args, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().register_managed_run(job_name, run_id, run_config, *args, **kwargs)

    def add_run(self, dagster_run: dg.DagsterRun) -> dg.DagsterRun:
        refuse_secrets(dagster_run.run_config)
        return super().add_run(dagster_run)

    # ------------------------------------------------------------------ events

    def handle_new_event(self, event, *, batch_metadata=None) -> None:
        super().handle_new_event(event, batch_metadata=batch_metadata)
        dagster_event = event.dagster_event
        if dagster_event is None:
            return
        try:
            if dagster_event.event_type == dg.DagsterEventType.RUN_START and dagster_event.pid == os.getpid():
                # This process runs the run: say who it is, so that its death can be told from a long step.
                self.add_run_tags(event.run_id, {run_workers.WORKER_TAG: run_workers.WorkerIdentity.current().tag_value()})
            elif dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT and (event.user_message or "").startswith(_BLOCKED_MESSAGES):
                self._explain_pool_wait(event.run_id, event.step_key, event.user_message.rsplit(" ", 1)[1])
        except Exception:  # noqa: BLE001 - bookkeeping about a run must never fail the run itself
            logger.exception("medcot could not record or explain %s of run %s", dagster_event.event_type_value, event.run_id)

    def _explain_pool_wait(self, run_id: str, step_key: str | None, pool: str) -> None:
        """Say at INFO what a blocked step waits for, after giving back the slots of holders that can no longer use
        them; while live runs hold the pool, keep checking them (Dagster repeats its own message only every 5 min)."""
        freed, waits_on = self._give_back_unusable_slots(pool, run_id)
        info = self.event_log_storage.get_concurrency_info(pool)
        limit = info.limit if info.limit is not None else info.slot_count
        step = step_key or "a step"
        if freed:
            message = f"{step} waits for pool {pool} (limit {limit}); slots given back: " + "; ".join(freed)
        elif waits_on:
            message = f"{step} waits for pool {pool} (limit {limit}), held by " + ", ".join(waits_on)
        else:
            message = f"{step} waits for pool {pool} (limit {limit}): no slot is free yet"
        self._report(run_id, message, step_key)
        watching = self.__dict__.setdefault("_medcot_pool_watchers", set())
        if waits_on and not freed and (run_id, step_key, pool) not in watching:
            watching.add((run_id, step_key, pool))
            threading.Thread(
                target=self._watch_pool, args=(run_id, step_key, pool), daemon=True, name=f"medcot-pool-watch-{run_id[:8]}"
            ).start()

    def _give_back_unusable_slots(self, pool: str, run_id: str) -> tuple[list[str], list[str]]:
        """(what was given back and why, who still holds the pool): frees the slots of a run that ended without giving
        them back, and marks failed, then frees, a run whose process is dead (run_workers.dead_run_reason)."""
        holders: dict[str, list[str]] = {}
        for slot in self.event_log_storage.get_concurrency_info(pool).claimed_slots:
            holders.setdefault(slot.run_id, []).append(slot.step_key)
        freed, waits_on = [], []
        for holder_id, steps in holders.items():
            holder = self.get_run_by_id(holder_id)
            steps_text = ", ".join(steps)
            if holder is None or holder.is_finished:
                self.event_log_storage.free_concurrency_slots_for_run(holder_id)
                status = "deleted" if holder is None else holder.status.value
                freed.append(f"run {holder_id[:8]} ({steps_text}) had ended ({status}) without giving its slot back")
                continue
            reason = run_workers.dead_run_reason(self, holder) if holder_id != run_id else None
            if reason is not None:
                run_workers.fail_dead_run(self, holder, reason)
                freed.append(f"run {holder_id[:8]} ({steps_text}) was marked failed: {reason}")
                continue
            waits_on.append(f"run {holder_id[:8]}'s {steps_text}{run_workers.holder_note(self, holder)}")
        return freed, waits_on

    def _watch_pool(self, run_id: str, step_key: str | None, pool: str) -> None:
        """Until the blocked step starts (or its run ends): every POOL_WATCH_SECONDS, give back what a holder that died
        since can no longer use, and say so."""
        try:
            while True:
                time.sleep(POOL_WATCH_SECONDS)
                run = self.get_run_by_id(run_id)
                if run is None or run.is_finished or self._step_started(run_id, step_key):
                    return
                freed, waits_on = self._give_back_unusable_slots(pool, run_id)
                if freed:
                    self._report(run_id, f"{step_key or 'a step'} waits for pool {pool}; slots given back: " + "; ".join(freed), step_key)
                if not waits_on:
                    return
        except Exception:  # noqa: BLE001 - a watcher must never take its run down
            logger.exception("medcot stopped watching pool %s for run %s", pool, run_id)
        finally:
            self.__dict__.get("_medcot_pool_watchers", set()).discard((run_id, step_key, pool))

    def _step_started(self, run_id: str, step_key: str | None) -> bool:
        return any(entry.step_key == step_key for entry in self.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))

    def _report(self, run_id: str, message: str, step_key: str | None) -> None:
        run = self.get_run_by_id(run_id)
        if run is not None:
            self.report_engine_event(message, run, step_key=step_key)


class LockedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage, whose tables a process creates only while it holds `<home>/.storage.lock`.

    Two processes opening a new DAGSTER_HOME at once (two `dagster asset materialize`, or a run next to
    `dagster dev`) would otherwise both create the tables and stamp their schema version, and one fails
    ("table secondary_indexes already exists", or alembic finding two heads).
    """

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> LockedSqliteStorage:
        from filelock import FileLock

        base_dir = config_value["base_dir"]
        os.makedirs(base_dir, exist_ok=True)
        with FileLock(os.path.join(base_dir, ".storage.lock")):
            return cls.from_local(inst_data=inst_data, **config_value)
