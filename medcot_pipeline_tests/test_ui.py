"""The UI as a person uses it: dagster dev, the asset graph in headless Chromium, a launch from the page."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from medcot_pipeline.defs.profiles import DEFAULT_PROFILE
from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import ASSETS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EDGES = 8  # raw->formatted, formatted->{adapter, report}, adapter->{merged, release}, merged->{report, release}, report->release


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
def dagster_dev(tmp_path, smollm2_dir):
    """`dagster dev` on a free port, a temp DAGSTER_HOME, and the demo profile writing under tmp_path."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    artifacts = tmp_path / "artifacts"
    # Reuse the session's converted SmolLM2 rather than converting the GGUF again.
    (artifacts / "base_models").mkdir(parents=True)
    (artifacts / "base_models" / "smollm2-135m-instruct").symlink_to(smollm2_dir)
    profile = yaml.safe_load(DEFAULT_PROFILE.read_text())
    profile["resources"]["artifacts"]["config"]["root"] = str(artifacts)
    profile_path = tmp_path / "demo.yaml"
    profile_path.write_text(yaml.safe_dump(profile))

    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDCOT_PROFILE": str(profile_path), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "medcot_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", timeout=120)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_asset_graph_and_a_launch_from_the_ui(dagster_dev):
    from playwright.sync_api import expect, sync_playwright

    base_url, tmp_path = dagster_dev
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{base_url}/asset-groups", wait_until="networkidle")
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        page.wait_for_timeout(2000)
        skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
        if skip.count():
            skip.click()

        # Groups start collapsed; expand them as a person would, from the canvas's context menu.
        page.locator("[class*=AssetGraphExplorer_svgContainer]").first.click(button="right", position={"x": 20, "y": 20})
        page.get_by_role("menuitem", name="Expand all groups").click()
        node = lambda name: page.locator("div[class*=AssetNode_assetName]", has_text=name).first  # noqa: E731
        for asset in ASSETS:
            expect(node(asset)).to_be_visible()
        edges = page.locator("[class*=AssetGraphExplorer_svgContainer] path[stroke='var(--color-lineage-edge)']")
        expect(edges).to_have_count(EDGES)
        page.screenshot(path=str(tmp_path / "asset_graph.png"))

        node("raw_dataset").click()
        node("formatted_splits").click(modifiers=["Shift"])
        page.get_by_role("button", name="Materialize selected (2)").click()
        expect(page.get_by_text("Launched run")).to_be_visible()

        # The runs page polls the server itself; "networkidle" never comes on a busy machine, so wait for text.
        page.goto(f"{base_url}/runs", wait_until="domcontentloaded")
        deadline = time.time() + 600
        while time.time() < deadline:
            if page.get_by_text("Failure", exact=True).count():
                pytest.fail(f"the run failed; see {tmp_path / 'dagster_dev.log'}")
            if page.get_by_text("Success", exact=True).count():
                break
            page.wait_for_timeout(5000)
        else:
            pytest.fail("the run launched from the UI did not finish in 10 minutes")
        page.screenshot(path=str(tmp_path / "runs.png"))
        browser.close()

    assert list((tmp_path / "artifacts" / "formatted_splits").glob("*/train.parquet"))
    screenshots = REPO_ROOT / "artifacts" / "ui"
    screenshots.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "asset_graph.png", screenshots / "asset_graph.png")
    shutil.copy(tmp_path / "runs.png", screenshots / "runs.png")
