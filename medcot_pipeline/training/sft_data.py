"""Turn a formatted split into the prompt-completion dataset TRL's SFTTrainer trains on."""

from __future__ import annotations

import pandas as pd
from datasets import Dataset

from medcot_pipeline.chat_format import training_example


def to_training_dataset(tokenizer, frame: pd.DataFrame) -> Dataset:
    """Conversational prompt-completion rows, so TRL computes the loss on the assistant turn only."""
    rows = []
    for position, (question, target) in enumerate(zip(frame["question"], frame["target"], strict=True)):
        for field, value in (("question", question), ("target", target)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"row {position}: {field} is empty or not text")
        rows.append(training_example(tokenizer, question, target))
    if not rows:
        raise ValueError("the split has no rows to train on")
    return Dataset.from_list(rows)
