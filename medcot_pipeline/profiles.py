"""Profiles: the YAML files in profiles/ that set every stage's settings and the shared resources, read into one
typed `Profile` by `load_profile`.

A profile is validated as a whole when it is read: an unknown key, a wrong type or an impossible value
fails naming the file and the key. `extends: other.yaml` (a path beside the file) starts from another
profile and states only what differs: mappings merge key by key, anything else (a number, a list) replaces.
Resolved, a profile is Dagster run config (`python -m medcot_pipeline.profiles FILE` prints it). No dagster
import: the Dagster definitions, `medcot ask` and the benchmarks all read profiles through `load_profile`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import types
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import ConfigDict, Field

from medcot_pipeline.settings import ResourceSettings, Settings, StageSettings

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEFAULT_PROFILE = PROFILES_DIR / "demo.yaml"
# Secret keys a profile or run config must never carry, and the environment variable each comes from.
SECRET_ENV = {"token": "HF_TOKEN", "api_key": "WANDB_API_KEY"}
SECRET_FIELDS = set(SECRET_ENV)
SECTIONS = ("ops", "resources", "execution")
EXTENDS = "extends"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


class Profile(pydantic.BaseModel):
    """One profile, resolved and validated: every stage's settings and every resource's, defaults filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    files: tuple[Path, ...] = Field(description="The profile's file, then each file it extends, in order.")
    stages: StageSettings
    resources: ResourceSettings
    execution: dict[str, Any] = Field(default_factory=dict, description="Dagster executor config, passed as is.")

    @property
    def path(self) -> Path:
        return self.files[0]

    def stage(self, asset: str) -> Settings:
        """A stage's settings by asset name, for code that treats every stage alike (`profile.stages.<asset>` is typed)."""
        if asset not in StageSettings.model_fields:
            raise KeyError(f"{asset} is not a stage; stages: {list(StageSettings.model_fields)}")
        return getattr(self.stages, asset)

    def sha256(self) -> str:
        """sha256 over the bytes of every file the profile was read from (for one file, the file's own sha256)."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(file.read_bytes())
        return digest.hexdigest()

    def run_config(self) -> dict[str, Any]:
        """What the files set, merged and validated, as Dagster run config (what `-c FILE` would pass)."""
        config: dict[str, Any] = {}
        for section, settings in (("ops", self.stages), ("resources", self.resources)):
            values = settings.model_dump(mode="json", exclude_unset=True)
            if values:
                config[section] = {name: {"config": body} for name, body in values.items()}
        if self.execution:
            config["execution"] = self.execution
        return config


def active_profile_path() -> Path:
    return Path(os.environ.get("MEDCOT_PROFILE") or DEFAULT_PROFILE)


def load_active_profile() -> Profile:
    """The profile MEDCOT_PROFILE names (default profiles/demo.yaml)."""
    return load_profile(active_profile_path())


def load_profile(path: str | Path) -> Profile:
    """Read, resolve (`extends`) and validate a profile; any unknown key or bad value fails here, at launch."""
    path = Path(path)
    chain = _read_chain(path)
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}
    for file, sections in reversed(chain):  # the furthest parent first, the profile itself last
        merged = merge(merged, sections)
        for section in ("ops", "resources"):
            for name, values in sections.get(section, {}).items():
                origins.update({(section, name, key): file for key in values})
    stages = _validated(path, merged.get("ops", {}), "ops", StageSettings, origins)
    resources = _validated(path, merged.get("resources", {}), "resources", ResourceSettings, origins)
    return Profile(
        name=path.stem,
        files=tuple(file for file, _ in chain),
        stages=StageSettings(**stages),
        resources=ResourceSettings(**resources),
        execution=merged.get("execution", {}),
    )


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, any other value (a number, a list) replaces."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _read_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """[(file, its sections)] for the profile and each profile it extends, the profile first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    file: Path | None = path
    while file is not None:
        if file.resolve() in seen:
            cycle = " -> ".join(str(f) for f in [*(f for f, _ in chain), file])
            raise ProfileError(f"{chain[-1][0]}: `{EXTENDS}` makes a cycle: {cycle}")
        seen.append(file.resolve())
        data = _read_yaml(file)
        parent = data.pop(EXTENDS, None)
        chain.append((file, _sections_of(file, data)))
        file = _parent_path(file, parent) if parent is not None else None
    return chain


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ProfileError(f"profile {path} does not exist (profiles live in {PROFILES_DIR})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping with ops/resources/execution")
    unknown = set(data) - {*SECTIONS, EXTENDS}
    if unknown:
        raise ProfileError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected {EXTENDS}, ops, resources, execution")
    return data


