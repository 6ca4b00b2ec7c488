"""Which model directory to answer with: paths checked, and a pipeline stage resolved to its newest run, without torch.

`medcot ask` calls these before it imports anything heavy, so a typo fails in a fraction of a second with
the path named; `load_for_inference` calls them too, so every caller gets the same rules and messages. A model
or adapter directory is also checked against what its writer recorded (`check_model_files`), so a damaged one
fails in one line naming the file and the stage to materialize again, not deep inside safetensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# What a run of each stage keeps its model in: artifacts/<stage>/<run id>/<subdirectory>.
RUN_SUBDIRECTORIES = {"merged_model": "model", "lora_adapter": "adapter"}
LATEST = "latest"


class ModelLoadError(RuntimeError):
    """A model or adapter path that cannot be loaded; the message is one line naming the path."""


def artifacts_root(explicit: str | None = None) -> Path:
    """--artifacts if given, else the root in the active profile (MEDCOT_PROFILE, read as the pipeline reads it,
    `extends` included), else ./artifacts. A profile that cannot be read fails naming its file and key."""
    if explicit:
        return Path(explicit).expanduser()
    # Imported here: pydantic is a fifth of a second, and an explicit path or a typo needs none of it.
    from medcot_pipeline.profiles import ProfileError, load_profile
    from medcot_pipeline.settings import ArtifactsSettings

    profile = os.environ.get("MEDCOT_PROFILE")
    if profile and Path(profile).is_file():
        try:
            return Path(load_profile(profile).resources.artifacts.root).expanduser()
        except ProfileError as err:
            raise ModelLoadError(f"MEDCOT_PROFILE: {err}; fix it, or pass --artifacts") from err
    return Path(ArtifactsSettings().root)  # the artifacts resource's own default


def model_argument(value: str, root: Path) -> str:
    """What --model names, as a directory to load: `latest` is the newest merged model under `root`,
    a stage directory (artifacts/merged_model) its newest complete run, a run directory the model inside it.
    Anything else (a model directory, a Hub id) is returned as given."""
    if value == LATEST:
        stage = root / "merged_model"
        if not stage.is_dir():
            raise ModelLoadError(f"no merged model under {root}/ yet: run the pipeline (bash scripts/run-demo.sh) or pass --model PATH")
        return str(newest_run(stage))
    path = Path(value).expanduser()
    if not path.is_dir() or _is_model_dir(path):
        return value
    for subdirectory in RUN_SUBDIRECTORIES.values():
        if _is_model_dir(path / subdirectory):
            return str(path / subdirectory)
    if path.name in RUN_SUBDIRECTORIES or _complete_runs(path):
        return str(newest_run(path))
    return value


def newest_run(stage_dir: Path) -> Path:
    """The model of a stage's newest complete run: the one the pipeline last recorded in
    <root>/refs/<stage>.json (what the next stage would read), else the most recently written run."""
    stage_dir = Path(stage_dir)
    ref = stage_dir.parent / "refs" / f"{stage_dir.name}.json"
    try:
        record = json.loads(ref.read_text())
        # "location" since the root may be object storage (artifact_store.write_ref); "path" in older roots.
        recorded = Path(record.get("location") or record["path"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = None
    # The ref holds an absolute path; trust it only while it still names a model in this stage directory.
    if recorded is not None and _is_model_dir(recorded) and recorded.resolve().is_relative_to(stage_dir.resolve()):
        return recorded
    runs = _complete_runs(stage_dir)
    if not runs:
        raise ModelLoadError(f"{stage_dir} holds no complete run (no <run id>/{'|'.join(RUN_SUBDIRECTORIES.values())} with a config)")
    return max(runs, key=lambda model: model.stat().st_mtime)


def _complete_runs(stage_dir: Path) -> list[Path]:
    # Staging directories start with a dot and are never complete; checkpoints/ holds no run.
    runs: list[Path] = []
    for run in stage_dir.iterdir() if stage_dir.is_dir() else []:
        if run.name.startswith(".") or not run.is_dir():
            continue
        runs.extend(run / sub for sub in RUN_SUBDIRECTORIES.values() if _is_model_dir(run / sub))
    return runs


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def resolve_model_paths(model_path: str, adapter_path: str | None) -> tuple[str, str | None]:
    """(model reference, adapter directory or None), checked before anything heavy loads."""
    model_dir = Path(model_path).expanduser()
    if not model_dir.exists():
        if str(model_path).startswith((".", "/", "~")) or model_path.count("/") != 1:
            raise ModelLoadError(f"model path {model_path} does not exist")
        model_ref = model_path  # a Hub id, served from the local Hub cache when offline
    elif not model_dir.is_dir():
        raise ModelLoadError(f"model path {model_path} is a file, not a model directory")
    elif (model_dir / "config.json").exists():
        check_model_files(model_dir)
        model_ref = str(model_dir)
    elif (model_dir / "adapter_config.json").exists():
        if adapter_path is not None:
            raise ModelLoadError(f"{model_path} is a LoRA adapter; pass its base model as the model, not a second adapter")
        check_model_files(model_dir)
        return adapter_base(model_dir), str(model_dir)
    else:
        raise ModelLoadError(f"{model_path} is not a model directory (no config.json)")

    if adapter_path is None:
        return model_ref, None
    adapter_dir = Path(adapter_path).expanduser()
    if not (adapter_dir / "adapter_config.json").exists():
        what = "does not exist" if not adapter_dir.exists() else "is not a LoRA adapter (no adapter_config.json)"
        raise ModelLoadError(f"adapter path {adapter_path} {what}")
    check_model_files(adapter_dir)
    return model_ref, str(adapter_dir)


def tokenizer_source(model_ref: str, adapter_dir: str | None) -> str:
    """Where the tokenizer comes from: the adapter's own copy, else the model; a directory without one fails."""
    source = adapter_dir if adapter_dir is not None and has_tokenizer(Path(adapter_dir)) else model_ref
    if Path(source).is_dir() and not has_tokenizer(Path(source)):
        raise ModelLoadError(f"{source} has no tokenizer (neither {' nor '.join(TOKENIZER_FILES)})")
    return source


