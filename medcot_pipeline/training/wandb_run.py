"""The W&B run of one training job: opened by rank 0 (offline unless the target says online) for the Trainer's
WandbCallback to log into, and where it ended up, for the training summary."""

from __future__ import annotations

import os
from pathlib import Path

from medcot_pipeline.contracts import WandbRun, WandbTarget
from medcot_pipeline.settings import TrainingSettings


def start_wandb(target: WandbTarget, settings: TrainingSettings, log):
    """A W&B run (offline unless mode is online) that the Trainer's WandbCallback logs into, or None."""
    if not target.enabled:
        return None
    os.environ["WANDB_MODE"] = target.mode
    os.environ["WANDB_DIR"] = target.dir
    os.environ["WANDB_PROJECT"] = target.project
    # No banner or run summary on stderr (dozens of lines); the line logged below says where the run is.
    os.environ["WANDB_SILENT"] = "true"
    if target.entity:
        os.environ["WANDB_ENTITY"] = target.entity
    Path(target.dir).mkdir(parents=True, exist_ok=True)
    from medcot_pipeline.training.wandb_connection import init_run

    # Offline, with a warning, when the W&B server cannot be reached: tracking never costs the training run.
    run = init_run(
        log,
        project=target.project,
        entity=target.entity,
        dir=target.dir,
        mode=target.mode,
        name=target.run_name,
        config={"training": settings.model_dump()},
    )
    log.info(f"W&B run {run.name} ({run.settings.mode}): {run.url or run.settings.sync_dir}")
    return run


def wandb_location(run) -> WandbRun | None:
    if run is None:
        return None
    return WandbRun(run_path=run.path, url=run.url, dir=run.settings.sync_dir)
