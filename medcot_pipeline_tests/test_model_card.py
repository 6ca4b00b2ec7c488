"""The model card states the report's numbers, the safety statement, the gate's decision and the lineage, survives a
round trip, and, built from a real tiny run's artifacts, states only facts those artifacts hold."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from medcot_pipeline.contracts import BaseModelRef, DatasetProvenance
from medcot_pipeline.release.model_card import ReleaseFacts, build_adapter_card, build_model_card
from medcot_pipeline.settings import EvaluationSettings, TrainingSettings
from medcot_pipeline_tests.contract_factories import evaluation_report, scores, training_summary


def facts(training=None, evaluation=None, **overrides) -> ReleaseFacts:
    values = dict(
        repo_id="clinic-ml/medcot-llama-3.2-3b",
        license="llama3.2",
        training=training or training_summary(),
        evaluation=evaluation or evaluation_report(),
        code_version={"lora_adapter": "a1b2c3d4e5f6", "hub_release": "0f9e8d7c6b5a"},
        adapter_location="adapter/",
    )
    values.update(overrides)
    return ReleaseFacts(**values)


def table_row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no table row {label!r}")


def test_metadata_and_model_index_carry_the_report_numbers():
    card = build_model_card(facts())
    data = card.data

    assert data.base_model == "meta-llama/Llama-3.2-3B-Instruct"
    assert data.datasets == ["FreedomIntelligence/medical-o1-reasoning-SFT"]
    assert (data.license, data.language, data.library_name, data.pipeline_tag) == ("llama3.2", "en", "transformers", "text-generation")
    assert {"medical", "lora", "unsloth", "trl"} <= set(data.tags)  # the factory's summary trained with Unsloth

    scores = {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert scores == {
        ("rouge", "ROUGE-L F1 (response)"): 0.3188,
        ("rouge", "ROUGE-L F1 (think + response)"): 0.2741,
        ("format_compliance", "Format compliance"): 0.96,
        ("truncation_rate", "Truncation rate"): 0.03,
        ("accuracy", "Multiple-choice accuracy"): 0.58,
    }
    result = data.eval_results[0]
    assert result.dataset_type == "FreedomIntelligence/medical-o1-reasoning-SFT"
    assert result.dataset_revision == "fc2c9e8f37b5d1a8c8f3d5a0e7e1c3b2a9d4f6e7" and result.dataset_config == "en"
    assert "100 questions held out of training" in result.dataset_name
    # Held out of the Hub's only split, train: naming that split would say the model was scored on training data.
    assert all(r.dataset_split is None for r in data.eval_results) and "split: train" not in str(card)
    accuracy = next(r for r in data.eval_results if r.metric_type == "accuracy")
    assert accuracy.task_type == "multiple-choice" and "60 multiple-choice questions held out of training" in accuracy.dataset_name
    assert data.to_dict()["model-index"][0]["name"] == "clinic-ml/medcot-llama-3.2-3b"


def test_results_table_compares_base_and_fine_tuned():
    text = build_model_card(facts()).text

    # Without intervals in the report (an older report), the change stands alone and says so.
    assert table_row(text, "ROUGE-L F1, `<response>` only") == ["higher", "0.182", "0.319", "+0.136", "no interval"]
    assert table_row(text, "Cut off before `</response>`") == ["lower", "11.0%", "3.0%", "-8.0 pts", "no interval"]
    assert table_row(text, "Multiple-choice accuracy (option log-likelihood) (n=60)") == ["higher", "55.0%", "58.0%", "+3.0 pts", "no interval"]

    # With them, each change carries its 95% interval and the verdict the interval gives, not the point estimate.
    from medcot_pipeline.evaluation.paired_stats import compare

    rng = np.random.default_rng(0)
    base_rouge = rng.random(100) * 0.3
    report = evaluation_report(comparisons=[
        compare("rouge_l_response", "ROUGE-L", base_rouge + 0.136 + rng.normal(0, 0.02, 100), base_rouge),
        compare("mc_accuracy", "MC", [1.0] * 35 + [0.0] * 25, [1.0] * 33 + [0.0] * 27, right_or_wrong=True),
    ])
    text = build_model_card(facts(evaluation=report)).text
    rouge = table_row(text, "ROUGE-L F1, `<response>` only")
    assert re.fullmatch(r"\+0\.136 \[\+0\.1\d\d, \+0\.1\d\d\]", rouge[3]) and rouge[4] == "better"
    assert table_row(text, "Multiple-choice accuracy (option log-likelihood) (n=60)")[4] == "no detectable change"
    assert "straddles zero" in text  # how to read an interval, beside the table
    assert "100 questions held out of training" in text
    # The real limit: the new tokens and the continuation an open answer gets (the factory's report: 1024 + 512).
    assert "with greedy decoding, up to 1024 new tokens, + 512 for an answer still open (1536 in all)" in text


def test_multiple_choice_is_explained_with_its_n_and_other_models_as_context():
    text = build_model_card(facts()).text
    assert "60 of the held-out questions are MedQA-style multiple choice" in text
    assert "log-likelihood" in text and "`medqa_4options`" in text and "one question moves it by 1.7 points" in text
    context = next(line for line in text.splitlines() if "For context only" in line)
    assert "Llama-3.1-8B-Instruct 58.7%" in context and "HuatuoGPT-o1-8B 72.6%" in context
    assert "not this model's scores" in context

    unmeasured = evaluation_report(fine_tuned=scores(mc_accuracy=None, mc_n=0), base=scores(mc_accuracy=None, mc_n=0))
    text = build_model_card(facts(evaluation=unmeasured)).text
    assert "Multiple-choice accuracy was not measured" in text and "58.7" not in text
    assert "Multiple-choice accuracy (option" not in text  # no table row either


def test_card_says_it_is_not_a_medical_device():
    text = build_model_card(facts()).text.lower()
    assert "not a medical device" in text
    assert "not for clinical decisions" in text
    assert "## intended use" in text and "## limitations" in text


def test_training_hardware_and_lineage():
    text = build_model_card(facts()).text

    assert table_row(text, "LoRA rank r") == ["16"] and table_row(text, "LoRA alpha") == ["32"]
    assert table_row(text, "Learning rate") == ["1e-05"] and table_row(text, "Optimizer steps") == ["200"]
    assert table_row(text, "Gradient accumulation steps") == ["8"]
    assert table_row(text, "Max sequence length (tokens)") == ["2048"]
    assert table_row(text, "LoRA target modules") == ["q_proj, v_proj"]
    assert table_row(text, "Profile") == ["t4"] and table_row(text, "Training backend") == ["unsloth"]
    assert "4-bit NF4 (QLoRA) base weights, Unsloth and TRL" in text
    assert "Hardware: NVIDIA H100 80GB HBM3. Training wall time: 1 h 02 min." in text
    assert table_row(text, "`lora_adapter`") == ["`a1b2c3d4e5f6`"]
    assert table_row(text, "`hub_release`") == ["`0f9e8d7c6b5a`"]
    assert "revision `fc2c9e8f37b5d1a8c8f3d5a0e7e1c3b2a9d4f6e7`" in text
    assert "https://wandb.ai/clinic-ml/medcot/runs/abc123" in text
    assert table_row(text, "Final validation loss") == ["1.340"]  # measured: three decimals, as every loss on the card


def test_round_trip_through_model_card():
    card = build_model_card(facts())
    again = ModelCard(str(card))

    assert again.data.to_dict() == card.data.to_dict()
    assert again.text == card.text
    assert [r.metric_value for r in again.data.eval_results] == [r.metric_value for r in card.data.eval_results]


def test_local_sources_stay_out_of_hub_metadata(tmp_path):
    from medcot_pipeline.base_models import EMBEDDED_SMOLLM2
    from medcot_pipeline.contracts import WandbRun

    summary = training_summary(
        base_model=BaseModelRef(name=EMBEDDED_SMOLLM2, reference=str(tmp_path / "smollm2")),
        dataset=DatasetProvenance(source="sample", location="/site-packages/medcot_pipeline/sample_data/x.jsonl",
                                  format="jsonl", records=40, content_sha256="c" * 64),
        backend="transformers", base_weights="float32", hardware="CPU (x86_64)", wall_time_seconds=75.0,
        wandb=WandbRun(run_path="medcot/offline-run-1", url=None, dir=str(tmp_path / "wandb" / "offline-run-1")),
    )
    report = evaluation_report(n=8, fine_tuned=scores(rouge_l_response=0.1, mc_accuracy=None, mc_n=0), base=None)
    card = build_model_card(facts(training=summary, evaluation=report, adapter_location=None))
    again = ModelCard(str(card))

    assert again.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert again.data.datasets is None  # not a Hub dataset id
    assert again.data.eval_results is None  # the model-index names a dataset by Hub id; the sample has none
    assert table_row(card.text, "ROUGE-L F1, `<response>` only") == ["higher", "n/a", "0.100", "", ""]
    assert "float32 base weights, TRL and PEFT" in card.text and "unsloth" not in again.data.tags
    # An offline W&B run is a directory on the training machine: said, never published.
    assert "logged to Weights & Biases offline" in card.text and "offline-run-1" not in card.text and str(tmp_path) not in str(card)
    assert "Hardware: CPU (x86_64). Training wall time: 1 min 15 s." in card.text
    assert "the LoRA adapter is not" in card.text

    checkpoint = tmp_path / "my-base"
    local = build_model_card(facts(training=training_summary(base_model=BaseModelRef(name=str(checkpoint), reference=str(checkpoint)))))
    assert local.data.base_model is None and "`my-base` (a local checkpoint)" in local.text  # its name, not its path
    assert 'from_pretrained("path/to/my-base"' in local.text and str(tmp_path) not in str(local)


def test_adapter_location_is_explained():
    subfolder = build_model_card(facts(adapter_bytes=78_412_345)).text
    assert 'PeftModel.from_pretrained(base, "clinic-ml/medcot-llama-3.2-3b", subfolder="adapter")' in subfolder
    assert "The adapter alone (78.4 MB) is in the `adapter/` folder of this repository" in subfolder

    separate = build_model_card(facts(adapter_location="clinic-ml/medcot-llama-3.2-3b-lora")).text
    assert "https://huggingface.co/clinic-ml/medcot-llama-3.2-3b-lora" in separate
    assert 'PeftModel.from_pretrained(base, "clinic-ml/medcot-llama-3.2-3b-lora")' in separate

    adapter_card = build_adapter_card(build_model_card(facts()), "clinic-ml/medcot-llama-3.2-3b-lora")
    assert adapter_card.data.library_name == "peft"
    assert adapter_card.data.base_model == "meta-llama/Llama-3.2-3B-Instruct"
    assert "not a medical device" in adapter_card.text


def test_usage_snippet_runs_and_splits_the_tags(tiny_llama_dir):
    """The card's Python snippet, run as written against a local tiny Llama instead of the Hub repo."""
    text = build_model_card(facts()).text
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    snippet = snippet.replace('"clinic-ml/medcot-llama-3.2-3b"', repr(str(tiny_llama_dir)))
    snippet = snippet.replace("max_new_tokens=1024", "max_new_tokens=4")
    scope = {}
    exec(compile(snippet, "model_card_usage", "exec"), scope)
    assert isinstance(scope["reasoning"], str) and isinstance(scope["answer"], str)

    tagged = "<think>K+ shifts the resting potential</think><response>Hyperkalaemia</response>"
    split = "reasoning = text.split", "answer = text.split"
    lines = [line for line in snippet.splitlines() if line.startswith(split)]
    scope = {"text": tagged}
    exec("\n".join(lines), scope)
    assert (scope["reasoning"], scope["answer"]) == ("K+ shifts the resting potential", "Hyperkalaemia")


