"""What changed since an asset was materialized, in words: each stage records the settings it ran with, and the
settings_match_profile check (run in the run, and by the settings_changes sensor when the profile changes) names
every setting that differs from the active profile, as the UI's Unsynced badge does not."""

import dagster as dg

from medcot_pipeline.defs.settings_changes import CHECK_NAME, changed_settings
from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, stale_assets, tiny_profile, write_profile


def test_changes_are_named_setting_by_setting():
    before = {"rouge_report": {"max_new_tokens": 120, "attention": "grouped_sdpa", "num_questions": None}}
    now = {"rouge_report": {"max_new_tokens": 100, "attention": "grouped_sdpa", "num_questions": 6}}
    assert changed_settings(before, now) == ["rouge_report.max_new_tokens 120 -> 100", "rouge_report.num_questions unset -> 6"]
    assert changed_settings(before, before) == []


def test_a_changed_profile_names_what_made_the_assets_unsynced(tiny_llama_dir, tmp_path):
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    first = write_profile(tmp_path / "first.yaml", tiny_profile(tiny_llama_dir, tmp_path / "artifacts"))
    defs = load_defs(first)
    result = materialize(defs, instance, selection=["raw_dataset", "benchmark_questions", "formatted_splits"])
    assert result.success
    # In the run: the settings it ran with are the profile's, and each materialization records them.
    checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME}
    assert checks["raw_dataset"].passed and checks["formatted_splits"].passed
    recorded = instance.get_latest_materialization_event(dg.AssetKey("formatted_splits")).asset_materialization.metadata["settings"].value
    assert recorded["formatted_splits"]["validation_size"] == 3 and recorded["base_model"]["max_seq_length"] == 384

    # The profile changes a setting of each: Dagster marks both Unsynced; the check says why.
    changed = tiny_profile(tiny_llama_dir, tmp_path / "artifacts", raw_dataset={"max_records": 12})
    changed["resources"]["base_model"]["config"]["max_seq_length"] = 256
    defs = load_defs(write_profile(tmp_path / "second.yaml", changed))
    assert {"raw_dataset", "formatted_splits"} <= stale_assets(defs, instance)
    sensor = defs.get_sensor_def("settings_changes")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        tick = sensor(context)
    said = {event.asset_key.to_user_string(): event for event in tick.asset_events}
    # The first tick says where each materialized asset stands; the others were never materialized: nothing to compare.
    assert set(said) == {"raw_dataset", "benchmark_questions", "formatted_splits"} and said["benchmark_questions"].passed
    assert not said["raw_dataset"].passed and said["raw_dataset"].severity == dg.AssetCheckSeverity.WARN
    assert said["raw_dataset"].description == "1 setting(s) differ from second.yaml: raw_dataset.max_records 16 -> 12"
    assert said["formatted_splits"].description == "1 setting(s) differ from second.yaml: base_model.max_seq_length 384 -> 256"
    assert "`base_model.max_seq_length 384 -> 256`" in said["formatted_splits"].metadata["changed"].value

    # Reported once: the next tick, with the cursor, has nothing new to say.
    with dg.build_sensor_context(instance=instance, definitions=defs, cursor=tick.cursor) as context:
        assert isinstance(sensor(context), dg.SkipReason)
    # As the daemon reports it, the asset's check shows the change.
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    key = dg.AssetCheckKey(dg.AssetKey("raw_dataset"), CHECK_NAME)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert latest.event.dagster_event.event_specific_data.passed is False
