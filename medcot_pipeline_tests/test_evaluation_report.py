"""The ROUGE report on a tiny random Llama (the release gate has its own tests, test_release_gate.py)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from medcot_pipeline.base_models import load_tokenizer
from medcot_pipeline.contracts import EvaluationReport, ModelScores
from medcot_pipeline.evaluation.multiple_choice import option_loglikelihoods
from medcot_pipeline.evaluation.report import write_rouge_report
from medcot_pipeline.settings import EvaluationSettings


def _reject(constant):
    raise ValueError(f"{constant} is not valid JSON")


@pytest.fixture
def validation():
    return pd.DataFrame({
        "question": ["Which drug treats strep throat?", "What causes iron deficiency anemia?"],
        "response": ["Penicillin is the first choice.", "Chronic blood loss is the usual cause."],
        "target": ["<think>Group A strep.</think><response>Penicillin is the first choice.</response>",
                   "<think>Iron loss.</think><response>Chronic blood loss is the usual cause.</response>"],
        "options": [json.dumps({"A": "Penicillin", "B": "Vancomycin"}), None],
        "answer_idx": ["A", None],
    })


def test_report_grades_both_models_on_the_same_questions(tiny_llama_dir, validation, tmp_path):
    config = EvaluationSettings(batch_size=2, max_new_tokens=4, continuation_tokens=0)
    report = write_rouge_report(str(tiny_llama_dir), str(tiny_llama_dir), validation, config, tmp_path)
    assert EvaluationReport.read(tmp_path) == report
    assert report.n == 2 and report.settings == config and report.merged_model_dir == str(tiny_llama_dir)
    for scores in (report.fine_tuned, report.base):
        assert scores.truncation_rate == 1.0 and scores.mean_output_tokens == 4 and scores.n == 2
    # The same weights answer greedily: the two blocks score alike.
    assert report.fine_tuned.rouge_l_response == report.base.rouge_l_response

    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line, parse_constant=_reject) for line in lines]  # strict JSON: no NaN
    assert [s["model"] for s in samples] == ["fine_tuned", "fine_tuned", "base", "base"]
    for sample in samples:
        assert 0.0 <= sample["rouge_l_response"] <= 1.0 and 0.0 <= sample["rouge_l_full"] <= 1.0
    assert [s["answer_idx"] for s in samples[:2]] == ["A", None]

    # Multiple choice by option log-likelihood: the one row with options, for both models.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    likelihoods = option_loglikelihoods(model, load_tokenizer(str(tiny_llama_dir)), validation["question"][0], validation["options"][0])
    best = max(likelihoods, key=likelihoods.get)
    for scores in (report.fine_tuned, report.base):
        assert (scores.mc_accuracy, scores.mc_n) == (float(best == "A"), 1)
    assert [s["chosen_option"] for s in samples] == [best, None, best, None]


def test_multiple_choice_covers_every_validation_row_with_options(tiny_llama_dir, validation, tmp_path):
    """Generation answers num_questions rows; the options of the whole split are scored (one forward each)."""
    # Row 0 again with B as its answer: the model picks the same letter for both, so exactly one is right.
    more = pd.concat([validation, validation.iloc[[0]].assign(answer_idx="B")])
    config = EvaluationSettings(batch_size=2, max_new_tokens=2, continuation_tokens=0, num_questions=1, compare_with_base=False)
    report = write_rouge_report(str(tiny_llama_dir), None, more.reset_index(drop=True), config, tmp_path)
    assert report.n == 1 and (report.fine_tuned.mc_accuracy, report.fine_tuned.mc_n) == (0.5, 2)


def test_a_split_without_options_reports_no_multiple_choice_accuracy(tiny_llama_dir, validation, tmp_path):
    config = EvaluationSettings(batch_size=2, max_new_tokens=2, continuation_tokens=0)
    report = write_rouge_report(str(tiny_llama_dir), str(tiny_llama_dir), validation.assign(options=None), config, tmp_path)
    for scores in (report.fine_tuned, report.base):
        assert (scores.mc_accuracy, scores.mc_n) == (None, 0)
    assert json.loads((tmp_path / "report.json").read_text())["fine_tuned"]["mc_accuracy"] is None


def test_the_static_kv_cache_answers_as_the_dynamic_one(tiny_llama_dir, validation, tmp_path):
    outputs = {}
    for cache in ("dynamic", "static"):
        config = EvaluationSettings(batch_size=2, max_new_tokens=6, continuation_tokens=2, kv_cache=cache, compare_with_base=False)
        write_rouge_report(str(tiny_llama_dir), None, validation, config, tmp_path / cache)
        lines = (tmp_path / cache / "samples.jsonl").read_text().splitlines()
        outputs[cache] = [(s["output"], s["new_tokens"]) for s in map(json.loads, lines)]
    assert outputs["static"] == outputs["dynamic"] and all(tokens == 8 for _, tokens in outputs["static"])


@pytest.mark.parametrize("attention", [None, "sdpa"])
def test_both_models_load_with_the_configured_attention(tiny_llama_dir, validation, tmp_path, monkeypatch, attention):
    from medcot_pipeline.evaluation import answering as evaluation_report

    used = []
    real_load = evaluation_report.load_for_inference

    def spy(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        used.append(model.config._attn_implementation)
        return model, tokenizer

    monkeypatch.setattr(evaluation_report, "load_for_inference", spy)
    chosen = {"attention": attention} if attention else {}  # None: the default, which must be the fast one
    config = EvaluationSettings(batch_size=2, max_new_tokens=2, continuation_tokens=0, **chosen)
    write_rouge_report(str(tiny_llama_dir), str(tiny_llama_dir), validation, config, tmp_path)
    assert used == [attention or "grouped_sdpa"] * 2


def test_a_validation_split_without_response_is_refused(tiny_llama_dir, validation, tmp_path):
    with pytest.raises(ValueError, match=r"validation split: column\(s\) response missing"):
        write_rouge_report(str(tiny_llama_dir), None, validation.drop(columns="response"), EvaluationSettings(), tmp_path)


def test_the_base_model_answers_through_the_fine_tuned_models_module(tiny_llama_dir, validation, tmp_path, monkeypatch):
    """Same shapes: the second model's weights are copied into the first model object (its compiled graph stays)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from medcot_pipeline.evaluation import report as evaluation_report

    other = tmp_path / "other"
    shutil.copytree(tiny_llama_dir, other)
    weights = load_file(other / "model.safetensors")
    torch.manual_seed(1)
    save_file({name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in weights.items()}, other / "model.safetensors")

    seen = []
    real_generate = evaluation_report.generate_answers

    def spy(model, tokenizer, questions, config, **kwargs):
        seen.append((id(model), model.model.embed_tokens.weight.detach().clone()))
        return real_generate(model, tokenizer, questions, config, **kwargs)

    monkeypatch.setattr(evaluation_report, "generate_answers", spy)
    config = EvaluationSettings(batch_size=2, max_new_tokens=3, continuation_tokens=0)
    write_rouge_report(str(tiny_llama_dir), str(other), validation, config, tmp_path / "report")
    (first_id, first_embed), (second_id, second_embed) = seen
    assert first_id == second_id  # one module answered for both
    assert torch.equal(first_embed, load_file(tiny_llama_dir / "model.safetensors")["model.embed_tokens.weight"])
    expected = load_file(other / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(second_embed, expected) and not torch.equal(first_embed, second_embed)


def test_models_of_other_shapes_are_loaded_afresh(tiny_llama_dir, tmp_path):
    from transformers import AutoConfig

    from medcot_pipeline.evaluation.answering import same_shapes

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    assert same_shapes(config, str(tiny_llama_dir))
    wider = AutoConfig.from_pretrained(tiny_llama_dir)
    wider.intermediate_size *= 2
    assert not same_shapes(wider, str(tiny_llama_dir))
    assert not same_shapes(config, str(tmp_path / "missing"))


def test_rouge_report_logs_each_batch_and_a_long_batch_s_tokens():
    import re
    from types import SimpleNamespace

    from medcot_pipeline.evaluation.report import _progress_logger

    lines = []
    report = _progress_logger("fine_tuned", EvaluationSettings(batch_size=2, max_new_tokens=3, continuation_tokens=2),
                              SimpleNamespace(info=lines.append))
    report("start", 0, 3)
    report("tokens", 2, 5)
    report("answers", 2, 3)
    report("answers", 3, 3)
    assert lines[0] == ("fine_tuned: answering 3 question(s) in 2 batch(es) of up to 2, up to 3 new tokens each "
                        "(+ 2 for an answer still open)")
    assert re.fullmatch(r"fine_tuned: 0/3 answers; the batch is at 2 of up to 5 new tokens, 0:00 elapsed, "
                        r"at most about 0:00 left in this batch", lines[1])
    assert re.fullmatch(r"fine_tuned: 2/3 answers, 0:00 elapsed, about 0:00 left", lines[2])
    assert re.fullmatch(r"fine_tuned: 3/3 answers, 0:00 elapsed", lines[3])