def test_card_states_the_n_behind_each_score():
    text = build_model_card(facts()).text
    assert "n = 100 answers per model for ROUGE-L, well-formed output and cut-off; n = 60 questions with answer options" in text
    without_options = evaluation_report(fine_tuned=scores(mc_accuracy=None, mc_n=0), base=scores(mc_accuracy=None, mc_n=0))
    assert "n = 100 answers per model for ROUGE-L, well-formed output and cut-off." in build_model_card(facts(evaluation=without_options)).text


def test_card_states_which_step_was_kept_and_why():
    graded = [
        {"step": 50, "eval_loss": 1.29, "format_compliance": 0.25, "rouge_l_response": 0.11, "truncation_rate": 0.75, "grade": 0.26},
        {"step": 150, "eval_loss": 1.35, "format_compliance": 0.9375, "rouge_l_response": 0.312, "truncation_rate": 0.0625, "grade": 0.95},
        {"step": 200, "eval_loss": 1.34, "format_compliance": 0.875, "rouge_l_response": 0.35, "truncation_rate": 0.125, "grade": 0.90},
    ]
    summary = training_summary(graded_steps=graded, graded_questions=16, kept_step=150, kept_by="grade: format compliance, then ROUGE-L")
    text = build_model_card(facts(training=summary)).text

    assert table_row(text, "Step kept") == ["150"] and table_row(text, "Steps trained") == ["200"]
    assert (
        "The weights are those of step 150 of 200: at each evaluation (steps 50, 150, 200) the model answered the same "
        "16 validation questions, and this checkpoint's answers graded best, with format compliance 93.8% and "
        "ROUGE-L (response) 0.312, validation loss 1.350."
    ) in " ".join(text.split())
    assert "not by validation loss" in text
    # Every evaluation's grades, the kept one marked: compliance over the steps, in the card itself.
    assert table_row(text, "50") == ["1.290", "25.0%", "0.110", "75.0%"]
    assert table_row(text, "**150** (kept)") == ["1.350", "93.8%", "0.312", "6.2%"]
    assert table_row(text, "200") == ["1.340", "87.5%", "0.350", "12.5%"]
    assert "`eval/format_compliance`" in text  # where the W&B run shows compliance over the steps

    ungraded = build_model_card(facts()).text
    assert "The weights are those of the last training step (200); checkpoints were not graded during training." in ungraded
    assert "eval/format_compliance" not in ungraded


