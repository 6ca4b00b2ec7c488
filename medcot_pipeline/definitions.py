"""The code location: assets, checks, jobs, schedule and sensor, configured by the active profile."""

import dagster as dg

from medcot_pipeline.asset_checks import build_asset_checks
from medcot_pipeline.assets.data import build_data_assets
from medcot_pipeline.assets.evaluation import build_evaluation_assets
from medcot_pipeline.assets.model import build_model_assets
from medcot_pipeline.assets.release import build_release_assets
from medcot_pipeline.jobs import gpu_aware_executor, medcot_pipeline_job, retraining_job
from medcot_pipeline.profiles import Profile, active_profile_path, load_profile
from medcot_pipeline.resources import ArtifactStore, BaseModelResource, HubResource, WandbResource, env_secret
from medcot_pipeline.schedules import weekly_retraining
from medcot_pipeline.sensors import build_dataset_revision_sensor

RESOURCE_TYPES = {"artifacts": ArtifactStore, "base_model": BaseModelResource, "hub": HubResource, "wandb": WandbResource}


def build_resources(profile: Profile) -> dict:
    return {
        "artifacts": ArtifactStore(**profile.resource_values("artifacts")),
        "base_model": BaseModelResource(**profile.resource_values("base_model")),
        # Secrets only ever come from the environment; unset means "stage, don't push" / "W&B offline".
        "hub": HubResource(**profile.resource_values("hub"), token=env_secret("HF_TOKEN")),
        "wandb": WandbResource(**profile.resource_values("wandb"), api_key=env_secret("WANDB_API_KEY")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def build_definitions(profile: Profile) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *build_data_assets(profile),
            *build_model_assets(profile),
            *build_evaluation_assets(profile),
            *build_release_assets(profile),
        ],
        asset_checks=build_asset_checks(profile),
        jobs=[medcot_pipeline_job, retraining_job],
        schedules=[weekly_retraining],
        sensors=[build_dataset_revision_sensor(profile.asset_config("raw_dataset").hub_dataset)],
        resources=build_resources(profile),
        executor=gpu_aware_executor(),
    )


defs = build_definitions(load_profile(active_profile_path(), RESOURCE_TYPES))
