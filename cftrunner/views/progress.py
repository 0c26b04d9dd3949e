"""A run's progress in figures: per stage, rate and time left, the step it is in, its end's summary (pure)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cftrunner.states import ITEM_FAILED, TERMINAL, ItemStage, RunState
from cftrunner.wording import duration

WINDOW_SECONDS = 20.0  # the rate is taken over this much recent time

# Each item stage of the run: its name, the item stage reached by passing it, and by failing it.
STAGES: tuple[tuple[str, ItemStage, ItemStage], ...] = (
    ("generate", ItemStage.GENERATED, ItemStage.GEN_FAILED),
    ("judge", ItemStage.JUDGED, ItemStage.JUDGE_FAILED),
    ("trace", ItemStage.TRACED, ItemStage.TRACE_FAILED),
    ("add", ItemStage.ADDED, ItemStage.ADD_FAILED),
)

ACTIVITY: dict[RunState, str] = {
    RunState.CREATED: "items in progress",
    RunState.GENERATED: "items in progress",
    RunState.JUDGED: "items in progress",
    RunState.TRACED: "items in progress",
    RunState.ADDED: "waiting for corrections, then the snapshot",
    RunState.SNAPSHOT: "waiting for recommendations",
    RunState.RECS_READY: "launching the fine-tuning job",
    RunState.LAUNCHED: "the fine-tuning job is launched",
    RunState.FAILED: "it cannot reach LAUNCHED",
    RunState.CANCELLED: "stopped for good on request",
    RunState.SKIPPED: "the gate found the cycle not worth a fine-tuning job",
    RunState.TRAINED: "the job trained; comparing the new models",
    RunState.TRAIN_FAILED: "the job ended with no model",
    RunState.PROMOTED: "a new model is promoted",
    RunState.NOT_PROMOTED: "no new model was promoted",
}
ITEM_STATES = frozenset({RunState.CREATED, RunState.GENERATED, RunState.JUDGED, RunState.TRACED})
# What a run being driven does in each state past its items.
STEPS: dict[RunState, str] = {
    RunState.ADDED: "waiting for corrections, then the gate and the snapshot",
    RunState.SNAPSHOT: "waiting for recommendations",
    RunState.RECS_READY: "launching the fine-tuning job",
    RunState.LAUNCHED: "following the job",
    RunState.TRAINED: "waiting for the new models, then comparing them",
}


def step(state: RunState, counts: Mapping[str, int]) -> tuple[str, str]:
    """The step a run being driven is in, and its figures ("37/200", items through it of all):
    from its state, and, in the item phase, from where its items are."""
    if state not in ITEM_STATES:
        return STEPS.get(state, ACTIVITY[state]), ""
    total = sum(counts.values()) - counts.get(ItemStage.SKIPPED.value, 0)
    early = counts.get(ItemStage.PENDING.value, 0) + counts.get(ItemStage.GENERATED.value, 0)
    if early:
        return "generating and judging", f"{total - early:,}/{total:,}"
    late = counts.get(ItemStage.JUDGED.value, 0) + counts.get(ItemStage.TRACED.value, 0)
    return "adding to the dataset", f"{total - late:,}/{total:,}"


@dataclass(frozen=True)
class StageCounts:
    name: str
    total: int  # items that reach this stage: all but those that failed before it
    done: int  # items past this stage
    failed: int  # items that failed at this stage

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.processed)


def stage_counts(counts: Mapping[str, int]) -> list[StageCounts]:
    """Per stage, from the number of items at each item stage (an item at a later stage has
    passed the earlier ones)."""
    passed = [counts.get(ok.value, 0) for _, ok, _ in STAGES]
    failed = [counts.get(bad.value, 0) for _, _, bad in STAGES]
    # Items skipped when the token budget ran out reach no stage any more.
    total = sum(counts.values()) - counts.get(ItemStage.SKIPPED.value, 0)
    return [StageCounts(name, total - sum(failed[:k]), sum(passed[k:]) + sum(failed[k + 1:]),
                        failed[k])
            for k, (name, _, _) in enumerate(STAGES)]


class Speed:
    """Items per second from successive (time, count) samples: over the last `window` seconds
    while a stage moves, and over the span in which it was seen moving once it has stopped."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._before_first_change: tuple[float, int] | None = None
        self._last_change: tuple[float, int] | None = None

    def add(self, now: float, count: int) -> None:
        if self._samples and count != self._samples[-1][1]:
            self._last_change = (now, count)
        elif self._last_change is None:
            self._before_first_change = (now, count)
        self._samples.append((now, count))
        # Keep the newest sample at or before the window's start, so the span covers the window.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def recent(self) -> float | None:
        """The rate over the window; None until two samples span some time."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    def overall(self) -> float | None:
        """The rate from just before the first change seen to the last; None if none was seen."""
        if self._before_first_change is None or self._last_change is None:
            return None
        (t0, c0), (t1, c1) = self._before_first_change, self._last_change
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


def eta(remaining: int, rate: float | None) -> float | None:
    """Seconds until `remaining` items are processed at `rate`; None when it cannot be told."""
    if remaining <= 0:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return remaining / rate


@dataclass(frozen=True)
class StageRow:
    """One stage as the display shows it."""

    counts: StageCounts
    rate: float | None
    eta: float | None

    def cells(self) -> tuple[str, str, str, str, str]:
        """Name, done of total, failed, rate, time left."""
        c = self.counts
        rate = "-/s" if self.rate is None else (
            f"{self.rate:.1f}/s" if self.rate < 100 else f"{self.rate:,.0f}/s")
        left = "done" if c.remaining == 0 else "ETA -" if self.eta is None else (
            f"ETA {duration(self.eta)}")
        return c.name, f"{c.done:,}/{c.total:,}", f"{c.failed:,} failed", rate, left


class Tracker:
    """What the display shows, from successive samples of a run's state and item counts."""

    def __init__(self, run_id: str, clock: Callable[[], float] = time.monotonic,
                 window: float = WINDOW_SECONDS) -> None:
        self.run_id = run_id
        self.clock = clock
        self.speeds = {name: Speed(window) for name, _, _ in STAGES}
        self.rows: list[StageRow] = []
        self.state: RunState | None = None
        self.step = ("", "")
        self.ended = False
        self._since = self._now = clock()

    def add(self, state: RunState, counts: Mapping[str, int], ended: bool = False) -> None:
        """A sample; `ended`: the last, once the command no longer drives the run."""
        now = self._now = self.clock()
        step_now = step(state, counts)
        if step_now[0] != self.step[0]:  # the state may change within a step (its items)
            self._since = now
        self.state, self.step, self.ended = state, step_now, ended
        rows = []
        for stage in stage_counts(counts):
            speed = self.speeds[stage.name]
            speed.add(now, stage.processed)
            rate = speed.recent() if stage.remaining else speed.overall()
            rows.append(StageRow(stage, rate, eta(stage.remaining, speed.recent())))
        self.rows = rows

    def run_line(self) -> str:
        """While the run is driven, the step it is in and for how long; at its end, its state."""
        if self.state is None:
            return f"run {self.run_id}"
        if self.ended or self.state in TERMINAL:
            return f"run {self.run_id}  {self.state.value}: {ACTIVITY[self.state]}"
        name, figures = self.step
        return f"run {self.run_id}  {f'{name} {figures}'.rstrip()}  " \
               f"({duration(self._now - self._since)})"


