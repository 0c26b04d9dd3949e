"""`status` and `report --trend` in real processes at 80 and 160 columns: the tables fit, and a
stopped run's LAST ERROR shows its end, where the status code and reason are."""

from __future__ import annotations

import json
import re

import pytest
from rich.cells import cell_len

from cftrunner.sandbox import FaultRule, Sandbox
from tests.conftest import Cli

HEADERS = ["RUN ID", "STATE", "ITEMS", "FAILED", "AGE", "OWNER", "LAST ERROR"]


def start(cli: Cli, *, exit_code: int, **env: str) -> str:
    """Start a run with a made-up id, as a user would (a long one); its id."""
    args = [a for a in cli.start_args("x") if a not in ("--run-id", "x")]
    result = cli.run(*args, env=env)
    assert result.returncode == exit_code, result.stderr
    return result.stdout.splitlines()[0]


def runs_with_errors(cli: Cli, sandbox: Sandbox) -> dict[str, str]:
    """One launched run, one stopped by 503s at the launch, one failed by a 404 there: each id
    and the error the table shows, as `status --json` has it (its failure reason, else its last
    error)."""
    start(cli, exit_code=0)
    sandbox.add_fault(FaultRule(route="finetune_create", status=503))
    start(cli, exit_code=3, CFTRUNNER_MAX_ATTEMPTS="2")
    sandbox.clear_faults()
    sandbox.add_fault(FaultRule(route="finetune_create", status=404))
    start(cli, exit_code=1)
    sandbox.clear_faults()
    shown = json.loads(cli.run("status", "--json").stdout)
    return {r["run_id"]: r["failure_reason"] or r["last_error"] or "" for r in shown}


@pytest.mark.parametrize("columns", [80, 160])
def test_status_fits_the_terminal_and_keeps_the_end_of_each_error(
        cli: Cli, sandbox: Sandbox, columns: int) -> None:
    errors = runs_with_errors(cli, sandbox)
    assert sorted(e[-16:] for e in errors.values()) == [  # as stored: the advice is kept there
        "", "ault: status 404", "resume it later)"]
    result = cli.run("status", env={"COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= columns
    assert re.split(r"\s{2,}", lines[0]) == HEADERS
    at = lines[0].index("LAST ERROR")
    shown = {line.split()[0]: line[at:] for line in lines[1:]}
    assert set(shown) == set(errors)  # every run, its id whole
    for run_id, error in errors.items():
        cell = shown[run_id]
        if not error:
            assert cell == ""
            continue
        code = "503" if "HTTP 503" in error else "404"
        # its start cut, not its end; the API's address, the same for every run, left out
        assert cell.startswith("…") and cell[1:] in error.replace(sandbox.url, "")
        assert cell.endswith(f"status {code}")
        if columns == 160:
            assert cell.endswith(f"/api/v1/public/finetuning/create: HTTP {code} sandbox fault: "
                                 f"status {code}")


def test_status_of_a_run_shows_its_last_error_whole(cli: Cli, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="finetune_create", status=503))
    run_id = "nightly-safety-evaluation-of-the-support-assistant-model-v2"  # a longer error
    result = cli.run(*cli.start_args(run_id), env={"CFTRUNNER_MAX_ATTEMPTS": "2"})
    assert result.returncode == 3, result.stderr
    error = json.loads(cli.run("status", run_id, "--json").stdout)["last_error"]
    assert len(error) > 200 and error.endswith("resume it later)")
    shown = cli.run("status", run_id, env={"COLUMNS": "80"}).stdout.splitlines()
    assert f"last error {error}" in shown  # not a terminal: a line per field, as before


@pytest.mark.parametrize("columns", [80, 160])
def test_the_trend_table_fits_the_terminal(cli: Cli, sandbox: Sandbox, columns: int) -> None:
    errors = runs_with_errors(cli, sandbox)
    result = cli.run("report", "--trend", "--no-html", env={"COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "RUN ID" in line)
    table = lines[header:header + 1 + len(errors)]
    assert max(cell_len(line) for line in table) <= columns
    states = json.loads(cli.run("status", "--json").stdout)
    at = table[0].index("RUN ID")
    assert sorted(line[at:].split()[:2] for line in table[1:]) == sorted(
        [r["run_id"], r["state"]] for r in states)  # ids and states whole
    if columns == 160:
        assert re.split(r"\s{2,}", table[0]) == ["DATE (UTC)", "RUN ID", "STATE", "MODEL",
                                                 "ITEMS", "MEAN", "BELOW", "FAILED", "JOB", "NOTE"]
        assert "…" not in "".join(table[1:])
