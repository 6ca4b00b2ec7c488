"""Faults: training killed mid-run then resumed, atomic artifact writes, secrets that must never leak, bad inputs."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._serdes import serialize_value

from medcot_pipeline.artifact_io import files_sha256, tree_sha256
from medcot_pipeline.defs.resources import ArtifactStore
from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import (
    ASSETS,
    load_defs,
    materialize,
    materialized_in,
    step_errors,
    tiny_profile,
    write_profile,
)

TRAINING_MODULE = "medcot_pipeline.training.run"
HF_TOKEN = "hf_FAKEtoken1234567890SECRET"
WANDB_KEY = "FAKEwandbkey0987654321SECRET"
SECRETS = (HF_TOKEN, WANDB_KEY)
MISSING_MODEL = "no-such-org/no-such-model-xyz"


# ---------------------------------------------------------------- helpers


def cli_materialize(selection: str, profile: Path, home: Path, log: Path) -> subprocess.Popen:
    """`dagster asset materialize` as a user runs it: DAGSTER_HOME and MEDCOT_PROFILE set, the profile as run config."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDCOT_PROFILE": str(profile)}
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "medcot_pipeline.definitions",
               "--select", selection, "-c", str(profile)]
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen) -> None:
    """Kill what a test started (its own process group) if it is still running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def training_processes(parent: subprocess.Popen) -> list[psutil.Process]:
    """The Pipes training processes below `parent` only, never anyone else's."""
    found = []
    for child in psutil.Process(parent.pid).children(recursive=True):
        try:
            if TRAINING_MODULE in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_training_after_checkpoint(cli: subprocess.Popen, checkpoints: Path, step: int, timeout: float) -> list[str]:
    """Poll for checkpoint-<step>/trainer_state.json; the moment it exists, SIGKILL the training process.

    Returns the names of the checkpoints present when the kill landed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(checkpoints.glob(f"*/checkpoint-{step}/trainer_state.json")):
            victims = training_processes(cli)
            assert len(victims) == 1, f"expected one training process below the CLI, found {victims}"
            victims[0].send_signal(signal.SIGKILL)
            return sorted(p.name for p in checkpoints.glob("*/checkpoint-*"))
        assert cli.poll() is None, f"the run ended (rc={cli.returncode}) before checkpoint-{step} was written"
        time.sleep(0.01)
    raise TimeoutError(f"checkpoint-{step} did not appear within {timeout}s")


def latest_run_id(instance: dg.DagsterInstance) -> str:
    return instance.get_runs(limit=1)[0].run_id


def run_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.user_message or "" for entry in instance.all_logs(run_id))


def materializations(instance: dg.DagsterInstance, asset: str) -> list:
    return list(instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records)


def secret_hits(blobs) -> list[str]:
    """Where any of SECRETS occurs in (label, bytes) pairs."""
    return [f"{secret[:6]}... in {label}" for label, data in blobs for secret in SECRETS if secret.encode() in data]


def instance_blobs(instance: dg.DagsterInstance):
    """Every run, event log entry and materialization of the instance, serialized as Dagster stores and shows them."""
    for run in instance.get_runs():
        yield f"run {run.run_id}", serialize_value(run).encode()
        for entry in instance.all_logs(run.run_id):
            yield f"event log of {run.run_id}", (serialize_value(entry) + str(entry)).encode()
    for asset in ASSETS + ("canary",):
        for record in materializations(instance, asset):
            materialization = record.asset_materialization
            yield f"materialization of {asset}", serialize_value(materialization).encode()
            for key, value in materialization.metadata.items():
                yield f"{asset} metadata {key}", str(value.value).encode()


def file_blobs(*roots: Path):
    """Every file under the roots, as bytes (SQLite databases, compute logs, artifacts, W&B files)."""
    for root in roots:
        if root.is_file():
            yield str(root), root.read_bytes()
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                yield str(path), path.read_bytes()


# ---------------------------------------------------------------- atomic writes


def test_new_version_leaves_nothing_when_the_block_raises(tmp_path):
    """An exception inside new_version leaves neither the final nor the staging dir, and another run's version intact."""
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    with store.new_version("lora_adapter", "good-run") as staging:
        (staging / "adapter").mkdir()
        (staging / "adapter" / "weights.bin").write_bytes(b"good weights")
    good = store.path("lora_adapter", "good-run")
    good_hash = tree_sha256(good)

    with pytest.raises(RuntimeError, match="disk on fire"):
        with store.new_version("lora_adapter", "bad-run") as staging:
            (staging / "adapter").mkdir()
            (staging / "adapter" / "weights.bin").write_bytes(b"half")
            raise RuntimeError("disk on fire")

    assert sorted(p.name for p in store.path("lora_adapter").iterdir()) == ["good-run"]
    assert tree_sha256(good) == good_hash


