"""The sandbox's fine-tuning records: recommendations asked for, jobs and experiments, as the API's JSON."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cftrunner.sandbox.records import iso
from cftrunner.sandbox.training import TrainingPlan


@dataclass
class Recommendations:
    snapshot_id: str
    generated: int = 0
    polls: int = 0


@dataclass
class Experiment:
    """One experiment of a job; its model id and quality are fixed when the job is created."""

    id: str
    number: int
    sent: dict[str, Any]
    model_id: str
    quality: float
    ending: str  # succeeded, failed or deleted (TrainingPlan.ending)

    @property
    def succeeds(self) -> bool:
        return self.ending == "succeeded"

    def status(self, stage: str) -> str:
        """pending, running, deploying, then its ending, in its job's `stage` (TrainingPlan.stage)."""
        return self.ending if stage == "finished" else stage

    def to_json(self, stage: str) -> dict[str, Any]:
        """Every field sent for it, and its id, number, status and, once succeeded, model_id."""
        status = self.status(stage)
        shown: dict[str, Any] = {"id": self.id, "experiment_number": self.number}
        for key, value in self.sent.items():
            shown.setdefault(key, copy.deepcopy(value))
        shown["status"] = status
        if status == "succeeded":
            shown["model_id"] = self.model_id
        else:
            shown.pop("model_id", None)
        return shown

    def node(self, stage: str) -> dict[str, Any]:
        status = self.status(stage)
        return {
            "id": self.id,
            "type": "experiment",
            "label": f"Experiment {self.number}",
            "status": status,
            "metadata": {
                "id": self.id,
                "base_model_id": self.sent.get("base_model_id"),
                "experiment_number": self.number,
                "model_id": self.model_id if status == "succeeded" else None,
            },
        }


@dataclass
class Job:
    """A fine-tuning job: it trains as its plan says, one step per read of GET finetuning/{id}."""

    id: str
    name: str
    snapshot_id: str
    created_at: datetime
    experiments: list[Experiment]
    plan: TrainingPlan
    reads: int = 0

    @property
    def stage(self) -> str:
        return self.plan.stage(self.reads)

    @property
    def status(self) -> str:
        """processing until it is finished, then completed if any experiment succeeded, else
        failed."""
        if self.stage != "finished":
            return "processing"
        return "completed" if any(e.succeeds for e in self.experiments) else "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "snapshot_id": self.snapshot_id,
            "status": self.status,
            "created_at": iso(self.created_at),
            "experiments": [e.to_json(self.stage) for e in self.experiments],
        }

    def node(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "finetuning-job",
            "label": self.name,
            "status": self.status,
            "metadata": {"id": self.id, "reasoning": False},
            "children": [e.node(self.stage) for e in self.experiments],
        }
