"""Swappable infrastructure: where artifacts live (and how assets hand them on), which base model, the Hub, and W&B.

Each resource subclasses its settings model in `settings.py` (its fields, their defaults and limits), so a
profile's `resources:` section is validated without Dagster and a resource's config is that model as is.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from medcot_pipeline.artifact_store import ArtifactDamagedError, ArtifactError, ArtifactRoot, CheckpointMirror
from medcot_pipeline.contracts import BaseModelRef
from medcot_pipeline.model_paths import ModelLoadError, check_model_files
from medcot_pipeline.settings import ArtifactsSettings, BaseModelSettings, HubSettings, ResourceSettings, WandbSettings

# Input metadata (`dg.AssetIn(metadata=VERIFY_SHA256)`) of an asset that must read its upstream's exact bytes (a
# merge, a release): every file's sha256 is checked against the manifest, not only its size.
VERIFY_KEY = "medcot/verify"
VERIFY_SHA256 = {VERIFY_KEY: "sha256"}


def verified_inputs(*names: str) -> dict[str, dg.AssetIn]:
    """`ins` for an asset whose named inputs are read only after their sha256 matched what their writer recorded."""
    return {name: dg.AssetIn(metadata=VERIFY_SHA256) for name in names}


class ArtifactStore(dg.ConfigurableResource, ArtifactsSettings):
    """Where artifacts live: a local directory (default) or object storage (`s3://bucket/prefix`).

    Each materialization gets its own version, `<root>/<asset>/<run id>/`, that appears whole or not at all:
    renamed into place on a local root; on object storage uploaded under its final keys and committed by a
    manifest written last, which every reader requires (medcot_pipeline/artifact_store.py). Steps read and
    write local files either way; on object storage each node keeps verified copies in its cache.
    Credentials for object storage come from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL for S3-compatible servers).
    """

    def store(self) -> ArtifactRoot:
        return ArtifactRoot(self.root, self.cache_dir)

    def path(self, *parts: str) -> Path:
        """A local working path: under the root, or this node's cache of an object-storage root."""
        return self.store().local_path(*parts)

    def version_dir(self, asset_name: str, run_id: str) -> Path:
        """The local directory of a committed version."""
        return self.store().version_dir(asset_name, run_id)

    @contextlib.contextmanager
    def new_version(self, asset_name: str, run_id: str) -> Iterator[Path]:
        """Yield an empty staging directory; on success it becomes `<root>/<asset>/<run_id>`."""
        with self.store().new_version(asset_name, run_id) as staging:
            yield staging

    def location_of(self, local: Path | str) -> str:
        """Where a local artifact path is stored (itself on a local root, its s3:// URL on object storage)."""
        return self.store().location_of(local)

    def fetch_checkpoints(self, local_dir: Path, log) -> str | None:
        """On object storage: fetch the newest checkpoint any node committed for `local_dir` into it (a rerun here
        resumes from it) and return the location where training commits its checkpoints; None on a local root."""
        store = self.store()
        if not store.remote:
            return None
        location = store.location_of(local_dir)
        fetched = CheckpointMirror(location, local_dir).restore()
        if fetched is not None:
            log.info(f"fetched {fetched.name} from {location}")
        return location


