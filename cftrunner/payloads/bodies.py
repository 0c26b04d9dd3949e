"""What cftrunner sends the Prem API: request bodies, marker traces, the experiments a job is created with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TRACE_SHAPES = ("tutorial", "batch")


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
