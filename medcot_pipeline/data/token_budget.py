"""Measure formatted records in tokens, as the trainer will see them, and apply the over-length policy."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from medcot_pipeline.chat_format import training_example

BATCH_SIZE = 256


def record_token_lengths(tokenizer, df: pd.DataFrame) -> list[int]:
    """Tokens per row of prompt + target + end of turn, tokenized the way TRL's SFTTrainer does.

    With a chat template the whole conversation is rendered (its end-of-turn token included) and
    tokenized without adding special tokens, since the template already holds them; without one the
    plain prompt and the completion (target + eos) are tokenized as one text, BOS added.
    """
    texts, add_special_tokens = [], True
    for question, target in zip(df["question"].tolist(), df["target"].tolist(), strict=True):
        example = training_example(tokenizer, question, target)
        if isinstance(example["prompt"], list):
            add_special_tokens = False
            texts.append(tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False))
        else:
            texts.append(example["prompt"] + example["completion"])
    lengths: list[int] = []
    for start in range(0, len(texts), BATCH_SIZE):
        encoded = tokenizer(texts[start : start + BATCH_SIZE], add_special_tokens=add_special_tokens)
        lengths.extend(len(ids) for ids in encoded["input_ids"])
    return lengths


def length_stats(lengths: list[int]) -> dict:
    """count, mean, median, p90, p99 and max of token lengths (None when there are none)."""
    if not lengths:
        return {"count": 0, "mean": None, "median": None, "p90": None, "p99": None, "max": None}
    values = np.asarray(lengths)
    return {
        "count": int(values.size),
        "mean": round(float(values.mean()), 1),
        "median": round(float(np.median(values)), 1),
        "p90": round(float(np.percentile(values, 90)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": int(values.max()),
    }


def apply_overlength_policy(
    df: pd.DataFrame, lengths: list[int], max_seq_length: int, policy: Literal["drop", "truncate"]
) -> tuple[pd.DataFrame, int]:
    """(rows kept, rows longer than max_seq_length): drop removes those rows, truncate keeps them all
    and leaves the cut to the trainer's max_length."""
    if len(lengths) != len(df):
        raise ValueError(f"{len(lengths)} token lengths for {len(df)} rows")
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be at least 1, got {max_seq_length}")
    over = np.asarray(lengths, dtype=np.int64) > max_seq_length
    n_over = int(over.sum())
    if policy == "drop":
        return df[~over].reset_index(drop=True), n_over
    if policy == "truncate":
        return df.reset_index(drop=True), n_over
    raise ValueError(f"overlength policy must be 'drop' or 'truncate', got {policy!r}")
