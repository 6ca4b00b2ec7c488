"""Metrics: ROUGE-L, compliance and truncation against hand-computed values."""

import json

import pandas as pd
import pytest

from medcot_pipeline.evaluation.generation import GeneratedAnswer
from medcot_pipeline.evaluation.metrics import (
    format_compliance,
    graded_response,
    rouge_l_f1,
    score_answers,
    summarize,
    truncation_rate,
)
from medcot_pipeline.tagged_output import parse_tagged_output

def answer(text, *, truncated=False, new_tokens=10, continued=False):
    return GeneratedAnswer(
        question="q", text=text, parsed=parse_tagged_output(text),
        truncated=truncated, new_tokens=new_tokens, continued=continued,
    )


def test_rouge_l_f1_matches_hand_computed_lcs_scores():
    scores = rouge_l_f1(
        ["the cat sat", "the mat sat", "cats running", "", "   "],
        ["the cat sat on the mat"] * 2 + ["cat runs", "anything", "anything"],
    )
    # LCS 3 of 3/6 -> 2/3; LCS 2 ("the sat") of 3/6 -> P 2/3, R 1/3, F 4/9; stems cat/run match fully; empty -> 0.
    assert scores == pytest.approx([2 / 3, 4 / 9, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l_f1(["a", "b"], ["a"])


def test_rouge_l_f1_equals_rouge_score_on_real_answers_and_long_scrambled_ones(real_records_path):
    """The rapidfuzz LCS gives rouge-score's own numbers: real reasoning against real answers, and 1,000-word
    scrambles of them (the size of a cut-off answer), where a table off by one word would show."""
    import random

    from rouge_score import rouge_scorer

    records = json.loads(real_records_path.read_text())[:40]
    predictions = [r["Complex_CoT"] for r in records] + [r["Response"] for r in records]
    references = [r["Response"] for r in records] + [r["Complex_CoT"] + " " + r["Response"] for r in records]
    words = " ".join(references).split()
    generator = random.Random(0)
    predictions += [" ".join(generator.choice(words) for _ in range(1000)) for _ in range(10)]
    references += references[-10:]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)]
    assert rouge_l_f1(predictions, references) == pytest.approx(expected, abs=1e-12)
    assert 0 < min(expected) and max(expected) < 1


def test_format_compliance_and_truncation_rate():
    answers = [
        answer("<think>t</think><response>r</response>"),
        answer("<think>t</think><response>cut", truncated=True),
        answer("no tags", truncated=True),
        answer("<think>t</think><response>r</response>"),
    ]
    assert format_compliance([a.parsed for a in answers]) == 0.5
    assert truncation_rate(answers) == 0.5
    with pytest.raises(ValueError):
        truncation_rate([])


def test_graded_response_falls_back_to_the_text_after_think():
    assert graded_response(answer("<think>t</think> plain answer")) == "plain answer"
    assert graded_response(answer(" untagged ")) == "untagged"


def test_summarize_and_score_answers_on_hand_built_answers():
    answers = [
        answer("<think>iron stores low</think><response>the cat sat</response>", new_tokens=10),
        answer("<think>hmm</think><response>The answer is B", truncated=True, new_tokens=20, continued=True),
    ]
    references = pd.DataFrame({
        "response": ["the cat sat on the mat", "The answer is B"],
        "target": [answers[0].text, "<think>hmm</think><response>The answer is B</response>"],
        # Options are scored by log-likelihood (test_multiple_choice.py), never read from the answers.
        "options": [json.dumps({"A": "mat", "B": "dog"}), json.dumps({"A": "x", "B": "The answer is B"})],
        "answer_idx": ["A", "B"],
    })
    scores = score_answers(answers, references)
    assert scores["rouge_l_response"].tolist() == pytest.approx([2 / 3, 1.0])
    # Tags tokenise as words: 8 output tokens all in the 9-token target -> P 1, R 8/9, F 16/17.
    assert scores["rouge_l_full"].tolist() == pytest.approx([1.0, 16 / 17])
    assert list(scores.columns) == ["rouge_l_response", "rouge_l_full"]

    assert summarize(answers, references) == pytest.approx({
        "rouge_l_response": (2 / 3 + 1) / 2,
        "rouge_l_full": (1 + 16 / 17) / 2,
        "format_compliance": 0.5,
        "truncation_rate": 0.5,
        "continuation_rate": 0.5,
        "mean_output_tokens": 15.0,
        "n": 2,
    })
    with pytest.raises(ValueError, match=r"reference rows: column\(s\) target missing"):
        score_answers(answers, references.drop(columns="target"))
