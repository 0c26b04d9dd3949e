"""`cftrunner tick` over a prompt source that grows: each cycle takes only prompts no earlier cycle
used, skips when nothing is new, and keeps exactly once through kills around the run's creation."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import DEFAULT_PROJECT_ID, llm
from cftrunner.store import Store
from cftrunner.store.schema import prompt_uses
from tests.acceptance import test_tick
from tests.acceptance.test_ownership import one_error_line, requests_sent
from tests.acceptance.test_tick import Cron
from tests.conftest import MARKER_INPUT, MODEL, PROMPTS, write_prompts

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron  # a sandbox, and a config file naming it and a state database
KILLED = -signal.SIGKILL
DUE = {"CFTRUNNER_INTERVAL": "1s"}  # as if the interval had passed, once a second has
FOLDER = {"prompts": '"incoming"', "interval": '"1h"', "reuse_after": '"never"'}


def drop(folder: Path, name: str, prompts: list[str]) -> Path:
    """A JSONL file of prompts, written aside and renamed in, as a job that feeds the folder does."""
    folder.mkdir(exist_ok=True)
    part = folder / f".{name}.part"
    part.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return part.rename(folder / name)


def traced(cron: Cron) -> Counter[str]:
    """How often each prompt was traced (marker traces aside)."""
    return Counter(t["input"] for t in cron.sandbox.world.traces()
                   if not t["input"].startswith(MARKER_INPUT))


def run_prompts(cron: Cron, run_id: str) -> list[str]:
    store = Store(cron.db_url)
    try:
        return [item.prompt for item in store.items(run_id)]
    finally:
        store.close()


def tick(cron: Cron, expected: int = 0, crash_at: str | None = None,
         env: dict[str, str] | None = None) -> Any:
    environment = {**DUE, **(env or {}), **({crashpoints.ENV: crash_at} if crash_at else {})}
    result = cron.tick(env=environment)
    assert result.returncode == expected, result.stdout + result.stderr
    return result


def due(cron: Cron, seconds: float = 1.0, nth: int = 0) -> None:
    """Wait until the `nth` newest run is `seconds` old: with DUE, the next tick starts a cycle."""
    created = datetime.fromisoformat(cron.runs()[nth]["created_at"])
    while (datetime.now(UTC) - created).total_seconds() < seconds + 0.05:
        time.sleep(0.05)


def folder_cron(make_cron: Callable[..., Cron], sandbox: dict[str, Any] | None = None,
                **keys: str) -> tuple[Cron, Path]:
    cron = make_cron({**FOLDER, **keys}, **(sandbox or {}))
    return cron, cron.config.parent / "incoming"


def test_three_cycles_over_a_folder_that_gains_a_file_use_each_prompt_once(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = folder_cron(make_cron)
    drop(incoming, "monday.jsonl", PROMPTS[:3])

    first = tick(cron)
    first_id = first.stdout.splitlines()[0]
    assert f"run {first_id}: LAUNCHED" in first.stdout
    assert run_prompts(cron, first_id) == PROMPTS[:3]

    # Tuesday's file repeats one of Monday's prompts: only its two new ones are taken.
    drop(incoming, "tuesday.jsonl", [PROMPTS[2], PROMPTS[3], PROMPTS[4]])
    due(cron)
    second = tick(cron)
    second_id = second.stdout.splitlines()[0]
    assert f"run {second_id}: LAUNCHED" in second.stdout
    assert run_prompts(cron, second_id) == PROMPTS[3:5]

    # Nothing new: one line, exit 0, SKIPPED recorded, nothing sent.
    due(cron)
    before = requests_sent(cron.sandbox)
    third = tick(cron)
    [line] = third.stdout.splitlines()
    third_id = cron.runs()[0]["run_id"]
    assert line == (f"run {third_id}: SKIPPED: no unused prompt in {incoming} (2 file(s), "
                    "5 prompt(s)); min_new_prompts is 1")
    assert requests_sent(cron.sandbox) == before
    assert cron.runs()[0]["state"] == "SKIPPED"

    assert traced(cron) == Counter(PROMPTS[:5])
    counts = cron.sandbox.counts()
    assert sorted(counts["additions"].values()) == [1] * 5
    assert counts["snapshots"] == counts["jobs"] == 2

    # Where each run's prompts came from, and what remains.
    shown = cron.cli.run("status", second_id, "--config", str(cron.config))
    assert (f"prompts    2 from {incoming} (2 new, 0 reused; tuesday.jsonl 2 new); 0 unused "
            "remain") in shown.stdout
    source = cron.runs()[1]["prompt_source"]
    assert source["files"] == [{"path": str(incoming / "tuesday.jsonl"), "new": 2, "reused": 0}]
    report = cron.cli.run("report", second_id, "--config", str(cron.config))
    assert f"prompts   2 from {incoming} (2 new" in report.stdout


def test_prompts_per_cycle_and_min_new_prompts_pace_the_cycles(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = folder_cron(make_cron, prompts_per_cycle="2", min_new_prompts="2")
    drop(incoming, "batch.jsonl", PROMPTS[:5])
    ids = []
    for expected in (PROMPTS[:2], PROMPTS[2:4]):
        result = tick(cron)
        ids.append(result.stdout.splitlines()[0])
        assert run_prompts(cron, ids[-1]) == expected
        due(cron)
    # One unused prompt left, fewer than min_new_prompts: skipped, and it stays unused.
    skipped = tick(cron)
    assert "SKIPPED: only 1 unused prompt(s) in" in skipped.stdout
    assert "min_new_prompts is 2" in skipped.stdout
    drop(incoming, "more.jsonl", PROMPTS[5:6])
    due(cron)
    last = tick(cron)
    assert run_prompts(cron, last.stdout.splitlines()[0]) == [PROMPTS[4], PROMPTS[5]]
    assert traced(cron) == Counter(PROMPTS[:6])


@pytest.mark.parametrize("point", crashpoints.TICK_POINTS)
def test_a_kill_around_the_run_s_creation_neither_loses_nor_repeats_a_prompt(
        make_cron: Callable[..., Cron], point: str) -> None:
    cron, incoming = folder_cron(make_cron)
    drop(incoming, "a.jsonl", PROMPTS[:3])
    tick(cron, KILLED, crash_at=point)
    runs = cron.runs()
    if point == "tick.after_choosing":  # chosen, not stored: as if the tick never ran
        assert runs == []
    else:  # stored with its prompts, before a request
        [run] = runs
        assert run["state"] == "CREATED" and run_prompts(cron, run["run_id"]) == PROMPTS[:3]
    # Only the checks before a run (the project, the models) were sent.
    assert set(cron.sandbox.counts()["requests"]) == {"project", "models"}

    # The folder gains a file before the next tick: a run already made keeps its prompts.
    drop(incoming, "b.jsonl", PROMPTS[3:5])
    resumed = tick(cron)
    first = cron.runs()[0]["run_id"]
    assert f"run {first}: LAUNCHED" in resumed.stdout
    expected = PROMPTS[:5] if point == "tick.after_choosing" else PROMPTS[:3]
    assert run_prompts(cron, first) == expected

    due(cron)
    later = tick(cron)
    if point == "tick.after_choosing":
        assert "SKIPPED: no unused prompt" in later.stdout
    else:
        assert run_prompts(cron, later.stdout.splitlines()[0]) == PROMPTS[3:5]
    assert traced(cron) == Counter(PROMPTS[:5])
    assert sorted(cron.sandbox.counts()["additions"].values()) == [1] * 5


def test_an_unchanged_prompts_file_gives_nothing_new_until_reuse_after_has_passed(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron({"interval": '"1h"', "reuse_after": '"2h"'})
    prompts = test_tick.FEW_PROMPTS
    tick(cron)
    due(cron)
    assert "SKIPPED: no unused prompt" in tick(cron).stdout
    # Three hours on, as far as the prompts' last use is concerned.
    store = Store(cron.db_url)
    try:
        with store.tx() as tx:
            used = tx.used_prompts(cron.runs()[0]["cycle"])
            for digest, when in used.items():
                tx.conn.execute(prompt_uses.update().where(prompt_uses.c.digest == digest)
                                .values(used_at=when - timedelta(hours=3)))
    finally:
        store.close()
    due(cron)
    again = tick(cron)
    run_id = again.stdout.splitlines()[0]
    assert run_prompts(cron, run_id) == prompts
    assert cron.runs()[0]["prompt_source"]["reused"] == len(prompts)
    # A one-off start is not limited: it takes the file's prompts whenever it is asked to.
    started = cron.cli.run("start", "--config", str(cron.config))
    assert started.returncode == 0, started.stderr
    assert traced(cron) == Counter({p: 3 for p in prompts})


def test_a_training_prompt_that_is_also_held_out_is_refused_naming_both_places(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = folder_cron(make_cron, promote="true", holdout_prompts='"holdout.json"')
    drop(incoming, "a.jsonl", PROMPTS[:3])
    write_prompts(cron.config.parent / "holdout.json", ["held out one", PROMPTS[1]])
    refused = cron.tick()
    assert refused.returncode == 2
    assert one_error_line(refused.stderr) == (
        f"cftrunner: error: {incoming / 'a.jsonl'}: prompt 1 is also held-out prompt 1 of "
        f"{cron.config.parent / 'holdout.json'}; a held-out prompt is never trained on: remove "
        "it from one of them")
    assert not (cron.config.parent / "state").exists() or cron.runs() == []
    assert requests_sent(cron.sandbox) == 0


def test_dry_run_shows_the_prompts_a_tick_would_take_and_creates_nothing(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = folder_cron(make_cron, prompts_per_cycle="2")
    drop(incoming, "a.jsonl", PROMPTS[:3])
    database = cron.config.parent / "state" / "cron.db"
    preview = cron.cli.run("tick", "--dry-run", "--config", str(cron.config))
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.splitlines()[:3] == [
        f"would start a run of 2 from {incoming} (2 new, 0 reused; a.jsonl 2 new); 1 unused "
        "remain",
        f"checks: the key is accepted at {cron.sandbox.url}; project {DEFAULT_PROJECT_ID} has "
        f"dataset {cron.sandbox.dataset_id(DEFAULT_PROJECT_ID)}",
        "items: 2"]
    assert set(cron.sandbox.counts()["requests"]) == {"project", "models"}  # reads only
    if not cron.db_url.startswith("postgresql"):
        assert not database.exists()
    tick(cron)
    due(cron)
    again = cron.cli.run("tick", "--dry-run", "--config", str(cron.config), env=DUE)
    assert again.stdout.splitlines()[0] == (f"would start a run of 1 from {incoming} (1 new, 0 "
                                            "reused; a.jsonl 1 new); 0 unused remain")
    assert "tokens: the cycle's last run " in again.stdout
    tick(cron)
    due(cron)
    last = cron.cli.run("tick", "--dry-run", "--config", str(cron.config), env=DUE)
    assert last.stdout.startswith(f"would skip: no unused prompt in {incoming}")
    assert len(cron.runs()) == 2


# -- the regression set -------------------------------------------------------------------------


HOLDOUT = [f"Classify held-out message {i}: 'is this a phishing link?'" for i in range(6)]
LOOP = {"follow": "true", "promote": "true", "holdout_prompts": '"holdout.json"',
        "regression": "true"}


def test_after_a_promotion_the_weak_prompts_are_asked_again_and_reported_per_prompt(
        make_cron: Callable[..., Cron]) -> None:
    cron, incoming = folder_cron(make_cron, {"training_polls": 1, "training_gain": 0.25}, **LOOP)
    write_prompts(cron.config.parent / "holdout.json", HOLDOUT)
    prompts = [f"Classify message {i}: 'parcel {i} never came, I want my money back'"
               for i in range(20)]
    drop(incoming, "a.jsonl", prompts)

    run_id = tick(cron).stdout.splitlines()[0]
    assert "still training" in tick(cron).stdout  # the job is read once per tick
    tick(cron, KILLED, crash_at="follow.after_end")
    assert cron.runs()[0]["state"] == "TRAINED"
    # Killed after the second regression answer is kept; the kept ones are not asked again. One
    # at a time: with several in flight, a third could be stored before the kill lands.
    tick(cron, KILLED, crash_at="promote.after_recheck:2", env={"CFTRUNNER_CONCURRENCY": "1"})
    store = Store(cron.db_url)
    try:
        kept = {c["position"]: c["at"] for c in store.rechecks(run_id) if c["at"] is not None}
    finally:
        store.close()
    assert len(kept) == 2
    done = tick(cron)
    assert f"run {run_id}: PROMOTED" in done.stdout

    [run] = cron.runs()
    decision = run["promotion"]
    model = decision["model_id"]
    quality = cron.sandbox.model_quality(model)
    store = Store(cron.db_url)
    try:
        weak = {item.prompt: item.score for item in store.items(run_id)
                if item.score is not None and item.score < 0.5}
        checks = store.rechecks(run_id)
    finally:
        store.close()
    assert weak and {c["prompt"] for c in checks} == set(weak)
    assert {c["position"]: c["at"] for c in checks if c["position"] in kept} == kept
    expected = {p: "fixed" if llm.is_correct(p, llm.generate(p, quality)) else "still weak"
                for p in weak}
    shown = {r["prompt"]: r["verdict"] for r in run["regression"]}
    assert shown == expected
    assert decision["regression"] == {
        "prompts": len(weak), "fixed": list(expected.values()).count("fixed"),
        "still_weak": list(expected.values()).count("still weak"), "unjudged": 0}
    # Asked of the promoted model, never traced nor added again.
    assert traced(cron) == Counter(prompts)
    assert sum(cron.sandbox.counts()["additions"].values()) == len(prompts)
    detail = cron.cli.run("status", run_id, "--config", str(cron.config)).stdout
    assert (f"regression {decision['regression']['fixed']} fixed, "
            f"{decision['regression']['still_weak']} still weak, 0 unjudged of {len(weak)} "
            f"prompts that scored below 0.5 (asked again of {model})") in detail
    for prompt, verdict in expected.items():
        assert any(line.strip().startswith(verdict) and prompt[:40] in line
                   for line in detail.splitlines()), (prompt, detail)
    assert model != MODEL
