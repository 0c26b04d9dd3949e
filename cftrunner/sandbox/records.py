"""The sandbox's settings and its data records, projects to snapshots, each rendered as the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cftrunner.sandbox import llm
from cftrunner.sandbox.catalog import RECS_OUTCOMES
from cftrunner.sandbox.training import TrainingPlan, check_quality

if TYPE_CHECKING:
    from cftrunner.sandbox.jobs import Job


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
    # Added to every score the judge gives (kept within 0..1): a judge that drifted, lenient
    # above 0, harsh below it.
    judge_drift: float = 0.0

    def __post_init__(self) -> None:
        check_drift(self.judge_drift)
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


def check_drift(drift: float) -> None:
    if isinstance(drift, bool) or not isinstance(drift, int | float) or not -1 <= drift <= 1:
        raise ValueError("judge drift must be a number from -1 to 1")


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

    def seen(self, now: float, lag: float) -> float | None:
        """The moment as of which the trace list, `lag` seconds behind for this trace, shows it
        at `now`; None while it does not show it yet."""
        seen = now - lag
        return None if seen < self.created_clock else seen

    def listed(self, seen: float) -> dict[str, Any]:
        """The trace as the trace list shows it as of `seen` (see `seen`)."""
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
