"""Profiles: run-config YAML files that set every asset's config and the shared resources.

The active profile (MEDCOT_PROFILE, default profiles/demo.yaml) becomes the defaults the UI's
"Materialize" buttons use, and each asset's code version hashes its own code and its own
settings. Changing only the evaluation settings therefore marks only rouge_report (and what
depends on it) stale, and Dagster reruns exactly that.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pydantic
import yaml
from pydantic.fields import FieldInfo

from medcot_pipeline import configs

PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_DIR.parent / "profiles"
DEFAULT_PROFILE = PROFILES_DIR / "demo.yaml"

ASSET_CONFIGS: dict[str, type[pydantic.BaseModel]] = {
    "raw_dataset": configs.RawDatasetConfig,
    "formatted_splits": configs.FormattingConfig,
    "lora_adapter": configs.TrainingConfig,
    "merged_model": configs.MergeConfig,
    "rouge_report": configs.EvaluationConfig,
    "hub_release": configs.ReleaseConfig,
}
# Secrets are resource fields too, but a profile must never carry them.
SECRET_FIELDS = {"token", "api_key"}


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)

    def asset_config(self, asset: str) -> pydantic.BaseModel:
        return ASSET_CONFIGS[asset](**self.ops.get(asset, {}))

    def config_class(self, asset: str) -> type:
        """The asset's Config class with this profile's values as its defaults."""
        base = ASSET_CONFIGS[asset]
        values = self.ops.get(asset, {})
        if not values:
            return base
        # Only the default changes: the field keeps its type, description and limits (ge, le, ...).
        fields = {
            key: (base.model_fields[key].annotation, FieldInfo.merge_field_infos(base.model_fields[key], default=value))
            for key, value in values.items()
        }
        return pydantic.create_model(base.__name__, __base__=base, **fields)

    def resource_values(self, resource: str) -> dict[str, Any]:
        return dict(self.resources.get(resource, {}))

    def run_config(self) -> dict[str, Any]:
        """The profile as Dagster run config (what `-c profiles/NAME.yaml` passes)."""
        config: dict[str, Any] = {}
        if self.ops:
            config["ops"] = {name: {"config": values} for name, values in self.ops.items()}
        if self.resources:
            config["resources"] = {name: {"config": values} for name, values in self.resources.items()}
        if self.execution:
            config["execution"] = self.execution
        return config


def active_profile_path() -> Path:
    return Path(os.environ.get("MEDCOT_PROFILE") or DEFAULT_PROFILE)


def load_profile(path: str | Path, resource_types: dict[str, type[pydantic.BaseModel]] | None = None) -> Profile:
    """Read and validate a profile; any unknown key or bad value fails here, at launch."""
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile {path} does not exist (profiles live in {PROFILES_DIR})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping with ops/resources/execution")
    unknown = set(data) - {"ops", "resources", "execution"}
    if unknown:
        raise ProfileError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected ops, resources, execution")

    ops = _sections(path, data.get("ops") or {}, "ops", ASSET_CONFIGS)
    resources = _sections(path, data.get("resources") or {}, "resources", resource_types or {})
    return Profile(name=path.stem, path=path, ops=ops, resources=resources, execution=data.get("execution") or {})


def _sections(path: Path, raw: Any, kind: str, schemas: dict[str, type[pydantic.BaseModel]]) -> dict[str, dict]:
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: `{kind}` must be a mapping")
    sections: dict[str, dict] = {}
    for name, body in raw.items():
        where = f"{path}: {kind}.{name}"
        if schemas and name not in schemas:
            raise ProfileError(f"{where} is unknown; expected one of {sorted(schemas)}")
        if not isinstance(body, dict) or set(body) - {"config"}:
            raise ProfileError(f"{where} must be a mapping with a single `config` key")
        values = body.get("config") or {}
        if not isinstance(values, dict):
            raise ProfileError(f"{where}.config must be a mapping")
        secrets = SECRET_FIELDS & set(values)
        if secrets:
            raise ProfileError(f"{where}.config.{sorted(secrets)[0]}: secrets come from the environment, never from a profile")
        schema = schemas.get(name)
        if schema is not None:
            _validate(where, schema, values)
        sections[name] = values
    return sections


def _validate(where: str, schema: type[pydantic.BaseModel], values: dict) -> None:
    known = set(schema.model_fields)
    for key in values:
        if key not in known:
            raise ProfileError(f"{where}.config.{key} is not a setting; known: {sorted(known)}")
    try:
        schema(**values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ProfileError(f"{where}.config.{key}: {first['msg']} (got {first.get('input')!r})") from err


def code_version(
    functions: Iterable[Callable], modules: Iterable[str], settings: dict[str, Any]
) -> str:
    """Hash of the code that computes an asset and the settings it reads: 12 hex digits."""
    digest = hashlib.sha256()
    for fn in functions:
        digest.update(inspect.getsource(fn).encode())
    for module in sorted(modules):
        digest.update((PACKAGE_DIR / module).read_bytes() if (PACKAGE_DIR / module).is_file() else _tree_source(PACKAGE_DIR / module))
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def _tree_source(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*.py")))
