"""A state database that cannot be used is its own exit status (65), apart from one a retry may
fix (3): real processes on real files, which are left as they were."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner.sandbox import Sandbox
from cftrunner.store import Store
from tests.acceptance.test_cli import one_error_line
from tests.conftest import Cli, make_run, requests_sent


def directory(path: Path) -> None:
    path.mkdir()


def text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(15).randbytes(16384))


def corrupt_database(path: Path) -> None:
    """A real state database whose every page but the first is overwritten."""
    store = Store(f"sqlite:///{path}")
    store.create_run(make_run(), ["a", "b"])
    store.close()
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(random.Random(15).randbytes(size - 4096))


UNUSABLE: dict[str, Callable[[Path], None]] = {
    "directory": directory, "text": text_file, "random": random_bytes,
    "corrupt": corrupt_database}
REASONS = {"directory": "it is a directory", "text": "file is not a database",
           "random": "file is not a database", "corrupt": "database disk image is malformed"}


def command(cli: Cli, name: str) -> list[str]:
    return ["status"] if name == "status" else cli.start_args("refused")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under the folder and its bytes (None for a folder)."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


@pytest.mark.sqlite_only
@pytest.mark.parametrize("name", ["status", "start"])
@pytest.mark.parametrize("case", UNUSABLE)
def test_an_unusable_state_file_is_exit_65_with_one_line_naming_it(cli: Cli, tmp_path: Path,
                                                                    case: str, name: str) -> None:
    path = tmp_path / "state" / "cftrunner.db"
    path.parent.mkdir()
    UNUSABLE[case](path)
    result = cli.run("--db", f"sqlite:///{path}", *command(cli, name))
    assert result.returncode == 65, result.stderr
    assert one_error_line(result) == (f"cftrunner: error: the state database {path} cannot be "
                                      f"used: {REASONS[case]}")


@pytest.mark.sqlite_only
@pytest.mark.parametrize("name", ["status", "start"])
@pytest.mark.parametrize("case", UNUSABLE)
def test_an_unusable_state_file_is_left_as_it_was(cli: Cli, sandbox: Sandbox, tmp_path: Path,
                                                  case: str, name: str) -> None:
    path = tmp_path / "state" / "cftrunner.db"
    path.parent.mkdir()
    UNUSABLE[case](path)
    before = snapshot(path.parent)
    cli.run("--db", f"sqlite:///{path}", *command(cli, name))
    assert snapshot(path.parent) == before
    assert requests_sent(sandbox) == 0


def test_a_postgresql_server_that_cannot_be_reached_is_worth_a_retry(cli: Cli) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = cli.run("--db", f"postgresql://postgres@127.0.0.1:{port}/test", "status")
    assert result.returncode == 3
    assert "Connection refused" in one_error_line(result)
