"""The training step: TRL + PEFT on a tiny Llama, its loss mask, checkpoint resume, W&B, and the Pipes boundary."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from medcot_pipeline.chat_format import build_target
from medcot_pipeline.checkpoints import newest_complete_checkpoint
from medcot_pipeline.contracts import BaseModelRef, ContractError, DatasetProvenance, TrainingJob, TrainingSummary, WandbTarget
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.training import run

MAX_SEQ_LENGTH = 128  # every prompt of the rows used is shorter, so each example keeps completion tokens


@pytest.fixture(scope="module")
def splits(real_records_path, tmp_path_factory) -> Path:
    """Six training and two validation rows in the formatted-split layout, from real medical-o1 records."""
    records = json.loads(Path(real_records_path).read_text())[2:10]
    frame = pd.DataFrame(
        {
            "question": [r["Question"] for r in records],
            "reasoning": [r["Complex_CoT"] for r in records],
            "response": [r["Response"] for r in records],
            "target": [build_target(r["Complex_CoT"], r["Response"]) for r in records],
            "answer": [r["answer"] for r in records],
        }
    )
    folder = tmp_path_factory.mktemp("splits")
    frame.iloc[:6].to_parquet(folder / "train.parquet")
    frame.iloc[6:].to_parquet(folder / "validation.parquet")
    return folder


def make_job(base_model, splits, out: Path, *, wandb=False, profile=None, **training) -> TrainingJob:
    settings = dict(
        backend="transformers",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_steps=0,
        lora_r=4,
        lora_alpha=8,
        eval_steps=None,
        report_to_wandb=wandb,
        # Where a test evaluates, grading answers the validation questions: a few tokens are enough on a random model.
        grade_max_new_tokens=16,
    )
    settings.update(training)
    return TrainingJob(
        base_model=BaseModelRef(name="tiny-llama", reference=str(base_model)),
        splits_dir=str(splits),
        output_dir=str(out / "adapter"),
        checkpoint_dir=str(out / "checkpoints"),
        max_seq_length=MAX_SEQ_LENGTH,
        settings=TrainingSettings(**settings),
        wandb=WandbTarget(enabled=wandb, mode="offline", project="medcot-tests", dir=str(out / "wandb"), run_name="test-run"),
        dataset=DatasetProvenance(source="file", location="huatuo_o1_demo.json", format="json", records=8, content_sha256="0" * 64),
        splits_sha256="1" * 64,
        profile=profile,
        lineage={"raw_dataset": "raw-v1", "formatted_splits": "splits-v1"},
    )


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def recording_logger(name: str) -> tuple[logging.Logger, Lines]:
    logger, lines = logging.getLogger(f"medcot-tests.{name}"), Lines()
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    return logger, lines


@pytest.fixture(scope="module")
def first_run(tiny_llama_dir, splits, tmp_path_factory):
    """Three steps with a checkpoint at step 2, evaluation at step 2 and an offline W&B run."""
    out = tmp_path_factory.mktemp("first_run")
    job = make_job(tiny_llama_dir, splits, out, wandb=True, max_steps=3, save_steps=2, eval_steps=2)
    log, lines = recording_logger("first")
    return out, job, run.train(job, log), lines.lines


def test_train_saves_the_adapter_with_losses_and_an_offline_wandb_run(first_run):
    out, job, summary, lines = first_run

    adapter = out / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", TrainingSummary.FILE):
        assert (adapter / name).is_file(), name
    assert (adapter / run.LOSS_CURVE_FILE).read_bytes().startswith(b"\x89PNG")
    assert TrainingSummary.read(adapter) == summary
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left behind

    # The provenance the model card states travels in the summary.
    assert summary.base_model == job.base_model and summary.dataset == job.dataset and summary.settings == job.settings
    assert summary.lineage == job.lineage and summary.splits_sha256 == job.splits_sha256
    assert summary.backend == "transformers" and summary.base_weights == "float32" and summary.processes == 1
    assert summary.hardware.startswith("CPU") and summary.wall_time_seconds >= summary.training_seconds > 0
    assert summary.versions["trl"] != "not installed"

    assert summary.global_step == 3 and summary.resumed_from is None
    assert [row["step"] for row in summary.loss_per_step] == [1, 2, 3]
    assert all(row["loss"] > 0 and row["tokens_per_second"] > 0 for row in summary.loss_per_step)
    # Evaluated at step 2 by schedule and once more after the last step.
    assert [row["step"] for row in summary.eval_losses] == [2, 3]
    assert summary.eval_loss_final == summary.eval_losses[-1]["eval_loss"] > 0
    assert summary.tokens_seen > 0 and summary.peak_gpu_memory_gib is None
    assert "no checkpoint, starting fresh" in lines
    assert any(line.startswith("step 3/3: loss") for line in lines)

    wandb_dir = Path(summary.wandb.dir)
    assert wandb_dir.is_relative_to(out / "wandb") and list(wandb_dir.glob("run-*.wandb"))


def test_prompt_tokens_are_masked_and_the_assistant_turn_is_trained(tiny_llama_dir, splits, tmp_path):
    from medcot_pipeline import backends
    from medcot_pipeline.data.schema import read_split
    from medcot_pipeline.training.sft_trainer import build_trainer

    config = TrainingSettings(backend="transformers", lora_r=4, per_device_train_batch_size=2)
    model, tokenizer = backends.TRANSFORMERS.load_for_training(str(tiny_llama_dir), config, 2048)
    assert tokenizer.padding_side == "right"
    train = read_split(splits, "train", ("question", "target"))
    trainer = build_trainer(model, tokenizer, config, 2048, train, None, str(tmp_path))
    assert trainer.args.optim == "adamw_torch"  # adamw_8bit needs bitsandbytes on CUDA

    batch = next(iter(trainer.get_train_dataloader()))
    for input_ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        length = int(attention.sum())
        trained = (labels[:length] != -100).nonzero().flatten()
        start = int(trained[0])
        assert tokenizer.decode(input_ids[:start]).endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<|im_start|>user\n" in tokenizer.decode(input_ids[:start])
        assert (labels[start:length] == input_ids[start:length]).all()  # the whole assistant turn
        assert tokenizer.decode(input_ids[start:length]).startswith("<think>")
        assert tokenizer.decode(input_ids[start:length]).rstrip().endswith("</response><|im_end|>")
        assert (labels[length:] == -100).all()  # padding


def test_a_rerun_resumes_from_the_last_complete_checkpoint(first_run, tmp_path):
    out, job, _, _ = first_run
    # A copy of the first run's checkpoints, as if it had been killed while saving step 3.
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(out / "checkpoints", checkpoints)
    (checkpoints / "checkpoint-3" / "trainer_state.json").unlink()

    log, lines = recording_logger("resume")
    rerun = job.model_copy(update={
        "settings": job.settings.model_copy(update={"max_steps": 4}),
        "checkpoint_dir": str(checkpoints),
        "output_dir": str(tmp_path / "adapter"),
        "wandb": job.wandb.model_copy(update={"enabled": False}),
    })
    summary = run.train(rerun, log)

    assert "resuming from checkpoint-2" in lines.lines
    assert any("checkpoint-3 has no trainer_state.json" in line for line in lines.lines)
    assert Path(summary.resumed_from).name == "checkpoint-2"
    assert summary.global_step == 4
    # Steps 1-2 come back from the checkpoint's history; this process trained and timed steps 3-4.
    rows = summary.loss_per_step
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [("elapsed_s" in row) for row in rows] == [False, False, True, True]
    assert summary.tokens_seen > summary.tokens_this_run > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_an_interrupted_checkpoint_is_skipped(tmp_path):
    for step, state in ((2, "{}"), (4, "{}"), (5, '{"global_step": 5, "log_hi'), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    log, lines = recording_logger("skip")
    assert newest_complete_checkpoint(tmp_path, log) == tmp_path / "checkpoint-4"
    assert any("checkpoint-6 has no trainer_state.json" in line for line in lines.lines)
    assert any("checkpoint-5/trainer_state.json is not readable JSON" in line for line in lines.lines)
    assert newest_complete_checkpoint(tmp_path / "missing", log) is None


def test_the_wandb_run_is_closed_failed_when_a_phase_fails_and_finished_when_saved(tiny_llama_dir, splits, tmp_path, monkeypatch):
    import wandb

    from medcot_pipeline.base_models import BaseModelError

    finished, finish = [], wandb.Run.finish

    def recording_finish(self, *args, exit_code=None, **kwargs):
        finished.append(exit_code)
        return finish(self, *args, exit_code=exit_code, **kwargs)

    monkeypatch.setattr(wandb.Run, "finish", recording_finish)
    log, _ = recording_logger("cleanup")
    # setup() opens the W&B run, then fails loading the model: cleanup() still closes the run, as failed.
    with pytest.raises(BaseModelError, match="does not exist"):
        run.train(make_job(tmp_path / "no-such-model", splits, tmp_path / "failed", wandb=True, max_steps=1), log)
    assert finished == [1]
    run.train(make_job(tiny_llama_dir, splits, tmp_path / "saved", wandb=True, max_steps=1, save_steps=1), log)
    assert finished == [1, 0]


def test_extras_missing_a_key_name_it(tiny_llama_dir, splits, tmp_path):
    extras = make_job(tiny_llama_dir, splits, tmp_path).model_dump(mode="json")
    del extras["checkpoint_dir"]
    with pytest.raises(ContractError, match="Pipes extras: checkpoint_dir: Field required"):
        TrainingJob.parse(extras, "Pipes extras")
    extras = make_job(tiny_llama_dir, splits, tmp_path, wandb=True).model_dump(mode="json")
    extras["wandb"]["mode"] = "cloud"
    with pytest.raises(ContractError, match="wandb.mode"):
        TrainingJob.parse(extras, "Pipes extras")
    extras = make_job(tiny_llama_dir, splits, tmp_path).model_dump(mode="json")
    extras["settings"]["max_stepz"] = 3
    with pytest.raises(ContractError, match="settings.max_stepz: Extra inputs are not permitted"):
        TrainingJob.parse(extras, "Pipes extras")


def test_the_job_and_summary_round_trip_through_json(first_run, tmp_path):
    _, job, summary, _ = first_run
    assert TrainingJob.parse(json.loads(job.model_dump_json()), "extras") == job
    summary.write(tmp_path)
    assert TrainingSummary.read(tmp_path) == summary


def test_the_entry_point_imports_neither_dagster_nor_a_library_that_unsloth_must_precede():
    code = (
        # Every torchrun rank runs this module: with `dagster` unimportable, it still imports (dagster_pipes only).
        "import sys; sys.modules['dagster'] = None; import medcot_pipeline.training.run; "
        "print([m for m in ('transformers', 'trl', 'peft', 'dagster') if sys.modules.get(m)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def materialize_training(job: TrainingJob, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from medcot_pipeline.defs.assets.model import adapter_page

    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        reported = pipes.run(
            command=[sys.executable, "-m", "medcot_pipeline.training.run"], context=context, extras=job.model_dump(mode="json")
        ).get_materialize_result()
        # As the real step does: the page from what the process wrote beside the adapter.
        return dg.MaterializeResult(metadata={**(reported.metadata or {}), **adapter_page(Path(job.output_dir))})

    return dg.materialize(
        [lora_adapter], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False
    )


def test_training_runs_as_a_pipes_subprocess(tiny_llama_dir, splits, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_training(make_job(tiny_llama_dir, splits, tmp_path, max_steps=1, save_steps=1), instance)

    assert result.success
    [materialization] = result.asset_materializations_for_node("lora_adapter")
    metadata = materialization.metadata
    assert metadata["train_loss_final"].value > 0
    assert metadata["eval_loss_final"].value > 0
    assert "| backend | transformers |" in metadata["training"].value
    assert [record.data["step"] for record in metadata["loss_per_step"].value.records] == [1]
    # The curve shows inline (Dagster inlines markdown under 1,000 characters); the PNG is a click away.
    assert metadata["loss_curve"].value.count("data:image/svg+xml,") == 1 and len(metadata["loss_curve"].value) < 1000
    assert "data:image/png;base64," in metadata["loss_curve_png"].value
    assert "peak_gpu_memory_gib" not in metadata  # no GPU: left out, not charted as a null
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(message.startswith("step 1/1: loss") for message in logged)  # forwarded through pipes.log


def test_a_failing_training_process_fails_the_asset_with_its_cause(tiny_llama_dir, splits, tmp_path):
    missing = tmp_path / "no-such-model"
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_training(make_job(missing, splits, tmp_path, max_steps=1), instance)

    assert not result.success
    events = [entry.dagster_event for entry in instance.all_logs(result.run_id) if entry.dagster_event]
    errors = [
        event.event_specific_data.error.to_string()
        for event in events
        if getattr(event.event_specific_data, "error", None) is not None
    ]
    assert any(f"BaseModelError: base model directory {missing} does not exist" in error for error in errors), errors
    assert not (tmp_path / "adapter").exists()


def test_out_of_memory_names_the_profile_and_suggests_smaller_settings(tiny_llama_dir, splits, tmp_path, monkeypatch):
    import torch
    from trl import SFTTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train", out_of_memory)
    job = make_job(tiny_llama_dir, splits, tmp_path, max_steps=1, per_device_train_batch_size=24, profile="h100")
    log, _ = recording_logger("oom")
    with pytest.raises(RuntimeError) as err:
        run.train(job, log)
    message = str(err.value)
    assert message.startswith("CUDA ran out of memory training with profile h100 (batch 24 x accumulation 1")
    assert "t4 profile" in message and "per_device_train_batch_size" in message
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert not (tmp_path / "adapter").exists()


# ---------------------------------------------------------------- reruns that must not loop or overshoot (issue 28)


def copied_checkpoints(first_run, tmp_path) -> Path:
    out, _, _, _ = first_run
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(out / "checkpoints", checkpoints)
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    return checkpoints


def rerun_job(first_run, checkpoints: Path, tmp_path, max_steps: int) -> TrainingJob:
    _, job, _, _ = first_run
    return job.model_copy(update={
        "settings": job.settings.model_copy(update={"max_steps": max_steps}),
        "checkpoint_dir": str(checkpoints),
        "output_dir": str(tmp_path / "adapter"),
        "wandb": job.wandb.model_copy(update={"enabled": False}),
    })


def test_a_rerun_of_a_finished_training_does_not_train_past_max_steps(first_run, tmp_path):
    """The issue's case: the same training rerun with its checkpoints intact resumed checkpoint-3 of 3 and trained a 4th
    step (the Trainer skips into the epoch and stops only after a step). The last checkpoint is a result, not a resume
    point: the rerun resumes the one before it and ends at max_steps."""
    checkpoints = copied_checkpoints(first_run, tmp_path)
    log, lines = recording_logger("finished")
    summary = run.train(rerun_job(first_run, checkpoints, tmp_path, max_steps=3), log)

    assert summary.global_step == 3
    assert Path(summary.resumed_from).name == "checkpoint-2"
    assert [row["step"] for row in summary.loss_per_step] == [1, 2, 3]
    assert any(line.startswith("checkpoint-3 is the end of a finished training (step 3 of max_steps 3)") for line in lines.lines)


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt"])
def test_a_truncated_checkpoint_is_skipped_with_a_message(first_run, tmp_path, damaged):
    """A checkpoint whose weights or optimizer state were cut short (a full disk, a copy that stopped): resuming it failed
    the same way on every rerun. It is skipped, naming the file, for the one before it."""
    checkpoints = copied_checkpoints(first_run, tmp_path)
    path = checkpoints / "checkpoint-3" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    log, lines = recording_logger(f"truncated-{damaged}")
    summary = run.train(rerun_job(first_run, checkpoints, tmp_path, max_steps=4), log)

    assert Path(summary.resumed_from).name == "checkpoint-2" and summary.global_step == 4
    skipped = [line for line in lines.lines if line.startswith(f"checkpoint-3/{damaged} ")]
    assert len(skipped) == 1 and skipped[0].endswith("; skipping it"), lines.lines


def test_an_unreachable_wandb_server_falls_back_to_offline(tiny_llama_dir, splits, tmp_path, monkeypatch):
    """W&B configured (key set, online) but its server refuses connections: was ~100 s of wandb.init retries and then
    "External execution process failed"; now a warning naming the server, and the run logged offline."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "FAKEwandbkey0987654321SECRETFAKEwandbkey")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    job = make_job(tiny_llama_dir, splits, tmp_path, wandb=True, max_steps=1, save_steps=1)
    job = job.model_copy(update={"wandb": job.wandb.model_copy(update={"mode": "online"})})
    log, lines = recording_logger("wandb-unreachable")
    summary = run.train(job, log)

    assert summary.global_step == 1 and summary.wandb is not None and summary.wandb.url is None
    warning = next(line for line in lines.lines if line.startswith("W&B at "))
    assert warning.startswith(f"W&B at http://127.0.0.1:{port} cannot be reached (127.0.0.1:{port}: ")
    assert "logging this run offline" in warning
    assert list(Path(summary.wandb.dir).glob("run-*.wandb"))
