"""What changed since an asset was materialized: every stage records the settings it ran with in its
materialization's metadata (`settings`), and the `settings_match_profile` check compares them with the active
profile's, naming each change: `rouge_report.max_new_tokens 120 -> 100`.

A profile's settings are part of each asset's code version (stages.py), so changing one makes Dagster show the
asset Unsynced, but the UI only says "code version changed". The check says which setting, on the asset's page
and as a warning badge on the graph. It runs in every run that materializes the asset (a launchpad override shows
as a difference from the profile there), and the `settings_changes` sensor (sensors.py) evaluates it again when
the code location loads a changed profile, when no run has happened yet.
"""

import json
from collections.abc import Iterator
from typing import Any

import dagster as dg

from medcot_pipeline.defs.stages import COMPUTING_RESOURCES, PROFILE, STAGES

SETTINGS_METADATA_KEY = "settings"
CHECK_NAME = "settings_match_profile"


def run_settings(asset: str, kwargs: dict[str, Any]) -> dict[str, dict]:
    """What a step ran with: the asset's config and the settings of the resources that shape what it computes."""
    values = {asset: kwargs["config"].model_dump(mode="json")} if "config" in kwargs else {}
    for resource in COMPUTING_RESOURCES:
        if resource in kwargs:
            values[resource] = kwargs[resource].model_dump(mode="json")
    return values


def with_run_settings(output: Any, asset: str, kwargs: dict[str, Any]) -> Any:
    """The asset's output with the settings it ran with in its metadata (stages.stage_asset calls this)."""
    if not isinstance(output, dg.Output):
        return output
    return output.with_metadata({**output.metadata, SETTINGS_METADATA_KEY: dg.MetadataValue.json(run_settings(asset, kwargs))})


def profile_values(asset: str, resource_keys: set[str]) -> dict[str, dict]:
    """The same settings as the active profile sets them: what a materialization now would run with."""
    values = {asset: PROFILE.stage(asset).model_dump(mode="json")}
    for resource in COMPUTING_RESOURCES:
        if resource in resource_keys:
            values[resource] = getattr(PROFILE.resources, resource).model_dump(mode="json")
    return values


def _text(value: Any) -> str:
    if value is None:
        return "unset"
    return value if isinstance(value, str) else json.dumps(value)


def changed_settings(before: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """`group.key before -> now` for every setting that differs (a group is the asset or a resource)."""
    changes = []
    for group in sorted(set(before) | set(now)):
        old, new = before.get(group, {}), now.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{group}.{key} {_text(old.get(key))} -> {_text(new.get(key))}")
    return changes


def recorded_settings(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict | None:
    """The settings the latest materialization recorded; None when there is none, or it predates the record."""
    event = instance.get_latest_materialization_event(asset_key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(SETTINGS_METADATA_KEY)
    return value.value if isinstance(value, dg.JsonMetadataValue) and isinstance(value.value, dict) else None


def judge(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict | None:
    """The check's verdict for one asset (passed, description, metadata), or None when there is nothing to compare.
    The resources compared are those the materialization recorded (the ones whose settings it read)."""
    recorded = recorded_settings(instance, asset_key)
    if recorded is None:
        return None
    asset = asset_key.to_user_string()
    changes = changed_settings(recorded, profile_values(asset, set(recorded) - {asset}))
    if not changes:
        return {
            "passed": True,
            "description": f"materialized with the settings of {PROFILE.path.name}",
            "metadata": {"profile": PROFILE.path.name},
        }
    return {
        "passed": False,
        "description": f"{len(changes)} setting(s) differ from {PROFILE.path.name}: {'; '.join(changes)}",
        "metadata": {
            "changed": dg.MetadataValue.md("\n".join(f"- `{change}`" for change in changes)),
            "profile": PROFILE.path.name,
            "reading": "materialized -> the profile now",
        },
    }


@dg.multi_asset_check(
    name=CHECK_NAME,
    specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=asset,
            description="The settings of the latest materialization are the active profile's; when they are not (the "
            "asset shows Unsynced), the check names each setting that changed: `asset.setting before -> now`.",
        )
        for asset in STAGES
    ],
    can_subset=True,
)
def settings_match_profile(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
    for check_key in context.selected_asset_check_keys:
        verdict = judge(context.instance, check_key.asset_key)
        if verdict is None:  # materialized by a medcot that did not record its settings: nothing to compare
            verdict = {"passed": True, "description": "the latest materialization recorded no settings", "metadata": {}}
        yield dg.AssetCheckResult(asset_key=check_key.asset_key, check_name=CHECK_NAME, severity=dg.AssetCheckSeverity.WARN, **verdict)
