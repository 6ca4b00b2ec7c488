"""Where artifacts live, a local directory or object storage (`s3://bucket/prefix`), and how a version is
committed so that no reader ever trusts half of one.

A local root commits a version by renaming a complete staging directory into place (`atomic_directory`).
Object storage has no rename: moving a prefix is a copy and a delete per object, and on SeaweedFS s3fs's
recursive move fails while universal-pathlib's rename of a prefix silently does nothing. So there a version is
committed by uploading every file under its final keys and then writing `_MANIFEST.json` last, with each
file's size and sha256. A PUT is atomic per object and S3 reads its own writes, so a prefix without a manifest
is invisible to every reader here; a retry of the same version deletes the old manifest before it uploads.

A local version carries the same manifest, written into the staging directory before the rename, so a reader
on either kind of root checks what it reads against what the writer recorded: every file's size on each read
(a stat), and its sha256 where it matters (`local_copy(..., hashes=True)`, before a merge or a release).

Steps work on local files (transformers saves to local directories): `new_version` hands out a local staging
directory and commits it when the block succeeds, `local_copy` gives a reader a verified local copy, kept in
this node's cache. Credentials come from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, or whatever else botocore's chain reads); nothing here takes them as arguments.
No dagster import: the training process commits its checkpoints with this module too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from medcot_pipeline.artifact_io import atomic_directory, file_sha256, write_text_atomic
from medcot_pipeline.checkpoints import CHECKPOINT_NAME, checkpoint_step, newest_complete_checkpoint

MANIFEST_FILE = "_MANIFEST.json"
# Where a node keeps its copies of an object-storage root, unless the resource names a cache_dir.
CACHE_ENV = "MEDCOT_ARTIFACT_CACHE"


class ArtifactError(RuntimeError):
    """An artifact that is not committed, does not match its manifest, or lies outside the root; the message names it."""


class ArtifactDamagedError(ArtifactError):
    """A committed file whose size or sha256 is no longer what its writer recorded; the message names the file and
    the asset to materialize again."""


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str


class ArtifactManifest(BaseModel):
    """`_MANIFEST.json`: written after every file it lists, so its presence is the commit."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, ManifestEntry]
    committed_at: float
    host: str


def is_remote(location: str) -> bool:
    """Whether a root is object storage (a URL with a protocol other than file://) rather than a directory."""
    import fsspec.utils

    return fsspec.utils.get_protocol(str(location)) not in ("file", "local")


def _fs(location: str):
    """The fsspec filesystem of a location and the location's path on it (bucket/key for S3)."""
    from upath import UPath

    path = UPath(location)
    return path.fs, path.path.rstrip("/")


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def read_manifest(location: str) -> ArtifactManifest | None:
    """The manifest of the version at `location`, or None when it is not committed."""
    fs, path = _fs(location)
    try:
        raw = fs.cat_file(f"{path}/{MANIFEST_FILE}")
    except FileNotFoundError:
        return None
    try:
        return ArtifactManifest.model_validate_json(raw)
    except ValidationError as err:
        raise ArtifactError(f"{join(location, MANIFEST_FILE)} is not a manifest: {err.errors()[0]['msg']}") from err


def build_manifest(directory: Path) -> ArtifactManifest:
    """Size and sha256 of every file under `directory` (the manifest itself left out)."""
    files = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative != MANIFEST_FILE:
            files[relative] = ManifestEntry(size=path.stat().st_size, sha256=file_sha256(path))
    return ArtifactManifest(files=files, committed_at=time.time(), host=socket.gethostname())


def damaged(path: Path | str, problem: str, asset: str | None) -> ArtifactDamagedError:
    """The one-line error for a file that is not what its writer recorded, naming what to materialize again."""
    return ArtifactDamagedError(f"{path} {problem}: the file is damaged; {f'materialize {asset} again' if asset else 'write it again'}")


