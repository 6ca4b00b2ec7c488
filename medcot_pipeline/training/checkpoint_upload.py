"""Commits each checkpoint the Trainer saves to object storage, so a rerun on another node resumes from it."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from medcot_pipeline.artifact_store import CheckpointMirror
from medcot_pipeline.contracts import TrainingJob
from medcot_pipeline.data_parallel import is_main_process


class CheckpointUpload(TrainerCallback):
    """After the Trainer has saved `checkpoint-N` locally (trainer_state.json included), commit it to the mirror:
    files first, manifest last, keeping as many as `save_total_limit` keeps locally."""

    def __init__(self, mirror: CheckpointMirror, keep: int, log):
        self.mirror, self.keep, self.log = mirror, keep, log

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.log.info(f"{checkpoint.name} committed to {self.mirror.push(checkpoint, self.keep)}")


def callbacks(job: TrainingJob, log) -> list[TrainerCallback]:
    """The upload callback when the job's artifacts root is object storage (rank 0 only writes), else none."""
    if not job.checkpoint_location or not is_main_process():
        return []
    return [CheckpointUpload(CheckpointMirror(job.checkpoint_location, job.checkpoint_dir), job.settings.save_total_limit, log)]
