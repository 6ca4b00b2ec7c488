"""Run config that must not run: secrets refused before anything is stored, bad values refused before any step.

Through the real entry points: `dagster asset materialize -c FILE` with MEDCOT_PROFILE unset (docs/profiles.md's
form), `--config-json`, and the launchpad's GraphQL launch against a code server. After each, the instance's
files under DAGSTER_HOME (the SQLite run and event storage) are scanned for the secret.
"""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from medcot_pipeline.defs.run_config_checks import command_line_config_files, config_problems, secret_paths
from medcot_pipeline.settings import FormattingSettings, TrainingSettings
from medcot_pipeline_tests.conftest import REPO_ROOT
from medcot_pipeline_tests.pipeline_harness import ASSETS

HUB_TOKEN = "hf_ClinicPushToken4242abcdefXYZ"
WANDB_KEY = "wandbKEYfromTheWrongPlace0099887766"


def stored_files_holding(home: Path, secret: str) -> list[str]:
    """Every file under DAGSTER_HOME (runs.db, event logs, compute logs) whose bytes hold `secret`."""
    return [str(path) for path in home.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def dagster_cli(home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The dagster CLI as a user runs it from the repo, MEDCOT_PROFILE unset."""
    env = {key: value for key, value in os.environ.items() if key != "MEDCOT_PROFILE"}
    env["DAGSTER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "dagster", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).strip().splitlines()[-1]


def instance_at(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.local_temp(str(home))


def failed_run_and_error(home: Path, result: subprocess.CompletedProcess) -> tuple[dg.DagsterRun, str]:
    """The one run the CLI created (failed) and the RunConfigError line its output ends the run with."""
    assert result.returncode != 0
    [run] = instance_at(home).get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    output = result.stdout + result.stderr
    [line] = [line for line in output.splitlines() if line.startswith("medcot_pipeline.defs.run_config_checks.RunConfigError")]
    return run, line


@pytest.fixture
def home(tmp_path) -> Path:
    """A DAGSTER_HOME with the repo's own dagster.yaml (medcot's instance class, which refuses secrets)."""
    path = tmp_path / "dagster_home"
    path.mkdir()
    (path / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return path


@pytest.fixture
def plain_home(tmp_path) -> Path:
    """A DAGSTER_HOME whose dagster.yaml does not name medcot's instance class (a team's own instance)."""
    path = tmp_path / "plain_dagster_home"
    path.mkdir()
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return path


def run_config_file(tmp_path: Path, **sections) -> Path:
    """A run config file (a profile) writing its artifacts under tmp_path, with `sections` merged in."""
    config = {
        "ops": {"raw_dataset": {"config": {"source": "sample", "max_records": 12}}},
        "resources": {"artifacts": {"config": {"root": str(tmp_path / "artifacts")}}},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "clinic_profile.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------- units


def test_hub_and_wandb_secrets_are_not_config_fields(monkeypatch):
    """The token and the key are read from the environment where they are used; Dagster's schema has no place for them."""
    from medcot_pipeline.defs.resources import HubResource, WandbResource

    assert "token" not in HubResource.model_fields and "api_key" not in WandbResource.model_fields
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert HubResource().token == HUB_TOKEN
    assert (WandbResource().api_key, WandbResource().mode, WandbResource().env()) == (WANDB_KEY, "online", {"WANDB_API_KEY": WANDB_KEY})
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("WANDB_API_KEY", "")
    assert HubResource().token is None and WandbResource().mode == "offline"


def test_config_problems_name_secrets_anywhere_and_broken_limits():
    run_config = {
        "ops": {"lora_adapter": {"config": {"token": "x"}}},
        "resources": {"hub": {"config": {"token": "y"}}, "wandb": {"config": {"api_key": "z"}}},
        "execution": {"config": {"multiprocess": {"max_concurrent": 2}}},
    }
    assert secret_paths(run_config) == [
        ("ops", "lora_adapter", "config", "token"), ("resources", "hub", "config", "token"), ("resources", "wandb", "config", "api_key"),
    ]
    problems = config_problems(
        {},
        {"formatted_splits": {"validation_size": -3, "seed": 1}, "lora_adapter": {"lora_dropout": 1.5, "max_steps": 0}},
        {"base_model": {"max_seq_length": 8}, "artifacts": {"root": "a"}},
        {"formatted_splits": FormattingSettings, "lora_adapter": TrainingSettings},
    )
    assert problems == [
        "run config ops.formatted_splits.config.validation_size: Input should be greater than or equal to 1 (got -3)",
        "run config ops.lora_adapter.config.lora_dropout: Input should be less than 1 (got 1.5)",
        "run config ops.lora_adapter.config.max_steps: Input should be greater than or equal to 1 (got 0)",
        "run config resources.base_model.config.max_seq_length: Input should be greater than or equal to 16 (got 8)",
    ]


