"""The terminal's view of a run (defs/run_log.py, what scripts/run-pipeline.sh prints): the steps' own lines, each
asset step's start and end with its time, each check, warnings and failures in one line; every event in the file."""

import io
import re

import dagster as dg

from medcot_pipeline.defs.run_log import follow_run


@dg.asset
def cleaned(context: dg.AssetExecutionContext) -> int:
    context.log.debug("a detail only the file keeps")
    context.log.info("cleaned 40 records")
    return 40


@dg.asset
def trained(context: dg.AssetExecutionContext, cleaned: int) -> int:
    context.log.warning("no GPU: training on the CPU")
    return cleaned


@dg.asset_check(asset=trained)
def trained_is_positive(trained: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=trained > 0)


@dg.multi_asset_check(specs=[dg.AssetCheckSpec("recorded", asset=cleaned), dg.AssetCheckSpec("recorded", asset=trained)])
def recorded(context):
    for key in context.selected_asset_check_keys:
        yield dg.AssetCheckResult(asset_key=key.asset_key, check_name="recorded", passed=key.asset_key == cleaned.key,
                                  severity=dg.AssetCheckSeverity.WARN, description="trained.rows 40 -> 20")


@dg.asset_check(asset=trained)
def gate(trained: int) -> dg.AssetCheckResult:
    """As the release_gate check answers when the profile turns the gate off."""
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={"status": "disabled"})


@dg.asset
def released(trained: int) -> None:
    raise dg.Failure("HF_HUB_OFFLINE is set: nothing can be pushed\nsecond line of the error")


def test_the_terminal_shows_progress_and_the_file_keeps_every_event(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([cleaned, trained, trained_is_positive, recorded, gate, released], instance=instance, raise_on_error=False)
    assert not result.success
    terminal, log_file = io.StringIO(), tmp_path / "logs" / "run.log"
    run = follow_run(instance, result.run_id, terminal, log_file)
    assert run.status == dg.DagsterRunStatus.FAILURE

    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in terminal.getvalue().splitlines()]
    steps = [line.split()[0] for line in lines]
    assert lines[0].split() == ["run", "started:", "job", "__ephemeral_asset_job__"]
    assert "cleaned           cleaned 40 records" in lines
    assert "trained           warning: no GPU: training on the CPU" in lines
    assert "trained           check trained_is_positive: passed" in lines
    # A check of several assets: a failure in a line of its own, with what it found; what passed, said once.
    assert "trained           check recorded: FAILED (warn): trained.rows 40 -> 20" in lines
    assert "cleaned           check recorded: passed" in lines
    # A gate turned off reads as neither a pass nor a failure.
    assert "trained           check gate: DISABLED, blocks nothing (not a pass)" in lines
    assert any(re.fullmatch(r"cleaned +done in \d+\.\d s", line) for line in lines)
    failure = next(line for line in lines if line.startswith("released          FAILED"))
    assert re.fullmatch(r"released +FAILED after \d+\.\d s: HF_HUB_OFFLINE is set: nothing can be pushed", failure)
    assert f"(the whole error: {log_file})" in terminal.getvalue()
    # One line a step start and end; nothing of Dagster's DEBUG events, nor a check step's own start.
    assert steps.count("cleaned") == 4 and "a detail only the file keeps" not in terminal.getvalue()  # info, start, end, check
    assert not any(kind in terminal.getvalue() for kind in ("LOADED_INPUT", "STEP_OUTPUT", "HANDLED_OUTPUT", "DEBUG"))

    every = log_file.read_text()
    assert "a detail only the file keeps" in every and " - DEBUG - cleaned - LOADED_INPUT" not in every  # no input
    assert " - DEBUG - trained - LOADED_INPUT - " in every and "second line of the error" in every
