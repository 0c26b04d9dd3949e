"""The sandbox's in-memory Prem state and every operation on it, behind one lock; no HTTP here."""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from cftrunner.sandbox import catalog, llm
from cftrunner.sandbox.fields import Invalid, NotFound, Unavailable
from cftrunner.sandbox.ledger import Ledger
from cftrunner.sandbox.records import (
    Datapoint,
    Dataset,
    Experiment,
    Job,
    Project,
    Recommendations,
    Snapshot,
    Trace,
    TraceDraft,
    TraceQuery,
    WorldSettings,
)
from cftrunner.sandbox.serving import LoadPlan, Serving
from cftrunner.sandbox.training import ModelBook

_Record = TypeVar("_Record")


def _new_id() -> str:
    return str(uuid.uuid4())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class World:
    """Projects, datasets, traces, datapoints, snapshots, recommendations and jobs."""

    def __init__(
        self,
        settings: WorldSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings or WorldSettings()
        self._clock = clock
        self._now = now
        self._lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._datasets: dict[str, Dataset] = {}
        self._traces: dict[str, Trace] = {}
        self._datapoints: dict[str, Datapoint] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._recs: dict[str, Recommendations] = {}
        self._jobs: dict[str, Job] = {}
        self._experiments: dict[str, tuple[Job, Experiment]] = {}
        self.deleted: list[dict[str, Any]] = []  # the traces deleted, as they were
        self.models = ModelBook(
            self.settings.base_quality, (*self.settings.judge_models, *catalog.BASE_MODELS)
        )
        self.serving = Serving()
        self._seq = 0
        self._lags = random.Random(0)
        self._last_created = datetime.min.replace(tzinfo=UTC)
        self.ledger = Ledger()

    # -- setup -------------------------------------------------------------------------------

    def add_project(self, project_id: str | None = None, name: str | None = None) -> str:
        with self._lock:
            project_id = project_id or _new_id()
            if project_id in self._projects:
                raise ValueError(f"project {project_id} already exists")
            name = name or f"Sandbox project {len(self._projects) + 1}"
            now = self._now()
            dataset = Dataset(_new_id(), f"{name} dataset", project_id, now, now)
            self._datasets[dataset.id] = dataset
            self._projects[project_id] = Project(project_id, name, dataset.id)
            return project_id

    def dataset_id(self, project_id: str) -> str:
        with self._lock:
            return _get(self._projects, project_id, "project").dataset_id

    # -- the API -----------------------------------------------------------------------------

    def project_tree(self, project_id: str) -> dict[str, Any]:
        with self._lock:
            project = _get(self._projects, project_id, "project")
            dataset = self._datasets[project.dataset_id]
            snapshots = [self._snapshots[s] for s in dataset.snapshot_ids]
            nodes = [s.node([self._jobs[j] for j in s.job_ids]) for s in snapshots]
            return {
                "project": {
                    "id": project.id,
                    "name": project.name,
                    "type": "project",
                    "children": [dataset.node(nodes)],
                }
            }

    def chat(self, model: str, turns: list[tuple[str, str]], *, structured: bool = False) -> str:
        """The assistant's content for a conversation of (role, content) turns."""
        with self._lock:
            if model in self.models.fine_tuned() and not self.serving.running(model, self._clock()):
                raise Unavailable(f"model {model} is not loaded for inference; "
                                  "POST /api/v1/models/up first")
            judge = model in self.settings.judge_models
            self.ledger.chatted(judge)
            quality = self.models.quality(model)
            return llm.answer(turns, judge=judge, structured=structured, quality=quality)

    def list_models(self) -> dict[str, Any]:
        """The judges, the base models and every fine-tuned model that finished training."""
        with self._lock:
            return catalog.models(self.settings.judge_models, self.models.fine_tuned())

    def model_up(self, model: str) -> None:
        """Load a fine-tuned model for inference; any other model is always loaded."""
        with self._lock:
            if model in self.models.fine_tuned():
                self.serving.up(model, self._clock())

    def model_down(self, model: str) -> None:
        with self._lock:
            if model in self.models.fine_tuned():
                self.serving.down(model)

    def model_running(self, model: str) -> bool:
        with self._lock:
            return model not in self.models.fine_tuned() or self.serving.running(
                model, self._clock())

    def set_model_loading(self, plan: LoadPlan) -> None:
        """How fine-tuned models asked up from now on load."""
        with self._lock:
            self.serving.plan = plan

    def serving_state(self) -> dict[str, Any]:
        with self._lock:
            return self.serving.to_json(self._clock())

    def set_structured_output(self, enabled: bool) -> None:
        """Whether chat accepts response_format json_schema; refused with a 400 when off."""
        with self._lock:
            self.settings = dataclasses.replace(self.settings, structured_output=enabled)

    def set_training(
        self, *, polls: int | None = None, outcome: str | None = None, gain: float | None = None
    ) -> None:
        """How jobs created from now on train; ValueError (and nothing changed) on a bad value."""
        with self._lock:
            current = self.settings
            self.settings = dataclasses.replace(
                current,
                training_polls=current.training_polls if polls is None else polls,
                training_outcome=current.training_outcome if outcome is None else outcome,
                training_gain=current.training_gain if gain is None else gain,
            )

    def set_model_quality(self, model: str, quality: float) -> None:
        """The quality in [0, 1] a model answers with, over its base or trained quality."""
        with self._lock:
            self.models.set_quality(model, quality)

    def model_quality(self, model: str) -> float:
        with self._lock:
            return self.models.quality(model)

    def create_traces(self, drafts: list[TraceDraft]) -> list[dict[str, Any]]:
        """All or nothing: an unknown project in any draft creates none."""
        with self._lock:
            for draft in drafts:
                _get(self._projects, draft.project_id, "project")
            created = []
            for draft in drafts:
                self._seq += 1
                # Millisecond precision, as shown, and never earlier than the previous trace.
                moment = self._now()
                moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
                self._last_created = max(self._last_created, moment)
                trace = Trace(_new_id(), self._seq, self._last_created, **asdict(draft),
                              created_clock=self._clock(), lag_share=self._lags.random())
                self._traces[trace.id] = trace
                self.ledger.acted("traces")
                created.append(trace.to_json(self._clock()))
            return created

    def set_list_lag(self, seconds: float, uneven: bool = False) -> None:
        """How late the trace list shows each trace and its changes, from now on; `uneven`:
        each trace late by its own share of it."""
        with self._lock:
            self.settings = dataclasses.replace(
                self.settings, list_lag=seconds, list_lag_uneven=uneven
            )

    def list_traces(self, query: TraceQuery) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            lag, uneven = self.settings.list_lag, self.settings.list_lag_uneven
            rows = [
                (t, shown)
                for t in self._traces.values()
                if (query.project_id is None or t.project_id == query.project_id)
                and (not query.model_ids or t.model_id in query.model_ids)
                and (shown := t.listed(now, lag * t.lag_share if uneven else lag)) is not None
            ]
            if query.sort_by == "score":
                rows.sort(key=lambda r: (r[0].score, r[0].seq), reverse=query.sort_order == "desc")
            else:
                rows.sort(
                    key=lambda r: (r[0].created_at, r[0].seq), reverse=query.sort_order == "desc"
                )
            size = self.settings.page_size
            page = rows[(query.page - 1) * size : query.page * size]
            return {"results": [shown for _, shown in page], "total": len(rows)}

    def update_trace(
        self,
        trace_id: str,
        *,
        score: float | None = None,
        feedback: str | None = None,
        project_id: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            trace = _get(self._traces, trace_id, "trace")
            if project_id is not None:
                _get(self._projects, project_id, "project")
                trace.project_id = project_id
            if score is not None:
                trace.score = score
            if feedback is not None:
                trace.feedback = feedback
            return trace.to_json(self._clock())

    def delete_trace(self, trace_id: str) -> None:
        with self._lock:
            self.deleted.append(_get(self._traces, trace_id, "trace").to_json(self._clock()))
            del self._traces[trace_id]
            self.ledger.acted("traces_deleted")

    def add_to_dataset(self, trace_id: str) -> dict[str, Any]:
        """Adds a datapoint on every call, as the real API is assumed to."""
        with self._lock:
            trace = _get(self._traces, trace_id, "trace")
            dataset = self._datasets[self._projects[trace.project_id].dataset_id]
            status = "added" if trace.score >= self.settings.add_threshold else "queued"
            now = self._now()
            point = Datapoint(
                _new_id(), dataset.id, trace.id, status, trace.input, trace.output, now
            )
            self._datapoints[point.id] = point
            dataset.datapoint_ids.append(point.id)
            dataset.updated_at = now
            if trace.added_at is None:
                trace.added_at = self._clock()
            if status == "queued":
                trace.processing_until = self._clock() + self.settings.processing_seconds
                failing = self.settings.correction_failing
                trace.correction_fails = failing is not None and failing in trace.input
            self.ledger.added(trace.id)
            return {"traceId": trace.id, "status": status, "success": True, "datapointId": point.id}

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        with self._lock:
            dataset = _get(self._datasets, dataset_id, "dataset")
            return dataset.to_json([self._snapshots[s] for s in dataset.snapshot_ids])

    def create_snapshot(self, dataset_id: str, split_percentage: int) -> str:
        with self._lock:
            dataset = _get(self._datasets, dataset_id, "dataset")
            total = len(dataset.datapoint_ids)
            if total == 0:
                raise Invalid("dataset has no datapoints")
            training = min(total, max(1, round(total * split_percentage / 100)))
            now = self._now()
            label = f"Snapshot {len(dataset.snapshot_ids) + 1}"
            snapshot = Snapshot(
                _new_id(), dataset.id, label, now, split_percentage, training, total - training
            )
            self._snapshots[snapshot.id] = snapshot
            dataset.snapshot_ids.append(snapshot.id)
            dataset.updated_at = now
            self.ledger.acted("snapshots")
            return snapshot.id

    def generate_recommendations(self, snapshot_id: str) -> str:
        """Starts (or restarts) the recommender; polls count again from zero."""
        with self._lock:
            _get(self._snapshots, snapshot_id, "snapshot")
            recs = self._recs.setdefault(snapshot_id, Recommendations(snapshot_id))
            recs.generated += 1
            recs.polls = 0
            self.ledger.recommended(snapshot_id)
            return snapshot_id

    def poll_recommendations(self, snapshot_id: str) -> dict[str, Any]:
        with self._lock:
            recs = self._recs.get(snapshot_id)
            if recs is None:
                raise NotFound(f"no recommendations for snapshot {snapshot_id}")
            recs.polls += 1
            if recs.polls <= self.settings.recs_polls:
                return catalog.processing(snapshot_id)
            return catalog.recommendations(snapshot_id, self.settings.recs_outcome)

    def recommendations(self, snapshot_id: str) -> dict[str, Any]:
        """The finished answer for a generated snapshot, without counting as a poll."""
        with self._lock:
            if snapshot_id not in self._recs:
                raise NotFound(f"no recommendations for snapshot {snapshot_id}")
            return catalog.recommendations(snapshot_id, self.settings.recs_outcome)

    def create_job(self, snapshot_id: str, name: str, experiments: list[dict[str, Any]]) -> str:
        """A job that trains as the settings say now; each model's quality is fixed here."""
        with self._lock:
            snapshot = _get(self._snapshots, snapshot_id, "snapshot")
            parents = [self._parent_quality(e) for e in experiments]
            plan = self.settings.training()
            made = [
                Experiment(
                    _new_id(),
                    n,
                    copy.deepcopy(sent),
                    self.models.reserve(name, n),
                    plan.quality(parent, n),
                    plan.ending(n),
                )
                for n, (sent, parent) in enumerate(zip(experiments, parents, strict=True), 1)
            ]
            job = Job(_new_id(), name, snapshot.id, self._now(), made, plan)
            self._jobs[job.id] = job
            self._experiments.update((e.id, (job, e)) for e in made)
            snapshot.job_ids.append(job.id)
            self.ledger.acted("jobs")
            return job.id

    def _parent_quality(self, sent: dict[str, Any]) -> float:
        """The quality of the model an experiment trains from: the model of the experiment it
        re-tunes (Invalid unless that succeeded), else its base model's."""
        source = sent.get("refinetune_from_experiment_id")
        if source is None:
            base = sent.get("base_model_id")
            return self.models.quality(base) if isinstance(base, str) else self.models.base_quality
        if not isinstance(source, str):
            raise Invalid("refinetune_from_experiment_id must be a string")
        job, parent = self._experiments.get(source, (None, None))
        if job is None or parent is None or parent.status(job.stage) != "succeeded":
            raise Invalid(f"refinetune_from_experiment_id {source} is not a succeeded experiment")
        return self.models.quality(parent.model_id)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as it is; then it advances one step (TrainingPlan.stage)."""
        with self._lock:
            job = _get(self._jobs, job_id, "job")
            shown = job.to_json()
            job.reads += 1
            if job.reads == job.plan.polls + 1:
                for experiment in job.experiments:
                    if experiment.succeeds:
                        self.models.trained(experiment.model_id, experiment.quality)
            return shown

    # -- reads for tests and the control endpoints -------------------------------------------

    def trace(self, trace_id: str) -> dict[str, Any]:
        with self._lock:
            return _get(self._traces, trace_id, "trace").to_json(self._clock())

    def traces(self) -> list[dict[str, Any]]:
        """Every live trace, in creation order."""
        with self._lock:
            now = self._clock()
            return [t.to_json(now) for t in self._traces.values()]

    def datapoints(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.to_json() for d in self._datapoints.values()]

    def snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_json() for s in self._snapshots.values()]

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.to_json() for j in self._jobs.values()]

    def sent_experiments(self, job_id: str) -> list[dict[str, Any]]:
        """The experiments exactly as the job's creation request sent them."""
        with self._lock:
            job = _get(self._jobs, job_id, "job")
            return [copy.deepcopy(e.sent) for e in job.experiments]

    def counts(self) -> dict[str, Any]:
        """What the sandbox acted on, and (under `requests`) what it received, per route."""
        return self.ledger.counts()

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {
                "projects": [self.project_tree(p)["project"] for p in self._projects],
                "datasets": [self.dataset(d) for d in self._datasets],
                "traces": self.traces(),
                "datapoints": self.datapoints(),
                "snapshots": self.snapshots(),
                "recommendations": [
                    {"snapshot_id": r.snapshot_id, "generated": r.generated, "polls": r.polls}
                    for r in self._recs.values()
                ],
                "jobs": self.jobs(),
                "training": self.settings.training().to_json(),
                "model_qualities": self.models.to_json(),
            }


def _get(table: dict[str, _Record], key: str, what: str) -> _Record:
    record = table.get(key)
    if record is None:
        raise NotFound(f"{what} {key} not found")
    return record
