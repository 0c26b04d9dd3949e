"""A terminal that stays readable, by real processes on a pseudo-terminal: log lines below warning go
to the log file (or are counted by the display), the display names the run's step, and the end
prints a summary whose figures are those of `status --json`."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox
from tests.conftest import MODEL, PROMPTS, Cli
from tests.terminal import Terminal, assert_summary_is_the_status, logged, summary, tally_lines

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


def on_a_terminal(cli: Cli, *args: str, stdout_too: bool = False) -> Terminal:
    return Terminal(cli.command(*args), cli.tmp_path, cli.env, stdout_too)


def test_with_a_log_file_the_file_has_every_line_and_the_terminal_only_warnings(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=503, times=2))
    code, out, lines = on_a_terminal(cli, *cli.start_args("filed", "--log-file", "run.log")).finish()
    assert code == 0 and out.splitlines()[0] == "filed"
    written = [json.loads(line) for line in (cli.tmp_path / "run.log").read_text().splitlines()]
    events = {e["event"] for e in written}
    assert {"run_created", "run_transitioned", "effect_done", "request_retry"} <= events
    assert all(e.get("run_id") == "filed" for e in written if e["event"] == "effect_done")
    shown = logged(lines)
    assert {level for level, _ in shown} <= {"warning", "error"}
    assert [event for _, event in shown].count("request_retry") == 2
    final = tally_lines(lines)[-1]
    assert f"lines in {cli.tmp_path / 'run.log'}" in final and "retries 2, last: " in final


def test_without_a_log_file_lines_below_warning_are_counted_not_shown(cli: Cli) -> None:
    code, _, lines = on_a_terminal(cli, *cli.start_args("counted")).finish()
    assert code == 0
    assert not [event for _, event in logged(lines) if event in ("effect_done", "run_transitioned")]
    assert "lines not shown (--log-file FILE keeps them), last: " in tally_lines(lines)[-1]


def test_the_display_names_the_step_the_run_is_in(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="hold"))
    shown = on_a_terminal(cli, *cli.start_args("stepped"))
    n = len(PROMPTS)
    shown.read_until(lambda lines: f"run stepped  generating and judging 0/{n}" in _run_lines(lines))
    sandbox.clear_faults()  # lets the answers go; the additions are held from now on
    sandbox.add_fault(FaultRule(route="add_to_dataset", kind="hold"))
    shown.read_until(lambda lines: f"run stepped  adding to the dataset 0/{n}" in _run_lines(lines))
    sandbox.clear_faults()
    code, _, lines = shown.finish()
    assert code == 0
    assert _run_lines(lines)[-1] == "run stepped  LAUNCHED: the fine-tuning job is launched"
    assert not any("CREATED" in line for line in _run_lines(lines))


def _run_lines(lines: list[str]) -> list[str]:
    """The display's run lines, the time in the step left out."""
    return [re.sub(r"  \(\S+\)$", "", line) for line in lines if line.startswith("run stepped  ")]


def test_the_summary_on_a_terminal_has_the_figures_of_status_json(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, match="message 4"))
    code, _, lines = on_a_terminal(cli, *cli.start_args("summed"), stdout_too=True).finish()
    assert code == 0
    ended = next(n for n, line in enumerate(lines) if line.startswith("run summed: LAUNCHED job "))
    said = summary(lines[ended:])
    status = json.loads(cli.run("status", "--json", "summed").stdout)
    assert status["items"]["GEN_FAILED"] == 1 and status["items"]["JUDGE_FAILED"] == 1
    assert_summary_is_the_status(said, status)
    assert said["report"] == shlex.join(["cftrunner", "report", "summed", "--db",
                                         cli.env["CFTRUNNER_DB"]])
    report = cli.run(*shlex.split(said["report"])[1:])
    assert report.returncode == 0 and "summed" in report.stdout


def test_off_a_terminal_the_summary_follows_progress_and_is_absent_otherwise(cli: Cli) -> None:
    piped = cli.run(*cli.start_args("piped"))
    assert piped.returncode == 0 and piped.stdout.splitlines()[-1].startswith("run piped: LAUNCHED")
    forced = cli.run(*cli.start_args("forced", "--progress"))
    lines = forced.stdout.splitlines()
    assert forced.returncode == 0 and lines[:2] == ["forced", lines[1]]
    assert lines[1].startswith("run forced: LAUNCHED job ")
    assert_summary_is_the_status(summary(lines), json.loads(
        cli.run("status", "--json", "forced").stdout))


def test_resume_ends_with_the_summary_of_the_run_it_drove_and_only_of_that(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path) -> None:
    # Every addition queued for a correction that takes far longer than the first run waits: it
    # stops however late its looks come on a busy host.
    cli = Cli(make_sandbox(processing_seconds=1.5, add_threshold=1.01), db_url, tmp_path)
    stopped = cli.run(*cli.start_args("later"), env={"CFTRUNNER_PROCESSING_TIMEOUT": "0.01"})
    assert stopped.returncode == 3 and summary(stopped.stdout.splitlines()) == {}, stopped.stderr
    resumed = cli.run("resume", "later", "--progress")
    lines = resumed.stdout.splitlines()
    assert resumed.returncode == 0 and lines[0].startswith("run later: LAUNCHED job "), resumed.stderr
    assert_summary_is_the_status(summary(lines), json.loads(
        cli.run("status", "--json", "later").stdout))
    again = cli.run("resume", "later", "--progress")  # a finished run is shown, not driven
    assert again.returncode == 0 and again.stdout.splitlines() == [lines[0]]


def test_tick_ends_with_the_summary_of_the_run_it_started(cli: Cli) -> None:
    ticked = cli.run("tick", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL,
                     "--prompts", str(cli.prompts), "--progress")
    lines = ticked.stdout.splitlines()
    assert ticked.returncode == 0 and lines[1] == f"run {lines[0]}: {lines[1].split(': ', 1)[1]}"
    assert_summary_is_the_status(summary(lines), json.loads(
        cli.run("status", "--json", lines[0]).stdout))
    idle = cli.run("tick", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL,
                   "--prompts", str(cli.prompts), "--progress")
    assert idle.stdout.startswith("nothing to do: ") and len(idle.stdout.splitlines()) == 1
