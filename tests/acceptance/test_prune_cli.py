"""`cftrunner prune` as real processes: its lines, a dry run, a no-op when repeated, bad input,
a SIGKILL between and inside the runs it deletes, and cycles that go on after a prune without
taking old prompts as new or losing the model they promoted."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.store import Store
from cftrunner.store.schema import prompt_uses
from tests.acceptance import test_prompt_source as source
from tests.acceptance.test_loop_cli import _tick_until
from tests.acceptance.test_ownership import one_error_line
from tests.acceptance.test_tick import Cron
from tests.conftest import Cli, Harness, write_prompts
from tests.integration.test_prune import (
    age,
    broken_keys,
    drive,
    every_row,
    rows_by_run,
    without,
)

pytestmark = pytest.mark.slow

make_cron = source.make_cron
KILLED = -signal.SIGKILL


def _prune(cli: Cli, *args: str, expected: int = 0, env: dict[str, str] | None = None,
           config: Cron | None = None) -> Any:
    where = ("--config", str(config.config)) if config is not None else ()
    result = cli.run("prune", *args, *where, env=env)
    assert result.returncode == expected, result.stdout + result.stderr
    return result


def _old_runs(harness: Harness, db_url: str, count: int) -> list[str]:
    """`count` runs of cycle c, ended 40 days ago, oldest first; the last is the cycle's latest."""
    ids = [drive(harness, "c", [f"Where is parcel {n}-{i}?" for i in range(2)])
           for n in range(count)]
    for n, run_id in enumerate(ids):
        age(db_url, run_id, ended=40 - n / 100)
    return ids


def test_prune_prints_a_line_per_run_and_a_total_and_then_has_nothing_to_do(
        cli: Cli, harness: Harness, db_url: str) -> None:
    first, second, latest = _old_runs(harness, db_url, 3)
    before = rows_by_run(db_url)

    dry = _prune(cli, "--older-than", "30d", "--dry-run")
    assert dry.stdout.splitlines() == [
        f"would prune {first}: LAUNCHED, ended 40d00h ago, 2 item(s), cycle c",
        f"would prune {second}: LAUNCHED, ended 39d23h ago, 2 item(s), cycle c",
        "would prune 2 run(s), 4 item(s); nothing deleted (--dry-run); kept 1 finished run(s) "
        "older than 30d: the latest finished run of each cycle (and its latest that did not "
        "fail), which its next run reads to choose its model and when it is due"]
    assert rows_by_run(db_url) == before

    done = _prune(cli, "--older-than", "30d")
    assert done.stdout.splitlines()[:2] == [
        f"pruned {first}: LAUNCHED, ended 40d00h ago, 2 item(s), cycle c",
        f"pruned {second}: LAUNCHED, ended 39d23h ago, 2 item(s), cycle c"]
    assert done.stdout.splitlines()[2].startswith("pruned 2 run(s), 4 item(s); kept 1 ")
    assert set(rows_by_run(db_url)["runs"]) == {latest}

    again = _prune(cli, "--older-than", "30d")
    assert again.stdout.splitlines() == [
        "nothing to prune: the only finished run(s) older than 30d are kept: the latest "
        "finished run of each cycle (and its latest that did not fail), which its next run "
        "reads to choose its model and when it is due"]
    assert _prune(cli, "--older-than", "90d").stdout.splitlines() == [
        "nothing to prune: no finished run ended more than 90d ago"]


@pytest.mark.parametrize(("args", "line"), [
    (("--older-than", "a month"), "cftrunner: error: Invalid value for '--older-than': "
                                  "'a month' is not a duration: \"30d\", \"12h\", \"90m\", \"45s\" "
                                  "or a number of seconds"),
    (("--older-than", "30d", "--state", "done"), "cftrunner: error: --state 'done' is not a run "
     "state: one of LAUNCHED, TRAINED, TRAIN_FAILED, PROMOTED, NOT_PROMOTED, FAILED, SKIPPED, "
     "CANCELLED"),
    (("--older-than", "30d", "--state", "judged"), "cftrunner: error: --state JUDGED: a JUDGED "
     "run is not finished, and only finished runs are pruned: one of LAUNCHED, TRAINED, "
     "TRAIN_FAILED, PROMOTED, NOT_PROMOTED, FAILED, SKIPPED, CANCELLED"),
    ((), "cftrunner: error: Missing option '--older-than'."),
])
def test_bad_input_is_one_line_exit_2_and_deletes_nothing(
        cli: Cli, harness: Harness, db_url: str, args: tuple[str, ...], line: str) -> None:
    _old_runs(harness, db_url, 2)
    before = rows_by_run(db_url)
    refused = _prune(cli, *args, expected=2)
    assert one_error_line(refused.stderr) == line
    assert refused.stdout == ""
    assert rows_by_run(db_url) == before


