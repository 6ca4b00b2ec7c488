"""The Hub dataset as an observed source: its commit is the data version, and a new commit marks raw_dataset stale."""

import datasets
import dagster as dg
import pytest
from dagster._core.definitions.observe import observe  # not exported at the top level in Dagster 1.13

from medcot_pipeline.defs.assets.data import medical_o1_hub_dataset
from medcot_pipeline.data.sources import load_records
from medcot_pipeline.settings import RawDatasetSettings
from medcot_pipeline.defs.resources import HubResource
from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, stale_assets, write_profile

HUB_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"


@pytest.fixture()
def hub_commit(monkeypatch):
    """The commit the fake Hub reports; tests move it forward."""
    commit = {"sha": "a" * 40}
    monkeypatch.setattr(HubResource, "dataset_revision", lambda self, repo_id: commit["sha"])
    sample, _ = load_records(RawDatasetSettings(source="sample", max_records=12))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_pandas(sample))
    return commit


def test_observation_records_the_commit_as_data_version(hub_commit):
    instance = dg.DagsterInstance.ephemeral()
    result = observe([medical_o1_hub_dataset], resources={"hub": HubResource()}, instance=instance)
    assert result.success
    [observation] = result.asset_observations_for_node("medical_o1_hub_dataset")
    assert observation.tags["dagster/data_version"] == "a" * 40
    assert observation.metadata["dataset"].value == HUB_DATASET


def test_observation_without_network_fails_naming_the_dataset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = observe([medical_o1_hub_dataset], resources={"hub": HubResource()}, raise_on_error=False)
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert f"cannot read the current commit of {HUB_DATASET} from the Hub" in failure.step_failure_data.error.message


def test_a_new_commit_upstream_marks_raw_dataset_stale(hub_commit, tmp_path):
    profile = {
        "ops": {"raw_dataset": {"config": {"source": "hub", "max_records": 12}}},
        "resources": {"artifacts": {"config": {"root": str(tmp_path / "artifacts")}}},
    }
    defs = load_defs(write_profile(tmp_path / "hub.yaml", profile))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.AssetKey("medical_o1_hub_dataset") in defs.resolve_assets_def("raw_dataset").dependency_keys
    source = medical_o1_hub_dataset  # the same key, unbound, as observing from the UI does

    assert observe([source], resources={"hub": HubResource()}, instance=instance).success
    assert materialize(defs, instance, selection=["raw_dataset"]).success
    assert "raw_dataset" not in stale_assets(defs, instance)

    hub_commit["sha"] = "b" * 40
    assert observe([source], resources={"hub": HubResource()}, instance=instance).success
    assert "raw_dataset" in stale_assets(defs, instance)


def test_sample_and_file_profiles_do_not_depend_on_the_hub(tmp_path):
    defs = load_defs(write_profile(tmp_path / "sample.yaml", {"ops": {"raw_dataset": {"config": {"source": "sample"}}}}))
    assert dg.AssetKey("medical_o1_hub_dataset") not in defs.resolve_assets_def("raw_dataset").dependency_keys
