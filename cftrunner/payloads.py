"""Request bodies for the Prem API and defensive parsing of its answers, in every documented shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cftrunner.exceptions import BadResponseError, RejectedError

TRACE_SHAPES = ("tutorial", "batch")


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


@dataclass(frozen=True)
class AddResult:
    status: str
    success: bool
    datapoint_id: str | None


@dataclass(frozen=True)
class RemoteSnapshot:
    id: str
    created_at: datetime | None


@dataclass(frozen=True)
class Recommendations:
    status: str
    experiments: list[dict[str, Any]]


def _bad(what: str) -> BadResponseError:
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


def _first_str(obj: dict[str, Any], *keys: str) -> str | None:
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


def chat_body(project_id: str, model: str, messages: list[dict[str, str]],
              temperature: float | None = None, max_tokens: int | None = None,
              response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """The completion request; the optional fields are sent only when given."""
    body: dict[str, Any] = {"project_id": project_id, "model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_completion_tokens"] = max_tokens
    if response_format is not None:
        body["response_format"] = response_format
    return body


def parse_chat(body: Any) -> ChatResult:
    if not isinstance(body, dict):
        raise _bad("a chat completion is not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _bad("a chat completion has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _bad("a chat completion has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _bad("a chat completion's content is not text")
    finish = choices[0].get("finish_reason")
    usage = body.get("usage")
    return ChatResult(content or "", finish if isinstance(finish, str) else None,
                      usage if isinstance(usage, dict) else {}, no_content=content is None)


MARKER_INPUT = "cftrunner marker"  # then the run id and the marker's key


def marker_request(shape: str, project_id: str, model_id: str, run_id: str,
                   key: str) -> dict[str, Any]:
    """A marker trace: written only to show how far the trace list has caught up; never added to
    the dataset, and deleted once the run no longer needs it."""
    return {"shape": shape, "project_id": project_id, "model_id": model_id,
            "input": f"{MARKER_INPUT} {run_id} {key}",
            "output": "Written by cftrunner to see how far the trace list has caught up; "
                      "it is deleted once seen, and never added to a dataset.",
            "score": 1.0, "feedback": ""}


def is_marker_of(trace_input: str, run_id: str) -> bool:
    return trace_input.startswith(f"{MARKER_INPUT} {run_id} ")


def trace_body(shape: str, project_id: str, model_id: str, input: str, output: str,
               score: float, feedback: str) -> Any:
    if shape == "tutorial":
        return {"project_id": project_id, "model_id": model_id, "input": input,
                "output": output, "score": score, "feedback": feedback}
    if shape == "batch":
        return [{"projectId": project_id, "modelId": model_id, "input": input,
                 "output": output, "score": score, "feedback": feedback}]
    raise ValueError(f"unknown trace shape {shape!r}")


def parse_trace_created(body: Any) -> str:
    """The id of the created trace, from any documented answer: a trace, `{results: [...]}`, a list."""
    if isinstance(body, list):
        if not body or not isinstance(body[0], dict):
            raise _bad("an empty trace list")
        return parse_trace_created(body[0])
    if not isinstance(body, dict):
        raise _bad("a trace answer is not an object")
    results = body.get("results")
    if isinstance(results, list):
        if not results or not isinstance(results[0], dict):
            raise _bad("a trace answer has empty results")
        return parse_trace_created(results[0])
    for wrapper in ("trace", "data"):
        if isinstance(body.get(wrapper), dict):
            return parse_trace_created(body[wrapper])
    if body.get("success") is False:
        reason = _first_str(body, "error", "message") or "success: false"
        raise RejectedError(f"the API did not create the trace: {reason}", status_code=None)
    trace_id = _first_str(body, "id", "traceId", "trace_id")
    if trace_id is None:
        raise _bad("a trace answer carries no id")
    return trace_id


def parse_trace(obj: Any) -> RemoteTrace | None:
    if not isinstance(obj, dict):
        return None
    trace_id = _first_str(obj, "id", "traceId", "trace_id")
    if trace_id is None:
        return None
    score = obj.get("score")
    return RemoteTrace(
        id=trace_id,
        created_at=parse_time(obj.get("createdAt", obj.get("created_at"))),
        model_id=_first_str(obj, "modelId", "model_id"),
        project_id=_first_str(obj, "projectId", "project_id"),
        input=obj.get("input") if isinstance(obj.get("input"), str) else None,
        output=obj.get("output") if isinstance(obj.get("output"), str) else None,
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        feedback=obj.get("feedback") if isinstance(obj.get("feedback"), str) else None,
        added_to_dataset=obj.get("addedToDataset", obj.get("added_to_dataset")) is True,
        processing_status=_first_str(obj, "processingStatus", "processing_status"),
    )


def parse_trace_page(body: Any) -> tuple[list[RemoteTrace], int | None]:
    items = body.get("results", body.get("data")) if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise _bad("a trace list has no results")
    total = body.get("total") if isinstance(body, dict) else None
    traces = [t for t in (parse_trace(obj) for obj in items) if t is not None]
    return traces, total if isinstance(total, int) and not isinstance(total, bool) else None


def parse_add(body: Any) -> AddResult:
    if not isinstance(body, dict):
        raise _bad("an addToDataset answer is not an object")
    status = _first_str(body, "status") or ""
    success = body.get("success")
    return AddResult(status=status.lower(), success=success is not False and status != "failed",
                     datapoint_id=_first_str(body, "datapointId", "datapoint_id"))


def parse_id(body: Any, *keys: str) -> str:
    if isinstance(body, dict):
        for wrapper in ("data", "result"):
            if isinstance(body.get(wrapper), dict):
                body = {**body[wrapper], **body}
        found = _first_str(body, *keys)
        if found is not None:
            return found
    raise _bad(f"no {keys[0]} in the answer")


def walk_tree(node: Any) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every node of a project tree with the chain of its ancestors, depth first."""
    stack: list[tuple[Any, list[dict[str, Any]]]] = [(node, [])]
    while stack:
        current, ancestors = stack.pop()
        if not isinstance(current, dict):
            continue
        yield current, ancestors
        children = current.get("children")
        if isinstance(children, list):
            stack.extend((child, [*ancestors, current]) for child in reversed(children))


