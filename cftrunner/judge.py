"""The judge prompt, and validation of the judge's answer into a Judgment.

How a run asks its judge (JudgeConfig, the default template and response format) lives in
`config.run_options` with the run's other stored settings."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cftrunner.config.run_options import DEFAULT_TEMPLATE, JudgeConfig
from cftrunner.exceptions import InputError, JudgeOutputError

DEFAULT_JUDGE_MODEL = "claude-4.5-sonnet"
FEEDBACK_LIMIT = 2048

REMINDER = (
    'Reply only with the JSON object {"feedback": "...", "reasoning": "...", "score": ...}, '
    "where score is a number from 0 to 1, and nothing else."
)

_PLACEHOLDER = re.compile(r"\{(prompt|answer)\}")
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_FIELDS = ("feedback", "reasoning", "score")


@dataclass(frozen=True)
class Judgment:
    """A judge's verdict on one answer."""

    feedback: str
    reasoning: str
    score: float


class ChatCall(NamedTuple):
    """The arguments of `Client.chat`, and of `payloads.bodies.chat_body` for the record of the request."""

    project_id: str
    model: str
    messages: list[dict[str, str]]
    temperature: float | None
    max_tokens: int | None
    response_format: dict[str, Any] | None


class Conversation:
    """One answer put to a run's judge, attempt after attempt: for an item and for a held-out
    prompt alike.

    `call` is the next attempt's request; `read` turns the judge's reply into a Judgment, or raises
    JudgeOutputError (kind "judge_truncated" for a reply cut off at the token limit), after which
    the next attempt shows the judge its reply and a reminder of the format."""

    def __init__(self, config: JudgeConfig, project_id: str, judge_model: str, prompt: str,
                 answer: str) -> None:
        self.config = config
        self._call = ChatCall(project_id, judge_model, [], config.temperature, config.max_tokens,
                              None)
        self._first = {"role": "user", "content": judge_prompt(prompt, answer, config.template)}
        self._messages = [self._first]

    def call(self, structured: bool) -> ChatCall:
        """The next attempt, asking for structured output if `structured` and the run's judge
        config does."""
        return self._call._replace(
            messages=self._messages,
            response_format=self.config.response_format() if structured else None)

    def read(self, content: str | None, finish_reason: str | None) -> Judgment:
        """The judgment in `content`, None for an answer with no content; a reply without one
        (not even content) is asked for again."""
        try:
            if content is None:
                raise JudgeOutputError(
                    f"the judge answered no content (finish_reason: {finish_reason or 'none'})",
                    kind="judge_truncated" if finish_reason == "length" else "judge_malformed")
            if finish_reason == "length":
                raise JudgeOutputError("the judge answer was cut off (finish_reason: length)",
                                       kind="judge_truncated")
            return parse_judgment(content)
        except JudgeOutputError:
            # No reply to show the judge again: it is asked as the first time.
            self._messages = [self._first] if content is None else [
                self._first, {"role": "assistant", "content": content},
                {"role": "user", "content": REMINDER}]
            raise


def read_template(path: str) -> str:
    """A judge prompt template file, checked to hold both placeholders; InputError if not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read the judge prompt {path}: {reason}") from None
    found = set(_PLACEHOLDER.findall(text))
    if missing := [name for name in ("prompt", "answer") if name not in found]:
        raise InputError(f"the judge prompt {path} lacks the "
                         + " and ".join("{" + name + "}" for name in missing)
                         + " placeholder" + ("s" if len(missing) > 1 else ""))
    return text


def judge_prompt(prompt: str, answer: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Fill `template`'s {prompt} and {answer} placeholders; any other braces stay as they are."""
    values = {"prompt": prompt, "answer": answer}
    # One pass, so a "{answer}" inside the user's prompt is left alone rather than substituted.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def parse_judgment(text: str) -> Judgment:
    """Read the first valid judgment object in `text`; raise JudgeOutputError if there is none."""
    if not text.strip():
        raise JudgeOutputError("judge answer is empty")
    first_error: JudgeOutputError | None = None
    for candidate in _objects(text):
        try:
            return _judgment(candidate)
        except JudgeOutputError as error:
            first_error = first_error or error
    raise first_error or JudgeOutputError("no JSON object found")


def trace_feedback(j: Judgment, limit: int = FEEDBACK_LIMIT) -> str:
    """The trace's feedback text: the feedback, then the reasoning, cut to `limit` characters."""
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return (j.feedback + "\n\nReasoning: " + j.reasoning)[:limit]


def _objects(text: str) -> Iterator[dict[str, object]]:
    """Every JSON object in `text`: the whole text, then fenced blocks, then from each '{'."""
    whole = _loads(text)
    if whole is not None:
        yield whole
    for block in _FENCE.findall(text):
        fenced = _loads(block)
        if fenced is not None:
            yield fenced
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            yield value
        start = text.find("{", start + 1)


def _loads(text: str) -> dict[str, object] | None:
    # ValueError, not only JSONDecodeError: an integer of over 4300 digits raises the former.
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _judgment(candidate: dict[str, object]) -> Judgment:
    for field in _FIELDS:
        if field not in candidate:
            raise JudgeOutputError(f"missing {field!r}")
    feedback, reasoning, score = (candidate[field] for field in _FIELDS)
    if not isinstance(feedback, str):
        raise JudgeOutputError(f"'feedback' is not a string (got {_json_type(feedback)})")
    if not isinstance(reasoning, str):
        raise JudgeOutputError(f"'reasoning' is not a string (got {_json_type(reasoning)})")
    # bool is an int subclass, but `true` is not a score.
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise JudgeOutputError(f"score is not a number (got {_json_type(score)})")
    if isinstance(score, float) and not math.isfinite(score):
        raise JudgeOutputError(f"score {score} is not finite")
    if not 0 <= score <= 1:
        raise JudgeOutputError(f"score {score} is outside [0, 1]")
    return Judgment(feedback=feedback, reasoning=reasoning, score=float(score))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")
