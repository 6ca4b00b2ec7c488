"""Staging layout and manifest; pushes against a small fake Hub on 127.0.0.1 (auth, retries, no empty commits)."""

import base64
import hashlib
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save_file

from medcot_pipeline.release.hub_publishing import (
    HubUnavailableError,
    ReleaseAuthError,
    ReleaseError,
    adapter_repo_id,
    push_release,
    stage_release,
)
from medcot_pipeline.contracts import BaseModelRef, ReleaseManifest
from medcot_pipeline.release.model_card import ReleaseFacts, build_model_card
from medcot_pipeline_tests.contract_factories import evaluation_report, training_summary

REPO_ID = "clinic-ml/medcot-test"
TOKEN = "hf_FakeWriteToken0123456789abcdefXYZ"
BASE_ID = "meta-llama/Llama-3.2-3B-Instruct"


# ---------------------------------------------------------------- fixtures: a tiny release


@pytest.fixture
def merged_dir(tmp_path) -> Path:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (out / "generation_config.json").write_text(json.dumps({"max_new_tokens": 16}))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    (out / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": ["a", "b"]}))
    save_file({"lm_head.weight": np.arange(64, dtype=np.float32).reshape(8, 8)}, out / "model.safetensors")
    (out / "README.md").write_text("an old card that the release card replaces")
    (out / ".cache").mkdir()
    (out / ".cache" / "lock").write_text("not part of a release")
    return out


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": str(tmp_path / "local-base")})
    )
    save_file({"lora_A.weight": np.ones((2, 8), dtype=np.float32)}, out / "adapter_model.safetensors")
    (out / "README.md").write_text("PEFT's generated card")
    (out / "training_summary.json").write_text(json.dumps({"wall_time_seconds": 12.0}))
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "optimizer.pt").write_bytes(b"\0" * 32)
    return out


@pytest.fixture
def card():
    facts = ReleaseFacts(
        repo_id=REPO_ID,
        license="llama3.2",
        training=training_summary(base_model=BaseModelRef(name=BASE_ID, reference=BASE_ID), backend="transformers", base_weights="float32"),
        evaluation=evaluation_report(n=10),
        code_version={"hub_release": "0.1.0"},
        adapter_location="adapter/",
    )
    return build_model_card(facts)


def staged_release(tmp_path, merged_dir, adapter_dir, card, mode="subfolder", name="release") -> Path:
    out = tmp_path / name
    stage_release(merged_dir, adapter_dir if mode != "none" else None, card, out, mode)
    return out


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- staging


