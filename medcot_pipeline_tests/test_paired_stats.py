"""Paired intervals and McNemar's test: what lets a report say "better" only when the data can tell."""

import numpy as np
import pytest

from medcot_pipeline.evaluation.paired_stats import bootstrap_interval, compare, mcnemar_exact_p, verdict


def test_verdict_reads_the_interval_not_the_point():
    assert verdict(0.01, 0.05, higher_is_better=True) == "better"
    assert verdict(-0.05, -0.01, higher_is_better=True) == "worse"
    assert verdict(-0.01, 0.05, higher_is_better=True) == "no detectable change"
    # Lower is better (cut-off rate): a drop is an improvement.
    assert verdict(-0.05, -0.01, higher_is_better=False) == "better"


def test_the_interval_covers_the_true_difference_about_95_times_in_100():
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        base = rng.random(100)
        tuned = base + 0.03 + rng.normal(0, 0.1, 100)  # true mean difference 0.03
        low, high = bootstrap_interval(tuned, base, resamples=2_000, seed=trial)
        covered += low <= 0.03 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_pairing_makes_the_interval_narrower_than_the_two_spreads_would():
    rng = np.random.default_rng(3)
    base = rng.random(100)  # questions differ a lot in difficulty ...
    tuned = base + 0.02 + rng.normal(0, 0.01, 100)  # ... but the fine-tuned model gains a little on each
    low, high = bootstrap_interval(tuned, base)
    assert 0 < low < 0.02 < high < 0.03
    assert compare("rouge", "ROUGE", tuned, base).verdict == "better"


def test_identical_answers_give_a_zero_width_interval():
    assert bootstrap_interval([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0)
    assert compare("acc", "acc", [1, 0, 1, 1], [1, 0, 1, 1], right_or_wrong=True).verdict == "no detectable change"


def test_mcnemar_exact_p_by_hand():
    # 10 questions only the fine-tuned model got right, 2 only the base: 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096.
    tuned = [1] * 10 + [0] * 2 + [1] * 5
    base = [0] * 10 + [1] * 2 + [1] * 5
    p, tuned_only, base_only = mcnemar_exact_p(tuned, base)
    assert (tuned_only, base_only) == (10, 2) and p == pytest.approx(158 / 4096)
    assert mcnemar_exact_p([1, 0], [1, 0]) == (1.0, 0, 0)


def test_a_small_sample_cannot_claim_an_improvement():
    """4 of 6 against 2 of 6: the point estimate says +33 points, the interval says the data cannot tell."""
    result = compare("acc", "acc", [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], right_or_wrong=True)
    assert result.difference == pytest.approx(1 / 3) and result.verdict == "no detectable change"
    assert result.mcnemar_p == 0.5


@pytest.mark.parametrize(("tuned", "base"), [([1, 2], [1]), ([], []), ([1.0, float("nan")], [1.0, 0.0])])
def test_unpaired_or_missing_scores_are_refused(tuned, base):
    with pytest.raises(ValueError):
        bootstrap_interval(tuned, base)
