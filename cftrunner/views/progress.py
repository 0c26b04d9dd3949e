"""A run's progress in figures: per stage, items done and failed, rate and time left (pure)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cftrunner.states import ENDS_UNLESS_LOOPING, TERMINAL, ItemStage, RunState
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
        self._since = self._now = clock()

    def add(self, state: RunState, counts: Mapping[str, int]) -> None:
        now = self._now = self.clock()
        if state is not self.state:
            self.state, self._since = state, now
        rows = []
        for stage in stage_counts(counts):
            speed = self.speeds[stage.name]
            speed.add(now, stage.processed)
            rate = speed.recent() if stage.remaining else speed.overall()
            rows.append(StageRow(stage, rate, eta(stage.remaining, speed.recent())))
        self.rows = rows

    def run_line(self) -> str:
        if self.state is None:
            return f"run {self.run_id}"
        line = f"run {self.run_id}  {self.state.value}: {ACTIVITY[self.state]}"
        if self.state in TERMINAL or self.state in ENDS_UNLESS_LOOPING:
            return line
        return f"{line}  ({duration(self._now - self._since)})"
