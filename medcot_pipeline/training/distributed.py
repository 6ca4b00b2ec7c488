"""Data-parallel training's launcher: how many processes, torchrun starting them, which rank failed first, and
the gloo group that CPU ranks train in.

One process per GPU, started by torchrun from the same Pipes step. Only rank 0 talks to Dagster, W&B and
the artifacts root; every rank trains. Without CUDA the ranks use the gloo backend (what the CPU tests run).
Which process this is and how the global batch is shared are in `medcot_pipeline/data_parallel.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pydantic

from medcot_pipeline.data_parallel import world_size

# NVLink multicast can take a shared host's GPUs out of service; NCCL, PyTorch and NVSHMEM all keep it off.
MULTI_GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# Where the launcher writes which rank failed first, and how, for the Dagster step to report.
FAILURE_FILE_ENV = "MEDCOT_TORCHRUN_FAILURE_FILE"
LAUNCHER_MODULE = __name__


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def resolve_num_processes(num_gpus: int, global_batch: int, visible: int | None = None) -> int:
    """num_gpus as configured; 0 means the most of the visible GPUs that share `global_batch` rows evenly
    (all of them unless their count does not divide it; one process when there is no GPU)."""
    if num_gpus > 0:
        return num_gpus
    visible = visible_gpus() if visible is None else visible
    return max(n for n in range(1, max(visible, 1) + 1) if global_batch % n == 0)


def launch_command(num_processes: int, module: str) -> list[str]:
    """`python -m module`, or torchrun (through `torchrun_main`) starting `num_processes` of it on this host.

    No restarts: a failed rank fails the Dagster step, and the rerun resumes from the last checkpoint.
    """
    if num_processes <= 1:
        return [sys.executable, "-m", module]
    return [
        sys.executable,
        "-m",
        LAUNCHER_MODULE,
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "--max-restarts=0",
        "-m",
        module,
    ]


def launch_env(num_processes: int, failure_file: str | os.PathLike | None = None) -> dict[str, str]:
    if num_processes <= 1:
        return {}
    return {**MULTI_GPU_ENV, **({FAILURE_FILE_ENV: str(failure_file)} if failure_file else {})}


def torchrun_main(argv: list[str]) -> None:
    """torchrun, which also writes the first failed rank (rank, exit code, signal, error) as JSON to the file that
    MEDCOT_TORCHRUN_FAILURE_FILE names, so the step can say which process failed and why.

    torchrun's agent stops every other rank when one exits non-zero (none is left waiting in a collective) and
    prints the same report to stderr; a rank killed by a signal leaves no error file of its own.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(argv)
    except ChildFailedError as err:
        failure_file = os.environ.get(FAILURE_FILE_ENV)
        if failure_file:
            # A rank killed by a signal is the cause, whatever torchrun saw first: the ranks it left in a collective
            # fail a moment later with "Connection closed by peer", and may be observed in the same poll, earlier.
            # SIGTERM is torchrun's own stop for the ranks still running, never a cause.
            killed = {r: f for r, f in err.failures.items() if f.exitcode < 0 and f.signal_name() != "SIGTERM"}
            rank, failure = min(killed.items(), key=lambda item: item[1].timestamp) if killed else err.get_first_failure()
            message = failure.message  # a signal's description, or the rank's error file (training/run.py records it)
            if isinstance(message, dict):
                message = message.get("extraInfo", {}).get("py_callstack") or message.get("message", "")
            report = RankFailure(
                rank=rank,
                exitcode=failure.exitcode,
                signal=failure.signal_name() if failure.exitcode < 0 else None,
                message=str(message)[-4000:],
                failed_ranks=sorted(err.failures),
            )
            Path(failure_file).write_text(report.model_dump_json())
        raise


class RankFailure(pydantic.BaseModel):
    """The first rank that failed, as torchrun observed it: written by the launcher, read by the Dagster step."""

    rank: int
    exitcode: int
    signal: str | None = None
    message: str = ""
    failed_ranks: list[int] = []  # every rank torchrun saw fail before it stopped the others

    @classmethod
    def read(cls, path: str | os.PathLike) -> RankFailure | None:
        """The report, or None when the launcher wrote none (one process, or torchrun itself failed)."""
        path = Path(path)
        return cls.model_validate_json(path.read_text()) if path.is_file() else None

    def describe(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exit code {self.exitcode}"
        return f"rank {self.rank} failed first ({how})"


def cpu_process_group() -> bool:
    """Whether this process is one of several torchrun ranks on a host without CUDA (what the CPU tests run).

    accelerate joins such ranks into a gloo group only when told to use the CPU (TrainingArguments.use_cpu);
    otherwise each would train alone on all the rows. It would also name each rank's device "cpu:<rank>",
    which torch.load cannot map a checkpoint to when resuming; ACCELERATE_TORCH_DEVICE makes it plain "cpu".
    """
    import torch

    if torch.cuda.is_available() or world_size() <= 1:
        return False
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    return True


if __name__ == "__main__":
    torchrun_main(sys.argv[1:])
