"""Stage a release exactly as it will be pushed, then push it to the Hub: retried on hiccups, never leaking the token."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from medcot_pipeline.artifact_io import file_sha256
from medcot_pipeline.contracts import MergeRecord, ReleaseManifest
from medcot_pipeline.release.model_card import build_adapter_card

AdapterMode = Literal["subfolder", "separate_repo", "none"]
ADAPTER_MODES = ("subfolder", "separate_repo", "none")
ADAPTER_SUBFOLDER = "adapter"
MANIFEST_NAME = ReleaseManifest.FILE

# The adapter directory also holds training leftovers (summaries, trainer state); only these travel.
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)

TRANSIENT_STATUS = {408, 429}  # plus every 5xx
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

logger = logging.getLogger(__name__)


class ReleaseError(RuntimeError):
    """The release could not be staged or pushed; the message says which repo and step.

    Permanent: the same release fails the same way again (missing files, offline mode, a 4xx from the Hub).
    """


class ReleaseAuthError(ReleaseError):
    """The Hub refused the token (401/403)."""


class HubUnavailableError(ReleaseError):
    """The Hub kept failing transiently (5xx, 408/429, connection errors) through every retry; later it may not."""


def adapter_repo_id(repo_id: str) -> str:
    """Where the adapter goes in separate_repo mode."""
    return f"{repo_id}-lora"


# ---------------------------------------------------------------- staging


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A hard link costs no disk for multi-GB shards; a copy only when crossing filesystems.
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_merged_model(merged_model_dir: Path) -> None:
    if not merged_model_dir.is_dir():
        raise ReleaseError(f"merged model directory {merged_model_dir} does not exist")
    for required in ("config.json", "tokenizer_config.json"):
        if not (merged_model_dir / required).exists():
            raise ReleaseError(f"merged model directory {merged_model_dir} has no {required}")
    if not any(merged_model_dir.glob("*.safetensors")):
        raise ReleaseError(f"merged model directory {merged_model_dir} has no .safetensors weights")


def _stage_merged_model(merged_model_dir: Path, target: Path) -> None:
    for src in sorted(merged_model_dir.rglob("*")):
        relative = src.relative_to(merged_model_dir)
        if not src.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() in ("README.md", MergeRecord.FILE):  # the release card replaces the one; the other is local provenance
            continue
        _link_or_copy(src, target / relative)


def _stage_adapter(adapter_dir: Path, target: Path, base_model: str | list[str] | None) -> None:
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / required).exists():
            raise ReleaseError(f"adapter directory {adapter_dir} has no {required}")
    target.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_WEIGHTS, *TOKENIZER_FILES):
        if (adapter_dir / name).exists():
            _link_or_copy(adapter_dir / name, target / name)
    # Training saw a local path for the base; people loading the adapter from the Hub need its Hub id.
    # Written as a new file, never through a hard link, so the trained adapter stays as it was.
    adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if isinstance(base_model, str) and base_model:  # a card naming several bases (a merge) leaves the adapter's own
        adapter_config["base_model_name_or_path"] = base_model
    (target / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def stage_release(
    merged_model_dir: Path,
    adapter_dir: Path | None,
    card: ModelCard,
    out_dir: Path,
    adapter_mode: AdapterMode = "subfolder",
    *,
    repo_id: str | None = None,
) -> ReleaseManifest:
    """Lay out `out_dir` exactly as it will be pushed and write its manifest.

    out_dir/model/           merged weights, tokenizer, README.md (the card); pushed to `repo_id`
    out_dir/model/adapter/   the LoRA adapter, in subfolder mode
    out_dir/adapter/         the LoRA adapter with its own README, in separate_repo mode
    out_dir/manifest.json    {"files": {relative path: sha256}, "total_bytes": ...}; never pushed

    `repo_id` defaults to the card's model-index name (build_model_card sets it to the repo id).
    """
    if adapter_mode not in ADAPTER_MODES:
        raise ReleaseError(f"adapter_mode must be one of {ADAPTER_MODES}, not {adapter_mode!r}")
    if adapter_mode != "none" and adapter_dir is None:
        raise ReleaseError(f"adapter_mode {adapter_mode!r} needs an adapter directory, and none was given")
    data = card.data
    if not isinstance(data, ModelCardData):
        raise ReleaseError(f"the card's metadata is a {type(data).__name__}, not a model card's; build it with build_model_card")
    repo_id = repo_id or data.model_name
    if not repo_id:
        raise ReleaseError("the model card names no repository (model-index name); pass repo_id")
    merged_model_dir, out_dir = Path(merged_model_dir), Path(out_dir)
    _check_merged_model(merged_model_dir)

    # Only what this function writes is cleared, so a wrong out_dir cannot lose other files.
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model", ADAPTER_SUBFOLDER):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)

    model_dir = out_dir / "model"
    _stage_merged_model(merged_model_dir, model_dir)
    card.save(model_dir / "README.md")

    if adapter_mode == "subfolder" and adapter_dir is not None:
        target = model_dir / ADAPTER_SUBFOLDER
        _stage_adapter(Path(adapter_dir), target, data.base_model)
        build_adapter_card(card, repo_id, subfolder=ADAPTER_SUBFOLDER).save(target / "README.md")
    elif adapter_mode == "separate_repo" and adapter_dir is not None:
        target = out_dir / ADAPTER_SUBFOLDER
        _stage_adapter(Path(adapter_dir), target, data.base_model)
        build_adapter_card(card, adapter_repo_id(repo_id)).save(target / "README.md")

    staged = sorted(p for folder in (model_dir, out_dir / ADAPTER_SUBFOLDER) for p in folder.rglob("*") if p.is_file())
    files = {path.relative_to(out_dir).as_posix(): file_sha256(path) for path in staged}
    total_bytes = sum((out_dir / relative).stat().st_size for relative in files)
    manifest = ReleaseManifest(repo_id=repo_id, adapter_mode=adapter_mode, files=files, total_bytes=total_bytes)
    manifest.write(out_dir)
    return manifest


# ---------------------------------------------------------------- pushing


def _scrub(text: str, token: str) -> str:
    """Remove the token, and anything shaped like a Hub token or bearer header, from a message."""
    text = text.replace(token, "***")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


class _Transient:
    """A failure worth retrying, described without the token."""

    def __init__(self, reason: str, retry_after: float | None = None):
        self.reason, self.retry_after = reason, retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(err: BaseException, step: str, repo_id: str, token: str) -> ReleaseError | _Transient | None:
    """What a failed Hub call means; None for errors that are not the Hub's (they propagate unchanged)."""
    if isinstance(err, OfflineModeIsEnabled):
        return ReleaseError(f"{step} for {repo_id}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to release")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code
        detail = _scrub(err.server_message or str(err).splitlines()[0], token)
        if status in (401, 403):
            return ReleaseAuthError(
                f"{step} for {repo_id} was refused with HTTP {status}: the token needs write access to {repo_id} "
                f"(a fine-grained token needs 'write' on this repo or its namespace). Hub said: {detail}"
            )
        if status in TRANSIENT_STATUS or status >= 500:
            return _Transient(f"HTTP {status}: {detail}", _retry_after(err.response))
        return ReleaseError(f"{step} for {repo_id} failed with HTTP {status}: {detail}")
    if isinstance(err, TRANSIENT_ERRORS):
        return _Transient(f"{type(err).__name__}: {_scrub(str(err), token)}")
    return None


