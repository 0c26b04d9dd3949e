"""The Prem API over HTTP; the one place where HTTP failures become cftrunner errors."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import requests
import structlog
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from cftrunner import logs
from cftrunner.connections import one_write
from cftrunner.exceptions import (
    AuthError,
    BadResponseError,
    RejectedError,
    TransientError,
)
from cftrunner.limiter import RateLimiter
from cftrunner.payloads import bodies, finetuning, replies
from cftrunner.payloads.finetuning import Recommendations, RemoteJob, RemoteSnapshot
from cftrunner.payloads.replies import AddResult, ChatResult, RemoteTrace
from cftrunner.retry import parse_retry_after

log = structlog.get_logger("cftrunner")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0


def _failure(exc: Exception) -> tuple[bool, str]:
    """Of a request that failed in transport: whether the server surely never saw it (the
    connection was never made), and what happened, in a few words."""
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError | ConnectionRefusedError):
        return True, "could not connect"  # NewConnectionError included: it is a ConnectTimeoutError
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return False, "timed out"
    return False, "connection lost"


class Transport(Protocol):
    """What requests go through: the urllib3 pool for the API's host (a test may wrap it)."""

    def urlopen(self, method: str, url: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, **options: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole."""

    status: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


REDACTED = "[redacted]"
# A token after "Bearer", whatever it is: a server may echo a header that holds another key.
_BEARER = re.compile(r"\b(bearer)\s+[^\s\"',;]+", re.IGNORECASE)


def redact(text: str, api_key: str) -> str:
    """`text` from the server without the key and without any bearer token in it."""
    if api_key:
        text = text.replace(api_key, REDACTED)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def _error_message(resp: Answer, api_key: str) -> str:
    """What the server said of its refusal, redacted before it is cut: a cut key may not match."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    said = resp.reason or ""
    if isinstance(body, dict):
        said = next((str(body[key]) for key in ("error", "message", "detail")
                     if isinstance(body.get(key), str)), said)
    return redact(said, api_key)[:300]


class PremClient:
    """The API's endpoints over one pool of connections.

    It pools `connections` connections, by default one per request in flight (at least 10).
    With `in_flight`, at most that many requests are out at once, however many threads ask:
    threads beyond it wait for a slot, so a thread storing what it got leaves its slot to another
    thread's request meanwhile. `before_send` is called once a request has its slot and its turn,
    just before it goes out; whatever it raises, the request was not sent.

    requests decides how the API is reached: its proxy (the proxy variables, NO_PROXY), the CA
    bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's), read once, here. Each request then
    goes straight to the urllib3 pool requests' adapter made for the API's host, as the adapter
    itself sends it, without building a requests.Request and Response around it: that wrapping
    (preparing, hooks, cookies, a Response whose headers are copied) was two fifths of a
    request's CPU, and cftrunner uses none of it."""

    def __init__(self, base_url: str, api_key: str, timeouts: Timeouts | None = None,
                 connections: int | None = None, limiter: RateLimiter | None = None,
                 in_flight: int | None = None,
                 before_send: Callable[[], object] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeouts = timeouts or Timeouts()
        self.limiter = limiter or RateLimiter()
        self._advised = threading.local()  # a successful answer's Retry-After (advised_wait)
        self._slots: AbstractContextManager[object] = (
            threading.BoundedSemaphore(in_flight) if in_flight else contextlib.nullcontext())
        self._before_send = before_send
        self._timeout = urllib3.Timeout(connect=self.timeouts.connect, read=self.timeouts.read)
        session = requests.Session()
        # The environment is read once; a ~/.netrc entry never replaces the Authorization header.
        env = session.merge_environment_settings(self.base_url, {}, None, None, None)
        session.close()
        proxies, verify = env["proxies"] or {}, env["verify"]
        # urllib3 must never resend on its own: a resent POST is exactly the duplicate to avoid.
        # A pooled connection per request in flight keeps connections reused, not reopened.
        self._adapter = HTTPAdapter(max_retries=0, pool_connections=1,
                                    pool_maxsize=max(10, connections or in_flight or 0))
        probe = requests.Request("GET", self.base_url + "/").prepare()
        pool = self._adapter.get_connection_with_tls_context(probe, verify, proxies=proxies)
        assert isinstance(pool, urllib3.HTTPConnectionPool)  # HTTPS's is one too
        self._adapter.cert_verify(pool, self.base_url, verify, None)  # type: ignore[no-untyped-call]
        # The pool adds a proxy's own headers (Proxy-Authorization) to each request itself.
        pool.ConnectionCls = one_write(pool.ConnectionCls)  # see connections.py
        self.transport: Transport = pool
        # The base URL's path, or the whole URL when an HTTP proxy is asked for it.
        self._prefix = self._adapter.request_url(probe, proxies)[:-1]
        # Not requests' Accept and Connection (what HTTP/1.1 means anyway): each costs CPU.
        self._headers: dict[str, str] = {
            "Accept-Encoding": str(session.headers["Accept-Encoding"]),
            "Authorization": f"Bearer {api_key}", "User-Agent": "cftrunner"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    def advised_wait(self) -> float | None:
        """The Retry-After of the last successful answer this thread got, if it had one; read
        once."""
        seconds, self._advised.seconds = getattr(self._advised, "seconds", None), None
        return seconds

    def close(self) -> None:
        self.transport.close()
        self._adapter.close()

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        url = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        content = None if body is None else json.dumps(body, allow_nan=False).encode()
        resp = self._send(method, url, content, path)
        status = resp.status
        if status == 429 or (status == 503 and "Retry-After" in resp.headers):
            self.limiter.pushed_back(parse_retry_after(resp.headers.get("Retry-After"),
                                                       datetime.now(UTC)))
        if 200 <= status < 300:
            self.limiter.went_through()
            if "Retry-After" in resp.headers:  # a poll answered, and asked to look again later
                self._advised.seconds = parse_retry_after(resp.headers["Retry-After"],
                                                          datetime.now(UTC))
            if not resp.content:
                return None
            try:
                return resp.json()
            except ValueError:
                raise BadResponseError(f"{method} {self.base_url}{path}: the answer is not JSON",
                                       maybe_happened=True, method=method, path=path) from None
        # Every error message, stored and printed, is made here: an echoed key goes no further.
        message = (f"{method} {self.base_url}{path}: HTTP {status} "
                   f"{_error_message(resp, self._api_key)}").rstrip()
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), datetime.now(UTC))
        if status in (401, 403):
            raise AuthError(message, status_code=status, method=method, path=path)
        if status in (408, 429):
            raise TransientError(message, status_code=status, retry_after=retry_after,
                                 method=method, path=path)
        if status >= 500:
            raise TransientError(message, status_code=status, retry_after=retry_after,
                                 maybe_happened=method != "GET", method=method, path=path)
        raise RejectedError(message, status_code=status, method=method, path=path)

    def _send(self, method: str, url: str, content: bytes | None, path: str) -> Answer:
        """Send once this request has a slot and its turn; the slot is freed as soon as the answer
        is read. A failure of the transport becomes a TransientError."""
        with self._slots:
            self.limiter.wait_turn()
            if self._before_send is not None:
                self._before_send()
            started = time.monotonic()
            try:
                # As requests' HTTPAdapter.send calls it, but the answer read whole (and decoded)
                # here, and never retried or redirected.
                raw = self.transport.urlopen(
                    method, url, body=content,
                    headers=self._headers if content is None else self._json_headers,
                    redirect=False, assert_same_host=False, preload_content=True,
                    decode_content=True, retries=False, timeout=self._timeout)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                unsent, what = _failure(exc)
                if logs.enabled(logging.DEBUG):
                    log.debug("api_request", method=method, path=path, error=type(exc).__name__,
                              elapsed_ms=round((time.monotonic() - started) * 1000))
                raise TransientError(f"{method} {self.base_url}{path}: {what}",
                                     maybe_happened=not unsent,
                                     method=method, path=path) from None
        if logs.enabled(logging.DEBUG):
            log.debug("api_request", method=method, path=path, status_code=raw.status,
                      elapsed_ms=round((time.monotonic() - started) * 1000))
        return Answer(raw.status, raw.reason or "", raw.headers, raw.data)

    # -- reads -------------------------------------------------------------------------------

    def project(self, project_id: str) -> dict[str, Any]:
        return finetuning.project_root(self.request("GET", f"/api/v1/public/projects/{project_id}"))

    def dataset_snapshots(self, dataset_id: str) -> list[RemoteSnapshot] | None:
        body = self.request("GET", f"/api/v1/public/datasets/{dataset_id}")
        return finetuning.parse_dataset_snapshots(body)

    def traces(self, project_id: str, model_id: str, page: int) -> tuple[list[RemoteTrace],
                                                                          int | None]:
        body = self.request("GET", "/api/v1/traces", params={
            "page": page, "projectId": project_id, "modelIds": model_id,
            "sortBy": "createdAt", "sortOrder": "desc"})
        return replies.parse_trace_page(body)

    def finetuning_job(self, job_id: str) -> RemoteJob:
        return finetuning.parse_job(self.request("GET", f"/api/v1/public/finetuning/{job_id}"))

    def recommendations(self, snapshot_id: str) -> Recommendations:
        body = self.request("GET", f"/api/v1/public/recommendations/{snapshot_id}")
        return finetuning.parse_recommendations(body)

    def list_models(self) -> list[str]:
        """The ids of the models a chat request may name."""
        return finetuning.parse_model_ids(self.request("GET", "/api/v1/models"))

    def model_running(self, model: str) -> bool:
        """Whether `model` is loaded for inference (a query parameter: ids may hold "/")."""
        body = self.request("GET", "/api/v1/models/running", params={"model": model})
        return finetuning.parse_running(body)

    # -- calls with effects --------------------------------------------------------------------

    def chat(self, project_id: str, model: str, messages: list[dict[str, str]],
             temperature: float | None = None, max_tokens: int | None = None,
             response_format: dict[str, Any] | None = None) -> ChatResult:
        body = bodies.chat_body(project_id, model, messages, temperature, max_tokens,
                                  response_format)
        return replies.parse_chat(self.request("POST", "/api/v1/chat/completions", body))

    def load_model(self, model: str) -> None:
        """Ask for `model` to be loaded for inference; asking again is harmless."""
        self.request("POST", "/api/v1/models/up", {"model": model})

    def unload_model(self, model: str) -> None:
        self.request("POST", "/api/v1/models/down", {"model": model})

    def create_trace(self, body: Any) -> str:
        return replies.parse_trace_created(self.request("POST", "/api/v1/traces", body))

    def delete_trace(self, trace_id: str) -> None:
        self.request("DELETE", f"/api/v1/traces/{trace_id}")

    def add_to_dataset(self, trace_id: str) -> AddResult:
        return replies.parse_add(self.request("POST", f"/api/v1/traces/{trace_id}/addToDataset"))

    def create_snapshot(self, dataset_id: str, split_percentage: int) -> str:
        body = self.request("POST", "/api/v1/public/snapshots/create",
                            {"dataset_id": dataset_id, "split_percentage": split_percentage})
        return replies.parse_id(body, "snapshot_id", "snapshotId", "id")

    def generate_recommendations(self, snapshot_id: str) -> None:
        self.request("POST", "/api/v1/public/recommendations/generate", {"snapshot_id": snapshot_id})

    def create_finetuning_job(self, snapshot_id: str, name: str,
                              experiments: list[dict[str, Any]]) -> str:
        body = self.request("POST", "/api/v1/public/finetuning/create",
                            {"snapshot_id": snapshot_id, "name": name, "experiments": experiments})
        return replies.parse_id(body, "job_id", "jobId", "id")

