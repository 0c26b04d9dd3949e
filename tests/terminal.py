"""A real process on a pseudo-terminal, read as it draws, and the summary a run ends with: what people see."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A log line as text: "2026-12-06T16:46:35.026431Z [warning  ] preflight ..."
LOGGED = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[(\w+)\s*\] (\w+)")


class Terminal:
    """`command` run with stderr (and stdout too, with `stdout_too`) on a pseudo-terminal."""

    def __init__(self, command: Sequence[str], cwd: Any, env: dict[str, str],
                 stdout_too: bool = False) -> None:
        self._primary, secondary = os.openpty()
        self.proc = subprocess.Popen(
            list(command), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=secondary if stdout_too else subprocess.PIPE, stderr=secondary, text=True,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "160"})
        os.close(secondary)
        self._received = bytearray()
        self._closed = False

    def lines(self) -> list[str]:
        """Every line drawn so far, without colours and cursor moves; each frame's lines again."""
        text = ANSI.sub("", self._received.decode(errors="replace"))
        return [line.rstrip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]

    def read_until(self, seen: Callable[[list[str]], bool], timeout: float = 60) -> list[str]:
        """Read until `seen` holds for the lines drawn, or the terminal closes (then it fails)."""
        deadline = time.monotonic() + timeout
        while not seen(self.lines()):
            assert not self._closed and time.monotonic() < deadline, "\n".join(self.lines()[-30:])
            self._read_some()
        return self.lines()

    def finish(self, timeout: float = 90) -> tuple[int, str, list[str]]:
        """Read to the end: the exit status, stdout (when it was a pipe), every line drawn."""
        deadline = time.monotonic() + timeout
        while not self._closed and time.monotonic() < deadline:
            self._read_some()
        os.close(self._primary)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out or "", self.lines()

    def _read_some(self) -> None:
        if select.select([self._primary], [], [], 0.1)[0]:
            try:
                chunk = os.read(self._primary, 65536)
            except OSError:  # EIO: every writer closed the terminal
                chunk = b""
            self._received += chunk
            self._closed = not chunk


def logged(lines: list[str]) -> list[tuple[str, str]]:
    """(level, event) of each log line drawn as text."""
    return [(m.group(1), m.group(2)) for line in lines if (m := LOGGED.match(line))]


def tally_lines(lines: list[str]) -> list[str]:
    """The display's lines about the log lines it kept off the terminal."""
    return [line for line in lines if line.startswith("log: ")]


def summary(lines: list[str]) -> dict[str, str]:
    """The summary's lines after the run's line, by label."""
    found = {}
    for line in lines:
        if m := re.match(r"  (items|failures|mean score|job|report) +(.+)$", line):
            found[m.group(1)] = m.group(2)
    return found


def assert_summary_is_the_status(said: dict[str, str], status: dict[str, Any]) -> None:
    """Each figure of the summary (`summary`) is the one `status --json RUN` shows."""
    items, gate = status["items"], status["gate"]
    failed = sum(n for stage, n in items.items() if stage.endswith("_FAILED"))
    assert said["items"] == f"{items['total']}: {items['ADDED']} added, {failed} failed"
    assert said["mean score"] == (f"{gate['mean_score']:.3f} over {gate['traces_added']} added, "
                                  f"{gate['below_threshold']} below "
                                  f"{gate['config']['score_threshold']:g}")
    assert said["job"] == status["job_id"]
    kinds = dict(kind.rsplit(" ", 1) for kind in said.get("failures", "").split(", ") if kind)
    assert {kind: int(n) for kind, n in kinds.items()} == status["failures"]
