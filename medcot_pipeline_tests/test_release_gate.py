"""The release gate on evidence: per-question scores -> paired intervals -> the reports as written -> the check."""

import numpy as np
import pytest

from medcot_pipeline.contracts import BenchmarkReport, BenchmarkScores, EvaluationReport, GenerationTotals
from medcot_pipeline.defs.checks import release_gate
from medcot_pipeline.evaluation.paired_stats import compare
from medcot_pipeline.settings import BenchmarkEvaluationSettings, EvaluationSettings
from medcot_pipeline_tests.contract_factories import scores


def rouge_report(directory, tuned, base, *, compliance=0.95, truncation=0.02, **gate):
    """report.json as rouge_report writes it, its ROUGE-L comparison computed from per-answer scores."""
    comparisons = [compare("rouge_l_response", "ROUGE-L (response)", tuned, base)] if base is not None else []
    EvaluationReport(
        n=len(tuned), models={"fine_tuned": "merged"}, merged_model_dir="merged", settings=EvaluationSettings(**gate),
        fine_tuned=scores(rouge_l_response=float(np.mean(tuned)), format_compliance=compliance, truncation_rate=truncation),
        base=scores(rouge_l_response=float(np.mean(base))) if base is not None else None, comparisons=comparisons,
    ).write(directory)
    return str(directory)


def benchmark_report(directory, tuned_correct, base_correct, merged="merged"):
    n = len(tuned_correct)
    by_model = {
        label: BenchmarkScores(benchmark="medqa", n=n, accuracy=float(np.mean(c)), correct=int(sum(c)), no_choice={},
                               cut_off_rate=0.0, mean_output_tokens=300.0)
        for label, c in (("fine_tuned", tuned_correct), ("base", base_correct))
    }
    totals = GenerationTotals(wall_seconds=1.0, total_new_tokens=1, tokens_per_second=1.0)
    BenchmarkReport(
        models={"fine_tuned": merged, "base": "base"}, merged_model_dir=merged, settings=BenchmarkEvaluationSettings(),
        sources=[], questions=n, fine_tuned=[by_model["fine_tuned"]], base=[by_model["base"]],
        comparisons=[compare("accuracy:medqa", "medqa accuracy", tuned_correct, base_correct, right_or_wrong=True)],
        generation={"fine_tuned": totals, "base": totals}, wall_seconds=2.0,
    ).write(directory)
    return str(directory)


RNG = np.random.default_rng(11)
BASE_ROUGE = RNG.random(100) * 0.3
CLEAR_GAIN = BASE_ROUGE + 0.06 + RNG.normal(0, 0.03, 100)
SAME = (RNG.random(100) < 0.55).astype(float)


def test_a_clear_gain_with_no_accuracy_loss_passes(tmp_path):
    result = release_gate(rouge_report(tmp_path / "r", CLEAR_GAIN, BASE_ROUGE), benchmark_report(tmp_path / "b", SAME, SAME))
    assert result.passed and result.metadata["status"].value == "passed"
    assert result.metadata["decision"].value.startswith("Release gate: PASSED")


def test_a_higher_point_estimate_inside_the_noise_does_not_pass(tmp_path):
    """Six questions, fine-tuned ahead on average: the interval straddles zero, so there is no evidence of a gain."""
    tuned, base = [0.30, 0.10, 0.50, 0.20, 0.05, 0.40], [0.20, 0.25, 0.30, 0.10, 0.15, 0.35]
    assert np.mean(tuned) > np.mean(base)
    result = release_gate(rouge_report(tmp_path / "r", tuned, base), benchmark_report(tmp_path / "b", SAME, SAME))
    assert not result.passed
    assert "ROUGE-L (response) gain, lower end of its 95% interval" in result.metadata["decision"].value


def test_a_lost_benchmark_accuracy_fails(tmp_path):
    base_correct = np.ones(100)
    tuned_correct = np.ones(100)
    tuned_correct[:20] = 0  # 20 points lost
    result = release_gate(rouge_report(tmp_path / "r", CLEAR_GAIN, BASE_ROUGE), benchmark_report(tmp_path / "b", tuned_correct, base_correct))
    assert not result.passed and "medqa accuracy change" in result.metadata["decision"].value


def test_the_thresholds_the_run_recorded_are_applied(tmp_path):
    tuned, base = [0.30, 0.10, 0.50, 0.20, 0.05, 0.40], [0.20, 0.25, 0.30, 0.10, 0.15, 0.35]
    lenient = rouge_report(tmp_path / "r", tuned, base, gate_rouge_l_lower_bound=-0.2)
    assert release_gate(lenient, benchmark_report(tmp_path / "b", SAME, SAME)).passed


def test_compliance_and_cut_off_are_levels(tmp_path):
    bench = benchmark_report(tmp_path / "b", SAME, SAME)
    assert not release_gate(rouge_report(tmp_path / "low", CLEAR_GAIN, BASE_ROUGE, compliance=0.8), bench).passed
    assert not release_gate(rouge_report(tmp_path / "cut", CLEAR_GAIN, BASE_ROUGE, truncation=0.2), bench).passed


def test_without_the_base_model_there_is_no_evidence(tmp_path):
    result = release_gate(rouge_report(tmp_path / "r", CLEAR_GAIN, None), benchmark_report(tmp_path / "b", SAME, SAME))
    assert not result.passed and "not measured: needs the base model" in result.metadata["decision"].value


def test_a_disabled_gate_is_a_warning_that_says_what_it_would_have_decided(tmp_path):
    import dagster as dg

    result = release_gate(rouge_report(tmp_path / "r", BASE_ROUGE, CLEAR_GAIN, gate_enabled=False), benchmark_report(tmp_path / "b", SAME, SAME))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN  # blocks nothing, never green
    decision = result.metadata["decision"].value
    assert decision.startswith("Release gate: DISABLED (blocks nothing)") and "it would have failed" in decision


@pytest.mark.parametrize("other", ["elsewhere"])
def test_reports_of_two_different_models_are_refused(tmp_path, other):
    result = release_gate(rouge_report(tmp_path / "r", CLEAR_GAIN, BASE_ROUGE), benchmark_report(tmp_path / "b", SAME, SAME, merged=other))
    assert not result.passed and "materialize both again" in result.metadata["decision"].value
