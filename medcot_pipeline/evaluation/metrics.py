"""Grade generated answers: ROUGE-L against the references, tag compliance, truncation.

Multiple-choice accuracy is not read from generated answers: multiple_choice.py scores it by option log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd
from nltk.stem import porter
from rapidfuzz.distance import LCSseq
from rouge_score import scoring, tokenize

from medcot_pipeline.chat_format import THINK_CLOSE
from medcot_pipeline.data.schema import require_columns
from medcot_pipeline.tagged_output import ParsedAnswer

if TYPE_CHECKING:
    from medcot_pipeline.evaluation.generation import GeneratedAnswer


class _CachedStemmer:
    """rouge-score's Porter stemmer (`RougeScorer(use_stemmer=True)`), each word stemmed once: answers repeat words."""

    def __init__(self):
        self.stem = lru_cache(maxsize=200_000)(porter.PorterStemmer().stem)


_STEMMER = _CachedStemmer()


def rouge_l_f1(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference; an empty prediction scores 0.

    The same numbers as `rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)`:
    its tokenizer and F-measure, with the longest common subsequence counted by rapidfuzz's bit-parallel
    LCSseq instead of rouge-score's pure-Python table, which took 14-21 s per model for 100 answers of
    1,500 tokens on the GPU host (test_metrics.py checks the two agree).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return [_rouge_l(prediction, reference) for prediction, reference in zip(predictions, references, strict=True)]


def _rouge_l(prediction: str, reference: str) -> float:
    if not prediction or not prediction.strip():
        return 0.0
    predicted, target = tokenize.tokenize(prediction, _STEMMER), tokenize.tokenize(reference, _STEMMER)
    if not predicted or not target:
        return 0.0
    common = LCSseq.similarity(target, predicted)
    return scoring.fmeasure(common / len(predicted), common / len(target))


def graded_response(answer: GeneratedAnswer) -> str:
    """The part of an output that is scored as its answer.

    The <response> body when there is one. Otherwise whatever follows </think>, or the whole output:
    a base model that never learned the tags is judged on what it answered, not zeroed (its missing
    tags already count against format_compliance).
    """
    if answer.parsed.response is not None:
        return answer.parsed.response
    text = answer.text
    return text.rsplit(THINK_CLOSE, 1)[1].strip() if THINK_CLOSE in text else text.strip()


def format_compliance(parsed: Sequence[ParsedAnswer]) -> float:
    if not parsed:
        raise ValueError("format_compliance of no answers")
    return sum(p.compliant for p in parsed) / len(parsed)


def truncation_rate(answers: Sequence[GeneratedAnswer]) -> float:
    if not answers:
        raise ValueError("truncation_rate of no answers")
    return sum(a.truncated for a in answers) / len(answers)


def score_answers(answers: Sequence[GeneratedAnswer], references: pd.DataFrame) -> pd.DataFrame:
    """Per-answer scores, row i of `references` (columns response and target) being answer i's."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} reference rows")
    require_columns(references, ("response", "target"), "reference rows")
    return pd.DataFrame(
        {
            "rouge_l_response": rouge_l_f1([graded_response(a) for a in answers], references["response"].tolist()),
            "rouge_l_full": rouge_l_f1([a.text for a in answers], references["target"].tolist()),
        }
    )


def summarize(answers: Sequence[GeneratedAnswer], references_df: pd.DataFrame, scores: pd.DataFrame | None = None) -> dict:
    """Mean metrics over the answers; `scores` is `score_answers`' table when the caller has it already."""
    if scores is None:
        scores = score_answers(answers, references_df)
    return {
        "rouge_l_response": float(scores["rouge_l_response"].mean()),
        "rouge_l_full": float(scores["rouge_l_full"].mean()),
        "format_compliance": format_compliance([a.parsed for a in answers]),
        "truncation_rate": truncation_rate(answers),
        "continuation_rate": sum(a.continued for a in answers) / len(answers),
        "mean_output_tokens": sum(a.new_tokens for a in answers) / len(answers),
        "n": len(answers),
    }
