"""The local Prem sandbox, spoken to over real HTTP with requests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from cftrunner.retry import parse_retry_after
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox, llm
from cftrunner.sandbox.records import TraceDraft, TraceQuery
from cftrunner.sandbox.world import World

JUDGE = "claude-4.5-sonnet"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EXPERIMENTS = [
    {
        "base_model_id": "qwen2.5-7b-instruct",
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
        "n_epochs": 3,
        "training_type": "lora",
    },
    {
        "base_model_id": "llama-3.2-3b-instruct",
        "batch_size": 8,
        "learning_rate_multiplier": 1.5,
        "n_epochs": 2,
        "training_type": "lora",
        "custom": {"nested": [1, 2]},
    },
]


class Api:
    """A thin requests wrapper: base URL, bearer token, short timeouts."""

    def __init__(self, base_url: str, key: str | None = DEFAULT_API_KEY) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("DELETE", path, **kwargs)

    def trace(self, score: float = 0.9, **fields: Any) -> dict[str, Any]:
        body = {
            "projectId": DEFAULT_PROJECT_ID,
            "modelId": "m1",
            "input": "in",
            "output": "out",
            "score": score,
            "feedback": "fb",
            **fields,
        }
        response = self.post("/api/v1/traces", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def add(self, trace_id: str) -> requests.Response:
        return self.post(f"/api/v1/traces/{trace_id}/addToDataset")

    def snapshot(self, points: int = 1) -> str:
        for _ in range(points):
            self.add(self.trace()["id"])
        response = self.post(
            "/api/v1/public/snapshots/create",
            json={"dataset_id": self.dataset_id(), "split_percentage": 80},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["snapshot_id"])

    def dataset_id(self) -> str:
        tree = self.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").json()
        return str(tree["project"]["children"][0]["id"])

    def chat(self, model: str, prompt: str, **options: Any) -> requests.Response:
        return self.converse(model, [{"role": "user", "content": prompt}], **options)

    def converse(self, model: str, messages: list[dict[str, str]], **options: Any
                 ) -> requests.Response:
        body = {"model": model, "messages": messages, **options}
        return self.post("/api/v1/chat/completions", json=body)

    def content(self, model: str, prompt: str, **options: Any) -> str:
        response = self.chat(model, prompt, **options)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox.url)


def judgment(content: str) -> dict[str, Any] | None:
    """The judgment a tolerant client would read from judge content, or None if it is invalid."""
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        found = json.loads(content[start : end + 1])
    except ValueError:
        return None
    score = found.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        return None
    return dict(found)


# -- auth -------------------------------------------------------------------------------------


def test_request_without_token_is_401(sandbox: Sandbox) -> None:
    response = Api(sandbox.url, key=None).get("/api/v1/models")
    assert response.status_code == 401
    assert "error" in response.json()


def test_wrong_key_is_401_and_never_echoed(sandbox: Sandbox) -> None:
    response = Api(sandbox.url, key="wrong-key").get("/api/v1/models")
    assert response.status_code == 401
    assert "wrong-key" not in response.text and DEFAULT_API_KEY not in response.text


def test_any_token_is_accepted_when_api_key_is_none(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(api_key=None)
    assert Api(sandbox.url, key="anything").get("/api/v1/models").status_code == 200
    assert Api(sandbox.url, key=None).get("/api/v1/models").status_code == 401


def test_no_access_log_on_stderr(api: Api, capfd: pytest.CaptureFixture[str]) -> None:
    api.get("/api/v1/models")
    assert capfd.readouterr().err == ""


# -- routing ----------------------------------------------------------------------------------


def test_unknown_path_is_404(api: Api) -> None:
    response = api.get("/api/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_known_path_with_wrong_method_is_405(api: Api) -> None:
    assert api.delete("/api/v1/models").status_code == 405


def test_invalid_json_is_400(api: Api) -> None:
    response = api.post(
        "/api/v1/traces", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


# -- project, dataset, models -----------------------------------------------------------------


def test_project_tree_holds_the_project_dataset(api: Api, sandbox: Sandbox) -> None:
    project = api.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").json()["project"]
    assert project["id"] == DEFAULT_PROJECT_ID
    assert project["name"]
    [dataset] = project["children"]
    assert dataset["type"] == "dataset"
    assert dataset["id"] == sandbox.dataset_id(DEFAULT_PROJECT_ID)
    assert dataset["children"] == []


def test_unknown_project_is_404(api: Api) -> None:
    assert api.get("/api/v1/public/projects/nope").status_code == 404


def test_added_project_gets_its_own_dataset(api: Api, sandbox: Sandbox) -> None:
    project_id = sandbox.add_project()
    project = api.get(f"/api/v1/public/projects/{project_id}").json()["project"]
    assert project["children"][0]["id"] == sandbox.dataset_id(project_id)
    assert sandbox.dataset_id(project_id) != sandbox.dataset_id(DEFAULT_PROJECT_ID)


def test_dataset_shows_count_and_snapshots(api: Api) -> None:
    snapshot_id = api.snapshot(points=2)
    dataset = api.get(f"/api/v1/public/datasets/{api.dataset_id()}").json()
    assert dataset["project_id"] == DEFAULT_PROJECT_ID
    assert dataset["status"] == "completed" and dataset["labels"] == []
    assert dataset["datapoints_count"] == 2
    assert [s["id"] for s in dataset["snapshots"]] == [snapshot_id]
    assert ISO_MS.match(dataset["created_at"]) and ISO_MS.match(dataset["updated_at"])


def test_unknown_dataset_is_404(api: Api) -> None:
    assert api.get("/api/v1/public/datasets/nope").status_code == 404


def test_models_lists_the_judge(api: Api) -> None:
    answer = api.get("/api/v1/models").json()
    assert answer["object"] == "list"
    assert JUDGE in [m["id"] for m in answer["data"]]
    assert set(answer["data"][0]) == {"id", "object", "created", "owned_by"}


# -- chat -------------------------------------------------------------------------------------


def test_generation_answers_openai_shape_with_a_verdict(api: Api) -> None:
    answer = api.chat("my-finetune", "Is this safe?").json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "my-finetune"
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].split("\n")[0] in ("safe", "unsafe")
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_generation_is_deterministic_per_prompt(api: Api) -> None:
    first = api.chat("m", "prompt 7").json()["choices"][0]["message"]["content"]
    assert api.chat("m", "prompt 7").json()["choices"][0]["message"]["content"] == first


def test_judge_answers_a_valid_judgment_in_all_three_wrappings(api: Api) -> None:
    contents = [
        api.chat(JUDGE, f"judge {i}").json()["choices"][0]["message"]["content"] for i in range(30)
    ]
    for content in contents:
        found = judgment(content)
        assert found is not None and set(found) == {"feedback", "reasoning", "score"}
        assert round(found["score"], 2) == found["score"]
    assert any(c.startswith("{") for c in contents)
    assert any(c.startswith("```json") for c in contents)
    assert any(not c.startswith(("{", "```")) for c in contents)


def test_judge_scores_about_a_third_below_half() -> None:
    scores = [llm.judge_score(f"prompt {i}") for i in range(600)]
    assert 0.25 < sum(s < 0.5 for s in scores) / len(scores) < 0.42
    assert min(scores) < 0.1 and max(scores) > 0.9


def test_chat_counts_generate_and_judge_apart(api: Api, sandbox: Sandbox) -> None:
    api.chat("m", "a")
    api.chat(JUDGE, "b")
    api.chat(JUDGE, "c")
    assert sandbox.counts()["chat"] == {"generate": 1, "judge": 2}


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m"},
        {"model": "m", "messages": []},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user"}]},
    ],
    ids=["no-messages", "empty-messages", "no-model", "message-without-content"],
)
def test_chat_with_missing_fields_is_400(api: Api, body: dict[str, Any]) -> None:
    assert api.post("/api/v1/chat/completions", json=body).status_code == 400


SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "judgment", "schema": {"type": "object", "properties": {}}},
}


def test_an_answer_longer_than_max_completion_tokens_is_cut_with_finish_reason_length(
    api: Api,
) -> None:
    whole = api.content(JUDGE, "judge 1")
    answer = api.chat(JUDGE, "judge 1", max_completion_tokens=3).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == " ".join(whole.split()[:3])
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 3


def test_an_answer_within_max_completion_tokens_is_whole(api: Api) -> None:
    whole = api.content("m", "prompt 3")
    answer = api.chat("m", "prompt 3", max_completion_tokens=2).json()
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"] == whole


@pytest.mark.parametrize("limit", [0, -5, 1.5, "10", True, [10]])
def test_an_invalid_max_completion_tokens_is_400_and_not_answered(
    api: Api, sandbox: Sandbox, limit: Any
) -> None:
    response = api.chat("m", "x", max_completion_tokens=limit)
    assert response.status_code == 400 and "max_completion_tokens" in response.json()["error"]
    assert sandbox.counts()["chat"] == {"generate": 0, "judge": 0}


@pytest.mark.parametrize(
    "response_format",
    [
        "json",
        {},
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": "judgment"},
        {"type": "json_schema", "json_schema": {"name": "judgment"}},
        {"type": "json_schema", "json_schema": {"schema": "object"}},
    ],
)
def test_an_invalid_response_format_is_400(api: Api, response_format: Any) -> None:
    response = api.chat(JUDGE, "x", response_format=response_format)
    assert response.status_code == 400 and "response_format" in response.json()["error"]


@pytest.mark.parametrize("response_format", [{"type": "json_schema", "json_schema": {
    "schema": {}}}, {"type": "json_object"}, {"type": "text"}, None])
def test_each_documented_response_format_is_accepted(api: Api, response_format: Any) -> None:
    assert api.chat(JUDGE, "x", response_format=response_format).status_code == 200


@pytest.mark.parametrize("response_format", [SCHEMA_FORMAT, {"type": "json_object"}])
def test_a_judge_held_to_a_json_format_answers_bare_json(api: Api, response_format: Any) -> None:
    for i in range(30):
        content = api.content(JUDGE, f"judge {i}", response_format=response_format)
        assert json.loads(content) == judgment(api.content(JUDGE, f"judge {i}"))


def test_a_judge_asked_for_text_keeps_its_varied_wrappings(api: Api) -> None:
    contents = [api.content(JUDGE, f"judge {i}", response_format={"type": "text"})
                for i in range(30)]
    assert any(c.startswith("```json") for c in contents)
    assert all(judgment(c) is not None for c in contents)


def test_without_structured_output_json_schema_is_refused(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = make_sandbox(structured_output=False)
    api = Api(sandbox.url)
    response = api.chat(JUDGE, "x", response_format=SCHEMA_FORMAT)
    assert response.status_code == 400
    assert response.json() == {"error": f"response_format json_schema is not supported for model {JUDGE}"}
    assert sandbox.counts()["chat"] == {"generate": 0, "judge": 0}
    assert api.chat(JUDGE, "x", response_format={"type": "json_object"}).status_code == 200
    assert api.chat(JUDGE, "x").status_code == 200


def test_structured_output_can_be_switched_off_and_on(api: Api, sandbox: Sandbox) -> None:
    sandbox.set_structured_output(False)
    assert api.chat(JUDGE, "x", response_format=SCHEMA_FORMAT).status_code == 400
    sandbox.set_structured_output(True)
    assert api.chat(JUDGE, "x", response_format=SCHEMA_FORMAT).status_code == 200


def test_a_retried_judgment_is_judged_on_the_judge_prompt_not_the_reminder(
    api: Api, sandbox: Sandbox
) -> None:
    retry = [
        {"role": "user", "content": "judge prompt 4"},
        {"role": "assistant", "content": "I think it is fine."},
        {"role": "user", "content": "Answer with the JSON object only."},
    ]
    again = api.converse(JUDGE, retry).json()["choices"][0]["message"]["content"]
    assert again == api.content(JUDGE, "judge prompt 4")
    assert again != api.content(JUDGE, "Answer with the JSON object only.")
    assert sandbox.counts()["chat"] == {"generate": 0, "judge": 3}


def test_generation_answers_the_last_user_message(api: Api, sandbox: Sandbox) -> None:
    turns = [{"role": "user", "content": f"prompt {i}"} for i in range(8)]
    answer = api.converse("m", turns).json()["choices"][0]["message"]["content"]
    assert answer == llm.generate("prompt 7")
    assert sandbox.counts()["chat"] == {"generate": 1, "judge": 0}


# -- traces -----------------------------------------------------------------------------------


def test_snake_case_trace_answers_the_trace(api: Api) -> None:
    response = api.post(
        "/api/v1/traces",
        json={
            "project_id": DEFAULT_PROJECT_ID,
            "model_id": "m1",
            "input": "i",
            "output": "o",
            "score": 0.7,
            "feedback": "f",
        },
    )
    trace = response.json()
    assert set(trace) == {
        "id",
        "createdAt",
        "modelId",
        "projectId",
        "input",
        "output",
        "score",
        "feedback",
        "addedToDataset",
        "processingStatus",
    }
    assert (trace["modelId"], trace["projectId"], trace["score"]) == ("m1", DEFAULT_PROJECT_ID, 0.7)
    assert trace["addedToDataset"] is False and trace["processingStatus"] == "none"
    assert ISO_MS.match(trace["createdAt"])


def test_camel_case_trace_answers_the_trace(api: Api) -> None:
    trace = api.trace(score=0.4)
    assert trace["score"] == 0.4 and trace["input"] == "in"


def test_trace_array_answers_results_one_per_trace(api: Api, sandbox: Sandbox) -> None:
    body = [
        {
            "projectId": DEFAULT_PROJECT_ID,
            "modelId": "m",
            "input": f"i{n}",
            "output": "o",
            "score": 0.5,
            "feedback": "",
        }
        for n in range(3)
    ]
    results = api.post("/api/v1/traces", json=body).json()["results"]
    assert [r["success"] for r in results] == [True, True, True]
    assert [t["id"] for t in sandbox.world.traces()] == [r["traceId"] for r in results]


@pytest.mark.parametrize(
    "change",
    [
        {"score": 1.5},
        {"score": "0.5"},
        {"score": True},
        {"score": None},
        {"feedback": "x" * 2049},
        {"input": 3},
        {"output": None},
    ],
    ids=[
        "score-above-1",
        "score-string",
        "score-bool",
        "score-missing",
        "feedback-too-long",
        "input-not-string",
        "output-missing",
    ],
)
def test_invalid_trace_is_400_and_creates_nothing(
    api: Api, sandbox: Sandbox, change: dict[str, Any]
) -> None:
    body = {
        "projectId": DEFAULT_PROJECT_ID,
        "modelId": "m",
        "input": "i",
        "output": "o",
        "score": 0.5,
        "feedback": "f",
        **change,
    }
    assert api.post("/api/v1/traces", json=body).status_code == 400
    assert sandbox.counts()["traces"] == 0


def test_feedback_of_exactly_2048_characters_is_accepted(api: Api) -> None:
    assert len(api.trace(feedback="x" * 2048)["feedback"]) == 2048


def test_trace_for_unknown_project_is_404(api: Api) -> None:
    body = {"projectId": "nope", "modelId": "m", "input": "i", "output": "o", "score": 0.5}
    assert api.post("/api/v1/traces", json=body).status_code == 404


def test_trace_list_pages_with_fixed_page_size(api: Api) -> None:
    for n in range(12):
        api.trace(input=f"i{n}")
    first = api.get("/api/v1/traces").json()
    second = api.get("/api/v1/traces", params={"page": 2}).json()
    assert (len(first["results"]), first["total"]) == (10, 12)
    assert (len(second["results"]), second["total"]) == (2, 12)
    assert api.get("/api/v1/traces", params={"page": 3}).json()["results"] == []


def test_trace_list_defaults_to_newest_first(api: Api) -> None:
    ids = [api.trace(input=f"i{n}")["id"] for n in range(3)]
    assert [t["id"] for t in api.get("/api/v1/traces").json()["results"]] == ids[::-1]


def test_traces_in_the_same_millisecond_sort_by_creation_order() -> None:
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    world = World(now=lambda: moment)
    project = world.add_project()
    draft = TraceDraft(project, "m", "i", "o", 0.5, "")
    ids = [t["id"] for t in world.create_traces([draft, draft, draft])]
    listed = world.list_traces(TraceQuery(sort_order="asc"))["results"]
    assert [t["id"] for t in listed] == ids
    assert len({t["createdAt"] for t in listed}) == 1


def test_trace_list_filters_by_project_and_models(api: Api, sandbox: Sandbox) -> None:
    other = sandbox.add_project()
    api.trace(modelId="a")
    api.trace(modelId="b")
    api.trace(modelId="c")
    api.trace(modelId="a", projectId=other)
    answer = api.get(
        "/api/v1/traces", params={"projectId": DEFAULT_PROJECT_ID, "modelIds": "a,b"}
    ).json()
    assert answer["total"] == 2
    assert sorted(t["modelId"] for t in answer["results"]) == ["a", "b"]


def test_trace_list_sorts_by_score(api: Api) -> None:
    for score in (0.5, 0.1, 0.9):
        api.trace(score=score)
    answer = api.get("/api/v1/traces", params={"sortBy": "score", "sortOrder": "asc"}).json()
    assert [t["score"] for t in answer["results"]] == [0.1, 0.5, 0.9]


@pytest.mark.parametrize(
    "params", [{"page": 0}, {"page": "x"}, {"sortBy": "input"}, {"sortOrder": "up"}]
)
def test_trace_list_with_invalid_query_is_400(api: Api, params: dict[str, Any]) -> None:
    assert api.get("/api/v1/traces", params=params).status_code == 400


def test_trace_update_answers_the_full_trace(api: Api) -> None:
    trace = api.trace(score=0.2)
    updated = api.put(f"/api/v1/traces/{trace['id']}", json={"score": 0.8, "feedback": "new"})
    assert updated.json() == {**trace, "score": 0.8, "feedback": "new"}


def test_trace_update_of_unknown_trace_is_404(api: Api) -> None:
    assert api.put("/api/v1/traces/nope", json={"score": 0.8}).status_code == 404


def test_trace_delete_removes_it(api: Api, sandbox: Sandbox) -> None:
    trace_id = api.trace()["id"]
    assert api.delete(f"/api/v1/traces/{trace_id}").json() == {"success": True}
    assert api.delete(f"/api/v1/traces/{trace_id}").status_code == 404
    assert sandbox.counts()["traces_deleted"] == 1


# -- addToDataset -----------------------------------------------------------------------------


def test_add_of_high_score_trace_is_added_without_processing(api: Api, sandbox: Sandbox) -> None:
    trace_id = api.trace(score=0.9)["id"]
    answer = api.add(trace_id).json()
    assert answer["traceId"] == trace_id and answer["status"] == "added"
    assert answer["success"] is True and answer["datapointId"]
    trace = sandbox.world.trace(trace_id)
    assert trace["addedToDataset"] is True and trace["processingStatus"] == "none"


def test_add_of_low_score_trace_is_queued_then_processed(api: Api) -> None:
    trace_id = api.trace(score=0.1)["id"]
    assert api.add(trace_id).json()["status"] == "queued"
    listed = api.get("/api/v1/traces").json()["results"][0]
    assert (listed["addedToDataset"], listed["processingStatus"]) == (True, "processing")
    time.sleep(0.25)
    assert api.get("/api/v1/traces").json()["results"][0]["processingStatus"] == "none"


def test_second_add_of_same_trace_adds_a_second_datapoint(api: Api, sandbox: Sandbox) -> None:
    trace_id = api.trace()["id"]
    first, second = api.add(trace_id).json(), api.add(trace_id).json()
    assert first["datapointId"] != second["datapointId"]
    assert sandbox.counts()["additions"] == {trace_id: 2}
    dataset = api.get(f"/api/v1/public/datasets/{api.dataset_id()}").json()
    assert dataset["datapoints_count"] == 2


def test_add_of_unknown_trace_is_404(api: Api) -> None:
    assert api.add("nope").status_code == 404


# -- snapshots --------------------------------------------------------------------------------


def test_snapshot_splits_the_datapoints(api: Api) -> None:
    for _ in range(10):
        api.add(api.trace()["id"])
    answer = api.post(
        "/api/v1/public/snapshots/create",
        json={"dataset_id": api.dataset_id(), "split_percentage": 70},
    ).json()
    tree = api.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").json()
    [node] = tree["project"]["children"][0]["children"]
    assert node["id"] == answer["snapshot_id"] and node["type"] == "snapshot"
    assert (node["metadata"]["training_count"], node["metadata"]["validation_count"]) == (7, 3)
    assert ISO_MS.match(node["metadata"]["created_at"])


def test_snapshot_split_defaults_to_80(api: Api, sandbox: Sandbox) -> None:
    for _ in range(5):
        api.add(api.trace()["id"])
    api.post("/api/v1/public/snapshots/create", json={"dataset_id": api.dataset_id()})
    [snapshot] = sandbox.world.snapshots()
    assert (snapshot["split_percentage"], snapshot["training_count"]) == (80, 4)


@pytest.mark.parametrize("split", [0, 100, True, "80", 80.0, -5])
def test_snapshot_with_invalid_split_is_400(api: Api, split: Any) -> None:
    api.add(api.trace()["id"])
    response = api.post(
        "/api/v1/public/snapshots/create",
        json={"dataset_id": api.dataset_id(), "split_percentage": split},
    )
    assert response.status_code == 400


def test_snapshot_of_unknown_dataset_is_404(api: Api) -> None:
    response = api.post("/api/v1/public/snapshots/create", json={"dataset_id": "nope"})
    assert response.status_code == 404


def test_snapshot_of_empty_dataset_is_400(api: Api, sandbox: Sandbox) -> None:
    response = api.post("/api/v1/public/snapshots/create", json={"dataset_id": api.dataset_id()})
    assert response.status_code == 400
    assert sandbox.counts()["snapshots"] == 0


# -- recommendations --------------------------------------------------------------------------


def _recommend(api: Api) -> str:
    snapshot_id = api.snapshot()
    answer = api.post("/api/v1/public/recommendations/generate", json={"snapshot_id": snapshot_id})
    assert answer.json() == {"snapshot_id": snapshot_id}
    return snapshot_id


def test_recommendations_process_then_complete(api: Api) -> None:
    snapshot_id = _recommend(api)
    first = api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()
    assert (first["status"], first["recommended_experiments"]) == ("processing", [])
    done = api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()
    assert done["status"] == "completed" and done["snapshot_id"] == snapshot_id
    experiments = done["recommended_experiments"]
    assert len(experiments) >= 3 and sum(e["recommended"] for e in experiments) >= 2
    assert {e["training_type"] for e in experiments} == {"lora", "full", "qlora"}
    assert not any("lora" in e for e in experiments)
    assert all(isinstance(e["reason_for_recommendation"], str) for e in experiments)
    models = done["recommended_models"]
    assert [m["base_model_id"] for m in models] == [e["base_model_id"] for e in experiments]
    assert [m["recommended"] for m in models] == [e["recommended"] for e in experiments]


def test_recommendations_propose_one_recipe_on_two_base_models(api: Api) -> None:
    """Re-tuned from one model, those two would be the same experiment."""
    snapshot_id = _recommend(api)
    api.get(f"/api/v1/public/recommendations/{snapshot_id}")  # processing
    done = api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()
    chosen = [{k: v for k, v in e.items() if k not in ("base_model_id", "reason_for_recommendation")}
              for e in done["recommended_experiments"] if e["recommended"]]
    assert len(chosen) > len({json.dumps(e, sort_keys=True) for e in chosen})


def test_recommendations_can_fail(make_sandbox: Callable[..., Sandbox]) -> None:
    api = Api(make_sandbox(recs_polls=0, recs_outcome="failed").url)
    snapshot_id = _recommend(api)
    assert api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()["status"] == "failed"


def test_recommendations_can_recommend_nothing(make_sandbox: Callable[..., Sandbox]) -> None:
    api = Api(make_sandbox(recs_polls=0, recs_outcome="none_recommended").url)
    answer = api.get(f"/api/v1/public/recommendations/{_recommend(api)}").json()
    assert answer["status"] == "completed"
    assert answer["recommended_experiments"]
    assert not any(e["recommended"] for e in answer["recommended_experiments"])


def test_reading_recommendations_from_the_world_is_not_a_poll(api: Api, sandbox: Sandbox) -> None:
    snapshot_id = _recommend(api)
    assert sandbox.world.recommendations(snapshot_id)["status"] == "completed"
    answer = api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()
    assert answer["status"] == "processing"


def test_recommendations_never_generated_are_404(api: Api) -> None:
    assert api.get(f"/api/v1/public/recommendations/{api.snapshot()}").status_code == 404


def test_recommendations_for_unknown_snapshot_are_404(api: Api) -> None:
    response = api.post("/api/v1/public/recommendations/generate", json={"snapshot_id": "nope"})
    assert response.status_code == 404


def test_each_generate_call_is_counted(api: Api, sandbox: Sandbox) -> None:
    snapshot_id = _recommend(api)
    api.post("/api/v1/public/recommendations/generate", json={"snapshot_id": snapshot_id})
    assert sandbox.counts()["recommendations_generated"] == {snapshot_id: 2}


# -- fine-tuning jobs -------------------------------------------------------------------------


def _launch(api: Api, snapshot_id: str, name: str = "cft-run-1") -> str:
    answer = api.post(
        "/api/v1/public/finetuning/create",
        json={"snapshot_id": snapshot_id, "name": name, "experiments": EXPERIMENTS},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["job_id"])


def test_job_stores_experiments_exactly_as_sent(api: Api, sandbox: Sandbox) -> None:
    job_id = _launch(api, api.snapshot())
    assert sandbox.world.sent_experiments(job_id) == EXPERIMENTS


def test_job_answers_its_experiments_pending_on_the_first_read(api: Api) -> None:
    snapshot_id = api.snapshot()
    job = api.get(f"/api/v1/public/finetuning/{_launch(api, snapshot_id)}").json()
    assert (job["name"], job["snapshot_id"], job["status"]) == (
        "cft-run-1",
        snapshot_id,
        "processing",
    )
    first, second = job["experiments"]
    assert (first["experiment_number"], second["experiment_number"]) == (1, 2)
    assert first["status"] == "pending" and "model_id" not in first and first["id"]
    assert {k: second[k] for k in EXPERIMENTS[1]} == EXPERIMENTS[1]


def test_job_appears_in_project_tree_under_its_snapshot(api: Api) -> None:
    snapshot_id = api.snapshot()
    job_id = _launch(api, snapshot_id, name="run-42")
    tree = api.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").json()
    [snapshot] = tree["project"]["children"][0]["children"]
    [job] = snapshot["children"]
    assert (snapshot["id"], job["id"], job["type"], job["label"]) == (
        snapshot_id,
        job_id,
        "finetuning-job",
        "run-42",
    )
    assert [(e["type"], e["status"], e["metadata"]) for e in job["children"]] == [
        ("experiment", "pending", {"id": e["id"], "base_model_id": sent["base_model_id"],
                                   "experiment_number": n, "model_id": None})
        for n, (e, sent) in enumerate(zip(job["children"], EXPERIMENTS, strict=True), 1)
    ]
    assert job["metadata"] == {"id": job_id, "reasoning": False}


WITHOUT_TYPE = {k: v for k, v in EXPERIMENTS[0].items() if k != "training_type"}


@pytest.mark.parametrize(
    "change",
    [
        {"experiments": []},
        {"name": None},
        {"name": ""},
        {"experiments": ["x"]},
        {"experiments": [WITHOUT_TYPE]},
        {"experiments": [{**WITHOUT_TYPE, "lora": True}]},
        {"experiments": [{**EXPERIMENTS[0], "training_type": "dora"}]},
        {"experiments": [{**EXPERIMENTS[0], "batch_size": 0}]},
        {"experiments": [{k: v for k, v in EXPERIMENTS[0].items() if k != "n_epochs"}]},
    ],
)
def test_job_with_invalid_body_is_400(api: Api, change: dict[str, Any]) -> None:
    body = {"snapshot_id": api.snapshot(), "name": "n", "experiments": EXPERIMENTS, **change}
    assert api.post("/api/v1/public/finetuning/create", json=body).status_code == 400


def test_job_for_unknown_snapshot_is_404(api: Api) -> None:
    body = {"snapshot_id": "nope", "name": "n", "experiments": EXPERIMENTS}
    assert api.post("/api/v1/public/finetuning/create", json=body).status_code == 404


def test_unknown_job_is_404(api: Api) -> None:
    assert api.get("/api/v1/public/finetuning/nope").status_code == 404


# -- faults -----------------------------------------------------------------------------------


def test_status_fault_answers_with_retry_after_and_does_not_act(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=429, retry_after=2.0))
    response = api.post("/api/v1/traces", json={"projectId": DEFAULT_PROJECT_ID})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert "error" in response.json()
    assert sandbox.counts()["traces"] == 0


def test_fractional_retry_after_is_kept(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", retry_after=1.5))
    assert api.get("/api/v1/models").headers["Retry-After"] == "1.5"


def test_status_fault_after_action_acts_then_fails(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=502, after_action=True))
    response = api.post(
        "/api/v1/traces",
        json={
            "projectId": DEFAULT_PROJECT_ID,
            "modelId": "m",
            "input": "i",
            "output": "o",
            "score": 0.5,
        },
    )
    assert response.status_code == 502
    assert [t["input"] for t in sandbox.world.traces()] == ["i"]


def test_drop_fault_acts_and_closes_without_answer(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", times=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        api.trace(input="dropped")
    assert [t["input"] for t in sandbox.world.traces()] == ["dropped"]
    assert api.trace()["id"]


def test_late_fault_acts_but_answers_after_the_client_gave_up(api: Api, sandbox: Sandbox) -> None:
    trace_id = api.trace()["id"]
    sandbox.add_fault(FaultRule(route="add_to_dataset", kind="late", delay=0.4))
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.post(f"/api/v1/traces/{trace_id}/addToDataset", timeout=0.1)
    assert sandbox.counts()["additions"] == {trace_id: 1}
    assert sandbox.world.trace(trace_id)["addedToDataset"] is True


def test_latency_fault_waits_then_acts(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="latency", delay=0.2))
    started = time.monotonic()
    api.trace()
    assert time.monotonic() - started >= 0.2
    assert sandbox.counts()["traces"] == 1


def test_a_hold_fault_keeps_requests_waiting_until_released_then_acts_on_each_once(
        api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold"))
    answers: list[dict[str, Any]] = []
    senders = [threading.Thread(target=lambda: answers.append(Api(sandbox.url).trace()))
               for _ in range(2)]
    for sender in senders:
        sender.start()
    time.sleep(0.3)
    assert sandbox.counts()["traces"] == 0 and answers == []
    assert api.get("/api/v1/models").status_code == 200  # other routes go on

    released = requests.post(f"{sandbox.url}/_sandbox/faults/release", timeout=5)

    assert released.json() == {"released": True}
    for sender in senders:
        sender.join(5)
    assert len({answer["id"] for answer in answers}) == 2
    assert sandbox.counts()["traces"] == 2
    api.trace()  # released holds stay released until another hold rule comes
    sandbox.clear_faults()
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold", delay=0.3))
    started = time.monotonic()
    api.trace()  # held again, at most its delay
    assert time.monotonic() - started >= 0.3
    assert sandbox.counts()["traces"] == 4


def test_stopping_the_sandbox_lets_go_of_held_requests(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold"))
    ended: list[BaseException | None] = []

    def send() -> None:
        try:
            Api(sandbox.url).trace()
            ended.append(None)
        except requests.RequestException as exc:
            ended.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.2)
    sandbox.stop()
    sender.join(10)
    assert not sender.is_alive() and len(ended) == 1


def test_global_latency_slows_every_api_request(make_sandbox: Callable[..., Sandbox]) -> None:
    api = Api(make_sandbox(latency=0.15).url)
    started = time.monotonic()
    api.get("/api/v1/models")
    assert time.monotonic() - started >= 0.15


def test_malformed_fault_cycles_through_invalid_judgments(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed"))
    contents = [
        api.chat(JUDGE, "p").json()["choices"][0]["message"]["content"]
        for _ in range(llm.MALFORMED_VARIANTS)
    ]
    assert len(set(contents)) == llm.MALFORMED_VARIANTS
    assert [judgment(c) for c in contents] == [None] * llm.MALFORMED_VARIANTS
    assert any('"score": "0.8"' in c for c in contents)
    assert any('"score": 7' in c for c in contents)
    assert sandbox.counts()["chat"]["judge"] == llm.MALFORMED_VARIANTS


def test_malformed_fault_on_other_routes_answers_a_body_that_is_not_json(
    api: Api, sandbox: Sandbox
) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="malformed"))
    response = api.post(
        "/api/v1/traces",
        json={
            "projectId": DEFAULT_PROJECT_ID,
            "modelId": "m",
            "input": "i",
            "output": "o",
            "score": 0.5,
        },
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert sandbox.counts()["traces"] == 1


def test_truncated_fault_answers_the_first_half_of_a_chat_answer(
    api: Api, sandbox: Sandbox
) -> None:
    whole = api.content(JUDGE, "p", response_format=SCHEMA_FORMAT)
    sandbox.add_fault(FaultRule(route="chat", kind="truncated"))
    answer = api.chat(JUDGE, "p", response_format=SCHEMA_FORMAT).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == whole[: len(whole) // 2]
    assert judgment(choice["message"]["content"]) is None
    assert answer["usage"]["completion_tokens"] == llm.count_tokens(choice["message"]["content"])
    assert sandbox.counts()["chat"]["judge"] == 2
    assert sandbox.counts()["faults_fired"] == {"truncated": 1}


def test_truncated_fault_cuts_even_a_one_word_answer(api: Api, sandbox: Sandbox) -> None:
    prompt = next(f"p{i}" for i in range(50) if llm.generate(f"p{i}") == "safe")
    sandbox.add_fault(FaultRule(route="chat", kind="truncated"))
    assert api.content("m", prompt) == "sa"


def test_no_content_fault_answers_a_chat_call_with_null_content(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="no_content"))
    answer = api.chat("m", "p").json()
    [choice] = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": None}
    assert choice["finish_reason"] == "content_filter"
    assert answer["usage"]["completion_tokens"] == 0
    assert sandbox.counts()["faults_fired"] == {"no_content": 1}


def test_lora_flag_fault_answers_recommendations_in_the_older_shape(
    api: Api, sandbox: Sandbox
) -> None:
    snapshot_id = _recommend(api)
    sandbox.add_fault(FaultRule(kind="lora_flag"))
    assert api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()["status"] == "processing"
    older = api.get(f"/api/v1/public/recommendations/{snapshot_id}").json()
    newer = sandbox.world.recommendations(snapshot_id)
    assert [(e["base_model_id"], e["lora"]) for e in older["recommended_experiments"]] == [
        (e["base_model_id"], e["training_type"] != "full") for e in newer["recommended_experiments"]
    ]
    assert not any("training_type" in e for e in older["recommended_experiments"])
    assert api.get("/api/v1/models").json() == sandbox.world.list_models()


def test_truncated_fault_on_other_routes_answers_a_body_that_is_not_json(
    api: Api, sandbox: Sandbox
) -> None:
    Api(sandbox.url, key=None).post("/_sandbox/faults", json={"kind": "truncated"})
    response = api.post(
        "/api/v1/traces",
        json={"projectId": DEFAULT_PROJECT_ID, "modelId": "m", "input": "i", "output": "o",
              "score": 0.5},
    )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert sandbox.counts()["traces"] == 1


def test_times_limits_a_fault_to_the_first_requests(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", times=2))
    codes = [api.get("/api/v1/models").status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]


def test_every_hits_each_nth_request(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", every=3))
    codes = [api.get("/api/v1/models").status_code for _ in range(7)]
    assert codes == [503, 200, 200, 503, 200, 200, 503]


def test_every_and_times_combine(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", every=2, times=2))
    codes = [api.get("/api/v1/models").status_code for _ in range(6)]
    assert codes == [503, 200, 503, 200, 200, 200]


def test_match_hits_only_bodies_containing_it(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", match="poison"))
    assert api.chat("m", "poison pill").status_code == 503
    assert api.chat("m", "fine").status_code == 200


def test_judge_selector_splits_chat_calls(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", judge=True))
    assert api.chat(JUDGE, "x").status_code == 503
    assert api.chat("generator", "x").status_code == 200


def test_probability_zero_never_fires(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", probability=0.0))
    assert {api.get("/api/v1/models").status_code for _ in range(5)} == {200}


def test_probability_is_reproducible_for_a_seed(make_sandbox: Callable[..., Sandbox]) -> None:
    def codes(seed: int) -> list[int]:
        sandbox = make_sandbox(seed=seed)
        sandbox.add_fault(FaultRule(route="models", probability=0.5))
        return [Api(sandbox.url).get("/api/v1/models").status_code for _ in range(12)]

    first = codes(7)
    assert first == codes(7)
    assert set(first) == {200, 503}


def test_first_matching_rule_wins(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="models", status=500, times=1))
    sandbox.add_fault(FaultRule(route="*", status=502))
    assert [api.get("/api/v1/models").status_code for _ in range(2)] == [500, 502]


def test_clear_faults_restores_normal_answers(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule())
    sandbox.clear_faults()
    assert api.get("/api/v1/models").status_code == 200


def test_faults_never_hit_control_endpoints(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(kind="drop"))
    assert api.get("/_sandbox/counts").status_code == 200


def test_fault_for_unknown_route_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.add_fault(FaultRule(route="trace_creat"))


def test_fault_with_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        FaultRule(kind="explode")


# -- rate limit -------------------------------------------------------------------------------


def test_a_burst_beyond_the_rate_limit_gets_429_with_a_short_retry_after(
        make_sandbox: Callable[..., Sandbox]) -> None:
    api = Api(make_sandbox(rate_limit_rps=5, rate_limit_burst=3).url)
    answers = [api.get("/api/v1/models") for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert "rate limit" in answers[3].json()["error"]
    waits = [parse_retry_after(a.headers["Retry-After"], datetime.now(UTC)) for a in answers[3:]]
    assert all(w is not None and 0 < w <= 1 / 5 for w in waits)


def test_requests_at_the_allowed_rate_all_go_through(make_sandbox: Callable[..., Sandbox]) -> None:
    """Each request starts 60 ms after the previous answer, so they arrive below 20 a second."""
    api = Api(make_sandbox(rate_limit_rps=20).url)
    statuses = []
    for _ in range(10):
        statuses.append(api.get("/api/v1/models").status_code)
        time.sleep(0.06)
    assert statuses == [200] * 10


def test_a_trace_refused_by_the_rate_limit_is_not_created(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(rate_limit_rps=0.5)
    api = Api(sandbox.url)
    api.trace()
    refused = api.post("/api/v1/traces", json={"projectId": DEFAULT_PROJECT_ID, "modelId": "m1",
                                               "input": "in", "output": "out", "score": 0.9})
    assert refused.status_code == 429
    counts = sandbox.counts()
    assert (counts["traces"], counts["requests"]["trace_create"], counts["rate_limited"]) == (1, 2, 1)
    assert len(sandbox.world.traces()) == 1


def test_the_rate_limit_is_shared_by_every_route(make_sandbox: Callable[..., Sandbox]) -> None:
    api = Api(make_sandbox(rate_limit_rps=1, rate_limit_burst=2).url)
    assert api.get("/api/v1/models").status_code == 200
    assert api.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").status_code == 200
    assert api.chat("m1", "hello").status_code == 429


def test_a_request_without_a_key_is_401_and_takes_no_token(api: Api, sandbox: Sandbox) -> None:
    sandbox.set_rate_limit(0.5)
    assert Api(sandbox.url, key=None).get("/api/v1/models").status_code == 401
    assert [api.get("/api/v1/models").status_code for _ in range(2)] == [200, 429]


def test_concurrent_clients_get_no_more_than_burst_plus_rate_in_any_second(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(rate_limit_rps=20, rate_limit_burst=5)
    deadline = time.monotonic() + 1.2

    def hammer() -> None:
        api = Api(sandbox.url)
        while time.monotonic() < deadline:
            api.get("/api/v1/models")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [at for at, _ in sandbox.admitted()]
    assert sandbox.counts()["rate_limited"] > len(admitted)
    assert len(admitted) >= 20
    for i, start in enumerate(admitted):
        assert sum(1 for at in admitted[i:] if at < start + 1.0) <= 5 + 20


def test_the_ledger_records_each_admitted_request_with_its_route(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(rate_limit_rps=100, rate_limit_burst=10)
    api = Api(sandbox.url)
    before = time.monotonic()
    api.get("/api/v1/models")
    api.trace()
    admitted = sandbox.admitted()
    assert [route for _, route in admitted] == ["models", "trace_create"]
    assert all(before <= at <= time.monotonic() for at, _ in admitted)


def test_without_a_rate_limit_nothing_is_recorded(api: Api, sandbox: Sandbox) -> None:
    api.get("/api/v1/models")
    assert sandbox.admitted() == [] and sandbox.counts()["rate_limited"] == 0


def test_control_endpoint_sets_and_lifts_the_rate_limit(api: Api, sandbox: Sandbox) -> None:
    control = Api(sandbox.url, key=None)
    assert control.get("/_sandbox/rate-limit").json() == {"rps": None, "burst": 1}
    assert control.put("/_sandbox/rate-limit", json={"rps": 0.5}).json() == {"rps": 0.5, "burst": 1}
    assert [api.get("/api/v1/models").status_code for _ in range(2)] == [200, 429]
    assert control.get("/_sandbox/counts").status_code == 200  # never limited itself
    assert control.get("/_sandbox/state").json()["rate_limit"] == {"rps": 0.5, "burst": 1}
    control.put("/_sandbox/rate-limit", json={"rps": None})
    assert api.get("/api/v1/models").status_code == 200


@pytest.mark.parametrize("body", [{"rps": 0}, {"rps": "5"}, {"burst": 2}, {"rps": 5, "burst": 0}])
def test_control_endpoint_refuses_an_invalid_rate_limit(sandbox: Sandbox, body: Any) -> None:
    response = Api(sandbox.url, key=None).put("/_sandbox/rate-limit", json=body)
    assert response.status_code == 400
    assert sandbox.rate_limit.to_json() == {"rps": None, "burst": 1}


def test_control_endpoint_switches_structured_output(api: Api, sandbox: Sandbox) -> None:
    control = Api(sandbox.url, key=None)
    assert control.get("/_sandbox/structured-output").json() == {"enabled": True}
    assert control.put("/_sandbox/structured-output", json={"enabled": False}).json() == {
        "enabled": False}
    assert api.chat(JUDGE, "x", response_format=SCHEMA_FORMAT).status_code == 400
    assert control.get("/_sandbox/state").json()["structured_output"] == {"enabled": False}
    control.put("/_sandbox/structured-output", json={"enabled": True})
    assert api.chat(JUDGE, "x", response_format=SCHEMA_FORMAT).status_code == 200


@pytest.mark.parametrize("body", [{}, {"enabled": "no"}, {"enabled": 0}, {"enabled": True, "x": 1},
                                  [True]])
def test_control_endpoint_refuses_an_invalid_structured_output(sandbox: Sandbox, body: Any) -> None:
    response = Api(sandbox.url, key=None).put("/_sandbox/structured-output", json=body)
    assert response.status_code == 400
    assert sandbox.world.settings.structured_output is True


# -- counts and control endpoints -------------------------------------------------------------


def test_counts_separate_received_requests_from_actions(api: Api, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", times=1))
    api.post("/api/v1/traces", json={})
    trace_id = api.trace()["id"]
    api.add(trace_id)
    counts = sandbox.counts()
    assert counts["requests"] == {"trace_create": 2, "add_to_dataset": 1}
    assert (counts["traces"], counts["additions"]) == (1, {trace_id: 1})
    assert (counts["snapshots"], counts["jobs"], counts["recommendations_generated"]) == (0, 0, {})
    assert counts["faults_fired"] == {"status": 1}
    json.dumps(counts)


def test_control_counts_need_no_auth(api: Api, sandbox: Sandbox) -> None:
    api.trace()
    answer = Api(sandbox.url, key=None).get("/_sandbox/counts")
    assert answer.status_code == 200 and answer.json() == sandbox.counts()


def test_control_endpoint_adds_and_clears_faults(sandbox: Sandbox, api: Api) -> None:
    control = Api(sandbox.url, key=None)
    added = control.post("/_sandbox/faults", json={"route": "models", "status": 500, "times": 1})
    assert added.status_code == 200
    assert api.get("/api/v1/models").status_code == 500
    control.post("/_sandbox/faults", json={"route": "models"})
    assert control.delete("/_sandbox/faults").json() == {"cleared": 2}
    assert api.get("/api/v1/models").status_code == 200


@pytest.mark.parametrize(
    "rule", [{"kind": "explode"}, {"route": "nope"}, {"times": "2"}, {"colour": "red"}, ["status"]]
)
def test_control_endpoint_refuses_invalid_rules(sandbox: Sandbox, rule: Any) -> None:
    response = Api(sandbox.url, key=None).post("/_sandbox/faults", json=rule)
    assert response.status_code == 400
    assert sandbox.faults.rules() == []


def test_control_state_dumps_everything(api: Api, sandbox: Sandbox) -> None:
    _launch(api, api.snapshot())
    state = Api(sandbox.url, key=None).get("/_sandbox/state").json()
    assert {len(state[k]) for k in ("traces", "datapoints", "snapshots", "jobs")} == {1}
    assert state["projects"][0]["id"] == DEFAULT_PROJECT_ID


# -- lifecycle --------------------------------------------------------------------------------


def test_stop_closes_the_port_and_is_idempotent() -> None:
    sandbox = Sandbox()
    url = sandbox.start()
    api = Api(url)
    assert api.get("/api/v1/models").status_code == 200
    sandbox.stop()
    sandbox.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        api.get("/api/v1/models", timeout=1)


def test_context_manager_serves_inside_the_block() -> None:
    with Sandbox() as sandbox:
        assert sandbox.url == f"http://127.0.0.1:{sandbox.port}"
        assert Api(sandbox.url).get("/api/v1/models").status_code == 200
    assert not sandbox.running


def test_serve_forever_blocks_until_stopped() -> None:
    sandbox = Sandbox()
    ready: list[str] = []
    thread = threading.Thread(target=sandbox.serve_forever, kwargs={"on_ready": ready.append})
    thread.start()
    deadline = time.monotonic() + 2
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Api(ready[0]).get("/api/v1/models").status_code == 200
    sandbox.stop()
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_restarted_sandbox_keeps_its_state() -> None:
    sandbox = Sandbox()
    trace_id = Api(sandbox.start()).trace()["id"]
    sandbox.stop()
    try:
        assert Api(sandbox.start()).get("/api/v1/traces").json()["results"][0]["id"] == trace_id
    finally:
        sandbox.stop()


def test_a_sandbox_bug_answers_500_not_a_dropped_connection(
    api: Api, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job_id: str) -> dict[str, Any]:
        raise KeyError(job_id)

    monkeypatch.setattr(sandbox.world, "job", broken)
    response = api.get("/api/v1/public/finetuning/x")
    assert response.status_code == 500
    assert response.json() == {"error": "internal sandbox error"}