@pytest.mark.parametrize(
    "argv, files",
    [
        (["/venv/bin/dagster", "asset", "materialize", "-m", "m", "-c", "a.yaml", "--config", "b.yaml", "--config=c.yaml"], ("a.yaml", "b.yaml", "c.yaml")),
        (["/venv/lib/python3.11/site-packages/dagster/__main__.py", "asset", "materialize", "-c", "p.yaml"], ("p.yaml",)),
        (["/venv/bin/pytest", "-c", "pytest.ini"], ()),  # pytest's own -c is not run config
        (["-c"], ()),  # python -c "..."
    ],
)
def test_command_line_config_files_only_from_the_dagster_cli(argv, files):
    assert command_line_config_files(argv) == tuple(Path(name) for name in files)


def test_dagster_refuses_secret_keys_for_a_run_that_uses_the_hub_and_wandb():
    """The schema check every launch path runs before creating a run (what the launchpad shows as invalid config)."""
    from medcot_pipeline.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(name) for name in ASSETS})
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"resources": {"hub": {"config": {"token": HUB_TOKEN}}, "wandb": {"config": {"api_key": WANDB_KEY}}}})
    message = str(err.value)
    assert 'unexpected config entry "token" at path root:resources:hub:config' in message
    assert 'unexpected config entry "api_key" at path root:resources:wandb:config' in message


# ---------------------------------------------------------------- the dagster CLI


def test_cli_refuses_a_token_in_the_config_file_before_anything_is_stored(tmp_path, home):
    """`-c` with a Hub token, for a run that does not even use the Hub: non-zero exit, one line naming the file and the
    key, no run, and the token in no file under DAGSTER_HOME."""
    config = run_config_file(tmp_path, resources={"hub": {"config": {"token": HUB_TOKEN}}})
    result = dagster_cli(home, "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", "raw_dataset", "-c", str(config))

    assert result.returncode != 0
    assert last_line(result) == (
        f"medcot_pipeline.profiles.ProfileError: {config}: resources.hub.config.token: "
        "secrets come from the environment (HF_TOKEN), never from a profile or run config"
    )
    assert list(instance_at(home).get_runs()) == []
    assert list(home.rglob("*.db")), "the instance was never created: nothing was scanned"
    assert stored_files_holding(home, HUB_TOKEN) == []
    assert not (tmp_path / "artifacts").exists()


def test_cli_refuses_an_out_of_range_value_at_launch_naming_file_and_key(tmp_path, home):
    """`-c` alone with validation_size: -3: fails at launch with one line naming the file, key and value; raw_dataset
    (which the value does not concern) never runs."""
    config = run_config_file(tmp_path, ops={"formatted_splits": {"config": {"validation_size": -3}}})
    result = dagster_cli(home, "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", "raw_dataset,benchmark_questions,formatted_splits", "-c", str(config))

    assert result.returncode != 0
    assert last_line(result) == (
        f"medcot_pipeline.profiles.ProfileError: {config}: ops.formatted_splits.config.validation_size: "
        "Input should be greater than or equal to 1 (got -3)"
    )
    assert list(instance_at(home).get_runs()) == []
    assert not (tmp_path / "artifacts").exists()


