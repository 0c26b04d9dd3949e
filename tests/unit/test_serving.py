"""Reading the models endpoints' answers, finding a model in the list, and a decision with models
left out."""

from __future__ import annotations

from typing import Any

import pytest

from cftrunner.config.cycle import Cycle
from cftrunner.config.resolution import resolve
from cftrunner.config.settings import KEY_BY_NAME
from cftrunner.exceptions import BadResponseError, InputError
from cftrunner.payloads.finetuning import parse_model_ids, parse_running
from cftrunner.stages.promote import decide
from cftrunner.stages.serving import is_listed


@pytest.mark.parametrize(("body", "ids"), [
    ({"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}]}, ["a", "b"]),
    ({"data": [{"id": "a"}, {"name": "no id"}, "b", 7, {"id": ""}]}, ["a", "b"]),
    ({"models": [{"model_id": "a"}]}, ["a"]),
    (["a", {"id": "b"}], ["a", "b"]),
])
def test_the_model_list_is_read_defensively(body: Any, ids: list[str]) -> None:
    assert parse_model_ids(body) == ids


@pytest.mark.parametrize("body", [{"object": "list"}, "models", None, {"data": {"id": "a"}}])
def test_a_model_list_without_its_list_is_a_bad_response(body: Any) -> None:
    with pytest.raises(BadResponseError):
        parse_model_ids(body)


@pytest.mark.parametrize(("body", "running"), [
    ({"status": True}, True), ({"status": False}, False), ({"running": True}, True),
    ({"status": "running"}, True), ({"status": "Loaded"}, True), ({"status": "loading"}, False),
])
def test_a_model_status_is_read_defensively(body: Any, running: bool) -> None:
    assert parse_running(body) is running


@pytest.mark.parametrize("body", [{}, {"status": None}, {"status": 1}, [True], None])
def test_a_model_status_without_a_status_is_a_bad_response(body: Any) -> None:
    with pytest.raises(BadResponseError):
        parse_running(body)


def test_a_model_is_found_in_the_list_as_it_is_or_under_a_user_prefix() -> None:
    assert is_listed("m-exp1", ["judge", "m-exp1"])
    assert is_listed("m-exp1", ["user-42/m-exp1"])
    assert not is_listed("m-exp1", ["m-exp10", "xm-exp1", "m-exp1/x"])


def test_models_left_out_are_in_the_decision_and_none_left_means_not_promoted() -> None:
    summaries = {"cur": {"prompts": 3, "judged": 3, "mean": 0.5},
                 "m1": {"prompts": 3, "judged": 3, "mean": 0.7}}
    excluded = [{"model_id": "m2", "reason": "not running"}]
    decision = decide("cur", [{"id": "e1", "model_id": "m1"}], summaries, 0.0, excluded)
    assert decision["promoted"] and decision["excluded"] == excluded
    none_up = decide("cur", [], {"cur": summaries["cur"]}, 0.0,
                     [*excluded, {"model_id": "m1", "reason": "HTTP 400"}])
    assert not none_up["promoted"] and none_up["candidates"] == []
    assert none_up["reason"] == ("no new model came up for inference (m2: not running; "
                                 "m1: HTTP 400)")


def test_unload_losers_needs_promote_and_is_a_per_cycle_key() -> None:
    with pytest.raises(InputError, match="unload_losers = true needs promote = true"):
        Cycle(unload_losers=True).loop()
    assert KEY_BY_NAME["unload_losers"].target == "cycle.unload_losers"
    assert KEY_BY_NAME["timeouts.model_load"].target == "settings.model_load_timeout"


def test_the_loading_settings_come_from_the_file_and_the_environment(tmp_path: Any) -> None:
    holdout = tmp_path / "holdout.json"
    holdout.write_text('["h"]')
    (tmp_path / "cftrunner.toml").write_text(
        'promote = true\nholdout_prompts = "holdout.json"\nunload_losers = true\n'
        '[timeouts]\nmodel_give_up = "30m"\n')
    resolved = resolve({}, env={"CFTRUNNER_MODEL_LOAD_TIMEOUT": "90s"}, cwd=tmp_path)
    assert resolved.settings.model_load_timeout == 90.0
    assert resolved.settings.model_give_up == 1800.0
    assert resolved.cycle.loop().unload_losers
