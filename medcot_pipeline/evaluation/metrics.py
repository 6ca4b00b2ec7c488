"""Grade generated answers: ROUGE-L against the references, tag compliance, truncation.

Multiple-choice accuracy is not read from generated answers: multiple_choice.py scores it by option log-likelihood.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import pandas as pd
from rouge_score import rouge_scorer

from medcot_pipeline.chat_format import THINK_CLOSE
from medcot_pipeline.data.schema import require_columns
from medcot_pipeline.tagged_output import ParsedAnswer

if TYPE_CHECKING:
    from medcot_pipeline.evaluation.generation import GeneratedAnswer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
# rouge-score's LCS is pure Python, O(prediction words x reference words) a pair: 100 answers of 1,500 tokens
# against full references took 16-26 s of rouge_report per model on the GPU host. Above this many word-pair
# cells in all, the pairs are scored in parallel processes.
PARALLEL_ROUGE_CELLS = 5_000_000


def rouge_l_f1(predictions: list[str], references: list[str], *, workers: int | None = None) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference; an empty prediction scores 0.

    `workers` processes score the pairs (default: one per available core when the work is large, else 1).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    pairs = list(zip(predictions, references))
    if workers is None:
        workers = _default_workers(pairs)
    if workers <= 1 or len(pairs) < 2:
        return [_rouge_l_pair(pair) for pair in pairs]
    # spawn: the step that calls this may hold a CUDA context, which a forked child must not inherit.
    with ProcessPoolExecutor(min(workers, len(pairs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_rouge_l_pair, pairs, chunksize=max(1, len(pairs) // (workers * 4))))


def _rouge_l_pair(pair: tuple[str, str]) -> float:
    prediction, reference = pair
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure if prediction and prediction.strip() else 0.0


def _default_workers(pairs: list[tuple[str, str]]) -> int:
    cells = sum(len(prediction.split()) * len(reference.split()) for prediction, reference in pairs)
    if cells < PARALLEL_ROUGE_CELLS:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    responses = [graded_response(a) for a in answers]
    # Both ROUGE-L columns in one call, so that long answers pay for one pool of worker processes, not two.
    scores = rouge_l_f1(
        responses + [a.text for a in answers], references["response"].tolist() + references["target"].tolist()
    )
    return pd.DataFrame({"rouge_l_response": scores[: len(answers)], "rouge_l_full": scores[len(answers) :]})


def summarize(answers: Sequence[GeneratedAnswer], references_df: pd.DataFrame) -> dict:
    """Mean metrics over the answers."""
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
