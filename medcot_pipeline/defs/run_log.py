"""A run's log as a person follows it in a terminal (scripts/run-pipeline.sh): medcot's own lines, each asset
step's start and end with its time, each check's result, and every warning and error, one line each. Every event,
Dagster's DEBUG ones included, goes to a file as well, and the UI keeps them all.

It reads the run's event log, which is what the UI shows, not the processes' output: tqdm bars, W&B banners and
library warnings stay in each step's captured stdout/stderr (in the UI) and in the daemon's log file.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

import dagster as dg

from medcot_pipeline.presentation.text import clock

STEP_WIDTH = len("formatted_splits")  # the longest asset name: the step column lines up
DagsterEventType = dg.DagsterEventType
LIFECYCLE = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_UP_FOR_RETRY,
    DagsterEventType.STEP_RESTARTED,
    DagsterEventType.ASSET_CHECK_EVALUATION,
    DagsterEventType.RUN_START,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
}


def took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _cause(text: str | None) -> str:
    """An error's first line as a person reads it: a dg.Failure's own words, another error's class without its module."""
    line = _first_line(text)
    line = re.sub(r"^dagster\.[\w.]*\.Failure: ", "", line)
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", line)


class RunLogFollower:
    """Follows one run's event log from where it last read: `poll` prints the new lines worth a person's attention
    to `terminal` and appends every event to `log_file`."""

    def __init__(self, run_id: str, terminal: TextIO, log_file: Path):
        self.run_id = run_id
        self.terminal = terminal
        self.log_file = Path(log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.cursor: str | None = None
        self.asset_steps: set[str] = set()  # steps that materialize an asset (the others run checks)
        self.started: dict[str, float] = {}
        self.passed: dict[str, list[tuple[str, str]]] = {}  # check step -> (check, asset) that passed, not yet said

    def poll(self, instance: dg.DagsterInstance) -> None:
        while True:
            connection = instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=500)
            self.cursor = connection.cursor
            with open(self.log_file, "a", encoding="utf-8") as full:
                for record in connection.records:
                    entry = record.event_log_entry
                    full.write(self.full_line(entry))
                    line = self.line(entry)
                    if line is not None:
                        self.terminal.write(line + "\n")
            self.terminal.flush()
            if not connection.has_more:
                return

    @staticmethod
    def full_line(entry) -> str:
        """Every event as Dagster's console logger writes it, and a failure's whole error."""
        when = datetime.fromtimestamp(entry.timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        kind = entry.dagster_event.event_type_value if entry.is_dagster_event else "LOG"
        message = entry.user_message or (entry.dagster_event.message if entry.is_dagster_event else "") or ""
        text = f"{when} - {logging.getLevelName(entry.level)} - {entry.step_key or '-'} - {kind} - {message}\n"
        error = getattr(entry.dagster_event.event_specific_data, "error", None) if entry.is_dagster_event else None
        return text + (error.to_string() if error is not None else "")

    def _say(self, entry, step: str | None, text: str) -> str:
        when = datetime.fromtimestamp(entry.timestamp).strftime("%H:%M:%S")
        lines = text.strip().splitlines() or [""]
        indent = " " * (len(when) + STEP_WIDTH + 4)
        return "\n".join([f"{when}  {(step or 'run'):<{STEP_WIDTH}}  {lines[0]}", *(indent + line for line in lines[1:])])

    def _passed_checks(self, entry, step: str) -> str | None:
        passed = self.passed.pop(step, [])
        if not passed:
            return None
        names = sorted({name for name, _ in passed})
        if len(passed) == 1:
            return self._say(entry, passed[0][1], f"check {names[0]}: passed")
        return self._say(entry, None, f"check {', '.join(names)}: passed on {len(passed)} assets")

    def line(self, entry) -> str | None:
        """The terminal's line for one event, or None for what only the file and the UI keep."""
        if not entry.is_dagster_event:
            message = entry.user_message or ""
            # Pipes announces itself at INFO; medcot's own training lines follow it.
            if entry.level < 20 or (entry.level < 30 and message.startswith("[pipes]")):
                return None
            prefix = "error: " if entry.level >= 40 else "warning: " if entry.level >= 30 else ""
            return self._say(entry, entry.step_key, prefix + message)
        event = entry.dagster_event
        kind, step = event.event_type, entry.step_key
        if kind == DagsterEventType.ASSET_MATERIALIZATION_PLANNED and step:
            self.asset_steps.add(step)
            return None
        if kind not in LIFECYCLE:
            if entry.level >= 30:  # an engine error, a step worker that died: whatever Dagster flags
                return self._say(entry, step, ("error: " if entry.level >= 40 else "warning: ") + _first_line(event.message))
            return None
        if kind == DagsterEventType.RUN_START:
            return self._say(entry, None, f"started: job {event.job_name}")
        if kind in (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED):
            return self._say(entry, None, _first_line(event.message))
        if kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            asset = evaluation.asset_key.to_user_string()
            if evaluation.passed:  # said when the check's step ends: one line for a check of many assets
                self.passed.setdefault(step, []).append((evaluation.check_name, asset))
                return None
            status = evaluation.metadata.get("status")
            if status is not None and status.value == "disabled":  # a gate turned off: neither a pass nor a failure
                return self._say(entry, asset, f"check {evaluation.check_name}: DISABLED, blocks nothing (not a pass)")
            severity = evaluation.severity.value.lower()
            detail = f": {evaluation.description}" if evaluation.description else ""
            return self._say(entry, asset, f"check {evaluation.check_name}: FAILED ({severity}){detail}")
        if step not in self.asset_steps and kind == DagsterEventType.STEP_START:
            return None  # a check's step: its evaluations are its line
        if step not in self.asset_steps and kind == DagsterEventType.STEP_SUCCESS:
            return self._passed_checks(entry, step)
        if kind == DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
            return self._say(entry, step, "started")
        if kind == DagsterEventType.STEP_SUCCESS:
            return self._say(entry, step, f"done in {took(event.event_specific_data.duration_ms / 1000)}")
        if kind == DagsterEventType.STEP_RESTARTED:
            return self._say(entry, step, "restarted")
        error = getattr(event.event_specific_data, "error", None)
        cause = _cause(error.message if error is not None else event.message)
        if kind == DagsterEventType.STEP_UP_FOR_RETRY:
            return self._say(entry, step, f"failed, will retry: {cause}")
        elapsed = f" after {took(entry.timestamp - self.started[step])}" if step in self.started else ""
        return self._say(entry, step, f"FAILED{elapsed}: {cause}\n(the whole error: {self.log_file})")


def follow_run(
    instance: dg.DagsterInstance,
    run_id: str,
    terminal: TextIO,
    log_file: Path,
    interval: float = 1.0,
    give_up: Callable[[dg.DagsterRun], bool] | None = None,
) -> dg.DagsterRun | None:
    """Print the run's lines as they come until it ends; return the run (None if there is no such run).

    `give_up(run)`, asked at each poll of an unfinished run, stops the wait early: the run is returned unfinished.
    """
    follower = RunLogFollower(run_id, terminal, log_file)
    while True:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return None
        follower.poll(instance)
        if run.is_finished:
            follower.poll(instance)  # the events written as it finished
            return run
        if give_up is not None and give_up(run):
            return run
        time.sleep(interval)
