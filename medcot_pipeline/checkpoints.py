"""Which of a Trainer's `checkpoint-N` folders a run may resume from: one scan, read by the training process
(where to resume) and by the checkpoint mirror (whether this node already holds the newest)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

# transformers' PREFIX_CHECKPOINT_DIR, spelled out: the artifact store reads checkpoints without importing it.
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")

logger = logging.getLogger(__name__)


def checkpoint_step(path: Path) -> int | None:
    """N of a `checkpoint-N` folder name, None for any other name."""
    match = CHECKPOINT_NAME.fullmatch(path.name)
    return int(match[1]) if match else None


def newest_complete_checkpoint(checkpoint_dir: Path, log: logging.Logger | None = None, max_steps: int | None = None) -> Path | None:
    """The newest checkpoint-N that is whole; with `max_steps`, also below it. None when there is none.

    transformers' get_last_checkpoint takes the highest-numbered folder as it is. The Trainer writes
    trainer_state.json last, so a process killed while saving leaves a folder without it, and a weights or
    optimizer file cut short later fails the resume the same way on every rerun: each is skipped, with a warning
    naming the file (file_integrity.checkpoint_problem), for the one before it. And the last checkpoint of a
    finished training is its result, not a point to resume from: resuming from it when max_steps is not a whole
    number of epochs makes the Trainer run one more step than max_steps.
    """
    from medcot_pipeline.file_integrity import checkpoint_problem

    log = log or logger
    if not checkpoint_dir.is_dir():
        return None
    candidates = [(step, path) for path in checkpoint_dir.iterdir() if path.is_dir() and (step := checkpoint_step(path)) is not None]
    for step, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is not None:
            log.warning(f"{problem}; skipping it")
            continue
        try:
            global_step = json.loads((path / "trainer_state.json").read_text()).get("global_step", step)
        except (OSError, ValueError):
            # transformers writes the state in place: a full disk or power loss can leave it empty or cut.
            log.warning(f"{path.name}/trainer_state.json is unreadable (interrupted while saving); skipping it")
            continue
        if max_steps is not None and global_step >= max_steps:
            log.info(
                f"{path.name} is the end of a finished training (step {global_step} of max_steps {max_steps}), "
                "a result rather than a point to resume from; looking for an earlier one"
            )
            continue
        return path
    return None
