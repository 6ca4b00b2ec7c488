"""The whole graph as data: a change to assets, deps, tags, versions, checks or automation shows as a diff.

Regenerate after an intended change with: MEDCOT_UPDATE_SNAPSHOTS=1 pytest medcot_pipeline_tests/test_definitions.py
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from medcot_pipeline.profiles import DEFAULT_PROFILE
from medcot_pipeline_tests.pipeline_harness import ASSETS, SPINE, load_defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def describe(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "tags": dict(sorted(node.assets_def.op.tags.items())) if node.assets_def.is_executable else {},
            "pool": node.assets_def.op.pool,
            "code_version": node.code_version,
        }
    checks = {
        f"{spec.asset_key.to_user_string()}:{spec.name}": {"blocking": spec.blocking}
        for checks_def in defs.asset_checks or []
        for spec in checks_def.check_specs
    }
    return {
        "assets": assets,
        "checks": dict(sorted(checks.items())),
        "jobs": sorted(job.name for job in defs.jobs or []),
        "schedules": {s.name: {"cron": s.cron_schedule, "job": s.job_name, "default_status": s.default_status.value} for s in defs.schedules or []},
        # A sensor that only reports asset events (settings_changes) targets no job.
        "sensors": {s.name: {"jobs": sorted(j.name for j in s.jobs) if s.has_jobs else [], "default_status": s.default_status.value}
                    for s in defs.sensors or []},
    }


def test_definitions_match_snapshot():
    snapshot = describe(load_defs(DEFAULT_PROFILE))
    if os.environ.get("MEDCOT_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert snapshot == json.loads(SNAPSHOT.read_text())


def test_six_assets_in_a_chain_with_gpu_steps_tagged():
    described = describe(load_defs(DEFAULT_PROFILE))["assets"]
    # Beside the six, the Hub dataset as an observed source (linked to raw_dataset in hub profiles only).
    assert set(described) == set(ASSETS) | {"medical_o1_hub_dataset"}
    for upstream, downstream in zip(SPINE, SPINE[1:]):
        assert upstream in described[downstream]["deps"]
    for gpu_step in ("lora_adapter", "merged_model", "rouge_report", "benchmark_report"):
        assert described[gpu_step]["tags"].get("medcot/gpu") == "true"
        assert described[gpu_step]["pool"] == "gpu"
    assert described["raw_dataset"]["tags"].get("medcot/gpu") is None


def test_code_location_loads_without_torch():
    """Slow imports (torch, Unsloth) belong inside steps, so `dagster dev` loads the location fast."""
    probe = (
        "import sys, time; t=time.time(); import medcot_pipeline.definitions; "
        "print(time.time()-t); print(sorted(m for m in ('torch','transformers','trl','unsloth','peft') if m in sys.modules))"
    )
    started = time.time()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == "[]", f"heavy modules imported while loading definitions: {out[-1]}"
    assert time.time() - started > 0


def test_step_server_preloads_torch_and_the_scorer_but_nothing_unsloth_must_precede():
    """Steps fork from a server that imported PRELOADED_FOR_STEPS (the executor's forkserver). Unsloth patches
    transformers, peft and trl only when it is imported before them, so the server must import none of them."""
    from medcot_pipeline.defs.jobs import PRELOADED_FOR_STEPS

    defs = load_defs(DEFAULT_PROFILE)
    config = defs.resolve_implicit_global_asset_job_def().executor_def.config_schema.resolve_config({}).value["config"]
    assert config["start_method"]["forkserver"]["preload_modules"] == [*PRELOADED_FOR_STEPS, "medcot_pipeline.definitions"]
    assert "torch" in PRELOADED_FOR_STEPS
    probe = (
        f"import sys; import {', '.join(PRELOADED_FOR_STEPS)}, medcot_pipeline.definitions; "
        "print(sorted(m for m in ('transformers','trl','unsloth','peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == "[]", f"the step server would import {out[-1]} before Unsloth could"
