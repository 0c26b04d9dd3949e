"""Reading the Prem API's answers to chat, trace and dataset calls, defensively, in every documented shape.

Also the readers every answer shares: a time, an id, the first of several spellings of a field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cftrunner.exceptions import BadResponseError, RejectedError


def bad_answer(what: str) -> BadResponseError:
    """The error for an answer in no documented shape; the request may have been acted on."""
    return BadResponseError(f"unexpected answer from the API: {what}", maybe_happened=True)


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time as aware UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def first_str(obj: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _token_count(value: Any) -> int | None:
    """A usage count: a non-negative whole number (12.0 counts as 12); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


@dataclass(frozen=True)
class ChatResult:
    """One chat completion; `usage` is the answer's usage object as sent, {} when it has none.

    An answer whose content is null, as the SDK allows (a filtered answer, say), has
    `no_content` set and `content` "": it is nobody's answer and no judgment."""

    content: str
    finish_reason: str | None
    usage: dict[str, Any]
    no_content: bool = False

    @property
    def prompt_tokens(self) -> int | None:
        return _token_count(self.usage.get("prompt_tokens"))

    @property
    def completion_tokens(self) -> int | None:
        return _token_count(self.usage.get("completion_tokens"))

    @property
    def tokens(self) -> int | None:
        """All tokens: `total_tokens` when readable, else prompt plus completion, else None."""
        total = _token_count(self.usage.get("total_tokens"))
        if total is not None:
            return total
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return None if prompt is None or completion is None else prompt + completion


def parse_chat(body: Any) -> ChatResult:
    if not isinstance(body, dict):
        raise bad_answer("a chat completion is not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad_answer("a chat completion has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise bad_answer("a chat completion has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise bad_answer("a chat completion's content is not text")
    finish = choices[0].get("finish_reason")
    usage = body.get("usage")
    return ChatResult(content or "", finish if isinstance(finish, str) else None,
                      usage if isinstance(usage, dict) else {}, no_content=content is None)


@dataclass(frozen=True)
class RemoteTrace:
    id: str
    created_at: datetime | None
    model_id: str | None
    project_id: str | None
    input: str | None
    output: str | None
    score: float | None
    feedback: str | None
    added_to_dataset: bool
    processing_status: str | None


def parse_trace_created(body: Any) -> str:
    """The id of the created trace, from any documented answer: a trace, `{results: [...]}`, a list."""
    if isinstance(body, list):
        if not body or not isinstance(body[0], dict):
            raise bad_answer("an empty trace list")
        return parse_trace_created(body[0])
    if not isinstance(body, dict):
        raise bad_answer("a trace answer is not an object")
    results = body.get("results")
    if isinstance(results, list):
        if not results or not isinstance(results[0], dict):
            raise bad_answer("a trace answer has empty results")
        return parse_trace_created(results[0])
    for wrapper in ("trace", "data"):
        if isinstance(body.get(wrapper), dict):
            return parse_trace_created(body[wrapper])
    if body.get("success") is False:
        reason = first_str(body, "error", "message") or "success: false"
        raise RejectedError(f"the API did not create the trace: {reason}", status_code=None)
    trace_id = first_str(body, "id", "traceId", "trace_id")
    if trace_id is None:
        raise bad_answer("a trace answer carries no id")
    return trace_id


def parse_trace(obj: Any) -> RemoteTrace | None:
    if not isinstance(obj, dict):
        return None
    trace_id = first_str(obj, "id", "traceId", "trace_id")
    if trace_id is None:
        return None
    score = obj.get("score")
    return RemoteTrace(
        id=trace_id,
        created_at=parse_time(obj.get("createdAt", obj.get("created_at"))),
        model_id=first_str(obj, "modelId", "model_id"),
        project_id=first_str(obj, "projectId", "project_id"),
        input=obj.get("input") if isinstance(obj.get("input"), str) else None,
        output=obj.get("output") if isinstance(obj.get("output"), str) else None,
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        feedback=obj.get("feedback") if isinstance(obj.get("feedback"), str) else None,
        added_to_dataset=obj.get("addedToDataset", obj.get("added_to_dataset")) is True,
        processing_status=first_str(obj, "processingStatus", "processing_status"),
    )


def parse_trace_page(body: Any) -> tuple[list[RemoteTrace], int | None]:
    items = body.get("results", body.get("data")) if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise bad_answer("a trace list has no results")
    total = body.get("total") if isinstance(body, dict) else None
    traces = [t for t in (parse_trace(obj) for obj in items) if t is not None]
    return traces, total if isinstance(total, int) and not isinstance(total, bool) else None


@dataclass(frozen=True)
class AddResult:
    status: str
    success: bool
    datapoint_id: str | None


def parse_add(body: Any) -> AddResult:
    if not isinstance(body, dict):
        raise bad_answer("an addToDataset answer is not an object")
    status = first_str(body, "status") or ""
    success = body.get("success")
    return AddResult(status=status.lower(), success=success is not False and status != "failed",
                     datapoint_id=first_str(body, "datapointId", "datapoint_id"))


def parse_id(body: Any, *keys: str) -> str:
    if isinstance(body, dict):
        for wrapper in ("data", "result"):
            if isinstance(body.get(wrapper), dict):
                body = {**body[wrapper], **body}
        found = first_str(body, *keys)
        if found is not None:
            return found
    raise bad_answer(f"no {keys[0]} in the answer")
