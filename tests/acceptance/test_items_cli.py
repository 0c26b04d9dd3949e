"""`cftrunner items` and `cftrunner export` as real processes: tables, filters, JSON and CSV as
promised, exit status 2 for bad input with nothing created, and an export cut short."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
from pathlib import Path

import pytest

from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.store import Store
from tests import processes
from tests.conftest import PROMPTS, Cli
from tests.item_runs import (
    assert_as_promised,
    build_run,
    expected_record,
    promised_keys,
    score_of,
    stage_of,
)

N = 40
STAGES = ("PENDING, GENERATED, JUDGED, TRACED, ADDED, GEN_FAILED, JUDGE_FAILED, TRACE_FAILED, "
          "ADD_FAILED, SKIPPED")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("cftrunner: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def build(cli: Cli, run_id: str = "built", n: int = N) -> None:
    store = Store(cli.env["CFTRUNNER_DB"])
    try:
        build_run(store, run_id, n)
    finally:
        store.close()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(table: str) -> list[list[str]]:
    """The table's rows below its header, split on whitespace, without the count at the end."""
    lines = table.splitlines()
    assert lines[0].split() == ["ITEM", "STATE", "SCORE", "TRACE", "PROMPT", "REASON"]
    return [line.split() for line in lines[1:-1]]


def test_a_real_run_started_from_the_command_line_is_listed_and_exported(
        cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    ok(cli.run(*cli.start_args("real")))
    table = ok(cli.run("items", "real"))
    assert [row[:2] for row in rows(table)] == [
        [str(i), "GEN_FAILED" if i == 2 else "ADDED"] for i in range(len(PROMPTS))]
    assert table.splitlines()[-1] == f"{len(PROMPTS)} items"
    failed = table.splitlines()[3]
    assert failed.split()[2:4] == ["-", "-"] and failed.endswith("status 400")
    listed = json.loads(ok(cli.run("items", "real", "--json")))
    records = [json.loads(line) for line in ok(cli.run("export", "real", "--format", "jsonl"))
               .splitlines()]
    assert [r["item"] for r in records] == [obj["item"] for obj in listed] == list(range(6))
    for obj, record in zip(listed, records, strict=True):
        assert_as_promised(obj, [key for key in promised_keys() if key.listed])
        assert_as_promised(record, promised_keys())
        assert obj == {key: record[key] for key in obj}
    assert records[2]["error_kind"] == "http_400" and records[0]["tokens"] > 0


def test_the_table_shows_each_item_its_score_trace_prompt_and_reason(cli: Cli) -> None:
    build(cli)
    table = ok(cli.run("items", "built", env={"COLUMNS": "250"}))
    found = rows(table)
    assert [int(row[0]) for row in found] == list(range(N))
    for i, row in enumerate(found):
        score = score_of(i)
        assert row[1] == stage_of(i).value
        assert row[2] == ("-" if score is None else f"{score:.3f}")
        assert row[3] == ("-" if score is None else f"trace-built-{i}")
        assert row[4:6] == ["Prompt", f"{i}:"]
    assert table.splitlines()[4].endswith(
        "http_400: POST /api/v1/chat/completions: HTTP 400: the model refused item 3")
    assert table.splitlines()[8].endswith(
        "budget_exceeded: the token budget of 1000 ran out before generating")
    assert table.splitlines()[-1] == f"{N} items"


def test_a_narrow_table_fits_and_keeps_the_end_of_a_reason(cli: Cli) -> None:
    build(cli)
    lines = ok(cli.run("items", "built", "--failed", env={"COLUMNS": "80"})).splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].endswith("refused item 3") and "…" in lines[1]


