"""The sandbox's HTTP layer: auth, rate limit, latency, faults, and writing answers."""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cftrunner.sandbox import catalog, chat, llm, routes
from cftrunner.sandbox.control import Backend, control
from cftrunner.sandbox.faults import FaultBook, FaultRule, Request
from cftrunner.sandbox.ratelimit import retry_after_text
from cftrunner.sandbox.routes import Call, Reply, error


class SandboxServer(ThreadingHTTPServer):
    """A threading HTTP server that can cut its open keep-alive connections when it stops."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Backend, *, verbose: bool = False):
        self.backend = backend
        self.verbose = verbose
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, SandboxHandler)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            if is_open:
                self._open.add(connection)
            else:
                self._open.discard(connection)

    def close_connections(self) -> None:
        """Without this, a handler thread would keep serving a pooled connection after stop()."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (e.g. on a "late" fault) is normal here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SandboxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each answer waits ~40 ms for an ACK.
    disable_nagle_algorithm = True
    server_version = "PremSandbox/1"
    sys_version = ""
    server: SandboxServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        self.server.backend.world.ledger.connected()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        backend = self.server.backend
        parts = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        if parts.path.startswith("/_sandbox/"):
            self._reply(control(backend, self.command, parts.path, body))
            return
        found = routes.resolve(self.command, parts.path)
        if isinstance(found, Reply):
            self._reply(found)
            return
        route, params = found
        backend.world.ledger.received(route.name)
        try:
            self._serve(backend, route, params, parts.query, body)
        finally:
            backend.world.ledger.answered()

    def _serve(self, backend: Backend, route: routes.Route, params: dict[str, str], query: str,
               body: bytes) -> None:
        if not self._authorized(backend.api_key):
            self._reply(error(401, "missing or invalid API key"))
            return
        if not self._admitted(backend, route.name):
            return
        if backend.latency > 0:
            time.sleep(backend.latency)
        judge = None
        if route.name == "chat":
            judge = routes.is_judge_call(body, backend.world.settings.judge_models)
        call = Call(params, dict(parse_qsl(query, keep_blank_values=True)), body)
        rule = backend.faults.select(Request(route.name, body, judge))
        if rule is None:
            self._reply(routes.dispatch(route, backend.world, call))
            return
        backend.world.ledger.faulted(rule.kind)
        if rule.kind == "status" and not rule.after_action:
            self._reply(_status_reply(rule))
            return
        if rule.kind == "latency":
            time.sleep(rule.delay)
        elif rule.kind == "hold":
            backend.faults.wait_released(rule.delay or None)
        reply = routes.dispatch(route, backend.world, call)
        if rule.kind == "status":
            self._reply(_status_reply(rule))
        elif rule.kind == "drop":
            self._drop()
        elif rule.kind == "late":
            time.sleep(rule.delay)
            self._reply(reply)
        elif rule.kind == "malformed":
            self._malformed(reply, bool(judge), backend.faults)
        elif rule.kind == "truncated":
            self._truncated(reply, route.name == "chat")
        elif rule.kind == "no_content" and route.name == "chat" and reply.status == 200:
            self._reply(Reply(200, chat.no_content(reply.payload)))
        elif rule.kind == "lora_flag" and route.name == "recs_get" and reply.status == 200:
            self._reply(Reply(200, catalog.older(reply.payload)))
        elif rule.kind == "advise":
            advised = rule.retry_after_header() or "0"
            self._reply(Reply(reply.status, reply.payload, (*reply.headers,
                                                             ("Retry-After", advised))))
        else:
            self._reply(reply)

    def _admitted(self, backend: Backend, route: str) -> bool:
        """False after answering 429 to a request beyond the rate limit, which is not acted on."""
        now = time.monotonic()
        wait = backend.limit.take(now)
        if wait is None:
            return True
        if wait == 0.0:
            backend.world.ledger.admitted(now, route)
            return True
        backend.world.ledger.rate_limited()
        message = f"rate limit: {backend.limit.rps:g} requests per second"
        self._reply(Reply(429, {"error": message}, (("Retry-After", retry_after_text(wait)),)))
        return False

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a request whose body cannot be framed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._reply(error(411, "send the body with a Content-Length"))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._reply(error(400, "invalid Content-Length"))
            return None
        return self.rfile.read(length)

    def _authorized(self, api_key: str | None) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        return api_key is None or hmac.compare_digest(token.encode(), api_key.encode())

    def _malformed(self, reply: Reply, judge: bool, faults: FaultBook) -> None:
        if judge and reply.status == 200:
            payload = copy.deepcopy(reply.payload)
            payload["choices"][0]["message"]["content"] = llm.malformed_judgment(
                faults.next_malformed()
            )
            self._reply(Reply(200, payload))
            return
        self._half_body(reply)

    def _truncated(self, reply: Reply, chat_call: bool) -> None:
        if chat_call and reply.status == 200:
            self._reply(Reply(200, chat.truncated(reply.payload)))
            return
        self._half_body(reply)

    def _half_body(self, reply: Reply) -> None:
        data = json.dumps(reply.payload).encode("utf-8")
        self._send(reply.status, data[: len(data) // 2])

    def _drop(self) -> None:
        """Close without a byte of answer, so the client sees the connection end early."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, reply: Reply) -> None:
        self._send(reply.status, json.dumps(reply.payload).encode("utf-8"), reply.headers)

    def _send(self, status: int, data: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def _status_reply(rule: FaultRule) -> Reply:
    header = rule.retry_after_header()
    headers = (("Retry-After", header),) if header is not None else ()
    return Reply(rule.status, {"error": f"sandbox fault: status {rule.status}"}, headers)
