"""The option log-likelihood scorer against log-probabilities computed by hand on a tiny random Llama."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from medcot_pipeline.base_models import load_tokenizer
from medcot_pipeline.evaluation.multiple_choice import (
    answer_letter,
    multiple_choice_accuracy,
    option_loglikelihoods,
    parse_options,
    score_multiple_choice,
)

QUESTIONS = [
    (
        "A 6-year-old has a sore throat, fever and tender cervical nodes. Which drug treats strep throat?",
        {"A": "Penicillin", "B": "Vancomycin", "C": "Metronidazole", "D": "Fluconazole"},
    ),
    ("What causes iron deficiency anemia in adults?", {"A": "Chronic blood loss", "B": "Folate deficiency", "C": "Hemolysis", "D": "Lead", "E": "Alcohol"}),
    # Keys that are not single letters tokenise to several tokens: the continuation is longer than one.
    ("Which nerve supplies the deltoid?", {"(i)": "Axillary nerve", "(ii)": "Radial nerve", "(iii)": "Musculocutaneous nerve"}),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return model, load_tokenizer(str(tiny_llama_dir))


def by_hand(model, tokenizer, question: str, options: dict[str, str]) -> dict[str, float]:
    """lm-eval's medqa context and " X" continuation, one unpadded forward per option."""
    context = f"Question: {question}\n" + "".join(f"{k}. {v}\n" for k, v in options.items()) + "Answer:"
    context_ids = tokenizer(context)["input_ids"]
    scores = {}
    for letter in options:
        continuation = tokenizer(context + " " + letter)["input_ids"][len(context_ids):]
        ids = torch.tensor([context_ids + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        # The logits at position p predict token p + 1.
        positions = torch.arange(len(context_ids) - 1, len(context_ids) - 1 + len(continuation))
        scores[letter] = log_probs[positions, torch.tensor(continuation)].sum().item()
    return scores


def test_option_loglikelihoods_match_a_forward_by_hand(tiny):
    model, tokenizer = tiny
    for question, options in QUESTIONS:
        expected = by_hand(model, tokenizer, question, options)
        assert option_loglikelihoods(model, tokenizer, question, json.dumps(options)) == pytest.approx(expected, abs=1e-5)
    # The multi-token keys really exercise a continuation longer than one token.
    context = "Answer:"
    assert len(tokenizer(context + " (iii)")["input_ids"]) - len(tokenizer(context)["input_ids"]) > 1


def test_padded_batches_score_as_single_questions(tiny):
    """Questions of different lengths share left-padded batches: each still scores as it does alone."""
    model, tokenizer = tiny
    rows = pd.DataFrame({
        "question": [q for q, _ in QUESTIONS],
        "options": [json.dumps(o) for _, o in QUESTIONS],
        "answer_idx": ["A", "A", "(i)"],
    })
    for batch_size in (1, 2, 5):
        scores = score_multiple_choice(model, tokenizer, rows, batch_size=batch_size)
        for (question, options), found in zip(QUESTIONS, scores.loglikelihoods):
            assert found == pytest.approx(by_hand(model, tokenizer, question, options), abs=1e-5)


def test_accuracy_is_the_share_of_rows_whose_most_likely_letter_is_the_answer(tiny, real_records_path):
    model, tokenizer = tiny
    records = json.loads(real_records_path.read_text())[:6]
    best = []
    for record in records:
        scores = by_hand(model, tokenizer, record["question"], record["options"])
        best.append(max(scores, key=scores.get))
    # The first four rows name the tiny model's favourite as the answer, the last two another letter.
    answers = best[:4] + [next(letter for letter in r["options"] if letter != b) for r, b in zip(records[4:], best[4:])]
    rows = pd.DataFrame({
        "question": [r["question"] for r in records] + ["An open question without options?"],
        "options": [json.dumps(r["options"]) for r in records] + [None],
        "answer_idx": answers + [None],
    })
    scores = score_multiple_choice(model, tokenizer, rows, batch_size=4)
    assert (scores.accuracy, scores.n) == (pytest.approx(4 / 6), 6)
    assert scores.chosen == best + [None] and scores.loglikelihoods[-1] is None
    assert multiple_choice_accuracy(model, tokenizer, rows, batch_size=4) == (pytest.approx(4 / 6), 6)


def test_rows_without_options_give_none_never_zero(tiny):
    model, tokenizer = tiny
    open_ended = pd.DataFrame({"question": ["Why?", "How?"], "options": [None, float("nan")], "answer_idx": [None, None]})
    assert multiple_choice_accuracy(model, tokenizer, open_ended) == (None, 0)
    assert multiple_choice_accuracy(model, tokenizer, open_ended.drop(columns=["options", "answer_idx"])) == (None, 0)
    # Options but no way to tell the right one: not scored either.
    unanswered = pd.DataFrame({"question": ["Which?"], "options": [json.dumps({"A": "x", "B": "y"})], "answer_idx": [None]})
    scores = score_multiple_choice(model, tokenizer, unanswered)
    assert (scores.accuracy, scores.n, scores.chosen) == (None, 0, [None])


def test_a_row_with_unreadable_options_is_named(tiny):
    model, tokenizer = tiny
    rows = pd.DataFrame({"question": ["a", "b"], "options": [None, "[1, 2]"], "answer_idx": [None, "A"]})
    with pytest.raises(ValueError, match=r"multiple-choice row 1: options must be a JSON object"):
        score_multiple_choice(model, tokenizer, rows)
    with pytest.raises(ValueError, match=r"column\(s\) question missing"):
        score_multiple_choice(model, tokenizer, rows.drop(columns="question"))


def test_answer_letter_comes_from_answer_idx_or_the_answer_text_on_real_records(real_records_path):
    records = json.loads(real_records_path.read_text())
    for record in records:
        assert answer_letter(record["options"], record["answer_idx"]) == record["answer_idx"]
        # Records that carry only the answer text still get their letter.
        assert answer_letter(record["options"], None, record["answer"]) == record["answer_idx"]
    assert answer_letter({"A": "x", "B": "x"}, None, "x") is None  # ambiguous
    assert answer_letter({"A": "x"}, "Z", None) is None
    assert answer_letter(None, "A", "x") is None


def test_parse_options():
    assert parse_options('{"A": "x"}') == {"A": "x"}
    assert parse_options({"A": "x"}) == {"A": "x"}
    assert parse_options(None) is None and parse_options(float("nan")) is None and parse_options("{}") is None
    with pytest.raises(ValueError, match="got int"):
        parse_options(3)
