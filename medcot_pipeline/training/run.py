"""The training process that Dagster launches through Pipes: `python -m medcot_pipeline.training.run`.

Reads its job (the Pipes extras, a `TrainingJob`), runs the LoRA fine-tuning recipe (training/recipe.py:
setup, train from the last complete checkpoint, save the adapter with its `TrainingSummary`, clean up), and
reports the materialization. It imports `dagster_pipes`, never `dagster`: every torchrun rank starts this
module, and the orchestrator stays out. Nothing here imports transformers, TRL or PEFT: the recipe imports
them after the backend is prepared, because Unsloth must be imported before them.
"""

from __future__ import annotations

import logging

from medcot_pipeline import data_parallel
from medcot_pipeline.contracts import LOSS_CURVE_FILE, TrainingJob, TrainingSummary
from medcot_pipeline.training.recipe import LoraFinetuneRecipe

__all__ = ["LOSS_CURVE_FILE", "main", "train"]


def train(job: TrainingJob, log: logging.Logger) -> TrainingSummary:
    """Fine-tune, save the adapter into `job.output_dir` (rank 0), and return the training summary."""
    recipe = LoraFinetuneRecipe(job, log)
    try:
        recipe.setup()
        recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()


def main() -> None:
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    if not data_parallel.is_main_process():
        # Other ranks train in step with rank 0 but never write to Dagster: they only read the extras.
        with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as context:
            extras = context["extras"]
        logging.basicConfig(level=logging.WARNING, format=f"rank {data_parallel.rank()}: %(message)s")
        train(TrainingJob.parse(extras, "Pipes extras"), logging.getLogger(f"medcot_pipeline.rank{data_parallel.rank()}"))
        return

    with open_dagster_pipes() as pipes:
        # Notes from the backend and trainer modules reach Dagster's log too.
        package_logger = logging.getLogger("medcot_pipeline")
        package_logger.setLevel(logging.INFO)
        for handler in pipes.log.handlers:
            package_logger.addHandler(handler)
        job = TrainingJob.parse(pipes.extras, "Pipes extras")
        train(job, pipes.log)
        # The page is built by the step from the summary and the PNG written beside the adapter, not sent here: a
        # Pipes message is one JSON line, and Dagster's file reader can read a long one (the inline PNG) before
        # its end and lose it.
        pipes.report_asset_materialization()


if __name__ == "__main__":
    # Under torchrun, a rank's exception goes into its error file, so torchrun's report (and the step's error) carries it.
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
