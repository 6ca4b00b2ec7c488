"""Watch the Hub dataset: a new revision of medical-o1 requests a full refresh run."""

import dagster as dg

from medcot_pipeline.jobs import medcot_pipeline_job
from medcot_pipeline.resources import HubResource


def build_dataset_revision_sensor(dataset_id: str) -> dg.SensorDefinition:
    @dg.sensor(
        name="hub_dataset_revision",
        job=medcot_pipeline_job,
        minimum_interval_seconds=6 * 3600,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Requests a run when {dataset_id} gets a new commit on the Hub.",
    )
    def hub_dataset_revision(context: dg.SensorEvaluationContext, hub: HubResource):
        try:
            revision = hub.dataset_revision(dataset_id)
        except Exception as err:  # noqa: BLE001 - any network failure means "cannot tell now", not a broken daemon
            return dg.SkipReason(f"cannot reach the Hub to read {dataset_id}'s revision ({type(err).__name__}); will try again")
        if revision == context.cursor:
            return dg.SkipReason(f"{dataset_id} is still at {revision[:12]}")
        first_look = context.cursor is None
        context.update_cursor(revision)
        if first_look:
            return dg.SkipReason(f"recorded {dataset_id} at {revision[:12]}; later commits will trigger a refresh")
        return dg.RunRequest(
            run_key=revision,
            run_config={"ops": {"raw_dataset": {"config": {"source": "hub", "hub_revision": revision}}}},
            tags={"medcot/dataset_revision": revision},
        )

    return hub_dataset_revision