def test_subfolder_layout_manifest_and_hardlinks(tmp_path, merged_dir, adapter_dir, card):
    out = tmp_path / "release"
    manifest = stage_release(merged_dir, adapter_dir, card, out, "subfolder")

    assert files_under(out) == {
        "manifest.json",
        "model/README.md", "model/config.json", "model/generation_config.json", "model/model.safetensors",
        "model/tokenizer.json", "model/tokenizer_config.json",
        "model/adapter/README.md", "model/adapter/adapter_config.json", "model/adapter/adapter_model.safetensors",
    }
    assert (out / "model" / "README.md").read_text() == str(card)
    assert ReleaseManifest.read(out) == manifest
    assert set(manifest.files) == files_under(out) - {"manifest.json"}
    for relative, digest in manifest.files.items():
        assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest, relative
    assert manifest.total_bytes == sum((out / r).stat().st_size for r in manifest.files)
    # Same filesystem: the weights are hard links, not copies.
    assert os.stat(out / "model" / "model.safetensors").st_ino == os.stat(merged_dir / "model.safetensors").st_ino
    # The adapter points at the Hub id of its base, not at the training machine's path.
    adapter_config = json.loads((out / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BASE_ID
    assert adapter_config["r"] == 8
    assert str(tmp_path) in (adapter_dir / "adapter_config.json").read_text(), "the source must stay untouched"
    adapter_readme = (out / "model" / "adapter" / "README.md").read_text()
    assert 'subfolder="adapter"' in adapter_readme and BASE_ID in adapter_readme


def test_separate_repo_layout_has_its_own_readme(tmp_path, merged_dir, adapter_dir, card):
    out = staged_release(tmp_path, merged_dir, adapter_dir, card, "separate_repo")

    assert not (out / "model" / "adapter").exists()
    assert files_under(out / "adapter") == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    readme = (out / "adapter" / "README.md").read_text()
    assert f"https://huggingface.co/{REPO_ID}" in readme  # the merged repo
    assert f"https://huggingface.co/{BASE_ID}" in readme  # the base
    assert f'PeftModel.from_pretrained(base, "{adapter_repo_id(REPO_ID)}")' in readme
    assert "not a medical device" in readme


def test_restaging_without_adapter_leaves_no_stale_adapter(tmp_path, merged_dir, adapter_dir, card):
    staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    out = staged_release(tmp_path, merged_dir, adapter_dir, card, "none")

    assert not any("adapter" in path for path in files_under(out))
    assert set(json.loads((out / "manifest.json").read_text())["files"]) == files_under(out) - {"manifest.json"}


def test_no_token_in_any_staged_file(tmp_path, merged_dir, adapter_dir, card, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = staged_release(tmp_path, merged_dir, adapter_dir, card, "separate_repo")
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_staging_names_what_is_missing(tmp_path, merged_dir, adapter_dir, card):
    (merged_dir / "tokenizer_config.json").unlink()
    with pytest.raises(ReleaseError, match=r"merged.* has no tokenizer_config.json"):
        stage_release(merged_dir, adapter_dir, card, tmp_path / "out", "subfolder")
    with pytest.raises(ReleaseError, match="needs an adapter directory"):
        stage_release(merged_dir, None, card, tmp_path / "out", "separate_repo")


# ---------------------------------------------------------------- a fake Hub on loopback


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub(ThreadingHTTPServer):
    """Just enough of the Hub's HTTP API for create_repo, repo_info and upload_folder, with regular (non-LFS) files.

    Routes: POST /api/repos/create, POST /api/validate-yaml, GET /api/models/<repo>[/revision/<rev>],
    GET /api/models/<repo>/tree/<rev>, POST /api/models/<repo>/preupload/<rev>, POST /api/models/<repo>/commit/<rev>.
    `fail_next` holds statuses to answer (one per request) before behaving; `always` answers every request.
    """

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        self.requests: list[tuple[str, str, str | None]] = []
        self.repos: dict[str, dict] = {}
        self.fail_next: list[int] = []
        self.always: int | None = None
        self.unknown: list[str] = []  # requests outside the routes above

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, path, _ in self.requests if m == method and re.search(pattern, path))


REPO_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>revision|tree|preupload|commit)/(?P<rev>[^/]+))?$")


class FakeHubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def reply(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_request(self):
        hub: FakeHub = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urlsplit(self.path).path
        auth = self.headers.get("Authorization")
        hub.requests.append((self.command, path, auth))
        status = hub.fail_next.pop(0) if hub.fail_next else hub.always
        if status in (401, 403):
            # A careless server echoing the credentials: the client must scrub them.
            return self.reply(status, {"error": f"{auth} may not write to this namespace"})
        if status is not None:
            return self.reply(status, {"error": "the fake Hub is unavailable"})

        if (self.command, path) == ("POST", "/api/repos/create"):
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            if repo_id in hub.repos:
                return self.reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            hub.repos[repo_id] = {"visibility": request.get("visibility"), "files": {".gitattributes": gitattributes}, "commits": []}
            self.commit(repo_id)
            return self.reply(200, {"url": f"{hub.url}/{repo_id}"})
        if (self.command, path) == ("POST", "/api/validate-yaml"):
            return self.reply(200, {"errors": [], "warnings": []})

        match = REPO_ROUTE.match(path)
        if not match or match["repo"] not in hub.repos:
            return self.not_found(path)
        repo_id, action, repo = match["repo"], match["action"], hub.repos[match["repo"]]
        if self.command == "GET" and action in (None, "revision"):
            return self.reply(200, {"id": repo_id, "sha": repo["commits"][-1], "private": repo["visibility"] == "private"})
        if self.command == "GET" and action == "tree":
            listing = [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)} for p, d in repo["files"].items()]
            return self.reply(200, listing)
        if self.command == "POST" and action == "preupload":
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(repo["files"][f["path"]]) if f["path"] in repo["files"] else None,
                }
                for f in json.loads(body)["files"]
            ]
            return self.reply(200, {"files": files})
        if self.command == "POST" and action == "commit":
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    repo["files"].pop(item["value"]["path"])
                elif item["key"] != "header":
                    return self.reply(400, {"error": f"the fake Hub does not support {item['key']}"})
            oid = self.commit(repo_id)
            return self.reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})
        return self.not_found(path)

    def not_found(self, path: str) -> None:
        self.server.unknown.append(f"{self.command} {path}")
        self.reply(404, {"error": f"{self.command} {path} is not in the fake Hub"})

    def commit(self, repo_id: str) -> str:
        repo = self.server.repos[repo_id]
        digest = hashlib.sha1(str(len(repo["commits"])).encode())
        for name, data in sorted(repo["files"].items()):
            digest.update(name.encode() + data)
        repo["commits"].append(digest.hexdigest())
        return repo["commits"][-1]