def test_a_resumed_finished_checkpoint_is_not_a_step_further():
    """A rerun that resumed from the checkpoint of a finished run: its weights are that run's last step, never
    "step 12 of 13", whatever step counter the trainer ended on."""
    graded = [{"step": 12, "eval_loss": 2.19381, "format_compliance": 0.75, "rouge_l_response": 0.2, "truncation_rate": 0.25, "grade": 0.8}]
    for global_step in (12, 13):
        summary = training_summary(
            settings=TrainingSettings(max_steps=12, eval_steps=12, save_steps=12), global_step=global_step,
            resumed_from="/artifacts/lora_adapter/checkpoints/abc/checkpoint-12", graded_steps=graded,
            graded_questions=4, kept_step=12,
        )
        text = " ".join(build_model_card(facts(training=summary)).text.split())
        assert "step 12 of 13" not in text and "The weights are those of step 12 of 12" in text
        assert "resumed from checkpoint-12, which had already finished the 12 planned steps" in text
        assert "2.19381" not in text and "validation loss 2.194" in text


def test_the_release_gate_decision_is_on_the_card():
    from medcot_pipeline.evaluation.release_gate import decide

    # The factory's report has no intervals and no benchmark report beside it: the gate fails on missing evidence.
    failed = build_model_card(facts()).text
    assert "**❌ Release gate FAILED: hub_release is blocked**" in failed
    assert table_row(failed, "format compliance (fine-tuned)") == [">= 0.900", "0.960", "pass", ""]
    assert table_row(failed, "cut-off rate (fine-tuned)") == ["<= 0.100", "0.030", "pass", ""]

    passing = evaluation_report(settings=EvaluationSettings(gate_rouge_l_lower_bound=None, gate_accuracy_lower_bound=None))
    assert "**✅ Release gate PASSED**" in build_model_card(facts(evaluation=passing)).text

    off = evaluation_report(settings=EvaluationSettings(gate_enabled=False))
    disabled = build_model_card(facts(evaluation=off, gate=decide(off, None))).text
    assert "**⚪ Release gate DISABLED: it blocks nothing, this is not a pass**" in disabled and "PASSED" not in disabled
    assert table_row(disabled, "format compliance (fine-tuned)")[2] == "pass (gate off)"


