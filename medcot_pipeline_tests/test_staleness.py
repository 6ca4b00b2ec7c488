"""Only what changed reruns: code versions and data versions on a real sqlite instance."""

import dagster as dg
import pytest

from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, materialize, materialized_in, stale_assets, tiny_profile, write_profile


@pytest.fixture(scope="module")
def materialized(tiny_llama_dir, tmp_path_factory):
    """One full materialization of the graph, on a tiny Llama, in a temp DAGSTER_HOME."""
    home = tmp_path_factory.mktemp("dagster_home")
    instance = dg.DagsterInstance.local_temp(str(home))
    profile = tiny_profile(tiny_llama_dir, home / "artifacts")
    defs = load_defs(write_profile(home / "base.yaml", profile))
    result = materialize(defs, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert materialized_in(result) == set(ASSETS)
    assert stale_assets(defs, instance) == set()
    return instance, profile, home


def test_changing_evaluation_config_makes_only_report_and_release_stale(materialized, tiny_llama_dir):
    instance, profile, home = materialized
    changed = tiny_profile(tiny_llama_dir, home / "artifacts", rouge_report={"max_new_tokens": 6})
    defs = load_defs(write_profile(home / "eval_changed.yaml", changed))

    stale = stale_assets(defs, instance)
    assert stale == {"rouge_report", "hub_release"}

    result = materialize(defs, instance, selection=sorted(stale))
    assert result.success
    assert materialized_in(result) == {"rouge_report", "hub_release"}
    assert stale_assets(defs, instance) == set()


def test_changing_training_config_makes_adapter_and_everything_after_stale(materialized, tiny_llama_dir):
    instance, profile, home = materialized
    changed = tiny_profile(tiny_llama_dir, home / "artifacts", lora_adapter={"learning_rate": 5e-4})
    defs = load_defs(write_profile(home / "train_changed.yaml", changed))
    assert stale_assets(defs, instance) == {"lora_adapter", "merged_model", "rouge_report", "hub_release"}


def test_rematerializing_unchanged_data_leaves_downstream_fresh(materialized):
    instance, profile, home = materialized
    defs = load_defs(home / "base.yaml")
    # Earlier tests may have left the report at another config; start from a fully fresh graph.
    catch_up = stale_assets(defs, instance)
    if catch_up:
        assert materialize(defs, instance, selection=sorted(catch_up)).success
    assert stale_assets(defs, instance) == set()

    result = materialize(defs, instance, selection=["raw_dataset", "benchmark_questions", "formatted_splits"])
    assert result.success
    assert materialized_in(result) == {"raw_dataset", "benchmark_questions", "formatted_splits"}
    assert stale_assets(defs, instance) == set()
