"""The judge against the sandbox: its template, structured output, the audit trail of every
completion, malformed and truncated answers, and token counts."""

from __future__ import annotations

from collections.abc import Callable

from cftrunner.config.run_options import RESPONSE_FORMAT, JudgeConfig
from cftrunner.judge import REMINDER, judge_prompt
from cftrunner.payloads import bodies
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.states import ItemStage, RunState
from tests.conftest import JUDGE, PROMPTS, Harness, assert_exactly_once


def _judge_rows(harness: Harness, item_id: int) -> list:  # type: ignore[type-arg]
    return [c for c in harness.store.completions(item_id) if c.kind == "judge"]


def test_every_item_keeps_the_exact_judge_request_and_answer(harness: Harness,
                                                             sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    config = JudgeConfig()
    for item in harness.store.items(run.id):
        rows = harness.store.completions(item.id)
        assert [(c.kind, c.attempt, c.outcome) for c in rows] == [("generate", 1, "ok"),
                                                                   ("judge", 1, "ok")]
        generate, judged = rows
        assert generate.request is None and generate.content is None  # the item holds them
        assert judged.request == bodies.chat_body(
            run.project_id, JUDGE,
            [{"role": "user", "content": judge_prompt(item.prompt, item.answer or "")}],
            config.temperature, config.max_tokens, RESPONSE_FORMAT)
        assert judged.content == item.judge_raw and judged.finish_reason == "stop"
        assert all(c.total_tokens and c.total_tokens > 0 for c in rows)
    counted = sum(c.total_tokens or 0 for i in harness.store.items(run.id)
                  for c in harness.store.completions(i.id))
    assert harness.store.tokens_used(run.id) == counted
    assert sandbox.counts()["chat"] == {"generate": len(PROMPTS), "judge": len(PROMPTS)}


def test_a_replaced_template_is_what_the_judge_sees(harness: Harness, sandbox: Sandbox) -> None:
    template = "Q: {prompt}\nA: {answer}\nScore it 0..1 as JSON {feedback, reasoning, score}."
    run = harness.runner.drive(harness.start(judge=JudgeConfig(template=template,
                                                               template_source="mine.txt")))
    assert run.state is RunState.LAUNCHED
    assert run.judge_config is not None and run.judge_config["template"] == template
    item = harness.store.items(run.id)[0]
    [judged] = _judge_rows(harness, item.id)
    assert judged.request is not None
    assert judged.request["messages"][0]["content"] == (
        f"Q: {item.prompt}\nA: {item.answer}\nScore it 0..1 as JSON {{feedback, reasoning, score}}.")


def test_malformed_answers_are_kept_and_retried_with_the_reminder(harness: Harness,
                                                                  sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, match="message 3",
                                times=2))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    item = harness.store.items(run.id)[3]
    rows = _judge_rows(harness, item.id)
    assert [(c.attempt, c.outcome) for c in rows] == [(1, "malformed"), (2, "malformed"),
                                                       (3, "ok")]
    assert rows[0].error and rows[0].content
    assert rows[1].request is not None
    assert rows[1].request["messages"][1:] == [
        {"role": "assistant", "content": rows[0].content}, {"role": "user", "content": REMINDER}]
    assert item.stage is ItemStage.ADDED and item.judge_attempts == 3


def test_a_truncated_answer_is_retried_not_parsed(harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="truncated", judge=True, match="message 5",
                                times=1))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    item = harness.store.items(run.id)[5]
    rows = _judge_rows(harness, item.id)
    assert [(c.outcome, c.finish_reason) for c in rows] == [("truncated", "length"),
                                                             ("ok", "stop")]
    assert item.score is not None and item.judge_attempts == 2


def test_an_answer_always_cut_off_fails_the_item_as_truncated(harness: Harness,
                                                              sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="truncated", judge=True, match="message 2"))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    item = harness.store.items(run.id)[2]
    assert item.stage is ItemStage.JUDGE_FAILED and item.error_kind == "judge_truncated"
    assert item.score is None and item.trace_id is None
    assert [c.outcome for c in _judge_rows(harness, item.id)] == ["truncated"] * 3


def test_the_maximum_output_length_is_sent_and_a_cut_answer_never_scores(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(judge=JudgeConfig(max_tokens=5)))
    assert run.state is RunState.FAILED and "every item failed" in (run.failure_reason or "")
    items = harness.store.items(run.id)
    assert {i.stage for i in items} == {ItemStage.JUDGE_FAILED}
    assert {i.error_kind for i in items} == {"judge_truncated"}
    assert sandbox.counts()["traces"] == 0
    rows = _judge_rows(harness, items[0].id)
    assert rows[0].request is not None and rows[0].request["max_completion_tokens"] == 5


def test_refused_structured_output_falls_back_to_the_prompt_alone(harness: Harness,
                                                                  sandbox: Sandbox) -> None:
    sandbox.set_structured_output(False)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(PROMPTS))
    rows = [c for i in harness.store.items(run.id) for c in _judge_rows(harness, i.id)]
    refused = [c for c in rows if c.outcome == "rejected"]
    assert refused and all("response_format" in (c.error or "") for c in refused)
    assert all(c.request and "response_format" in c.request for c in refused)
    answered = [c for c in rows if c.outcome == "ok"]
    assert len(answered) == len(PROMPTS)
    assert all(c.request and "response_format" not in c.request for c in answered)
    # Refusals are not judge attempts: every item was judged on its first answer.
    assert {i.judge_attempts for i in harness.store.items(run.id)} == {1}


def test_structured_output_can_be_turned_off(harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(judge=JudgeConfig(structured_output=False)))
    assert run.state is RunState.LAUNCHED
    rows = [c for i in harness.store.items(run.id) for c in _judge_rows(harness, i.id)]
    assert rows and all(c.request and "response_format" not in c.request for c in rows)


def test_a_resumed_run_judges_with_the_template_it_started_with(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    first = make_harness(sandbox)
    template = "Judge {answer} for {prompt}; JSON only."
    run_id = first.start(judge=JudgeConfig(template=template))
    first.runner.ownership.release()
    # A later process resumes the run; nothing of the template is passed to it.
    second = make_harness(sandbox)
    run = second.runner.drive(run_id)
    assert run.state is RunState.LAUNCHED
    item = second.store.items(run_id)[0]
    [judged] = _judge_rows(second, item.id)
    assert judged.request is not None
    assert judged.request["messages"][0]["content"] == f"Judge {item.answer} for {item.prompt}; JSON only."
