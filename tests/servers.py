"""A stand-in API server over real HTTP for what the sandbox never does: echo a request's headers
back in its error bodies."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from types import TracebackType


def echo_authorization(authorization: str) -> str:
    return f"bad request, got Authorization: {authorization}"


class EchoingServer:
    """Answers every request with `status` and `{"error": said(the Authorization header)}`."""

    def __init__(self, status: int, said: Callable[[str], str] = echo_authorization) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": said(self.headers.get("Authorization", ""))}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server naming

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> EchoingServer:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
