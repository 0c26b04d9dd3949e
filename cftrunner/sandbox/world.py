"""The World, the sandbox's Prem state behind one lock: projects, traces, datasets, snapshots. No HTTP."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any

from cftrunner.sandbox.fields import Invalid
from cftrunner.sandbox.records import Datapoint, Dataset, Project, Snapshot, Trace, TraceDraft, TraceQuery
from cftrunner.sandbox.world_models import WorldModels
from cftrunner.sandbox.world_state import lookup, new_id


class World(WorldModels):
    """Projects, datasets, traces, datapoints, snapshots, recommendations and jobs."""

    # -- setup -------------------------------------------------------------------------------

    def add_project(self, project_id: str | None = None, name: str | None = None) -> str:
        with self._lock:
            project_id = project_id or new_id()
            if project_id in self._projects:
                raise ValueError(f"project {project_id} already exists")
            name = name or f"Sandbox project {len(self._projects) + 1}"
            now = self._now()
            dataset = Dataset(new_id(), f"{name} dataset", project_id, now, now)
            self._datasets[dataset.id] = dataset
            self._projects[project_id] = Project(project_id, name, dataset.id)
            return project_id

    def dataset_id(self, project_id: str) -> str:
        with self._lock:
            return lookup(self._projects, project_id, "project").dataset_id

    # -- the API -----------------------------------------------------------------------------

    def project_tree(self, project_id: str) -> dict[str, Any]:
        with self._lock:
            project = lookup(self._projects, project_id, "project")
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

    def create_traces(self, drafts: list[TraceDraft]) -> list[dict[str, Any]]:
        """All or nothing: an unknown project in any draft creates none."""
        with self._lock:
            for draft in drafts:
                lookup(self._projects, draft.project_id, "project")
            created = []
            for draft in drafts:
                self._seq += 1
                # Millisecond precision, as shown, and never earlier than the previous trace.
                moment = self._now()
                moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
                self._last_created = max(self._last_created, moment)
                trace = Trace(new_id(), self._seq, self._last_created, **asdict(draft),
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
            # Only the page asked for is shown: showing every trace made a page of a 1,000-trace
            # list take 1.6 ms instead of 0.2, under the lock every request takes.
            rows = [
                (t, seen)
                for t in self._traces.values()
                if (query.project_id is None or t.project_id == query.project_id)
                and (not query.model_ids or t.model_id in query.model_ids)
                and (seen := t.seen(now, lag * t.lag_share if uneven else lag)) is not None
            ]
            if query.sort_by == "score":
                rows.sort(key=lambda r: (r[0].score, r[0].seq), reverse=query.sort_order == "desc")
            else:
                rows.sort(
                    key=lambda r: (r[0].created_at, r[0].seq), reverse=query.sort_order == "desc"
                )
            size = self.settings.page_size
            page = rows[(query.page - 1) * size : query.page * size]
            return {"results": [t.listed(seen) for t, seen in page], "total": len(rows)}

    def update_trace(
        self,
        trace_id: str,
        *,
        score: float | None = None,
        feedback: str | None = None,
        project_id: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            trace = lookup(self._traces, trace_id, "trace")
            if project_id is not None:
                lookup(self._projects, project_id, "project")
                trace.project_id = project_id
            if score is not None:
                trace.score = score
            if feedback is not None:
                trace.feedback = feedback
            return trace.to_json(self._clock())

    def delete_trace(self, trace_id: str) -> None:
        with self._lock:
            self.deleted.append(lookup(self._traces, trace_id, "trace").to_json(self._clock()))
            del self._traces[trace_id]
            self.ledger.acted("traces_deleted")

    def add_to_dataset(self, trace_id: str) -> dict[str, Any]:
        """Adds a datapoint on every call, as the real API is assumed to."""
        with self._lock:
            trace = lookup(self._traces, trace_id, "trace")
            dataset = self._datasets[self._projects[trace.project_id].dataset_id]
            status = "added" if trace.score >= self.settings.add_threshold else "queued"
            now = self._now()
            point = Datapoint(
                new_id(), dataset.id, trace.id, status, trace.input, trace.output, now
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
            dataset = lookup(self._datasets, dataset_id, "dataset")
            return dataset.to_json([self._snapshots[s] for s in dataset.snapshot_ids])

    def create_snapshot(self, dataset_id: str, split_percentage: int) -> str:
        with self._lock:
            dataset = lookup(self._datasets, dataset_id, "dataset")
            total = len(dataset.datapoint_ids)
            if total == 0:
                raise Invalid("dataset has no datapoints")
            training = min(total, max(1, round(total * split_percentage / 100)))
            now = self._now()
            label = f"Snapshot {len(dataset.snapshot_ids) + 1}"
            snapshot = Snapshot(
                new_id(), dataset.id, label, now, split_percentage, training, total - training
            )
            self._snapshots[snapshot.id] = snapshot
            dataset.snapshot_ids.append(snapshot.id)
            dataset.updated_at = now
            self.ledger.acted("snapshots")
            return snapshot.id

    # -- reads for tests and the control endpoints -------------------------------------------

    def trace(self, trace_id: str) -> dict[str, Any]:
        with self._lock:
            return lookup(self._traces, trace_id, "trace").to_json(self._clock())

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