class ArtifactPathIOManager(dg.ConfigurableIOManager):
    """Hands each asset's artifact directory to the assets and checks below it.

    An asset returns the local path of the version it committed; its location (the path, or the s3:// URL) is
    recorded under `<root>/refs/`, after the commit, not pickled into the Dagster home, so a step on any node
    can load it. A reader gets a verified local copy: this run's output of the upstream asset if the run made
    one, else the latest recorded; every file the version's manifest lists is checked for its size (its sha256
    too for an input declared with VERIFY_SHA256), and a model or adapter inside it for whole weights.

    `artifacts` is the run's own `artifacts` resource (a dependency on that key, not a copy): a `-c` file or the
    launchpad that sets another root moves the IO manager's reads and references with the assets' writes.
    """

    artifacts: dg.ResourceDependency[ArtifactStore]

    def handle_output(self, context: dg.OutputContext, obj: str) -> None:
        store = self.artifacts.store()
        try:
            location = store.location_of(obj)
        except ArtifactError as err:  # the same output would land in the same wrong place on a retry
            raise dg.Failure(f"{context.asset_key.to_user_string()}: {err}", allow_retries=False) from None
        store.write_ref(context.asset_key.to_python_identifier(), context.run_id, location)
        context.add_output_metadata({"artifact": dg.MetadataValue.path(location)})

    def load_input(self, context: dg.InputContext) -> str:
        store = self.artifacts.store()
        name = context.asset_key.to_user_string()
        location = store.read_ref(context.asset_key.to_python_identifier(), context.step_context.run_id)
        if location is None:
            raise dg.Failure(f"{name} has not been materialized under {store.root}", allow_retries=False)
        hashes = (context.definition_metadata or {}).get(VERIFY_KEY) == "sha256"
        # Neither a damaged file nor a missing version heals on a retry: fail at once, naming the file and the asset.
        try:
            local = store.local_copy(location)
            if (local / "config.json").is_file() or (local / "adapter_config.json").is_file():
                check_model_files(local, hashes=hashes)  # the manifest, whole weights, merge.json: each file hashed once
            elif hashes:
                store.local_copy(location, hashes=True)
        except (ArtifactError, ModelLoadError) as err:
            message = str(err) if isinstance(err, (ArtifactDamagedError, ModelLoadError)) else f"{err}; materialize {name} again"
            raise dg.Failure(f"{name}'s artifact cannot be read: {message}", allow_retries=False) from err
        return str(local)


class BaseModelResource(dg.ConfigurableResource, BaseModelSettings):
    """The model being fine-tuned: a Hub id, a local checkpoint, or the embedded SmolLM2."""

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


class HubResource(dg.ConfigurableResource, HubSettings):
    """The Hugging Face Hub. The token is read from HF_TOKEN where it is used, never configured.

    `token` is deliberately not a config field: Dagster then rejects `resources: hub: config: token:` in the
    config of any run that uses the Hub (a `-c` file, the launchpad, a schedule) at launch, before the run and
    its config are stored. For the rest, see defs/run_config_checks.py.
    """

    @property
    def token(self) -> str | None:
        """HF_TOKEN from the environment of the step; None means 'stage, do not push'."""
        return dg.EnvVar("HF_TOKEN").get_value() or None

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def dataset_revision(self, repo_id: str) -> str:
        """The current commit of a dataset on the Hub; raises on no network."""
        return self.api().dataset_info(repo_id).sha


class WandbResource(dg.ConfigurableResource, WandbSettings):
    """Weights & Biases: offline run files under the artifacts root unless WANDB_API_KEY is in the environment.

    Like the Hub token, the key is no config field: Dagster refuses it in the run config of any run that uses W&B.
    """

    @property
    def api_key(self) -> str | None:
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


RESOURCE_TYPES: dict[str, type[dg.ConfigurableResource]] = {
    "artifacts": ArtifactStore,
    "base_model": BaseModelResource,
    "hub": HubResource,
    "wandb": WandbResource,
}


def build_resources(settings: ResourceSettings) -> dict:
    """The resources, configured from a profile's resource settings; secrets only from the environment."""
    # Configured at launch with the profile's values as defaults, so that the IO manager depends on the run's
    # `artifacts` resource by key (a fully configured copy would keep the profile's root whatever the run says).
    artifacts = ArtifactStore.configure_at_launch(**settings.artifacts.model_dump())
    return {
        "artifacts": artifacts,
        "io_manager": ArtifactPathIOManager(artifacts=artifacts),
        "base_model": BaseModelResource(**settings.base_model.model_dump()),
        # Their secrets come from the environment when used (HF_TOKEN, WANDB_API_KEY), never from config.
        "hub": HubResource(**settings.hub.model_dump()),
        "wandb": WandbResource(**settings.wandb.model_dump()),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
