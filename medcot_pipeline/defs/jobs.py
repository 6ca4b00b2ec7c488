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


# Imported once by the step server (below). None of them imports transformers, peft or trl (a test checks).
PRELOADED_FOR_STEPS = ("torch", "medcot_pipeline.evaluation.metrics")


def gpu_aware_executor() -> dg.ExecutorDefinition:
    """Multiprocess executor: CPU steps run alongside, GPU-tagged steps one at a time.

    It checks the whole run config against the settings models before the first step starts.
    """
    checked = run_config_checked(dg.multiprocess_executor, {name: stage.settings for name, stage in STAGES.items()})
    return checked.configured(
        {
            "tag_concurrency_limits": [{"key": GPU_TAG_KEY, "value": "true", "limit": GPU_STEPS_AT_ONCE}],
            # Each step's process is forked from a server that has imported Dagster, these definitions, torch and
            # the scoring code once, instead of importing them again (about 4 s a step on 2 cores for the
            # definitions, a dozen steps and checks a run; torch 4.5 s and the scorer's nltk 1.9 s on the GPU host,
            # in each step that uses them). Importing torch does not initialise CUDA, so the forked steps start
            # with CUDA untouched. Not transformers: Unsloth must be imported before it, in the training step.
            "start_method": {"forkserver": {"preload_modules": [*PRELOADED_FOR_STEPS, "medcot_pipeline.definitions"]}},
        }
    )


# MEDCOT_EXECUTOR picks where steps run: `multiprocess` (default) on this host, `ray` on the Ray cluster at RAY_ADDRESS.
EXECUTOR_ENV = "MEDCOT_EXECUTOR"
# Settings a step on a Ray node needs to load the same definitions, copied from the launching process into each
# step's Ray job. Never secrets (HF_TOKEN, WANDB_API_KEY, AWS_*, DAGSTER_PG_PASSWORD): they would be readable in
# the job's runtime_env by anyone who reaches the Ray dashboard; they belong in the nodes' own environment.
RAY_FORWARDED_ENV = (EXECUTOR_ENV, "MEDCOT_RETRAIN_SCOPE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE")


def ray_cluster_executor() -> dg.ExecutorDefinition:
    """dagster-ray's ray_executor: every step is a Ray job on the cluster whose dashboard is at RAY_ADDRESS
    (http://<head>:8265), asking for the resources in its `dagster-ray/config` tag (stages.ray_request).

    Nothing is requested at executor level: dagster-ray lets an executor-level num_gpus override every step's tag.
    """
    from dagster_ray import ray_executor

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError(f"{EXECUTOR_ENV}=ray needs RAY_ADDRESS, the Ray dashboard's address (e.g. http://ray-head:8265)")
    from medcot_pipeline.profiles import active_profile_path

    # The node loads the profile this process loaded; the path must exist there (profiles ship with the code).
    forwarded = [f"MEDCOT_PROFILE={active_profile_path().resolve()}", *(name for name in RAY_FORWARDED_ENV if os.environ.get(name))]
    # The same run-config check as on one host, before the first step is submitted.
    checked = run_config_checked(ray_executor, {name: stage.settings for name, stage in STAGES.items()})
    return checked.configured({"ray": {"address": address, "env_vars": forwarded}})


def pipeline_executor() -> dg.ExecutorDefinition:
    """The executor MEDCOT_EXECUTOR names: `multiprocess` (default, gpu_aware_executor) or `ray`."""
    choice = os.environ.get(EXECUTOR_ENV, "multiprocess")
    if choice == "ray":
        return ray_cluster_executor()
    if choice != "multiprocess":
        raise ValueError(f"{EXECUTOR_ENV}={choice!r}: expected multiprocess or ray")
    return gpu_aware_executor()


def retraining_selection() -> dg.AssetSelection:
    """MEDCOT_RETRAIN_SCOPE=full reloads the data too; the default retrains from the adapter down."""
    if os.environ.get("MEDCOT_RETRAIN_SCOPE", "from_adapter") == "full":
        return dg.AssetSelection.all()
    return dg.AssetSelection.assets("lora_adapter").downstream()


medcot_pipeline_job = dg.define_asset_job(
    "medcot_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset, data to release.",
    run_tags=PROFILE_RUN_TAGS,
)
retraining_job = dg.define_asset_job(
    "retraining",
    selection=retraining_selection(),
    description="Retrain, merge, evaluate and release.",
    run_tags=PROFILE_RUN_TAGS,
)
