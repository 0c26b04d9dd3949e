"""`cftrunner demo` as a new user runs it: its state kept and readable afterwards, its log options
honoured, the same summary as `start`, and a second demo in the same state file a new run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.terminal import assert_summary_is_the_status, summary


def demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cftrunner demo ARGS` in `folder`, with no configuration in the environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))}
    return subprocess.run([sys.executable, "-m", "cftrunner", "demo", *args], capture_output=True,
                          text=True, timeout=120, cwd=folder, env=env)


def said(result: subprocess.CompletedProcess[str], label: str) -> str:
    [line] = [line for line in result.stdout.splitlines() if line.startswith(f"  {label} ")]
    return line.split(None, 1)[1] if label != "mean score" else line.split(None, 2)[2]


def test_the_demo_keeps_its_state_and_says_how_to_look_at_it(tmp_path: Path) -> None:
    result = demo(tmp_path, "--log-file", "demo.log")
    assert result.returncode == 0, result.stderr
    run_id, line, *_ = result.stdout.splitlines()
    assert line.startswith(f"run {run_id}: LAUNCHED job ")
    assert (tmp_path / "state" / "cftrunner-demo.db").is_file()
    assert said(result, "state").startswith("state/cftrunner-demo.db ")
    look = shlex.split(said(result, "look"))
    assert look == ["cftrunner", "status", "--db", "sqlite:///state/cftrunner-demo.db"]
    listed = subprocess.run([sys.executable, "-m", *look, "--json"], capture_output=True,
                            text=True, cwd=tmp_path, check=True)
    [shown] = json.loads(listed.stdout)
    assert (shown["run_id"], shown["state"]) == (run_id, "LAUNCHED")
    assert_summary_is_the_status(summary(result.stdout.splitlines()), shown)
    assert said(result, "report") == f"cftrunner report {run_id} --db sqlite:///state/cftrunner-demo.db"
    written = [json.loads(line) for line in (tmp_path / "demo.log").read_text().splitlines()]
    assert {"run_created", "effect_done", "run_transitioned"} <= {e["event"] for e in written}
    assert all(json.loads(line)["level"] == "warning" for line in result.stderr.splitlines())


def test_a_second_demo_in_the_same_state_database_is_a_new_run(tmp_path: Path, db_url: str) -> None:
    first, second = demo(tmp_path, "--db", db_url), demo(tmp_path, "--db", db_url)
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    ids = [result.stdout.splitlines()[0] for result in (first, second)]
    listed = subprocess.run([sys.executable, "-m", "cftrunner", "status", "--json", "--db", db_url],
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    runs = {run["run_id"]: run for run in json.loads(listed.stdout)}
    assert set(runs) == set(ids) and ids[0] != ids[1]
    assert {run["state"] for run in runs.values()} == {"LAUNCHED"}
    assert_summary_is_the_status(summary(second.stdout.splitlines()), runs[ids[1]])
    assert not (tmp_path / "state").exists()  # with --db, nothing in the working folder


@pytest.mark.parametrize(("flags", "levels"), [
    (("--log-level", "warning"), {"warning"}),
    (("--quiet",), {"warning"}),
    (("--verbose",), {"debug", "info", "warning"}),
])
def test_the_demo_honours_the_log_level(tmp_path: Path, flags: tuple[str, ...],
                                        levels: set[str]) -> None:
    result = demo(tmp_path, *flags)
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["level"] for line in result.stderr.splitlines()} == levels


def test_a_bad_demo_database_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    result = demo(tmp_path, "--db", "not a url")
    assert result.returncode == 2 and result.stderr.startswith("cftrunner: error: --db must be")
    assert list(tmp_path.iterdir()) == []
