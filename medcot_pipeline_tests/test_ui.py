"""The UI as a person uses it: a pipeline run as scripts/run-pipeline.sh makes it (its terminal quiet), then dagster
dev in headless Chromium: the run filed under its job with the profile's tags, the asset pages (tags shown, the
loss curve inline and drawn, rouge_report and hub_release opening with the gate's verdict, every answer beside the
reference, the card's facts), the asset graph and a launch from the page."""

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

from medcot_pipeline.presentation.charts import CHART_WIDTH
from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import ASSETS, tiny_profile, write_profile

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# raw->formatted, benchmark_questions->{formatted, benchmark_report}, formatted->{adapter, report, release},
# adapter->{merged, release}, merged->{report, benchmark_report, release}, {report, benchmark_report}->release
EDGES = 13
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
    # A quiet terminal: the run's progress one line an event; Dagster's DEBUG events, the trainer's raw dicts, W&B's
    # banner and progress bars are in the files it names at the end.
    for noise in (" DEBUG ", "STEP_START", "{'loss'", "wandb:", "it/s]", "Traceback"):
        assert noise not in text, f"{noise!r} reached the terminal; see {log}"
    assert re.search(r"\n\d\d:\d\d:\d\d  lora_adapter +step 1/1: loss \d", text), text
    # This profile turns the gate off: a warning that blocks nothing, never a passed check.
    assert re.search(r"\n\d\d:\d\d:\d\d  lora_adapter +done in ", text) and "check release_gate: DISABLED, blocks nothing (not a pass)" in text
    assert re.search(r"rouge_report +release gate DISABLED: ", text)
    events = Path(re.search(r"every event of the run: (\S+\.log)", text)[1])
    assert " - DEBUG - lora_adapter - STEP_START - " in events.read_text()
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


# Dagster writes a path on one line whatever its length: this test's temporary directories (over 100 characters)
# widen any page, the demo's relative `artifacts/<asset>/<run id>/...` paths do not (measured in Chromium).
PATH_ROWS = ["path", "artifact", "checkpoint_dir", "resumed_from"]


def _metadata_fits(page) -> None:
    """The page's metadata table fits its pane, paths aside: no column pushed past the edge and cut mid-word.
    On failure, it names the rows that are too wide on their own."""
    table, pane, widths = page.locator("table").first.evaluate(
        """(table, paths) => {
            const rows = Array.from(table.querySelectorAll(':scope > tbody > tr'));
            const key = row => row.querySelector('td').innerText.trim();
            const shown = rows.filter(row => !paths.includes(key(row)));
            rows.forEach(row => { if (!shown.includes(row)) row.style.display = 'none'; });
            const width = table.scrollWidth;
            const each = shown.map((row, i) => {
                shown.forEach((other, j) => { other.style.display = i === j ? '' : 'none'; });
                return [key(row), table.scrollWidth];
            });
            shown.forEach(row => { row.style.display = ''; });
            return [width, table.parentElement.clientWidth, each];
        }""",
        PATH_ROWS,
    )
    wide = [(key, width) for key, width in widths if width > pane]
    assert table <= pane, f"the metadata table is {table} px in a {pane} px pane; too wide on their own: {wide}"


def _expected(artifacts: Path) -> dict:
    """What the pages must show, from the run's own artifacts: every answer row, the card's facts."""
    from medcot_pipeline.presentation.answers import answers_table
    from medcot_pipeline.presentation.text import size_text

    [samples] = list(artifacts.glob("rouge_report/*/samples.jsonl"))
    [weights] = list(artifacts.glob("lora_adapter/*/adapter/adapter_model.safetensors"))
    return {"rows": answers_table(samples).records, "adapter_size": size_text(weights.stat().st_size)}


