"""Which checkpoint a rerun of the same training resumes from: the newest one that is whole and not already the end.

transformers' get_last_checkpoint takes the highest-numbered folder as it is. A folder the Trainer was killed
while writing, or one whose weights were cut short later, then fails the resume on every rerun in the same way;
here it is skipped, with a message, for the one before it. And the last checkpoint of a finished training is its
result, not a point to resume from: resuming from it when max_steps is not a whole number of epochs makes the
Trainer run one more step than max_steps (it skips into the next epoch and stops only after a step there).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from medcot_pipeline.artifact_store import CHECKPOINT_NAME
from medcot_pipeline.file_integrity import checkpoint_problem


def checkpoints_newest_first(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(checkpoint_dir).glob("checkpoint-*") if Path(checkpoint_dir).is_dir() else []:
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    return sorted(found, reverse=True)


def resume_point(checkpoint_dir: Path, max_steps: Optional[int], log: logging.Logger) -> Optional[str]:
    """The newest checkpoint-N that is whole (file_integrity.checkpoint_problem) and, when `max_steps` is given,
    below it; None to start fresh. Each checkpoint passed over is named in a warning with the reason."""
    for step, path in checkpoints_newest_first(checkpoint_dir):
        problem = checkpoint_problem(path)
        if problem is not None:
            log.warning(f"{problem}; skipping it")
            continue
        global_step = json.loads((path / "trainer_state.json").read_text()).get("global_step", step)
        if max_steps is not None and global_step >= max_steps:
            log.info(
                f"{path.name} is the end of a finished training (step {global_step} of max_steps {max_steps}), "
                "a result rather than a point to resume from; looking for an earlier one"
            )
            continue
        return str(path)
    return None
