"""The World's state: its tables, the one lock every operation takes, its clocks and its ids."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from cftrunner.sandbox import catalog
from cftrunner.sandbox.fields import NotFound
from cftrunner.sandbox.jobs import Experiment, Job, Recommendations
from cftrunner.sandbox.ledger import Ledger
from cftrunner.sandbox.records import Datapoint, Dataset, Project, Snapshot, Trace, WorldSettings
from cftrunner.sandbox.serving import Serving
from cftrunner.sandbox.training import ModelBook

_Record = TypeVar("_Record")


def new_id() -> str:
    return str(uuid.uuid4())


def _utcnow() -> datetime:
    return datetime.now(UTC)


def lookup(table: dict[str, _Record], key: str, what: str) -> _Record:
    """The record under `key`; NotFound ("WHAT KEY not found") when there is none."""
    record = table.get(key)
    if record is None:
        raise NotFound(f"{what} {key} not found")
    return record


class WorldState:
    """Projects, datasets, traces, datapoints, snapshots, recommendations and jobs; the operations
    on them (World and WorldModels) each take the lock."""

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