def project_root(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("project"), dict):
        return body["project"]  # type: ignore[no-any-return]
    if isinstance(body, dict):
        return body
    raise _bad("a project answer is not an object")


def find_dataset_id(project: dict[str, Any]) -> str | None:
    for node, _ in walk_tree(project):
        if node.get("type") == "dataset":
            return _first_str(node, "id")
    return None


def snapshots_in_tree(project: dict[str, Any], dataset_id: str) -> list[RemoteSnapshot]:
    found = []
    for node, ancestors in walk_tree(project):
        if node.get("type") == "snapshot" and any(a.get("id") == dataset_id for a in ancestors):
            meta = node["metadata"] if isinstance(node.get("metadata"), dict) else {}
            snap_id = _first_str(node, "id")
            if snap_id:
                found.append(RemoteSnapshot(snap_id, parse_time(meta.get("created_at"))))
    return found


def jobs_in_tree(project: dict[str, Any], snapshot_id: str) -> list[dict[str, Any]]:
    return [node for node, ancestors in walk_tree(project)
            if node.get("type") == "finetuning-job"
            and any(a.get("id") == snapshot_id for a in ancestors)]


def parse_dataset_snapshots(body: Any) -> list[RemoteSnapshot] | None:
    """The dataset's snapshots, or None when the answer does not list them (older API)."""
    if not isinstance(body, dict) or not isinstance(body.get("snapshots"), list):
        return None
    snaps = []
    for obj in body["snapshots"]:
        if isinstance(obj, dict) and (snap_id := _first_str(obj, "id", "snapshot_id")):
            snaps.append(RemoteSnapshot(snap_id, parse_time(obj.get("created_at"))))
    return snaps


def parse_recommendations(body: Any) -> Recommendations:
    if not isinstance(body, dict):
        raise _bad("a recommendations answer is not an object")
    status = (_first_str(body, "status") or "").lower()
    experiments = body.get("recommended_experiments")
    return Recommendations(status, [e for e in experiments if isinstance(e, dict)]
                           if isinstance(experiments, list) else [])


def parse_model_ids(body: Any) -> list[str]:
    """The model ids of `GET /api/v1/models` (`{data: [{id}]}`), or of a bare list."""
    listed = body.get("data", body.get("models")) if isinstance(body, dict) else body
    if not isinstance(listed, list):
        raise _bad("a model list has no data")
    ids = (_first_str(m, "id", "model_id") if isinstance(m, dict) else m for m in listed)
    return [i for i in ids if isinstance(i, str) and i]


RUNNING_WORDS = frozenset({"running", "ready", "loaded", "up", "true"})


