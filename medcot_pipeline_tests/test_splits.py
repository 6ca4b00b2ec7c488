"""Formatting cleaned records into targets, and the seeded train/validation split."""

import json

import pandas as pd
import pytest

from medcot_pipeline.chat_format import build_target
from medcot_pipeline.settings import RawDatasetSettings
from medcot_pipeline.data.schema import DatasetError
from medcot_pipeline.data.sources import load_records
from medcot_pipeline.data.cleaning import clean_records
from medcot_pipeline.data.schema import FORMATTED_COLUMNS
from medcot_pipeline.data.splits import format_records, split_train_validation


def cleaned(n, **extra):
    rows = [{"Question": f"Question {i}?", "Complex_CoT": f"Okay, case {i}.", "Response": f"Answer {i}.", **extra} for i in range(n)]
    return clean_records(pd.DataFrame(rows))[0]


def test_format_records_builds_targets_and_passes_mcq_metadata():
    df = cleaned(2, options={"A": "x", "B": "y"}, answer_idx="B", answer="y", unrelated="dropped")
    out = format_records(df)
    assert tuple(out.columns) == FORMATTED_COLUMNS
    assert out.loc[1, "question"] == "Question 1?"
    assert out.loc[1, "target"] == build_target("Okay, case 1.", "Answer 1.")
    assert out.loc[1, "target"] == "<think>Okay, case 1.</think><response>Answer 1.</response>"
    assert json.loads(out.loc[0, "options"]) == {"A": "x", "B": "y"}
    assert out["answer_idx"].tolist() == ["B", "B"]


def test_format_records_without_mcq_columns_gives_nulls():
    out = format_records(cleaned(3))
    for column in ("options", "answer_idx", "answer"):
        assert out[column].tolist() == [None, None, None]


def test_format_records_uses_the_cleaned_question_not_a_lowercase_source_column():
    # The real export also has a `question` column (the original MCQ stem); the target pairs with `Question`.
    df = cleaned(1, question="original stem")
    assert format_records(df).loc[0, "question"] == "Question 0?"


@pytest.mark.parametrize(
    "field,value,message",
    [("Complex_CoT", "a <think> b", "row 0: Complex_CoT contains <think>"), ("Response", None, "row 0: Response is not")],
)
def test_format_records_refuses_uncleaned_text(field, value, message):
    df = pd.DataFrame([{"Question": "q?", "Complex_CoT": "c", "Response": "r", field: value}])
    with pytest.raises(DatasetError, match=message):
        format_records(df)


def test_split_is_deterministic_order_independent_and_disjoint():
    df = format_records(cleaned(200))
    train, validation, info = split_train_validation(df, validation_size=25, seed=3407)
    again_train, again_validation, _ = split_train_validation(df, validation_size=25, seed=3407)
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled_train, shuffled_validation, _ = split_train_validation(shuffled, validation_size=25, seed=3407)

    assert len(validation) == 25 and len(train) == 175
    assert info["validation_size_reason"] == "as requested"
    assert not set(train["question"]) & set(validation["question"])
    assert set(train["question"]) | set(validation["question"]) == set(df["question"])
    pd.testing.assert_frame_equal(validation, again_validation)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(validation, shuffled_validation)
    pd.testing.assert_frame_equal(train, shuffled_train)

    _, other_seed_validation, _ = split_train_validation(df, validation_size=25, seed=1)
    assert set(other_seed_validation["question"]) != set(validation["question"])


def test_rows_sharing_a_question_stay_on_one_side():
    df = format_records(cleaned(20))
    doubled = pd.concat([df, df], ignore_index=True)
    train, validation, info = split_train_validation(doubled, validation_size=3, seed=0)
    assert not set(train["question"]) & set(validation["question"])
    assert info["validation_questions"] == 3 and info["validation_rows"] == 6


@pytest.mark.parametrize("rows,requested,expected", [(10, 5, 2), (2, 100, 1), (4, 1, 1), (40, 100, 8)])
def test_small_data_caps_validation_at_a_fifth(rows, requested, expected):
    train, validation, info = split_train_validation(format_records(cleaned(rows)), requested, seed=3407)
    assert len(validation) == expected and len(train) == rows - expected
    assert info["validation_requested"] == requested and info["validation_questions"] == expected
    if expected < requested:
        assert info["validation_size_reason"].startswith(f"capped at 20% of {rows} distinct questions")


def test_fewer_than_two_questions_cannot_be_split():
    with pytest.raises(DatasetError, match=r"cannot split 1 row\(s\) with 1 distinct question\(s\)"):
        split_train_validation(format_records(cleaned(1)), 1, seed=0)


def test_real_records_format_and_split(real_records_path):
    raw, _ = load_records(RawDatasetSettings(source="file", path=str(real_records_path)))
    formatted = format_records(clean_records(raw)[0])
    assert len(formatted) == 198
    assert formatted["target"].str.startswith("<think>").all() and formatted["target"].str.endswith("</response>").all()
    assert (formatted["target"].str.count("<think>") == 1).all()
    train, validation, info = split_train_validation(formatted, validation_size=100, seed=3407)
    assert (len(train), len(validation)) == (159, 39)
    assert "capped" in info["validation_size_reason"]


def test_questions_that_differ_in_case_whitespace_or_unicode_form_land_on_one_side():
    """The split key is the comparison key: variants of one question (kept because their reasoning differs, e.g. a
    source with near-duplicates) never straddle train and validation, and count as one distinct question."""
    from medcot_pipeline.data.text_comparison import comparison_key

    base = [f"Which drug treats case {i}?" for i in range(30)]
    variants = [q.upper() for q in base] + [q.replace(" ", "  ") for q in base] + [q.replace("?", "\uff1f") for q in base]
    df = pd.DataFrame({"question": base + variants, "target": ["t"] * (len(base) + len(variants))})
    train, validation, info = split_train_validation(df, validation_size=5, seed=3407)
    assert info["distinct_questions"] == 30 and info["validation_questions"] == 5
    assert len(validation) == 20  # each held-out question with its three variants
    assert not set(map(comparison_key, train["question"])) & set(map(comparison_key, validation["question"]))


def test_the_overlap_check_compares_comparison_keys(tmp_path):
    """The blocking check fails on a validation question that is a training one in another case."""
    from medcot_pipeline.defs.checks import no_train_validation_overlap

    frame = lambda questions: pd.DataFrame({c: [q if c == "question" else "x" for q in questions] for c in FORMATTED_COLUMNS})
    frame(["What causes croup?", "Dose of aspirin?"]).to_parquet(tmp_path / "train.parquet")
    frame(["WHAT CAUSES  CROUP?"]).to_parquet(tmp_path / "validation.parquet")
    result = no_train_validation_overlap(str(tmp_path))
    assert not result.passed and result.metadata["overlapping_questions"].value == 1


def test_without_variants_the_split_is_the_one_keyed_by_each_question_s_text():
    """Questions compared by key changed no split of data without variants: the held-out questions are still those
    whose sha256(seed, text) is smallest (so earlier evaluations stay comparable)."""
    import hashlib

    df = format_records(cleaned(50))
    _, validation, _ = split_train_validation(df, validation_size=5, seed=3407)
    by_text = sorted(df["question"], key=lambda q: hashlib.sha256(f"3407\x00{q}".encode()).hexdigest())[:5]
    assert set(validation["question"]) == set(by_text)
