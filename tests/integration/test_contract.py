"""The requests cftrunner sends and the answers its sandbox serves, held to the official SDK's types.

The SDK (premai 0.18, a test dependency) is generated from Prem's OpenAPI spec: its TypedDict
request params and its pydantic response models are the contract that can be checked offline.
Requests are taken from the client's own transport during real runs; answers are read from the
sandbox over real HTTP at every stage, statuses included."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, get_args, get_type_hints
from urllib.parse import urlsplit

import pydantic
import pytest
from premai.types import (
    ChatCompletionsParams,
    ChatCompletionsResponse,
    DatasetGetResponse,
    FinetuningCreateParams,
    FinetuningCreateResponse,
    FinetuningGetResponse,
    ModelListResponse,
    ProjectGetTreeResponse,
    RecommendationGenerateParams,
    RecommendationGenerateResponse,
    RecommendationGetResponse,
    SnapshotCreateParams,
    SnapshotCreateResponse,
)
from typing_extensions import is_typeddict

from cftrunner.client import PremClient, Timeouts, Transport
from cftrunner.config.run_options import RESPONSE_FORMAT, LoopConfig
from cftrunner.payloads import bodies
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.states import RunState
from tests.conftest import JUDGE, MODEL, Harness

CHAT = "/api/v1/chat/completions"
SNAPSHOT = "/api/v1/public/snapshots/create"
RECOMMEND = "/api/v1/public/recommendations/generate"
LAUNCH = "/api/v1/public/finetuning/create"
PARAMS: dict[str, Any] = {
    CHAT: ChatCompletionsParams,
    SNAPSHOT: SnapshotCreateParams,
    RECOMMEND: RecommendationGenerateParams,
    LAUNCH: FinetuningCreateParams,
}
# Sent though the SDK has no such parameter: the tutorial sends it with every completion.
TOLERATED = {CHAT: {"project_id"}}
EXPERIMENTS = [
    {"base_model_id": "qwen2.5-7b-instruct", "batch_size": 4, "learning_rate_multiplier": 1.0,
     "n_epochs": 3, "training_type": "lora"},
    {"base_model_id": "llama-3.1-8b-instruct", "batch_size": 2, "learning_rate_multiplier": 0.5,
     "n_epochs": 1, "training_type": "full"},
]


# -- checking against the SDK -------------------------------------------------------------------


def _drain(value: Any) -> None:
    """Read every nested value: pydantic checks the items of an Iterable field only as they are
    read."""
    if isinstance(value, str | bytes):
        return
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, Iterable):
        for inner in value:
            _drain(inner)


def unknown_keys(value: Any, hint: Any, path: str = "") -> set[str]:
    """The keys of `value`, at any depth, that the TypedDict `hint` does not declare."""
    if is_typeddict(hint) and isinstance(value, dict):
        hints = get_type_hints(hint)
        found = {path + key for key in value if key not in hints}
        for key in value.keys() & hints.keys():
            found |= unknown_keys(value[key], hints[key], f"{path}{key}.")
        return found
    inner = [arg for arg in get_args(hint) if is_typeddict(arg)]
    if inner and isinstance(value, list):
        return set().union(*(unknown_keys(v, inner[0], f"{path}[{i}].")
                             for i, v in enumerate(value)))
    return set()


def check_request(path: str, body: Any) -> None:
    """Raise unless `body` is valid params for `path` in the SDK, with no key it does not know."""
    params = PARAMS[path]
    _drain(pydantic.TypeAdapter(params).validate_python(body))
    extra = unknown_keys(body, params) - TOLERATED.get(path, set())
    assert not extra, f"{path}: keys the SDK does not know: {sorted(extra)}"


def check_answer(model: type[pydantic.BaseModel], body: Any) -> None:
    model.model_validate(body)


class Recorder:
    """The client's transport, keeping (method, path, JSON body) of each request it sends."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.sent: list[tuple[str, str, Any]] = []

    def urlopen(self, method: str, url: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, **options: Any) -> Any:
        self.sent.append((method, urlsplit(url).path, json.loads(body) if body else None))
        return self.transport.urlopen(method, url, body=body, headers=headers, **options)

    def close(self) -> None:
        self.transport.close()

    def bodies(self, path: str) -> list[Any]:
        return [body for method, sent, body in self.sent if method == "POST" and sent == path]


