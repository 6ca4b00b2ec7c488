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
from medcot_pipeline.configs import TrainingConfig
from medcot_pipeline.training import run

MAX_SEQ_LENGTH = 128  # every prompt of the rows used is shorter, so each example keeps completion tokens


@pytest.fixture(scope="module")
def splits(real_records_path, tmp_path_factory) -> dict[str, str]:
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
    return {"train_file": str(folder / "train.parquet"), "validation_file": str(folder / "validation.parquet")}


def make_extras(base_model, splits, out: Path, *, wandb=False, **training) -> dict:
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
    )
    settings.update(training)
    return {
        "base_model": str(base_model),
        **splits,
        "output_dir": str(out / "adapter"),
        "checkpoint_dir": str(out / "checkpoints"),
        "max_seq_length": MAX_SEQ_LENGTH,
        "training": TrainingConfig(**settings).model_dump(),
        "wandb": {
            "enabled": wandb,
            "mode": "offline",
            "project": "medcot-tests",
            "entity": None,
            "dir": str(out / "wandb"),
            "run_name": "test-run",
        },
    }


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
    extras = make_extras(tiny_llama_dir, splits, out, wandb=True, max_steps=3, save_steps=2, eval_steps=2)
    log, lines = recording_logger("first")
    return out, extras, run.train(extras, log), lines.lines


def test_train_saves_the_adapter_with_losses_and_an_offline_wandb_run(first_run):
    out, extras, summary, lines = first_run

    adapter = out / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", run.SUMMARY_FILE):
        assert (adapter / name).is_file(), name
    assert (adapter / run.LOSS_CURVE_FILE).read_bytes().startswith(b"\x89PNG")
    assert json.loads((adapter / run.SUMMARY_FILE).read_text())["global_step"] == 3
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left behind

    assert summary["global_step"] == 3 and summary["resumed_from"] is None
    assert [row["step"] for row in summary["loss_per_step"]] == [1, 2, 3]
    assert all(row["loss"] > 0 and row["tokens_per_second"] > 0 for row in summary["loss_per_step"])
    # Evaluated at step 2 by schedule and once more after the last step.
    assert [row["step"] for row in summary["eval_losses"]] == [2, 3]
    assert summary["eval_loss_final"] == summary["eval_losses"][-1]["eval_loss"] > 0
    assert summary["tokens_seen"] > 0 and summary["peak_gpu_memory_gib"] is None
    assert "no checkpoint, starting fresh" in lines
    assert any(line.startswith("step 3/3: loss") for line in lines)

    wandb_dir = Path(summary["wandb"]["dir"])
    assert wandb_dir.is_relative_to(out / "wandb") and list(wandb_dir.glob("run-*.wandb"))


def test_prompt_tokens_are_masked_and_the_assistant_turn_is_trained(tiny_llama_dir, splits, tmp_path):
    from medcot_pipeline.training.backends import load_model_for_training
    from medcot_pipeline.training.sft_data import read_split, to_training_dataset
    from medcot_pipeline.training.trainer import build_sft_config, build_trainer

    config = TrainingConfig(backend="transformers", lora_r=4, per_device_train_batch_size=2)
    model, tokenizer, backend = load_model_for_training(str(tiny_llama_dir), config, 2048)
    assert backend == "transformers" and tokenizer.padding_side == "right"
    dataset = to_training_dataset(tokenizer, read_split(splits["train_file"]))
    sft_config = build_sft_config(config, str(tmp_path), 2048, has_eval=False, report_to=[])
    assert sft_config.optim == "adamw_torch"  # adamw_8bit needs bitsandbytes on CUDA
    trainer = build_trainer(model, tokenizer, dataset, None, sft_config, [])

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
    out, extras, _, _ = first_run
    # A copy of the first run's checkpoints, as if it had been killed while saving step 3.
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(out / "checkpoints", checkpoints)
    (checkpoints / "checkpoint-3" / "trainer_state.json").unlink()

    log, lines = recording_logger("resume")
    training = {**extras["training"], "max_steps": 4}
    rerun = {**extras, "training": training, "checkpoint_dir": str(checkpoints), "output_dir": str(tmp_path / "adapter")}
    rerun["wandb"] = {**extras["wandb"], "enabled": False}
    summary = run.train(rerun, log)

    assert "resuming from checkpoint-2" in lines.lines
    assert any("checkpoint-3 has no trainer_state.json" in line for line in lines.lines)
    assert Path(summary["resumed_from"]).name == "checkpoint-2"
    assert summary["global_step"] == 4
    # Steps 1-2 come back from the checkpoint's history; this process trained and timed steps 3-4.
    rows = summary["loss_per_step"]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [("elapsed_s" in row) for row in rows] == [False, False, True, True]
    assert summary["tokens_seen"] > summary["tokens_this_run"] > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_an_interrupted_checkpoint_is_skipped(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    log, lines = recording_logger("skip")
    assert run.last_complete_checkpoint(tmp_path, log) == str(tmp_path / "checkpoint-4")
    assert any("checkpoint-6" in line for line in lines.lines)
    assert run.last_complete_checkpoint(tmp_path / "missing", log) is None


def test_extras_missing_a_key_name_it(tiny_llama_dir, splits, tmp_path):
    extras = make_extras(tiny_llama_dir, splits, tmp_path)
    del extras["checkpoint_dir"]
    with pytest.raises(ValueError, match="'checkpoint_dir' is missing"):
        run.validate_extras(extras)
    extras = make_extras(tiny_llama_dir, splits, tmp_path, wandb=True)
    extras["wandb"]["mode"] = "cloud"
    with pytest.raises(ValueError, match="wandb.mode"):
        run.validate_extras(extras)


def test_the_entry_point_imports_no_library_that_unsloth_must_precede():
    code = (
        "import sys, medcot_pipeline.training.run; "
        "print([m for m in ('transformers', 'trl', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def materialize_training(extras: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        return pipes.run(
            command=[sys.executable, "-m", "medcot_pipeline.training.run"], context=context, extras=extras
        ).get_materialize_result()

    return dg.materialize(
        [lora_adapter], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False
    )


def test_training_runs_as_a_pipes_subprocess(tiny_llama_dir, splits, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_training(make_extras(tiny_llama_dir, splits, tmp_path, max_steps=1, save_steps=1), instance)

    assert result.success
    [materialization] = result.asset_materializations_for_node("lora_adapter")
    metadata = materialization.metadata
    assert metadata["train_loss_final"].value > 0
    assert metadata["eval_loss_final"].value > 0
    assert metadata["backend"].value == "transformers"
    assert [record.data["step"] for record in metadata["loss_per_step"].value.records] == [1]
    assert "data:image/png;base64," in metadata["loss_curve"].value
    assert metadata["peak_gpu_memory_gib"].value is None
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(message.startswith("step 1/1: loss") for message in logged)  # forwarded through pipes.log


def test_a_failing_training_process_fails_the_asset_with_its_cause(tiny_llama_dir, splits, tmp_path):
    missing = tmp_path / "no-such-model"
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_training(make_extras(missing, splits, tmp_path, max_steps=1), instance)

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
    extras = {**make_extras(tiny_llama_dir, splits, tmp_path, max_steps=1, per_device_train_batch_size=24), "profile": "h100"}
    log, _ = recording_logger("oom")
    with pytest.raises(RuntimeError) as err:
        run.train(extras, log)
    message = str(err.value)
    assert message.startswith("CUDA ran out of memory training with profile h100 (batch 24 x accumulation 1")
    assert "t4 profile" in message and "per_device_train_batch_size" in message
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert not (tmp_path / "adapter").exists()
