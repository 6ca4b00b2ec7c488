"""Grading during training: the checkpoint kept is the one whose answers grade best (format compliance, then
ROUGE-L), not the one with the lowest eval loss; the grades reach log_history, W&B, the summary and Dagster."""

import threading

import dagster as dg
import pandas as pd
import pytest
import wandb
from safetensors.torch import load_file

from medcot_pipeline import backends
from medcot_pipeline.contracts import TrainingSummary
from medcot_pipeline.evaluation.generation import GeneratedAnswer, GenerationRun
from medcot_pipeline.settings import TrainingSettings
from medcot_pipeline.tagged_output import parse_tagged_output
from medcot_pipeline.training import distributed, grading, run
from medcot_pipeline_tests.pipeline_harness import step_errors
from medcot_pipeline_tests.test_distributed import TRAINING_MODULE, our_training_ranks
from medcot_pipeline_tests.test_training import materialize_training, make_job, recording_logger, splits  # noqa: F401

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def answer(text: str) -> GeneratedAnswer:
    return GeneratedAnswer(question="q", text=text, parsed=parse_tagged_output(text), truncated=False, new_tokens=10, continued=False)


def tagged(response: str) -> str:
    return f"<think>reasoning</think><response>{response}</response>"


def test_compliance_comes_first_and_rouge_breaks_ties():
    references = ["the right coronary artery", "start ceftriaxone now"]
    well_formed_off_topic = grading.grade_answers([answer(tagged("no idea")), answer(tagged("maybe"))], references)
    well_formed_on_topic = grading.grade_answers([answer(tagged(r)) for r in references], references)
    half_formed_on_topic = grading.grade_answers([answer(tagged(references[0])), answer(references[1])], references)

    assert (well_formed_on_topic.format_compliance, well_formed_on_topic.rouge_l_response) == (1.0, 1.0)
    assert half_formed_on_topic.format_compliance == 0.5 and half_formed_on_topic.rouge_l_response == 1.0
    assert well_formed_off_topic.format_compliance == 1.0 and well_formed_off_topic.rouge_l_response == 0.0
    # One more well-formed answer outweighs any ROUGE-L, even all against none; between equally well-formed sets,
    # ROUGE-L decides.
    assert well_formed_on_topic.grade > well_formed_off_topic.grade > half_formed_on_topic.grade
    assert well_formed_on_topic.as_metrics() == {
        "eval_format_compliance": 1.0, "eval_rouge_l_response": 1.0, "eval_truncation_rate": 0.0, "eval_grade": round(1 + 1 / 3, 6),
        "eval_grading_seconds": 0.0,
    }


def test_the_questions_are_a_fixed_seeded_sample_in_split_order():
    frame = pd.DataFrame({"question": [f"q{i}" for i in range(40)], "response": [f"r{i}" for i in range(40)], "target": "t"})
    picked = grading.grading_questions(frame, 16, seed=3407)
    assert len(picked) == 16 and picked.equals(grading.grading_questions(frame, 16, seed=3407))
    assert list(picked.columns) == ["question", "response"]
    numbers = [int(q[1:]) for q in picked["question"]]
    assert numbers == sorted(numbers) and numbers != list(range(16))  # a sample, not the head
    assert not picked.equals(grading.grading_questions(frame, 16, seed=1))
    assert len(grading.grading_questions(frame.head(3), 16, seed=3407)) == 3
    with pytest.raises(ValueError, match="response"):
        grading.grading_questions(frame.drop(columns="response"), 4, seed=0)


def test_checkpoints_must_fall_on_graded_steps():
    with pytest.raises(ValueError, match=r"save_steps \(4\) must be a multiple of eval_steps \(6\)"):
        TrainingSettings(eval_steps=6, save_steps=4)
    TrainingSettings(eval_steps=6, save_steps=4, grade_questions=0)
    TrainingSettings(eval_steps=6, save_steps=12)
    TrainingSettings(eval_steps=None, save_steps=4)


