"""Answers parsed in every documented shape, and request bodies as the API expects them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cftrunner.exceptions import BadResponseError, RejectedError
from cftrunner.payloads import bodies, finetuning, replies

TRACE = {"id": "t-1", "createdAt": "2026-11-21T10:00:00.123Z", "modelId": "m", "projectId": "p",
         "input": "q", "output": "a", "score": 0.4, "feedback": "f", "addedToDataset": True,
         "processingStatus": "processing"}


@pytest.mark.parametrize("answer", [
    {"id": "t-1"},                                            # tutorial: the trace
    {**TRACE},                                                # older page: the full trace
    {"results": [{"traceId": "t-1", "success": True}]},       # newest reference: batch results
    [{**TRACE}],                                              # another page: an array of traces
    {"trace": {"id": "t-1"}},
    {"data": {"trace_id": "t-1"}},
])
def test_a_created_trace_id_is_read_from_every_documented_shape(answer: Any) -> None:
    assert replies.parse_trace_created(answer) == "t-1"


def test_a_batch_result_with_success_false_is_a_rejection() -> None:
    with pytest.raises(RejectedError):
        replies.parse_trace_created({"results": [{"traceId": "t-1", "success": False}]})


@pytest.mark.parametrize("answer", [{}, [], "t-1", {"results": []}, None])
def test_a_trace_answer_without_an_id_is_unreadable(answer: Any) -> None:
    with pytest.raises(BadResponseError) as caught:
        replies.parse_trace_created(answer)
    assert caught.value.maybe_happened


def test_the_tutorial_trace_body_is_one_snake_case_object() -> None:
    body = bodies.trace_body("tutorial", "p", "m", "q", "a", 0.5, "f")
    assert body == {"project_id": "p", "model_id": "m", "input": "q", "output": "a",
                    "score": 0.5, "feedback": "f"}


def test_the_batch_trace_body_is_a_camel_case_array() -> None:
    body = bodies.trace_body("batch", "p", "m", "q", "a", 0.5, "f")
    assert body == [{"projectId": "p", "modelId": "m", "input": "q", "output": "a",
                     "score": 0.5, "feedback": "f"}]


def test_a_listed_trace_is_read_with_aware_times() -> None:
    [trace], total = replies.parse_trace_page({"results": [TRACE, {"no": "id"}], "total": 7})
    assert total == 7 and trace.id == "t-1" and trace.added_to_dataset
    assert trace.created_at == datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=UTC)
    assert trace.processing_status == "processing"


@pytest.mark.parametrize(("answer", "success"), [
    ({"traceId": "t", "status": "added", "success": True, "datapointId": "d"}, True),
    ({"traceId": "t", "status": "queued", "success": True}, True),
    ({"traceId": "t", "status": "added", "success": False}, False),
    ({"traceId": "t", "status": "failed", "success": True}, False),
])
def test_an_addition_succeeds_only_when_it_says_so(answer: dict[str, Any], success: bool) -> None:
    assert replies.parse_add(answer).success is success


@pytest.mark.parametrize("body", [
    {"choices": []}, {"choices": [{"finish_reason": "stop"}]}, [], {"choices": "x"},
    {"choices": [{"message": {"content": ["a", "list"]}}]}])
def test_a_chat_answer_without_a_message_is_unreadable(body: Any) -> None:
    with pytest.raises(BadResponseError):
        replies.parse_chat(body)


@pytest.mark.parametrize("message", [{"role": "assistant", "content": None}, {"role": "assistant"}])
def test_a_chat_answer_with_null_content_is_read_as_no_content(message: dict[str, Any]) -> None:
    """The SDK allows it: an answer, not an unreadable body to retry."""
    result = replies.parse_chat({"choices": [{"finish_reason": "content_filter",
                                               "message": message}]})
    assert (result.no_content, result.content, result.finish_reason) == (
        True, "", "content_filter")


def test_a_chat_answer_carries_content_finish_reason_and_usage() -> None:
    result = replies.parse_chat({"choices": [{"finish_reason": "length", "message": {
        "role": "assistant", "content": "hi"}}], "usage": {"total_tokens": 3}})
    assert (result.content, result.finish_reason, result.usage) == ("hi", "length",
                                                                    {"total_tokens": 3})


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgment", "schema": {"type": "object"}}}


def test_a_chat_body_without_options_sends_none_of_them() -> None:
    body = bodies.chat_body("p", "m", [{"role": "user", "content": "q"}])
    assert body == {"project_id": "p", "model": "m", "messages": [{"role": "user", "content": "q"}]}


def test_a_chat_body_sends_each_option_given() -> None:
    body = bodies.chat_body("p", "m", [], 0.1, 300, SCHEMA_FORMAT)
    assert (body["temperature"], body["max_completion_tokens"], body["response_format"]) == (
        0.1, 300, SCHEMA_FORMAT)


def test_a_chat_body_sends_max_tokens_alone_without_temperature() -> None:
    body = bodies.chat_body("p", "m", [], max_tokens=5)
    assert "temperature" not in body and "response_format" not in body
    assert body["max_completion_tokens"] == 5


def chat_with_usage(usage: Any) -> replies.ChatResult:
    return replies.parse_chat({"choices": [{"message": {"content": "x"}}], "usage": usage})


def test_usage_counts_are_read_with_the_total() -> None:
    result = chat_with_usage({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    assert (result.prompt_tokens, result.completion_tokens, result.tokens) == (10, 4, 14)


def test_the_total_is_the_sum_when_the_answer_has_none() -> None:
    assert chat_with_usage({"prompt_tokens": 10, "completion_tokens": 4}).tokens == 14


def test_whole_number_floats_count_as_tokens() -> None:
    result = chat_with_usage({"prompt_tokens": 10.0, "completion_tokens": 4.0})
    assert (result.prompt_tokens, result.completion_tokens, result.tokens) == (10, 4, 14)
    assert isinstance(result.tokens, int)


@pytest.mark.parametrize("usage", [None, "lots", [], {}, {"prompt_tokens": 10}])
def test_a_chat_answer_without_readable_usage_has_no_token_counts(usage: Any) -> None:
    result = chat_with_usage(usage)
    assert result.tokens is None
    assert result.usage == (usage if isinstance(usage, dict) else {})


@pytest.mark.parametrize("odd", ["14", -1, True, False, 1.5, float("nan"), float("inf"), None, [14]])
def test_an_odd_count_is_none_and_never_raises(odd: Any) -> None:
    result = chat_with_usage({"prompt_tokens": odd, "completion_tokens": odd, "total_tokens": odd})
    assert (result.prompt_tokens, result.completion_tokens, result.tokens) == (None, None, None)


def test_an_odd_total_falls_back_to_the_sum() -> None:
    result = chat_with_usage({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": "5"})
    assert result.tokens == 5


def test_a_total_of_zero_is_a_count() -> None:
    assert chat_with_usage({"total_tokens": 0}).tokens == 0


TREE = {"project": {"id": "p", "children": [
    {"id": "other", "type": "folder", "children": []},
    {"id": "ds", "type": "dataset", "children": [
        {"id": "snap", "type": "snapshot", "metadata": {"created_at": "2026-11-21T10:00:00Z"},
         "children": [{"id": "job", "type": "finetuning-job", "label": "cftrunner-r-1",
                       "children": [{"id": "exp", "type": "experiment"}]}]}]}]}}


def test_the_project_tree_yields_dataset_snapshots_and_jobs() -> None:
    root = finetuning.project_root(TREE)
    assert finetuning.find_dataset_id(root) == "ds"
    assert [s.id for s in finetuning.snapshots_in_tree(root, "ds")] == ["snap"]
    assert [j["id"] for j in finetuning.jobs_in_tree(root, "snap")] == ["job"]
    assert finetuning.jobs_in_tree(root, "another-snapshot") == []


def test_the_experiments_launched_are_the_recommended_ones_minus_two_keys() -> None:
    experiments = [
        {"base_model_id": "b", "n_epochs": 3, "lora": True, "recommended": True,
         "reason_for_recommendation": "small data", "extra": {"kept": 1}},
        {"base_model_id": "c", "training_type": "full", "recommended": False,
         "reason_for_recommendation": "too big"},
    ]
    launchable = bodies.experiments_to_launch(experiments)
    assert launchable.experiments == [
        {"base_model_id": "b", "n_epochs": 3, "training_type": "lora", "extra": {"kept": 1}}]


@pytest.mark.parametrize(("flag", "training_type"), [(True, "lora"), (False, "full")])
def test_an_older_lora_flag_becomes_a_training_type_and_the_conversion_is_told(
        flag: bool, training_type: str) -> None:
    launchable = bodies.experiments_to_launch(
        [{"base_model_id": "b", "n_epochs": 3, "lora": flag, "recommended": True}])
    assert launchable.experiments == [
        {"base_model_id": "b", "n_epochs": 3, "training_type": training_type}]
    assert launchable.converted == [
        {"base_model_id": "b", "lora": flag, "training_type": training_type}]
    assert launchable.untyped == []


def test_a_training_type_given_wins_over_a_lora_flag_and_is_no_conversion() -> None:
    launchable = bodies.with_training_type(
        [{"base_model_id": "b", "lora": False, "training_type": "qlora"},
         {"base_model_id": "c", "training_type": "full"}])
    assert launchable.experiments == [{"base_model_id": "b", "training_type": "qlora"},
                                      {"base_model_id": "c", "training_type": "full"}]
    assert launchable.converted == []


def test_converting_again_changes_nothing() -> None:
    once = bodies.experiments_to_launch([{"base_model_id": "b", "lora": True, "recommended": True}])
    again = bodies.with_training_type(once.experiments)
    assert (again.experiments, again.converted) == (once.experiments, [])


def test_an_experiment_with_neither_a_type_nor_a_flag_is_untyped() -> None:
    launchable = bodies.with_training_type([{"base_model_id": "b", "lora": "yes"},
                                              {"base_model_id": "c", "training_type": "lora"}])
    assert launchable.untyped == [{"base_model_id": "b", "lora": "yes"}]


def test_twin_experiments_are_left_out_keeping_the_first_of_each() -> None:
    first = {"base_model_id": "b", "n_epochs": 3, "training_type": "lora"}
    other = {**first, "n_epochs": 1}
    assert bodies.without_twins([first, other, dict(first), dict(other)]) == [first, other]


def test_dataset_snapshots_are_none_when_the_answer_does_not_list_them() -> None:
    assert finetuning.parse_dataset_snapshots({"id": "ds"}) is None
    [snap] = finetuning.parse_dataset_snapshots(
        {"snapshots": [{"id": "s", "created_at": "2026-11-21T10:00:00+01:00"}]}) or []
    assert snap.created_at == datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("body", [{"snapshot_id": "s"}, {"snapshotId": "s"}, {"id": "s"},
                                  {"data": {"snapshot_id": "s"}}])
def test_ids_are_read_under_their_known_names(body: dict[str, Any]) -> None:
    assert replies.parse_id(body, "snapshot_id", "snapshotId", "id") == "s"


@pytest.mark.parametrize(("stored", "same"), [
    (None, True),                                   # the listing does not show feedback
    ("Too vague.\n\nReasoning: no category", True),
    ("  Too vague.\n\nReasoning: no category  ", True),  # trimmed or re-spaced by the server
    ("Too vague.\n\nReasoning:", True),              # cut shorter than sent
    ("Fine.\n\nReasoning: ok", False),
    ("", False),
])
def test_stored_feedback_matches_what_was_sent_despite_trimming(stored: str | None,
                                                                 same: bool) -> None:
    from cftrunner.reconcile import _same_text
    assert _same_text(stored, "Too vague.\n\nReasoning: no category") is same
