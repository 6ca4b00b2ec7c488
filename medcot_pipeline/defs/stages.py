"""The stages as Dagster assets: each stage's config class, and what the active profile makes of the stage table.

The stages themselves (settings model, group, GPU) are registered once, in `settings.StageSettings`. The
active profile (MEDCOT_PROFILE, default profiles/demo.yaml) is read once, when the code location loads: its
values become the defaults of each asset's config (what the UI's Materialize buttons and the launchpad run),
and each asset's code version hashes the code it computes with and its own settings, so changing only the
evaluation settings marks only rouge_report stale, and Dagster reruns exactly that.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

import dagster as dg

from medcot_pipeline import settings
from medcot_pipeline.defs import code_versions
from medcot_pipeline.defs.resources import RESOURCE_TYPES
from medcot_pipeline.defs.run_config_checks import command_line_config_files
from medcot_pipeline.profiles import EXTENDS, Profile, ProfileError, load_active_profile, load_profile
from medcot_pipeline.settings import STAGES, Stage

# Steps that hold GPUs (one, or every GPU for data-parallel training): one at a time, within a run by the
# executor's tag limit (jobs.py) and across runs by the pool, one slot per step (dagster_home/dagster.yaml).
GPU_TAG_KEY = "medcot/gpu"
GPU_TAG = {GPU_TAG_KEY: "true"}
GPU_POOL = "gpu"
# dagster-ray's ray_executor reads each step's request to Ray from this op tag (JSON; used only with MEDCOT_EXECUTOR=ray).
RAY_CONFIG_TAG = "dagster-ray/config"
# Resources that change what a stage computes, by their settings and by their code: both are part of the code
# version of each asset that takes them. The others say where things go, not what they are.
COMPUTING_RESOURCES = ("base_model",)
PLUMBING_RESOURCES = {
    "artifacts": "where versions are written and read, not what they hold",
    "io_manager": "hands each asset the location of its inputs",
    "hub": "where a release is pushed; what is pushed is staged by release/ code",
    "wandb": "where training metrics are mirrored",
    "pipes_subprocess_client": "starts the training process; the code it runs (training/run.py) is imported by lora_adapter",
}


# The config classes: each stage's settings model as a `dg.Config`, so an asset hands its config to the
# Dagster-free core as is. Their defaults are the settings model's; `stage_asset` gives Dagster the profile's.
class RawDatasetConfig(dg.Config, settings.RawDatasetSettings):
    """Where the medical-o1 records come from."""


class BenchmarkQuestionsConfig(dg.Config, settings.BenchmarkQuestionsSettings):
    """Which benchmarks' test questions to load, and at which revisions."""


class FormattingConfig(dg.Config, settings.FormattingSettings):
    """How records are cleaned, length-checked and split."""


class TrainingConfig(dg.Config, settings.TrainingSettings):
    """LoRA fine-tuning: layout, schedule, evaluation and grading."""


class MergeConfig(dg.Config, settings.MergeSettings):
    """How the adapter is merged into the base weights."""


class EvaluationConfig(dg.Config, settings.EvaluationSettings):
    """How answers are generated and graded, and the release gate's limits."""


class BenchmarkEvaluationConfig(dg.Config, settings.BenchmarkEvaluationSettings):
    """How the benchmark questions are answered and scored."""


class ReleaseConfig(dg.Config, settings.ReleaseSettings):
    """Where the release goes on the Hub."""


CONFIG_CLASSES: dict[str, type[dg.Config]] = {
    "raw_dataset": RawDatasetConfig,
    "benchmark_questions": BenchmarkQuestionsConfig,
    "formatted_splits": FormattingConfig,
    "lora_adapter": TrainingConfig,
    "merged_model": MergeConfig,
    "rouge_report": EvaluationConfig,
    "benchmark_report": BenchmarkEvaluationConfig,
    "hub_release": ReleaseConfig,
}
for _asset, _stage in STAGES.items():
    if _asset not in CONFIG_CLASSES or not issubclass(CONFIG_CLASSES[_asset], _stage.settings):
        raise TypeError(f"stage {_asset}: declare `class ...Config(dg.Config, {_stage.settings.__name__})` in CONFIG_CLASSES")

PROFILE = load_active_profile()


def load_run_config_file(path) -> Profile:
    """A `-c` file, checked as a profile is; `extends` is a profile's key that Dagster's run config does not have."""
    profile = load_profile(path)
    if len(profile.files) > 1:
        raise ProfileError(
            f"{path}: `{EXTENDS}` is for MEDCOT_PROFILE files; `-c` takes plain run config. Set MEDCOT_PROFILE={path}, "
            f"or pass the resolved file: python -m medcot_pipeline.profiles {path} > run.yaml"
        )
    return profile


