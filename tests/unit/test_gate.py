"""The gate's conditions as a pure function of the facts."""

from __future__ import annotations

import pytest

from cftrunner.config.run_options import GateConfig
from cftrunner.gate import Facts, evaluate

FACTS = Facts(traces_added=40, below_threshold=12, mean_score=0.71, tokens_used=90_000,
              items_over_budget=0)


def test_the_default_gate_passes_anything() -> None:
    empty = Facts(traces_added=0, below_threshold=0, mean_score=None, tokens_used=0,
                  items_over_budget=0)
    assert evaluate(GateConfig(), empty).passed
    assert evaluate(GateConfig(), FACTS).passed


@pytest.mark.parametrize(("config", "reason"), [
    (GateConfig(min_traces=41), "40 traces added, fewer than the 41 required"),
    (GateConfig(min_below_threshold=13, score_threshold=0.6),
     "12 scored below 0.6, fewer than the 13 required"),
    (GateConfig(max_mean_score=0.7), "the mean score 0.710 is already above the target 0.7"),
    (GateConfig(token_budget=89_999), "the token budget of 89999 ran out (90000 used)"),
])
def test_each_condition_refuses_with_its_reason(config: GateConfig, reason: str) -> None:
    verdict = evaluate(config, FACTS)
    assert not verdict.passed and verdict.reasons == (reason,)


@pytest.mark.parametrize("config", [
    GateConfig(min_traces=40), GateConfig(min_below_threshold=12),
    GateConfig(max_mean_score=0.71), GateConfig(token_budget=90_000),
])
def test_each_condition_met_exactly_passes(config: GateConfig) -> None:
    assert evaluate(config, FACTS).passed


def test_items_left_by_the_budget_fail_it_even_within_the_count() -> None:
    facts = Facts(traces_added=3, below_threshold=1, mean_score=0.5, tokens_used=900,
                  items_over_budget=7)
    verdict = evaluate(GateConfig(token_budget=1000), facts)
    assert verdict.reasons == ("the token budget of 1000 ran out (900 used, 7 items not "
                               "generated or judged)",)


def test_a_mean_target_with_no_scores_is_not_a_reason() -> None:
    facts = Facts(traces_added=0, below_threshold=0, mean_score=None, tokens_used=0,
                  items_over_budget=0)
    assert evaluate(GateConfig(max_mean_score=0.1), facts).passed


def test_the_verdict_round_trips_as_json() -> None:
    config = GateConfig(min_traces=50, token_budget=10)
    stored = evaluate(config, FACTS).to_json()
    assert stored["passed"] is False and len(stored["reasons"]) == 2
    assert GateConfig.from_json(stored["config"]) == config
    assert GateConfig.from_json(None) == GateConfig()
