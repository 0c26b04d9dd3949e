"""A webhook receiver for tests: a real HTTP server on localhost that keeps every POST and answers as told."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

HANG = "hang"  # answer nothing until the receiver stops: the sender's timeout ends it


@dataclass(frozen=True)
class Received:
    """One POST: its path, headers, raw body, and the status it was answered with (None: none)."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records each request; answers each with the next of `answers` (a status, or HANG), then
    200. `stop()` closes its port (a connection is then refused) and `start()` opens it again."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: list[int | str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        """The webhook: its path is the kind of secret a chat's incoming webhook has."""
        return f"http://127.0.0.1:{self.port}/services/T000/B000/s3cr3t-path"

    @property
    def delivered(self) -> list[Any]:
        """The JSON bodies of the POSTs answered with a 2xx, in order."""
        return [r.json for r in self.requests if r.status is not None and 200 <= r.status < 300]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                status = None if answer == HANG else int(answer)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body, status))
                if status is None:
                    receiver._release.wait(60)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for one in made:
        one.stop()