@pytest.mark.parametrize("backend, mode_while_answering", [(backends.TRANSFORMERS, "eval"), (backends.UNSLOTH, "train")])
def test_grading_switches_train_mode_unless_the_backend_generate_does(backend, mode_while_answering):
    """transformers + PEFT answers in eval mode (no dropout) and trains on afterwards; Unsloth's generate switches
    the mode itself, so grading leaves it alone (its inference patches would survive a bare model.train())."""
    import torch

    seen = []

    def record_mode(model, tokenizer, questions, config, **kwargs):
        seen.append("train" if model.training else "eval")
        return GenerationRun(answers=[answer(tagged("r")) for _ in questions], wall_seconds=0.1, total_new_tokens=10)

    questions = pd.DataFrame({"question": ["q"], "response": ["r"]})
    callback = grading.GradingCallback(None, questions, grading.generation_settings(TrainingSettings()), backend=backend, answer=record_mode)
    model = torch.nn.Linear(2, 2).train()
    assert len(callback._answer(model, None, ["q"])) == 1
    assert seen == [mode_while_answering] and model.training


class ScriptedAnswers:
    """Answers each evaluation from a script, in order; the validation references are known to the script."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def __call__(self, model, tokenizer, questions, config, **kwargs):
        assert not model.training, "grading must generate in eval mode"
        assert config.do_sample is False and config.continuation_tokens == 0
        texts = self.script[self.calls](questions)
        self.calls += 1
        return GenerationRun(answers=[answer(t) for t in texts], wall_seconds=0.1, total_new_tokens=10 * len(texts))


def test_the_best_graded_checkpoint_is_kept_when_eval_loss_disagrees(tiny_llama_dir, splits, tmp_path, monkeypatch):  # noqa: F811
    references = pd.read_parquet(splits / "validation.parquet")["response"].tolist()
    script = ScriptedAnswers([
        lambda qs: ["no tags at all"] * len(qs),  # step 1: nothing well formed
        lambda qs: [tagged(r) for r in references],  # step 2: all well formed, the references' words
        lambda qs: [tagged(references[0]), "no tags"],  # step 3: half well formed
        lambda qs: [tagged("unrelated words")] * len(qs),  # step 4: all well formed, off topic
    ])
    monkeypatch.setattr(grading, "generate_answers", script)
    # What transformers' WandbCallback sends to the (offline) W&B run, which offers no reader for its file.
    # (wandb.init rebinds wandb.log to the new run's log, so the spy sits on the Run class.)
    logged, send = [], wandb.Run.log

    def recording_log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return send(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", recording_log)
    job = make_job(
        tiny_llama_dir, splits, tmp_path, max_steps=4, eval_steps=1, save_steps=1, learning_rate=5e-3,
        grade_questions=2, wandb=True,
    )
    log, lines = recording_logger("kept")
    summary = run.train(job, log)

    assert script.calls == 4
    graded = {row["step"]: row for row in summary.graded_steps}
    assert sorted(graded) == [1, 2, 3, 4]
    assert [graded[s]["format_compliance"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.5, 1.0]
    assert graded[2]["rouge_l_response"] == 1.0 and graded[4]["rouge_l_response"] < 0.2
    # Training lowered eval loss, so loss alone would have kept a later step than the grading does.
    losses = {row["step"]: row["eval_loss"] for row in summary.eval_losses}
    assert min(losses, key=losses.get) != 2 and graded[4]["eval_loss"] < graded[2]["eval_loss"]
    assert summary.kept_step == 2 and summary.global_step == 4 and summary.graded_questions == 2
    assert summary.kept_by.startswith("grade: format compliance, then ROUGE-L")
    assert TrainingSummary.read(tmp_path / "adapter") == summary
    assert "kept the checkpoint of step 2 (best graded), not the last step 4" in lines.lines
    assert any(line.startswith("step 2/4: 2 validation questions answered, format compliance 100.0%") for line in lines.lines)

    # The adapter saved is checkpoint 2's (which save_total_limit=2 spared), not the last step's.
    saved = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    kept = load_file(tmp_path / "checkpoints" / "checkpoint-2" / ADAPTER_WEIGHTS)
    last = load_file(tmp_path / "checkpoints" / "checkpoint-4" / ADAPTER_WEIGHTS)
    assert saved.keys() == kept.keys()
    assert all((saved[k] == kept[k]).all() for k in saved)
    assert any((saved[k] != last[k]).any() for k in saved)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # W&B got the grades at their steps, as eval/format_compliance and eval/rouge_l_response next to eval/loss.
    compliance = {row["train/global_step"]: row["eval/format_compliance"] for row in logged if "eval/format_compliance" in row}
    assert compliance == {1: 0.0, 2: 1.0, 3: 0.5, 4: 1.0}
    assert sorted(row["train/global_step"] for row in logged if "eval/rouge_l_response" in row) == [1, 2, 3, 4]
    assert sorted(row["train/global_step"] for row in logged if "eval/loss" in row) == [1, 2, 3, 4]


def test_real_answers_are_graded_at_each_evaluation_and_reach_dagster(tiny_llama_dir, splits, tmp_path):  # noqa: F811
    """The whole path with generate_answers itself, through the Pipes process, on the tiny random Llama."""
    job = make_job(tiny_llama_dir, splits, tmp_path, max_steps=2, eval_steps=1, save_steps=1, grade_questions=2, grade_max_new_tokens=6)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_training(job, instance)
    assert result.success

    summary = TrainingSummary.read(tmp_path / "adapter")
    assert [row["step"] for row in summary.graded_steps] == [1, 2]
    for row in summary.graded_steps:
        assert set(row) == {"step", "eval_loss", "format_compliance", "rouge_l_response", "truncation_rate", "grade", "grading_seconds"}
        assert 0.0 <= row["format_compliance"] <= 1.0 and 0.0 <= row["rouge_l_response"] <= 1.0
    # The kept step is the best grade, the earlier one on a tie (the Trainer needs a strictly better grade).
    best = max(summary.graded_steps, key=lambda row: (row["grade"], -row["step"]))
    assert summary.kept_step == best["step"]
    saved = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    kept = load_file(tmp_path / "checkpoints" / f"checkpoint-{best['step']}" / ADAPTER_WEIGHTS)
    assert all((saved[k] == kept[k]).all() for k in saved)

    [materialization] = result.asset_materializations_for_node("lora_adapter")
    metadata = materialization.metadata
    rows = [record.data for record in metadata["graded_steps"].value.records]
    assert [(r["step"], r["kept"]) for r in rows] == [(s, s == best["step"]) for s in (1, 2)]
    assert all(r["eval_loss"] > 0 and r["format_compliance"] is not None for r in rows)
    assert metadata["kept_step"].value == best["step"]
    assert metadata["kept_rouge_l"].value == pytest.approx(best["rouge_l_response"], rel=1e-3)
    assert metadata["kept_compliance"].value == pytest.approx(best["format_compliance"], rel=1e-3)
    assert "| graded questions | 2 |" in metadata["training"].value
    assert "| checkpoint kept by | grade: format compliance, then ROUGE-L (response), on 2 validation questions |" in metadata["training"].value


def test_two_gloo_processes_grade_their_share_and_keep_the_same_step(tiny_llama_dir, splits, tmp_path):  # noqa: F811
    """Data-parallel grading: each rank answers its share, all gather the same answers and keep the same step
    (run.train checks it), and nothing waits forever in a collective while another rank generates."""
    extras = make_job(
        tiny_llama_dir, splits, tmp_path, max_steps=2, eval_steps=1, save_steps=1, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, grade_questions=2, grade_max_new_tokens=6,
    ).model_dump(mode="json")

    @dg.asset
    def lora_adapter(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        return pipes.run(
            command=distributed.launch_command(2, TRAINING_MODULE), context=context, extras=extras,
            env=distributed.launch_env(2, tmp_path / "failure.json"),
        ).get_materialize_result()

    # A deadlock would hang the test: end our ranks after a generous bound, so it fails instead.
    hung: dict = {}
    watchdog = threading.Timer(420, lambda: hung.update({rank: p.kill() for rank, p in our_training_ranks().items()}))
    watchdog.start()
    try:
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([lora_adapter], resources={"pipes": dg.PipesSubprocessClient()}, instance=instance, raise_on_error=False)
    finally:
        watchdog.cancel()
    assert not hung, f"ranks {sorted(hung)} were still running after 420 s"
    assert result.success, step_errors(instance, result.run_id)

    summary = TrainingSummary.read(tmp_path / "adapter")
    assert summary.processes == 2
    assert [row["step"] for row in summary.graded_steps] == [1, 2] and summary.graded_questions == 2
    best = max(summary.graded_steps, key=lambda row: (row["grade"], -row["step"]))
    assert summary.kept_step == best["step"]
    saved = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    kept = load_file(tmp_path / "checkpoints" / f"checkpoint-{best['step']}" / ADAPTER_WEIGHTS)
    assert all((saved[k] == kept[k]).all() for k in saved)
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum("2 validation questions answered" in m for m in messages) == 2  # rank 0's log, once per evaluation


def test_the_merged_copy_answers_as_the_model_being_trained(tiny_llama_dir):
    """The grading copy (base weights + PEFT's merged LoRA deltas, a stock model) gives the training model's greedy
    answers, and follows the LoRA weights as they change between gradings without being rebuilt."""
    import torch

    from medcot_pipeline.backends.hf_peft import lora_model_for_training
    from medcot_pipeline.base_models import load_tokenizer
    from medcot_pipeline.evaluation.generation import generate_answers

    settings = TrainingSettings(backend="transformers", load_in_4bit=False, lora_dropout=0.0, lora_r=4, lora_alpha=8)
    model = lora_model_for_training(str(tiny_llama_dir), settings, 256)
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    questions = ["Which artery supplies the inferior wall?", "What treats croup?"]
    config = grading.generation_settings(settings.model_copy(update={"grade_questions": 2, "grade_max_new_tokens": 12}))
    copy = grading.MergedCopy()
    assert grading.MergedCopy.supports(model)

    built = None
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:  # B starts at zero; a trained adapter's is not
                    parameter.normal_(0, 0.5)
        model.eval()
        expected = [a.text for a in generate_answers(model, tokenizer, questions, config).answers]
        got = [a.text for a in copy(model, tokenizer, questions, config).answers]
        assert got == expected
        built = built or copy.copy
        assert copy.copy is built  # refreshed in place, never rebuilt: a compiled decode step stays valid
    assert not grading.MergedCopy.supports(model.get_base_model().model.embed_tokens)  # no LoRA layer in it


@pytest.mark.parametrize("backend, kv_cache", [(backends.TRANSFORMERS, "static"), (backends.UNSLOTH, "dynamic")])
def test_the_merged_copy_keeps_a_static_cache_unless_the_backend_patches_every_model(backend, kv_cache, monkeypatch):
    """Unsloth's patches reach the plain copy's forward too, and it decodes with its own cache: no static cache then."""
    from medcot_pipeline.settings import GenerationSettings

    copy, seen = grading.MergedCopy(backend=backend), []
    monkeypatch.setattr(copy, "_answer_with_copy", lambda model, tokenizer, questions, config, **kw: seen.append(config.kv_cache) or "answered")
    config = GenerationSettings(batch_size=1, max_new_tokens=4, continuation_tokens=0, kv_cache="static")
    assert copy(None, None, ["q"], config) == "answered"
    assert seen == [kv_cache]


def test_a_copy_that_cannot_answer_hands_back_to_the_training_model(tiny_llama_dir, caplog):
    """A copy that cannot be built (here its build raises, as a class patched by Unsloth might) says so once, and the
    model being trained answers that grading and every later one."""
    import logging

    from transformers import AutoModelForCausalLM

    from medcot_pipeline.base_models import load_tokenizer
    from medcot_pipeline.evaluation.generation import generate_answers
    from medcot_pipeline.settings import GenerationSettings

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    config = GenerationSettings(batch_size=1, max_new_tokens=4, continuation_tokens=0)
    copy = grading.MergedCopy(log=logging.getLogger("grading-test"))

    def cannot_build(*args):
        raise RuntimeError("no LoRA layer to merge")

    copy._build = cannot_build
    expected = [a.text for a in generate_answers(model, tokenizer, ["What treats croup?"], config).answers]
    with caplog.at_level(logging.WARNING, logger="grading-test"):
        for _ in range(2):
            assert [a.text for a in copy(model, tokenizer, ["What treats croup?"], config).answers] == expected
    assert copy.failed == "RuntimeError: no LoRA layer to merge"
    assert [r.getMessage() for r in caplog.records].count(
        "the merged grading copy could not answer (RuntimeError: no LoRA layer to merge); the training model answers instead") == 1
