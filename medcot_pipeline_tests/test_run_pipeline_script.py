"""scripts/run-pipeline.sh's wait (scripts/wait_for_run.py): a daemon counts as running only with a recent heartbeat,
and a run left queued with no daemon to take it is reported (exit 3, and the script starts a daemon), never waited on
forever."""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat

from medcot_pipeline_tests.conftest import REPO_ROOT

WAIT_SCRIPT = REPO_ROOT / "scripts" / "wait_for_run.py"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def beat(instance: dg.DagsterInstance, seconds_ago: float) -> None:
    """Heartbeats of every daemon the instance needs, as a `dagster dev` that stopped `seconds_ago` left them."""
    for daemon_type in instance.get_required_daemon_types():
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - seconds_ago, daemon_type, "stopped-dagster-dev", errors=[]))


def run_in(home, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_daemon_stopped_minutes_ago_is_not_taken_for_a_running_one(home):
    """The issue's case: dagster dev stopped 5 minutes ago. Dagster's own liveness check still says "Daemon live" (it
    accepts a heartbeat 30 minutes old), so run-pipeline.sh started no daemon and the queued run waited forever."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        beat(instance, seconds_ago=300)
    daemon_cli = os.path.join(os.path.dirname(sys.executable), "dagster-daemon")
    assert run_in(home, daemon_cli, "liveness-check").returncode == 0  # what the script trusted before
    assert run_in(home, sys.executable, str(WAIT_SCRIPT), "--daemon-is-live").returncode == 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        beat(instance, seconds_ago=10)  # a daemon that is running now
    assert run_in(home, sys.executable, str(WAIT_SCRIPT), "--daemon-is-live").returncode == 0


def test_a_run_queued_with_no_daemon_to_take_it_is_reported(home, monkeypatch, capsys):
    """`dagster job launch` as run-pipeline.sh runs it, after dagster dev stopped: the run sits QUEUED; the wait says so
    and exits 3 (the script then starts a daemon) instead of polling forever."""
    spec = importlib.util.spec_from_file_location("wait_for_run", WAIT_SCRIPT)
    wait_for_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wait_for_run)
    monkeypatch.setattr(wait_for_run, "QUEUED_WITHOUT_DAEMON_SECONDS", 1)
    monkeypatch.setattr(wait_for_run, "POLL_SECONDS", 0.2)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        beat(instance, seconds_ago=300)
    dagster_cli = os.path.join(os.path.dirname(sys.executable), "dagster")
    run_id = str(uuid.uuid4())
    launched = subprocess.run(
        [dagster_cli, "job", "launch", "-j", "medcot_pipeline", "-c", "profiles/demo.yaml", "--run-id", run_id],
        cwd=REPO_ROOT, env={**os.environ, "DAGSTER_HOME": str(home), "MEDCOT_PROFILE": "profiles/demo.yaml"},
        capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.QUEUED
        assert wait_for_run.wait(instance, run_id, home / "run.log") == 3
    assert f"run {run_id} is queued and no Dagster daemon has sent a heartbeat in the last 90 s" in capsys.readouterr().err
