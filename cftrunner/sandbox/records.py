"""The sandbox's in-memory records and how each one renders as the API's JSON."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cftrunner.sandbox import llm
from cftrunner.sandbox.catalog import RECS_OUTCOMES
from cftrunner.sandbox.training import TrainingPlan, check_quality


@dataclass(frozen=True)
class WorldSettings:
    judge_models: tuple[str, ...] = ("claude-4.5-sonnet",)
    processing_seconds: float = 0.3
    recs_polls: int = 1
    recs_outcome: str = "completed"
    page_size: int = 10
    add_threshold: float = 0.5
    # A queued addition whose trace's input contains this text: its correction ends "failed".
    correction_failing: str | None = None
    structured_output: bool = True
    training_polls: int = 2
    training_outcome: str = "succeeded"
    training_gain: float = 0.15
    base_quality: float = llm.BASE_QUALITY
    # The trace list shows each trace, and what became of it, only this many seconds late, as a
    # list fed by an ingestion pipeline does; uneven: each trace late by its own share of it.
    list_lag: float = 0.0
    list_lag_uneven: bool = False

    def __post_init__(self) -> None:
        if self.list_lag < 0:
            raise ValueError("list_lag must not be negative")
        if self.recs_outcome not in RECS_OUTCOMES:
            raise ValueError(f"recs_outcome must be one of {', '.join(RECS_OUTCOMES)}")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.training()
        check_quality(self.base_quality)

    def training(self) -> TrainingPlan:
        """How a job created now trains; ValueError if the training settings are invalid."""
        return TrainingPlan(self.training_polls, self.training_outcome, self.training_gain)


@dataclass(frozen=True)
class TraceDraft:
    project_id: str
    model_id: str
    input: str
    output: str
    score: float
    feedback: str


@dataclass(frozen=True)
class TraceQuery:
    page: int = 1
    project_id: str | None = None
    model_ids: frozenset[str] = frozenset()
    sort_by: str = "createdAt"
    sort_order: str = "desc"


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z, as Prem writes it."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Project:
    id: str
    name: str
    dataset_id: str


@dataclass
class Dataset:
    id: str
    name: str
    project_id: str
    created_at: datetime
    updated_at: datetime
    datapoint_ids: list[str] = field(default_factory=list)
    snapshot_ids: list[str] = field(default_factory=list)

    def node(self, snapshot_nodes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "dataset",
            "label": self.name,
            "status": "completed",
            "metadata": {"id": self.id, "datapoints_count": len(self.datapoint_ids)},
            "children": snapshot_nodes,
        }

    def to_json(self, snapshots: list[Snapshot]) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "status": "completed",
            "labels": [],
            "datapoints_count": len(self.datapoint_ids),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "snapshots": [{"id": s.id, "created_at": iso(s.created_at)} for s in snapshots],
        }


@dataclass
class Trace:
    id: str
    seq: int
    created_at: datetime
    project_id: str
    model_id: str
    input: str
    output: str
    score: float
    feedback: str
    created_clock: float = 0.0  # monotonic, as the world's clock
    lag_share: float = 1.0  # its share of the list's lag, when that is uneven
    added_at: float | None = None  # monotonic: when it was first added to the dataset
    processing_until: float | None = None
    correction_fails: bool = False

    @property
    def added_to_dataset(self) -> bool:
        return self.added_at is not None

    def listed(self, now: float, lag: float) -> dict[str, Any] | None:
        """The trace as the trace list, `lag` seconds behind for it, shows it at `now`; None
        while it shows none."""
        seen = now - lag
        if seen < self.created_clock:
            return None
        shown = self.to_json(seen)
        if self.added_at is None or self.added_at > seen:
            shown.update(addedToDataset=False, processingStatus="none")
        return shown

    def to_json(self, now: float) -> dict[str, Any]:
        """The trace as the API shows it at monotonic time `now`."""
        processing = self.processing_until is not None and now < self.processing_until
        corrected = "failed" if self.correction_fails else "none"
        return {
            "id": self.id,
            "createdAt": iso(self.created_at),
            "modelId": self.model_id,
            "projectId": self.project_id,
            "input": self.input,
            "output": self.output,
            "score": self.score,
            "feedback": self.feedback,
            "addedToDataset": self.added_to_dataset,
            "processingStatus": "processing" if processing else corrected,
        }


@dataclass
class Datapoint:
    id: str
    dataset_id: str
    trace_id: str
    status: str
    input: str
    output: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset_id": self.dataset_id,
            "trace_id": self.trace_id,
            "status": self.status,
            "input": self.input,
            "output": self.output,
            "created_at": iso(self.created_at),
        }


@dataclass
class Snapshot:
    id: str
    dataset_id: str
    label: str
    created_at: datetime
    split_percentage: int
    training_count: int
    validation_count: int
    job_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset_id": self.dataset_id,
            "label": self.label,
            "split_percentage": self.split_percentage,
            "job_ids": list(self.job_ids),
            **self.metadata(),
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "created_at": iso(self.created_at),
            "training_count": self.training_count,
            "validation_count": self.validation_count,
        }

    def node(self, jobs: list[Job]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "snapshot",
            "label": self.label,
            "metadata": {"id": self.id, **self.metadata()},
            "children": [job.node() for job in jobs],
        }


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