def test_config_json_secret_is_refused_before_the_run_is_stored(tmp_path, home):
    """`--config-json` for some assets with a W&B key under a resource they do not use: Dagster's schema lets that
    through (the implicit asset job accepts config for unused resources), medcot's instance refuses it in one line
    naming the key. No run, no step, the key in no file under DAGSTER_HOME."""
    config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}},
        "resources": {"artifacts": {"config": {"root": str(tmp_path / "artifacts")}}, "wandb": {"config": {"api_key": WANDB_KEY}}},
    }
    result = dagster_cli(home, "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", "raw_dataset,benchmark_questions,formatted_splits",
                         "--config-json", json.dumps(config))

    assert result.returncode != 0
    assert last_line(result) == (
        "medcot_pipeline.defs.instance.SecretInRunConfigError: run config resources.wandb.config.api_key: secrets come "
        "from the environment (WANDB_API_KEY), never from run config; the run was refused before anything was stored"
    )
    assert list(instance_at(home).get_runs()) == []
    assert list(home.rglob("*.db")), "the instance was never created: nothing was scanned"
    assert stored_files_holding(home, WANDB_KEY) == []
    assert not (tmp_path / "artifacts").exists()


def test_config_json_with_bad_values_fails_before_the_first_step(tmp_path, home):
    """`--config-json` (no file to read at load): the executor's check fails the run before any step, in one line that
    names the key and the value."""
    config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}, "formatted_splits": {"config": {"validation_size": -3}}},
        "resources": {"artifacts": {"config": {"root": str(tmp_path / "artifacts")}}},
    }
    result = dagster_cli(home, "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", "raw_dataset,benchmark_questions,formatted_splits",
                         "--config-json", json.dumps(config))

    run, line = failed_run_and_error(home, result)
    assert line == (
        "medcot_pipeline.defs.run_config_checks.RunConfigError: run config ops.formatted_splits.config.validation_size: "
        "Input should be greater than or equal to 1 (got -3) (nothing was run)"
    )
    events = {entry.dagster_event.event_type for entry in instance_at(home).all_logs(run.run_id) if entry.dagster_event}
    assert dg.DagsterEventType.RUN_FAILURE in events
    assert dg.DagsterEventType.STEP_START not in events and dg.DagsterEventType.ASSET_MATERIALIZATION not in events
    assert not (tmp_path / "artifacts").exists()


def test_without_medcots_instance_the_executor_fails_a_secret_run_before_any_step(tmp_path, plain_home):
    """On an instance that does not name medcot's class, the run with the key is stored (Dagster's doing), and the
    executor fails it before the first step; the message says so, and `dagster run delete` (its advice) removes it."""
    home = plain_home
    config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}},
        "resources": {"artifacts": {"config": {"root": str(tmp_path / "artifacts")}}, "wandb": {"config": {"api_key": WANDB_KEY}}},
    }
    result = dagster_cli(home, "asset", "materialize", "-m", "medcot_pipeline.definitions", "--select", "raw_dataset",
                         "--config-json", json.dumps(config))

    run, line = failed_run_and_error(home, result)
    assert line == (
        "medcot_pipeline.defs.run_config_checks.RunConfigError: run config resources.wandb.config.api_key: secrets come "
        "from the environment (HF_TOKEN, WANDB_API_KEY), never from run config; it is stored with this run, so delete "
        f"the run (`dagster run delete {run.run_id}`) (nothing was run)"
    )
    assert not (tmp_path / "artifacts").exists()
    assert stored_files_holding(home, WANDB_KEY)  # the scan finds what is there

    deleted = dagster_cli(home, "run", "delete", "--force", run.run_id)
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert list(instance_at(home).get_runs()) == []
    # SQLite overwrites deleted rows only where it is built with SECURE_DELETE (Debian's is); elsewhere the bytes
    # linger in free pages until the database is vacuumed.
    if sqlite3.connect(":memory:").execute("pragma secure_delete").fetchone()[0]:
        assert stored_files_holding(home, WANDB_KEY) == []


# ---------------------------------------------------------------- the launchpad (GraphQL launch against a code server)


