"""The code location: every asset, check, job, schedule and sensor under `defs/`, with the active profile's resources."""

import dagster as dg

from medcot_pipeline.defs.assets import data, evaluation, model, release
from medcot_pipeline.defs.checks import ASSET_CHECKS
from medcot_pipeline.defs.jobs import gpu_aware_executor, medcot_pipeline_job, retraining_job
from medcot_pipeline.defs.resources import build_resources
from medcot_pipeline.defs.schedules import weekly_retraining
from medcot_pipeline.defs.sensors import hub_dataset_revision
from medcot_pipeline.defs.stages import PROFILE

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, model, evaluation, release]),
    asset_checks=ASSET_CHECKS,
    jobs=[medcot_pipeline_job, retraining_job],
    schedules=[weekly_retraining],
    sensors=[hub_dataset_revision],
    resources=build_resources(PROFILE.resources),
    executor=gpu_aware_executor(),
)