# ---------------------------------------------------------------- a card from real artifacts


@pytest.fixture(scope="module")
def real_release(tiny_llama_dir, real_records_path, tmp_path_factory):
    """A tiny run's real artifacts, made by the stages' own code without Dagster: an adapter trained two steps with
    grading and an offline W&B run, merged, evaluated against its base, then staged as a release."""
    import logging

    import pandas as pd

    from medcot_pipeline.chat_format import build_target
    from medcot_pipeline.contracts import TrainingJob, WandbTarget
    from medcot_pipeline.evaluation.report import write_rouge_report
    from medcot_pipeline.merging import merge_adapter
    from medcot_pipeline.release.hub_publishing import stage_release
    from medcot_pipeline.training import run

    out = tmp_path_factory.mktemp("release")
    records = json.loads(Path(real_records_path).read_text())[:8]
    frame = pd.DataFrame({
        "question": [r["Question"] for r in records], "reasoning": [r["Complex_CoT"] for r in records],
        "response": [r["Response"] for r in records],
        "target": [build_target(r["Complex_CoT"], r["Response"]) for r in records],
    })
    (out / "splits").mkdir()
    frame.iloc[:6].to_parquet(out / "splits" / "train.parquet")
    frame.iloc[6:].to_parquet(out / "splits" / "validation.parquet")
    base = BaseModelRef(name=str(tiny_llama_dir), reference=str(tiny_llama_dir))
    job = TrainingJob(
        base_model=base, splits_dir=str(out / "splits"), output_dir=str(out / "adapter"),
        checkpoint_dir=str(out / "checkpoints"), max_seq_length=128,
        settings=TrainingSettings(backend="transformers", load_in_4bit=False, optim="adamw_torch", gradient_checkpointing=False,
                                  max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
                                  lora_r=4, lora_alpha=8, eval_steps=2, save_steps=2, grade_questions=2, grade_max_new_tokens=4),
        wandb=WandbTarget(enabled=True, mode="offline", project="medcot-tests", dir=str(out / "wandb"), run_name="card-test"),
        dataset=DatasetProvenance(source="file", location=str(real_records_path), format="json", records=8, content_sha256="d" * 64),
        splits_sha256="e" * 64, profile="card-test.yaml",
    )
    summary = run.train(job, logging.getLogger("card-test"))
    merge_adapter(str(tiny_llama_dir), out / "adapter", out / "merged", dtype="float32")
    settings = EvaluationSettings(num_questions=2, batch_size=2, max_new_tokens=6, continuation_tokens=3,
                                  gate_format_compliance_floor=0.5, gate_accuracy_lower_bound=None)
    report = write_rouge_report(str(out / "merged"), str(tiny_llama_dir), frame.iloc[6:], settings, out / "report")
    release = ReleaseFacts.from_artifacts(
        "test-org/medcot-tiny", out / "adapter", out / "report", code_version={"lora_adapter": "a" * 12},
        adapter_location="adapter/",
    )
    stage_release(out / "merged", out / "adapter", build_model_card(release), out / "staged", "subfolder")
    return {"summary": summary, "report": report, "facts": release, "out": out,
            "card": ModelCard.load(out / "staged" / "model" / "README.md")}


