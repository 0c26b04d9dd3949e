"""The fork server behind the tests' `cftrunner` processes (tests/processes.py starts it).

It imports cftrunner and the libraries its commands use once, then forks a child for each command
it is sent, as Mercurial's test suite does with chg: the child is a real process, with its own pid,
files and sockets, killed by real signals, its exit status the kernel's, but it skips the
interpreter's start and the imports, some 0.45 s of CPU of the 0.55 s an average test process
takes. A request is one SOCK_SEQPACKET message, the command's argv, environment, working folder
and umask in JSON with its stdin, stdout and stderr attached; the answer is the child's pid, then,
when the child has been reaped, its wait status. The server is single-threaded, so that a fork
never copies a lock another thread holds, and exits when the process that started it is gone."""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

# Everything a command may import, so that no child pays for an import the next one needs too.
PRELOAD = (
    "cftrunner.cli", "cftrunner.service", "cftrunner.service.items", "cftrunner.service.reports",
    "cftrunner.service.prune", "cftrunner.service.scaffold", "cftrunner.service.afterwards",
    "cftrunner.service.notify", "cftrunner.logs", "cftrunner.api", "cftrunner.views.live",
    "cftrunner.views.progress", "cftrunner.views.tables", "cftrunner.views.items",
    "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql", "psycopg", "requests",
    "structlog", "rich.console", "rich.table", "rich.live", "tomllib",
)


def preload() -> None:
    gc.disable()
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # What was imported stays out of the collector's reach, so that a child's collections do
    # not write to (and so copy) every page it shares with the server.
    gc.freeze()


def serve(path: str) -> dict[str, Any]:
    """Answer requests until the parent is gone (then exit); in a forked child, return its
    request, with its stdio in place."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(128)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                if len(fds) != 3 or not message:  # a client gone before asking: not a command
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    gc.enable()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    for other in (listener, conn, *waiting.values()):
                        other.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                    for fd in fds:
                        os.close(fd)
                    return request
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"pid": pid}).encode())
                waiting[pid] = conn
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        _reap(waiting)
        if os.getppid() != parent:
            sys.exit(0)


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"status": status}).encode())
            conn.close()


def become(request: dict[str, Any]) -> None:
    """Turn this child into `python -m cftrunner ARGS` run in the request's folder and environment."""
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # as `python -m` puts the working folder first
    sys.argv = ["-m", *request["args"]]


def run_and_exit() -> NoReturn:
    """Run `cftrunner.__main__` and end as the interpreter would (its threads joined, its atexit
    functions run, stdout and stderr flushed, the exit status of SystemExit or 1 for an error),
    but without tearing down the modules: that would write to every page shared with the server,
    copying them all, some 0.25 s a process."""
    try:
        runpy.run_module("cftrunner", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports it
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            code = 120  # as Python exits when it cannot flush them
    os._exit(code)


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    preload()
    become(serve(sys.argv[1]))
    run_and_exit()
