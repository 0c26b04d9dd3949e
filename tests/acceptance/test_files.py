"""The files cftrunner reads and writes, by real processes: the key file, and who may read the
state file."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cftrunner.sandbox import DEFAULT_API_KEY, FaultRule, Sandbox
from tests import processes
from tests.acceptance.test_cli import one_error_line, stored_runs
from tests.conftest import Cli


def key_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "key"
    path.write_text(text)
    path.chmod(mode)
    return path


def events(result: subprocess.CompletedProcess[str], name: str) -> list[dict[str, object]]:
    found = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [event for event in found if event["event"] == name]


def test_a_key_file_others_may_read_is_warned_of_once_and_still_used(cli: Cli,
                                                                     tmp_path: Path) -> None:
    path = key_file(tmp_path, DEFAULT_API_KEY + "\n", 0o644)
    result = cli.run(*cli.start_args("loose-key"), "--api-key-file", str(path),
                     env={"API_KEY": ""})
    assert result.returncode == 0, result.stderr
    [warning] = events(result, "api_key_file_permissions")
    assert warning["level"] == "warning" and warning["path"] == str(path)
    assert warning["mode"] == "0644"


def test_a_key_file_only_its_owner_may_read_is_not_warned_of(cli: Cli, tmp_path: Path) -> None:
    path = key_file(tmp_path, DEFAULT_API_KEY, 0o600)
    result = cli.run(*cli.start_args("tight-key"), "--api-key-file", str(path),
                     env={"API_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert events(result, "api_key_file_permissions") == []


def test_an_empty_key_file_is_one_line_naming_it_exit_2_and_no_run(cli: Cli,
                                                                    tmp_path: Path) -> None:
    path = key_file(tmp_path, " \n", 0o600)
    result = cli.run(*cli.start_args("empty-key"), "--api-key-file", str(path),
                     env={"API_KEY": ""})
    assert result.returncode == 2
    assert one_error_line(result) == f"cftrunner: error: the API key file {path} is empty"
    assert stored_runs(cli) == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(folder: Path) -> dict[str, int]:
    return {path.name: mode(path) for path in folder.iterdir()}


def on_the_default_state_file(cli: Cli, *args: str) -> subprocess.Popen[str]:
    """A command on state/cftrunner.db in its working directory, under the usual umask, which
    alone would let everyone read what it creates."""
    return processes.popen(cli.command(*args), env={**cli.env, "CFTRUNNER_DB": ""},
                           cwd=cli.tmp_path, umask=0o022, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str]) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


@pytest.mark.sqlite_only
def test_the_state_folder_cftrunner_creates_is_the_owners_alone(cli: Cli) -> None:
    started = on_the_default_state_file(cli, *cli.start_args("first"))
    finished(started)
    assert mode(cli.tmp_path / "state") == 0o700


@pytest.mark.sqlite_only
def test_every_state_file_is_the_owners_alone_while_a_run_writes(cli: Cli,
                                                                 sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold"))
    run = on_the_default_state_file(cli, *cli.start_args("private"))
    deadline = time.monotonic() + 60
    while "trace_create" not in sandbox.counts()["requests"]:
        assert time.monotonic() < deadline and run.poll() is None, "the run never reached a trace"
        time.sleep(0.05)
    during = modes(cli.tmp_path / "state")
    sandbox.release_holds()
    finished(run)
    assert {"cftrunner.db", "cftrunner.db-wal", "cftrunner.db-shm"} <= set(during)
    assert set(during.values()) == {0o600}


@pytest.mark.sqlite_only
def test_every_state_file_is_the_owners_alone_after_a_run(cli: Cli) -> None:
    run = on_the_default_state_file(cli, *cli.start_args("private"))
    finished(run)
    after = modes(cli.tmp_path / "state")
    assert "cftrunner.db" in after and set(after.values()) == {0o600}


@pytest.mark.sqlite_only
def test_a_state_file_the_user_made_keeps_its_permissions(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o750)
    made = tmp_path / "state" / "cftrunner.db"
    made.touch()
    made.chmod(0o640)
    status = on_the_default_state_file(cli, "status")
    finished(status)
    assert mode(made) == 0o640 and mode(tmp_path / "state") == 0o750