def test_the_run_and_its_pages_in_the_ui(dagster_dev):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # the pages poll a busy server; five seconds is not enough on 2 cores
    base_url, run = dagster_dev
    tmp_path, profile = run["tmp_path"], run["profile"]
    profile_tag = f"medcot/profile: {profile.name}"
    sha_tag = f"medcot/profile_sha: {hashlib.sha256(profile.read_bytes()).hexdigest()[:12]}"
    expected = _expected(run["artifacts"])
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

        # The loss curve shows inline, not behind a click, full width, and the browser draws it.
        _open(page, f"{base_url}/assets/lora_adapter")
        curve = page.locator("img[alt^='loss per step']").first
        expect(curve).to_be_visible()
        assert curve.evaluate("img => img.complete && img.naturalWidth") == CHART_WIDTH
        _metadata_fits(page)
        page.screenshot(path=str(shots / "lora_adapter.png"), full_page=True)

        # rouge_report opens with the verdict: this profile switches the gate off, and it does not read as a pass.
        _open(page, f"{base_url}/assets/rouge_report")
        expect(page.get_by_text("⚪ Release gate DISABLED: it blocks nothing, this is not a pass").first).to_be_visible()
        expect(page.get_by_text("Best answer").first).to_be_visible()
        _metadata_fits(page)
        # Every answer, each with its score and what is wrong with it, beside its question and the reference.
        questions = {row["#"] for row in expected["rows"]}
        assert len(questions) == 2
        for row in expected["rows"]:
            expect(page.locator("td").filter(has_text=row["text"]).first).to_be_visible()
            expect(page.locator("td").filter(has_text=row["from"]).first).to_be_visible()
        page.screenshot(path=str(shots / "rouge_report.png"), full_page=True)
        page.locator("tr").filter(has_text="answers_side_by_side").get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        headers = dialog.locator("th")
        expect(headers.filter(has_text="Reference").first).to_be_visible()
        expect(headers.filter(has_text="Base model, ROUGE-L").first).to_be_visible()
        expect(headers.filter(has_text="Fine-tuned, ROUGE-L").first).to_be_visible()
        expect(dialog.get_by_text("Question 2 of 2")).to_be_visible()
        page.screenshot(path=str(shots / "answers_side_by_side.png"))
        page.keyboard.press("Escape")

        # hub_release opens with the same verdict; its card states the run's facts.
        _open(page, f"{base_url}/assets/hub_release")
        expect(page.get_by_text("⚪ Release gate DISABLED: it blocks nothing, this is not a pass").first).to_be_visible()
        page.locator("tr").filter(has_text="model_card").get_by_text("[Show Markdown]").click()
        card = page.get_by_role("dialog")
        expect(card.get_by_text("license: apache-2.0")).to_be_visible()  # SmolLM2's own, from its card
        expect(card.get_by_text(f"The adapter alone ({expected['adapter_size']})")).to_be_visible()
        expect(card.get_by_text("TRL and PEFT").first).to_be_visible()
        assert card.get_by_text("unsloth").count() == 0 and card.get_by_text("split: train").count() == 0
        page.screenshot(path=str(shots / "hub_release_card.png"))
        page.keyboard.press("Escape")

        # The demo-style profile turns the gate off; the check says so instead of a bare "Passed".
        _open(page, f"{base_url}/assets/rouge_report?view=checks")
        page.get_by_text("release_gate").first.click()
        expect(page.get_by_text("Release gate: DISABLED (blocks nothing)").first).to_be_visible()

        # The asset graph: groups start collapsed; expand them from the canvas's context menu.
        _open(page, f"{base_url}/asset-groups")
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        page.locator("[class*=AssetGraphExplorer_svgContainer]").first.click(button="right", position={"x": 20, "y": 20})
        page.get_by_role("menuitem", name="Expand all groups").click()
        # A long name is cut in the middle to fit the node ("benchma…_questions"): the name, or its two ends.
        def node(name):
            ends = f"{re.escape(name[:5])}.*….*{re.escape(name[-6:])}"
            return page.locator("div[class*=AssetNode_assetName]", has_text=re.compile(f"^(?:{re.escape(name)}|{ends})$")).first

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
