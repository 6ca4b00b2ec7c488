"""Data-parallel training: how many processes, the launcher command, and which process may write.

One process per GPU, started by torchrun from the same Pipes step. Only rank 0 talks to Dagster, W&B and
the artifacts root; every rank trains. Without CUDA the ranks use the gloo backend (what the CPU test runs).
"""

from __future__ import annotations

import os
import sys

# NVLink multicast can take a shared host's GPUs out of service; NCCL, PyTorch and NVSHMEM all keep it off.
MULTI_GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def resolve_num_processes(num_gpus: int) -> int:
    """num_gpus as configured; 0 means every visible GPU (one process when there is none)."""
    if num_gpus > 0:
        return num_gpus
    import torch

    return max(1, torch.cuda.device_count())


def launch_command(num_processes: int, module: str) -> list[str]:
    """`python -m module`, or torchrun starting `num_processes` of it on this host."""
    if num_processes <= 1:
        return [sys.executable, "-m", module]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "-m", module,
    ]


def launch_env(num_processes: int) -> dict[str, str]:
    return dict(MULTI_GPU_ENV) if num_processes > 1 else {}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def per_process_accumulation(accumulation: int, processes: int) -> tuple[int, bool]:
    """Accumulation steps per process that keep the global batch (batch x accumulation x processes) as configured,
    and whether that was exact."""
    per_process = max(1, round(accumulation / processes))
    return per_process, per_process * processes == accumulation