def adapter_base(adapter_dir: Path) -> str:
    base = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path; pass the base with --model")
    return base


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).exists() for name in TOKENIZER_FILES)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def stage_of(directory: Path) -> str | None:
    """The pipeline stage that wrote `<root>/<stage>/<run id>/<model|adapter>`, or None for any other directory."""
    directory = Path(directory)
    stage = directory.parent.parent.name
    return stage if RUN_SUBDIRECTORIES.get(stage) == directory.name else None


def check_model_files(directory: Path | str, *, hashes: bool = False) -> None:
    """Fail in one line, naming the file and what to materialize again, when a model or adapter directory is damaged.

    Checked, cheapest first: the files its version's manifest lists (size; sha256 with `hashes`), that every
    safetensors file is whole, that an adapter has its weights, and that merged weights add up to the size (and
    sha256, with `hashes`) that merge.json records. No tensor is loaded.
    """
    from medcot_pipeline.artifact_io import files_sha256
    from medcot_pipeline.artifact_store import ArtifactError, verify_version
    from medcot_pipeline.contracts import ContractError, MergeRecord
    from medcot_pipeline.file_integrity import safetensors_problem

    directory = Path(directory)
    merge_record = directory / MergeRecord.FILE
    stage = stage_of(directory) or ("merged_model" if merge_record.exists() else None)
    fix = f"materialize {stage} again" if stage else "write it again"
    manifest_checked = False
    if stage_of(directory):
        try:
            manifest_checked = verify_version(directory.parent, asset=stage, hashes=hashes, under=directory.name)
        except ArtifactError as err:
            raise ModelLoadError(str(err)) from None
    weights = sorted(directory.glob("*.safetensors"))
    for path in weights:
        problem = safetensors_problem(path)
        if problem is not None:
            raise ModelLoadError(f"{path} {problem}: the file is damaged; {fix}")
    if (directory / "adapter_config.json").exists() and not any((directory / name).exists() for name in ADAPTER_WEIGHTS):
        raise ModelLoadError(f"{directory / ADAPTER_WEIGHTS[0]} is missing beside adapter_config.json: the adapter is damaged; {fix}")
    if not merge_record.exists():
        return
    try:
        record = MergeRecord.read(directory)
    except ContractError as err:
        raise ModelLoadError(f"{err}; {fix}") from None
    size = sum(path.stat().st_size for path in weights)
    if size != record.size_bytes:
        what = weights[0] if len(weights) == 1 else f"the {len(weights)} safetensors files in {directory}"
        raise ModelLoadError(
            f"{what} {'is' if len(weights) == 1 else 'are'} {size:,} bytes but {MergeRecord.FILE} records "
            f"{record.size_bytes:,}: the file is damaged; {fix}"
        )
    # The manifest's sha256 already covered these bytes; merge.json's is for versions written before manifests.
    if hashes and not manifest_checked and files_sha256(weights) != record.weights_sha256:
        raise ModelLoadError(
            f"the weights in {directory} have other bytes than {MergeRecord.FILE} records "
            f"(sha256 {record.weights_sha256[:12]}...): the file is damaged; {fix}"
        )
