"""The columns each stage reads and writes, and the one check that a table has them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# medical-o1 as published: what raw_dataset must hold.
RAW_COLUMNS = ("Question", "Complex_CoT", "Response")
# What formatted_splits writes for each record.
FORMATTED_COLUMNS = ("question", "reasoning", "response", "target", "options", "answer_idx", "answer")
MULTIPLE_CHOICE_COLUMNS = ("options", "answer_idx", "answer")
# What each reader of a split needs.
TRAINING_COLUMNS = ("question", "target")
EVALUATION_COLUMNS = ("question", "response", "target")
SPLITS = ("train", "validation")


class DatasetError(ValueError):
    """Records that cannot be loaded or hold nothing usable; the message names the file and the field.

    Loading the same input again fails the same way, so it is never worth a retry.
    """


class SourceUnreachableError(DatasetError):
    """The source could not be reached (no network, a Hub outage); this one may pass on a retry."""


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], where: str) -> None:
    """Fail naming `where` (a file, or a step) and the missing columns, with the columns that are there."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DatasetError(f"{where}: column(s) {', '.join(missing)} missing; columns found: {', '.join(map(str, frame.columns))}")


def split_path(splits_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return Path(splits_dir) / f"{split}.parquet"


def read_split(splits_dir: str | Path, split: str, columns: tuple[str, ...] = FORMATTED_COLUMNS) -> pd.DataFrame:
    """One formatted split; fails naming the file when it is missing or lacks a column `columns` names."""
    path = split_path(splits_dir, split)
    if not path.exists():
        raise DatasetError(f"split file {path} does not exist")
    frame = pd.read_parquet(path)
    require_columns(frame, columns, str(path))
    return frame
