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


# The answers that let a run be created: by the request path without its last part.
PASSING: dict[str, object] = {
    "/api/v1/public/projects": {"project": {"id": "p", "type": "project", "children": [
        {"id": "d", "type": "dataset", "children": []}]}},
    "/api/v1": {"object": "list", "data": []},  # GET /api/v1/models
}


class EchoingServer:
    """Answers every request with `status` and `{"error": said(the Authorization header)}`."""

    def __init__(self, status: int, said: Callable[[str], str] = echo_authorization,
                 checks_pass: bool = False) -> None:
        """With `checks_pass`, the reads cftrunner makes before creating a run (the project tree,
        the models list) are answered as a project with a dataset would be, so that a run is
        created and the refusals come after."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                passed = PASSING.get(self.path.split("?")[0].rsplit("/", 1)[0]) \
                    if checks_pass and self.command == "GET" else None
                if passed is not None:
                    body, code = json.dumps(passed).encode(), 200
                else:
                    code = status
                    body = json.dumps({"error": said(self.headers.get("Authorization", ""))}
                                      ).encode()
                self.send_response(code)
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