def parse_running(body: Any) -> bool:
    """`{status: bool}` of `GET /api/v1/models/running`; a status word ("running", "loaded") or a
    `running` flag is read too. Anything else is no answer."""
    if isinstance(body, dict):
        for key in ("status", "running"):
            value = body.get(key)
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value:
                return value.lower() in RUNNING_WORDS
    raise _bad("a model status has no status")


@dataclass(frozen=True)
class Launchable:
    """The recommended experiments as a job is created with them, and what was changed to get
    there: `converted` has one {base_model_id, lora, training_type} per older recommendation."""

    experiments: list[dict[str, Any]]
    converted: list[dict[str, Any]]

    @property
    def untyped(self) -> list[dict[str, Any]]:
        """The experiments with no training type, which the API cannot create a job with."""
        return [e for e in self.experiments if "training_type" not in e]


def experiments_to_launch(experiments: list[dict[str, Any]]) -> Launchable:
    """The recommended experiments without the two advisory keys, everything else unchanged but
    an older recommendation's `lora` flag (see with_training_type)."""
    return with_training_type([
        {k: v for k, v in exp.items() if k not in ("recommended", "reason_for_recommendation")}
        for exp in experiments if exp.get("recommended") is True])


def with_training_type(experiments: list[dict[str, Any]]) -> Launchable:
    """The experiments with a `training_type` for an older `lora` flag, which the API's create
    params do not have: "lora" for `lora: true`, "full" for `lora: false`. A `training_type`
    given wins over a `lora` flag."""
    typed, converted = [], []
    for exp in experiments:
        kept = dict(exp)
        lora = kept.get("lora")
        if isinstance(lora, bool):
            del kept["lora"]
            if "training_type" not in kept:
                kept["training_type"] = "lora" if lora else "full"
                converted.append({"base_model_id": kept.get("base_model_id"), "lora": lora,
                                  "training_type": kept["training_type"]})
        typed.append(kept)
    return Launchable(typed, converted)


def without_twins(experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The experiments in order, each identical one after the first left out."""
    seen: set[str] = set()
    kept = []
    for exp in experiments:
        key = json.dumps(exp, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(exp)
    return kept


# What the API says of a fine-tuning job and its experiments (prem-api.md). Statuses not listed
# are read as still going, so an unknown new status never ends a job early.
EXPERIMENT_SUCCEEDED = "succeeded"
EXPERIMENT_ENDED = frozenset({"succeeded", "failed", "deleted", "cancelled", "canceled", "error"})
JOB_FAILED = frozenset({"failed", "cancelled", "canceled", "error"})
JOB_ENDED = JOB_FAILED | {"completed", "succeeded"}


@dataclass(frozen=True)
class RemoteExperiment:
    id: str | None
    number: int | None
    status: str
    model_id: str | None
    base_model_id: str | None

    @property
    def succeeded(self) -> bool:
        return self.status == EXPERIMENT_SUCCEEDED and self.model_id is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "number": self.number, "status": self.status,
                "model_id": self.model_id, "base_model_id": self.base_model_id}


@dataclass(frozen=True)
class RemoteJob:
    id: str | None
    status: str
    experiments: tuple[RemoteExperiment, ...]

    @property
    def ended(self) -> bool:
        """Every experiment ended, or the job failed as a whole; a job without experiments
        listed ends when its status says so."""
        if self.experiments:
            return (all(e.status in EXPERIMENT_ENDED for e in self.experiments)
                    or self.status in JOB_FAILED)
        return self.status in JOB_ENDED


def _experiment(obj: dict[str, Any]) -> RemoteExperiment:
    meta = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    number = obj.get("experiment_number", obj.get("experimentNumber"))
    return RemoteExperiment(
        id=_first_str(obj, "id", "experiment_id", "experimentId"),
        number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        status=(_first_str(obj, "status") or "").lower(),
        model_id=_first_str(obj, "model_id", "modelId") or _first_str(meta, "model_id", "modelId"),
        base_model_id=_first_str(obj, "base_model_id", "baseModelId"))


def parse_job(body: Any) -> RemoteJob:
    """A fine-tuning job as `GET /api/v1/public/finetuning/{id}` answers it."""
    if isinstance(body, dict) and isinstance(body.get("job"), dict):
        body = body["job"]
    if not isinstance(body, dict):
        raise _bad("a fine-tuning job answer is not an object")
    experiments = body.get("experiments")
    return RemoteJob(
        id=_first_str(body, "id", "job_id", "jobId"),
        status=(_first_str(body, "status") or "").lower(),
        experiments=tuple(_experiment(e) for e in experiments if isinstance(e, dict))
        if isinstance(experiments, list) else ())
