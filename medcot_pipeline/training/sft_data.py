"""Turn a formatted split (Parquet) into the prompt-completion dataset TRL's SFTTrainer trains on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from datasets import Dataset

from medcot_pipeline.chat_format import training_example

REQUIRED_COLUMNS = ("question", "target")


def read_split(path: str | Path) -> pd.DataFrame:
    """A formatted split; fails naming the file when it is missing or lacks a needed column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist")
    frame = pd.read_parquet(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {', '.join(missing)} missing (has {', '.join(frame.columns)})")
    return frame


def to_training_dataset(tokenizer, frame: pd.DataFrame) -> Dataset:
    """Conversational prompt-completion rows, so TRL computes the loss on the assistant turn only."""
    rows = []
    for position, (question, target) in enumerate(zip(frame["question"], frame["target"])):
        for field, value in (("question", question), ("target", target)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"row {position}: {field} is empty or not text")
        rows.append(training_example(tokenizer, question, target))
    if not rows:
        raise ValueError("the split has no rows to train on")
    return Dataset.from_list(rows)
