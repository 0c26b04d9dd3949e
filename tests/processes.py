"""`python -m cftrunner` processes for the tests, forked from a server that has imported cftrunner
(tests/forkserver.py) rather than started from a fresh interpreter each time.

`popen` and `run` take the arguments of `subprocess.Popen` and `subprocess.run` that the tests
use and answer objects that behave the same: a pid to signal, stdin/stdout/stderr pipes, `poll`,
`wait`, `communicate` with timeouts, and the returncode, negative for a signal. A command is run
by a fresh interpreter instead when it is not `python -m cftrunner`, when its environment changes
how the interpreter starts (a PYTHON* or locale variable the server did not start with), or when
CFTRUNNER_TEST_FORKS=0. The tests that are about the interpreter's own start (the entry point, a
terminal, memory) start theirs with subprocess directly."""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

SERVER = Path(__file__).with_name("forkserver.py")
PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
# Read by the interpreter as it starts, so a child forked from the server cannot take them.
STARTUP_KEYS = ("LANG", "LC_ALL", "LC_CTYPE")


def forking() -> bool:
    return os.environ.get("CFTRUNNER_TEST_FORKS", "1") != "0"


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in STARTUP_KEYS}


class _Server:
    """One fork server per test process, started at its first command."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="cft-fork-")  # a short path: AF_UNIX allows 108
        self.path = os.path.join(self.folder, "socket")
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(SERVER), self.path], env=self.env,
                                     stdin=DEVNULL, stdout=PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the fork server did not start: {ready!r}")
        atexit.register(self.close)

    def takes(self, args: list[str], env: dict[str, str]) -> bool:
        return (list(args[:3]) == [sys.executable, "-m", "cftrunner"]
                and _startup_env(env) == _startup_env(self.env))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.folder)


_server: _Server | None = None
_server_lock = threading.Lock()


def _the_server() -> _Server:
    global _server
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _Server()
        return _server


class Forked:
    """A command run by a child of the fork server, with the interface of subprocess.Popen."""

    def __init__(self, server: _Server, args: list[str], *, env: dict[str, str], cwd: str,
                 stdin: Any, stdout: Any, stderr: Any, text: bool, umask: int) -> None:
        self.args = args
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self._text = text
        self._readers: list[threading.Thread] | None = None
        self._read: dict[str, Any] = {}
        theirs: list[int] = []
        close_after: list[int] = []
        for index, (spec, name) in enumerate(((stdin, "stdin"), (stdout, "stdout"),
                                              (stderr, "stderr"))):
            if spec == STDOUT:
                theirs.append(theirs[1])
            elif spec == PIPE:
                read_end, write_end = os.pipe()
                mine, child = (write_end, read_end) if index == 0 else (read_end, write_end)
                setattr(self, name, self._wrap(mine, "w" if index == 0 else "r"))
                theirs.append(child)
                close_after.append(child)
            elif spec == DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                theirs.append(fd)
                close_after.append(fd)
            elif spec is None:
                theirs.append(index)
            else:
                theirs.append(spec if isinstance(spec, int) else spec.fileno())
        request = {"args": args[3:], "env": env, "cwd": cwd,
                   "umask": umask if umask >= 0 else _current_umask()}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._conn.connect(server.path)
            socket.send_fds(self._conn, [json.dumps(request).encode()], theirs)
        finally:
            for fd in close_after:
                os.close(fd)
        self._conn.settimeout(60)
        self.pid: int = json.loads(self._conn.recv(4096))["pid"]

    def _wrap(self, fd: int, mode: str) -> IO[Any]:
        if self._text:
            return open(fd, mode, encoding=locale.getpreferredencoding(False))
        return open(fd, mode + "b")

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(0)
            with contextlib.suppress(BlockingIOError):
                self._ended(self._conn.recv(4096))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self._ended(self._conn.recv(4096))
            except (TimeoutError, BlockingIOError):  # the latter for a timeout of 0
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        assert self.returncode is not None
        return self.returncode

    def _ended(self, message: bytes) -> None:
        if not message:
            raise RuntimeError(f"the fork server went away while {self.pid} ran")
        self.returncode = os.waitstatus_to_exitcode(json.loads(message)["status"])
        self._conn.close()

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        if self._readers is None:
            self._readers = []
            for name in ("stdout", "stderr"):
                stream = getattr(self, name)
                if stream is not None:
                    self._readers.append(self._reader(name, stream))
            if self.stdin is not None:
                self._readers.append(self._writer(self.stdin, input))
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._readers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._read.get("stdout"), self._read.get("stderr")

    def _reader(self, name: str, stream: IO[Any]) -> threading.Thread:
        def read() -> None:
            with contextlib.suppress(ValueError):  # closed by the test before
                self._read[name] = stream.read()
            stream.close()
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def _writer(self, stream: IO[Any], data: Any) -> threading.Thread:
        def write() -> None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                if data:
                    stream.write(data)
                stream.close()
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        return thread

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *_: object) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self.wait()


def _current_umask() -> int:
    """This process's umask, read without setting it (os.umask would, for every thread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


def popen(args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
          stdin: Any = None, stdout: Any = None, stderr: Any = None, text: bool = False,
          umask: int = -1) -> Any:
    """subprocess.Popen(args, ...), forked from the server when it can be."""
    env = dict(os.environ if env is None else env)
    if forking():
        server = _the_server()
        if server.takes(args, env):
            return Forked(server, list(args), env=env, cwd=str(cwd or os.getcwd()), stdin=stdin,
                          stdout=stdout, stderr=stderr, text=text, umask=umask)
    return subprocess.Popen(args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                            text=text, umask=umask)


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        input: Any = None, capture_output: bool = False, text: bool = False,
        timeout: float | None = None, stdin: Any = None) -> subprocess.CompletedProcess[Any]:
    """subprocess.run(args, ...), forked from the server when it can be."""
    if input is not None:
        stdin = PIPE
    out = PIPE if capture_output else None
    with popen(args, env=env, cwd=cwd, stdin=stdin, stdout=out, stderr=out, text=text) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
