"""What a run ran on: library versions and the accelerator, recorded with every artifact that depends on them."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

TRAINING_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
UNSLOTH_PACKAGES = ("unsloth", "unsloth_zoo", "bitsandbytes")


def library_versions(packages: tuple[str, ...] = TRAINING_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def hardware_name(processes: int = 1) -> str:
    """The GPU this process trains on (with the count of data-parallel processes), or the CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.cuda.current_device())
        count = processes
        return f"{count} x {name}" if count > 1 else name
    return f"CPU ({platform.processor() or platform.machine()})"
