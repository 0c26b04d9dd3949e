"""The judge, the gate and `show` through the command line, as users and cron run them."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.store import Store
from tests.acceptance import test_tick
from tests.acceptance.test_tick import Cron
from tests.conftest import Cli

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron  # the same fixture: a sandbox and a config file for `tick`


def _run_id(stdout: str) -> str:
    return stdout.splitlines()[0]


def test_a_tick_whose_gate_says_no_ends_skipped_and_the_next_tick_waits(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron({"interval": '"1h"'}, tail="[gate]\nmin_traces = 1000\n")
    first = cron.tick()
    assert first.returncode == 0, first.stderr
    run_id = _run_id(first.stdout)
    assert f"run {run_id}: SKIPPED: " in first.stdout
    assert "traces added, fewer than the 1000 required" in first.stdout
    [run] = cron.runs()
    assert run["state"] == "SKIPPED" and run["gate"]["passed"] is False
    counts = cron.sandbox.counts()
    assert (counts["snapshots"], counts["jobs"]) == (0, 0)

    again = cron.tick()
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing to do: the last cycle {run_id} SKIPPED")
    assert len(cron.runs()) == 1


def test_resuming_a_skipped_run_shows_it_and_exits_0(cli: Cli, sandbox: Sandbox) -> None:
    started = cli.run(*cli.start_args("gated"), env={"CFTRUNNER_TOKEN_BUDGET": "300"})
    assert started.returncode == 0, started.stderr
    assert "run gated: SKIPPED: the token budget of 300 ran out" in started.stdout
    before = sandbox.counts()["requests"]
    again = cli.run("resume", "gated")
    assert again.returncode == 0 and "SKIPPED" in again.stdout
    assert sandbox.counts()["requests"] == before


def test_a_judge_prompt_file_from_the_config_is_what_the_judge_sees(
        cli: Cli, sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "judge.txt").write_text("Grade {answer} (asked: {prompt}). Only JSON.")
    (tmp_path / "cftrunner.toml").write_text('judge_prompt = "judge.txt"\n')
    started = cli.run(*cli.start_args("templated"))
    assert started.returncode == 0, started.stderr
    shown = json.loads(cli.run("show", "templated", "0", "--json").stdout)
    [judged] = [c for c in shown["completions"] if c["kind"] == "judge"]
    assert judged["request"]["messages"][0]["content"] == (
        f"Grade {shown['answer']} (asked: {shown['prompt']}). Only JSON.")


def test_a_judge_prompt_without_placeholders_is_refused_before_anything_is_stored(
        cli: Cli, sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "judge.txt").write_text("Grade the answer.")
    result = cli.run(*cli.start_args("bad-template", "--judge-prompt", "judge.txt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "lacks the {prompt} and {answer} placeholders")
    assert not any(sandbox.counts()["requests"].values())
    assert cli.run("status", "bad-template").returncode == 2


def test_show_prints_what_the_judge_saw_and_said_for_each_attempt(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, match="message 1",
                                times=1))
    assert cli.run(*cli.start_args("audited")).returncode == 0
    shown = cli.run("show", "audited", "1")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "run audited, item 1: ADDED" in text
    assert "== judge attempt 1: malformed" in text and "== judge attempt 2: ok" in text
    assert "-- judge answer:" in text and '"response_format"' in text
    data = json.loads(cli.run("show", "audited", "1", "--json").stdout)
    judged = [c for c in data["completions"] if c["kind"] == "judge"]
    assert [c["outcome"] for c in judged] == ["malformed", "ok"]
    assert judged[1]["answer"] and json.loads(judged[1]["answer"])["score"] == data["score"]
    assert "sandbox-key" not in text and "sandbox-key" not in json.dumps(data)


def test_show_of_an_item_that_does_not_exist_is_one_line_and_exit_2(cli: Cli) -> None:
    assert cli.run(*cli.start_args("small")).returncode == 0
    result = cli.run("show", "small", "99")
    assert result.returncode == 2
    assert result.stderr.strip() == ("cftrunner: error: run small has no item 99 (items are numbered from 0, "
                                     "as in the logs)")
    assert cli.run("show", "nope", "0").returncode == 2


def test_a_kill_between_the_judge_answer_and_its_storing_asks_again_and_keeps_one_record(
        cli: Cli, sandbox: Sandbox, db_url: str) -> None:
    """The answer a crash lost was never stored, so it is neither scored nor counted: the
    judge is asked again on resume, and the audit trail holds what was stored."""
    killed = cli.run(*cli.start_args("crashy"), env={
        crashpoints.ENV: "judge.after_answer", "CFTRUNNER_CONCURRENCY": "1"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli.run("resume", "crashy")
    assert resumed.returncode == 0, resumed.stderr
    store = Store(db_url)
    try:
        items = store.items("crashy")
        rows = [c for i in items for c in store.completions(i.id) if c.kind == "judge"]
        assert len(rows) == len(items) and {c.outcome for c in rows} == {"ok"}
        assert sandbox.counts()["chat"]["judge"] == len(items) + 1
    finally:
        store.close()
