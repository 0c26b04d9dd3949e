"""The sandbox's HTTP layer: auth, rate limit, latency, faults, control endpoints, writing answers."""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cftrunner.sandbox import catalog, chat, fields, llm, routes
from cftrunner.sandbox.faults import FaultBook, FaultRule, Request
from cftrunner.sandbox.ratelimit import RateLimit, retry_after_text
from cftrunner.sandbox.routes import Call, Reply, error, ok
from cftrunner.sandbox.serving import LoadPlan
from cftrunner.sandbox.training import TrainingPlan
from cftrunner.sandbox.world import World


@dataclass(frozen=True)
class Backend:
    """Everything a request handler needs; the api_key is only ever compared, never shown."""

    world: World
    faults: FaultBook
    api_key: str | None = field(repr=False)
    latency: float = 0.0
    limit: RateLimit = field(default_factory=RateLimit)


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


def control(backend: Backend, method: str, path: str, body: bytes) -> Reply:
    """The /_sandbox/ endpoints: no auth, no rate limit, no latency, no faults, not counted."""
    world, faults = backend.world, backend.faults
    if (method, path) == ("GET", "/_sandbox/counts"):
        return ok(world.counts())
    if (method, path) == ("GET", "/_sandbox/state"):
        return ok({**world.dump(), "faults": [rule.to_json() for rule in faults.rules()],
                   "rate_limit": backend.limit.to_json(),
                   "structured_output": _structured_output(world)})
    if (method, path) == ("GET", "/_sandbox/training"):
        return ok(world.settings.training().to_json())
    if (method, path) == ("PUT", "/_sandbox/training"):
        try:
            world.set_training(**TrainingPlan.parse_update(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(world.settings.training().to_json())
    if (method, path) == ("GET", "/_sandbox/model-loading"):
        return ok(world.serving_state())
    if (method, path) == ("PUT", "/_sandbox/model-loading"):
        try:
            world.set_model_loading(LoadPlan.parse(fields.decode(body)))
        except (ValueError, TypeError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(world.serving_state())
    if (method, path) == ("GET", "/_sandbox/structured-output"):
        return ok(_structured_output(world))
    if (method, path) == ("PUT", "/_sandbox/structured-output"):
        try:
            world.set_structured_output(_parse_structured_output(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(_structured_output(world))
    if (method, path) == ("PUT", "/_sandbox/list-lag"):
        try:
            world.set_list_lag(*_parse_list_lag(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(_list_lag(world))
    if (method, path) == ("GET", "/_sandbox/list-lag"):
        return ok(_list_lag(world))
    if (method, path) == ("GET", "/_sandbox/rate-limit"):
        return ok(backend.limit.to_json())
    if (method, path) == ("PUT", "/_sandbox/rate-limit"):
        try:
            backend.limit.configure(*RateLimit.parse(fields.decode(body)))
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok(backend.limit.to_json())
    if (method, path) == ("GET", "/_sandbox/faults"):
        return ok({"faults": [rule.to_json() for rule in faults.rules()]})
    if (method, path) == ("DELETE", "/_sandbox/faults"):
        return ok({"cleared": faults.clear()})
    if (method, path) == ("POST", "/_sandbox/faults/release"):
        faults.release()
        return ok({"released": True})
    if (method, path) == ("POST", "/_sandbox/faults"):
        try:
            rule = FaultRule.from_json(fields.decode(body))
            faults.add(rule)
        except (ValueError, fields.Invalid) as exc:
            return error(400, str(exc))
        return ok({"added": rule.to_json(), "faults": len(faults.rules())})
    return error(404, f"no such control endpoint: {method} {path}")


def _structured_output(world: World) -> dict[str, bool]:
    return {"enabled": world.settings.structured_output}


def _parse_structured_output(data: object) -> bool:
    """`enabled` from a control request's {"enabled": true or false}; ValueError otherwise."""
    if not isinstance(data, dict) or set(data) != {"enabled"} or not isinstance(data["enabled"], bool):
        raise ValueError('structured output is {"enabled": true or false}')
    return data["enabled"]


def _list_lag(world: World) -> dict[str, Any]:
    return {"seconds": world.settings.list_lag, "uneven": world.settings.list_lag_uneven}


def _parse_list_lag(data: object) -> tuple[float, bool]:
    """(seconds, uneven) from {"seconds": 20, "uneven": false}; ValueError otherwise."""
    if not isinstance(data, dict) or not set(data) <= {"seconds", "uneven"} or "seconds" not in data:
        raise ValueError('list lag is {"seconds": N, "uneven": true or false}')
    seconds, uneven = data["seconds"], data.get("uneven", False)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError("seconds must be a number, at least 0")
    if not isinstance(uneven, bool):
        raise ValueError("uneven must be true or false")
    return float(seconds), uneven
