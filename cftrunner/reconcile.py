"""Reading remote state to learn whether a request whose answer was lost already happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from cftrunner import payloads
from cftrunner.client import PremClient
from cftrunner.exceptions import RejectedError, RunStopped
from cftrunner.models import Effect, Run
from cftrunner.payloads import RemoteTrace
from cftrunner.settings import Settings
from cftrunner.store import Store


class Reconciler:
    """Each method answers the outcome the lost request had, or None when it surely did not happen."""

    def __init__(self, store: Store, client: PremClient, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings

    def since(self, effect: Effect) -> datetime:
        return effect.prepared_at - timedelta(seconds=self.settings.reconcile_skew)

    def traces_since(self, run: Run, since: datetime) -> Iterator[RemoteTrace]:
        """The run's project/model traces, newest first, down to `since`. The listing's own
        `total` bounds the pages read; without one, `reconcile_max_pages` does, and a listing
        longer than that stops the run, since absence could then not be proven."""
        seen = 0
        limit = self.settings.reconcile_max_pages
        previous: list[str] = []
        page = 1
        while page <= limit:
            traces, total = self.client.traces(run.project_id, run.model_alias, page)
            ids = [t.id for t in traces]
            if ids and ids == previous:
                raise RunStopped(f"run {run.id}: the trace list returns the same page again; "
                                 "cannot confirm a lost request")
            yield from traces
            seen += len(traces)
            if not traces or (total is not None and seen >= total):
                return
            oldest = traces[-1].created_at
            if oldest is not None and oldest < since:
                return
            if page == 1 and total is not None:
                # Traces created while paging push older ones onto later pages: allow for them.
                limit = max(limit, -(-total // len(traces)) + self.settings.reconcile_max_pages)
            previous, page = ids, page + 1
        raise RunStopped(f"run {run.id}: the trace list is longer than {limit} pages; "
                         "cannot confirm a lost request")

    def trace(self, run: Run, effect: Effect) -> dict[str, Any] | None:
        want = effect.request
        since = self.since(effect)
        for trace in self.traces_since(run, since):
            if (trace.input == want["input"] and trace.output == want["output"]
                    and (trace.created_at is None or trace.created_at >= since)
                    and (trace.score is None or abs(trace.score - want["score"]) < 1e-4)
                    and _same_text(trace.feedback, want["feedback"])
                    and not self.store.trace_claimed(trace.id)):
                return {"trace_id": trace.id}
        return None

    def find_traces(self, run: Run, trace_ids: set[str], since: datetime) -> dict[str, RemoteTrace]:
        found: dict[str, RemoteTrace] = {}
        for trace in self.traces_since(run, since):
            if trace.id in trace_ids:
                found[trace.id] = trace
                if len(found) == len(trace_ids):
                    break
        return found

    def addition(self, run: Run, effect: Effect, trace_since: datetime) -> dict[str, Any] | None:
        trace_id = effect.request["trace_id"]
        trace = self.find_traces(run, {trace_id}, trace_since).get(trace_id)
        if trace is None or not trace.added_to_dataset:
            return None
        status = {"processing": "queued", "failed": "failed"}.get(trace.processing_status or "",
                                                                  "added")
        return {"status": status, "success": status != "failed", "datapoint_id": None}

    def snapshot(self, run: Run, effect: Effect) -> dict[str, Any] | None:
        dataset_id = effect.request["dataset_id"]
        snaps = self.client.dataset_snapshots(dataset_id)
        if snaps is None:
            snaps = payloads.snapshots_in_tree(self.client.project(run.project_id), dataset_id)
        since = self.since(effect)
        candidates = [s for s in snaps if (s.created_at is None or s.created_at >= since)
                      and not self.store.snapshot_claimed(s.id)]
        if not candidates:
            return None
        # Another snapshot of the same dataset cut in the same minutes by someone else cannot be
        # told apart; the earliest unclaimed one after the intent is the likeliest ours.
        earliest = min(candidates, key=lambda s: (s.created_at is None, s.created_at or since))
        return {"snapshot_id": earliest.id}

    def recommendations(self, run: Run, effect: Effect) -> dict[str, Any] | None:
        return _absent_on_404(lambda: {"status": self.client.recommendations(
            effect.request["snapshot_id"]).status})

    def launch(self, run: Run, effect: Effect) -> dict[str, Any] | None:
        jobs = payloads.jobs_in_tree(self.client.project(run.project_id),
                                     effect.request["snapshot_id"])
        named = [j for j in jobs if effect.request["name"] in (j.get("label"), j.get("name"))]
        unnamed = [j for j in jobs if not j.get("label") and not j.get("name")]
        # The snapshot was cut by this run, so a job under it with no readable name is ours
        # when it is the only one.
        match = named[0] if named else (unnamed[0] if len(jobs) == 1 and unnamed else None)
        if match is None or not isinstance(match.get("id"), str):
            return None
        return {"job_id": match["id"]}


def _same_text(stored: str | None, sent: str) -> bool:
    """Feedback as stored may be trimmed or cut shorter than sent; it must not say otherwise."""
    if stored is None:
        return True
    a, b = " ".join(stored.split()), " ".join(sent.split())
    if a == b:
        return True
    return bool(a) and (b.startswith(a) or a.startswith(b))


def _absent_on_404(read: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return read()
    except RejectedError as exc:
        if exc.status_code == 404:
            return None
        raise
