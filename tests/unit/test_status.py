"""`status` from hand-built runs: the table fitted to a width, errors keeping their end, the detail."""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime, timedelta

import pytest
from rich.cells import cell_len

from cftrunner.records import LeaseInfo, Owner, Run, RunSummary
from cftrunner.states import RunState
from cftrunner.views.status import detail, short_error, table


@pytest.fixture(autouse=True)
def not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard output is not a terminal here, even under `pytest -s` at one."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())


T0 = datetime(2026, 11, 21, 22, 30, tzinfo=UTC)
BASE = "https://studio.example.com"
PROJECT = "6f1c2b8e-3d4a-4e5f-9a7b-0c1d2e3f4a5b"
STOPPED = (f"reading the project: GET {BASE}/api/v1/public/projects/{PROJECT}: HTTP 503 "
           "service unavailable (gave up after 6 attempts; the run is intact, resume it later)")
REJECTED = (f"POST {BASE}/api/v1/public/finetuning/jobs: HTTP 404 project not found; fix the "
            "cause, then `cftrunner resume 20261121-223000-a1b2c3`")
OWNER = Owner("build-host", "boot-1", 4242, "x")


def summary(run_id: str, state: RunState = RunState.LAUNCHED, **fields: object) -> RunSummary:
    run = Run(id=run_id, project_id=PROJECT, model_alias="safety-model-v2",
              judge_model="claude-4.5-sonnet", split_percentage=80, prompts_source="p.json",
              job_name=f"cftrunner-{run_id}", state=state, created_at=T0, updated_at=T0,
              state_changed_at=T0, base_url=BASE, **fields)  # type: ignore[arg-type]
    return RunSummary(run, {"ADDED": 38, "GEN_FAILED": 2}, {"gen_failed:http_400": 2},
                      {"CREATED": 0.9, "GENERATED": 12.5, "JUDGED": 30.0})


RUNS = [summary("20261121-223000-a1b2c3", RunState.CREATED, last_error=STOPPED),
        summary("20261121-230000-d4e5f6", RunState.RECS_READY, last_error=REJECTED,
                lease=LeaseInfo("t", OWNER, T0 + timedelta(minutes=9))),
        summary("20261122-223000-ffffff", RunState.FAILED,
                failure_reason="every item failed (40 gen_failed)")]
NOW = T0 + timedelta(minutes=5)


def error_cells(text: str) -> list[str]:
    lines = text.splitlines()
    at = lines[0].index("LAST ERROR")
    return [line[at:] for line in lines[1:]]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_table_fits_the_width_and_each_error_keeps_its_end(width: int) -> None:
    text = table(RUNS, NOW, width)
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= width
    assert re.split(r"\s{2,}", lines[0]) == ["RUN ID", "STATE", "ITEMS", "FAILED", "AGE", "OWNER",
                                             "LAST ERROR"]
    assert [line.split()[:5] for line in lines[1:]] == [
        [s.run.id, s.run.state.value, "40", "2", "5m00s"] for s in RUNS]
    stopped, rejected, failed = error_cells(text)
    assert stopped.startswith("…") and short_error(STOPPED, BASE).endswith(stopped[1:])
    assert stopped.endswith("unavailable") and rejected.endswith("not found")
    if width >= 100:  # the status code too, and with room to spare, the project read
        assert stopped.endswith("HTTP 503 service unavailable")
        assert rejected.endswith("HTTP 404 project not found")
    if width >= 160:
        assert stopped.endswith(f"{PROJECT}: HTTP 503 service unavailable")
        assert failed == "every item failed (40 gen_failed)"
    assert failed.endswith("gen_failed)") and "every item failed (40 gen_failed)".endswith(
        failed.removeprefix("…"))


def test_the_table_leaves_out_the_base_url_and_the_advice_the_same_for_every_run() -> None:
    assert short_error(STOPPED, BASE) == (f"reading the project: GET /api/v1/public/projects/"
                                         f"{PROJECT}: HTTP 503 service unavailable")
    assert short_error(REJECTED, BASE + "/") == ("POST /api/v1/public/finetuning/jobs: HTTP 404 "
                                                 "project not found")
    assert short_error("two\n  lines (gave up after 2 refusals; resume later)", None) == "two lines"
    assert short_error(None, BASE) == ""


def test_the_owner_shares_the_spare_width_and_an_empty_table_says_so() -> None:
    wide = table(RUNS, NOW, 200).splitlines()
    assert "build-host pid 4242 for 4m00s" in wide[2]
    assert table([], NOW, 80) == "no runs yet: start one with `cftrunner start`"


def test_the_detail_shows_the_last_error_whole() -> None:
    long = STOPPED + " " + "x" * 300 + " the end"
    shown = detail(summary("r1", last_error=long), NOW)
    assert f"last error {long}" in shown.splitlines()


def test_the_detail_wraps_long_values_under_themselves_keeping_every_word() -> None:
    run = summary("r1", last_error=STOPPED, lease=LeaseInfo(
        "t", OWNER, T0 + timedelta(minutes=9)))
    whole = detail(run, NOW)
    assert "owner      build-host pid 4242 for 4m00s" in whole.splitlines()
    wrapped = detail(run, NOW, width=60)
    assert max(len(line) for line in wrapped.splitlines()) <= 60
    assert "".join(wrapped.split()) == "".join(whole.split())  # a URL longer than a line is cut
    last = wrapped[wrapped.index("last error"):].splitlines()
    assert len(last) > 1 and all(line.startswith(" " * 11) and line[11] != " "
                                 for line in last[1:])
    assert wrapped.splitlines()[0] == "run        r1"
