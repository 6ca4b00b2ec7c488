"""The artifacts root on a local directory and on a real S3 server (SeaweedFS on loopback): a version is trusted
only once complete, a half-uploaded one is invisible, copies are verified, and checkpoints move between nodes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from medcot_pipeline.artifact_store import (
    MANIFEST_FILE,
    ArtifactError,
    ArtifactRoot,
    CheckpointMirror,
    read_manifest,
)
from medcot_pipeline_tests.scale_out_services import BUCKET


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The endpoint and credentials in the environment only, as a node would have them."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> ArtifactRoot:
    if request.param == "local":
        return ArtifactRoot(str(tmp_path / "artifacts"))
    request.getfixturevalue("s3_env")
    return ArtifactRoot(f"s3://{BUCKET}/store-{tmp_path.name}", cache_dir=str(tmp_path / "node-a"))


def write_adapter(directory, weights: bytes) -> None:
    (directory / "adapter").mkdir()
    (directory / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    (directory / "adapter" / "adapter_config.json").write_text('{"r": 16}')


pytestmark = pytest.mark.scale_out


def test_a_failed_block_commits_nothing_and_a_good_one_reads_back(root, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        with root.new_version("lora_adapter", "run-1") as staging:
            write_adapter(staging, b"half")
            raise RuntimeError("killed")
    assert root.committed_versions("lora_adapter") == []

    weights = os.urandom(3 << 20)
    with root.new_version("lora_adapter", "run-2") as staging:
        write_adapter(staging, weights)
    assert root.committed_versions("lora_adapter") == ["run-2"]
    adapter = root.local_copy(root.location("lora_adapter", "run-2", "adapter"))
    assert (adapter / "adapter_model.safetensors").read_bytes() == weights
    assert root.location_of(adapter) == root.location("lora_adapter", "run-2", "adapter")


def test_a_half_uploaded_version_is_invisible_and_a_retry_commits(s3_env, tmp_path):
    """Files under the final keys without a manifest (what a kill mid-upload leaves) are never trusted; the retry of
    that run deletes what the manifest does not list and commits."""
    root = ArtifactRoot(f"s3://{BUCKET}/half-{tmp_path.name}", cache_dir=str(tmp_path / "node-a"))
    fs = s3_env.filesystem()
    prefix = f"{BUCKET}/half-{tmp_path.name}/merged_model/run-1"
    fs.pipe_file(f"{prefix}/model/model.safetensors", b"first half of the weights")
    fs.pipe_file(f"{prefix}/model/leftover.bin", b"a file the retry does not write")

    assert root.committed_versions("merged_model") == []
    with pytest.raises(ArtifactError, match="not committed"):
        root.local_copy(root.location("merged_model", "run-1", "model"))

    with root.new_version("merged_model", "run-1") as staging:
        (staging / "model").mkdir()
        (staging / "model" / "model.safetensors").write_bytes(b"all of the weights")
    assert root.committed_versions("merged_model") == ["run-1"]
    assert sorted(fs.find(prefix)) == [f"{prefix}/{MANIFEST_FILE}", f"{prefix}/model/model.safetensors"]
    # Another node (an empty cache) gets the committed bytes, checked against the manifest.
    other_node = ArtifactRoot(root.root, cache_dir=str(tmp_path / "node-b"))
    copy = other_node.local_copy(other_node.location("merged_model", "run-1", "model"))
    assert (copy / "model.safetensors").read_bytes() == b"all of the weights"
    assert copy.is_relative_to(tmp_path / "node-b")


def test_a_copy_that_does_not_match_its_manifest_is_refused_and_a_recommit_refreshes_the_cache(s3_env, tmp_path):
    root = ArtifactRoot(f"s3://{BUCKET}/verify-{tmp_path.name}", cache_dir=str(tmp_path / "node-a"))
    with root.new_version("rouge_report", "run-1") as staging:
        (staging / "report.json").write_text('{"n": 2}')
    fs = s3_env.filesystem()
    key = f"{BUCKET}/verify-{tmp_path.name}/rouge_report/run-1/report.json"
    fs.pipe_file(key, b'{"n": 3}')  # same size, other bytes: bit rot, or a writer that skipped the commit

    fresh = ArtifactRoot(root.root, cache_dir=str(tmp_path / "node-b"))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        fresh.local_copy(fresh.location("rouge_report", "run-1"))
    assert not (tmp_path / "node-b" / "rouge_report" / "run-1").exists()

    # A retry of the run commits a new manifest; a node holding the old copy fetches the new one.
    with fresh.new_version("rouge_report", "run-1") as staging:
        (staging / "report.json").write_text('{"n": 4}')
    assert (root.local_copy(root.location("rouge_report", "run-1")) / "report.json").read_text() == '{"n": 4}'


def test_references_name_this_runs_output_first_then_the_latest(root):
    for run in ("run-1", "run-2"):
        with root.new_version("formatted_splits", run) as staging:
            (staging / "train.parquet").write_bytes(run.encode())
        root.write_ref("formatted_splits", run, root.location("formatted_splits", run))
    assert root.read_ref("formatted_splits", "run-1") == root.location("formatted_splits", "run-1")
    assert root.read_ref("formatted_splits", "run-9") == root.location("formatted_splits", "run-2")
    assert root.read_ref("lora_adapter", "run-1") is None


def test_checkpoints_move_to_another_node_through_object_storage(s3_env, tmp_path):
    """Node A commits each checkpoint as saved (keeping the newest two); node B, which never trained, fetches the
    newest committed one and ignores a checkpoint whose upload never finished."""
    location = f"s3://{BUCKET}/ckpt-{tmp_path.name}/lora_adapter/checkpoints/abc"
    node_a, node_b = tmp_path / "a", tmp_path / "b"
    mirror = CheckpointMirror(location, node_a)
    for step in (2, 4, 6):
        checkpoint = node_a / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        # Real safetensors: a node trusts a local checkpoint only when its files are whole (file_integrity.py).
        save_file({"lora_A.weight": np.random.default_rng(step).random((64, 64), dtype=np.float32)},
                  checkpoint / "adapter_model.safetensors")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        mirror.push(checkpoint, keep=2)
    assert sorted(mirror.committed()) == [4, 6]
    s3_env.filesystem().pipe_file(f"{location.removeprefix('s3://')}/checkpoint-8/trainer_state.json", b"{}")

    restored = CheckpointMirror(location, node_b).restore()
    assert restored == node_b / "checkpoint-6"
    assert json.loads((restored / "trainer_state.json").read_text()) == {"global_step": 6}
    assert (restored / "adapter_model.safetensors").read_bytes() == (node_a / "checkpoint-6" / "adapter_model.safetensors").read_bytes()
    assert CheckpointMirror(location, node_b).restore() is None  # already holds the newest
    assert read_manifest(f"{location}/checkpoint-8") is None


def test_credentials_come_from_the_environment(s3_server, tmp_path):
    """A process with a wrong secret in its environment is refused by the server: nothing else supplies credentials."""
    probe = f"from medcot_pipeline.artifact_store import ArtifactRoot; print(ArtifactRoot('s3://{BUCKET}/creds').committed_versions('x'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    good = subprocess.run([sys.executable, "-c", probe], env={**env, **s3_server.env, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and good.stdout.strip() == "[]", good.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**env, **s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong", "HOME": str(tmp_path)})
    assert bad.returncode != 0 and "PermissionError" in bad.stderr, bad.stderr[-2000:]


def test_a_damaged_copy_is_caught_on_either_root(root):
    """A file of a committed version cut short after the commit: on object storage this node's copy is fetched again
    (the committed files are intact); on a directory, the version itself is damaged and the read fails naming it."""
    from medcot_pipeline.artifact_store import ArtifactDamagedError

    weights = os.urandom(1 << 20)
    with root.new_version("lora_adapter", "run-1") as staging:
        write_adapter(staging, weights)
    adapter = root.local_copy(root.location("lora_adapter", "run-1", "adapter"))
    (adapter / "adapter_model.safetensors").write_bytes(weights[:1000])
    if root.remote:
        again = root.local_copy(root.location("lora_adapter", "run-1", "adapter"))
        assert (again / "adapter_model.safetensors").read_bytes() == weights
    else:
        with pytest.raises(ArtifactDamagedError, match=r"adapter_model\.safetensors is 1,000 bytes but _MANIFEST\.json records 1,048,576: "
                                                       r"the file is damaged; materialize lora_adapter again"):
            root.local_copy(root.location("lora_adapter", "run-1", "adapter"))
