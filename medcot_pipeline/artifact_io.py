"""Directories that appear whole or not at all, and content hashes of what they hold."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# `.<name>.staging-<host>-<pid>`, beside it `.<name>.staging-<host>-<pid>.lock`, which the writer holds (flock) for as
# long as it writes: the kernel releases it when the writer dies, however it dies, so an orphan is told from a write
# in progress by trying the lock, here or on another node sharing the directory. `.<name>.staging-<pid>` (no lock)
# is how staging directories were named before; those are judged by their pid on this host.
_STAGING_NAME = re.compile(r"\.(?P<name>.+)\.staging-(?:(?P<host>.+)-)?(?P<pid>\d+)")
_LOCK_SUFFIX = ".lock"


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


@contextlib.contextmanager
def _held(lock_path: Path, *, wait: bool) -> Iterator[bool]:
    """flock `lock_path` (created if missing); yields whether it was got (always, when waiting)."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _is_orphan(path: Path, match: re.Match) -> bool:
    lock = path.with_name(path.name + _LOCK_SUFFIX)
    if lock.exists():
        with _held(lock, wait=False) as got:
            return got
    # Named before staging locks: only a process on this host that no longer runs leaves an orphan.
    return match["host"] in (None, socket.gethostname()) and not _process_is_running(int(match["pid"]))


def reclaim_orphaned_staging(parent: Path | str) -> list[tuple[Path, int]]:
    """Remove staging directories under `parent` whose writer died without cleaning up (kill -9, OOM killer, reboot).

    A write in progress, here or on another node sharing the directory, holds its lock and is never touched.
    Returns (path, bytes freed) for each directory removed.
    """
    parent = Path(parent)
    reclaimed = []
    for path in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = _STAGING_NAME.fullmatch(path.name)
        if not match or not path.is_dir() or not _is_orphan(path, match):
            continue
        size = tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(path.name + _LOCK_SUFFIX).unlink(missing_ok=True)
        logger.warning(f"removed {path}, left by a process that no longer writes it ({size / 2**20:,.1f} MiB freed)")
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
    final.parent.mkdir(parents=True, exist_ok=True)
    reclaim_orphaned_staging(final.parent)
    staging = final.with_name(staging_name(final.name))
    lock = staging.with_name(staging.name + _LOCK_SUFFIX)
    with _held(lock, wait=True):
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                yield staging
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if final.exists():  # a retried step replaces its own earlier output
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            lock.unlink(missing_ok=True)


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