def _parent_path(path: Path, parent: Any) -> Path:
    if not isinstance(parent, str) or not parent:
        raise ProfileError(f"{path}: `{EXTENDS}` must name one profile file, e.g. `{EXTENDS}: h100.yaml` (got {parent!r})")
    resolved = (path.parent / parent).expanduser()
    if not resolved.exists():
        raise ProfileError(f"{path}: `{EXTENDS}: {parent}` names {resolved}, which does not exist")
    return resolved


def _sections_of(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """One file's sections as {"ops": {asset: values}, "resources": {name: values}, "execution": {...}}, checked for
    shape, unknown names and keys, and secrets; values are validated once the files are merged."""
    sections: dict[str, Any] = {
        "ops": _named_configs(path, data.get("ops") or {}, "ops", StageSettings),
        "resources": _named_configs(path, data.get("resources") or {}, "resources", ResourceSettings),
    }
    execution = data.get("execution") or {}
    if not isinstance(execution, dict):
        raise ProfileError(f"{path}: `execution` must be a mapping")
    if execution:
        sections["execution"] = execution
    return sections


def _named_configs(path: Path, raw: Any, kind: str, table: type[Settings]) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: `{kind}` must be a mapping")
    schemas = {name: _field_model(table, name) for name in table.model_fields}
    sections: dict[str, dict[str, Any]] = {}
    for name, body in raw.items():
        where = f"{path}: {kind}.{name}"
        if name not in schemas:
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
        known = set(schemas[name].model_fields)
        for key, value in values.items():
            if key not in known:
                raise ProfileError(f"{where}.config.{key} is not a setting; known: {sorted(known)}")
            _number_read_as_text(where, schemas[name], key, value)
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


def _validated(
    path: Path, sections: dict[str, dict[str, Any]], kind: str, table: type[Settings], origins: dict[tuple[str, ...], Path]
) -> dict[str, Settings]:
    """Each section's merged values as its settings model; an error names the file that set the value."""
    validated = {}
    for name, values in sections.items():
        try:
            validated[name] = _field_model(table, name)(**values)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            origin = origins.get((kind, name, str(first["loc"][0])), path) if first["loc"] else path
            through = f" (read through {path})" if origin != path else ""
            where = f"{kind}.{name}.config" + (f".{key}" if key else "")
            raise ProfileError(f"{origin}: {where}: {first['msg']} (got {first.get('input')!r}){through}") from err
    return validated


def _field_model(table: type[Settings], name: str) -> type[Settings]:
    annotation = table.model_fields[name].annotation
    assert isinstance(annotation, type) and issubclass(annotation, Settings)
    return annotation


def main(argv: list[str] | None = None) -> None:
    """Print a profile resolved (`extends` applied) and validated, as the run config `dagster ... -c` takes."""
    parser = argparse.ArgumentParser(prog="python -m medcot_pipeline.profiles", description=main.__doc__)
    parser.add_argument("profile", type=Path, help="a profile file, e.g. profiles/h100-multi.yaml")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
    except ProfileError as err:
        sys.exit(f"medcot: {err}")
    print(f"# {' <- '.join(str(file) for file in profile.files)}, resolved by python -m medcot_pipeline.profiles")
    print(yaml.safe_dump(profile.run_config(), sort_keys=False), end="")


if __name__ == "__main__":
    main()
