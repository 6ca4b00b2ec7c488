"""Artifacts damaged after they were written (a file cut short, deleted, or with other bytes): every reader checks
what it reads against what the writer recorded, and fails at once in one line naming the file and the asset to
materialize again; a damaged model is never staged or pushed."""

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from medcot_pipeline.artifact_store import MANIFEST_FILE, ArtifactManifest
from medcot_pipeline.cli import main
from medcot_pipeline.contracts import MergeRecord
from medcot_pipeline_tests.pipeline_harness import ASSETS, load_defs, materialize, materialized_in, step_errors, tiny_profile, write_profile
from medcot_pipeline_tests.test_faults import step_retries


@pytest.fixture(scope="module")
def pipeline(tiny_llama_dir, tmp_path_factory):
    """The six assets, materialized once on a tiny Llama; each test damages a file and puts it back."""
    home = tmp_path_factory.mktemp("damaged_home")
    artifacts = home / "artifacts"
    defs = load_defs(write_profile(home / "tiny.yaml", tiny_profile(tiny_llama_dir, artifacts)))
    instance = dg.DagsterInstance.local_temp(str(home))
    result = materialize(defs, instance)
    assert result.success, step_errors(instance, result.run_id)
    run_id = result.run_id
    return {
        "defs": defs, "instance": instance, "artifacts": artifacts, "run_id": run_id,
        "model": artifacts / "merged_model" / run_id / "model",
        "adapter": artifacts / "lora_adapter" / run_id / "adapter",
    }


@pytest.fixture
def damage():
    """damage(path, how): 'truncate' to half, 'delete', or 'flip' one byte (same size); undone after the test."""
    saved: list[tuple[Path, bytes]] = []

    def apply(path: Path, how: str) -> None:
        data = path.read_bytes()
        saved.append((path, data))
        if how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif how == "delete":
            path.unlink()
        else:
            middle = len(data) // 2
            path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])

    yield apply
    for path, data in saved:
        path.write_bytes(data)


def only_failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """The one step failure's message, with no traceback of another error behind it."""
    failures = [e for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    assert len(failures) == 1, step_errors(instance, run_id)
    error = failures[0].dagster_event.step_failure_data.error
    return error.message.strip().removeprefix("dagster._core.definitions.events.Failure: ")


def versions(artifacts: Path, asset: str) -> list[str]:
    folder = artifacts / asset
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_every_version_records_its_files_sizes_and_hashes(pipeline):
    """Each of the six versions carries _MANIFEST.json, and it matches the files beside it."""
    from medcot_pipeline.artifact_io import file_sha256

    for asset in ASSETS:
        version = pipeline["artifacts"] / asset / pipeline["run_id"]
        manifest = ArtifactManifest.model_validate_json((version / MANIFEST_FILE).read_text())
        on_disk = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()} - {MANIFEST_FILE}
        assert set(manifest.files) == on_disk, asset
        for relative, entry in manifest.files.items():
            assert (entry.size, entry.sha256) == ((version / relative).stat().st_size, file_sha256(version / relative))


def test_a_truncated_merged_model_is_not_released(pipeline, damage):
    """The issue's case: model.safetensors cut short; hub_release alone fails at once, naming the file and merged_model,
    and stages nothing (it would have pushed it with a token)."""
    weights = pipeline["model"] / "model.safetensors"
    size = weights.stat().st_size
    damage(weights, "truncate")
    before = versions(pipeline["artifacts"], "hub_release")
    result = materialize(pipeline["defs"], pipeline["instance"], ["hub_release"])

    assert not result.success and step_retries(pipeline["instance"], result.run_id) == 0
    assert only_failure(pipeline["instance"], result.run_id) == (
        f"merged_model's artifact cannot be read: {weights} is {size // 2:,} bytes but {MANIFEST_FILE} records {size:,}: "
        "the file is damaged; materialize merged_model again"
    )
    assert versions(pipeline["artifacts"], "hub_release") == before


def test_the_same_size_with_other_bytes_is_caught_before_a_release(pipeline, damage):
    """One byte changed, size unchanged: the size check passes, the sha256 check before the release does not."""
    weights = pipeline["model"] / "model.safetensors"
    damage(weights, "flip")
    result = materialize(pipeline["defs"], pipeline["instance"], ["hub_release"])
    assert not result.success
    message = only_failure(pipeline["instance"], result.run_id)
    assert message.startswith(f"merged_model's artifact cannot be read: {weights} has other bytes than {MANIFEST_FILE} records")
    assert message.endswith("materialize merged_model again")


