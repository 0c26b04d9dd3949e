"""Reading what the Prem API says of fine-tuning: project tree, snapshots, recommendations, jobs, models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cftrunner.payloads.replies import bad_answer, first_str, parse_time


@dataclass(frozen=True)
class RemoteSnapshot:
    id: str
    created_at: datetime | None


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
    raise bad_answer("a project answer is not an object")


def find_dataset_id(project: dict[str, Any]) -> str | None:
    for node, _ in walk_tree(project):
        if node.get("type") == "dataset":
            return first_str(node, "id")
    return None


def snapshots_in_tree(project: dict[str, Any], dataset_id: str) -> list[RemoteSnapshot]:
    found = []
    for node, ancestors in walk_tree(project):
        if node.get("type") == "snapshot" and any(a.get("id") == dataset_id for a in ancestors):
            meta = node["metadata"] if isinstance(node.get("metadata"), dict) else {}
            snap_id = first_str(node, "id")
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
        if isinstance(obj, dict) and (snap_id := first_str(obj, "id", "snapshot_id")):
            snaps.append(RemoteSnapshot(snap_id, parse_time(obj.get("created_at"))))
    return snaps


@dataclass(frozen=True)
class Recommendations:
    status: str
    experiments: list[dict[str, Any]]


def parse_recommendations(body: Any) -> Recommendations:
    if not isinstance(body, dict):
        raise bad_answer("a recommendations answer is not an object")
    status = (first_str(body, "status") or "").lower()
    experiments = body.get("recommended_experiments")
    return Recommendations(status, [e for e in experiments if isinstance(e, dict)]
                           if isinstance(experiments, list) else [])


def parse_model_ids(body: Any) -> list[str]:
    """The model ids of `GET /api/v1/models` (`{data: [{id}]}`), or of a bare list."""
    listed = body.get("data", body.get("models")) if isinstance(body, dict) else body
    if not isinstance(listed, list):
        raise bad_answer("a model list has no data")
    ids = (first_str(m, "id", "model_id") if isinstance(m, dict) else m for m in listed)
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
    raise bad_answer("a model status has no status")


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
        id=first_str(obj, "id", "experiment_id", "experimentId"),
        number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        status=(first_str(obj, "status") or "").lower(),
        model_id=first_str(obj, "model_id", "modelId") or first_str(meta, "model_id", "modelId"),
        base_model_id=first_str(obj, "base_model_id", "baseModelId"))


def parse_job(body: Any) -> RemoteJob:
    """A fine-tuning job as `GET /api/v1/public/finetuning/{id}` answers it."""
    if isinstance(body, dict) and isinstance(body.get("job"), dict):
        body = body["job"]
    if not isinstance(body, dict):
        raise bad_answer("a fine-tuning job answer is not an object")
    experiments = body.get("experiments")
    return RemoteJob(
        id=first_str(body, "id", "job_id", "jobId"),
        status=(first_str(body, "status") or "").lower(),
        experiments=tuple(_experiment(e) for e in experiments if isinstance(e, dict))
        if isinstance(experiments, list) else ())