def test_new_version_renames_into_place_and_replaces_a_retry_of_the_same_run(tmp_path):
    """A successful block renames staging to <root>/<asset>/<run_id>; a retried step of that run replaces it."""
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    with store.new_version("merged_model", "run-1") as staging:
        assert staging.name.startswith(".run-1.staging-") and list(staging.iterdir()) == []
        (staging / "first.txt").write_text("1")
        assert not store.path("merged_model", "run-1").exists()  # nothing visible until the block ends
    with store.new_version("merged_model", "run-1") as staging:
        (staging / "second.txt").write_text("2")

    final = store.path("merged_model", "run-1")
    # The manifest (every file's size and sha256) is written into the staging directory before the rename.
    assert sorted(p.name for p in final.iterdir()) == ["_MANIFEST.json", "second.txt"]
    assert [p.name for p in store.path("merged_model").iterdir()] == ["run-1"]


# ---------------------------------------------------------------- bad inputs


def test_base_model_missing_from_the_hub_fails_the_first_asset_that_needs_it(tmp_path, tiny_llama_dir):
    """A Hub id that does not exist (offline) fails formatted_splits, the first asset to load it, naming the id."""
    profile = tiny_profile(tiny_llama_dir, tmp_path / "artifacts")
    profile["resources"]["base_model"]["config"]["name"] = MISSING_MODEL
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    result = materialize(load_defs(write_profile(tmp_path / "missing.yaml", profile)), instance, ["raw_dataset", "benchmark_questions", "formatted_splits"])

    assert not result.success
    assert materialized_in(result) == {"raw_dataset", "benchmark_questions"}  # neither needs the base model
    errors = step_errors(instance, result.run_id)
    assert any(f"BaseModelError: cannot load the tokenizer of {MISSING_MODEL}" in error for error in errors), errors


def test_run_config_that_breaks_a_constraint_fails_the_step_naming_the_field(tmp_path, tiny_llama_dir):
    """In-process execution (no executor, so no check before the first step: test_run_config_checks covers the CLI and
    the launchpad): max_steps: -1 still fails the step itself, naming max_steps, and starts no training."""
    defs = load_defs(write_profile(tmp_path / "ok.yaml", tiny_profile(tiny_llama_dir, tmp_path / "artifacts")))
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(k) for k in ("raw_dataset", "benchmark_questions", "formatted_splits", "lora_adapter")],
        run_config={"ops": {"lora_adapter": {"config": {"max_steps": -1}}}},
        raise_on_error=False,
    )

    assert not result.success
    assert materialized_in(result) == {"raw_dataset", "benchmark_questions", "formatted_splits"}
    errors = step_errors(instance, result.run_id)
    assert any("max_steps" in error and "greater than or equal to 1" in error for error in errors), errors
    adapters = tmp_path / "artifacts" / "lora_adapter"
    assert not adapters.exists() or list(adapters.iterdir()) == []  # no version, no staging, no checkpoints


def test_profile_defaults_keep_the_config_constraints():
    """The Config classes built from a profile still reject out-of-range run config, before any step starts."""
    import pydantic

    from medcot_pipeline.defs.stages import CONFIG_CLASSES
    from medcot_pipeline.profiles import DEFAULT_PROFILE, load_profile

    profile = load_profile(DEFAULT_PROFILE)
    for asset, field, value in (("lora_adapter", "max_steps", -1), ("formatted_splits", "validation_size", 0),
                                ("rouge_report", "batch_size", 0)):
        assert field in profile.stage(asset).model_fields_set, f"demo.yaml no longer sets {asset}.{field}"
        with pytest.raises(pydantic.ValidationError, match=field):
            CONFIG_CLASSES[asset](**{**profile.stage(asset).model_dump(), field: value})


