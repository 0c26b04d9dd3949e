"""How the client classifies every way a request can fail, over real HTTP."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from cftrunner.client import PremClient, Timeouts
from cftrunner.exceptions import AuthError, BadResponseError, RejectedError, TransientError
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox
from tests.servers import EchoingServer


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[PremClient]:
    c = PremClient(sandbox.url, DEFAULT_API_KEY, Timeouts(connect=2, read=0.5))
    yield c
    c.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_surely_did_not_happen() -> None:
    client = PremClient(f"http://127.0.0.1:{closed_port()}", "k")
    with pytest.raises(TransientError) as caught:
        client.add_to_dataset("t")
    assert caught.value.maybe_happened is False


def test_a_dropped_connection_after_sending_may_have_happened(client: PremClient,
                                                              sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="snapshot_create", kind="drop"))
    with pytest.raises(TransientError) as caught:
        client.create_snapshot(sandbox.dataset_id(), 80)
    assert caught.value.maybe_happened is True


def test_a_read_timeout_may_have_happened(client: PremClient, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="recs_generate", kind="late", delay=1.0))
    with pytest.raises(TransientError, match="timed out") as caught:
        client.generate_recommendations("s")
    assert caught.value.maybe_happened is True


def test_a_5xx_on_a_post_may_have_happened_but_not_on_a_get(client: PremClient,
                                                           sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="*", status=502))
    with pytest.raises(TransientError) as post:
        client.create_snapshot("d", 80)
    with pytest.raises(TransientError) as get:
        client.project(DEFAULT_PROJECT_ID)
    assert (post.value.maybe_happened, get.value.maybe_happened) == (True, False)
    assert post.value.kind == "http_502"


def test_429_surely_did_not_happen_and_carries_retry_after(client: PremClient,
                                                           sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="finetune_create", status=429, retry_after=7))
    with pytest.raises(TransientError) as caught:
        client.create_finetuning_job("s", "n", [{}])
    assert caught.value.maybe_happened is False and caught.value.retry_after == 7.0


def test_a_4xx_is_a_rejection_that_did_not_happen(client: PremClient) -> None:
    with pytest.raises(RejectedError) as caught:
        client.create_snapshot("no-such-dataset", 80)
    assert caught.value.status_code == 404 and not caught.value.maybe_happened
    assert not isinstance(caught.value, AuthError)


def test_a_wrong_key_is_an_auth_error(sandbox: Sandbox) -> None:
    client = PremClient(sandbox.url, "wrong")
    with pytest.raises(AuthError) as caught:
        client.project(DEFAULT_PROJECT_ID)
    assert caught.value.status_code == 401


def test_a_2xx_that_is_not_json_is_unreadable_and_may_have_happened(
        client: PremClient, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="malformed"))
    body = {"project_id": DEFAULT_PROJECT_ID, "model_id": "m", "input": "q", "output": "a",
            "score": 0.5, "feedback": "f"}
    with pytest.raises(BadResponseError) as caught:
        client.create_trace(body)
    assert caught.value.maybe_happened is True
    assert sandbox.counts()["traces"] == 1


def test_error_messages_never_carry_the_key(sandbox: Sandbox) -> None:
    client = PremClient(sandbox.url, "s3cret-key-value")
    with pytest.raises(AuthError) as caught:
        client.project(DEFAULT_PROJECT_ID)
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(caught.value.__dict__)


SECRET = "sk-live-0123456789abcdef"


@pytest.mark.parametrize("status", [400, 401, 403, 500])
def test_an_error_body_echoing_the_key_carries_it_redacted(status: int) -> None:
    with EchoingServer(status) as server:
        client = PremClient(server.url, SECRET)
        with pytest.raises((RejectedError, TransientError)) as caught:
            client.create_snapshot("d", 80)
        client.close()
    assert SECRET not in caught.value.message
    assert caught.value.message.endswith("got Authorization: Bearer [redacted]")


def test_any_bearer_token_in_an_error_body_is_redacted() -> None:
    with EchoingServer(400, lambda _auth: "your header was 'bearer other-token-9f8e'") as server:
        client = PremClient(server.url, SECRET)
        with pytest.raises(RejectedError) as caught:
            client.project("p")
        client.close()
    assert "other-token" not in caught.value.message
    assert caught.value.message.endswith("your header was 'bearer [redacted]'")


def test_a_key_that_a_long_error_body_would_cut_is_redacted_whole() -> None:
    with EchoingServer(400, lambda _auth: "x" * 280 + f" key={SECRET}") as server:
        client = PremClient(server.url, SECRET)
        with pytest.raises(RejectedError) as caught:
            client.project("p")
        client.close()
    assert SECRET[:8] not in caught.value.message


JUDGE = "claude-4.5-sonnet"
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgment", "schema": {
    "type": "object"}}}
PROMPT = [{"role": "user", "content": "Judge this answer, please."}]


def test_chat_returns_the_content_and_its_token_usage(client: PremClient) -> None:
    result = client.chat(DEFAULT_PROJECT_ID, JUDGE, PROMPT, 0.1)
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == 4 and result.completion_tokens == len(result.content.split())
    assert result.tokens == result.usage["total_tokens"] == 4 + len(result.content.split())


def test_chat_sends_max_tokens_as_max_completion_tokens(client: PremClient) -> None:
    result = client.chat(DEFAULT_PROJECT_ID, JUDGE, PROMPT, max_tokens=2)
    assert result.finish_reason == "length"
    assert (result.completion_tokens, len(result.content.split())) == (2, 2)


def test_chat_sends_the_response_format(client: PremClient) -> None:
    """Without a response format the sandbox fences this prompt's judgment; bare JSON shows it went."""
    result = client.chat(DEFAULT_PROJECT_ID, JUDGE, PROMPT, response_format=SCHEMA_FORMAT)
    assert set(json.loads(result.content)) == {"feedback", "reasoning", "score"}