def test_every_fact_on_a_real_card_comes_from_the_run(real_release):
    from medcot_pipeline.presentation.text import size_text
    from medcot_pipeline.evaluation.release_gate import decide

    summary, report, card, out = real_release["summary"], real_release["report"], real_release["card"], real_release["out"]
    text, published = card.text, str(card)
    flat = " ".join(text.split())

    # The license is the base model's own (its README), the tags the stack that trained.
    assert card.data.license == "apache-2.0"
    assert summary.backend == "transformers" and "unsloth" not in card.data.tags and "TRL and PEFT" in text
    # A local dataset file: no Hub dataset, so no model-index and no `split: train`; named by file name, not its path.
    assert card.data.datasets is None and card.data.eval_results is None and "split:" not in published
    assert "huatuo_o1_demo.json (a local file, sha256 dddddddddddd)" in text
    # The adapter's real size, the real answer limit, the gate's decision on this report.
    weights = out / "adapter" / "adapter_model.safetensors"
    assert f"The adapter alone ({size_text(weights.stat().st_size)})" in text
    limit = report.settings.max_new_tokens + report.settings.continuation_tokens
    assert f"up to {report.settings.max_new_tokens} new tokens, + {report.settings.continuation_tokens} for an answer still open ({limit} in all)" in flat
    decision = decide(report)
    assert decision.status in ("passed", "failed") and f"Release gate {decision.status.upper()}" in text
    # Steps and the kept checkpoint as the summary states them.
    assert table_row(text, "Steps trained") == [str(summary.global_step)]
    assert f"The weights are those of step {summary.kept_step} of {summary.global_step}" in flat
    # Nothing of the machine that trained is published: the offline W&B run is said to be offline, not where it is.
    assert summary.wandb is not None and summary.wandb.url is None
    assert "logged to Weights & Biases offline" in text and str(out) not in published and str(Path.home()) not in published
    assert summary.base_model.name not in published  # the local base checkpoint: by its directory's name
    # One rounding: no measured number with more than three decimals.
    assert not re.search(r"(?<![\w.])\d+\.\d{4,}(?![\w.])", text), re.findall(r"\d+\.\d{4,}", text)


