"""The multiple-choice parser: which option an answer chose, read as documented in evaluation/choice_reading.py."""

import ast
import json

import pytest

from medcot_pipeline.evaluation.choice_reading import (
    ANSWER_STATEMENT,
    CUT_OFF,
    INSTRUCTION,
    LEADING_LETTER,
    LEADING_OPTION_TEXT,
    NO_READABLE_CHOICE,
    SEVERAL_OPTIONS,
    SINGLE_OPTION_NAMED,
    ChoiceReading,
    benchmark_prompt,
    read_choice,
)

OPTIONS = {"A": "Benign genetic carrier condition", "B": "Folate deficiency", "C": "Iron deficiency",
           "D": "Parvovirus B19 infection", "E": "Vitamin B12 deficiency"}
YES_NO_MAYBE = {"A": "yes", "B": "no", "C": "maybe"}


@pytest.mark.parametrize(
    ("text", "choice", "rule"),
    [
        ("The answer is D.", "D", ANSWER_STATEMENT),
        ("**Answer: E**", "E", ANSWER_STATEMENT),
        ("Answer - (B)", "B", ANSWER_STATEMENT),
        ("I would choose C because iron stores are empty.", "C", ANSWER_STATEMENT),
        ("Option C is correct.", "C", ANSWER_STATEMENT),
        # The last statement wins: models often reconsider.
        ("The answer is likely B, but the low reticulocytes say otherwise. Final answer: D", "D", ANSWER_STATEMENT),
        ("the answer is parvovirus B19 infection", "D", ANSWER_STATEMENT),
        ("D", "D", LEADING_LETTER),
        ("(B)", "B", LEADING_LETTER),
        ("B. Folate deficiency, given the macrocytosis.", "B", LEADING_LETTER),
        ("A Benign genetic carrier condition", "A", LEADING_LETTER),
        ("Parvovirus B19 infection is the cause: it stops red cell production.", "D", LEADING_OPTION_TEXT),
        # An "A" that starts a sentence is an article, not a label; the one option it names decides.
        ("A patient like this most likely has parvovirus B19 infection.", "D", SINGLE_OPTION_NAMED),
        ("It could be folate deficiency or iron deficiency.", None, SEVERAL_OPTIONS),
        ("The marrow is failing for a reason I cannot name.", None, NO_READABLE_CHOICE),
        ("", None, NO_READABLE_CHOICE),
    ],
)
def test_choices_are_read_by_the_documented_rules(text, choice, rule):
    assert read_choice(text, OPTIONS) == ChoiceReading(choice, rule)


@pytest.mark.parametrize(
    ("text", "choice"),
    [("Yes, the shorter course cured as many.", "A"), ("No.", "B"), ("The answer is maybe.", "C"),
     ("It may be so... the answer is yes", "A"), ("Perhaps not", None), ("NO, it does not", "B")],
)
def test_yes_no_maybe_reads_the_words(text, choice):
    assert read_choice(text, YES_NO_MAYBE).choice == choice


def test_an_option_inside_another_names_only_the_longer_one():
    options = {"A": "Iron", "B": "Iron deficiency", "C": "Folate"}
    assert read_choice("This is iron deficiency, as the ferritin shows.", options).choice == "B"


def test_a_cut_off_answer_has_no_choice_whatever_it_said():
    assert read_choice("The answer is D", OPTIONS, cut_off=True) == ChoiceReading(None, CUT_OFF)


def test_case_unicode_and_spacing_do_not_matter():
    assert read_choice("ＰＡＲＶＯＶＩＲＵＳ  B19\u200b infection", OPTIONS).choice == "D"


def test_every_real_record_read_back_from_a_tagged_answer(real_records_path):
    """198 real medical-o1 records with their own options: an answer in the trained format that ends with the
    instructed statement, or that opens with the letter, is read as that letter."""
    records = json.loads(real_records_path.read_text())
    for record in records:
        options = record["options"] if isinstance(record["options"], dict) else ast.literal_eval(record["options"])
        letter = record["answer_idx"]
        stated = f"{record['Response']} The answer is {letter}."
        assert read_choice(stated, options).choice == letter
        assert read_choice(f"{letter}. {options[letter]}", options).choice == letter


def test_the_prompt_carries_context_options_and_instruction():
    prompt = benchmark_prompt("Does it work?", YES_NO_MAYBE, context="A trial of 400 adults.")
    assert prompt.splitlines()[0] == "Context: A trial of 400 adults."
    assert "A. yes\nB. no\nC. maybe" in prompt and prompt.endswith(INSTRUCTION)
    assert not benchmark_prompt("Q?", YES_NO_MAYBE, context=float("nan")).startswith("Context")


def test_options_are_required():
    with pytest.raises(ValueError, match="options"):
        read_choice("A", {})
