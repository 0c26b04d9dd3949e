"""A judge that is watched, through real `python -m cftrunner` processes: the gate catches a
sandbox judge that drifted and lets an honest one through, a kill mid-calibration then a resume
judges nothing twice that was stored, and a bad calibration file is refused before anything."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import requests

from cftrunner import crashpoints
from cftrunner.sandbox import Sandbox
from cftrunner.store import Store
from tests.conftest import PROMPTS, Cli, state_stored
from tests.integration.test_calibration import CALIBRATION_PROMPTS, drifted_error, triples

pytestmark = pytest.mark.slow

TOLERANCE = 0.15


def _configure(tmp_path: Path, tolerance: float | None = TOLERANCE) -> None:
    (tmp_path / "calibration.jsonl").write_text(
        "".join(json.dumps(t) + "\n" for t in triples()), encoding="utf-8")
    gate = "" if tolerance is None else f"[gate]\nmax_judge_error = {tolerance}\n"
    (tmp_path / "cftrunner.toml").write_text(
        f'[judge]\ncalibration = "calibration.jsonl"\n{gate}', encoding="utf-8")


def _drift(sandbox: Sandbox, drift: float) -> None:
    """Through the sandbox's control endpoint, as a person trying it out would."""
    answer = requests.put(f"{sandbox.url}/_sandbox/judge-drift", json={"drift": drift}, timeout=5)
    assert answer.status_code == 200 and answer.json() == {"drift": drift}


def test_the_gate_catches_a_judge_that_drifted_and_lets_an_honest_one_through(
        cli: Cli, sandbox: Sandbox, tmp_path: Path) -> None:
    _configure(tmp_path)
    honest = cli.run(*cli.start_args("honest"))
    assert honest.returncode == 0, honest.stderr
    assert "run honest: LAUNCHED job" in honest.stdout

    _drift(sandbox, 0.3)
    drifted = cli.run(*cli.start_args("drifted"))
    assert drifted.returncode == 0, drifted.stderr
    error = drifted_error(0.3)
    reason = (f"the judge's mean absolute error on the calibration set is {round(error, 3):g}, "
              f"above {TOLERANCE:g}")
    assert f"run drifted: SKIPPED: {reason}" in drifted.stdout
    counts = sandbox.counts()
    assert (counts["snapshots"], counts["jobs"]) == (1, 1)  # the honest cycle's only

    shown = json.loads(cli.run("status", "drifted", "--json").stdout)
    assert shown["state"] == "SKIPPED" and shown["gate"]["reasons"] == [reason]
    assert shown["calibration"]["mean_absolute_error"] == error
    assert shown["calibration"]["within_tolerance"] is False
    assert shown["calibration"]["source"] == str(tmp_path / "calibration.jsonl")
    text = cli.run("status", "drifted").stdout
    assert f"judge err  {error:.3f} mean absolute error on 5 of 5 calibration triples" in text
    report = cli.run("report", "honest")
    assert "judge err 0.000 mean absolute error on 5 of 5" in report.stdout
    trend = json.loads(cli.run("report", "--trend", "--json").stdout)
    assert [(c["run_id"], c["judge_error"]) for c in trend["cycles"]] == [
        ("honest", 0.0), ("drifted", error)]


def test_the_sandbox_refuses_a_drift_outside_minus_1_to_1(sandbox: Sandbox) -> None:
    refused = requests.put(f"{sandbox.url}/_sandbox/judge-drift", json={"drift": 2}, timeout=5)
    assert refused.status_code == 400
    assert requests.get(f"{sandbox.url}/_sandbox/judge-drift", timeout=5).json() == {"drift": 0.0}


@pytest.mark.parametrize(("point", "stored", "asked_again"), [
    ("calibration.after_store:2", 2, 0),  # two scores stored, the third not asked yet
    ("calibration.after_answer:2", 1, 1),  # the second answer lost before it was stored
])
def test_a_kill_mid_calibration_then_resume_judges_nothing_twice_that_was_stored(
        cli: Cli, sandbox: Sandbox, tmp_path: Path, db_url: str, point: str, stored: int,
        asked_again: int) -> None:
    assert point.partition(":")[0] in crashpoints.CALIBRATION_POINTS
    _configure(tmp_path, tolerance=None)
    killed = cli.run(*cli.start_args("killed"), env={crashpoints.ENV: point,
                                                     "CFTRUNNER_CONCURRENCY": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = Store(db_url)
    try:
        before = store.calibrations("killed")
        assert len(before) == stored
        resumed = cli.run("resume", "killed")
        assert resumed.returncode == 0, resumed.stderr
        assert "run killed: LAUNCHED" in resumed.stdout
        after = store.calibrations("killed")
        assert after[:stored] == before  # kept as they were
        assert [r["score"] for r in after] == [t["expected"] for t in triples()]
        run = store.run("killed")
    finally:
        store.close()
    assert run.calibration is not None and run.calibration["judged"] == len(CALIBRATION_PROMPTS)
    assert sandbox.counts()["chat"]["judge"] == (len(PROMPTS) + len(CALIBRATION_PROMPTS)
                                                 + asked_again)


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "p", "answer": "a", "expected": 1.5}\n',
     'line 1: "expected" must be a number from 0 to 1, not 1.5'),
    ("", "holds no triples"),
])
def test_a_bad_calibration_file_is_one_line_exit_2_and_nothing_is_created(
        cli: Cli, sandbox: Sandbox, tmp_path: Path, db_url: str, text: str,
        message: str) -> None:
    (tmp_path / "calibration.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "cftrunner.toml").write_text('[judge]\ncalibration = "calibration.jsonl"\n')
    result = cli.run(*cli.start_args("refused"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line and str(tmp_path / "calibration.jsonl") in line
    assert not any(sandbox.counts()["requests"].values())
    assert not state_stored(db_url)


def test_a_tolerance_without_a_calibration_set_is_refused(cli: Cli, sandbox: Sandbox,
                                                          tmp_path: Path, db_url: str) -> None:
    (tmp_path / "cftrunner.toml").write_text("[gate]\nmax_judge_error = 0.1\n")
    result = cli.run(*cli.start_args("refused"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("cftrunner: error: gate.max_judge_error needs "
                                     "judge.calibration, the calibration set the judge's error "
                                     "is measured on")
    assert not state_stored(db_url)
