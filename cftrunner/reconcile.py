"""Reading remote state to learn whether a request whose answer was lost already happened.

Finding the request's result proves it happened. Not finding it proves nothing by itself: the
platform's lists show new records late (the trace list by 20 s and more, and unevenly per trace).
Absence counts only against a view that demonstrably reflects a moment after the lost request:
one that already shows what this run wrote after it (a high-water mark). Until then the answer is
`Unknown`, and the caller looks again later instead of sending anything.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from cftrunner.client import PremClient
from cftrunner.clock import utcnow
from cftrunner.config.settings import Settings
from cftrunner.effects import Unknown, Verdict
from cftrunner.exceptions import RejectedError, RunStopped
from cftrunner.payloads import bodies, finetuning
from cftrunner.payloads.replies import RemoteTrace
from cftrunner.records import Effect, Run
from cftrunner.store import Store

# The list shows each trace late by its own delay, and the lost request's may be longer than any
# seen: its absence counts only once the list shows this many of the run's writes made after it,
# the delays of this many were measured, and this many times the longest delay seen has passed.
MARKS_AFTER = 3
LAG_MARGIN = 3.0


T = TypeVar("T")


class Retrying(Protocol):
    """Call until it succeeds, retrying transient failures (Driver.retrying)."""

    def __call__(self, what: str, call: Callable[[], T], /) -> T: ...


class Reconciler:
    """Each method answers the outcome the lost request had, None when it surely did not happen,
    or Unknown while the remote view has not caught up past it."""

    def __init__(self, store: Store, client: PremClient, settings: Settings, *,
                 retrying: Retrying) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        # Each page of the trace list is read with its own retries: a look that reads many pages
        # must not use up one budget across them all (a storm of 503s on a long list did).
        self.retrying = retrying
        # How late the trace list showed this run's own writes: an absence is not trusted sooner
        # than LAG_MARGIN times the longest after the lost request.
        self._lag_seen = 0.0
        self._delays: dict[tuple[str, str], float] = {}  # (run, mark): at most this late
        self._reading_since: dict[str, datetime] = {}  # by run: this process's first read
        # Marker traces of a run seen in the list, by run: deleted with the others once done.
        self.markers_seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

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
            traces, total = self.retrying(
                f"reading page {page} of the trace list",
                functools.partial(self.client.traces, run.project_id, run.model_alias, page))
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

    def trace(self, run: Run, effect: Effect) -> Verdict:
        want = effect.request
        since = self.since(effect)
        read_at = utcnow()
        listed: dict[str, RemoteTrace] = {}
        for trace in self._listing(run, since):
            listed[trace.id] = trace
            if (trace.input == want["input"] and trace.output == want["output"]
                    and (trace.created_at is None or trace.created_at >= since)
                    and (trace.score is None or abs(trace.score - want["score"]) < 1e-4)
                    and _same_text(trace.feedback, want["feedback"])
                    and not self.store.trace_claimed(trace.id)):
                return {"trace_id": trace.id}
        return self._absent_if_caught_up(run, effect, read_at, listed, whole_run=False)

    def _absent_if_caught_up(self, run: Run, effect: Effect, read_at: datetime,
                             listed: dict[str, RemoteTrace], whole_run: bool) -> None | Unknown:
        """None when the trace list, as read at `read_at` (`listed`: back to the run's start,
        or to the lost request's), reflects a moment after `effect` last possibly went out;
        else Unknown.

        The marks are the traces, additions and markers this run made since the lost request
        was first prepared, in the order they were prepared. The list must show them, in that
        order, up to at least MARKS_AFTER prepared after the lost request last possibly went out
        (its `updated_at`, see effects.Performer._what_became_of). The delays of at least MARKS_AFTER marks
        must have been measured, and the lost request must be older than LAG_MARGIN times the
        longest (see `_seen_behind`)."""
        sent_by = effect.updated_at
        shown = [(mark, _shows(mark, listed, whole_run))
                 for mark in self.store.done_effects(run.id, MARK_KINDS, effect.prepared_at)
                 if mark.key != effect.key and mark.updated_at < read_at]
        lag, measured = self._seen_behind(run.id, read_at, shown)
        after = 0  # marks after the lost request, in the part of the list that shows them all
        for mark, seen in shown:
            if seen is False:
                break
            after += bool(seen and mark.prepared_at > sent_by)
        waited = (utcnow() - sent_by).total_seconds()
        if after >= MARKS_AFTER and measured >= MARKS_AFTER and waited > LAG_MARGIN * lag:
            return None
        # A marker trace helps, unless one written for it is still on its way to the list.
        coming = any(seen is False and mark.kind == "marker" and mark.prepared_at > sent_by
                     for mark, seen in shown)
        if after < MARKS_AFTER or measured < MARKS_AFTER:
            return Unknown(f"the trace list shows {after} of the {MARKS_AFTER} writes of this run "
                           f"after it that it takes, and {measured} of the {MARKS_AFTER} delays "
                           "measured", unmarked=not coming)
        return Unknown(f"the trace list was up to {lag:.1f} s behind this run's writes; the "
                       f"request is {waited:.1f} s old", unmarked=not coming)

    def _seen_behind(self, run_id: str, read_at: datetime,
                     shown: list[tuple[Effect, bool | None]]) -> tuple[float, int]:
        """The longest the trace list was seen behind one of the run's writes, and on how many
        writes a delay was measured. A mark it does not show yet has been behind since it was
        done; a mark done while this process was reading the list was behind until the read
        that first showed it. (A mark done before that, or found by reconciling, says nothing of
        the delay: when it was written is not known.)"""
        with self._lock:
            reading_since = self._reading_since.setdefault(run_id, read_at)
            for mark, seen in shown:
                key = (run_id, mark.key)
                if seen is False:
                    self._lag_seen = max(self._lag_seen,
                                         (read_at - mark.updated_at).total_seconds())
                elif (seen and key not in self._delays and mark.updated_at >= reading_since
                      and not (mark.outcome or {}).get("found")):
                    self._delays[key] = (read_at - mark.updated_at).total_seconds()
            delays = [d for (run, _), d in self._delays.items() if run == run_id]
            return max([self._lag_seen, *delays]), len(delays)

    def _listing(self, run: Run, since: datetime) -> Iterator[RemoteTrace]:
        """`traces_since`, noting the run's marker traces it shows."""
        for trace in self.traces_since(run, since):
            if trace.input is not None and bodies.is_marker_of(trace.input, run.id):
                with self._lock:
                    self.markers_seen.setdefault(run.id, set()).add(trace.id)
            yield trace

    def find_traces(self, run: Run, trace_ids: set[str], since: datetime) -> dict[str, RemoteTrace]:
        found: dict[str, RemoteTrace] = {}
        for trace in self.traces_since(run, since):
            if trace.id in trace_ids:
                found[trace.id] = trace
                if len(found) == len(trace_ids):
                    break
        return found

    def addition(self, run: Run, effect: Effect, trace_since: datetime) -> Verdict:
        trace_id = effect.request["trace_id"]
        read_at = utcnow()
        # Every trace of the run: the marks may be anywhere in the list.
        listed: dict[str, RemoteTrace] = {}
        for trace in self._listing(run, trace_since):
            listed[trace.id] = trace
            if trace.id == trace_id and trace.added_to_dataset:
                status = {"processing": "queued", "failed": "failed"}.get(
                    trace.processing_status or "", "added")
                return {"status": status, "success": status != "failed", "datapoint_id": None}
        if trace_id not in listed:
            # The trace exists (its id is stored): the list does not show it yet.
            return Unknown(f"trace {trace_id} is not in the trace list yet")
        return self._absent_if_caught_up(run, effect, read_at, listed, whole_run=True)

    def snapshot(self, run: Run, effect: Effect) -> Verdict:
        dataset_id = effect.request["dataset_id"]
        snaps = self.client.dataset_snapshots(dataset_id)
        if snaps is None:
            snaps = finetuning.snapshots_in_tree(self.client.project(run.project_id), dataset_id)
        since = self.since(effect)
        candidates = [s for s in snaps if (s.created_at is None or s.created_at >= since)
                      and not self.store.snapshot_claimed(s.id)]
        if not candidates:
            # Nothing the run wrote comes after its snapshot, so the view must at least show
            # every snapshot of the dataset that this state database knows was made.
            missing = set(self.store.snapshots_of(dataset_id)) - {s.id for s in snaps}
            if missing:
                return Unknown(f"the dataset does not show snapshot {sorted(missing)[0]} yet")
            return None
        # Another snapshot of the same dataset cut in the same minutes by someone else cannot be
        # told apart; the earliest unclaimed one after the intent is the likeliest ours.
        earliest = min(candidates, key=lambda s: (s.created_at is None, s.created_at or since))
        return {"snapshot_id": earliest.id}

    def recommendations(self, run: Run, effect: Effect) -> Verdict:
        return _absent_on_404(lambda: {"status": self.client.recommendations(
            effect.request["snapshot_id"]).status})

    def launch(self, run: Run, effect: Effect) -> Verdict:
        snapshot_id = effect.request["snapshot_id"]
        project = self.client.project(run.project_id)
        if not any(node.get("id") == snapshot_id for node, _ in finetuning.walk_tree(project)):
            # The tree does not show even the snapshot the job was made from.
            return Unknown(f"the project tree does not show snapshot {snapshot_id} yet")
        jobs = finetuning.jobs_in_tree(project, snapshot_id)
        named = [j for j in jobs if effect.request["name"] in (j.get("label"), j.get("name"))]
        unnamed = [j for j in jobs if not j.get("label") and not j.get("name")]
        # The snapshot was cut by this run, so a job under it with no readable name is ours
        # when it is the only one.
        match = named[0] if named else (unnamed[0] if len(jobs) == 1 and unnamed else None)
        if match is None or not isinstance(match.get("id"), str):
            return None
        return {"job_id": match["id"]}


MARK_KINDS = ("trace", "add", "marker")


def _shows(mark: Effect, listed: dict[str, RemoteTrace], whole_run: bool) -> bool | None:
    """Whether the list shows what a mark wrote; None when the part of the list read cannot
    tell (an addition to a trace older than that part), or for a marker already deleted."""
    if mark.kind == "marker" and (mark.outcome or {}).get("deleted"):
        return None
    if mark.kind in ("trace", "marker"):
        return (mark.outcome or {}).get("trace_id") in listed
    if not (mark.outcome or {}).get("success") or (mark.outcome or {}).get("status") == "failed":
        return None  # a failed addition need never show
    trace = listed.get(mark.request["trace_id"])
    if trace is None:
        return False if whole_run else None
    return trace.added_to_dataset


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
