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


def newest_complete_checkpoint(checkpoint_dir: Path, log: logging.Logger | None = None) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json exists and parses; None when there is none.

    The Trainer writes trainer_state.json last, so a process killed while saving leaves a folder without it
    (or with it cut short); transformers' get_last_checkpoint would pick that folder and fail to resume.
    Each folder skipped is a warning on `log`.
    """
    log = log or logger
    if not checkpoint_dir.is_dir():
        return None
    candidates = [(step, path) for path in checkpoint_dir.iterdir() if path.is_dir() and (step := checkpoint_step(path)) is not None]
    for _, path in sorted(candidates, reverse=True):
        state = path / "trainer_state.json"
        if not state.exists():
            log.warning(f"{path.name} has no trainer_state.json (interrupted while saving); skipping it")
            continue
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            # transformers writes the state in place: a full disk or power loss can leave it empty or cut.
            log.warning(f"{path.name}/trainer_state.json is unreadable (interrupted while saving); skipping it")
            continue
        return path
    return None
