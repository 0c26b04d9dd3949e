"""Fine-tuning in the sandbox: how a job advances per read, which experiments succeed, model quality."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TRAINING_OUTCOMES = ("succeeded", "failed", "mixed", "deleted")
EXPERIMENT_GAIN_STEP = 0.01  # each later experiment of a job gains this much more than the one before
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def check_polls(polls: object) -> int:
    if isinstance(polls, bool) or not isinstance(polls, int) or polls < 0:
        raise ValueError("training polls must be a whole number, at least 0")
    return polls


def check_outcome(outcome: object) -> str:
    if not isinstance(outcome, str) or outcome not in TRAINING_OUTCOMES:
        raise ValueError(f"training outcome must be one of {', '.join(TRAINING_OUTCOMES)}")
    return outcome


def check_gain(gain: object) -> float:
    if isinstance(gain, bool) or not isinstance(gain, int | float) or not -1 <= gain <= 1:
        raise ValueError("training gain must be a number from -1 to 1")
    return float(gain)


def check_quality(quality: object) -> float:
    if (
        isinstance(quality, bool)
        or not isinstance(quality, int | float)
        or not math.isfinite(quality)
        or not 0 <= quality <= 1
    ):
        raise ValueError("a model quality must be a number from 0 to 1")
    return float(quality)


@dataclass(frozen=True)
class TrainingPlan:
    """How one job trains, taken from the settings when it is created.

    Each read of the job answers it as it is, then advances it one step: its experiments are
    "pending" until the first read, "running" for the next `polls` reads but the last of them,
    "deploying" for that last one, then finished. Outcome "mixed" fails the first experiment,
    "deleted" deletes it; the others succeed.
    """

    polls: int = 2
    outcome: str = "succeeded"
    gain: float = 0.15

    def __post_init__(self) -> None:
        check_polls(self.polls)
        check_outcome(self.outcome)
        check_gain(self.gain)

    def stage(self, reads: int) -> str:
        """"pending", "running", "deploying" or "finished" after `reads` reads of the job."""
        if reads == 0:
            return "pending"
        if reads < self.polls:
            return "running"
        return "deploying" if reads == self.polls else "finished"

    def succeeds(self, number: int) -> bool:
        """Whether experiment `number` (1-based) ends with a model."""
        return self.ending(number) == "succeeded"

    def ending(self, number: int) -> str:
        """How experiment `number` (1-based) ends: "succeeded", "failed" or "deleted"."""
        if self.outcome == "failed":
            return "failed"
        if self.outcome == "succeeded" or number > 1:
            return "succeeded"
        return "failed" if self.outcome == "mixed" else "deleted"

    def quality(self, parent: float, number: int) -> float:
        """The quality of experiment `number`'s model, trained from a model of quality `parent`."""
        gain = self.gain + EXPERIMENT_GAIN_STEP * (number - 1)
        return min(1.0, max(0.0, parent + gain))

    def to_json(self) -> dict[str, Any]:
        return {"polls": self.polls, "outcome": self.outcome, "gain": self.gain}

    @staticmethod
    def parse_update(data: object) -> dict[str, Any]:
        """The changes a control request asks for, as keyword arguments of World.set_training;
        ValueError unless it is an object of any of "polls", "outcome", "gain" with valid values."""
        if not isinstance(data, dict) or not set(data) <= {"polls", "outcome", "gain"}:
            raise ValueError('training is {"polls": integer, "outcome": string, "gain": number}')
        checks = {"polls": check_polls, "outcome": check_outcome, "gain": check_gain}
        return {key: checks[key](value) for key, value in data.items()}


class ModelBook:
    """Fine-tuned model names and the qualities of models; not locked, used under the World's."""

    def __init__(self, base_quality: float, reserved: Iterable[str] = ()) -> None:
        self.base_quality = check_quality(base_quality)
        self._names: set[str] = set(reserved)
        self._set: dict[str, float] = {}  # by Sandbox.set_model_quality; wins over training
        self._trained: dict[str, float] = {}  # in the order the models finished training

    def reserve(self, job_name: str, number: int) -> str:
        """A new, unique model id for experiment `number` of the job named `job_name`."""
        stem = f"{_UNSAFE_NAME.sub('-', job_name).strip('-') or 'model'}-exp{number}"
        name, n = stem, 1
        while name in self._names:
            n += 1
            name = f"{stem}-{n}"
        self._names.add(name)
        return name

    def trained(self, model: str, quality: float) -> None:
        self._trained[model] = quality

    def set_quality(self, model: str, quality: float) -> None:
        self._set[model] = check_quality(quality)

    def quality(self, model: str) -> float:
        """A model's quality: as set, else as trained, else the base quality."""
        return self._set.get(model, self._trained.get(model, self.base_quality))

    def fine_tuned(self) -> tuple[str, ...]:
        """The models that finished training, oldest first."""
        return tuple(self._trained)

    def to_json(self) -> dict[str, float]:
        return {**self._trained, **self._set}