def test_a_model_written_before_manifests_is_checked_against_merge_json(pipeline, damage):
    """A version from before local manifests: merge.json's recorded size still catches the cut file."""
    weights, manifest = pipeline["model"] / "model.safetensors", pipeline["model"].parent / MANIFEST_FILE
    recorded = MergeRecord.read(pipeline["model"]).size_bytes
    damage(manifest, "delete")
    damage(weights, "truncate")
    result = materialize(pipeline["defs"], pipeline["instance"], ["rouge_report"])
    assert not result.success and step_retries(pipeline["instance"], result.run_id) == 0
    message = only_failure(pipeline["instance"], result.run_id)
    # The safetensors header no longer covers the file: that is found first, without any record.
    assert message.startswith(f"merged_model's artifact cannot be read: {weights} cannot be read as safetensors"), message
    assert message.endswith("the file is damaged; materialize merged_model again")

    from medcot_pipeline.model_paths import ModelLoadError, check_model_files

    # A whole safetensors file of the wrong size (another model's, copied over) is caught by merge.json's size.
    shutil.copy(pipeline["adapter"] / "adapter_model.safetensors", weights)
    with pytest.raises(ModelLoadError) as caught:
        check_model_files(pipeline["model"])
    assert str(caught.value) == (
        f"{weights} is {weights.stat().st_size:,} bytes but merge.json records {recorded:,}: the file is damaged; "
        "materialize merged_model again"
    )


def test_rouge_report_on_a_truncated_model_fails_in_one_line(pipeline, damage):
    """Was a bare SafetensorError: now one line naming the file, and no retry."""
    weights = pipeline["model"] / "model.safetensors"
    damage(weights, "truncate")
    result = materialize(pipeline["defs"], pipeline["instance"], ["rouge_report"])
    assert not result.success
    message = only_failure(pipeline["instance"], result.run_id)
    assert "\n" not in message and str(weights) in message and "SafetensorError" not in message
    assert message.endswith("materialize merged_model again")


def test_ask_on_a_truncated_model_prints_one_line(pipeline, damage, capsys):
    """`medcot ask` (latest merged model) on a cut file: exit 2 and one error line, before torch loads the model."""
    weights = pipeline["model"] / "model.safetensors"
    size = weights.stat().st_size
    damage(weights, "truncate")
    code = main(["ask", "Which drug treats strep throat?", "--artifacts", str(pipeline["artifacts"]), "--device", "cpu",
                 "--max-new-tokens", "2", "--continuation-tokens", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"medcot: error: {weights} is {size // 2:,} bytes but {MANIFEST_FILE} records {size:,}: the file is "
                   "damaged; materialize merged_model again\n")


def test_merged_model_without_the_adapter_weights_names_the_missing_file(pipeline, damage):
    """Was an unrelated repo-id error from PEFT: now the missing file and the asset that writes it."""
    weights = pipeline["adapter"] / "adapter_model.safetensors"
    size = weights.stat().st_size
    damage(weights, "delete")
    before = versions(pipeline["artifacts"], "merged_model")
    result = materialize(pipeline["defs"], pipeline["instance"], ["merged_model"])
    assert not result.success and materialized_in(result) == set()
    assert only_failure(pipeline["instance"], result.run_id) == (
        f"lora_adapter's artifact cannot be read: {weights} is missing but {MANIFEST_FILE} records it ({size:,} bytes): "
        "the file is damaged; materialize lora_adapter again"
    )
    assert versions(pipeline["artifacts"], "merged_model") == before  # no new version, no staging left


def test_merging_an_adapter_without_weights_says_so(pipeline, tmp_path):
    """merge_adapter itself (no manifest to go by): the missing weights named, not a Hub repo-id error."""
    from medcot_pipeline.merging import MergeError, merge_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(pipeline["adapter"], adapter)
    os.remove(adapter / "adapter_model.safetensors")
    with pytest.raises(MergeError, match=r"adapter_model\.safetensors is missing beside adapter_config\.json"):
        merge_adapter(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"], adapter,
                      tmp_path / "merged")
