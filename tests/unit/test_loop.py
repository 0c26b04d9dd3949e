"""The pure parts of following and promoting: reading a job, the decision, re-tuning."""

from __future__ import annotations

from typing import Any

import pytest

from cftrunner.config.run_options import LoopConfig
from cftrunner.exceptions import BadResponseError
from cftrunner.payloads.finetuning import parse_job
from cftrunner.stages.launch import retuned
from cftrunner.stages.promote import decide


def _job(status: str, *experiments: tuple[str, str | None]) -> dict[str, Any]:
    return {"id": "j1", "name": "n", "status": status, "experiments": [
        {"id": f"e{n}", "experiment_number": n, "base_model_id": "llama", "status": s,
         **({"model_id": m} if m else {})} for n, (s, m) in enumerate(experiments, 1)]}


@pytest.mark.parametrize(("body", "ended", "models"), [
    (_job("queued", ("queued", None)), False, []),
    (_job("processing", ("running", None), ("succeeded", "m2")), False, ["m2"]),
    (_job("completed", ("succeeded", "m1"), ("failed", None)), True, ["m1"]),
    (_job("failed", ("failed", None)), True, []),
    # A job said to be completed while an experiment still deploys is not over yet.
    (_job("completed", ("deploying", None), ("succeeded", "m2")), False, ["m2"]),
    # An experiment status never seen before is taken as still going.
    (_job("processing", ("warming_up", None)), False, []),
    # The job failed as a whole: over, whatever its experiments say.
    (_job("failed", ("running", None)), True, []),
    ({"id": "j", "status": "completed"}, True, []),
    ({"job": _job("completed", ("succeeded", "m1"))}, True, ["m1"]),
])
def test_a_job_is_read_defensively(body: dict[str, Any], ended: bool, models: list[str]) -> None:
    job = parse_job(body)
    assert job.ended is ended
    assert [e.model_id for e in job.experiments if e.succeeded] == models


def test_a_succeeded_experiment_without_a_model_is_not_a_model() -> None:
    job = parse_job(_job("completed", ("succeeded", None)))
    assert job.ended and not any(e.succeeded for e in job.experiments)


def test_an_experiment_model_in_its_metadata_is_read() -> None:
    job = parse_job({"status": "completed", "experiments": [
        {"id": "e", "status": "SUCCEEDED", "metadata": {"model_id": "m"}}]})
    assert [e.model_id for e in job.experiments if e.succeeded] == ["m"]


def test_a_job_answer_that_is_not_an_object_is_a_bad_response() -> None:
    with pytest.raises(BadResponseError):
        parse_job(["not", "a", "job"])


NEW = [{"id": "e1", "model_id": "m1", "base_model_id": "llama"},
       {"id": "e2", "model_id": "m2", "base_model_id": "llama"}]


def _summaries(current: float | None, m1: float | None, m2: float | None) -> dict[str, Any]:
    return {name: {"prompts": 10, "judged": 10 if mean is not None else 0, "mean": mean}
            for name, mean in (("cur", current), ("m1", m1), ("m2", m2))}


def test_the_best_new_model_is_promoted_when_no_worse() -> None:
    decision = decide("cur", NEW, _summaries(0.60, 0.58, 0.71), margin=0.0)
    assert decision["promoted"] and decision["model_id"] == "m2"
    assert decision["experiment_id"] == "e2" and decision["base_model_id"] == "llama"
    assert decision["current"]["mean"] == 0.60
    assert [c["mean"] for c in decision["candidates"]] == [0.58, 0.71]
    assert "m2 scored 0.710 against 0.600" in decision["reason"]


def test_a_worse_model_is_refused_beyond_the_margin_and_allowed_within_it() -> None:
    refused = decide("cur", NEW, _summaries(0.60, 0.50, 0.55), margin=0.01)
    assert not refused["promoted"] and refused["model_id"] == "m2"
    assert "below 0.600 for cur by more than the margin 0.01" in refused["reason"]
    assert decide("cur", NEW, _summaries(0.60, 0.50, 0.55), margin=0.05)["promoted"]


def test_no_judged_new_model_is_never_promoted() -> None:
    decision = decide("cur", NEW, _summaries(0.6, None, None), margin=1.0)
    assert not decision["promoted"] and "no new model got a valid judgment" in decision["reason"]


def test_the_loop_config_round_trips() -> None:
    config = LoopConfig(follow=True, promote=True, holdout=("a", "b"), holdout_source="h.json",
                        margin=0.02, retune_from={"experiment_id": "e1", "base_model_id": "b"})
    assert LoopConfig.from_json({**config.to_json(), "later": 1}) == config
    assert LoopConfig.from_json(None) == LoopConfig()


def test_a_retune_keeps_the_original_base_and_names_the_experiment() -> None:
    experiments = [{"base_model_id": "other", "n_epochs": 3}, {"base_model_id": "x", "lora": True}]
    loop = LoopConfig(retune_from={"experiment_id": "e7", "base_model_id": "llama",
                                   "model_id": "m7"})
    assert retuned(experiments, loop) == [
        {"base_model_id": "llama", "n_epochs": 3, "refinetune_from_experiment_id": "e7"},
        {"base_model_id": "llama", "lora": True, "refinetune_from_experiment_id": "e7"}]
    assert retuned(experiments, LoopConfig()) == experiments
