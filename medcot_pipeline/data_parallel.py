"""Which data-parallel process this is, and how the global batch is shared among processes: plain Python
(no torch) that `backends/`, `settings.py` and `training/` all read, so none of them imports the launcher.

One process per GPU, started by torchrun, which names each in RANK, LOCAL_RANK and WORLD_SIZE; a process
started without torchrun is rank 0 of 1. Only rank 0 talks to Dagster, W&B and the artifacts root.

The global batch is what a profile sets: `per_device_train_batch_size x gradient_accumulation_steps` rows make
one optimizer step on any number of GPUs. N processes share those rows, so the records per step, and with
them `max_steps`, `learning_rate`, warm-up, evaluation and checkpoint steps, mean on N GPUs what they mean on
one. transformers' `average_tokens_across_devices` (on by default) normalises the loss over the tokens of all
ranks, so the gradient of a step is the one-GPU gradient of the same rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


class BatchSplitError(ValueError):
    """A global batch that cannot be shared evenly by the processes asked for."""


@dataclass(frozen=True)
class BatchSplit:
    """What each of `processes` data-parallel processes runs for one optimizer step."""

    processes: int
    per_device_batch: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.processes * self.per_device_batch * self.accumulation

    def describe(self) -> str:
        return (
            f"{self.global_batch} rows a step = {self.processes} process(es) x {self.per_device_batch} rows x "
            f"{self.accumulation} accumulation"
        )


def split_global_batch(per_device_batch: int, accumulation: int, processes: int) -> BatchSplit:
    """The profile's `per_device_batch x accumulation` rows a step, shared by `processes` processes.

    Each process gets the same number of rows; of the ways to make them, the largest micro-batch that is not
    larger than the profile's: per-GPU memory never exceeds what the profile needs on one GPU, and each step
    runs the fewest forward/backward passes. So batch 24 x 1 becomes 12 x 1 on 2 GPUs and 6 x 1 on 4; batch
    1 x 8 becomes 1 x 4 on 2; batch 8 x 4 becomes 8 x 2 on 2. Rows that do not divide evenly are an error
    (24 over 5 GPUs): any rounding would change the global batch the learning rate was chosen for.
    """
    if processes < 1 or per_device_batch < 1 or accumulation < 1:
        raise ValueError(f"processes, batch and accumulation must be positive, got {processes}, {per_device_batch}, {accumulation}")
    rows = per_device_batch * accumulation
    if rows % processes:
        raise BatchSplitError(
            f"the global batch of {rows} rows a step (per_device_train_batch_size {per_device_batch} x "
            f"gradient_accumulation_steps {accumulation}) does not split evenly over {processes} GPUs; "
            f"use a GPU count that divides it ({', '.join(map(str, divisors(rows)))}), or num_gpus: 0 for as many "
            "visible GPUs as do"
        )
    per_process = rows // processes
    micro = max(b for b in range(1, min(per_device_batch, per_process) + 1) if per_process % b == 0)
    return BatchSplit(processes=processes, per_device_batch=micro, accumulation=per_process // micro)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
