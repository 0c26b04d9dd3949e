"""The items and export library calls on a real state database: keyset pages, filters, the JSON
and CSV written, and a file export that is whole or absent."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError, RunNotFoundError
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.service.items import Selection, export, write_items
from cftrunner.states import ITEM_FAILED, ItemStage, RunState
from cftrunner.store import Store
from tests.conftest import PROMPTS, Harness
from tests.item_runs import (
    assert_as_promised,
    build_run,
    expected_record,
    promised_keys,
    score_of,
    stage_of,
    tokens_of,
)

N = 95  # items in a built run: several pages at the small page sizes below


@pytest.fixture
def built(store: Store) -> Store:
    build_run(store, "built", N)
    return store


def listed(store: Store, selection: Selection) -> list[dict[str, Any]]:
    out = io.StringIO()
    count = write_items(Settings(db_url=store.url), "built", selection, True, out)
    found: list[dict[str, Any]] = json.loads(out.getvalue())
    assert count == len(found)
    return found


def exported(store: Store, run_id: str, fmt: str) -> bytes:
    out = io.BytesIO()
    count = export(Settings(db_url=store.url), run_id, fmt, out)
    assert count == len(store.items(run_id))
    return out.getvalue()


def by_score(i: int) -> tuple[bool, float, int]:
    """The order of `--sort score`: lowest first, the unscored last, ties by position."""
    score = score_of(i)
    return score is None, score or 0.0, i


@pytest.mark.parametrize("page", [1, 7, 500])
def test_pages_give_every_item_once_in_position_order_with_its_tokens(
        built: Store, page: int) -> None:
    pages = list(built.item_pages("built", page=page))
    assert all(0 < len(p) <= page for p in pages)
    found = [(item.position, tokens) for p in pages for item, tokens in p]
    assert found == [(i, tokens_of(i)) for i in range(N)]


@pytest.mark.parametrize("page", [1, 4, 7, 500])
def test_pages_by_score_keep_every_tie_once_and_put_the_unscored_last(
        built: Store, page: int) -> None:
    """Each score is shared by four or five items, so pages end inside a run of ties."""
    found = [item.position for p in built.item_pages("built", by_score=True, page=page)
             for item, _ in p]
    assert found == sorted(range(N), key=by_score)


def scored(i: int, low: float = 0.0, high: float = 2.0) -> bool:
    """Whether item i has a score from `low` up to (not including) `high`."""
    score = score_of(i)
    return score is not None and low <= score < high


SELECTIONS: dict[str, tuple[Selection, Callable[[int], bool]]] = {
    "one stage": (Selection(stages=(ItemStage.GEN_FAILED,)),
                  lambda i: stage_of(i) is ItemStage.GEN_FAILED),
    "two stages": (Selection(stages=(ItemStage.GEN_FAILED, ItemStage.SKIPPED)),
                   lambda i: stage_of(i) is not ItemStage.ADDED),
    "failed": (Selection(failed=True), lambda i: stage_of(i) in ITEM_FAILED),
    "failed and a stage that is not": (Selection(stages=(ItemStage.SKIPPED,), failed=True),
                                       lambda i: False),
    "below": (Selection(below=0.3), lambda i: scored(i, high=0.3)),
    "above": (Selection(above=0.75), lambda i: scored(i, low=0.75)),
    "between": (Selection(above=0.25, below=0.5), lambda i: scored(i, 0.25, 0.5)),
    "above 0": (Selection(above=0.0), lambda i: scored(i)),
    "below 1": (Selection(below=1.0), lambda i: scored(i, high=1.0)),
    "a stage and below": (Selection(stages=(ItemStage.ADDED,), below=0.1),
                          lambda i: scored(i, high=0.1)),
}


@pytest.mark.parametrize("name", SELECTIONS)
@pytest.mark.parametrize("sort", ["index", "score"])
def test_the_filters_pick_exactly_the_items_they_name(built: Store, name: str, sort: str) -> None:
    selection, wanted = SELECTIONS[name]
    selection = dataclasses.replace(selection, by_score=sort == "score")
    expected = [i for i in range(N) if wanted(i)]
    if sort == "score":
        expected.sort(key=by_score)
    assert [obj["item"] for obj in listed(built, selection)] == expected


def test_limit_keeps_the_first_in_the_chosen_order(built: Store) -> None:
    lowest = listed(built, Selection(by_score=True, limit=3))
    assert [obj["item"] for obj in lowest] == sorted(range(N), key=by_score)[:3]
    assert [obj["item"] for obj in listed(built, Selection(limit=501))] == list(range(N))


def test_below_and_above_split_the_scored_items_at_one_x(built: Store) -> None:
    below = {obj["item"] for obj in listed(built, Selection(below=0.5))}
    above = {obj["item"] for obj in listed(built, Selection(above=0.5))}
    assert not below & above
    assert below | above == {i for i in range(N) if score_of(i) is not None}


def test_the_json_of_items_and_of_export_has_the_keys_and_types_the_readme_promises(
        built: Store) -> None:
    keys = promised_keys()
    listed_keys = [key for key in keys if key.listed]
    items = listed(built, Selection())
    assert len(items) == N
    for obj in items:
        assert_as_promised(obj, listed_keys)
    lines = exported(built, "built", "jsonl").decode("utf-8").split("\n")
    assert lines[-1] == ""
    records = [json.loads(line) for line in lines[:-1]]
    for record in records:
        assert_as_promised(record, keys)
    assert records == [expected_record("built", i) for i in range(N)]


def test_csv_has_a_header_of_the_promised_keys_and_reads_back_as_exported(built: Store) -> None:
    text = exported(built, "built", "csv").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == [key.name for key in promised_keys()]
    assert rows[1:] == [["" if v is None else str(v) for v in expected_record("built", i).values()]
                        for i in range(N)]


def test_non_ascii_text_is_written_as_utf8_not_escaped(built: Store) -> None:
    data = exported(built, "built", "jsonl")
    assert "«this» safe".encode() in data and b"\\u00ab" not in data


def test_a_real_run_is_listed_and_exported_as_the_store_holds_it(
        harness: Harness, sandbox: Sandbox) -> None:
    """A cycle against the sandbox, with a generation refused and a judge answer malformed."""
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    sandbox.add_fault(FaultRule(kind="malformed", route="chat", judge=True, times=1))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    store = harness.store
    stored = store.items(run.id)
    records = [json.loads(line) for line in exported(store, run.id, "jsonl").splitlines()]
    assert [r["item"] for r in records] == list(range(len(PROMPTS)))
    for item, record in zip(stored, records, strict=True):
        assert_as_promised(record, promised_keys())
        assert record == {
            "run_id": run.id, "item": item.position, "stage": item.stage.value,
            "prompt": item.prompt, "answer": item.answer, "score": item.score,
            "feedback": item.feedback, "reasoning": item.reasoning, "trace_id": item.trace_id,
            "judge_attempts": item.judge_attempts,
            "tokens": sum(c.total_tokens or 0 for c in store.completions(item.id)),
            "error_kind": item.error_kind, "error": item.error}
    assert sum(r["tokens"] for r in records) == store.tokens_used(run.id) > 0
    assert sorted(r["judge_attempts"] for r in records)[-1] == 2  # the malformed answer's item
    failed = [r for r in records if r["stage"] == "GEN_FAILED"]
    assert [(r["item"], r["error_kind"]) for r in failed] == [(2, "http_400")]
    out = io.StringIO()
    write_items(harness.settings, run.id, Selection(failed=True), False, out, width=200)
    table = out.getvalue().splitlines()
    assert table[0].split() == ["ITEM", "STATE", "SCORE", "TRACE", "PROMPT", "REASON"]
    assert table[1].split()[:3] == ["2", "GEN_FAILED", "-"]
    assert table[1].endswith("status 400") and table[-1] == f"1 of {len(PROMPTS)} items"


def test_an_export_to_a_file_replaces_it_whole_and_keeps_its_permissions(
        built: Store, tmp_path: Path) -> None:
    target = tmp_path / "out" / "items.jsonl"
    target.parent.mkdir()
    target.write_text("an earlier export\n")
    target.chmod(0o640)
    assert export(Settings(db_url=built.url), "built", "jsonl", target) == N
    assert target.read_bytes() == exported(built, "built", "jsonl")
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(target.parent) == ["items.jsonl"]


def test_an_export_interrupted_part_way_leaves_the_file_as_it_was_and_no_temporary_file(
        built: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (KeyboardInterrupt; SIGTERM raises too) after the first page has been written."""
    folder = tmp_path / "out"
    folder.mkdir()

    def interrupt(name: str) -> None:
        if name == "export.after_page":
            assert [p.name for p in folder.iterdir() if p.name.endswith(".part")]
            raise KeyboardInterrupt
    monkeypatch.setattr(crashpoints, "reach", interrupt)
    target = folder / "items.csv"
    target.write_text("an earlier export\n")
    with pytest.raises(KeyboardInterrupt):
        export(Settings(db_url=built.url), "built", "csv", target)
    assert target.read_text() == "an earlier export\n"
    assert os.listdir(folder) == ["items.csv"]


def test_an_output_folder_that_does_not_exist_or_a_missing_run_is_refused_creating_nothing(
        built: Store, tmp_path: Path) -> None:
    settings = Settings(db_url=built.url)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(InputError, match=f"the folder {folder / 'nowhere'} does not exist"):
        export(settings, "built", "csv", folder / "nowhere" / "items.csv")
    with pytest.raises(RunNotFoundError, match="no run 'other'"):
        export(settings, "other", "csv", folder / "items.csv")
    with pytest.raises(RunNotFoundError, match="no run 'other'"):
        write_items(settings, "other", Selection(), True, io.StringIO())
    assert os.listdir(folder) == []
