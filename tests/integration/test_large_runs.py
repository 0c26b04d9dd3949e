"""Large prompt sets: streamed from the file, stored in batches in one transaction, all or nothing."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa

from cftrunner import service
from cftrunner.config.cycle import Cycle
from cftrunner.driver import Driver
from cftrunner.exceptions import PromptsError
from cftrunner.prompt_source import scan
from cftrunner.prompts import iter_prompts
from cftrunner.records import RunSpec
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from cftrunner.service.schedule import cycle_name, decide_and_claim, spec_from, tick
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.schema import items
from tests.conftest import JUDGE, MODEL, make_run, quick_settings

MANY = 20_000


def prompt(i: int) -> str:
    """A prompt about as long as the tutorial's (some 700 characters), distinct for each i."""
    return (f"Task: Check if there is unsafe content in 'Agent' messages (case {i}).\n\n"
            + "<BEGIN CONVERSATION>\n\nUser: how do I fix my bike chain?\n\n" * 8
            + "Agent: take the wheel off first.\n\n<END CONVERSATION>")


def write_jsonl(path: Path, count: int, last: str | None = None) -> Path:
    """`count` prompts as JSONL, strings and objects alternating; `last` replaces the last line."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            line = json.dumps(prompt(i) if i % 2 else {"prompt": prompt(i), "id": i})
            out.write(f"{last if last is not None and i == count - 1 else line}\n")
    return path




def stored_items(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())


def test_a_20000_prompt_jsonl_file_is_stored_whole_and_in_order(
    store: Store, tmp_path: Path
) -> None:
    store.create_run(make_run("big"), iter_prompts(write_jsonl(tmp_path / "p.jsonl", MANY)))
    stored = store.items("big")
    assert [item.position for item in stored] == list(range(MANY))
    assert [item.prompt for item in stored] == [prompt(i) for i in range(MANY)]
    assert store.events("big")[-1].data == {"items": MANY}


def test_a_bad_prompt_at_the_end_leaves_no_run_and_no_items(store: Store, tmp_path: Path) -> None:
    """The first 19 batches of items are inserted before the bad line is read: all roll back."""
    path = write_jsonl(tmp_path / "p.jsonl", MANY, last='{"text": "no prompt field"}')
    with pytest.raises(PromptsError, match=f"line {MANY}: prompt {MANY - 1} is an object"):
        store.create_run(make_run("big"), iter_prompts(path))
    assert store.runs() == []
    assert stored_items(store) == 0


def test_a_duplicate_at_the_end_leaves_no_run_and_names_the_first_copy(
    store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", MANY, last=json.dumps(prompt(7)))
    with pytest.raises(PromptsError, match=f"prompt {MANY - 1} is a duplicate of prompt 7 "):
        store.create_run(make_run("big"), iter_prompts(path))
    assert store.runs() == []


def test_iterating_a_20000_line_jsonl_file_keeps_memory_well_below_its_size(tmp_path: Path) -> None:
    """Loading the file whole would take about twice its size; streaming keeps only digests."""
    path = write_jsonl(tmp_path / "p.jsonl", MANY)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_prompts(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == MANY
    assert peak < path.stat().st_size


def test_start_refuses_a_bad_last_prompt_before_any_request_and_stores_nothing(
    sandbox: Sandbox, db_url: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", MANY, last='"  "')
    spec = RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, prompts_source=str(path),
                   judge_model=JUDGE)
    announced: list[str] = []
    with pytest.raises(PromptsError, match="empty or only whitespace"):
        service.start(quick_settings(sandbox.url, db_url), spec, announced.append)
    assert announced == []
    assert not any(sandbox.counts()["requests"].values())
    store = Store(db_url)
    try:
        assert store.runs() == []
        assert stored_items(store) == 0
    finally:
        store.close()


def test_tick_starts_a_new_cycle_from_a_jsonl_file(
    sandbox: Sandbox, db_url: str, store: Store, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", 3)
    cycle = Cycle(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, prompts=str(path))
    runner = Driver(store, quick_settings(sandbox.url, db_url))
    try:
        decision, run = tick(runner, cycle, lambda run_id: None)
    finally:
        runner.client.close()
    assert decision.action == "start" and run is not None and run.state is RunState.LAUNCHED
    assert [item.prompt for item in store.items(run.id)] == [prompt(i) for i in range(3)]


def test_tick_refuses_a_bad_prompts_file_before_resuming_the_unfinished_run(
    sandbox: Sandbox, db_url: str, store: Store, tmp_path: Path
) -> None:
    cycle = Cycle(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL,
                  prompts=str(write_jsonl(tmp_path / "p.jsonl", 3)))
    runner = Driver(store, quick_settings(sandbox.url, db_url))
    try:
        unfinished = decide_and_claim(runner, cycle, spec_from(cycle, None, "tick"),
                                      scan(str(tmp_path / "p.jsonl")))
        runner.ownership.release()
        write_jsonl(tmp_path / "p.jsonl", 3, last="3")
        with pytest.raises(PromptsError, match="line 3: prompt 2 is a number"):
            tick(runner, cycle, lambda run_id: None)
    finally:
        runner.client.close()
    assert not any(sandbox.counts()["requests"].values())
    assert [run.id for run in store.runs()] == [unfinished.run_id]
    assert store.runs()[0].cycle == cycle_name(DEFAULT_PROJECT_ID, MODEL)