def test_a_bad_profile_stops_the_cli_at_launch_naming_file_and_key(tmp_path):
    """MEDCOT_PROFILE with an unknown setting: `dagster asset materialize` exits non-zero with the ProfileError."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("ops:\n  lora_adapter:\n    config:\n      max_stepz: 3\n")
    (tmp_path / "home").mkdir()
    log = tmp_path / "cli.log"
    cli = cli_materialize("raw_dataset", bad, tmp_path / "home", log)
    try:
        assert cli.wait(timeout=120) != 0
    finally:
        stop_group(cli)
    output = log.read_text()
    assert "ProfileError" in output and f"{bad}: ops.lora_adapter.config.max_stepz is not a setting" in output, output[-3000:]


def step_retries(instance: dg.DagsterInstance, run_id: str) -> int:
    return sum(1 for entry in instance.all_logs(run_id) if entry.dagster_event and entry.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)


def raw_dataset_from(tmp_path: Path, name: str, source: Path) -> dg.Definitions:
    """Definitions whose raw_dataset reads `source` (the base model is never loaded by raw_dataset)."""
    profile = tiny_profile(tmp_path / "unused-base-model", tmp_path / "artifacts", raw_dataset={"source": "file", "path": str(source)})
    return load_defs(write_profile(tmp_path / f"{name}.yaml", profile))


def test_a_file_that_is_not_utf8_fails_once_naming_file_and_byte(tmp_path):
    """latin-1 JSON Lines: raw_dataset fails on its first attempt (the network retry policy does not apply to a local
    file) with one line naming the file and where the bad byte is; nothing is materialized or written."""
    source = tmp_path / "formulary.jsonl"
    lines = [json.dumps({"Question": q, "Complex_CoT": "Reasoning.", "Response": "Answer."}, ensure_ascii=False)
             for q in ("Max dose of paracetamol?", "Côté droit ou gauche for the appendix?")]
    source.write_bytes("\n".join(lines).encode("latin-1"))
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    result = materialize(raw_dataset_from(tmp_path, "latin1", source), instance, ["raw_dataset"])

    assert not result.success and materialized_in(result) == set()
    assert step_retries(instance, result.run_id) == 0
    [failure] = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message.strip()
    offset = len(lines[0]) + 1 + lines[1].index("ô")
    assert message == (
        f"dagster._core.definitions.events.Failure: {source} is not UTF-8: byte 0xf4 at offset {offset} (line 2, byte "
        f"{lines[1].index('ô') + 1} of the line) cannot be decoded; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )
    assert failure.step_failure_data.error.cause is None  # no UnicodeDecodeError traceback behind it
    assert not (tmp_path / "artifacts" / "raw_dataset").exists()


def test_a_json_object_materializes_nothing_and_the_previous_raw_dataset_stays(tmp_path):
    """A .json holding a column-oriented object after a good raw_dataset: the run fails naming the file and the
    expected shapes, without a retry; the latest raw_dataset is still the good one, on disk and in Dagster."""
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"Question": f"Case {i}?", "Complex_CoT": "Think.", "Response": "Do."}) for i in range(4)))
    by_column = tmp_path / "by_column.json"
    by_column.write_text(json.dumps({"Question": {"0": "Case A?", "1": "Case B?"}, "Complex_CoT": {"0": "x", "1": "y"},
                                     "Response": {"0": "r", "1": "s"}}))
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    first = materialize(raw_dataset_from(tmp_path, "good", good), instance, ["raw_dataset"])
    assert first.success, step_errors(instance, first.run_id)
    ref = tmp_path / "artifacts" / "refs" / "raw_dataset.json"
    ref_before = ref.read_text()

    second = materialize(raw_dataset_from(tmp_path, "by_column", by_column), instance, ["raw_dataset"])
    assert not second.success and step_retries(instance, second.run_id) == 0
    errors = step_errors(instance, second.run_id)
    assert any(f"{by_column} holds one JSON object (keys Question, Complex_CoT, Response), not records: expected an array "
               "of records" in error and "It looks column-oriented" in error for error in errors), errors
    latest = instance.get_latest_materialization_event(dg.AssetKey("raw_dataset"))
    assert latest.run_id == first.run_id
    assert ref.read_text() == ref_before
    assert sorted(p.name for p in (tmp_path / "artifacts" / "raw_dataset").iterdir()) == [first.run_id]


def fake_release_inputs(artifacts: Path) -> None:
    """merged_model, lora_adapter and rouge_report as hub_release finds them: small files, real contracts, refs."""
    import numpy as np
    from safetensors.numpy import save_file

    from medcot_pipeline.contracts import BaseModelRef, MergeRecord
    from medcot_pipeline_tests.contract_factories import benchmark_report, evaluation_report, splits_summary, training_summary

    adapter, merged, report = (artifacts / "lora_adapter" / "r0" / "adapter", artifacts / "merged_model" / "r0" / "model",
                               artifacts / "rouge_report" / "r0")
    benchmarks, splits = artifacts / "benchmark_report" / "r0", artifacts / "formatted_splits" / "r0"
    for directory in (adapter, merged, report, benchmarks, splits):
        directory.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"lora_A.weight": np.ones((2, 4), dtype=np.float32)}, adapter / "adapter_model.safetensors")
    training_summary().write(adapter)
    (merged / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (merged / "tokenizer_config.json").write_text("{}")
    save_file({"lm_head.weight": np.zeros((4, 4), dtype=np.float32)}, merged / "model.safetensors")
    base = BaseModelRef(name="meta-llama/Llama-3.2-3B-Instruct", reference="meta-llama/Llama-3.2-3B-Instruct")
    weights = [merged / "model.safetensors"]
    # What merged_model records of its weights, which hub_release checks before it stages them.
    MergeRecord(adapter_dir=str(adapter), adapter_sha256="0" * 64, base_model=base, dtype="float32", parameters=16,
                weights_sha256=files_sha256(weights), size_bytes=weights[0].stat().st_size).write(merged)
    evaluation_report(merged_model_dir=str(merged)).write(report)
    benchmark_report(merged_model_dir=str(merged)).write(benchmarks)
    splits_summary().write(splits)
    (artifacts / "refs").mkdir()
    refs = (("lora_adapter", adapter), ("merged_model", merged), ("rouge_report", report), ("benchmark_report", benchmarks),
            ("formatted_splits", splits))
    for asset, path in refs:
        (artifacts / "refs" / f"{asset}.json").write_text(json.dumps({"path": str(path), "run_id": "r0"}))


@pytest.mark.parametrize("outage", [False, True], ids=["offline_mode_fails_at_once", "hub_outage_is_retried_once"])
def test_hub_release_retries_only_a_hub_that_stayed_unavailable(tmp_path, monkeypatch, outage):
    """HF_HUB_OFFLINE with HF_TOKEN set is a refusal that no retry heals: one attempt, the reason in one line. A Hub
    that stayed unavailable through push_release's own retries gets the step's one retry (30 s later)."""
    from huggingface_hub import constants

    from medcot_pipeline.release import hub_publishing

    fake_release_inputs(tmp_path / "artifacts")
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if outage:
        def unavailable(*args, **kwargs):
            raise hub_publishing.HubUnavailableError("uploading the release for test-org/medcot-test still failed after 5 attempts: HTTP 503")

        monkeypatch.setattr(hub_publishing, "push_release", unavailable)
    defs = load_defs(write_profile(tmp_path / "release.yaml", tiny_profile(tmp_path / "unused-base-model", tmp_path / "artifacts")))
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    result = materialize(defs, instance, ["hub_release"])

    assert not result.success
    assert step_retries(instance, result.run_id) == (1 if outage else 0)
    reason = "still failed after 5 attempts: HTTP 503" if outage else "HF_HUB_OFFLINE is set, so test-org/medcot-test cannot be pushed"
    assert any(reason in error for error in step_errors(instance, result.run_id))


# ---------------------------------------------------------------- crash mid-training, then resume

CRASH_TRAINING = {"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 1, "eval_steps": None, "report_to_wandb": False}


@pytest.fixture(scope="module")
def crash_and_rerun(tiny_llama_dir, tmp_path_factory):
    """A good adapter; then a CLI run of lora_adapter whose training process is SIGKILLed after checkpoint-2; then a rerun."""
    home = tmp_path_factory.mktemp("crash_home")
    artifacts = home / "artifacts"
    instance = dg.DagsterInstance.local_temp(str(home))

    # An earlier good version, trained with other settings (so other checkpoints): the crash must not touch it.
    good_training = {**CRASH_TRAINING, "max_steps": 1, "save_steps": 1}
    good = load_defs(write_profile(home / "good.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter=good_training)))
    first = materialize(good, instance, ["raw_dataset", "benchmark_questions", "formatted_splits", "lora_adapter"])
    assert first.success, step_errors(instance, first.run_id)
    good_dir = artifacts / "lora_adapter" / first.run_id
    state = {"instance": instance, "home": home, "artifacts": artifacts, "good_run": first.run_id, "good_dir": good_dir,
             "good_hash": tree_sha256(good_dir), "log": home / "cli.log"}

    profile = write_profile(home / "crash.yaml", tiny_profile(tiny_llama_dir, artifacts, lora_adapter=CRASH_TRAINING))
    checkpoints = artifacts / "lora_adapter" / "checkpoints"
    cli = cli_materialize("lora_adapter", profile, home, state["log"])
    try:
        state["checkpoints_at_kill"] = kill_training_after_checkpoint(cli, checkpoints, step=2, timeout=300)
        state["crash_rc"] = cli.wait(timeout=180)
    finally:
        stop_group(cli)
    state["crash_run"] = latest_run_id(instance)
    state["after_crash"] = sorted(p.name for p in (artifacts / "lora_adapter").iterdir())
    state["complete_after_crash"] = sorted(p.parent.name for p in checkpoints.glob("*/checkpoint-*/trainer_state.json"))
    state["good_hash_after_crash"] = tree_sha256(good_dir)

    rerun = cli_materialize("lora_adapter", profile, home, state["log"])
    try:
        state["rerun_rc"] = rerun.wait(timeout=300)
    finally:
        stop_group(rerun)
    state["rerun"] = latest_run_id(instance)
    return state


def test_killed_training_fails_the_run_and_leaves_no_adapter(crash_and_rerun):
    """SIGKILL of the training process: run failed, no materialization, no adapter or staging dir, good version intact."""
    state = crash_and_rerun
    instance, crash_run = state["instance"], state["crash_run"]
    assert crash_run != state["good_run"]
    assert "checkpoint-6" not in state["checkpoints_at_kill"], "training finished before the kill landed"

    assert state["crash_rc"] != 0
    assert instance.get_run_by_id(crash_run).status == dg.DagsterRunStatus.FAILURE
    errors = step_errors(instance, crash_run)
    assert any("External execution process failed with code -9" in error for error in errors), errors
    recorded_by = [record.run_id for record in materializations(instance, "lora_adapter")]
    assert crash_run not in recorded_by

    # The step's own cleanup ran: neither the final dir nor the staging dir of the killed run is left.
    assert state["after_crash"] == sorted(["checkpoints", state["good_run"]]), state["after_crash"]
    assert state["good_hash_after_crash"] == state["good_hash"]
    # What the rerun resumes from survives the crash.
    assert "checkpoint-2" in state["complete_after_crash"]


def test_rerun_after_the_kill_resumes_from_the_checkpoint(crash_and_rerun):
    """The rerun succeeds, reports resumed_from checkpoint-2 (or later), logs the resume, and trains to the last step."""
    state = crash_and_rerun
    instance, rerun = state["instance"], state["rerun"]
    assert state["rerun_rc"] == 0, state["log"].read_text()[-4000:]
    assert rerun != state["crash_run"]
    assert instance.get_run_by_id(rerun).status == dg.DagsterRunStatus.SUCCESS

    [record] = [r for r in materializations(instance, "lora_adapter") if r.run_id == rerun]
    metadata = record.asset_materialization.metadata
    resumed = re.fullmatch(r".*/checkpoints/[0-9a-f]{16}/checkpoint-(\d+)", metadata["resumed_from"].value)
    assert resumed and 2 <= int(resumed[1]) < CRASH_TRAINING["max_steps"], metadata["resumed_from"].value
    assert metadata["global_step"].value == CRASH_TRAINING["max_steps"]
    steps = [row.data["step"] for row in metadata["loss_per_step"].value.records]
    assert steps == list(range(1, CRASH_TRAINING["max_steps"] + 1))
    assert f"resuming from checkpoint-{resumed[1]}" in run_log_text(instance, rerun)
    compute_logs = "".join(p.read_text() for p in (state["home"] / "storage" / rerun / "compute_logs").glob("*.err"))
    assert f"resuming from checkpoint-{resumed[1]}" in compute_logs

    adapter = state["artifacts"] / "lora_adapter" / rerun / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list((state["artifacts"] / "lora_adapter").glob(".staging-*"))
    assert tree_sha256(state["good_dir"]) == state["good_hash"]


def test_a_checkpoint_with_an_empty_trainer_state_is_skipped(tmp_path):
    """A checkpoint whose trainer_state.json was created but never written is not 'complete'; the one before it is."""
    import logging

    from medcot_pipeline.checkpoints import newest_complete_checkpoint

    for step, state in ((2, json.dumps({"global_step": 2})), (4, "")):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert newest_complete_checkpoint(tmp_path, logging.getLogger("medcot-tests.faults")) == tmp_path / "checkpoint-2"


# ---------------------------------------------------------------- secrets


@pytest.fixture(scope="module")
def secret_runs(tiny_llama_dir, tmp_path_factory):
    """The whole graph with HF_TOKEN and WANDB_API_KEY set, pushing to a fake Hub on loopback; then lora_adapter with W&B on,
    once with the key set and once without it (W&B offline files)."""
    from huggingface_hub import constants

    from medcot_pipeline_tests.test_hub_publishing import FakeHub

    home = tmp_path_factory.mktemp("secrets_home")
    artifacts = home / "artifacts"
    hub = FakeHub()
    threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    runs = {}
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("HF_TOKEN", HF_TOKEN)
            env.setenv("WANDB_API_KEY", WANDB_KEY)
            env.setenv("WANDB_MODE", "offline")
            # conftest sets HF_HUB_OFFLINE=1 (read at import); the push may reach only the loopback fake Hub.
            env.setattr(constants, "HF_HUB_OFFLINE", False)
            instance = dg.DagsterInstance.local_temp(str(home))

            def defs(name: str, **training) -> dg.Definitions:
                profile = tiny_profile(tiny_llama_dir, artifacts, lora_adapter=training)
                profile["resources"]["hub"] = {"config": {"endpoint": hub.url}}
                return load_defs(write_profile(home / f"{name}.yaml", profile))

            # The six assets, not the Hub dataset's observation (only the push may reach the fake Hub).
            runs["release"] = materialize(defs("release", report_to_wandb=False), instance, ASSETS)
            runs["wandb_with_key"] = materialize(defs("wandb_key", report_to_wandb=True), instance, ["lora_adapter"])
            env.delenv("WANDB_API_KEY")
            runs["wandb_offline"] = materialize(defs("wandb_offline", report_to_wandb=True), instance, ["lora_adapter"])
    finally:
        hub.shutdown()
        hub.server_close()
    return {"home": home, "artifacts": artifacts, "instance": instance, "hub": hub, "runs": runs}


def test_the_scanner_finds_planted_secrets(tmp_path, monkeypatch):
    """Sanity: the scan finds a token planted in a file, an event log message and materialization metadata."""
    planted = tmp_path / "planted" / "notes.txt"
    planted.parent.mkdir()
    planted.write_bytes(b"prefix " + HF_TOKEN.encode() + b" suffix")
    assert secret_hits(file_blobs(tmp_path / "planted")) == [f"{HF_TOKEN[:6]}... in {planted}"]

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)

    @dg.asset
    def canary(context: dg.AssetExecutionContext):
        context.log.info(f"key is {os.environ['WANDB_API_KEY']}")
        return dg.Output(1, metadata={"note": os.environ["WANDB_API_KEY"]})

    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    assert dg.materialize([canary], instance=instance).success
    labels = " | ".join(secret_hits(instance_blobs(instance)))
    assert "event log of" in labels and "canary metadata note" in labels
    assert secret_hits(file_blobs(tmp_path / "home"))  # the SQLite event log on disk


def test_secrets_never_leak_into_logs_metadata_or_files(secret_runs):
    """HF_TOKEN and WANDB_API_KEY appear in no event log entry, run, metadata value, compute log, artifact or W&B file."""
    from huggingface_hub import constants

    home, instance, hub, runs = secret_runs["home"], secret_runs["instance"], secret_runs["hub"], secret_runs["runs"]

    release = runs["release"]
    assert release.success, step_errors(instance, release.run_id)
    assert materialized_in(release) == set(ASSETS)
    # The secrets were really in play: the push carried the token to the (fake) Hub ...
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {HF_TOKEN}"}
    [pushed] = [m for m in release.get_asset_materialization_events() if m.asset_key == dg.AssetKey("hub_release")]
    assert pushed.materialization.metadata["status"].value == "pushed"
    # ... and W&B ran offline without a key, writing run files that the scan below reads.
    assert runs["wandb_offline"].success, step_errors(instance, runs["wandb_offline"].run_id)
    assert list((secret_runs["artifacts"] / "wandb").rglob("*.wandb"))
    assert list((home / "storage").glob("*/compute_logs/*.err")), "no compute logs to scan"

    pushed_files = [(f"fake Hub {repo}/{name}", data) for repo, info in hub.repos.items() for name, data in info["files"].items()]
    user_files = [Path.home() / ".netrc", Path.home() / ".config" / "wandb" / "settings", Path(constants.HF_TOKEN_PATH)]
    hits = secret_hits([*instance_blobs(instance), *file_blobs(home, *user_files), *pushed_files])
    assert hits == [], hits


def test_wandb_mode_offline_is_honoured_with_a_key_set(secret_runs):
    """With WANDB_API_KEY set and WANDB_MODE=offline, lora_adapter trains and W&B writes offline files."""
    result = secret_runs["runs"]["wandb_with_key"]
    assert result.success, step_errors(secret_runs["instance"], result.run_id)[:1]


def test_every_asset_path_metadata_is_its_artifact_directory(secret_runs):
    """`path` on each of the six materializations is the directory the asset wrote under the artifacts root (the value
    handed downstream), never a file of the IO manager's under DAGSTER_HOME."""
    artifacts, home, release = secret_runs["artifacts"], secret_runs["home"], secret_runs["runs"]["release"]
    paths = {event.asset_key.to_user_string(): Path(event.materialization.metadata["path"].value)
             for event in release.get_asset_materialization_events()}
    assert set(paths) == set(ASSETS)
    for asset, path in paths.items():
        assert path.is_dir(), (asset, path)
        assert path.is_relative_to(artifacts / asset / release.run_id), (asset, path)
        assert not path.is_relative_to(home / "storage"), (asset, path)
        assert any(path.iterdir()), (asset, path)  # what the asset wrote, not an empty placeholder


