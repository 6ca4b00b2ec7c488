"""Watch the Hub dataset (a new revision of medical-o1 requests a full refresh run) and the profile (a setting that
changed since an asset's materialization is named on its page)."""

import json

import dagster as dg

from medcot_pipeline.defs.assets.data import HUB_DATASET
from medcot_pipeline.defs.jobs import medcot_pipeline_job
from medcot_pipeline.defs.resources import HubResource
from medcot_pipeline.defs.settings_changes import CHECK_NAME, judge
from medcot_pipeline.defs.stages import PROFILE, STAGES


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


@dg.sensor(
    name="settings_changes",
    # A minute: soon after a profile change, without a code-server call every 30 s during a run on busy cores.
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Names the settings that changed since each asset's materialization (its {CHECK_NAME} check), "
    "when the code location loads a changed profile: what makes an asset Unsynced, in words.",
)
def settings_changes(context: dg.SensorEvaluationContext):
    # The cursor holds what was last reported per asset, so each change is reported once, not at every tick.
    reported = json.loads(context.cursor) if context.cursor else {}
    events = []
    for asset in STAGES:
        verdict = judge(context.instance, dg.AssetKey(asset))
        if verdict is None:
            continue
        said = f"{PROFILE.path}:{verdict['description']}"
        if reported.get(asset) == said:
            continue
        reported[asset] = said
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(asset),
                check_name=CHECK_NAME,
                passed=verdict["passed"],
                severity=dg.AssetCheckSeverity.WARN,
                description=verdict["description"],
                metadata=verdict["metadata"],
            )
        )
    if not events:
        return dg.SkipReason("no asset's settings changed since they were last reported")
    return dg.SensorResult(asset_events=events, cursor=json.dumps(reported, sort_keys=True))
