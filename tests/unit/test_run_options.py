"""The records a run stores in runs.judge_config, gate_config and loop_config: their JSON is in every
existing state database, so its keys, their order and their JSON types must not change."""

from __future__ import annotations

import json
from dataclasses import replace

from cftrunner.config.run_options import DEFAULT_TEMPLATE, GateConfig, JudgeConfig, LoopConfig
from cftrunner.states import RunState
from tests.conftest import make_run


def test_the_stored_json_keeps_its_format() -> None:
    assert json.dumps(JudgeConfig(template="{prompt} {answer}", template_source="/j.txt").to_json()) == (
        '{"template": "{prompt} {answer}", "temperature": 0.1, "max_tokens": 4096, '
        '"structured_output": true, "template_source": "/j.txt", "calibration": [], '
        '"calibration_source": null}')
    assert json.dumps(GateConfig(min_traces=5, token_budget=1000).to_json()) == (
        '{"min_traces": 5, "min_below_threshold": 0, "score_threshold": 0.5, '
        '"max_mean_score": null, "token_budget": 1000, "max_judge_error": null}')
    loop = LoopConfig(follow=True, promote=True, holdout=("a", "b"), holdout_source="/h.json",
                      margin=0.05, retune_from={"model_id": "m", "run_id": "r"})
    assert json.dumps(loop.to_json()) == (
        '{"follow": true, "promote": true, "holdout": ["a", "b"], "holdout_source": "/h.json", '
        '"margin": 0.05, "retune_from": {"model_id": "m", "run_id": "r"}, "regression": false, '
        '"unload_losers": false}')


def test_a_stored_object_loads_whatever_cftrunner_wrote_it() -> None:
    # A row from before a key existed, a row with a key this version does not know, and no row.
    assert LoopConfig.from_json({"follow": True, "holdout": ["a"]}) == LoopConfig(
        follow=True, holdout=("a",))
    assert GateConfig.from_json({"min_traces": 3, "later_key": [1]}) == GateConfig(min_traces=3)
    assert JudgeConfig.from_json(None) == JudgeConfig(template=DEFAULT_TEMPLATE)
    stored = json.loads(json.dumps(LoopConfig(holdout=("x",), retune_from={"a": [1]}).to_json()))
    assert LoopConfig.from_json(stored) == LoopConfig(holdout=("x",), retune_from={"a": [1]})


def test_the_json_is_a_copy_of_the_record() -> None:
    loop = LoopConfig(retune_from={"model_id": "m"})
    loop.to_json()["retune_from"]["model_id"] = "changed"
    assert loop.retune_from == {"model_id": "m"}


def test_a_run_reads_its_stored_configs_and_ends_at_launched_only_when_it_does_not_follow() -> None:
    launched = replace(make_run(), state=RunState.LAUNCHED)
    assert (launched.judge, launched.gate, launched.loop) == (JudgeConfig(), GateConfig(),
                                                              LoopConfig())
    assert launched.finished  # stored before 0004: no loop config, so LAUNCHED ends it
    following = replace(launched, loop_config=LoopConfig(follow=True).to_json(),
                        gate_config=GateConfig(token_budget=50).to_json())
    assert following.loop.follow and following.gate.token_budget == 50
    assert not following.finished
    trained = replace(following, state=RunState.TRAINED)
    assert trained.finished  # it follows, and does not promote
    assert not replace(trained, loop_config=LoopConfig(follow=True, promote=True,
                                                       holdout=("h",)).to_json()).finished