def test_a_base_model_whose_license_nothing_states_stops_the_release(real_release, tmp_path):
    """Rather than publish a guessed license: the error names the setting that settles it."""
    import shutil

    from medcot_pipeline.contracts import TrainingSummary
    from medcot_pipeline.release.model_card import ReleaseFactsError

    adapter = tmp_path / "adapter"
    shutil.copytree(real_release["out"] / "adapter", adapter)
    nameless = tmp_path / "a-local-checkpoint"
    nameless.mkdir()
    summary = TrainingSummary.read(adapter)
    summary.model_copy(update={"base_model": BaseModelRef(name=str(nameless), reference=str(nameless))}).write(adapter)
    with pytest.raises(ReleaseFactsError, match=r"hub_release.license: the license of the base model .*a-local-checkpoint"):
        ReleaseFacts.from_artifacts("test-org/x", adapter, real_release["out"] / "report", {}, None)
    # Set in the profile, it is the release's license.
    facts = ReleaseFacts.from_artifacts("test-org/x", adapter, real_release["out"] / "report", {}, None, license="mit")
    assert build_model_card(facts).data.license == "mit"


def test_base_model_licenses_come_from_their_own_cards(smollm2_dir):
    from medcot_pipeline.base_models import EMBEDDED_SMOLLM2, base_model_license

    # The embedded model's conversion carries the GGUF's own license in its card.
    assert base_model_license(EMBEDDED_SMOLLM2, str(smollm2_dir)) == "apache-2.0"
    # A Hub id whose card is out of reach (the tests run offline): medcot's table of known base models.
    assert base_model_license("unsloth/Llama-3.2-3B-Instruct-bnb-4bit") == "llama3.2"
    assert base_model_license("HuggingFaceTB/SmolLM2-360M-Instruct") == "apache-2.0"
    assert base_model_license("someone/unknown-model") is None
