"""Grade generated answers: ROUGE-L against the references, tag compliance, truncation, multiple-choice accuracy."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from rouge_score import rouge_scorer

from medcot_pipeline.chat_format import THINK_CLOSE
from medcot_pipeline.data.schema import require_columns
from medcot_pipeline.tagged_output import ParsedAnswer

if TYPE_CHECKING:
    from medcot_pipeline.evaluation.generation import GeneratedAnswer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference; an empty prediction scores 0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return [
        _SCORER.score(reference, prediction)["rougeL"].fmeasure if prediction and prediction.strip() else 0.0
        for prediction, reference in zip(predictions, references)
    ]


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


# Strongest evidence first; a tier that names two different letters is ambiguous and decides nothing.
_LETTER_TIERS = (
    # "the answer is C", "Answer: (C)", "correct option is C"
    re.compile(r"(?i:\b(?:answer|correct (?:option|choice))\s*(?:is|:)\s*(?:option\s*|choice\s*)?)\(?([A-Z])\)?(?![\w])"),
    # "option C", "choice (C)"
    re.compile(r"(?i:\b(?:option|choice)\s*)\(?([A-Z])\)?(?![\w])"),
    # "(C)" anywhere, or "C." / "C)" opening the answer
    re.compile(r"\(([A-Z])\)|^\s*([A-Z])[.):](?=\s|$)"),
)


def choose_option(response: str | None, options: dict[str, str] | str | None) -> str | None:
    """The option letter an answer picks, or None when it names none or several.

    Explicit letters ("answer is C", "option C", "(C)") win; otherwise the one option whose text the
    answer contains (an option contained in a longer matched option does not count separately).
    """
    options = parse_options(options)
    if not response or not options:
        return None
    for pattern in _LETTER_TIERS:
        letters = {letter for match in pattern.finditer(response) for letter in match.groups() if letter in options}
        if len(letters) == 1:
            return letters.pop()
        if len(letters) > 1:
            return None

    text = _normalise(response)
    named = {letter: _normalise(option) for letter, option in options.items() if _normalise(option)}
    found = {letter: option for letter, option in named.items() if re.search(rf"(?<!\w){re.escape(option)}(?!\w)", text)}
    found = {
        letter: option
        for letter, option in found.items()
        if not any(option != other and option in other for other in found.values())
    }
    return next(iter(found)) if len(found) == 1 else None


def parse_options(options: dict[str, str] | str | None) -> dict[str, str] | None:
    """Options as a dict; the formatted splits store them as a JSON string, or null."""
    if options is None or isinstance(options, dict):
        return options
    if isinstance(options, str):
        parsed = json.loads(options)
        if not isinstance(parsed, dict):
            raise ValueError(f"options must be a JSON object of letter -> text, got {options[:80]!r}")
        return parsed
    if pd.isna(options):
        return None
    raise ValueError(f"options must be a dict or a JSON string, got {type(options).__name__}")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def option_accuracy(
    responses: Sequence[str | None], options: Sequence[dict | str | None], answer_idx: Sequence[str | None]
) -> float | None:
    """Share of multiple-choice rows whose answer picks the right letter; rows without options are left out.

    None when no row has options and an answer letter.
    """
    graded = [
        choose_option(response, opts) == letter
        for response, opts, letter in zip(responses, options, answer_idx, strict=True)
        if parse_options(opts) and isinstance(letter, str) and letter
    ]
    return sum(graded) / len(graded) if graded else None


def score_answers(answers: Sequence[GeneratedAnswer], references: pd.DataFrame) -> pd.DataFrame:
    """Per-answer scores, row i of `references` (columns response, target; options, answer_idx optional) being answer i's."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} reference rows")
    require_columns(references, ("response", "target"), "reference rows")
    responses = [graded_response(a) for a in answers]
    scores = pd.DataFrame(
        {
            "rouge_l_response": rouge_l_f1(responses, references["response"].tolist()),
            "rouge_l_full": rouge_l_f1([a.text for a in answers], references["target"].tolist()),
        }
    )
    if {"options", "answer_idx"} <= set(references.columns):
        scores["chosen_option"] = [
            choose_option(response, opts) for response, opts in zip(responses, references["options"].tolist())
        ]
    return scores


def summarize(answers: Sequence[GeneratedAnswer], references_df: pd.DataFrame) -> dict:
    """Mean metrics over the answers; mc_accuracy only when the references carry options and answer letters."""
    scores = score_answers(answers, references_df)
    summary = {
        "rouge_l_response": float(scores["rouge_l_response"].mean()),
        "rouge_l_full": float(scores["rouge_l_full"].mean()),
        "format_compliance": format_compliance([a.parsed for a in answers]),
        "truncation_rate": truncation_rate(answers),
        "continuation_rate": sum(a.continued for a in answers) / len(answers),
        "mean_output_tokens": sum(a.new_tokens for a in answers) / len(answers),
        "n": len(answers),
    }
    if "chosen_option" in scores.columns:
        accuracy = option_accuracy(
            [graded_response(a) for a in answers], references_df["options"].tolist(), references_df["answer_idx"].tolist()
        )
        if accuracy is not None:
            summary["mc_accuracy"] = accuracy
    return summary