def test_a_refused_response_format_is_a_rejection(client: PremClient, sandbox: Sandbox) -> None:
    sandbox.set_structured_output(False)
    with pytest.raises(RejectedError, match="json_schema is not supported") as caught:
        client.chat(DEFAULT_PROJECT_ID, JUDGE, PROMPT, response_format=SCHEMA_FORMAT)
    assert caught.value.status_code == 400


class RecordingProxy:
    """An HTTP proxy stand-in: records each request line and answers with an empty project."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.headers: list[dict[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server naming
                proxy.lines.append(self.requestline)
                proxy.headers.append(dict(self.headers))
                body = json.dumps({"id": "p", "children": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """A proxy stand-in, with no proxy variable of the environment left set."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    made = RecordingProxy()
    yield made
    made.server.shutdown()
    made.server.server_close()


def test_proxy_settings_from_the_environment_are_honoured(monkeypatch: pytest.MonkeyPatch,
                                                          proxy: RecordingProxy) -> None:
    """The environment is read once, when the client is made, and every request uses it."""
    monkeypatch.setenv("http_proxy", proxy.url)
    client = PremClient("http://prem.invalid", "k", Timeouts(connect=2, read=2))
    monkeypatch.delenv("http_proxy")
    client.project("p")
    client.project("p")
    client.close()
    assert proxy.lines == ["GET http://prem.invalid/api/v1/public/projects/p HTTP/1.1"] * 2


def test_a_proxy_gets_its_credentials_and_the_api_its_key(monkeypatch: pytest.MonkeyPatch,
                                                          proxy: RecordingProxy) -> None:
    """The proxy URL's user and password go to the proxy (Proxy-Authorization), the API key in
    its own header, on every request."""
    monkeypatch.setenv("http_proxy", proxy.url.replace("http://", "http://me:s3cret@"))
    client = PremClient("http://prem.invalid", "key-1", Timeouts(connect=2, read=2))
    client.project("p")
    client.project("p")
    client.close()
    credentials = "Basic " + base64.b64encode(b"me:s3cret").decode()
    assert [h.get("Proxy-Authorization") for h in proxy.headers] == [credentials] * 2
    assert [h.get("Authorization") for h in proxy.headers] == ["Bearer key-1"] * 2


def test_no_proxy_sends_straight_to_the_api(monkeypatch: pytest.MonkeyPatch,
                                            proxy: RecordingProxy, sandbox: Sandbox) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    client = PremClient(sandbox.url, DEFAULT_API_KEY, Timeouts(connect=2, read=2))
    assert client.project(DEFAULT_PROJECT_ID)
    client.close()
    assert proxy.lines == []
