"""The code location: every asset, check, job, schedule and sensor under `defs/`, with the active profile's resources."""

import warnings

import dagster as dg

# Dagster marks features by maturity and warns on every use. These are the ones this project uses on purpose
# (the Hub dataset as an observable source, data versions from content, Pipes for the training process);
# anything else still warns.
for _category, _feature in (
    (dg.BetaWarning, "observable_source_asset"),
    (dg.BetaWarning, "data_version"),
    (dg.PreviewWarning, "PipesMessageReader.expected_writer_count"),
):
    warnings.filterwarnings("ignore", message=f".*`{_feature}`", category=_category)

from medcot_pipeline.defs.assets import data, evaluation, model, release  # noqa: E402 - after the filters above
from medcot_pipeline.defs.checks import ASSET_CHECKS  # noqa: E402
from medcot_pipeline.defs.jobs import medcot_pipeline_job, pipeline_executor, retraining_job  # noqa: E402
from medcot_pipeline.defs.resources import build_resources  # noqa: E402
from medcot_pipeline.defs.schedules import weekly_retraining  # noqa: E402
from medcot_pipeline.defs.sensors import hub_dataset_revision, settings_changes  # noqa: E402
from medcot_pipeline.defs.settings_changes import settings_match_profile  # noqa: E402
from medcot_pipeline.defs.stages import PROFILE  # noqa: E402

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, model, evaluation, release]),
    asset_checks=[*ASSET_CHECKS, settings_match_profile],
    jobs=[medcot_pipeline_job, retraining_job],
    schedules=[weekly_retraining],
    sensors=[hub_dataset_revision, settings_changes],
    resources=build_resources(PROFILE.resources),
    executor=pipeline_executor(),
)
