"""Fine-tuned models loading for inference: asked up, running once a load delay has passed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cftrunner.sandbox.fields import Invalid

DEFAULT_LOAD_DELAY = 0.2


@dataclass(frozen=True)
class LoadPlan:
    """How fine-tuned models load: `delay` seconds after they are asked up; a model whose id
    contains `never` is accepted but never comes up, one whose id contains `refused` cannot be
    loaded (400)."""

    delay: float = DEFAULT_LOAD_DELAY
    never: str | None = None
    refused: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float) or not (
                math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError("the model load delay must be a number of seconds, at least 0")
        for text in (self.never, self.refused):
            if text is not None and (not isinstance(text, str) or not text):
                raise ValueError("never and refused must be non-empty strings or null")

    def to_json(self) -> dict[str, Any]:
        return {"delay": self.delay, "never": self.never, "refused": self.refused}

    @staticmethod
    def parse(data: object) -> LoadPlan:
        """The plan a control request describes; ValueError on anything else."""
        if not isinstance(data, dict) or not set(data) <= {"delay", "never", "refused"}:
            raise ValueError('model loading is {"delay": seconds, "never": text or null, '
                             '"refused": text or null}')
        return LoadPlan(**data)


class Serving:
    """Which fine-tuned models are loaded or loading; not locked, used under the World's lock.

    Only a model training made has to be asked up (the World knows which): judges, base models
    and aliases are always loaded."""

    def __init__(self, plan: LoadPlan | None = None) -> None:
        self.plan = plan or LoadPlan()
        self._ready_at: dict[str, float] = {}  # by model: when it runs, on the World's clock
        self.asked_up: list[str] = []  # every model asked up, in order
        self.asked_down: list[str] = []  # every model asked down, in order

    def up(self, model: str, now: float) -> None:
        """Start loading `model`, unless it is loading or loaded already."""
        if self.plan.refused is not None and self.plan.refused in model:
            raise Invalid(f"model {model} cannot be loaded for inference")
        self.asked_up.append(model)
        never = self.plan.never is not None and self.plan.never in model
        self._ready_at.setdefault(model, math.inf if never else now + self.plan.delay)

    def down(self, model: str) -> None:
        self.asked_down.append(model)
        self._ready_at.pop(model, None)

    def running(self, model: str, now: float) -> bool:
        return now >= self._ready_at.get(model, math.inf)

    def to_json(self, now: float) -> dict[str, Any]:
        return {**self.plan.to_json(),
                "models": {m: "running" if now >= at else "loading"
                           for m, at in self._ready_at.items()},
                "asked_up": list(self.asked_up), "asked_down": list(self.asked_down)}
