"""Directories that appear whole or not at all, and content hashes of what they hold."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(final: Path | str) -> Iterator[Path]:
    """Yield an empty staging directory beside `final`; it is renamed to `final` only when the block succeeds.

    A crash (or an exception) removes the staging directory, so a reader never finds half an artifact
    under `final`, and an earlier `final` stays as it was until the new one is complete.
    """
    final = Path(final)
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
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
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
