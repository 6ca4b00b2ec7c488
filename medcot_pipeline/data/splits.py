"""Turn cleaned records into training examples and split them into train and validation sets."""

from __future__ import annotations

import hashlib
import math

import pandas as pd

from medcot_pipeline.chat_format import TAGS, build_target
from medcot_pipeline.data.schema import MULTIPLE_CHOICE_COLUMNS, RAW_COLUMNS, DatasetError, require_columns
from medcot_pipeline.data.text_comparison import comparison_key

# Small datasets keep most rows for training: validation never takes more than this share.
MAX_VALIDATION_SHARE = 0.2


def format_records(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cleaned record: question, reasoning, response, the training target, MCQ metadata."""
    require_columns(df, RAW_COLUMNS, "cannot format records")
    questions, reasonings, responses = (df[column].tolist() for column in RAW_COLUMNS)
    for row, texts in enumerate(zip(questions, reasonings, responses, strict=True)):
        for field, text in zip(RAW_COLUMNS, texts, strict=True):
            if not isinstance(text, str) or not text:
                raise DatasetError(f"row {row}: {field} is not a non-empty string; run clean_records first")
            tag = next((tag for tag in TAGS if tag in text), None)
            if tag is not None:
                raise DatasetError(f"row {row}: {field} contains {tag}; run clean_records first")

    formatted = pd.DataFrame(
        {
            "question": questions,
            "reasoning": reasonings,
            "response": responses,
            "target": [build_target(reasoning, response) for reasoning, response in zip(reasonings, responses, strict=True)],
        }
    )
    for column in MULTIPLE_CHOICE_COLUMNS:
        values = df[column].tolist() if column in df.columns else [None] * len(df)
        # object dtype keeps None as None; a str column would turn it into NaN.
        formatted[column] = pd.Series([_none_if_missing(value) for value in values], dtype="object")
    return formatted


def split_train_validation(df: pd.DataFrame, validation_size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(train, validation, info): a seeded split by question that does not depend on row order.

    Questions with the same comparison key (data/text_comparison.py: differing only in case, whitespace, Unicode
    form or invisible characters) are one question; each gets a key hashed from the seed and its text, and the
    questions with the smallest keys are held out. The same records and seed therefore give the same split
    in any order, and rows sharing a question, in any of its spellings, always land on the same side.
    """
    if validation_size < 1:
        raise DatasetError(f"validation_size must be at least 1, got {validation_size}")
    require_columns(df, ("question",), "cannot split")
    questions = df["question"].tolist()
    compared = [comparison_key(question) for question in questions]
    # The smallest spelling stands for each question: its key does not depend on row order, and data without variants
    # keeps the split it had before questions were compared by key.
    spelling: dict[str, str] = {}
    for question, key in zip(questions, compared, strict=True):
        spelling[key] = min(spelling.get(key, question), question)
    keys = [_split_key(seed, spelling[key]) for key in compared]
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DatasetError(
            f"cannot split {len(df)} row(s) with {len(distinct)} distinct question(s): "
            "need at least 2, one for training and one for validation"
        )

    cap = max(1, math.floor(MAX_VALIDATION_SHARE * len(distinct)))
    actual = min(validation_size, cap)
    if actual < validation_size:
        reason = (
            f"capped at {MAX_VALIDATION_SHARE:.0%} of {len(distinct)} distinct questions ({cap}) so that most records stay for training"
        )
    else:
        reason = "as requested"
    held_out = set(distinct[:actual])

    ordered = df.assign(_split_key=keys).sort_values("_split_key", kind="stable")
    is_validation = ordered["_split_key"].isin(held_out)
    train = ordered[~is_validation].drop(columns="_split_key").reset_index(drop=True)
    validation = ordered[is_validation].drop(columns="_split_key").reset_index(drop=True)
    info = {
        "validation_requested": validation_size,
        "validation_questions": actual,
        "validation_rows": len(validation),
        "train_rows": len(train),
        "distinct_questions": len(distinct),
        "validation_size_reason": reason,
        "seed": seed,
    }
    return train, validation, info


def _none_if_missing(value):
    return None if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) else value


def _split_key(seed: int, question: str) -> str:
    return hashlib.sha256(f"{seed}\x00{question}".encode()).hexdigest()
