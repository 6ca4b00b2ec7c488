"""Watch the Hub dataset: a new revision of medical-o1 requests a full refresh run."""

import dagster as dg

from medcot_pipeline.defs.assets.data import HUB_DATASET
from medcot_pipeline.defs.jobs import medcot_pipeline_job
from medcot_pipeline.defs.resources import HubResource


@dg.sensor(
    name="hub_dataset_revision",
    job=medcot_pipeline_job,
    minimum_interval_seconds=6 * 3600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=f"Requests a run when {HUB_DATASET} gets a new commit on the Hub.",
)
def hub_dataset_revision(context: dg.SensorEvaluationContext, hub: HubResource):
    try:
        revision = hub.dataset_revision(HUB_DATASET)
    except Exception as err:  # noqa: BLE001 - any network failure means "cannot tell now", not a broken daemon
        return dg.SkipReason(f"cannot reach the Hub to read {HUB_DATASET}'s revision ({type(err).__name__}); will try again")
    if revision == context.cursor:
        return dg.SkipReason(f"{HUB_DATASET} is still at {revision[:12]}")
    first_look = context.cursor is None
    context.update_cursor(revision)
    if first_look:
        return dg.SkipReason(f"recorded {HUB_DATASET} at {revision[:12]}; later commits will trigger a refresh")
    return dg.RunRequest(
        run_key=revision,
        run_config={"ops": {"raw_dataset": {"config": {"source": "hub", "hub_revision": revision}}}},
        tags={"medcot/dataset_revision": revision},
    )
