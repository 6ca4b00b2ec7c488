"""Fine-tuned minus base on the same questions, with a paired bootstrap 95% interval and, for right/wrong
outcomes, McNemar's exact test: what lets a report say "better" only when the data can tell.

Both models answer the same questions, so each question gives one difference; resampling questions (not
the two models' scores separately) keeps that pairing, which is what makes the interval narrow enough to
be useful at n = 100. The verdict reads the interval, never the point estimate:

- "better": the whole interval lies on the good side of zero;
- "worse": the whole interval lies on the bad side;
- "no detectable change": it straddles zero (the data cannot tell the models apart at this n).

Each metric's interval holds at 95% on its own; with several metrics, one may cross zero by chance.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats

from medcot_pipeline.contracts import PairedComparison

Verdict = Literal["better", "no detectable change", "worse"]
CONFIDENCE = 0.95
RESAMPLES = 10_000
# scipy 1.15 renamed bootstrap's random_state to rng; the GPU host's scipy may be older.
_RNG_ARGUMENT = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def verdict(low: float, high: float, higher_is_better: bool) -> Verdict:
    """What an interval of fine-tuned minus base says."""
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable change"


def bootstrap_interval(
    fine_tuned: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The paired bootstrap interval of mean(fine_tuned) - mean(base): questions resampled with their pair.

    BCa (scipy's default, better coverage on skewed scores); where BCa is undefined (every resample alike,
    e.g. all differences equal) the percentile interval, which is then the single value itself.
    """
    tuned, base_ = _paired_arrays(fine_tuned, base)
    differences = tuned - base_
    if np.all(differences == differences[0]):
        return float(differences[0]), float(differences[0])
    low, high = _bootstrap(differences, confidence, resamples, seed, "BCa")
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = _bootstrap(differences, confidence, resamples, seed, "percentile")
    return float(low), float(high)


def _bootstrap(differences: np.ndarray, confidence: float, resamples: int, seed: int, method: str) -> tuple[float, float]:
    with warnings.catch_warnings():
        # scipy warns (DegenerateDataWarning) and returns NaN where BCa cannot be computed; the caller falls back.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (differences,),
            np.mean,
            confidence_level=confidence,
            n_resamples=resamples,
            method=method,
            vectorized=True,
            **{_RNG_ARGUMENT: np.random.default_rng(seed)},
        )
    return result.confidence_interval.low, result.confidence_interval.high


def mcnemar_exact_p(fine_tuned_correct: Sequence[bool] | np.ndarray, base_correct: Sequence[bool] | np.ndarray) -> tuple[float, int, int]:
    """(two-sided exact McNemar p, questions only the fine-tuned model got right, questions only the base got right).

    The exact test is a binomial test on the discordant pairs: under "no difference" each is equally likely
    to favour either model. With no discordant pair there is no evidence either way: p = 1.
    """
    tuned, base_ = _paired_arrays(fine_tuned_correct, base_correct)
    tuned_only = int(np.sum(tuned.astype(bool) & ~base_.astype(bool)))
    base_only = int(np.sum(~tuned.astype(bool) & base_.astype(bool)))
    if tuned_only + base_only == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(tuned_only, tuned_only + base_only, 0.5).pvalue), tuned_only, base_only


def _paired_arrays(
    fine_tuned: Sequence[float] | Sequence[bool] | np.ndarray, base: Sequence[float] | Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    tuned, base_ = np.asarray(fine_tuned, dtype=float), np.asarray(base, dtype=float)
    if tuned.shape != base_.shape or tuned.ndim != 1:
        raise ValueError(f"paired scores need two equal-length lists; got {tuned.shape} and {base_.shape}")
    if tuned.size == 0:
        raise ValueError("paired scores of no questions")
    if not (np.all(np.isfinite(tuned)) and np.all(np.isfinite(base_))):
        raise ValueError("paired scores must be finite numbers (a missing score is not a zero)")
    return tuned, base_


def compare(
    metric: str,
    label: str,
    fine_tuned: Sequence[float],
    base: Sequence[float],
    *,
    higher_is_better: bool = True,
    right_or_wrong: bool = False,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """One metric, fine-tuned minus base over the same questions, with its interval and verdict; for
    right/wrong outcomes (accuracy, compliance) also McNemar's exact p."""
    tuned, base_ = _paired_arrays(fine_tuned, base)
    low, high = bootstrap_interval(tuned, base_, confidence=confidence, seed=seed)
    extra = {}
    if right_or_wrong:
        p, tuned_only, base_only = mcnemar_exact_p(tuned, base_)
        extra = {"mcnemar_p": p, "fine_tuned_only": tuned_only, "base_only": base_only}
    return PairedComparison(
        metric=metric,
        label=label,
        higher_is_better=higher_is_better,
        n=int(tuned.size),
        base=float(base_.mean()),
        fine_tuned=float(tuned.mean()),
        difference=float(tuned.mean() - base_.mean()),
        low=low,
        high=high,
        confidence=confidence,
        verdict=verdict(low, high, higher_is_better),
        **extra,
    )