def verify_files(directory: Path, manifest: ArtifactManifest, *, asset: str | None, hashes: bool = False, under: str = "") -> None:
    """Check the files `manifest` lists (those under `under`, relative to `directory`) against it: present and of
    the recorded size always, of the recorded sha256 when `hashes`. Raises ArtifactDamagedError naming the first
    file that differs and the asset to materialize again."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    for relative, entry in manifest.files.items():
        if not relative.startswith(prefix):
            continue
        path = Path(directory) / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise damaged(path, f"is missing but {MANIFEST_FILE} records it ({entry.size:,} bytes)", asset) from None
        if size != entry.size:
            raise damaged(path, f"is {size:,} bytes but {MANIFEST_FILE} records {entry.size:,}", asset)
        if hashes and file_sha256(path) != entry.sha256:
            raise damaged(path, f"has other bytes than {MANIFEST_FILE} records (sha256 {entry.sha256[:12]}...)", asset)


def verify_version(version_dir: Path, *, asset: str | None = None, hashes: bool = False, under: str = "") -> bool:
    """Check a local version (or this node's copy of one) against its `_MANIFEST.json`; False when it has none
    (versions written before local roots carried one)."""
    manifest = _cached_manifest(Path(version_dir))
    if manifest is None:
        return False
    verify_files(Path(version_dir), manifest, asset=asset or Path(version_dir).parent.name, hashes=hashes, under=under)
    return True


def commit_directory(local_dir: Path, location: str) -> ArtifactManifest:
    """Upload `local_dir` to `location` and commit it: files under their final keys, the manifest last."""
    fs, path = _fs(location)
    # Un-commit first: a retry that dies half-way must not leave the earlier manifest vouching for new files.
    fs.invalidate_cache(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{path}/{MANIFEST_FILE}")
    files: dict[str, ManifestEntry] = {}
    for source in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        relative = source.relative_to(local_dir).as_posix()
        if relative == MANIFEST_FILE:
            continue
        files[relative] = ManifestEntry(size=source.stat().st_size, sha256=file_sha256(source))
        fs.put_file(str(source), f"{path}/{relative}")
    # Keys a failed earlier attempt left that this version does not have (no reader would fetch them; tidy anyway).
    fs.invalidate_cache(path)
    stale = [key for key in fs.find(path) if key.removeprefix(f"{path}/") not in files]
    if stale:
        fs.rm(stale)
    manifest = ArtifactManifest(files=files, committed_at=time.time(), host=socket.gethostname())
    fs.pipe_file(f"{path}/{MANIFEST_FILE}", manifest.model_dump_json(indent=1).encode())
    return manifest


def download_committed(location: str, destination: Path) -> ArtifactManifest:
    """Copy the committed version at `location` into `destination`, checking every file against the manifest.

    The copy appears whole or not at all, with the manifest beside the files, so a later reader can tell
    whether it still matches what is committed.
    """
    manifest = read_manifest(location)
    if manifest is None:
        raise ArtifactError(f"{location} is not committed (no {MANIFEST_FILE}): it was never finished or is being rewritten")
    fs, path = _fs(location)
    with atomic_directory(destination) as staging:
        for relative, entry in manifest.files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{path}/{relative}", str(target))
            except FileNotFoundError as err:
                raise ArtifactError(f"{join(location, relative)} is listed in the manifest but missing") from err
            size = target.stat().st_size
            if size != entry.size or file_sha256(target) != entry.sha256:
                raise ArtifactError(
                    f"{join(location, relative)} ({size} bytes) does not match its manifest ({entry.size} bytes, sha256 {entry.sha256[:12]})"
                )
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))
    return manifest


def committed_children(location: str) -> dict[str, ArtifactManifest]:
    """The committed versions directly under `location` (name -> manifest), found in one listing."""
    fs, path = _fs(location)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return {}
    found = {}
    for key in fs.glob(f"{path}/*/{MANIFEST_FILE}"):
        name = key.removeprefix(f"{path}/").split("/", 1)[0]
        manifest = read_manifest(join(location, name))
        if manifest is not None:
            found[name] = manifest
    return found


def remove_version(location: str) -> None:
    """Delete a version: the manifest first, so a half-deleted version is never trusted."""
    fs, path = _fs(location)
    fs.invalidate_cache(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{path}/{MANIFEST_FILE}")
    keys = fs.find(path)
    if keys:
        fs.rm(keys)


def _cached_manifest(directory: Path) -> ArtifactManifest | None:
    try:
        return ArtifactManifest.model_validate_json((directory / MANIFEST_FILE).read_text())
    except (OSError, ValidationError):
        return None


def default_cache_dir(root: str) -> Path:
    """~/.cache/medcot/artifacts/<hash of the root>: one cache per root, the same path on every node of one image."""
    return Path.home() / ".cache" / "medcot" / "artifacts" / hashlib.sha256(root.encode()).hexdigest()[:12]


class ArtifactRoot:
    """An artifacts root: versions at `<root>/<asset>/<run id>/`, references at `<root>/refs/`.

    `base` is where this node keeps files for the root: the root itself when it is a directory, this node's
    cache when it is object storage. The cache mirrors the root's layout, so a location and a local path
    translate into each other.
    """

    def __init__(self, root: str, cache_dir: str | None = None):
        self.root = str(root)
        self.remote = is_remote(self.root)
        if self.remote:
            self.root = self.root.rstrip("/")
            self.base = Path(cache_dir or os.environ.get(CACHE_ENV) or default_cache_dir(self.root)).expanduser().resolve()
        else:
            self.base = Path(self.root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"ArtifactRoot({self.root!r}, base={str(self.base)!r})"

    # ------------------------------------------------------------------ names

    def local_path(self, *parts: str) -> Path:
        """This node's path for `parts`: under the root, or under the cache of an object-storage root."""
        return self.base.joinpath(*parts)

    def location(self, *parts: str) -> str:
        """Where `parts` are stored: a path under a local root, a URL under an object-storage root."""
        return join(self.root, *parts) if self.remote else str(self.base.joinpath(*parts))

    def location_of(self, local: Path | str) -> str:
        """The stored location of a local path under `base` (the path itself for a local root)."""
        try:
            relative = Path(local).resolve().relative_to(self.base)
        except ValueError:
            raise ArtifactError(f"{local} is not under the artifacts root {self.root} (local files in {self.base})") from None
        return self.location(*relative.parts)

    def _parts(self, location: str) -> tuple[str, ...]:
        if self.remote:
            prefix = self.root + "/"
            if not str(location).startswith(prefix):
                raise ArtifactError(f"{location} is not under the artifacts root {self.root}")
            return tuple(p for p in str(location)[len(prefix) :].split("/") if p)
        try:
            return Path(location).resolve().relative_to(self.base).parts
        except ValueError:
            raise ArtifactError(f"{location} is not under the artifacts root {self.root}") from None

    # ------------------------------------------------------------------ versions

    @contextlib.contextmanager
    def new_version(self, asset: str, run_id: str) -> Iterator[Path]:
        """Yield an empty local staging directory; when the block succeeds it becomes `<root>/<asset>/<run_id>`.

        Local root: the manifest is written, then the directory renamed into place. Object storage: uploaded,
        committed with its manifest, and then kept as this node's cached copy. A failure anywhere leaves no trusted
        version and the staging directory removed; one a killed process left is removed by the next write here.
        """
        self.check_writable()
        final = self.local_path(asset, run_id)
        with atomic_directory(final) as staging:
            yield staging
            if self.remote:
                manifest = commit_directory(staging, self.location(asset, run_id))
            else:
                manifest = build_manifest(staging)
            (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))

    def check_writable(self) -> None:
        """Fail at once, naming the root, when the local directory cannot hold artifacts (a file is in the way)."""
        existing = next(parent for parent in (self.base, *self.base.parents) if parent.exists())
        if not existing.is_dir():
            what = "the artifacts root" if existing == self.base else f"{existing}, above the artifacts root {self.base},"
            raise ArtifactError(f"{what} is a file, not a directory: point resources.artifacts.config.root in the profile at a directory")

    def version_dir(self, asset: str, run_id: str) -> Path:
        """The local directory of a committed version (fetched into the cache when the root is remote)."""
        return self.local_copy(self.location(asset, run_id))

    def local_copy(self, location: str, *, hashes: bool = False) -> Path:
        """A verified local copy of `<root>/<asset>/<run id>[/sub/path]`: the path itself on a local root; on object
        storage, this node's cached copy of the committed version, fetched (and checked) when missing or stale.

        Either way the files under it are checked against the version's manifest: sizes always, sha256 with
        `hashes`. A version written before local roots had manifests is only checked to exist.
        """
        if not self.remote:
            path = Path(location)
            if not path.exists():
                raise ArtifactError(f"{location} does not exist")
            try:
                parts = self._parts(location)
            except ArtifactError:  # a reference recorded before the root moved: nothing to check it against
                parts = ()
            if len(parts) >= 2:
                verify_version(self.local_path(*parts[:2]), asset=parts[0], hashes=hashes, under="/".join(parts[2:]))
            return path
        parts = self._parts(location)
        if len(parts) < 2:
            raise ArtifactError(f"{location} names no version (<root>/<asset>/<run id>)")
        version, inner = parts[:2], parts[2:]
        committed = read_manifest(self.location(*version))
        if committed is None:
            raise ArtifactError(f"{self.location(*version)} is not committed (no {MANIFEST_FILE})")
        cached = self.local_path(*version)
        from filelock import FileLock

        cached.parent.mkdir(parents=True, exist_ok=True)
        # Steps on one node may fetch the same version at once; one downloads, the others wait and reuse it.
        with FileLock(str(cached.parent / f".{cached.name}.lock")):
            if _cached_manifest(cached) != committed:
                download_committed(self.location(*version), cached)
            else:
                try:  # this node's copy, fetched earlier, may have been damaged since: fetch it again
                    verify_files(cached, committed, asset=version[0], hashes=hashes, under="/".join(inner))
                except ArtifactDamagedError:
                    download_committed(self.location(*version), cached)
        return cached.joinpath(*inner)

    def committed_versions(self, asset: str) -> list[str]:
        """Run ids with a committed version of `asset`."""
        if self.remote:
            return sorted(committed_children(self.location(asset)))
        directory = self.local_path(asset)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))

    # ------------------------------------------------------------------ references (what the IO manager records)

    def write_ref(self, asset: str, run_id: str, location: str) -> None:
        """Record `location` as the asset's output in this run and as its latest; written only after the commit."""
        text = json.dumps({"location": location, "run_id": run_id}) + "\n"
        for parts in (("refs", asset, f"{run_id}.json"), ("refs", f"{asset}.json")):
            if self.remote:
                fs, path = _fs(self.location(*parts))
                fs.pipe_file(path, text.encode())  # one PUT: readers see the old or the new reference
            else:
                self.local_path(*parts).parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.local_path(*parts), text)

    def read_ref(self, asset: str, run_id: str | None) -> str | None:
        """The asset's output in run `run_id` if it made one, else its latest recorded one; None if never recorded."""
        candidates = [("refs", asset, f"{run_id}.json")] if run_id else []
        for parts in (*candidates, ("refs", f"{asset}.json")):
            if self.remote:
                fs, path = _fs(self.location(*parts))
                try:
                    text = fs.cat_file(path).decode()
                except FileNotFoundError:
                    continue
            else:
                if not self.local_path(*parts).exists():
                    continue
                text = self.local_path(*parts).read_text()
            record = json.loads(text)
            return record.get("location") or record["path"]  # "path": references written before object storage
        return None


