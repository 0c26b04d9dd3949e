"""Fine-tuning in the sandbox over real HTTP: jobs that train per read, models that get better."""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import mean
from typing import Any

import pytest
import requests

from cftrunner.judge import judge_prompt, parse_judgment
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox, llm
from tests.integration.test_sandbox import EXPERIMENTS, JUDGE, Api

BASE = EXPERIMENTS[0]["base_model_id"]
ALIAS = "safety-model-v2"
PROMPTS = [f"Classify message {i}: 'can I return this jacket?'" for i in range(40)]


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox.url)


def _launch(api: Api, experiments: list[dict[str, Any]] | None = None, name: str = "cft-run-1"
            ) -> requests.Response:
    return api.post(
        "/api/v1/public/finetuning/create",
        json={"snapshot_id": api.snapshot(), "name": name, "experiments": experiments or EXPERIMENTS},
    )


def _job_id(api: Api, experiments: list[dict[str, Any]] | None = None, name: str = "cft-run-1"
            ) -> str:
    response = _launch(api, experiments, name)
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


def _read(api: Api, job_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/public/finetuning/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _finished(api: Api, job_id: str) -> dict[str, Any]:
    """The job read until it is no longer processing, as a client polls it."""
    for _ in range(20):
        job = _read(api, job_id)
        if job["status"] != "processing":
            return job
    raise AssertionError(f"job {job_id} never finished")


def _tree_job(api: Api, job_id: str) -> dict[str, Any]:
    tree = api.get(f"/api/v1/public/projects/{DEFAULT_PROJECT_ID}").json()
    nodes = [j for s in tree["project"]["children"][0]["children"] for j in s["children"]]
    return next(j for j in nodes if j["id"] == job_id)


def _retune(experiment_id: str) -> list[dict[str, Any]]:
    return [{**EXPERIMENTS[0], "refinetune_from_experiment_id": experiment_id}]


def _loaded(api: Api, model: str) -> str:
    """`model` asked up and polled until it runs, as a client does before it sends prompts."""
    assert api.post("/api/v1/models/up", json={"model": model}).status_code == 200
    for _ in range(200):
        if api.get("/api/v1/models/running", params={"model": model}).json()["status"]:
            return model
        time.sleep(0.01)
    raise AssertionError(f"model {model} never came up")


def _mean_score(api: Api, model: str) -> float:
    """The judge's mean score for the model's answers, asked with the built-in template."""
    _loaded(api, model)
    scores = []
    for prompt in PROMPTS:
        answer = api.content(model, prompt)
        scores.append(parse_judgment(api.content(JUDGE, judge_prompt(prompt, answer))).score)
    return mean(scores)


# -- status per read ------------------------------------------------------------------------------


def test_a_job_is_processing_for_its_polls_then_completed(api: Api) -> None:
    job_id = _job_id(api)
    reads = [_read(api, job_id) for _ in range(5)]
    assert [j["status"] for j in reads] == [
        "processing", "processing", "processing", "completed", "completed"]
    assert [[e["status"] for e in j["experiments"]] for j in reads] == [
        ["pending"] * 2, ["running"] * 2, ["deploying"] * 2, ["succeeded"] * 2, ["succeeded"] * 2]
    assert all("model_id" not in e for j in reads[:3] for e in j["experiments"])
    assert all(e["model_id"] for j in reads[3:] for e in j["experiments"])


def test_a_finished_experiment_keeps_every_field_sent_for_it(api: Api, sandbox: Sandbox) -> None:
    job = _finished(api, _job_id(api))
    for number, (shown, sent) in enumerate(zip(job["experiments"], EXPERIMENTS, strict=True), 1):
        assert {k: shown[k] for k in sent} == sent
        assert set(shown) == {*sent, "id", "experiment_number", "status", "model_id"}
        assert shown["experiment_number"] == number
    assert sandbox.world.sent_experiments(job["id"]) == EXPERIMENTS


def test_reading_the_project_tree_does_not_advance_a_job(api: Api) -> None:
    job_id = _job_id(api)
    for _ in range(5):
        node = _tree_job(api, job_id)
    assert node["status"] == "processing"
    assert [(e["status"], e["metadata"]["model_id"]) for e in node["children"]] == [
        ("pending", None)] * 2
    assert [e["status"] for e in _read(api, job_id)["experiments"]] == ["pending"] * 2


def test_the_project_tree_shows_the_job_as_its_last_read_left_it(api: Api) -> None:
    job_id = _job_id(api)
    _read(api, job_id)
    assert _tree_job(api, job_id)["status"] == "processing"
    assert {e["status"] for e in _tree_job(api, job_id)["children"]} == {"running"}
    job = _finished(api, job_id)
    node = _tree_job(api, job_id)
    assert node["status"] == "completed"
    assert [e["metadata"]["model_id"] for e in node["children"]] == [
        e["model_id"] for e in job["experiments"]]


def test_with_zero_polls_a_job_finishes_on_the_second_read(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    api = Api(make_sandbox(training_polls=0).url)
    job_id = _job_id(api)
    assert [_read(api, job_id)["status"] for _ in range(2)] == ["processing", "completed"]


# -- outcomes -------------------------------------------------------------------------------------


def test_a_failed_training_fails_every_experiment_and_the_job(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = make_sandbox(training_outcome="failed")
    api = Api(sandbox.url)
    job = _finished(api, _job_id(api))
    assert job["status"] == "failed"
    assert [e["status"] for e in job["experiments"]] == ["failed", "failed"]
    assert all("model_id" not in e for e in job["experiments"])
    assert [e["metadata"]["model_id"] for e in _tree_job(api, job["id"])["children"]] == [None] * 2
    assert len(api.get("/api/v1/models").json()["data"]) == 5


def test_a_deleted_training_deletes_the_first_experiment_and_completes_the_job(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    api = Api(make_sandbox(training_outcome="deleted").url)
    job = _finished(api, _job_id(api))
    assert job["status"] == "completed"
    assert [e["status"] for e in job["experiments"]] == ["deleted", "succeeded"]
    assert [e["status"] for e in _tree_job(api, job["id"])["children"]] == ["deleted", "succeeded"]


def test_a_mixed_training_fails_the_first_experiment_and_completes_the_job(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    api = Api(make_sandbox(training_outcome="mixed").url)
    job = _finished(api, _job_id(api))
    assert job["status"] == "completed"
    first, second = job["experiments"]
    assert (first["status"], second["status"]) == ("failed", "succeeded")
    assert "model_id" not in first and second["model_id"]


def test_a_job_keeps_the_training_settings_it_was_created_with(
    api: Api, sandbox: Sandbox
) -> None:
    job_id = _job_id(api)
    sandbox.set_training(polls=0, outcome="failed")
    assert [_read(api, job_id)["status"] for _ in range(4)][-1] == "completed"
    assert _finished(api, _job_id(api, name="cft-run-2"))["status"] == "failed"


# -- models ---------------------------------------------------------------------------------------


def test_finished_models_are_listed_and_unique(api: Api) -> None:
    first, again = _job_id(api), _job_id(api)  # the same job name twice
    listed = [m["id"] for m in api.get("/api/v1/models").json()["data"]]
    models = [e["model_id"] for j in (first, again) for e in _finished(api, j)["experiments"]]
    assert len(set(models)) == 4
    assert not set(models) & set(listed)
    after = [m["id"] for m in api.get("/api/v1/models").json()["data"]]
    assert after == listed + models


def test_a_fine_tuned_model_answers_chat_with_its_quality(api: Api, sandbox: Sandbox) -> None:
    model = _loaded(api, _finished(api, _job_id(api))["experiments"][0]["model_id"])
    quality = sandbox.model_quality(model)
    assert quality == pytest.approx(llm.BASE_QUALITY + 0.15)
    answers = [api.content(model, p) for p in PROMPTS]
    assert answers == [llm.generate(p, quality) for p in PROMPTS]
    assert answers != [api.content(ALIAS, p) for p in PROMPTS]


def test_base_models_and_any_alias_answer_with_the_base_quality(sandbox: Sandbox) -> None:
    for model in (BASE, ALIAS, "demo-safety-classifier-v1", "m"):
        assert sandbox.model_quality(model) == pytest.approx(2 / 3)


def test_each_later_experiment_of_a_job_gains_a_little_more(api: Api, sandbox: Sandbox) -> None:
    first, second = _finished(api, _job_id(api))["experiments"]
    assert sandbox.model_quality(first["model_id"]) == pytest.approx(2 / 3 + 0.15)
    assert sandbox.model_quality(second["model_id"]) == pytest.approx(2 / 3 + 0.16)


def test_retuning_an_experiment_trains_from_its_model(api: Api, sandbox: Sandbox) -> None:
    parent = _finished(api, _job_id(api))["experiments"][1]
    job = _finished(api, _job_id(api, _retune(parent["id"]), name="cft-run-2"))
    [child] = job["experiments"]
    assert child["refinetune_from_experiment_id"] == parent["id"]
    assert child["base_model_id"] == BASE
    assert sandbox.model_quality(child["model_id"]) == pytest.approx(2 / 3 + 0.16 + 0.15)


def test_a_fine_tuned_model_as_base_model_id_trains_from_it(api: Api, sandbox: Sandbox) -> None:
    parent = _finished(api, _job_id(api))["experiments"][0]["model_id"]
    job = _finished(api, _job_id(api, [{**EXPERIMENTS[0], "base_model_id": parent}], "run-2"))
    assert sandbox.model_quality(job["experiments"][0]["model_id"]) == pytest.approx(
        2 / 3 + 0.3)


def test_training_starts_from_a_quality_set_directly_and_stays_within_one(
    api: Api, sandbox: Sandbox
) -> None:
    sandbox.set_model_quality(BASE, 0.9)
    [model] = [e["model_id"] for e in _finished(api, _job_id(api, EXPERIMENTS[:1]))["experiments"]]
    assert sandbox.model_quality(model) == 1.0
    sandbox.set_model_quality(model, 0.2)
    assert sandbox.model_quality(model) == 0.2


def test_a_negative_gain_makes_a_worse_model(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(training_gain=-0.25, base_quality=0.5)
    api = Api(sandbox.url)
    [experiment] = _finished(api, _job_id(api, EXPERIMENTS[:1]))["experiments"]
    assert sandbox.model_quality(experiment["model_id"]) == pytest.approx(0.25)
    assert sandbox.model_quality(ALIAS) == 0.5


@pytest.mark.parametrize("source", ["nope", 7])
def test_retuning_from_an_unknown_experiment_is_400_and_creates_nothing(
    api: Api, sandbox: Sandbox, source: Any
) -> None:
    response = _launch(api, _retune(source))
    assert response.status_code == 400 and "refinetune_from_experiment_id" in response.text
    assert sandbox.counts()["jobs"] == 0 and sandbox.world.jobs() == []


def test_retuning_from_an_unfinished_or_failed_experiment_is_400(
    api: Api, sandbox: Sandbox
) -> None:
    sandbox.set_training(outcome="mixed")
    job_id = _job_id(api)
    running = _read(api, job_id)["experiments"][1]["id"]
    assert _launch(api, _retune(running)).status_code == 400
    failed = _finished(api, job_id)["experiments"][0]["id"]
    assert _launch(api, _retune(failed)).status_code == 400
    assert _launch(api, _retune(running)).status_code == 200


# -- the judge sees the difference ----------------------------------------------------------------


def test_the_judge_scores_a_better_model_higher(api: Api) -> None:
    model = _finished(api, _job_id(api))["experiments"][1]["model_id"]
    base, tuned = _mean_score(api, ALIAS), _mean_score(api, model)
    assert tuned > base + 0.05


def test_two_cycles_promote_a_better_model_then_refuse_a_worse_one(
    api: Api, sandbox: Sandbox
) -> None:
    """What a runner does: cycle 1 trains from the base model and promotes its best new model;
    cycle 2 re-tunes that one, and its new model, worse, is not promoted."""
    promoted, promoted_score = ALIAS, _mean_score(api, ALIAS)
    job = _finished(api, _job_id(api))
    best = max(job["experiments"], key=lambda e: _mean_score(api, e["model_id"]))
    score = _mean_score(api, best["model_id"])
    assert score > promoted_score
    promoted, promoted_score = best["model_id"], score

    sandbox.set_training(gain=-0.3)
    job = _finished(api, _job_id(api, _retune(best["id"]), name="cft-run-2"))
    [retuned] = job["experiments"]
    assert _mean_score(api, retuned["model_id"]) < promoted_score
    assert promoted == best["model_id"]


# -- controls -------------------------------------------------------------------------------------


def test_the_control_route_reads_and_changes_the_training(api: Api, sandbox: Sandbox) -> None:
    control = Api(sandbox.url, key=None)
    assert control.get("/_sandbox/training").json() == {
        "polls": 2, "outcome": "succeeded", "gain": 0.15}
    changed = control.put("/_sandbox/training", json={"polls": 0, "outcome": "mixed"})
    assert changed.json() == {"polls": 0, "outcome": "mixed", "gain": 0.15}
    assert control.get("/_sandbox/state").json()["training"] == changed.json()
    job_id = _job_id(api)
    assert [e["status"] for e in [_read(api, job_id) for _ in range(2)][1]["experiments"]] == [
        "failed", "succeeded"]


@pytest.mark.parametrize(
    "body", [[], {"polls": -1}, {"polls": "2"}, {"outcome": "partial"}, {"gain": 1.5},
             {"gain": None}, {"speed": 1}])
def test_the_control_route_refuses_invalid_training(sandbox: Sandbox, body: Any) -> None:
    response = Api(sandbox.url, key=None).put("/_sandbox/training", json=body)
    assert response.status_code == 400
    assert Api(sandbox.url, key=None).get("/_sandbox/training").json()["polls"] == 2


def test_the_state_shows_trained_and_set_qualities(api: Api, sandbox: Sandbox) -> None:
    sandbox.set_model_quality(ALIAS, 0.5)
    [experiment] = _finished(api, _job_id(api, EXPERIMENTS[:1]))["experiments"]
    state = Api(sandbox.url, key=None).get("/_sandbox/state").json()
    assert state["model_qualities"] == {
        experiment["model_id"]: pytest.approx(2 / 3 + 0.15), ALIAS: 0.5}
    assert state["jobs"][0]["status"] == "completed"


def test_invalid_training_arguments_are_refused_by_the_sandbox() -> None:
    with pytest.raises(ValueError):
        Sandbox(training_outcome="partial")
    with pytest.raises(ValueError):
        Sandbox().set_training(polls=-1)
    with pytest.raises(ValueError):
        Sandbox().set_model_quality(ALIAS, 2.0)
