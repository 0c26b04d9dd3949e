"""The sandbox's models of known quality, its judge of correctness, and its training plans."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cftrunner.config.run_options import DEFAULT_TEMPLATE
from cftrunner.judge import judge_prompt, parse_judgment
from cftrunner.sandbox import llm
from cftrunner.sandbox.records import WorldSettings
from cftrunner.sandbox.training import ModelBook, TrainingPlan

PROMPTS = [f"Classify message {i}: 'is this chat safe?'" for i in range(400)]
VERDICT = re.compile(r"^(safe|unsafe\nS([1-9]|1[0-4]))$")
CUSTOM_TEMPLATE = "Rate this.\nQuestion: {prompt}\nReply: {answer}\nGive JSON with a score."


def _right(quality: float) -> set[str]:
    return {p for p in PROMPTS if llm.generate(p, quality) == llm.correct_answer(p)}


# -- answers --------------------------------------------------------------------------------------


def test_each_prompt_has_a_fixed_llama_guard_verdict_as_its_correct_answer() -> None:
    answers = [llm.correct_answer(p) for p in PROMPTS]
    assert all(VERDICT.match(a) for a in answers)
    assert answers == [llm.correct_answer(p) for p in PROMPTS]
    assert 0.35 < answers.count("safe") / len(answers) < 0.65


def test_the_wrong_answer_is_a_verdict_that_differs_from_the_correct_one() -> None:
    for prompt in PROMPTS:
        wrong = llm.wrong_answer(prompt)
        assert VERDICT.match(wrong) and wrong != llm.correct_answer(prompt)
        assert not llm.is_correct(prompt, wrong)


def test_difficulty_is_a_unit_number_spread_over_the_prompts() -> None:
    units = [llm.difficulty(p) for p in PROMPTS]
    assert all(0 <= u < 1 for u in units)
    assert min(units) < 0.05 and max(units) > 0.95


def test_a_model_of_quality_one_is_always_right_and_of_quality_zero_never() -> None:
    assert _right(1.0) == set(PROMPTS)
    assert _right(0.0) == set()


@pytest.mark.parametrize(("lower", "higher"), [(0.2, 0.5), (0.5, 2 / 3), (2 / 3, 0.82), (0.82, 0.97)])
def test_a_better_model_is_right_on_a_superset_of_prompts(lower: float, higher: float) -> None:
    worse, better = _right(lower), _right(higher)
    assert worse < better


def test_a_base_model_is_wrong_on_about_a_third_of_prompts() -> None:
    assert llm.BASE_QUALITY == 2 / 3
    wrong = len(PROMPTS) - len(_right(llm.BASE_QUALITY))
    assert 0.25 < wrong / len(PROMPTS) < 0.42


def test_generation_without_a_quality_is_the_base_models() -> None:
    assert [llm.generate(p) for p in PROMPTS] == [llm.generate(p, llm.BASE_QUALITY) for p in PROMPTS]


def test_correctness_ignores_case_margins_and_blank_lines() -> None:
    prompt = next(p for p in PROMPTS if llm.correct_answer(p) != "safe")
    category = llm.correct_answer(prompt).split("\n")[1]
    assert llm.is_correct(prompt, f"  UNSAFE \n\n {category.lower()}\n")
    assert not llm.is_correct(prompt, "unsafe")


# -- the judge ------------------------------------------------------------------------------------


def test_a_correct_answer_scores_from_0_6_and_a_wrong_one_to_0_4() -> None:
    right = [llm.expected_score(p, llm.correct_answer(p)) for p in PROMPTS]
    wrong = [llm.expected_score(p, llm.wrong_answer(p)) for p in PROMPTS]
    assert all(0.6 <= s <= 1.0 and round(s, 2) == s for s in right)
    assert all(0.0 <= s <= 0.4 and round(s, 2) == s for s in wrong)
    assert len(set(right)) > 20 and len(set(wrong)) > 20


@given(st.text(), st.text())
def test_the_judge_reads_the_prompt_and_answer_out_of_the_default_template(
    prompt: str, answer: str
) -> None:
    assert llm.sections(judge_prompt(prompt, answer, DEFAULT_TEMPLATE)) == (prompt, answer)


def test_the_judge_scores_an_answer_by_its_correctness_under_the_default_template() -> None:
    for prompt in PROMPTS[:60]:
        for answer in (llm.correct_answer(prompt), llm.wrong_answer(prompt)):
            verdict = llm.judgment(judge_prompt(prompt, answer))
            assert verdict["score"] == llm.expected_score(prompt, answer)


def test_the_judges_feedback_on_a_wrong_answer_names_the_correct_one() -> None:
    for prompt in PROMPTS[:60]:
        verdict = llm.judgment(judge_prompt(prompt, llm.wrong_answer(prompt)))
        feedback = str(verdict["feedback"])
        assert feedback.startswith("The classification is wrong")
        right = llm.correct_answer(prompt)
        assert ("answer `safe`" in feedback) if right == "safe" else right.split("\n")[1] in feedback


def test_the_judge_falls_back_to_the_hash_of_a_prompt_on_a_custom_template() -> None:
    for prompt in PROMPTS[:60]:
        asked = judge_prompt(prompt, llm.correct_answer(prompt), CUSTOM_TEMPLATE)
        assert llm.sections(asked) is None
        assert llm.judgment(asked)["score"] == llm.judge_score(asked)


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CUSTOM_TEMPLATE])
def test_some_judgments_still_have_reasoning_beyond_the_trace_limit(template: str) -> None:
    asked = [judge_prompt(p, llm.generate(p), template) for p in PROMPTS[:200]]
    long = [a for a in asked if len(str(llm.judgment(a)["reasoning"])) > 2048]
    assert 0.05 < len(long) / len(asked) < 0.25


def test_the_judge_judges_the_first_user_message_of_a_retry() -> None:
    prompt = PROMPTS[3]
    first = judge_prompt(prompt, llm.wrong_answer(prompt))
    turns = [("user", first), ("assistant", "Hmm."), ("user", "Answer with the JSON only.")]
    content = llm.answer(turns, judge=True, structured=True)
    assert parse_judgment(content).score == llm.expected_score(prompt, llm.wrong_answer(prompt))


def test_the_generator_answers_with_the_quality_it_is_given() -> None:
    prompt = next(p for p in PROMPTS if llm.difficulty(p) > 0.9)
    turns = [("user", prompt)]
    assert llm.answer(turns, judge=False, quality=1.0) == llm.correct_answer(prompt)
    assert llm.answer(turns, judge=False) == llm.wrong_answer(prompt)


def test_judgments_are_valid_json_with_the_three_fields() -> None:
    for prompt in PROMPTS[:30]:
        content = llm.judge_content(judge_prompt(prompt, llm.generate(prompt)), structured=True)
        assert set(json.loads(content)) == {"feedback", "reasoning", "score"}


# -- training plans and the model book ------------------------------------------------------------


def test_a_job_is_pending_then_running_then_deploying_for_its_polls_then_finished() -> None:
    plan = TrainingPlan(polls=3)
    assert [plan.stage(reads) for reads in range(6)] == [
        "pending", "running", "running", "deploying", "finished", "finished"]
    assert [TrainingPlan(polls=1).stage(reads) for reads in range(3)] == [
        "pending", "deploying", "finished"]
    assert [TrainingPlan(polls=0).stage(reads) for reads in range(2)] == ["pending", "finished"]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("succeeded", ["succeeded"] * 3),
        ("failed", ["failed"] * 3),
        ("mixed", ["failed", "succeeded", "succeeded"]),
        ("deleted", ["deleted", "succeeded", "succeeded"]),
    ],
)
def test_how_experiments_end_per_outcome(outcome: str, expected: list[str]) -> None:
    plan = TrainingPlan(outcome=outcome)
    assert [plan.ending(n) for n in (1, 2, 3)] == expected
    assert [plan.succeeds(n) for n in (1, 2, 3)] == [e == "succeeded" for e in expected]


def test_a_trained_model_gains_the_plans_gain_plus_a_step_per_later_experiment() -> None:
    plan = TrainingPlan(gain=0.15)
    assert plan.quality(0.5, 1) == pytest.approx(0.65)
    assert plan.quality(0.5, 3) == pytest.approx(0.67)
    assert plan.quality(0.95, 1) == 1.0
    assert TrainingPlan(gain=-0.3).quality(0.2, 1) == 0.0


@pytest.mark.parametrize(
    "change", [{"polls": -1}, {"polls": 1.5}, {"polls": True}, {"outcome": "partial"},
               {"gain": "0.1"}, {"gain": 2}, {"gain": float("nan")}])
def test_an_invalid_plan_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TrainingPlan(**change)


def test_a_control_update_names_any_of_polls_outcome_and_gain() -> None:
    assert TrainingPlan.parse_update({}) == {}
    assert TrainingPlan.parse_update({"outcome": "mixed", "gain": 0}) == {
        "outcome": "mixed", "gain": 0.0}


@pytest.mark.parametrize(
    "data", [[], {"polls": None}, {"polls": "3"}, {"colour": "red"}, {"gain": True}])
def test_an_invalid_control_update_is_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        TrainingPlan.parse_update(data)


def test_model_names_are_unique_and_safe() -> None:
    book = ModelBook(0.5, reserved=["run-exp1"])
    names = [book.reserve("run", 1), book.reserve("run", 1), book.reserve("my run/2", 1)]
    assert names == ["run-exp1-2", "run-exp1-3", "my-run-2-exp1"]


def test_a_models_quality_is_as_set_else_as_trained_else_the_base() -> None:
    book = ModelBook(0.5)
    assert book.quality("anything") == 0.5
    book.trained("m", 0.7)
    assert (book.quality("m"), book.fine_tuned()) == (0.7, ("m",))
    book.set_quality("m", 0.1)
    assert book.quality("m") == 0.1
    with pytest.raises(ValueError):
        book.set_quality("m", 1.5)


@pytest.mark.parametrize(
    "change", [{"training_polls": -1}, {"training_outcome": "x"}, {"training_gain": 5.0},
               {"base_quality": -0.1}, {"base_quality": 1.1}])
def test_world_settings_refuse_invalid_training(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WorldSettings(**change)