class CheckpointMirror:
    """A Trainer's local checkpoint directory mirrored at a location in object storage.

    Each `checkpoint-N` is committed (files, then manifest) once the Trainer has saved it, and older ones beyond
    `keep` are deleted there as the Trainer deletes them locally; `restore` fetches the newest committed one, so
    a rerun on a node that never saw this training resumes where the last node stopped.
    """

    def __init__(self, location: str, local_dir: Path | str):
        self.location = location.rstrip("/")
        self.local_dir = Path(local_dir)

    def committed(self) -> dict[int, str]:
        """step -> location of each committed checkpoint."""
        steps = {}
        for name in committed_children(self.location):
            match = CHECKPOINT_NAME.fullmatch(name)
            if match:
                steps[int(match[1])] = join(self.location, name)
        return steps

    def push(self, checkpoint: Path, keep: int) -> str:
        """Commit one saved checkpoint directory, then drop committed ones older than the newest `keep`."""
        target = join(self.location, checkpoint.name)
        commit_directory(checkpoint, target)
        committed = self.committed()
        for step in sorted(committed)[: max(0, len(committed) - keep)]:
            remove_version(committed[step])
        return target

    def restore(self) -> Path | None:
        """Fetch the newest committed checkpoint unless this node already holds it (or a newer complete one)."""
        committed = self.committed()
        if not committed:
            return None
        newest = max(committed)
        if newest <= self._newest_local():
            return None
        target = self.local_dir / f"checkpoint-{newest}"
        self.local_dir.mkdir(parents=True, exist_ok=True)
        download_committed(committed[newest], target)
        return target

    def _newest_local(self) -> int:
        """The step of the newest local checkpoint that is whole, the one a run would resume from (checkpoints.py); -1 if none."""
        newest = newest_complete_checkpoint(self.local_dir)
        step = None if newest is None else checkpoint_step(newest)
        return -1 if step is None else step
