"""The model card states the report's numbers, the safety statement and the lineage, and survives a round trip."""

import re

import numpy as np
from huggingface_hub import ModelCard

from medcot_pipeline.contracts import BaseModelRef, DatasetProvenance
from medcot_pipeline.release.model_card import ReleaseFacts, build_adapter_card, build_model_card
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
    assert {"medical", "lora", "unsloth", "trl"} <= set(data.tags)

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
    assert "100 held-out questions" in result.dataset_name
    accuracy = next(r for r in data.eval_results if r.metric_type == "accuracy")
    assert accuracy.task_type == "multiple-choice" and "60 held-out multiple-choice questions" in accuracy.dataset_name
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
    assert "with greedy decoding, up to 1024 new tokens" in text


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
    assert table_row(card.text, "ROUGE-L F1, `<response>` only") == ["higher", "n/a", "0.100", "", ""]
    assert "float32 base weights, TRL and PEFT" in card.text
    assert "offline" in card.text and "offline-run-1" in card.text
    assert "Hardware: CPU (x86_64). Training wall time: 1 min 15 s." in card.text
    assert "the LoRA adapter is not" in card.text

    local = build_model_card(facts(training=training_summary(base_model=BaseModelRef(name=str(tmp_path), reference=str(tmp_path)))))
    assert local.data.base_model is None and f"`{tmp_path}` (a local checkpoint)" in local.text


def test_adapter_location_is_explained():
    subfolder = build_model_card(facts()).text
    assert 'PeftModel.from_pretrained(base, "clinic-ml/medcot-llama-3.2-3b", subfolder="adapter")' in subfolder

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
