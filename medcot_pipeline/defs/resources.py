"""Swappable infrastructure: where artifacts live (and how assets hand them on), which base model, the Hub, and W&B."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field

from medcot_pipeline.artifact_io import atomic_directory, write_text_atomic
from medcot_pipeline.base_models import EMBEDDED_SMOLLM2
from medcot_pipeline.contracts import BaseModelRef


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

    def version_dir(self, asset_name: str, run_id: str) -> Path:
        return self.path(asset_name, run_id)

    @contextlib.contextmanager
    def new_version(self, asset_name: str, run_id: str) -> Iterator[Path]:
        """Yield an empty staging directory; on success it becomes `<root>/<asset>/<run_id>`."""
        with atomic_directory(self.version_dir(asset_name, run_id)) as staging:
            yield staging


class ArtifactPathIOManager(dg.ConfigurableIOManager):
    """Hands each asset's artifact directory to the assets below it.

    An asset returns the path of the directory it wrote; the path is kept as a small JSON file under the
    artifacts root (not pickled into the Dagster home), so any process that can read the artifacts can
    load it, and the asset's `path` metadata stays the artifact's own.
    """

    artifacts: ArtifactStore

    def _ref_file(self, asset_key: dg.AssetKey) -> Path:
        return self.artifacts.path("refs", f"{asset_key.to_python_identifier()}.json")

    def handle_output(self, context: dg.OutputContext, obj: str) -> None:
        ref = self._ref_file(context.asset_key)
        ref.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(ref, json.dumps({"path": str(obj), "run_id": context.run_id}) + "\n")

    def load_input(self, context: dg.InputContext) -> str:
        ref = self._ref_file(context.asset_key)
        if not ref.exists():
            raise dg.Failure(f"{context.asset_key.to_user_string()} has not been materialized under {self.artifacts.root_path}")
        path = json.loads(ref.read_text())["path"]
        if not Path(path).exists():
            raise dg.Failure(f"{context.asset_key.to_user_string()}'s artifact {path} is gone; rematerialize it")
        return path


class BaseModelResource(dg.ConfigurableResource):
    """The model being fine-tuned: a Hub id, a local checkpoint, or the embedded SmolLM2."""

    name: str = Field(default=EMBEDDED_SMOLLM2, description="Hub id, local directory, or embedded:smollm2-135m-instruct.")
    revision: Optional[str] = Field(default=None, description="Hub revision of the base model.")
    max_seq_length: int = Field(default=1024, ge=16, description="Longest training sequence in tokens.")

    def resolve(self, artifacts: ArtifactStore) -> str:
        """A reference from_pretrained accepts (the embedded model is converted once, then cached)."""
        from medcot_pipeline.base_models import resolve_base_model

        return resolve_base_model(self.name, artifacts.path("base_models"))

    def ref(self, artifacts: ArtifactStore) -> BaseModelRef:
        """What the stages record about the base model: its configured name, what was loaded, the revision."""
        return BaseModelRef(name=self.name, reference=self.resolve(artifacts), revision=self.revision)

    def tokenizer(self, artifacts: ArtifactStore):
        from medcot_pipeline.base_models import load_tokenizer

        return load_tokenizer(self.resolve(artifacts), revision=self.revision)


class HubResource(dg.ConfigurableResource):
    """The Hugging Face Hub. The token is read from HF_TOKEN where it is used, never configured.

    `token` is deliberately not a config field: Dagster then rejects `resources: hub: config: token:` in the
    config of any run that uses the Hub (a `-c` file, the launchpad, a schedule) at launch, before the run and
    its config are stored. For the rest, see defs/run_config_checks.py.
    """

    endpoint: Optional[str] = Field(default=None, description="Another Hub endpoint (HF_ENDPOINT), e.g. a mirror.")

    @property
    def token(self) -> Optional[str]:
        """HF_TOKEN from the environment of the step; None means 'stage, do not push'."""
        return dg.EnvVar("HF_TOKEN").get_value() or None

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def dataset_revision(self, repo_id: str) -> str:
        """The current commit of a dataset on the Hub; raises on no network."""
        return self.api().dataset_info(repo_id).sha


class WandbResource(dg.ConfigurableResource):
    """Weights & Biases: offline run files under the artifacts root unless WANDB_API_KEY is in the environment.

    Like the Hub token, the key is no config field: Dagster refuses it in the run config of any run that uses W&B.
    """

    project: str = "medcot"
    entity: Optional[str] = None

    @property
    def api_key(self) -> Optional[str]:
        return dg.EnvVar("WANDB_API_KEY").get_value() or None

    @property
    def mode(self) -> str:
        # An explicit WANDB_MODE=offline wins over a key in the environment (e.g. a box without network).
        if os.environ.get("WANDB_MODE") == "offline":
            return "offline"
        return "online" if self.api_key else "offline"

    def env(self) -> dict[str, str]:
        """Environment for the training process; the key travels only there, never in extras."""
        return {"WANDB_API_KEY": self.api_key} if self.api_key else {}


RESOURCE_TYPES = {"artifacts": ArtifactStore, "base_model": BaseModelResource, "hub": HubResource, "wandb": WandbResource}


def build_resources(values: dict[str, dict]) -> dict:
    """The resources, configured from a profile's `resources:` section; secrets only from the environment."""
    artifacts = ArtifactStore(**values.get("artifacts", {}))
    return {
        "artifacts": artifacts,
        "io_manager": ArtifactPathIOManager(artifacts=artifacts),
        "base_model": BaseModelResource(**values.get("base_model", {})),
        # Their secrets come from the environment when used (HF_TOKEN, WANDB_API_KEY), never from config.
        "hub": HubResource(**values.get("hub", {})),
        "wandb": WandbResource(**values.get("wandb", {})),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
