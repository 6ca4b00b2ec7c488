"""Profiles: run-config YAML files (profiles/*.yaml) that set every stage's settings and the shared resources.

A profile is validated as a whole when it is read: an unknown key, a wrong type or an impossible value
fails naming the file and the key. `stages.py` turns the active profile into the defaults of each
asset's config and into its code version.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT_PROFILE = PROFILES_DIR / "demo.yaml"
# Secret keys a profile or run config must never carry, and the environment variable each comes from.
SECRET_ENV = {"token": "HF_TOKEN", "api_key": "WANDB_API_KEY"}
SECRET_FIELDS = set(SECRET_ENV)


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)

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


def load_profile(
    path: str | Path,
    op_types: dict[str, type[pydantic.BaseModel]],
    resource_types: dict[str, type[pydantic.BaseModel]],
) -> Profile:
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

    ops = _sections(path, data.get("ops") or {}, "ops", op_types)
    resources = _sections(path, data.get("resources") or {}, "resources", resource_types)
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
        secrets = sorted(SECRET_FIELDS & set(values))
        if secrets:
            raise ProfileError(
                f"{where}.config.{secrets[0]}: secrets come from the environment ({SECRET_ENV[secrets[0]]}), "
                "never from a profile or run config"
            )
        schema = schemas.get(name)
        if schema is not None:
            _validate(where, schema, values)
        sections[name] = values
    return sections


def _numeric_types(annotation) -> tuple[type, ...]:
    """int and/or float, if a field holds numbers (Optional[...] included), else ()."""
    import typing

    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return tuple(member for member in members if member in (int, float))


def _number_read_as_text(where: str, schema: type[pydantic.BaseModel], key: str, value: Any) -> None:
    """YAML 1.1 (PyYAML, and Dagster's own reading of a `-c` file) reads `1e-3` without a dot as the string "1e-3".
    pydantic would accept that string as a number, but Dagster's config system, which reads the same file as run
    config, refuses it in a long trace: say so here, naming the key and the spelling that works."""
    if not isinstance(value, str) or not _numeric_types(schema.model_fields[key].annotation):
        return
    try:
        number = float(value)
    except ValueError:
        return  # not a number at all: pydantic's message below says what was expected
    spelling = f"{float(value):.1e}" if "e" in value.lower() else repr(number)
    raise ProfileError(
        f"{where}.config.{key}: {value!r} is text to YAML, not a number (YAML 1.1 reads an exponent without a dot as a "
        f"string): write it as {spelling.replace('e-0', 'e-').replace('e+0', 'e+')} or {number!r}"
    )


def _validate(where: str, schema: type[pydantic.BaseModel], values: dict) -> None:
    known = set(schema.model_fields)
    for key in values:
        if key not in known:
            raise ProfileError(f"{where}.config.{key} is not a setting; known: {sorted(known)}")
        _number_read_as_text(where, schema, key, values[key])
    try:
        schema(**values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ProfileError(f"{where}.config.{key}: {first['msg']} (got {first.get('input')!r})") from err