@pytest.mark.parametrize(("args", "expected"), [
    (("--state", "gen_failed"), [i for i in range(N) if i % 10 == 3]),
    (("--state", "Skipped", "--state", "GEN_FAILED"), [i for i in range(N) if i % 10 in (3, 7)]),
    (("--failed",), [i for i in range(N) if i % 10 == 3]),
    (("--below", "0.2"), [i for i in range(N) if (s := score_of(i)) is not None and s < 0.2]),
    (("--above", "0.9"), [i for i in range(N) if (s := score_of(i)) is not None and s >= 0.9]),
    (("--above", "0.5", "--below", "0.6", "--state", "added"),
     [i for i in range(N) if (s := score_of(i)) is not None and 0.5 <= s < 0.6]),
    (("--sort", "score", "--limit", "5"),
     sorted(range(N), key=lambda i: (score_of(i) is None, score_of(i) or 0, i))[:5]),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else "")
def test_the_filters_and_sort_of_the_table_and_of_the_json_agree(
        cli: Cli, args: tuple[str, ...], expected: list[int]) -> None:
    build(cli)
    table = ok(cli.run("items", "built", *args))
    assert [int(row[0]) for row in rows(table)] == expected
    assert table.splitlines()[-1] == f"{len(expected)} of {N} items"
    listed = json.loads(ok(cli.run("items", "built", *args, "--json")))
    assert [obj["item"] for obj in listed] == expected


def test_the_unscored_come_last_when_sorted_by_score(cli: Cli) -> None:
    build(cli)
    listed = json.loads(ok(cli.run("items", "built", "--sort", "score", "--json")))
    scores = [obj["score"] for obj in listed]
    scored = [s for s in scores if s is not None]
    assert scores == sorted(scored) + [None] * (N - len(scored))


def test_nothing_matching_says_so(cli: Cli) -> None:
    build(cli)
    assert ok(cli.run("items", "built", "--failed", "--above", "0.5")) == (
        f"no items match (the run has {N})\n")
    assert json.loads(ok(cli.run("items", "built", "--failed", "--above", "0.5", "--json"))) == []


def test_the_json_of_every_item_is_as_the_readme_promises(cli: Cli) -> None:
    build(cli)
    keys = [key for key in promised_keys() if key.listed]
    listed = json.loads(ok(cli.run("items", "built", "--json")))
    assert len(listed) == N
    for i, obj in enumerate(listed):
        assert_as_promised(obj, keys)
        assert obj == {key.name: expected_record("built", i)[key.name] for key in keys}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_writes_every_item_in_order_to_stdout_or_a_file_alike(
        cli: Cli, tmp_path: Path, fmt: str) -> None:
    build(cli)
    result = processes.run(cli.command("export", "built", "--format", fmt), env=cli.env,
                           capture_output=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    text = result.stdout.decode("utf-8")
    expected = [expected_record("built", i) for i in range(N)]
    if fmt == "jsonl":
        assert text.endswith("\n") and text.count("\n") == N
        assert [json.loads(line) for line in text.split("\n")[:-1]] == expected
    else:
        read = list(csv.reader(io.StringIO(text, newline="")))
        assert read[0] == [key.name for key in promised_keys()]
        assert read[1:] == [["" if v is None else str(v) for v in record.values()]
                            for record in expected]
    (tmp_path / "out").mkdir()
    assert ok(cli.run("export", "built", "--format", fmt, "--output", "out/items")) == ""
    assert (tmp_path / "out" / "items").read_bytes() == result.stdout


BAD = {
    "unknown stage": (("items", "built", "--state", "finished"),
                      f"'finished' is not an item stage; the stages are {STAGES}"),
    "score above 1": (("items", "built", "--below", "1.5"), "1.5 is not in the range 0<=x<=1"),
    "score below 0": (("items", "built", "--above", "-0.1"), "-0.1 is not in the range 0<=x<=1"),
    "unknown sort": (("items", "built", "--sort", "stage"), "'stage' is not one of 'index', 'score'"),
    "no such run": (("items", "other"), "no run 'other' in the state database"),
    "bad run id": (("items", "../x"), "run id '../x' must be"),
    "unknown format": (("export", "built", "--format", "xml"), "'xml' is not one of 'jsonl', 'csv'"),
    "no format": (("export", "built"), "Missing option '--format'"),
    "no such folder": (("export", "built", "--format", "csv", "--output", "nowhere/items.csv"),
                       "cannot write nowhere/items.csv: the folder "),
    "a folder": (("export", "built", "--format", "csv", "--output", "out"), "is a directory"),
    "export of no such run": (("export", "other", "--format", "csv", "--output", "out/x.csv"),
                              "no run 'other' in the state database"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli: Cli, tmp_path: Path,
                                                        case: str) -> None:
    build(cli)
    (tmp_path / "out").mkdir()
    args, message = BAD[case]
    result = cli.run(*args)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert result.stdout == ""
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("args", [("items", "r1"), ("export", "r1", "--format", "jsonl")])
def test_a_missing_state_file_is_named_as_other_commands_name_it_and_none_is_made(
        cli: Cli, tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "elsewhere" / "typo.db"
    missing.parent.mkdir()
    result = cli.run("--db", f"sqlite:///{missing}", *args)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"cftrunner: error: no state database at {missing}: nothing has run with this database "
        "yet (see --db, CFTRUNNER_DB or db in the config file)")
    assert list(missing.parent.iterdir()) == []


def test_an_export_killed_part_way_leaves_the_earlier_file_whole(cli: Cli, tmp_path: Path) -> None:
    """SIGKILL as the third page of 500 items is taken: the file written so far is a hidden
    temporary one; the output path still holds the earlier export."""
    build(cli, n=1200)
    target = tmp_path / "items.jsonl"
    target.write_text("the earlier export\n")
    result = cli.run("export", "built", "--format", "jsonl", "--output", str(target),
                     env={"CFTRUNNER_CRASH_AT": "export.after_page:2"})
    assert result.returncode == -signal.SIGKILL
    assert target.read_text() == "the earlier export\n"
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".items.jsonl.")]
    assert len(partial) == 1 and partial[0].name.endswith(".part")
    assert 0 < len(partial[0].read_bytes().splitlines()) < 1200


def test_sigterm_stops_an_export_with_one_line_and_exit_143(cli: Cli, tmp_path: Path) -> None:
    """The export writes into a pipe nobody reads, so it is still writing when the signal comes."""
    build(cli, n=1200)
    proc = cli.spawn("export", "built", "--format", "jsonl")
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["item"] == 0
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()  # to the end, so that it can finish
    assert proc.wait(timeout=60) == 143
    assert one_error_line(subprocess.CompletedProcess([], 143, "", proc.stderr.read())) == (
        "cftrunner: error: stopped: the export of run built was interrupted by SIGTERM")
    assert 1 + rest.count("\n") < 1200


def test_a_reader_that_stops_early_ends_the_export_quietly(cli: Cli) -> None:
    """As `cftrunner export RUN --format csv | head -1` does."""
    build(cli, n=1200)
    proc = cli.spawn("export", "built", "--format", "csv")
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("run_id,item,stage,")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""


def test_help_shows_an_example_of_each_command(cli: Cli) -> None:
    for command in ("items", "export"):
        assert f"Example: cftrunner {command} 20261121-223000-a1b2c3" in ok(
            cli.run(command, "--help"))
