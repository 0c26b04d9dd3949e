"""Named crash points: with CFTRUNNER_CRASH_AT=NAME[:N] set, the process SIGKILLs itself there."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "CFTRUNNER_CRASH_AT"

EFFECT_KINDS = ("trace", "add", "snapshot", "recs", "launch")
EFFECT_PHASES = ("before_intent", "after_intent", "after_send", "after_outcome")

POINTS: tuple[str, ...] = (
    "generate.after_answer",
    "generate.after_store",
    "judge.after_answer",
    "judge.after_store",
    *(f"{kind}.{phase}" for kind in EFFECT_KINDS for phase in EFFECT_PHASES),
    "recs.after_ready",
    *(f"transition.{state}" for state in ("GENERATED", "JUDGED", "TRACED", "ADDED")),
)
# Inside a batch of writes that share one commit (store/batches.py), when it holds two or more
# intents or outcomes: its intents committed and none sent; some of them sent; its outcomes
# committed and no thread of it gone on yet.
BATCH_POINTS: tuple[str, ...] = ("batch.after_intents", "batch.after_some_sent",
                                 "batch.after_outcomes")
# Reached by tick as it creates a cycle's run: its prompts chosen, then the run stored.
TICK_POINTS: tuple[str, ...] = ("tick.after_choosing", "tick.after_create")
# Reached by prune for each run it deletes: its rows deleted, not committed; then committed.
PRUNE_POINTS: tuple[str, ...] = ("prune.before_commit", "prune.after_run")
# Reached by a run with a calibration set, after its items: an answer to a calibration triple
# received, then its score stored.
CALIBRATION_POINTS: tuple[str, ...] = ("calibration.after_answer", "calibration.after_store")
# Reached after a command's own work, between a run's end and its notification: before the
# notifications are recorded, then before each is sent.
NOTIFY_POINTS: tuple[str, ...] = ("notify.before_record", "notify.before_send")
# Past the launch, reached only by a run that follows its job (and promotes its model).
LOOP_POINTS: tuple[str, ...] = ("follow.after_end", "serving.after_ask",
                                 "promote.after_evaluation", "promote.after_recheck")

_hits: Counter[str] = Counter()


def reach(name: str) -> None:
    """Die here, as abruptly as a power cut, when the environment names this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def storing_intent(kind: str | None) -> Iterator[None]:
    """Around a transaction that stores, with another step's outcome, the intent of an effect of
    `kind` (none when None): that intent's crash points, as where the intent is stored alone."""
    if kind is not None:
        reach(f"{kind}.before_intent")
    yield
    if kind is not None:
        reach(f"{kind}.after_intent")
