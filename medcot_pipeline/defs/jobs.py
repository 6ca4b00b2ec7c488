"""Jobs: the whole pipeline, and retraining from the adapter down."""

import os

import dagster as dg

from medcot_pipeline.defs.run_config_checks import run_config_checked
from medcot_pipeline.defs.stages import GPU_TAG_KEY, STAGES


def gpu_slots() -> int:
    """GPU steps allowed at once in a run: MEDCOT_GPU_SLOTS, else the GPUs CUDA_VISIBLE_DEVICES names, else 1.

    Read from the environment rather than torch so the code location loads without importing CUDA.
    """
    if os.environ.get("MEDCOT_GPU_SLOTS"):
        return max(1, int(os.environ["MEDCOT_GPU_SLOTS"]))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))


def gpu_aware_executor() -> dg.ExecutorDefinition:
    """Multiprocess executor: CPU steps run alongside, GPU-tagged steps are capped at the GPU count.

    It checks the whole run config against the settings models before the first step starts.
    """
    checked = run_config_checked(dg.multiprocess_executor, {name: stage.settings for name, stage in STAGES.items()})
    return checked.configured(
        {"tag_concurrency_limits": [{"key": GPU_TAG_KEY, "value": "true", "limit": gpu_slots()}]}
    )


def retraining_selection() -> dg.AssetSelection:
    """MEDCOT_RETRAIN_SCOPE=full reloads the data too; the default retrains from the adapter down."""
    if os.environ.get("MEDCOT_RETRAIN_SCOPE", "from_adapter") == "full":
        return dg.AssetSelection.all()
    return dg.AssetSelection.assets("lora_adapter").downstream()


medcot_pipeline_job = dg.define_asset_job(
    "medcot_pipeline", selection=dg.AssetSelection.all(), description="Every asset, data to release."
)
retraining_job = dg.define_asset_job(
    "retraining", selection=retraining_selection(), description="Retrain, merge, evaluate and release."
)
