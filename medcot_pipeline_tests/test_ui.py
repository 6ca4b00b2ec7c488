"""The UI as a person uses it: a pipeline run as scripts/run-pipeline.sh makes it, then dagster dev in headless
Chromium: the run filed under its job with the profile's tags, the asset pages (tags shown, answers beside the
reference, the loss curve inline, the switched-off gate said so), the asset graph and a launch from the page."""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import ASSETS, tiny_profile, write_profile

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EDGES = 8  # raw->formatted, formatted->{adapter, report}, adapter->{merged, release}, merged->{report, release}, report->release
# The code location as pyproject.toml's [tool.dagster] names it: what `dagster dev`, `dagster job launch` and the
# daemon load when given no target, so a run launched by run-pipeline.sh is filed under this location's job.
LOCATION = "medcot_pipeline"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture()
def pipeline_run(tmp_path, smollm2_dir):
    """One run of the medcot_pipeline job on SmolLM2 (real words to show), made by scripts/run-pipeline.sh."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    artifacts = tmp_path / "artifacts"
    profile = write_profile(tmp_path / "ui.yaml", tiny_profile(
        smollm2_dir, artifacts,
        lora_adapter={"max_steps": 1, "eval_steps": 1, "save_steps": 1},
        rouge_report={"max_new_tokens": 24},
    ))
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDCOT_PROFILE": str(profile), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "PY": sys.executable}
    log = tmp_path / "run-pipeline.log"
    with open(log, "w") as out:
        done = subprocess.run(["bash", "scripts/run-pipeline.sh"], cwd=REPO_ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=2400)
    text = log.read_text()
    assert done.returncode == 0, f"run-pipeline.sh failed; see {log}"
    run_id = re.search(r"medcot: run (\S+) ended: SUCCESS", text)[1]
    return {"home": home, "profile": profile, "artifacts": artifacts, "run_id": run_id, "env": env, "tmp_path": tmp_path}


@pytest.fixture()
def dagster_dev(pipeline_run):
    """`dagster dev` as the README starts it (no target: pyproject.toml's code location), on a free port."""
    port = _free_port()
    log = open(pipeline_run["tmp_path"] / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=pipeline_run["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", timeout=180)
        yield f"http://127.0.0.1:{port}", pipeline_run
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_timeout(3000)
    skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
    if skip.count():
        skip.click()


def _expected_answers(artifacts: Path) -> dict:
    """What the rouge_report page must show for question 1, from the run's own samples.jsonl."""
    from medcot_pipeline.defs.metadata import _answer_text, read_samples, shorten

    [samples] = list(artifacts.glob("rouge_report/*/samples.jsonl"))
    models = read_samples(samples)[0]
    return {
        "reference": shorten(models["fine_tuned"]["reference"], 240),
        "base": shorten(_answer_text(models["base"]), 240),
        "fine_tuned": shorten(_answer_text(models["fine_tuned"]), 240),
    }


def test_the_run_and_its_pages_in_the_ui(dagster_dev):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # the pages poll a busy server; five seconds is not enough on 2 cores
    base_url, run = dagster_dev
    tmp_path, profile = run["tmp_path"], run["profile"]
    profile_tag = f"medcot/profile: {profile.name}"
    sha_tag = f"medcot/profile_sha: {hashlib.sha256(profile.read_bytes()).hexdigest()[:12]}"
    expected = _expected_answers(run["artifacts"])
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(90_000)

        # The runs list says what ran: the profile file and its hash.
        _open(page, f"{base_url}/runs")
        expect(page.get_by_text(profile_tag)).to_be_visible()
        expect(page.get_by_text(sha_tag)).to_be_visible()
        page.screenshot(path=str(shots / "runs.png"))
        # Filed under its job, and on the Overview timeline.
        _open(page, f"{base_url}/locations/{LOCATION}/jobs/medcot_pipeline/runs")
        expect(page.get_by_text(run["run_id"][:8]).first).to_be_visible()
        _open(page, f"{base_url}/overview/activity/timeline")
        expect(page.get_by_text("medcot_pipeline", exact=True).first).to_be_visible()
        page.screenshot(path=str(shots / "timeline.png"))

        # Tags stay visible: in the description (markdown) and in the preview table (plain text).
        _open(page, f"{base_url}/assets/formatted_splits")
        expect(page.get_by_text("<think>…</think><response>…</response>")).to_be_visible()
        expect(page.locator("td").filter(has_text=re.compile(r"^<think>")).first).to_be_visible()
        page.screenshot(path=str(shots / "formatted_splits.png"))

        # The loss curve shows inline, not behind a click.
        _open(page, f"{base_url}/assets/lora_adapter")
        expect(page.locator("img[alt^='loss per step']").first).to_be_visible()

        # rouge_report: base and fine-tuned answers beside the reference.
        _open(page, f"{base_url}/assets/rouge_report")
        for text in (expected["reference"], expected["base"], expected["fine_tuned"]):
            expect(page.locator("td").filter(has_text=text).first).to_be_visible()
        expect(page.locator("td").filter(has_text="fine-tuned, ROUGE-L").first).to_be_visible()
        page.screenshot(path=str(shots / "rouge_report.png"), full_page=True)
        page.locator("tr").filter(has_text="answers_side_by_side").get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        headers = dialog.locator("th")
        expect(headers.filter(has_text="Reference").first).to_be_visible()
        expect(headers.filter(has_text="Base model (ROUGE-L").first).to_be_visible()
        expect(headers.filter(has_text="Fine-tuned model (ROUGE-L").first).to_be_visible()
        expect(dialog.locator("td").filter(has_text=expected["reference"][:60]).first).to_be_visible()
        page.screenshot(path=str(shots / "answers_side_by_side.png"))
        page.keyboard.press("Escape")

        # The demo-style profile turns the gate off; the check says so instead of a bare "Passed".
        _open(page, f"{base_url}/assets/rouge_report?view=checks")
        page.get_by_text("release_gate").first.click()
        expect(page.get_by_text("gate disabled by profile settings").first).to_be_visible()

        # The asset graph: groups start collapsed; expand them from the canvas's context menu.
        _open(page, f"{base_url}/asset-groups")
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        page.locator("[class*=AssetGraphExplorer_svgContainer]").first.click(button="right", position={"x": 20, "y": 20})
        page.get_by_role("menuitem", name="Expand all groups").click()
        node = lambda name: page.locator("div[class*=AssetNode_assetName]", has_text=name).first  # noqa: E731
        for asset in ASSETS:
            expect(node(asset)).to_be_visible()
        edges = page.locator("[class*=AssetGraphExplorer_svgContainer] path[stroke='var(--color-lineage-edge)']")
        expect(edges).to_have_count(EDGES)
        page.screenshot(path=str(shots / "asset_graph.png"))

        # A launch from the graph runs Dagster's implicit asset job; its first step tags it with the profile too.
        node("raw_dataset").click()
        node("formatted_splits").click(modifiers=["Shift"])
        page.get_by_role("button", name="Materialize selected (2)").click()
        expect(page.get_by_text("Launched run")).to_be_visible()
        # The runs page polls the server itself; "networkidle" never comes on a busy machine, so wait for text.
        _open(page, f"{base_url}/runs")
        deadline = time.time() + 600
        while time.time() < deadline:
            if page.get_by_text("Failure", exact=True).count():
                pytest.fail(f"the run failed; see {tmp_path / 'dagster_dev.log'}")
            if page.get_by_text("Success", exact=True).count() == 2:
                break
            page.wait_for_timeout(5000)
        else:
            pytest.fail("the run launched from the UI did not finish in 10 minutes")
        page.reload(wait_until="domcontentloaded")
        expect(page.get_by_text(profile_tag)).to_have_count(2)
        page.screenshot(path=str(shots / "runs_after_launch.png"))
        browser.close()

    assert len(list((run["artifacts"] / "formatted_splits").glob("*/train.parquet"))) == 2
    keep = REPO_ROOT / "artifacts" / "ui"
    keep.mkdir(parents=True, exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy(shot, keep / shot.name)
    (keep / "run.json").write_text(json.dumps({"run_id": run["run_id"], "profile": profile.name}) + "\n")