# `dagster asset materialize -c FILE`: FILE is run config this code location would never see before the run
# exists; checked here as the profile is, it fails at launch naming the file and key, before anything is stored.
for _run_config_file in command_line_config_files():
    load_run_config_file(_run_config_file)

# Every run says which profile it ran and which version of its files, so the runs list tells runs apart.
PROFILE_TAG_KEY = "medcot/profile"
PROFILE_SHA_TAG_KEY = "medcot/profile_sha"


def profile_run_tags(profile: Profile) -> dict[str, str]:
    """{medcot/profile: file name, medcot/profile_sha: first 12 hex digits of the sha256 of its files}."""
    return {PROFILE_TAG_KEY: profile.path.name, PROFILE_SHA_TAG_KEY: profile.sha256()[:12]}


PROFILE_RUN_TAGS = profile_run_tags(PROFILE)


def config_schema(asset: str, profile: Profile) -> dg.Field:
    """The asset's config schema: its config class's fields (type, description), the profile's values as defaults.

    The defaults are what the UI's Materialize buttons run and what the launchpad scaffolds; the limits (ge, le,
    ...) are the settings model's, checked when the step builds its config and, before that, by the executor
    (run_config_checks.py).
    """
    config_class = CONFIG_CLASSES[asset]
    values = profile.stage(asset).model_dump(mode="json")
    fields = {
        name: dg.Field(field.config_type, default_value=values[name], is_required=False, description=field.description)
        for name, field in config_class.to_fields_dict().items()
    }
    return dg.Field(dg.Shape(fields), description=config_class.__doc__)


def version_inputs(fn: Callable, profile: Profile) -> code_versions.VersionInputs:
    """What the asset's code version covers: its function, the code and settings of the resources it takes that
    change what it computes (COMPUTING_RESOURCES), and its own settings in the profile."""
    parameters = inspect.signature(fn).parameters
    used: dict[str, Any] = {"settings": profile.stage(fn.__name__).model_dump()}
    resources = []
    for name in COMPUTING_RESOURCES:
        if name in parameters:
            used[name] = getattr(profile.resources, name).model_dump()
            resources.append((RESOURCE_TYPES[name].__module__, RESOURCE_TYPES[name].__name__))
    return code_versions.VersionInputs(function=(fn.__module__, fn.__name__), resources=tuple(resources), settings=used)


def ray_request(stage: Stage, profile: Profile) -> dict[str, float]:
    """What a step asks a Ray cluster for: a GPU stage its settings' `num_gpus` (lora_adapter) or one GPU, a CPU
    stage one CPU and no GPU.

    Read from the profile when the definitions load, as op tags are: a launchpad change of num_gpus does not
    change what Ray reserves. `num_gpus: 0` ("every visible GPU") asks Ray for one, since Ray grants counts, not
    whole nodes. GPU steps ask for no CPU so that CPU steps never keep them off a GPU node.
    """
    if not stage.gpu:
        return {"num_cpus": 1}
    return {"num_gpus": max(1, getattr(profile.stage(stage.asset), "num_gpus", 1))}


def stage_asset(**asset_kwargs) -> Callable:
    """`dg.asset` with what the table and the active profile say: group, GPU tag and pool, Ray request, config
    defaults, code version.

    The function takes `config: <its config class>`; Dagster is given the schema with the profile's defaults
    (`config_schema`) and the function gets that config class built from the step's resolved config.
    """

    def decorate(fn: Callable) -> dg.AssetsDefinition:
        stage = STAGES[fn.__name__]
        config_class = CONFIG_CLASSES[stage.asset]
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run_stage(context: dg.AssetExecutionContext, **kwargs):
            from medcot_pipeline.defs.settings_changes import with_run_settings

            tag_run_with_profile(context)
            config = config_class(**context.op_config)
            # The settings it ran with go into its metadata: what settings_match_profile compares with the profile.
            return with_run_settings(fn(context, config=config, **kwargs), stage.asset, {**kwargs, "config": config})

        # Dagster reads inputs and resources from this signature; the config comes from `config_schema` instead.
        run_stage.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[parameter for name, parameter in signature.parameters.items() if name != "config"]
        )
        return dg.asset(
            name=stage.asset,
            group_name=stage.group,
            config_schema=config_schema(stage.asset, PROFILE),
            code_version=code_versions.code_version(version_inputs(fn, PROFILE)),
            op_tags={**(GPU_TAG if stage.gpu else {}), RAY_CONFIG_TAG: json.dumps(ray_request(stage, PROFILE), sort_keys=True)},
            pool=GPU_POOL if stage.gpu else None,
            **asset_kwargs,
        )(run_stage)

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
