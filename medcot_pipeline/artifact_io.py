"""Directories that appear whole or not at all, and content hashes of what they hold."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

# `.<name>.staging-<host>-<pid>`: the host and process that write it, so an orphan can be told from a write in
# progress. `.<name>.staging-<pid>` is how staging directories were named before.
_STAGING_NAME = re.compile(r"\.(?P<name>.+)\.staging-(?:(?P<host>.+)-)?(?P<pid>\d+)")


def staging_name(final_name: str) -> str:
    return f".{final_name}.staging-{socket.gethostname()}-{os.getpid()}"


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reclaim_orphaned_staging(parent: Path | str) -> list[tuple[Path, int]]:
    """Remove staging directories under `parent` whose writer died without cleaning up (kill -9, OOM killer, reboot).

    Only directories written on this host by a process that no longer runs are removed: a write in progress,
    here or on another node sharing the directory, is never touched. Returns (path, bytes freed) for each.
    """
    parent = Path(parent)
    host = socket.gethostname()
    reclaimed = []
    for path in parent.iterdir() if parent.is_dir() else []:
        match = _STAGING_NAME.fullmatch(path.name)
        if not match or not path.is_dir() or match["host"] not in (None, host) or _process_is_running(int(match["pid"])):
            continue
        size = tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        logger.warning(f"removed {path}, left by process {match['pid']} that no longer runs ({size / 2**20:,.1f} MiB freed)")
        reclaimed.append((path, size))
    return reclaimed


@contextlib.contextmanager
def atomic_directory(final: Path | str) -> Iterator[Path]:
    """Yield an empty staging directory beside `final`; it is renamed to `final` only when the block succeeds.

    A crash (or an exception) removes the staging directory, so a reader never finds half an artifact
    under `final`, and an earlier `final` stays as it was until the new one is complete. What a killed
    process could not remove is reclaimed by the next write beside it (reclaim_orphaned_staging).
    """
    final = Path(final)
    existing = next(parent for parent in (final.parent, *final.parent.parents) if parent.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a directory: {final} cannot be written under it")
    reclaim_orphaned_staging(final.parent)
    staging = final.with_name(staging_name(final.name))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():  # a retried step replaces its own earlier output
        shutil.rmtree(final)
    os.replace(staging, final)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write a small file under a temporary name and rename it, so readers see the old or the new text."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(files: list[Path]) -> str:
    """One digest over several files in name order: names and bytes, not timestamps."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def tree_sha256(directory: Path | str) -> str:
    """Content hash of a directory: relative file names and bytes, independent of timestamps."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def tree_bytes(directory: Path | str) -> int:
    total = 0
    for path in Path(directory).rglob("*"):
        with contextlib.suppress(OSError):  # a file removed while counting
            if path.is_file():
                total += path.stat().st_size
    return total
