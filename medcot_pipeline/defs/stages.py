"""The table of stages, and what the active profile makes of it.

Each asset is one stage: its settings model, its group, whether it holds a GPU. The active profile
(MEDCOT_PROFILE, default profiles/demo.yaml) is read once, when the code location loads: its values
become the defaults of each asset's config (what the UI's Materialize buttons run), and each asset's
code version hashes its code and its own settings, so changing only the evaluation settings marks
only rouge_report stale, and Dagster reruns exactly that.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import dagster as dg
import pydantic
from pydantic.fields import FieldInfo

from medcot_pipeline import settings
from medcot_pipeline.defs import code_versions
from medcot_pipeline.defs.profiles import Profile, active_profile_path, load_profile
from medcot_pipeline.defs.resources import RESOURCE_TYPES
from medcot_pipeline.defs.run_config_checks import command_line_config_files

# Steps that hold GPUs (one, or every GPU for data-parallel training): one at a time, within a run by the
# executor's tag limit (jobs.py) and across runs by the pool, one slot per step (dagster_home/dagster.yaml).
GPU_TAG_KEY = "medcot/gpu"
GPU_TAG = {GPU_TAG_KEY: "true"}
GPU_POOL = "gpu"
# dagster-ray's ray_executor reads each step's request to Ray from this op tag (JSON; used only with MEDCOT_EXECUTOR=ray).
RAY_CONFIG_TAG = "dagster-ray/config"
# Resources whose settings change what a stage computes (the artifacts root and W&B project do not).
SETTINGS_RESOURCES = ("base_model",)


@dataclass(frozen=True)
class Stage:
    asset: str
    settings: type[settings.Settings]
    group: str
    gpu: bool


STAGES = {
    stage.asset: stage
    for stage in (
        Stage("raw_dataset", settings.RawDatasetSettings, "data", gpu=False),
        Stage("benchmark_questions", settings.BenchmarkQuestionsSettings, "data", gpu=False),
        Stage("formatted_splits", settings.FormattingSettings, "data", gpu=False),
        Stage("lora_adapter", settings.TrainingSettings, "model", gpu=True),
        Stage("merged_model", settings.MergeSettings, "model", gpu=True),
        Stage("rouge_report", settings.EvaluationSettings, "evaluation", gpu=True),
        Stage("benchmark_report", settings.BenchmarkEvaluationSettings, "evaluation", gpu=True),
        Stage("hub_release", settings.ReleaseSettings, "release", gpu=False),
    )
}


def read_profile(path) -> Profile:
    return load_profile(path, {name: stage.settings for name, stage in STAGES.items()}, RESOURCE_TYPES)


PROFILE = read_profile(active_profile_path())
# `dagster asset materialize -c FILE`: FILE is run config this code location would never see before the run
# exists; checked here as the profile is, it fails at launch naming the file and key, before anything is stored.
for _run_config_file in command_line_config_files():
    read_profile(_run_config_file)

# Every run says which profile it ran and which version of that file, so the runs list tells runs apart.
PROFILE_TAG_KEY = "medcot/profile"
PROFILE_SHA_TAG_KEY = "medcot/profile_sha"


def profile_run_tags(profile: Profile = PROFILE) -> dict[str, str]:
    """{medcot/profile: file name, medcot/profile_sha: first 12 hex digits of the file's sha256}."""
    return {PROFILE_TAG_KEY: profile.path.name, PROFILE_SHA_TAG_KEY: hashlib.sha256(profile.path.read_bytes()).hexdigest()[:12]}


PROFILE_RUN_TAGS = profile_run_tags()


def profile_settings(asset: str, profile: Profile = PROFILE) -> settings.Settings:
    """The stage's settings as the profile sets them (defaults elsewhere)."""
    return STAGES[asset].settings(**profile.ops.get(asset, {}))


def config_class(asset: str, profile: Profile = PROFILE) -> type[dg.Config]:
    """The asset's dg.Config: its settings model, with the profile's values as defaults.

    It subclasses the settings model, so the asset hands its config to the Dagster-free core as is.
    """
    stage = STAGES[asset]
    # Only the default changes: each field keeps its type, description and limits (ge, le, ...).
    fields = {
        key: (stage.settings.model_fields[key].annotation, FieldInfo.merge_field_infos(stage.settings.model_fields[key], default=value))
        for key, value in profile.ops.get(asset, {}).items()
    }
    name = stage.settings.__name__.replace("Settings", "Config")
    return pydantic.create_model(name, __base__=(dg.Config, stage.settings), __module__=__name__, **fields)


RawDatasetConfig = config_class("raw_dataset")
BenchmarkQuestionsConfig = config_class("benchmark_questions")
FormattingConfig = config_class("formatted_splits")
TrainingConfig = config_class("lora_adapter")
MergeConfig = config_class("merged_model")
EvaluationConfig = config_class("rouge_report")
BenchmarkEvaluationConfig = config_class("benchmark_report")
ReleaseConfig = config_class("hub_release")


def stage_code_version(fn: Callable, profile: Profile = PROFILE) -> str:
    """The code the asset runs, its settings in the profile, and the settings of the resources it reads."""
    import inspect

    parameters = inspect.signature(fn).parameters
    used: dict[str, Any] = {"settings": profile_settings(fn.__name__, profile).model_dump()}
    for resource in SETTINGS_RESOURCES:
        if resource in parameters:
            used[resource] = RESOURCE_TYPES[resource](**profile.resource_values(resource)).model_dump()
    return code_versions.code_version(fn, used)


def ray_request(stage: Stage, profile: Profile = PROFILE) -> dict[str, float]:
    """What a step asks a Ray cluster for: a GPU stage its settings' `num_gpus` (lora_adapter) or one GPU, a CPU
    stage one CPU and no GPU.

    Read from the profile when the definitions load, as op tags are: a launchpad change of num_gpus does not
    change what Ray reserves. `num_gpus: 0` ("every visible GPU") asks Ray for one, since Ray grants counts, not
    whole nodes. GPU steps ask for no CPU so that CPU steps never keep them off a GPU node.
    """
    if not stage.gpu:
        return {"num_cpus": 1}
    return {"num_gpus": max(1, getattr(profile_settings(stage.asset, profile), "num_gpus", 1))}


def stage_asset(**asset_kwargs) -> Callable:
    """`dg.asset` with what the table and the profile say: group, GPU tag and pool, Ray request, code version."""

    def decorate(fn: Callable) -> dg.AssetsDefinition:
        stage = STAGES[fn.__name__]

        @functools.wraps(fn)  # Dagster reads the parameters and annotations through __wrapped__
        def tagged(context: dg.AssetExecutionContext, *args, **kwargs):
            from medcot_pipeline.defs.settings_changes import with_run_settings

            tag_run_with_profile(context)
            # The settings it ran with go into its metadata: what settings_match_profile compares with the profile.
            return with_run_settings(fn(context, *args, **kwargs), stage.asset, kwargs)

        return dg.asset(
            name=stage.asset,
            group_name=stage.group,
            code_version=stage_code_version(fn),
            op_tags={**(GPU_TAG if stage.gpu else {}), RAY_CONFIG_TAG: json.dumps(ray_request(stage), sort_keys=True)},
            pool=GPU_POOL if stage.gpu else None,
            **asset_kwargs,
        )(tagged)

    return decorate


def tag_run_with_profile(context: dg.AssetExecutionContext) -> None:
    """Add the profile tags to a run that was launched without them.

    The jobs carry them as run tags from the start; runs of Dagster's implicit asset job (the asset graph's
    Materialize buttons, `dagster asset materialize`) cannot be given default tags, so their first step adds them.
    """
    missing = {key: value for key, value in PROFILE_RUN_TAGS.items() if key not in context.run.tags}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


def current_code_version(context: dg.AssetExecutionContext) -> str | None:
    """The code version of the asset being materialized, recorded in its artifact's contract."""
    return context.assets_def.code_versions_by_key.get(context.asset_key)