# ---------------------------------------------------------------- leftovers, roots and homes (issue 28)

STAGING_WRITER = """
import sys, time
from medcot_pipeline.artifact_store import ArtifactRoot
with ArtifactRoot(sys.argv[1]).new_version("merged_model", sys.argv[2]) as staging:
    (staging / "model").mkdir()
    (staging / "model" / "model.safetensors").write_bytes(b"x" * (4 << 20))
    print(staging, flush=True)
    time.sleep(600)
"""


def start_staging_writer(root: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    """A process that is writing a merged_model version (its staging directory holds 4 MiB) and does not finish."""
    writer = subprocess.Popen([sys.executable, "-c", STAGING_WRITER, str(root), run_id], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    return writer, Path(writer.stdout.readline().strip())


def test_a_killed_writer_s_staging_directory_is_reclaimed_by_the_next_write(tmp_path):
    """kill -9 while merged_model writes: its staging directory stays (nothing in the process can remove it); the next
    version written beside it removes it. A writer still running keeps its own, and committed versions are untouched."""
    root = tmp_path / "artifacts"
    store = ArtifactStore(root=str(root))
    with store.new_version("merged_model", "good-run") as staging:
        (staging / "model").mkdir()
        (staging / "model" / "config.json").write_text("{}")
    good_hash = tree_sha256(store.path("merged_model", "good-run"))

    killed, orphan = start_staging_writer(root, "killed-run")
    running, in_progress = start_staging_writer(root, "running-run")
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        assert orphan.is_dir() and orphan.name.startswith(".killed-run.staging-")  # the leftover of the issue

        with store.new_version("merged_model", "next-run") as staging:
            (staging / "model").mkdir()
        assert not orphan.exists()
        assert in_progress.is_dir()  # a live process's write (it holds the lock beside it) is never taken
        assert sorted(p.name for p in (root / "merged_model").iterdir()) == sorted(
            ["good-run", "next-run", in_progress.name, f"{in_progress.name}.lock"]
        )
        assert tree_sha256(store.path("merged_model", "good-run")) == good_hash
    finally:
        stop_group(running)
        stop_group(killed)


def test_an_artifacts_root_that_is_a_file_fails_at_once(tmp_path):
    """Was retried for 47 s: now the first attempt fails, naming the root and the profile key to fix."""
    root = tmp_path / "artifacts"
    root.write_text("not a directory")
    profile = tiny_profile(tmp_path / "unused-base-model", root)
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    result = materialize(load_defs(write_profile(tmp_path / "file-root.yaml", profile)), instance, ["raw_dataset"])

    assert not result.success and step_retries(instance, result.run_id) == 0
    [failure] = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_failure_data.error.message.strip() == (
        "dagster._core.definitions.events.Failure: the artifacts root is a file, not a directory: point "
        "resources.artifacts.config.root in the profile at a directory"
    )
    assert root.read_text() == "not a directory"


def test_a_run_config_root_other_than_the_active_profile_s_is_the_run_s_root(tmp_path, tiny_llama_dir):
    """`-c other.yaml` whose artifacts root differs from MEDCOT_PROFILE's: was 47 s of retries ending in "not under the
    artifacts root", an orphan version in the other root, and a later step reading the active root's upstream. Now
    every write, reference and read of the run is under the run's root."""
    from medcot_pipeline.contracts import SplitsSummary

    active_root, run_root = tmp_path / "active", tmp_path / "other"
    records = tmp_path / "other.jsonl"
    records.write_text("\n".join(json.dumps({"Question": f"Other case {i}?", "Complex_CoT": "Think.", "Response": "Do."})
                                 for i in range(8)))
    active = write_profile(tmp_path / "active.yaml", tiny_profile(tiny_llama_dir, active_root))
    other = tiny_profile(tiny_llama_dir, run_root, raw_dataset={"source": "file", "path": str(records)})
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    defs = load_defs(active)
    job = defs.resolve_implicit_global_asset_job_def()
    # The active root already holds a raw_dataset (the bundled sample): no run with the other root may read it.
    assert materialize(defs, instance, ["raw_dataset"]).success
    # What `dagster asset materialize -c other.yaml` passes: the file's resources and ops as run config.
    run_config = {"resources": {"artifacts": {"config": other["resources"]["artifacts"]["config"]}}}

    started = time.monotonic()
    raw = job.execute_in_process(instance=instance, run_config={**run_config, "ops": {"raw_dataset": other["ops"]["raw_dataset"]}},
                                 asset_selection=[dg.AssetKey("raw_dataset")], raise_on_error=False)
    assert raw.success and step_retries(instance, raw.run_id) == 0, step_errors(instance, raw.run_id)
    assert time.monotonic() - started < 40
    assert json.loads((run_root / "refs" / "raw_dataset.json").read_text())["location"] == str(run_root / "raw_dataset" / raw.run_id)
    assert sorted(p.name for p in (active_root / "raw_dataset").iterdir()) == [instance.get_runs()[-1].run_id]

    # A later run of formatted_splits (with the benchmark questions it is decontaminated against), with the same -c
    # file, reads raw_dataset from the run's root.
    splits = job.execute_in_process(instance=instance, run_config=run_config,
                                    asset_selection=[dg.AssetKey("benchmark_questions"), dg.AssetKey("formatted_splits")],
                                    raise_on_error=False)
    assert splits.success, step_errors(instance, splits.run_id)
    assert SplitsSummary.read(run_root / "formatted_splits" / splits.run_id).dataset.location == str(records)
    assert not (active_root / "formatted_splits").exists()


def test_runs_started_at_once_on_a_new_dagster_home_all_open_it(tmp_path):
    """Was `table secondary_indexes already exists` (or alembic seeing two heads) for one of two processes opening a new
    DAGSTER_HOME at once; the shipped dagster.yaml's instance creates the tables under a lock."""
    code = ("import dagster as dg\n"
            "with dg.DagsterInstance.get() as instance:\n"
            "    instance.get_runs(limit=1)\n"
            "    instance.event_log_storage.get_concurrency_info('gpu')\n")
    failures = []
    for trial in range(4):
        home = tmp_path / f"home{trial}"
        home.mkdir()
        (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        openers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
                   for _ in range(3)]
        for opener in openers:
            _, err = opener.communicate(timeout=300)
            if opener.returncode:
                failures.append(err.strip().splitlines()[-1])
    assert failures == []