@pytest.fixture
def fake_hub(monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1, which huggingface_hub reads into constants at import;
    # only this loopback server is reachable in these tests.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    hub = FakeHub()
    thread = threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


class RecordedSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def push(staged: Path, hub: FakeHub, mode="subfolder", **kwargs):
    sleep = kwargs.pop("sleep", RecordedSleep())
    return push_release(staged, REPO_ID, TOKEN, adapter_mode=mode, commit_message="medcot release",
                        endpoint=hub.url, backoff_seconds=0.5, sleep=sleep, **kwargs)


# ---------------------------------------------------------------- pushing


def test_push_then_identical_push_makes_no_commit(tmp_path, merged_dir, adapter_dir, card, fake_hub, capfd):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")

    first = push(staged, fake_hub)
    repo = fake_hub.repos[REPO_ID]
    assert first["pushed"] and not first["skipped_unchanged"]
    assert first["commit_oid"] == repo["commits"][-1] and first["revision"] == first["commit_oid"]
    assert first["repo_url"] == f"{fake_hub.url}/{REPO_ID}" and first["adapter"] is None
    assert repo["visibility"] == "private"
    staged_files = {r: (staged / "model" / r).read_bytes() for r in files_under(staged / "model")}
    assert {p: d for p, d in repo["files"].items() if p != ".gitattributes"} == staged_files
    assert fake_hub.count("POST", "/commit/") == 1
    assert {auth for _, _, auth in fake_hub.requests} == {f"Bearer {TOKEN}"}

    second = push(staged, fake_hub)
    assert second["pushed"] is False and second["skipped_unchanged"] is True
    assert second["commit_oid"] is None and second["commit_url"] is None
    assert second["revision"] == first["commit_oid"]
    assert fake_hub.count("POST", "/commit/") == 1, "an unchanged release must not commit"
    assert fake_hub.count("POST", "/preupload/") == 2
    assert fake_hub.unknown == []

    assert TOKEN not in json.dumps([first, second])
    assert TOKEN not in "".join(capfd.readouterr())
    for path in staged.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_removes_files_the_new_release_no_longer_has(tmp_path, merged_dir, adapter_dir, card, fake_hub):
    push(staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder", name="v1"), fake_hub)
    assert any(p.startswith("adapter/") for p in fake_hub.repos[REPO_ID]["files"])

    result = push(staged_release(tmp_path, merged_dir, adapter_dir, card, "none", name="v2"), fake_hub, mode="none")
    assert result["pushed"]
    remote = set(fake_hub.repos[REPO_ID]["files"])
    assert not any(p.startswith("adapter/") for p in remote)
    assert remote == files_under(tmp_path / "v2" / "model") | {".gitattributes"}


def test_separate_repo_mode_pushes_the_adapter_to_its_own_repo(tmp_path, merged_dir, adapter_dir, card, fake_hub):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "separate_repo")
    result = push(staged, fake_hub, mode="separate_repo")

    lora_repo = adapter_repo_id(REPO_ID)
    assert result["adapter"]["repo_id"] == lora_repo and result["adapter"]["pushed"]
    assert set(fake_hub.repos[lora_repo]["files"]) == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert not any(p.startswith("adapter/") for p in fake_hub.repos[REPO_ID]["files"])


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_fails_at_once_without_leaking_it(tmp_path, merged_dir, adapter_dir, card, fake_hub, status, caplog, capfd):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    fake_hub.always = status
    sleep = RecordedSleep()
    caplog.set_level("DEBUG")

    with pytest.raises(ReleaseAuthError) as raised:
        push(staged, fake_hub, sleep=sleep)

    message = str(raised.value)
    assert f"the token needs write access to {REPO_ID}" in message and str(status) in message
    assert TOKEN not in message and TOKEN not in repr(raised.value)
    # The Hub's exception holds the request headers: it must not travel as cause or context.
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert fake_hub.count("POST", "^/api/repos/create$") == 1 and sleep.calls == []
    assert not any(path.endswith(("/preupload/main", "/commit/main")) for _, path, _ in fake_hub.requests)
    assert TOKEN not in caplog.text and TOKEN not in "".join(capfd.readouterr())


def test_unavailable_hub_is_retried_with_backoff_then_succeeds(tmp_path, merged_dir, adapter_dir, card, fake_hub):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    fake_hub.fail_next = [503, 503]
    sleep = RecordedSleep()

    result = push(staged, fake_hub, sleep=sleep)

    assert result["pushed"]
    assert sleep.calls == [0.5, 1.0]
    assert fake_hub.count("POST", "^/api/repos/create$") == 3


def test_unavailable_hub_fails_after_max_retries(tmp_path, merged_dir, adapter_dir, card, fake_hub):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    fake_hub.always = 503
    sleep = RecordedSleep()

    with pytest.raises(HubUnavailableError, match=rf"{REPO_ID} still failed after 4 attempts: HTTP 503") as raised:
        push(staged, fake_hub, sleep=sleep, max_retries=3)

    assert not isinstance(raised.value, ReleaseAuthError)
    assert sleep.calls == [0.5, 1.0, 2.0]
    assert fake_hub.count("POST", "^/api/repos/create$") == 4


def test_connection_refused_is_retried(tmp_path, merged_dir, adapter_dir, card, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    sleep = RecordedSleep()

    with pytest.raises(ReleaseError, match="still failed after 2 attempts: ConnectError"):
        push_release(staged, REPO_ID, TOKEN, adapter_mode="subfolder", commit_message="m",
                     endpoint=f"http://127.0.0.1:{port}", max_retries=1, backoff_seconds=0.5, sleep=sleep)
    assert sleep.calls == [0.5]


def test_push_refuses_offline_mode_and_mismatched_staging(tmp_path, merged_dir, adapter_dir, card, monkeypatch):
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReleaseError, match="HF_HUB_OFFLINE"):
        push_release(staged, REPO_ID, TOKEN, adapter_mode="subfolder", commit_message="m", endpoint="http://127.0.0.1:9")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ReleaseError, match="staged for another adapter mode"):
        push_release(staged, REPO_ID, TOKEN, adapter_mode="none", commit_message="m", endpoint="http://127.0.0.1:9")
    with pytest.raises(ReleaseAuthError, match=f"needs write access to {REPO_ID}"):
        push_release(staged, REPO_ID, "", adapter_mode="subfolder", commit_message="m", endpoint="http://127.0.0.1:9")


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_only_a_hub_that_stayed_unavailable_is_worth_another_attempt(tmp_path, merged_dir, adapter_dir, card, fake_hub, status, monkeypatch):
    """hub_release lets Dagster retry HubUnavailableError only: a 4xx, a refused token or offline mode is a plain
    ReleaseError (or ReleaseAuthError), raised at the first attempt."""
    staged = staged_release(tmp_path, merged_dir, adapter_dir, card, "subfolder")
    fake_hub.always = status
    sleep = RecordedSleep()
    with pytest.raises(ReleaseError) as raised:
        push(staged, fake_hub, sleep=sleep)
    assert not isinstance(raised.value, HubUnavailableError) and sleep.calls == []

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReleaseError, match="HF_HUB_OFFLINE") as raised:
        push(staged, fake_hub, sleep=sleep)
    assert not isinstance(raised.value, HubUnavailableError)