@pytest.mark.parametrize("point", crashpoints.PRUNE_POINTS)
def test_a_kill_mid_prune_leaves_every_run_whole_or_gone(
        cli: Cli, harness: Harness, db_url: str, point: str) -> None:
    ids = _old_runs(harness, db_url, 4)
    before = rows_by_run(db_url)
    _prune(cli, "--older-than", "30d", expected=KILLED, env={crashpoints.ENV: f"{point}:2"})
    # Killed on the second run: inside its transaction, it is still whole; after its commit, gone.
    gone = ids[:1] if point == "prune.before_commit" else ids[:2]
    assert rows_by_run(db_url) == without(before, gone)
    assert broken_keys(db_url) == []

    rest = _prune(cli, "--older-than", "30d")
    assert [line.split(":")[0] for line in rest.stdout.splitlines()[:-1]] == [
        f"pruned {run_id}" for run_id in ids[len(gone):3]]
    assert set(rows_by_run(db_url)["runs"]) == {ids[3]}
    assert _prune(cli, "--older-than", "30d").stdout.startswith("nothing to prune")


def _finish(cron: Cron, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Tick until the cycle's latest run has decided on its model (PROMOTED or NOT_PROMOTED)."""
    for _ in range(10):
        source.tick(cron, env=env)
        latest = cron.runs()[0]
        if latest["state"] in ("PROMOTED", "NOT_PROMOTED"):
            return latest
    raise AssertionError(f"still {cron.runs()[0]['state']} after 10 ticks")


def test_after_a_prune_tick_takes_only_new_prompts_and_the_model_the_cycle_ended_with(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = source.folder_cron(make_cron, {"training_polls": 1, "training_gain": 0.25},
                                        **source.LOOP)
    write_prompts(cron.config.parent / "holdout.json", source.HOLDOUT)
    monday = [f"Classify message {i}: 'my order {i} came broken'" for i in range(6)]
    tuesday = [f"Classify message {i}: 'refund for order {i} please'" for i in range(6, 12)]
    source.drop(incoming, "monday.jsonl", monday)
    first = _tick_until(cron, "PROMOTED")
    source.due(cron)
    source.drop(incoming, "tuesday.jsonl", tuesday)
    second = _finish(cron, env=source.DUE)
    assert second["model_alias"] == first["promotion"]["model_id"]
    model = (second["promotion"]["model_id"] if second["state"] == "PROMOTED"
             else second["model_alias"])
    for run in (first, second):
        age(cron.db_url, run["run_id"], ended=40)
    before = rows_by_run(cron.db_url)
    assert before["evaluations"][first["run_id"]] and before["events"][first["run_id"]]
    uses = every_row(cron.db_url, prompt_uses)

    pruned = _prune(cron.cli, "--older-than", "30d", config=cron)
    assert pruned.stdout.splitlines()[0] == (
        f"pruned {first['run_id']}: PROMOTED, ended 40d00h ago, 6 item(s), cycle "
        f"{first['cycle']}")
    after = rows_by_run(cron.db_url)
    assert after == without(before, [first["run_id"]])
    assert after["runs"] == Counter({second["run_id"]: 1})
    assert every_row(cron.db_url, prompt_uses) == uses
    assert _prune(cron.cli, "--older-than", "30d", config=cron).stdout.startswith(
        "nothing to prune")

    # Monday's prompts again, with two new ones: only the new ones are taken, and the next run
    # answers with the model the kept run ended with.
    source.drop(incoming, "wednesday.jsonl", [*monday, *tuesday[:2], "new one", "new two"])
    third = source.tick(cron).stdout.splitlines()[0]
    assert source.run_prompts(cron, third) == ["new one", "new two"]
    shown = cron.runs()[0]
    assert shown["run_id"] == third and shown["model_alias"] == model
    assert source.traced(cron) == Counter([*monday, *tuesday, "new one", "new two"])
    store = Store(cron.db_url)
    try:
        with store.reading() as tx:
            assert len(tx.used_prompts(str(first["cycle"]))) == 14
    finally:
        store.close()
