"""The judge prompt, parse_judgment and trace_feedback."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cftrunner.config.run_options import DEFAULT_TEMPLATE, RESPONSE_FORMAT, JudgeConfig
from cftrunner.exceptions import JudgeOutputError
from cftrunner.judge import (
    FEEDBACK_LIMIT,
    REMINDER,
    Conversation,
    Judgment,
    judge_prompt,
    parse_judgment,
    trace_feedback,
)

VALID = '{"feedback": "Say safe.", "reasoning": "It is benign.", "score": 0.25}'
EXPECTED = Judgment(feedback="Say safe.", reasoning="It is benign.", score=0.25)


def judgment_json(**fields: object) -> str:
    body: dict[str, object] = {"feedback": "f", "reasoning": "r", "score": 0.5}
    body.update(fields)
    return json.dumps(body)


def rejection(text: str) -> str:
    with pytest.raises(JudgeOutputError) as raised:
        parse_judgment(text)
    return raised.value.message


# judge_prompt


def test_judge_prompt_places_prompt_then_answer() -> None:
    text = judge_prompt("PROMPT-TEXT", "ANSWER-TEXT")
    assert text.index("PROMPT-TEXT") < text.index("ANSWER-TEXT")
    assert "{prompt}" not in text and "{answer}" not in text


def test_judge_prompt_keeps_braces_in_the_prompt() -> None:
    text = judge_prompt('Return {"a": 1} and {0} and {answer}', "{prompt}")
    assert 'Return {"a": 1} and {0} and {answer}' in text
    assert text.count("{prompt}") == 1


def test_judge_prompt_uses_a_custom_template() -> None:
    assert judge_prompt("P", "A", template="Q: {prompt}\nA: {answer}") == "Q: P\nA: A"


def test_default_template_asks_for_feedback_reasoning_and_score_in_order() -> None:
    feedback = DEFAULT_TEMPLATE.index('"feedback"')
    reasoning = DEFAULT_TEMPLATE.index('"reasoning"')
    score = DEFAULT_TEMPLATE.index('"score"')
    assert feedback < reasoning < score
    assert "JSON" in DEFAULT_TEMPLATE


def test_reminder_asks_for_the_json_object_only() -> None:
    assert "JSON" in REMINDER and '"score"' in REMINDER


# parse_judgment: accepted shapes


def test_parses_bare_json() -> None:
    assert parse_judgment(VALID) == EXPECTED


def test_parses_json_in_a_fence_with_language_tag() -> None:
    assert parse_judgment(f"```json\n{VALID}\n```") == EXPECTED


def test_parses_json_in_a_fence_without_language_tag() -> None:
    assert parse_judgment(f"```\n{VALID}\n```") == EXPECTED


def test_parses_json_with_prose_before_and_after() -> None:
    assert parse_judgment(f"Here is my evaluation:\n{VALID}\nHope this helps.") == EXPECTED


def test_first_valid_object_wins_over_an_invalid_one_before_it() -> None:
    text = f'Draft: {{"feedback": "x", "score": 9}}\nFinal: {VALID}'
    assert parse_judgment(text) == EXPECTED


def test_first_of_two_valid_objects_wins() -> None:
    assert parse_judgment(VALID + "\n" + judgment_json(score=1)) == EXPECTED


def test_braces_inside_strings_do_not_confuse_the_parser() -> None:
    text = "Result: " + judgment_json(feedback='Answer {"label": "safe"} }{', reasoning="{")
    assert parse_judgment(text).feedback == 'Answer {"label": "safe"} }{'


def test_object_nested_in_a_wrapper_is_found() -> None:
    assert parse_judgment('{"result": ' + VALID + "}") == EXPECTED


def test_extra_keys_are_ignored() -> None:
    assert parse_judgment(judgment_json(confidence="high")).score == 0.5


@pytest.mark.parametrize("score", [0, 1, 0.0, 1.0])
def test_score_bounds_are_inclusive(score: float) -> None:
    assert parse_judgment(judgment_json(score=score)).score == score


def test_int_score_becomes_a_float() -> None:
    score = parse_judgment(judgment_json(score=1)).score
    assert isinstance(score, float) and score == 1.0


# parse_judgment: rejections


@pytest.mark.parametrize(
    ("score", "reason"),
    [
        (True, "score is not a number (got a boolean)"),
        ("0.5", "score is not a number (got a string)"),
        (None, "score is not a number (got null)"),
        (-0.1, "score -0.1 is outside [0, 1]"),
        (1.5, "score 1.5 is outside [0, 1]"),
        (7, "score 7 is outside [0, 1]"),
    ],
)
def test_rejects_bad_scores(score: object, reason: str) -> None:
    assert rejection(judgment_json(score=score)) == reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_rejects_non_finite_scores(literal: str) -> None:
    text = '{"feedback": "f", "reasoning": "r", "score": ' + literal + "}"
    assert "is not finite" in rejection(text)


@pytest.mark.parametrize("field", ["feedback", "reasoning", "score"])
def test_rejects_a_missing_field(field: str) -> None:
    body = {"feedback": "f", "reasoning": "r", "score": 0.5}
    del body[field]
    assert rejection(json.dumps(body)) == f"missing {field!r}"


def test_rejects_non_string_feedback() -> None:
    assert rejection(judgment_json(feedback=["a"])) == "'feedback' is not a string (got an array)"


def test_rejects_non_string_reasoning() -> None:
    assert rejection(judgment_json(reasoning=3)) == "'reasoning' is not a string (got a number)"


@pytest.mark.parametrize("text", ["", "   \n"])
def test_rejects_empty_text(text: str) -> None:
    assert rejection(text) == "judge answer is empty"


def test_rejects_text_without_json() -> None:
    assert rejection("The answer looks safe to me, score 0.9.") == "no JSON object found"


def test_rejects_truncated_json() -> None:
    assert rejection(VALID[:-5]) == "no JSON object found"


def test_rejects_a_json_list() -> None:
    assert rejection("[0.5]") == "no JSON object found"


def test_reports_the_first_object_when_none_is_valid() -> None:
    text = judgment_json(score=2) + " then " + judgment_json(score="high")
    assert rejection(text) == "score 2 is outside [0, 1]"


def test_never_invents_a_score_from_prose() -> None:
    with pytest.raises(JudgeOutputError):
        parse_judgment('Score: 0.8. {"feedback": "f", "reasoning": "r"}')


@given(
    feedback=st.text(),
    reasoning=st.text(),
    score=st.floats(min_value=0, max_value=1),
    before=st.text(alphabet=st.characters(blacklist_characters="{}")),
    after=st.text(alphabet=st.characters(blacklist_characters="{}")),
)
def test_any_valid_judgment_round_trips_through_prose(
    feedback: str, reasoning: str, score: float, before: str, after: str
) -> None:
    judgment = Judgment(feedback=feedback, reasoning=reasoning, score=score)
    body = json.dumps({"feedback": feedback, "reasoning": reasoning, "score": score})
    assert parse_judgment(before + body + after) == judgment


# trace_feedback


def test_trace_feedback_joins_feedback_and_reasoning() -> None:
    assert trace_feedback(EXPECTED) == "Say safe.\n\nReasoning: It is benign."


def test_trace_feedback_is_cut_to_exactly_the_limit() -> None:
    long = Judgment(feedback="f" * 1500, reasoning="r" * 1500, score=0.5)
    text = trace_feedback(long)
    assert len(text) == FEEDBACK_LIMIT == 2048
    assert text.startswith("f" * 1500 + "\n\nReasoning: r")


def test_trace_feedback_honours_a_custom_limit() -> None:
    assert trace_feedback(EXPECTED, limit=12) == "Say safe.\n\nR"


def test_trace_feedback_counts_characters_not_bytes() -> None:
    wide = Judgment(feedback="🙂" * 3000, reasoning="", score=0.5)
    assert trace_feedback(wide) == "🙂" * FEEDBACK_LIMIT


def test_trace_feedback_refuses_a_negative_limit() -> None:
    with pytest.raises(ValueError):
        trace_feedback(EXPECTED, limit=-1)


def test_a_stored_judge_config_round_trips_and_unknown_keys_are_ignored() -> None:
    config = JudgeConfig(template="{prompt} {answer}", temperature=0.0, max_tokens=99,
                         structured_output=False, template_source="/x/judge.txt")
    assert JudgeConfig.from_json({**config.to_json(), "later_key": 1}) == config
    assert JudgeConfig.from_json(None) == JudgeConfig()
    assert JudgeConfig(structured_output=False).response_format() is None
    schema = JudgeConfig().response_format()
    assert schema is not None and schema["json_schema"]["schema"]["required"] == [
        "feedback", "reasoning", "score"]


# -- a conversation with the judge, attempt after attempt -------------------------------------


def conversation(config: JudgeConfig | None = None) -> Conversation:
    return Conversation(config or JudgeConfig(), "proj", "judge-model", "Is it safe?", "Yes.")


def test_a_conversation_asks_with_the_run_s_judge_config_and_structured_output_when_allowed() -> None:
    talk = conversation(JudgeConfig(temperature=0.3, max_tokens=99))
    call = talk.call(structured=True)
    assert call.project_id == "proj" and call.model == "judge-model"
    assert (call.temperature, call.max_tokens, call.response_format) == (0.3, 99, RESPONSE_FORMAT)
    assert call.messages == [{"role": "user", "content": judge_prompt("Is it safe?", "Yes.")}]
    assert talk.call(structured=False).response_format is None
    assert conversation(JudgeConfig(structured_output=False)).call(structured=True).response_format is None


def test_after_a_reply_that_does_not_validate_the_next_attempt_carries_it_and_a_reminder() -> None:
    talk = conversation()
    first = talk.call(structured=True).messages
    with pytest.raises(JudgeOutputError) as raised:
        talk.read("I think it is fine.", "stop")
    assert raised.value.kind == "judge_malformed"
    assert talk.call(structured=True).messages == [
        *first, {"role": "assistant", "content": "I think it is fine."},
        {"role": "user", "content": REMINDER}]
    assert talk.read(VALID, "stop") == EXPECTED


def test_a_reply_cut_off_at_the_token_limit_is_truncated_even_when_it_parses() -> None:
    talk = conversation()
    with pytest.raises(JudgeOutputError) as raised:
        talk.read(VALID, "length")
    assert raised.value.kind == "judge_truncated"
    assert talk.call(structured=True).messages[1] == {"role": "assistant", "content": VALID}


@pytest.mark.parametrize(("finish_reason", "kind"), [
    ("content_filter", "judge_malformed"), ("length", "judge_truncated"), (None, "judge_malformed")])
def test_a_reply_with_no_content_is_unusable_and_asked_again_as_the_first_time(
        finish_reason: str | None, kind: str) -> None:
    talk = conversation()
    first = talk.call(structured=True).messages
    with pytest.raises(JudgeOutputError, match="no content") as raised:
        talk.read(None, finish_reason)
    assert raised.value.kind == kind
    assert talk.call(structured=True).messages == first
