"""Jobs: the whole pipeline, and retraining from the adapter down."""

import os

import dagster as dg

from medcot_pipeline.defs.run_config_checks import run_config_checked
from medcot_pipeline.defs.stages import GPU_TAG_KEY, PROFILE_RUN_TAGS, STAGES


# A GPU step holds the host's GPUs: merging, evaluation and one-GPU training run on the first visible GPU,
# data-parallel training on all of them. Two GPU steps at once would share a card, so a run starts one at a
# time, and the `gpu` pool (dagster_home/dagster.yaml, limit 1) makes other runs' GPU steps wait for it.
# Dagster 1.13 counts one pool slot per step (no weighted slots), so the pool counts GPU steps, not GPUs.
GPU_STEPS_AT_ONCE = 1


def gpu_aware_executor() -> dg.ExecutorDefinition:
    """Multiprocess executor: CPU steps run alongside, GPU-tagged steps one at a time.

    It checks the whole run config against the settings models before the first step starts.
    """
    checked = run_config_checked(dg.multiprocess_executor, {name: stage.settings for name, stage in STAGES.items()})
    return checked.configured(
        {"tag_concurrency_limits": [{"key": GPU_TAG_KEY, "value": "true", "limit": GPU_STEPS_AT_ONCE}]}
    )


def retraining_selection() -> dg.AssetSelection:
    """MEDCOT_RETRAIN_SCOPE=full reloads the data too; the default retrains from the adapter down."""
    if os.environ.get("MEDCOT_RETRAIN_SCOPE", "from_adapter") == "full":
        return dg.AssetSelection.all()
    return dg.AssetSelection.assets("lora_adapter").downstream()


medcot_pipeline_job = dg.define_asset_job(
    "medcot_pipeline", selection=dg.AssetSelection.all(), description="Every asset, data to release.",
    run_tags=PROFILE_RUN_TAGS,
)
retraining_job = dg.define_asset_job(
    "retraining", selection=retraining_selection(), description="Retrain, merge, evaluate and release.",
    run_tags=PROFILE_RUN_TAGS,
)
