"""Only what changed reruns: code versions and data versions on a real sqlite instance."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import (
    ASSETS,
    load_defs,
    materialize,
    materialized_in,
    stale_assets,
    tiny_profile,
    write_profile,
)


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
    assert stale_assets(defs, instance) == {"lora_adapter", "merged_model", "rouge_report", "benchmark_report", "hub_release"}


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


# ---------------------------------------------------------------- a code change, through Dagster


def probe(package: Path, home: Path, profile: Path, materialize: str = "") -> dict:
    """staleness_probe run on an edited copy of the package (`package`), against this module's instance."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package.parent), str(REPO_ROOT)])}
    command = [sys.executable, "-m", "medcot_pipeline_tests.staleness_probe", "--home", str(home), "--profile", str(profile)]
    # Run from the copy's directory: `python -m` puts the working directory first on the path.
    done = subprocess.run(command + (["--materialize", materialize] if materialize else []), cwd=package.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert Path(out["package"]).is_relative_to(package), f"the probe imported {out['package']}, not the copy"
    return out


def fresh(home: Path) -> None:
    """Bring the graph up to date under the unedited code and base.yaml (earlier tests change the report's config)."""
    instance = dg.DagsterInstance.local_temp(str(home))
    defs = load_defs(home / "base.yaml")
    catch_up = stale_assets(defs, instance)
    if catch_up:
        assert materialize(defs, instance, selection=sorted(catch_up)).success
    assert stale_assets(defs, instance) == set()


def package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "edited" / "medcot_pipeline"
    shutil.copytree(REPO_ROOT / "medcot_pipeline", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def change_cleaning(package: Path, body: str) -> None:
    """Cleaning logic replaced: `clean_records` becomes `body` run over the original's result (`cleaned`, `counts`),
    whatever arguments the original takes."""
    cleaning = package / "data" / "cleaning.py"
    cleaning.write_text(
        cleaning.read_text()
        + "\n\nclean_records_before_the_test = clean_records\n\n\ndef clean_records(*args, **kwargs):\n"
        + "    cleaned, counts = clean_records_before_the_test(*args, **kwargs)\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + "    return cleaned, counts\n"
    )


def test_a_cleaning_change_that_keeps_the_data_reruns_formatted_splits_alone(materialized, tmp_path):
    """New cleaning logic: formatted_splits alone is stale (its code version); rematerialized with the same content
    (the sample has no NUL characters), its data version is unchanged and nothing below it turns stale."""
    instance, profile, home = materialized
    fresh(home)
    package = package_copy(tmp_path)
    change_cleaning(package, 'cleaned["Response"] = cleaned["Response"].str.replace("\\x00", "", regex=False)')

    out = probe(package, home, home / "base.yaml", materialize="formatted_splits")
    assert out["before"]["stale"] == {"formatted_splits": ["CODE"]}
    assert out["success"], out["errors"]
    assert out["materialized"] == ["formatted_splits"]
    assert out["after"]["stale"] == {}
    assert out["after"]["data_versions"] == out["before"]["data_versions"]


def test_a_cleaning_change_that_changes_the_data_makes_the_adapter_stale(materialized, tmp_path):
    """New cleaning logic that changes the records: formatted_splits alone is stale, and once it is rematerialized with
    a new data version, exactly the assets that read it turn stale because of it (lora_adapter: the train split,
    rouge_report: the validation split, hub_release: the split summary); the rest follows as those rematerialize."""
    instance, profile, home = materialized
    fresh(home)
    package = package_copy(tmp_path)
    change_cleaning(package, 'cleaned["Response"] = cleaned["Response"] + " Checked."')

    out = probe(package, home, home / "base.yaml", materialize="formatted_splits")
    assert out["success"], out["errors"]
    assert out["before"]["stale"] == {"formatted_splits": ["CODE"]}
    assert out["after"]["data_versions"]["formatted_splits"] != out["before"]["data_versions"]["formatted_splits"]
    readers = load_defs(home / "base.yaml").resolve_asset_graph().get(dg.AssetKey("formatted_splits")).child_keys
    assert "lora_adapter" in {key.to_user_string() for key in readers}
    assert out["after"]["stale"] == {key.to_user_string(): ["DATA"] for key in readers}