def recording(harness: Harness) -> Recorder:
    recorder = Recorder(harness.runner.client.transport)
    harness.runner.client.transport = recorder
    return recorder


# -- requests -----------------------------------------------------------------------------------


def test_every_request_body_of_a_cycle_is_valid_sdk_params(harness: Harness) -> None:
    recorder = recording(harness)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    for path in PARAMS:
        assert recorder.bodies(path), f"no request to {path}"
        for body in recorder.bodies(path):
            check_request(path, body)


def test_a_launch_from_older_recommendations_is_valid_sdk_params(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox()
    sandbox.add_fault(FaultRule(kind="lora_flag", route="recs_get"))
    harness = make_harness(sandbox)
    recorder = recording(harness)
    assert harness.runner.drive(harness.start()).state is RunState.LAUNCHED
    [launch] = recorder.bodies(LAUNCH)
    check_request(LAUNCH, launch)


def test_a_retuning_launch_is_valid_sdk_params_without_twin_experiments(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    earlier = make_harness(sandbox)
    first = earlier.runner.drive(earlier.start())
    assert first.job_id is not None
    job: dict[str, Any] = {}
    while job.get("status") not in ("completed", "failed"):
        job = sandbox.world.job(first.job_id)
    parent = next(e for e in job["experiments"] if e["status"] == "succeeded")
    harness = make_harness(sandbox)
    recorder = recording(harness)
    loop = LoopConfig(retune_from={"experiment_id": parent["id"],
                                   "base_model_id": parent["base_model_id"],
                                   "model_id": parent["model_id"]})
    assert harness.runner.drive(harness.start(loop=loop)).state is RunState.LAUNCHED
    [launch] = recorder.bodies(LAUNCH)
    check_request(LAUNCH, launch)
    sent = [json.dumps(e, sort_keys=True) for e in launch["experiments"]]
    assert len(set(sent)) == len(sent)
    assert all(e["refinetune_from_experiment_id"] == parent["id"] for e in launch["experiments"])


@pytest.mark.parametrize("options", [
    {},
    {"temperature": 0.1, "max_tokens": 4096},
    {"temperature": 0.1, "max_tokens": 4096, "response_format": RESPONSE_FORMAT},
])
def test_every_kind_of_chat_body_is_valid_sdk_params(options: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "judge this"},
                {"role": "assistant", "content": "{"}, {"role": "user", "content": "again"}]
    check_request(CHAT, bodies.chat_body("p", JUDGE, messages, **options))


def test_the_contract_check_refuses_an_experiment_without_training_type() -> None:
    """The check itself: the older recommendation's shape, sent as is, is not valid."""
    older = {**EXPERIMENTS[0], "lora": True}
    del older["training_type"]
    with pytest.raises(pydantic.ValidationError):
        check_request(LAUNCH, {"snapshot_id": "s", "name": "n", "experiments": [older]})
    with pytest.raises(AssertionError, match="lora"):
        check_request(LAUNCH, {"snapshot_id": "s", "name": "n",
                               "experiments": [{**EXPERIMENTS[0], "lora": True}]})


# -- answers ------------------------------------------------------------------------------------


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[PremClient]:
    c = PremClient(sandbox.url, DEFAULT_API_KEY, Timeouts(connect=2, read=5))
    yield c
    c.close()


def _tree(client: PremClient) -> Any:
    return client.request("GET", f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}")


def _snapshot(client: PremClient, sandbox: Sandbox, points: int = 2) -> str:
    for n in range(points):
        trace_id = client.create_trace(bodies.trace_body(
            "tutorial", DEFAULT_PROJECT_ID, MODEL, f"prompt {n}", "answer", 0.9, "fine"))
        client.add_to_dataset(trace_id)
    answer = client.request("POST", SNAPSHOT, {"dataset_id": sandbox.dataset_id(),
                                               "split_percentage": 80})
    check_answer(SnapshotCreateResponse, answer)
    return str(answer["snapshot_id"])


def _launch(client: PremClient, snapshot_id: str, name: str = "contract") -> str:
    answer = client.request("POST", LAUNCH, {"snapshot_id": snapshot_id, "name": name,
                                             "experiments": EXPERIMENTS})
    check_answer(FinetuningCreateResponse, answer)
    return str(answer["job_id"])


def test_the_project_tree_is_valid_before_anything_is_made(client: PremClient) -> None:
    check_answer(ProjectGetTreeResponse, _tree(client))


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "mixed", "deleted"])
def test_a_job_and_the_tree_are_valid_at_every_read(client: PremClient, sandbox: Sandbox,
                                                    outcome: str) -> None:
    sandbox.set_training(polls=2, outcome=outcome)
    job_id = _launch(client, _snapshot(client, sandbox))
    seen: set[str] = set()
    for _ in range(5):
        check_answer(ProjectGetTreeResponse, _tree(client))
        job = client.request("GET", f"/api/v1/public/finetuning/{job_id}")
        check_answer(FinetuningGetResponse, job)
        seen |= {e["status"] for e in job["experiments"]}
    check_answer(ProjectGetTreeResponse, _tree(client))
    assert {"pending", "deploying"} <= seen
    if outcome != "succeeded":
        assert {"failed", "deleted"} & seen