class LogTally:
    """The log events written while a display shows, counted: those kept off the terminal and
    the last of them, and the requests retried. `add` is a `logs.Sink`; any thread may call it."""

    FIELDS = ("what", "key", "item", "stage", "state", "status_code", "error", "verdict")

    def __init__(self, log_file: str | None = None) -> None:
        self.log_file = log_file
        self.written = self.hidden = self.retries = 0
        self.last: str | None = None  # the last event kept off the terminal
        self.last_retry: str | None = None
        self._lock = threading.Lock()

    def add(self, event: Mapping[str, Any], shown: bool) -> None:
        with self._lock:
            self.written += 1
            if event.get("event") == "request_retry":
                self.retries += 1
                self.last_retry = _said(event, ("what", "status_code", "error"))
            if not shown:
                self.hidden += 1
                self.last = f"{event.get('event')} {_said(event, self.FIELDS)}".rstrip()

    def line(self) -> str | None:
        """What the display says of them; None while there is nothing to say."""
        with self._lock:
            parts = []
            if self.log_file is not None and self.written:
                parts.append(f"log: {self.written:,} lines in {self.log_file}")
            elif self.hidden:
                parts.append(f"log: {self.hidden:,} lines not shown (--log-file FILE keeps them)")
            if self.last is not None:
                parts[-1] += f", last: {self.last}"
            if self.retries:
                parts.append(f"retries {self.retries:,}, last: {self.last_retry}")
        return "; ".join(parts) or None


def _said(event: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    return " ".join(f"{name}={event[name]}" for name in fields if event.get(name) is not None)


def summary_lines(status: Mapping[str, Any], report: str) -> list[str]:
    """What a run came to, from what `status --json RUN` says of it (`status`), then the command
    for its report: items, failures, the mean score and those below the threshold, the job."""
    items = status["items"]
    failed = sum(int(items.get(stage.value, 0)) for stage in ITEM_FAILED)
    said = f"{items['total']:,}: {items.get(ItemStage.ADDED.value, 0):,} added, {failed:,} failed"
    if items.get(ItemStage.SKIPPED.value):
        said += f", {items[ItemStage.SKIPPED.value]:,} left out (the token budget ran out)"
    rows = [("items", said)]
    if status.get("failures"):
        kinds = sorted(status["failures"].items(), key=lambda kind: (-kind[1], kind[0]))
        rows.append(("failures", ", ".join(f"{kind} {n:,}" for kind, n in kinds)))
    gate = status.get("gate") or {}
    if gate.get("mean_score") is not None:
        threshold = (gate.get("config") or {}).get("score_threshold")
        below = f", {gate['below_threshold']:,} below {threshold:g}" if threshold is not None else ""
        rows.append(("mean score", f"{gate['mean_score']:.3f} over {gate['traces_added']:,} "
                                   f"added{below}"))
    else:
        rows.append(("mean score", "- (the gate has not looked at the scores)"))
    if status.get("job_id"):
        rows.append(("job", str(status["job_id"])))
    rows.append(("report", report))
    return [f"  {label:<11} {value}" for label, value in rows]
