"""Chat completions: the request's fields checked, the model asked, the answer in OpenAI's shape."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from cftrunner.sandbox import fields, llm
from cftrunner.sandbox.fields import Invalid
from cftrunner.sandbox.world import World

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
STRUCTURED_FORMATS = ("json_object", "json_schema")


def complete(world: World, data: Any) -> dict[str, Any]:
    """The completion a request body asks for; Invalid before the model is asked, if at all.

    With `max_completion_tokens` N and a longer answer, the content is its first N tokens and
    `finish_reason` is "length". Without structured output, response_format json_schema is refused.
    """
    body = fields.as_object(data)
    model = fields.non_empty_text(body, "model")
    turns = _turns(body)
    fields.optional_number(body, "temperature", low=0.0, high=2.0)
    limit = fields.optional_integer(body, "max_completion_tokens", low=1)
    kind = response_format(body)
    if kind == "json_schema" and not world.settings.structured_output:
        raise Invalid(f"response_format json_schema is not supported for model {model}")
    answer = world.chat(model, turns, structured=kind in STRUCTURED_FORMATS)
    content = answer if limit is None else llm.first_tokens(answer, limit)
    used = sum(llm.count_tokens(text) for _, text in turns)
    return _completion(model, content, "stop" if content == answer else "length", used)


def response_format(body: dict[str, Any]) -> str | None:
    """The response_format type asked for, None without one; Invalid unless its shape is valid."""
    value = body.get("response_format")
    if value is None:
        return None
    kind = fields.as_object(value, "response_format").get("type")
    if not isinstance(kind, str) or kind not in RESPONSE_FORMATS:
        raise Invalid(f"response_format type must be one of {', '.join(RESPONSE_FORMATS)}")
    if kind == "json_schema":
        spec = fields.as_object(value.get("json_schema"), "response_format json_schema")
        fields.as_object(spec.get("schema"), "response_format json_schema schema")
    return kind


def truncated(payload: dict[str, Any]) -> dict[str, Any]:
    """The completion cut to the first half of its content, as if the model ran out of tokens."""
    cut = copy.deepcopy(payload)
    choice = cut["choices"][0]
    content = choice["message"]["content"]
    choice["message"]["content"] = content[: len(content) // 2]
    choice["finish_reason"] = "length"
    made = llm.count_tokens(choice["message"]["content"])
    cut["usage"] = _usage(cut["usage"]["prompt_tokens"], made)
    return cut


def no_content(payload: dict[str, Any]) -> dict[str, Any]:
    """The completion with `content: null`, as a model whose answer was filtered gives it."""
    empty = copy.deepcopy(payload)
    choice = empty["choices"][0]
    choice["message"]["content"] = None
    choice["finish_reason"] = "content_filter"
    empty["usage"] = _usage(empty["usage"]["prompt_tokens"], 0)
    return empty


def _turns(body: dict[str, Any]) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages must be a non-empty list")
    turns = [fields.as_object(m, "each message") for m in messages]
    return [(fields.text(t, "role"), fields.text(t, "content")) for t in turns]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion(model: str, content: str, finish_reason: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": _usage(prompt_tokens, llm.count_tokens(content)),
    }
