"""The files cftrunner reads and writes, by real processes: the key file, and who may read the
state file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cftrunner.sandbox import DEFAULT_API_KEY
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
