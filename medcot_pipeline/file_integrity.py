"""Whether a weights or state file is whole, judged from the file alone: cheap checks that need no record.

A safetensors file declares in its header where each tensor's bytes end, so a cut one no longer covers what it
declares (safetensors refuses to open it); torch's `.pt`/`.pth` files are zip archives whose directory sits at the
end, so a cut one has none; a JSON state file must parse. None of these reads the tensors themselves.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

# What the Trainer writes into checkpoint-N, by kind of check; anything else in the folder is not judged.
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_ARCHIVE_SUFFIXES = (".pt", ".pth", ".bin")
JSON_STATE_FILES = ("trainer_state.json",)


def safetensors_problem(path: Path | str) -> str | None:
    """Why a safetensors file cannot be read (cut short, or not safetensors), or None when its header covers it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError (not an OSError) and OSError both mean "unreadable"
        return f"cannot be read as safetensors ({(str(err).strip().splitlines() or [type(err).__name__])[0]})"
    return None


def torch_archive_problem(path: Path | str) -> str | None:
    """Why a torch.save file is not whole (no zip directory at its end: cut short), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"is not a complete torch archive ({err})"
    return None


def json_problem(path: Path | str) -> str | None:
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"is not readable JSON ({err})"
    return None


def file_problem(path: Path | str) -> str | None:
    """The check that fits the file's kind; None for a kind not judged here."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return safetensors_problem(path)
    if path.suffix in TORCH_ARCHIVE_SUFFIXES:
        return torch_archive_problem(path)
    if path.name in JSON_STATE_FILES:
        return json_problem(path)
    return None


def directory_problems(directory: Path | str) -> list[tuple[Path, str]]:
    """(file, why) for every file directly in `directory` that a check above finds damaged."""
    found = []
    for path in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
        problem = file_problem(path) if path.is_file() else None
        if problem is not None:
            found.append((path, problem))
    return found


def checkpoint_problem(checkpoint: Path | str) -> str | None:
    """Why a Trainer's checkpoint-N folder cannot be resumed from, or None.

    The Trainer writes trainer_state.json last, so a process killed while saving leaves a folder without it (or
    with it cut short); a weights or optimizer file cut short (a full disk, a copy that stopped) fails the resume
    the same way on every rerun, so each file is checked too.
    """
    checkpoint = Path(checkpoint)
    state = checkpoint / JSON_STATE_FILES[0]
    if not state.exists():
        return f"{checkpoint.name} has no {state.name} (interrupted while saving)"
    damaged = directory_problems(checkpoint)
    if damaged:
        path, problem = damaged[0]
        return f"{checkpoint.name}/{path.name} {problem}"
    return None