@pytest.fixture(scope="module")
def launchpad(tmp_path_factory):
    """The webserver's side of a launch: a workspace with the repo's code location served by its own code server."""
    from dagster_graphql.test.utils import define_out_of_process_context

    home = tmp_path_factory.mktemp("launchpad_home")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MEDCOT_PROFILE", raising=False)
        env.chdir(REPO_ROOT)
        # `dagster dev`'s default: a launched run starts at once (the test instance would queue it for a daemon),
        # and medcot's instance class, as dagster_home/dagster.yaml names it.
        instance_yaml = yaml.safe_load((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
        overrides = {
            "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
            "instance_class": instance_yaml["instance_class"],
        }
        with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
            with define_out_of_process_context(str(REPO_ROOT / "workspace.yaml"), None, instance) as context:
                yield {"home": home, "instance": instance, "context": context, "artifacts": home / "artifacts"}


def launch(launchpad, assets, run_config):
    from dagster_graphql.test.utils import materialize_assets

    result = materialize_assets(launchpad["context"], [dg.AssetKey(name) for name in assets], run_config_data=run_config)
    return result.data["launchPipelineExecution"]


def test_launchpad_refuses_secrets_before_a_run_exists(launchpad):
    run_config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}},
        "resources": {"artifacts": {"config": {"root": str(launchpad["artifacts"])}},
                      "hub": {"config": {"token": HUB_TOKEN}}, "wandb": {"config": {"api_key": WANDB_KEY}}},
    }
    outcome = launch(launchpad, ASSETS, run_config)

    assert outcome["__typename"] == "RunConfigValidationInvalid"
    messages = [error["message"] for error in outcome["errors"]]
    assert any('unexpected config entry "token" at path root:resources:hub:config' in m for m in messages), messages
    assert any('unexpected config entry "api_key" at path root:resources:wandb:config' in m for m in messages), messages
    assert launchpad["instance"].get_runs() == []
    for secret in (HUB_TOKEN, WANDB_KEY):
        assert stored_files_holding(launchpad["home"], secret) == []


def test_launchpad_refuses_a_secret_in_config_the_selected_assets_do_not_check(launchpad):
    """One asset selected, the Hub token under a resource it does not use and an op outside the selection: Dagster's
    schema accepts both for the implicit asset job, medcot's instance refuses the launch and nothing is stored."""
    run_config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}, "hub_release": {"config": {"token": HUB_TOKEN}}},
        "resources": {"artifacts": {"config": {"root": str(launchpad["artifacts"])}}, "hub_mirror": {"config": {"token": HUB_TOKEN}}},
    }
    dg.validate_run_config(_implicit_subset(["raw_dataset"]), run_config)  # Dagster's schema accepts it

    outcome = launch(launchpad, ["raw_dataset"], run_config)

    assert outcome["__typename"] == "PythonError", outcome
    assert outcome["message"].strip().endswith(
        "run config ops.hub_release.config.token, resources.hub_mirror.config.token: secrets come from the environment "
        "(HF_TOKEN), never from run config; the run was refused before anything was stored"
    ), outcome["message"]
    assert launchpad["instance"].get_runs() == []
    assert stored_files_holding(launchpad["home"], HUB_TOKEN) == []
    assert not launchpad["artifacts"].exists()


def _implicit_subset(assets):
    from medcot_pipeline.definitions import defs

    return defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(name) for name in assets})


def test_launchpad_run_with_a_bad_value_fails_before_any_step(launchpad):
    """The launchpad knows nothing of pydantic's limits: the run starts, and the executor's check fails it at once."""
    run_config = {
        "ops": {"raw_dataset": {"config": {"source": "sample"}}, "formatted_splits": {"config": {"validation_size": -3}}},
        "resources": {"artifacts": {"config": {"root": str(launchpad["artifacts"])}}},
    }
    outcome = launch(launchpad, ["raw_dataset", "benchmark_questions", "formatted_splits"], run_config)
    assert outcome["__typename"] == "LaunchRunSuccess", outcome
    run_id = outcome["run"]["runId"]

    instance = launchpad["instance"]
    deadline = time.monotonic() + 300
    while not instance.get_run_by_id(run_id).is_finished:
        assert time.monotonic() < deadline, (
            f"the launched run did not finish in 5 minutes: {instance.get_run_by_id(run_id).status}, "
            f"{[entry.user_message for entry in instance.all_logs(run_id)][-5:]}"
        )
        time.sleep(1)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    logs = instance.all_logs(run_id)
    [failure] = [entry for entry in logs if entry.dagster_event and entry.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE]
    error = failure.dagster_event.event_specific_data.error
    assert error.cls_name == "RunConfigError"
    assert error.message.strip() == (
        "medcot_pipeline.defs.run_config_checks.RunConfigError: run config ops.formatted_splits.config.validation_size: "
        "Input should be greater than or equal to 1 (got -3) (nothing was run)"
    )
    assert not any(entry.dagster_event and entry.dagster_event.event_type == dg.DagsterEventType.STEP_START for entry in logs)
    assert not launchpad["artifacts"].exists()
