"""Check run config before anything runs: the `-c` files of the dagster CLI at load, every run's config before its first step.

Dagster checks run config against each asset's config schema when a run is launched (unknown keys, wrong
types), but two things escape it:

- the limits in the settings models (`validation_size >= 1`, `0 <= lora_dropout < 1`, ...) are pydantic's,
  outside Dagster's schema, so Dagster checks them only when a step builds its config, after the steps
  before it have materialized;
- for a run of some assets, Dagster accepts (and stores with the run) config for resources and assets the
  run does not use, unchecked: a `token:` under `resources: hub:` there is kept in the run storage.

So `dagster asset materialize -c FILE` (or `job execute/launch -c`) checks each FILE when the code location
loads, exactly as the MEDCOT_PROFILE file is checked: an unknown key, a secret or a value out of range fails
naming the file and the key before a run exists. Config that arrives otherwise (the launchpad, `--config-json`,
a schedule) is checked by the executor before the first step: out-of-range values and secret keys fail the
run with one line naming the key and value. Nothing runs, nothing is written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from medcot_pipeline.defs.resources import RESOURCE_TYPES
from medcot_pipeline.profiles import SECRET_FIELDS
from medcot_pipeline.settings import Settings


class RunConfigError(dg.DagsterError):
    """Run config that breaks a limit of a settings model or carries a secret; the message names the key."""


def command_line_config_files(argv: list[str] | None = None) -> tuple[Path, ...]:
    """The files given with -c/--config when this process is the dagster CLI (`dagster asset materialize ...`).

    Dagster hands a run its parsed config, never the files it came from; the CLI loads the code location in
    its own process, so its command line still names them. Any other program (pytest has its own -c) gets ().
    """
    argv = sys.argv if argv is None else argv
    if not argv or not _is_dagster_cli(argv[0]):
        return ()
    files = []
    for position, arg in enumerate(argv):
        if arg in ("-c", "--config") and position + 1 < len(argv):
            files.append(Path(argv[position + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return tuple(files)


def _is_dagster_cli(program: str) -> bool:
    path = Path(program)
    # The `dagster` console script, or `python -m dagster` (whose argv[0] is dagster/__main__.py).
    return path.name == "dagster" or (path.name == "__main__.py" and path.parent.name == "dagster")


def config_problems(
    run_config: Mapping[str, Any],
    resolved_ops: Mapping[str, Any],
    resolved_resources: Mapping[str, Any],
    op_settings: Mapping[str, type[Settings]],
    run_id: str = "RUN_ID",
) -> list[str]:
    """One line per problem: a secret key anywhere in `run_config` (as given), or a value that the settings
    model of its asset or resource refuses in the resolved config (defaults filled in), by op/resource name."""
    problems = [
        f"run config {'.'.join(path)}: secrets come from the environment (HF_TOKEN, WANDB_API_KEY), never from "
        f"run config; it is stored with this run, so delete the run (`dagster run delete {run_id}`)"
        for path in secret_paths(run_config)
    ]
    for name, values in resolved_ops.items():
        if name in op_settings:
            problems += _limit_problems(("ops", name), op_settings[name], values)
    for name, values in resolved_resources.items():
        if name in RESOURCE_TYPES:
            problems += _limit_problems(("resources", name), RESOURCE_TYPES[name], values)
    return problems


def secret_paths(config: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where keys named like a secret (token, api_key) occur in nested run config."""
    found = []
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key in SECRET_FIELDS:
                found.append((*path, str(key)))
            found += secret_paths(value, (*path, str(key)))
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            found += secret_paths(value, (*path, str(index)))
    return found


def _limit_problems(section: tuple[str, str], model: type[pydantic.BaseModel], values) -> list[str]:
    try:
        model(**(values or {}))
    except pydantic.ValidationError as err:
        return [
            f"run config {'.'.join((*section, 'config', *map(str, error['loc'])))}: {error['msg']} (got {error.get('input')!r})"
            for error in err.errors()
        ]
    return []


class RunConfigCheckedExecutor(dg.Executor):
    """Checks the run config as above, then hands the plan to the wrapped executor."""

    def __init__(self, inner: dg.Executor, op_settings: Mapping[str, type[Settings]]):
        self._inner = inner
        self._op_settings = op_settings

    def execute(self, plan_context, execution_plan) -> Iterator:
        # The config as the steps would see it: what the run was given, over the profile's defaults.
        resolved = dg.validate_run_config(plan_context.job.get_definition(), plan_context.run_config)
        problems = config_problems(
            plan_context.run_config,
            {name: op.get("config") for name, op in resolved.get("ops", {}).items()},
            {name: resource.get("config") for name, resource in resolved.get("resources", {}).items()},
            self._op_settings,
            plan_context.run_id,
        )
        if problems:
            # One line, so the run's page and the CLI show the whole of it.
            raise RunConfigError("; ".join(problems) + " (nothing was run)")
        yield from self._inner.execute(plan_context, execution_plan)

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config


def run_config_checked(executor: dg.ExecutorDefinition, op_settings: Mapping[str, type[Settings]]) -> dg.ExecutorDefinition:
    """`executor` (same name, config and requirements) that checks the run config before its first step."""
    create = executor.executor_creation_fn
    if create is None:
        raise ValueError(f"executor {executor.name} has no executor_creation_fn to wrap")
    return dg.ExecutorDefinition(
        name=executor.name,
        config_schema=executor.config_schema.as_field(),
        requirements=executor.get_requirements,
        executor_creation_fn=lambda init_context: RunConfigCheckedExecutor(create(init_context), op_settings),
        description=executor.description,
    )
