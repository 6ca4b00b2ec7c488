"""The ROUGE report on a tiny random Llama, and the release gate asset check on hand-written reports."""

import json
from pathlib import Path

import pandas as pd
import pytest

from medcot_pipeline.asset_checks import build_asset_checks
from medcot_pipeline.configs import EvaluationConfig
from medcot_pipeline.evaluation_report import write_rouge_report
from medcot_pipeline.profiles import Profile

METRICS = {"rouge_l_response", "rouge_l_full", "format_compliance", "truncation_rate", "continuation_rate",
           "mean_output_tokens", "n", "mc_accuracy", "tokens_per_second", "wall_seconds", "total_new_tokens"}


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
    config = EvaluationConfig(batch_size=2, max_new_tokens=4, continuation_tokens=0)
    report = write_rouge_report(str(tiny_llama_dir), str(tiny_llama_dir), validation, config, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["n"] == 2
    for label in ("fine_tuned", "base"):
        assert set(report[label]) == METRICS
        assert report[label]["truncation_rate"] == 1.0 and report[label]["mean_output_tokens"] == 4
    # The same weights answer greedily: the two blocks score alike.
    assert report["fine_tuned"]["rouge_l_response"] == report["base"]["rouge_l_response"]

    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line, parse_constant=_reject) for line in lines]  # strict JSON: no NaN
    assert [s["model"] for s in samples] == ["fine_tuned", "fine_tuned", "base", "base"]
    for sample in samples:
        assert 0.0 <= sample["rouge_l_response"] <= 1.0 and 0.0 <= sample["rouge_l_full"] <= 1.0
    assert [s["answer_idx"] for s in samples[:2]] == ["A", None]
    assert {s["chosen_option"] for s in samples} <= {None, "A", "B"}


def test_the_static_kv_cache_answers_as_the_dynamic_one(tiny_llama_dir, validation, tmp_path):
    outputs = {}
    for cache in ("dynamic", "static"):
        config = EvaluationConfig(batch_size=2, max_new_tokens=6, continuation_tokens=2, kv_cache=cache, compare_with_base=False)
        write_rouge_report(str(tiny_llama_dir), None, validation, config, tmp_path / cache)
        lines = (tmp_path / cache / "samples.jsonl").read_text().splitlines()
        outputs[cache] = [(s["output"], s["new_tokens"]) for s in map(json.loads, lines)]
    assert outputs["static"] == outputs["dynamic"] and all(tokens == 8 for _, tokens in outputs["static"])


@pytest.mark.parametrize("attention", [None, "sdpa"])
def test_both_models_load_with_the_configured_attention(tiny_llama_dir, validation, tmp_path, monkeypatch, attention):
    from medcot_pipeline import evaluation_report

    used = []
    real_load = evaluation_report.load_for_inference

    def spy(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        used.append(model.config._attn_implementation)
        return model, tokenizer

    monkeypatch.setattr(evaluation_report, "load_for_inference", spy)
    chosen = {"attention": attention} if attention else {}  # None: the default, which must be the fast one
    config = EvaluationConfig(batch_size=2, max_new_tokens=2, continuation_tokens=0, **chosen)
    write_rouge_report(str(tiny_llama_dir), str(tiny_llama_dir), validation, config, tmp_path)
    assert used == [attention or "grouped_sdpa"] * 2


def test_a_validation_split_without_response_is_refused(tiny_llama_dir, validation, tmp_path):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['response'\]"):
        write_rouge_report(str(tiny_llama_dir), None, validation.drop(columns="response"), EvaluationConfig(), tmp_path)


@pytest.fixture(scope="module")
def release_gate():
    profile = Profile(name="test", path=Path("test.yaml"),
                      ops={"rouge_report": {"rouge_tolerance": 0.02, "format_compliance_floor": 0.9}})
    return next(check for check in build_asset_checks(profile) if check.check_key.name == "release_gate")


@pytest.mark.parametrize(
    ("tuned_rouge", "base_rouge", "compliance", "rouge_ok", "compliance_ok"),
    [
        (0.40, 0.30, 0.95, True, True),  # tuned above base
        (0.31, 0.32, 0.95, True, True),  # below base, within the tolerance
        (0.25, 0.30, 0.95, False, True),  # below base beyond the tolerance
        (0.40, 0.30, 0.80, True, False),  # compliance under the floor
    ],
)
def test_release_gate(release_gate, tmp_path, tuned_rouge, base_rouge, compliance, rouge_ok, compliance_ok):
    report = {"fine_tuned": {"rouge_l_response": tuned_rouge, "format_compliance": compliance},
              "base": {"rouge_l_response": base_rouge}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = release_gate(str(tmp_path))  # the asset's value is the report directory
    assert result.passed == (rouge_ok and compliance_ok)
    assert {key: value.value for key, value in result.metadata.items()} == {
        "fine_tuned_rouge_l": tuned_rouge, "base_rouge_l": base_rouge, "rouge_tolerance": 0.02,
        "format_compliance": compliance, "format_compliance_floor": 0.9,
        "rouge_ok": rouge_ok, "compliance_ok": compliance_ok,
    }


def test_release_gate_without_a_base_judges_compliance_only(release_gate, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"fine_tuned": {"rouge_l_response": 0.0, "format_compliance": 1.0}}))
    result = release_gate(str(tmp_path))
    assert result.passed and result.metadata["base_rouge_l"].value == "not measured"
