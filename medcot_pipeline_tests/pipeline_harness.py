"""Build the real Definitions from a test profile and run them on a real (sqlite) Dagster instance."""

from __future__ import annotations

import copy
import importlib
import os
import sys
from pathlib import Path

import dagster as dg
import yaml

# The six-asset spine, and every asset of the graph in an order that materializes (the benchmark branch beside it).
SPINE = ("raw_dataset", "formatted_splits", "lora_adapter", "merged_model", "rouge_report", "hub_release")
ASSETS = ("raw_dataset", "benchmark_questions", "formatted_splits", "lora_adapter", "merged_model", "rouge_report",
          "benchmark_report", "hub_release")


def tiny_profile(base_model: Path, artifacts: Path, **ops_overrides) -> dict:
    """A profile that runs the whole graph in about a minute on a tiny random Llama."""
    profile = {
        "ops": {
            "raw_dataset": {"config": {"source": "sample", "max_records": 16}},
            "formatted_splits": {"config": {"validation_size": 3}},
            "lora_adapter": {"config": {
                "backend": "transformers", "load_in_4bit": False, "max_steps": 2,
                "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                "optim": "adamw_torch", "gradient_checkpointing": False, "eval_steps": 2, "save_steps": 2,
                # Graded at the evaluation (training/grading.py); a random model never closes its tags, so few tokens.
                "report_to_wandb": False, "grade_max_new_tokens": 8,
            }},
            "merged_model": {"config": {"dtype": "float32"}},
            "rouge_report": {"config": {
                "num_questions": 2, "batch_size": 2, "max_new_tokens": 8, "continuation_tokens": 0, "gate_enabled": False,
            }},
            "benchmark_report": {"config": {"max_questions": 2, "batch_size": 2, "max_new_tokens": 8, "continuation_tokens": 0}},
            "hub_release": {"config": {"repo_id": "test-org/medcot-test"}},
        },
        "resources": {
            "artifacts": {"config": {"root": str(artifacts)}},
            "base_model": {"config": {"name": str(base_model), "max_seq_length": 384}},
        },
    }
    for asset, values in ops_overrides.items():
        profile["ops"].setdefault(asset, {"config": {}})["config"].update(values)
    return profile


def write_profile(path: Path, profile: dict) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(profile)))
    return path


def load_defs(profile_path: Path) -> dg.Definitions:
    """The code location as `dagster dev` loads it with MEDCOT_PROFILE=profile_path.

    The profile is read when the definitions modules are imported (as when a code location starts), so
    they are imported afresh here, and MEDCOT_PROFILE is put back afterwards.
    """
    previous = os.environ.get("MEDCOT_PROFILE")
    os.environ["MEDCOT_PROFILE"] = str(profile_path)
    try:
        for name in [m for m in sys.modules if m == "medcot_pipeline.definitions" or m.startswith("medcot_pipeline.defs")]:
            del sys.modules[name]
        return importlib.import_module("medcot_pipeline.definitions").defs
    finally:
        if previous is None:
            del os.environ["MEDCOT_PROFILE"]
        else:
            os.environ["MEDCOT_PROFILE"] = previous


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, selection=None) -> dg.ExecuteInProcessResult:
    """The six assets (or `selection`), as `--select '*'` runs them: the Hub source is observed, never materialized."""
    job = defs.resolve_implicit_global_asset_job_def()
    keys = [dg.AssetKey(k) if isinstance(k, str) else k for k in (ASSETS if selection is None else selection)]
    return job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False)


def stale_assets(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[str]:
    """What a rerun must cover: assets Dagster marks stale ("Unsynced" in the UI) and everything below them.

    Dagster 1.13 marks only the asset whose own code version or inputs changed; its children turn stale
    once it rematerializes with a new data version, so the rerun set is that asset and its downstream.
    """
    # Dagster keeps the stale-status resolver (what the UI's "Unsynced" badge reads) internal.
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    graph = defs.resolve_asset_graph()
    resolver = get_stale_status_resolver(instance, list(graph.assets_defs))
    stale = [key for key in graph.get_all_asset_keys() if resolver.get_status(key) == StaleStatus.STALE]
    if not stale:
        return set()
    return {key.to_user_string() for key in dg.AssetSelection.assets(*stale).downstream().resolve(graph)}


def materialized_in(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def step_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Every error a run's events carry (step failures, run failure), as full strings with their causes."""
    errors = []
    for entry in instance.all_logs(run_id):
        error = getattr(entry.dagster_event and entry.dagster_event.event_specific_data, "error", None)
        if error is not None:
            errors.append(error.to_string())
    return errors
