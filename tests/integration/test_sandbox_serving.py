"""The sandbox's models endpoints over real HTTP: a fine-tuned model answers only once loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner.sandbox import Sandbox
from tests.integration.test_sandbox import JUDGE, Api
from tests.integration.test_sandbox_training import BASE, _finished, _job_id

ALIAS = "safety-model-v2"


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox.url)


def _trained(api: Api) -> str:
    return str(_finished(api, _job_id(api))["experiments"][0]["model_id"])


def _running(api: Api, model: str) -> bool:
    response = api.get("/api/v1/models/running", params={"model": model})
    assert response.status_code == 200, response.text
    return bool(response.json()["status"])


def _up(api: Api, model: str, action: str = "up") -> Any:
    response = api.post(f"/api/v1/models/{action}", json={"model": model})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_trained_model_answers_chat_only_once_asked_up_and_its_delay_passed(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(model_load_delay=0.3)
    api = Api(sandbox.url)
    model = _trained(api)
    assert api.chat(model, "hello").status_code == 503
    assert not _running(api, model)
    assert isinstance(_up(api, model)["message"], str)
    assert not _running(api, model) and api.chat(model, "hello").status_code == 503
    time.sleep(0.3)
    assert _running(api, model) and api.chat(model, "hello").status_code == 200
    assert sandbox.serving()["models"] == {model: "running"}


def test_asking_up_again_does_not_restart_the_load(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(model_load_delay=0.3)
    api = Api(sandbox.url)
    model = _trained(api)
    _up(api, model)
    time.sleep(0.2)
    _up(api, model)
    time.sleep(0.15)
    assert _running(api, model)


def test_a_model_asked_down_answers_503_until_asked_up_again(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(model_load_delay=0.0)
    api = Api(sandbox.url)
    model = _trained(api)
    _up(api, model)
    assert api.chat(model, "hello").status_code == 200
    _up(api, model, "down")
    assert not _running(api, model) and api.chat(model, "hello").status_code == 503
    assert sandbox.serving()["asked_down"] == [model]


@pytest.mark.parametrize("model", [BASE, JUDGE, ALIAS])
def test_base_models_judges_and_aliases_are_always_loaded(api: Api, model: str) -> None:
    assert _running(api, model)
    _up(api, model, "down")
    assert _running(api, model) and api.chat(model, "hello").status_code == 200


def test_a_model_set_never_to_load_is_accepted_and_never_runs(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(model_load_delay=0.0, never_loads="-exp1")
    api = Api(sandbox.url)
    model = _trained(api)
    _up(api, model)
    assert not _running(api, model) and api.chat(model, "hello").status_code == 503


def test_a_model_set_to_be_refused_cannot_be_loaded(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(load_refused="-exp1")
    api = Api(sandbox.url)
    model = _trained(api)
    refused = api.post("/api/v1/models/up", json={"model": model})
    assert refused.status_code == 400 and "cannot be loaded" in refused.json()["error"]
    assert sandbox.serving()["asked_up"] == []


@pytest.mark.parametrize(("method", "path", "options"), [
    ("GET", "/api/v1/models/running", {}),
    ("POST", "/api/v1/models/up", {"json": {}}),
    ("POST", "/api/v1/models/down", {"json": {"model": 3}}),
])
def test_a_request_without_a_model_is_400(api: Api, method: str, path: str,
                                          options: dict[str, Any]) -> None:
    assert api.call(method, path, **options).status_code == 400


def test_the_control_route_reads_and_changes_the_loading(make_sandbox: Callable[..., Sandbox]
                                                         ) -> None:
    sandbox = make_sandbox()
    control = Api(sandbox.url, key=None)
    assert control.get("/_sandbox/model-loading").json()["delay"] == 0.2
    changed = control.put("/_sandbox/model-loading", json={"delay": 0, "never": "-exp2"})
    assert changed.status_code == 200
    assert (changed.json()["delay"], changed.json()["never"]) == (0, "-exp2")
    assert control.put("/_sandbox/model-loading", json={"delay": -1}).status_code == 400
    assert control.put("/_sandbox/model-loading", json={"speed": 1}).status_code == 400
