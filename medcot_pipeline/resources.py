"""Swappable infrastructure: where artifacts live, which base model, the Hub, and W&B."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field

from medcot_pipeline.base_models import EMBEDDED_SMOLLM2


class ArtifactStore(dg.ConfigurableResource):
    """A local artifacts root. Each materialization gets its own directory, written in full
    under a temporary name and renamed into place, so a crash never leaves a half artifact
    where a reader (or a concurrent run) would find it."""

    root: str = Field(default="artifacts", description="Directory for datasets, adapters, models and reports.")

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def path(self, *parts: str) -> Path:
        return self.root_path.joinpath(*parts)

    @contextlib.contextmanager
    def new_version(self, asset_name: str, run_id: str) -> Iterator[Path]:
        """Yield an empty staging directory; on success it becomes `<root>/<asset>/<run_id>`."""
        final = self.path(asset_name, run_id)
        staging = self.path(asset_name, f".staging-{run_id}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if final.exists():  # a retried step of the same run replaces its own earlier output
            shutil.rmtree(final)
        os.replace(staging, final)


class BaseModelResource(dg.ConfigurableResource):
    """The model being fine-tuned: a Hub id, a local checkpoint, or the embedded SmolLM2."""

    name: str = Field(default=EMBEDDED_SMOLLM2, description="Hub id, local directory, or embedded:smollm2-135m-instruct.")
    revision: Optional[str] = Field(default=None, description="Hub revision of the base model.")
    max_seq_length: int = Field(default=1024, ge=16, description="Longest training sequence in tokens.")

    def resolve(self, artifacts: ArtifactStore) -> str:
        """A reference from_pretrained accepts (the embedded model is converted once, then cached)."""
        from medcot_pipeline.base_models import resolve_base_model

        return resolve_base_model(self.name, artifacts.path("base_models"))

    def tokenizer(self, artifacts: ArtifactStore):
        from medcot_pipeline.base_models import load_tokenizer

        return load_tokenizer(self.resolve(artifacts), revision=self.revision)


class HubResource(dg.ConfigurableResource):
    """The Hugging Face Hub. The token only ever comes from the environment (HF_TOKEN)."""

    token: Optional[str] = Field(default=None, description="Set through EnvVar('HF_TOKEN'), never in a profile.")
    endpoint: Optional[str] = Field(default=None, description="Another Hub endpoint (HF_ENDPOINT), e.g. a mirror.")

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def dataset_revision(self, repo_id: str) -> str:
        """The current commit of a dataset on the Hub; raises on no network."""
        return self.api().dataset_info(repo_id).sha


class WandbResource(dg.ConfigurableResource):
    """Weights & Biases: offline run files under the artifacts root unless a key is in the environment."""

    project: str = "medcot"
    entity: Optional[str] = None
    api_key: Optional[str] = Field(default=None, description="Set through EnvVar('WANDB_API_KEY'), never in a profile.")

    @property
    def mode(self) -> str:
        # An explicit WANDB_MODE=offline wins over a key in the environment (e.g. a box without network).
        if os.environ.get("WANDB_MODE") == "offline":
            return "offline"
        return "online" if self.api_key else "offline"

    def env(self) -> dict[str, str]:
        """Environment for the training process; the key travels only there, never in extras."""
        return {"WANDB_API_KEY": self.api_key} if self.api_key else {}


def env_secret(name: str) -> Optional[dg.EnvVar]:
    """EnvVar for a secret that may be absent: an unset HF_TOKEN means 'stage, do not push'."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """Content hash of a directory: file names and bytes, independent of timestamps."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