def test_a_dataset_is_valid_before_and_after_its_snapshots(client: PremClient,
                                                           sandbox: Sandbox) -> None:
    path = f"/api/v1/public/datasets/{sandbox.dataset_id()}"
    check_answer(DatasetGetResponse, client.request("GET", path))
    _snapshot(client, sandbox)
    check_answer(DatasetGetResponse, client.request("GET", path))


@pytest.mark.parametrize("outcome", ["completed", "failed", "none_recommended"])
def test_recommendations_are_valid_while_processing_and_once_done(
        make_sandbox: Callable[..., Sandbox], outcome: str) -> None:
    sandbox = make_sandbox(recs_polls=1, recs_outcome=outcome)
    client = PremClient(sandbox.url, DEFAULT_API_KEY)
    try:
        snapshot_id = _snapshot(client, sandbox)
        check_answer(RecommendationGenerateResponse,
                     client.request("POST", RECOMMEND, {"snapshot_id": snapshot_id}))
        for _ in range(2):
            check_answer(RecommendationGetResponse, client.request(
                "GET", f"/api/v1/public/recommendations/{snapshot_id}"))
    finally:
        client.close()


def test_the_older_recommendations_fault_serves_what_the_sdk_refuses(client: PremClient,
                                                                     sandbox: Sandbox) -> None:
    """The fault keeps the older shape tested: `lora` true or false, no `training_type`."""
    sandbox.add_fault(FaultRule(kind="lora_flag", route="recs_get"))
    snapshot_id = _snapshot(client, sandbox)
    client.generate_recommendations(snapshot_id)
    path = f"/api/v1/public/recommendations/{snapshot_id}"
    client.request("GET", path)
    older = client.request("GET", path)
    assert {e["lora"] for e in older["recommended_experiments"]} == {True, False}
    assert not any("training_type" in e for e in older["recommended_experiments"])
    with pytest.raises(pydantic.ValidationError, match="training_type"):
        check_answer(RecommendationGetResponse, older)


@pytest.mark.parametrize("ask", [
    {"model": MODEL},
    {"model": MODEL, "max_completion_tokens": 1},
    {"model": JUDGE, "temperature": 0.1, "response_format": RESPONSE_FORMAT},
    {"model": JUDGE, "fault": "truncated"},
    {"model": MODEL, "fault": "no_content"},
    {"model": JUDGE, "fault": "no_content"},
])
def test_chat_completions_are_valid(client: PremClient, sandbox: Sandbox,
                                    ask: dict[str, Any]) -> None:
    body = {k: v for k, v in ask.items() if k != "fault"}
    if "fault" in ask:
        sandbox.add_fault(FaultRule(kind=ask["fault"], route="chat"))
    prompt = "Classify: 'how do I fix my bike chain?'"
    answer = client.request("POST", CHAT, {**body, "messages": [{"role": "user",
                                                                   "content": prompt}]})
    check_answer(ChatCompletionsResponse, answer)
    if ask.get("fault") == "no_content":
        assert answer["choices"][0]["message"]["content"] is None


def test_the_model_list_is_valid(client: PremClient) -> None:
    check_answer(ModelListResponse, client.request("GET", "/api/v1/models"))
