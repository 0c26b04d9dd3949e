"""Each remote effect at most once: intent, request, outcome; and after an unknown outcome,
reconcile with remote state before sending anything again.

An effect is described by a value, `Effect`: its key, the request, how to send it, how to tell
from remote state whether a lost request happened, and what its outcome (or a rejection) stores,
in the same transaction as the outcome. `Performer.perform` runs the protocol and returns what
that stored:

1. before anything is sent, the intent (key and request) is committed;
2. the request is sent once; its outcome is committed with what it makes true;
3. an intent found without an outcome may have been sent: the remote state is read
   (`reconcile`) until it tells, and only an effect that surely did not happen is sent again.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog

from cftrunner import crashpoints
from cftrunner.clock import utcnow
from cftrunner.config.settings import Settings
from cftrunner.exceptions import (
    ApiError,
    AuthError,
    Interrupted,
    LeaseLost,
    NeedsDecision,
    OutcomePending,
    RejectedError,
)
from cftrunner.ownership import Ownership
from cftrunner.records import Effect as Stored
from cftrunner.records import EffectStatus, Item, Run
from cftrunner.shutdown import Cancelled
from cftrunner.store import Store
from cftrunner.store.writes import Tx
from cftrunner.wording import duration, settle_command

log = structlog.get_logger("cftrunner")

T = TypeVar("T")
R = TypeVar("R")
Outcome = dict[str, Any]


@dataclass(frozen=True)
class Unknown:
    """Whether the lost request happened cannot be told yet, and why; `unmarked`: the list
    shows too little that the run wrote after it, and a marker trace would help."""

    reason: str
    unmarked: bool = False


Verdict = Outcome | None | Unknown  # the outcome it had; None: it surely did not happen


@dataclass(frozen=True)
class Effect(Generic[R]):
    """One remote effect of a run, or of one of its items."""

    run: Run
    key: str  # unique in the run: "trace:3", "snapshot"
    kind: str  # names its crash points: "trace", "add", "snapshot", "recs", "launch"
    request: dict[str, Any]  # stored with the intent; what `send` sends
    send: Callable[[dict[str, Any]], Outcome]  # one request, never more (see `_unsent_if_stopped`)
    reconcile: Callable[[Stored], Verdict]  # what became of a request whose answer was lost
    record: Callable[[Tx, Outcome], R]  # stores what the outcome makes true, with the outcome
    rejected: Callable[[Tx, ApiError], R]  # stores what a rejection makes true
    item: Item | None = None  # the item whose claim fences it; None: the run's lease does
    then: str | None = None  # the effect whose intent `record` stores too, for its crash points
    # Writes something that shows the remote list caught up, when a look says it would help.
    mark: Callable[[datetime], None] | None = None


class Host(Protocol):
    """What performing an effect needs of the process that drives the run."""

    store: Store
    settings: Settings
    ownership: Ownership
    patient: bool  # wait for an outcome that is not known yet, rather than raise OutcomePending

    def checkpoint(self) -> None: ...

    def pause(self, seconds: float) -> None: ...

    def retrying(self, what: str, call: Callable[[], T]) -> T: ...


def describe(effect: Stored, item: Item | None = None) -> str:
    """An effect as a person reads it: "the trace of item 3", "the snapshot"."""
    noun = {"trace": "the trace", "add": "the addition to the dataset", "snapshot": "the snapshot",
            "recs": "the recommendations request", "launch": "the fine-tuning job"}.get(
                effect.kind, effect.key)
    position = item.position if item is not None else effect.key.partition(":")[2]
    return f"{noun} of item {position}" if position != "" else noun


class Performer:
    """Performs effects for one process, remembering since when it looks for each outcome."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._looking: dict[tuple[str, str], float] = {}

    def perform(self, effect: Effect[R], *, new: bool = False,
                intent: Stored | None = None) -> R | None:
        """What `effect.record` (or `rejected`) stored; None when an earlier attempt stored it.

        `new`: no attempt can have been stored yet (the item entered the stage this effect is
        made from in this process, just now). `intent`: this effect's intent, when the
        transaction that moved the item to that stage stored it too; it is sent at once."""
        first = new or intent is not None
        prepared = intent

        def once() -> R | None:
            nonlocal first, prepared
            unseen, first = first, False
            stored, prepared = prepared, None
            return self._once(effect, unseen, stored)

        return self.host.retrying(f"{effect.key} of run {effect.run.id}", once)

    def _once(self, effect: Effect[R], unseen: bool, prepared: Stored | None) -> R | None:
        host, item, kind = self.host, effect.item, effect.kind
        tx_for = host.ownership.tx_for
        with self._unsent_if_stopped(item, prepared):
            host.checkpoint()
        if prepared is None:
            stored = None if unseen else host.store.effect(effect.run.id, effect.key)
            if stored is not None and stored.status in (EffectStatus.DONE, EffectStatus.FAILED):
                return None
            if stored is not None and stored.status in (EffectStatus.PREPARED,
                                                        EffectStatus.UNKNOWN):
                found = self._what_became_of(effect, stored)
                if found is not None:
                    with (crashpoints.storing_intent(effect.then),
                          tx_for(item, effect.then is not None) as tx):
                        # Marked found, not done here: when it was written is not known.
                        return tx.finish_effect_with(
                            stored, EffectStatus.DONE, functools.partial(effect.record, tx, found),
                            {**found, "found": True},
                            verdict="settled" if stored.settled else "reconciled")
            crashpoints.reach(f"{kind}.before_intent")
            with tx_for(item) as tx:
                prepared = tx.prepare_effect(effect.run.id, effect.key, kind,
                                             item.id if item else None, effect.request, stored)
            crashpoints.reach(f"{kind}.after_intent")
        host.ownership.ensure()
        try:
            with self._unsent_if_stopped(item, prepared):
                outcome = effect.send(effect.request)  # the client's before_send is checkpoint()
        except ApiError as exc:
            if isinstance(exc, RejectedError) and not isinstance(exc, AuthError):
                with tx_for(item) as tx:
                    rejected = tx.finish_effect_with(prepared, EffectStatus.FAILED,
                                                     functools.partial(effect.rejected, tx, exc),
                                                     error=exc.message)
                log.warning("effect_rejected", key=effect.key, error=exc.kind,
                            status_code=exc.status_code)
                return rejected
            with tx_for(item) as tx:
                if exc.maybe_happened:
                    # The server may still be working on it: the settle before reconciling
                    # counts from now, when the request was last possibly in flight.
                    tx.note_unknown_outcome(prepared, exc.message)
                else:
                    tx.finish_effect(prepared, EffectStatus.UNSENT, error=exc.message)
            raise
        crashpoints.reach(f"{kind}.after_send")
        host.store.sent(effect.run.id, effect.key)  # a crash point once some of a batch are sent
        # An outcome alone can be lost with the power: the effect is then reconciled.
        with crashpoints.storing_intent(effect.then), tx_for(item, effect.then is not None) as tx:
            recorded = tx.finish_effect_with(prepared, EffectStatus.DONE,
                                             functools.partial(effect.record, tx, outcome), outcome)
        crashpoints.reach(f"{kind}.after_outcome")
        return recorded

    def _what_became_of(self, effect: Effect[Any], stored: Stored) -> Outcome | None:
        """The outcome of a request whose answer was lost, or None when it surely did not happen.

        While the remote view has not caught up past it, look again every poll interval, for
        at most `reconcile_wait` in this invocation (OutcomePending; at once unless the host is
        `patient`, so that other items go on meanwhile), and not past `reconcile_give_up` after
        it may last have been sent (NeedsDecision): then a person decides. Nothing is sent
        meanwhile."""
        if stored.settled is not None:
            return stored.settled
        host, item, run = self.host, effect.item, effect.run
        settings = host.settings
        if (stored.status is EffectStatus.PREPARED and stored.error is None
                and stored.updated_at < host.ownership.held_since(run.id, item)):
            # An intent a process that held the item (or run) before this one stored, and no
            # attempt of it known to have ended: that process may have sent it at any moment
            # until this one took over, which is before now.
            with host.ownership.tx_for(item) as tx:
                stored = tx.note_unknown_outcome(stored, "the process that prepared it stopped")
        waited = (utcnow() - stored.updated_at).total_seconds()
        if waited < settings.reconcile_settle:
            host.pause(settings.reconcile_settle - waited)
        looking_since = self._looking.setdefault((run.id, stored.key), time.monotonic())
        while True:
            # Each look has its own retries: looking again many times must not use up the
            # effect's own.
            verdict = host.retrying(f"reconciling {stored.key} of run {run.id}",
                                    functools.partial(effect.reconcile, stored))
            if not isinstance(verdict, Unknown):
                self._looking.pop((run.id, stored.key), None)
                log.info("reconciled", key=stored.key, attempt=stored.attempts,
                         verdict="happened" if verdict is not None else "did_not_happen")
                return verdict
            log.info("reconcile_unknown", key=stored.key, reason=verdict.reason)
            what = describe(stored, item)
            age = (utcnow() - stored.updated_at).total_seconds()
            if stored.status is EffectStatus.UNKNOWN or age >= settings.reconcile_give_up:
                if stored.status is EffectStatus.PREPARED:
                    with host.ownership.tx_for(item) as tx:
                        tx.give_up_effect(stored, verdict.reason)
                raise NeedsDecision(
                    f"run {run.id}: whether {what} happened is unknown after "
                    f"{duration(age)} ({verdict.reason}); nothing was sent again; "
                    + settle_command(run.id, stored.key))
            if not host.patient or (
                    time.monotonic() - looking_since >= settings.reconcile_wait):
                self._looking.pop((run.id, stored.key), None)
                raise OutcomePending(
                    f"run {run.id}: whether {what} happened is not known yet ({verdict.reason}); "
                    f"nothing was sent again; `cftrunner resume {run.id}` looks again")
            if verdict.unmarked and effect.mark is not None:
                effect.mark(stored.updated_at)
            host.pause(settings.poll_interval)

    @contextmanager
    def _unsent_if_stopped(self, item: Item | None, prepared: Stored | None) -> Iterator[None]:
        """Around a checkpoint before `prepared` is sent: a stop or cancel raised there means the
        request never went out, so its intent is stored as unsent, for a resume to send it
        without reconciling first. This holds because an effect's `send` makes one request: a
        stop in it is raised by the client's `before_send`, before anything went out."""
        try:
            yield
        except (Interrupted, Cancelled):
            if prepared is not None:
                with contextlib.suppress(LeaseLost), self.host.ownership.tx_for(item) as tx:
                    tx.finish_effect(prepared, EffectStatus.UNSENT, error="stopped before sending")
            raise