def _with_retries(step: str, repo_id: str, call: Callable[[], Any], *, token: str, max_retries: int, backoff_seconds: float, sleep) -> Any:
    """call(), retried on transient failures; every failure that leaves here is a ReleaseError without the token."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified below; unknown errors re-raised as they are
            outcome = _classify(err, step, repo_id, token)
            if outcome is None:
                raise
        # Raised outside the except block: the Hub's exception (whose request carries the
        # Authorization header) must not ride along as __context__.
        if isinstance(outcome, ReleaseError):
            raise outcome
        if attempt == max_retries:
            raise HubUnavailableError(f"{step} for {repo_id} still failed after {attempt + 1} attempts: {outcome.reason}")
        delay = max(backoff_seconds * 2**attempt, outcome.retry_after or 0.0)
        logger.warning("%s for %s failed (%s); retry %d/%d in %.1f s", step, repo_id, outcome.reason, attempt + 1, max_retries, delay)
        sleep(delay)
    raise AssertionError("unreachable")


def _push_folder(
    api: HfApi, folder: Path, repo_id: str, *, private: bool, commit_message: str, retry: Callable[..., Any]
) -> dict[str, Any]:
    """create_repo, then upload_folder; whether a commit was made is read off the head before and after."""
    repo_url = retry(
        "creating the repository", repo_id, lambda: api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    )
    head_before = retry("reading the current commit", repo_id, lambda: api.repo_info(repo_id, repo_type="model").sha)
    # upload_folder drops files whose content the Hub already has and makes no commit when nothing
    # is left; delete_patterns="*" removes remote files this release no longer has (e.g. old shards),
    # so the repo mirrors the staged folder. .gitattributes is always kept.
    info = retry(
        "uploading the release",
        repo_id,
        lambda: api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=commit_message, delete_patterns="*"
        ),
    )
    committed = info.oid != head_before
    return {
        "repo_id": repo_id,
        "repo_url": str(repo_url),
        "pushed": committed,
        "skipped_unchanged": not committed,
        "commit_oid": info.oid if committed else None,
        "commit_url": info.commit_url if committed else None,
        "revision": info.oid,
    }


def push_release(
    staged_dir: Path,
    repo_id: str,
    token: str,
    *,
    private: bool = True,
    adapter_mode: AdapterMode = "subfolder",
    commit_message: str = "medcot release",
    endpoint: str | None = None,
    max_retries: int = 4,
    backoff_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Push a folder made by stage_release: model/ to `repo_id`, and adapter/ to `<repo_id>-lora` in separate_repo mode.

    Returns, for the model repo, {"pushed", "skipped_unchanged", "commit_oid", "commit_url", "revision",
    "repo_url", "repo_id"} plus "adapter" (the same keys for the adapter repo, or None). An unchanged
    release makes no commit: pushed is False and commit_oid None; revision is the repo's current commit.
    Transient failures (5xx, 408, 429, connection errors) are retried max_retries times with exponential
    backoff, then raise HubUnavailableError; 401/403 raise ReleaseAuthError at once, and every other failure
    (offline mode, another 4xx) a plain ReleaseError at once. The token is never logged, returned or raised.
    """
    if adapter_mode not in ADAPTER_MODES:
        raise ReleaseError(f"adapter_mode must be one of {ADAPTER_MODES}, not {adapter_mode!r}")
    if not token:
        raise ReleaseAuthError(f"no Hub token was given: the token needs write access to {repo_id}")
    if constants.is_offline_mode():
        raise ReleaseError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be pushed; unset it to release")
    staged_dir = Path(staged_dir)
    model_dir = staged_dir / "model"
    subfolder, separate = model_dir / ADAPTER_SUBFOLDER, staged_dir / ADAPTER_SUBFOLDER
    if not (model_dir / "README.md").exists():
        raise ReleaseError(f"{staged_dir} is not a staged release: model/README.md is missing")
    if subfolder.is_dir() != (adapter_mode == "subfolder"):
        found = "has" if subfolder.is_dir() else "lacks"
        raise ReleaseError(f"{staged_dir} was staged for another adapter mode than {adapter_mode!r}: it {found} model/adapter/")
    if adapter_mode == "separate_repo" and not separate.is_dir():
        raise ReleaseError(f"{staged_dir} has no adapter/ folder to push in separate_repo mode")

    api = HfApi(endpoint=endpoint, token=token)

    def retry(step: str, target: str, call: Callable[[], Any]) -> Any:
        return _with_retries(step, target, call, token=token, max_retries=max_retries, backoff_seconds=backoff_seconds, sleep=sleep)

    result = _push_folder(api, model_dir, repo_id, private=private, commit_message=commit_message, retry=retry)
    result["adapter"] = None
    if adapter_mode == "separate_repo":
        result["adapter"] = _push_folder(
            api, separate, adapter_repo_id(repo_id), private=private, commit_message=commit_message, retry=retry
        )
    return result
