"""The tests' `cftrunner` processes forked from a server (tests/processes.py) behave as ones started
from a fresh interpreter: each its own process, killed by a real SIGKILL, with its own
environment, folder and umask, the same output and the same exit status."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes

COMMAND = [sys.executable, "-m", "cftrunner"]


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))}


def both(monkeypatch: pytest.MonkeyPatch, *args: str, **options: object) -> list[tuple]:
    """The command's (exit status, stdout, stderr) forked, then from a fresh interpreter."""
    results = []
    for forks in ("1", "0"):
        monkeypatch.setenv("CFTRUNNER_TEST_FORKS", forks)
        done = processes.run([*COMMAND, *args], capture_output=True, text=True, timeout=60,
                             **options)  # type: ignore[arg-type]
        results.append((done.returncode, done.stdout, done.stderr))
    return results


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_a_forked_command_prints_and_exits_as_a_fresh_interpreter_does(
        monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str], tmp_path: Path) -> None:
    version, missing = (both(monkeypatch, *args, env=bare_env, cwd=tmp_path)
                        for args in (["--version"], ["status", "--json"]))
    assert version[0] == version[1] and version[0][0] == 0 and "cftrunner" in version[0][1]
    # A usage error: exit 2 and one line on stderr naming the state file in the working folder.
    assert missing[0] == missing[1]
    assert missing[0][0] == 2 and f"{tmp_path}/state/cftrunner.db" in missing[0][2]


def test_each_command_is_a_child_of_the_server_of_its_own_ended_by_a_real_sigkill(
        monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str], tmp_path: Path) -> None:
    monkeypatch.setenv("CFTRUNNER_TEST_FORKS", "1")
    spawned = [processes.popen([*COMMAND, "sandbox", "--port", "0"], env=bare_env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        assert all(isinstance(proc, processes.Forked) for proc in spawned)
        assert all(proc.stdout.readline().startswith("Prem sandbox on http://") for proc in spawned)
        server = processes._the_server().proc.pid
        assert [parent_of(proc.pid) for proc in spawned] == [server, server]
        assert len({proc.pid for proc in spawned} | {os.getpid(), server}) == 4
        assert spawned[0].poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            spawned[0].wait(timeout=0)
        with pytest.raises(subprocess.TimeoutExpired):
            spawned[0].communicate(timeout=0.05)
        spawned[0].send_signal(signal.SIGKILL)
        assert spawned[0].wait(timeout=30) == -signal.SIGKILL
        assert spawned[1].poll() is None  # the other goes on
        spawned[1].terminate()
        assert spawned[1].wait(timeout=30) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        for proc in spawned:
            proc.kill()
            proc.communicate(timeout=30)


def test_the_environment_and_umask_are_the_commands_own(
        monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str], tmp_path: Path) -> None:
    modes = {}
    for mask in (0o022, 0o077):
        for forks in ("1", "0"):
            monkeypatch.setenv("CFTRUNNER_TEST_FORKS", forks)
            folder = tmp_path / f"{mask:o}-{forks}"
            proc = processes.popen([*COMMAND, "init", str(folder)], umask=mask, cwd=tmp_path,
                                   env={**bare_env, "CFTRUNNER_DB": f"sqlite:///{folder}/x.db"},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            modes[mask, forks] = stat.S_IMODE((folder / "prompts.json").stat().st_mode)
            looked = processes.run([*COMMAND, "status"], capture_output=True, text=True,
                                   env={**bare_env, "CFTRUNNER_DB": f"sqlite:///{folder}/x.db"})
            assert looked.returncode == 2 and f"{folder}/x.db" in looked.stderr
    assert modes == {(0o022, "1"): 0o644, (0o022, "0"): 0o644,
                     (0o077, "1"): 0o600, (0o077, "0"): 0o600}


def test_a_command_whose_environment_changes_how_python_starts_gets_a_fresh_interpreter(
        monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str], tmp_path: Path) -> None:
    monkeypatch.setenv("CFTRUNNER_TEST_FORKS", "1")
    for env, fresh in (({}, False), ({"PYTHONPATH": str(tmp_path)}, True),
                       ({"LC_ALL": "C"}, True)):
        proc = processes.popen([*COMMAND, "--version"], env={**bare_env, **env},
                               stdout=subprocess.PIPE, text=True)
        proc.communicate(timeout=60)
        assert (type(proc) is subprocess.Popen) == fresh and proc.returncode == 0


def test_a_variable_the_server_has_and_the_command_does_not_is_not_the_commands(
        monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str], tmp_path: Path) -> None:
    monkeypatch.setenv("CFTRUNNER_DB", f"sqlite:///{tmp_path}/the-servers.db")
    server = processes._Server()
    try:
        proc = processes.Forked(server, [*COMMAND, "status"], env=bare_env, cwd=str(tmp_path),
                                stdin=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, umask=0o022)
        _, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 2 and f"{tmp_path}/state/cftrunner.db" in err, err


def test_a_client_gone_before_asking_leaves_the_server_serving(
        bare_env: dict[str, str], tmp_path: Path) -> None:
    server = processes._Server()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as gone:
            gone.connect(server.path)  # and closed without a request
        proc = processes.Forked(server, [*COMMAND, "--version"], env=bare_env, cwd=str(tmp_path),
                                stdin=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, umask=0o022)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "cftrunner" in out and server.proc.poll() is None
    finally:
        server.close()
