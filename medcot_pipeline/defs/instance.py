"""The Dagster instance that medcot's dagster.yaml files name (`instance_class`): it refuses a run whose config
carries a secret before the run is stored.

Dagster checks run config against the job's schema before it creates a run, and that schema refuses `token:`
under the `hub` resource. But the implicit asset job behind the asset graph's Materialize button and
`dagster asset materialize` accepts config for resources and ops the selected assets do not use, unchecked, and
stores it with the run. Every launch path (the launchpad, `--config-json`, schedules, sensors, re-executions)
creates its run through `DagsterInstance.create_run`, so this is the one place that sees them all before the run
storage does. The executor's check (run_config_checks.py) stays for instances configured without this class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import dagster as dg

from medcot_pipeline.defs.profiles import SECRET_ENV
from medcot_pipeline.defs.run_config_checks import secret_paths


class SecretInRunConfigError(dg.DagsterError):
    """Run config with a key named like a secret; the run was not created."""

    def __init__(self, paths: list[tuple[str, ...]]):
        keys = ", ".join(".".join(path) for path in paths)
        sources = ", ".join(sorted({SECRET_ENV[path[-1]] for path in paths}))
        super().__init__(
            f"run config {keys}: secrets come from the environment ({sources}), never from run config; "
            "the run was refused before anything was stored"
        )


def refuse_secrets(run_config: Optional[Mapping[str, Any]]) -> None:
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
    def config_defaults(base_dir: str) -> dict:
        from dagster._core.instance.ref import InstanceRef

        return InstanceRef.config_defaults(base_dir)

    def create_run(self, *, run_config, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_run(run_config=run_config, **kwargs)

    def create_run_for_job(self, job_def, execution_plan=None, run_id=None, run_config=None, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_run_for_job(job_def, execution_plan, run_id, run_config, **kwargs)

    def create_reexecuted_run(self, *, run_config=None, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().create_reexecuted_run(run_config=run_config, **kwargs)

    def register_managed_run(self, job_name, run_id, run_config, *args, **kwargs) -> dg.DagsterRun:
        refuse_secrets(run_config)
        return super().register_managed_run(job_name, run_id, run_config, *args, **kwargs)

    def add_run(self, dagster_run: dg.DagsterRun) -> dg.DagsterRun:
        refuse_secrets(dagster_run.run_config)
        return super().add_run(dagster_run)
