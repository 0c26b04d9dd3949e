"""Drives a run through its states: retries, the intent-then-outcome protocol, and stage dispatch."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import structlog

from cftrunner import claims, crashpoints, loop, markers, run_steps, steps
from cftrunner.client import PremClient, Timeouts
from cftrunner.clock import utcnow
from cftrunner.exceptions import (
    ApiError,
    AuthError,
    BadResponseError,
    InputError,
    Interrupted,
    KeyRejected,
    LeaseLost,
    ModelNotFound,
    ModelsLoading,
    NeedsDecision,
    OutcomePending,
    RejectedError,
    RunBusy,
    RunStopped,
    StillTraining,
    TransientError,
)
from cftrunner.lease import Heartbeat, Lease, current_owner, provably_dead
from cftrunner.limiter import RateLimiter
from cftrunner.polling import Backoff
from cftrunner.prompts import Prompt
from cftrunner.reconcile import Reconciler, Unknown, Verdict
from cftrunner.records import Effect, EffectStatus, Item, Run, RunSpec
from cftrunner.render import settle_command
from cftrunner.retry import next_delay, rate_limited
from cftrunner.run_ids import new_run_id
from cftrunner.settings import Settings
from cftrunner.shutdown import Stop
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.transaction import Tx

log = structlog.get_logger("cftrunner")
T = TypeVar("T")
_DONE = object()

Outcome = dict[str, Any]
OnDone = Callable[[Tx, Outcome], None]
OnRejected = Callable[[Tx, ApiError], None]

def describe_effect(effect: Effect, item: Item | None = None) -> str:
    """An effect as a person reads it: "the trace of item 3", "the snapshot"."""
    noun = {"trace": "the trace", "add": "the addition to the dataset", "snapshot": "the snapshot",
            "recs": "the recommendations request", "launch": "the fine-tuning job"}.get(
                effect.kind, effect.key)
    position = item.position if item is not None else effect.key.partition(":")[2]
    return f"{noun} of item {position}" if position != "" else noun


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class _Cancelled(Exception):
    """The run was asked to stop for good; raised at a checkpoint."""


class Runner:
    def __init__(self, store: Store, settings: Settings, client: PremClient | None = None, *,
                 sleep: Callable[[float], object] | None = None,
                 rand: Callable[[], float] = random.random, stop: Stop | None = None) -> None:
        self.store = store
        self.settings = settings
        self.client = client or PremClient(
            settings.base_url, settings.api_key,
            Timeouts(settings.connect_timeout, settings.read_timeout),
            limiter=RateLimiter(settings.max_rps), in_flight=settings.concurrency,
            before_send=self.checkpoint)
        self.reconcile = Reconciler(store, self.client, settings, retrying=self.retrying)
        self.stop = stop or Stop()
        self.sleep = sleep or self.stop.wait
        self.rand = rand
        self.lease: Lease | None = None  # the run's: run-level steps and state changes
        self.worker: Lease | None = None  # this process's claim on some of the run's items
        self._worker_beat: Heartbeat | None = None
        self._cancel_checked = 0.0
        # A cancel is read from the database at most this often (seconds), not before every request.
        self.cancel_check = 1.0
        self.tokens = TokenMeter(store)
        # Since when this process holds each run (by id) and each item it claimed (by run id and
        # item id).
        self._held_since: dict[tuple[str, int | None], datetime] = {}
        # Since when this process looks for the outcome of each effect it cannot tell yet.
        self._looking: dict[tuple[str, str], float] = {}
        # Items set aside in this pass because their effects' outcomes are not known yet, and
        # whether to wait for those outcomes (see steps.work_items) or set the item aside at once.
        self.pending: list[tuple[Item, OutcomePending]] = []
        self.patient = True
        # Set once the API refuses the judge's response_format: ask this process's later
        # judgments without it.
        self.structured_refused = False

    def create(self, spec: RunSpec, prompts: Iterable[str | Prompt], cycle: str | None = None,
               dataset_id: str | None = None) -> Run:
        """Store a new run with its items, holding its lease from the first moment; with the
        project's dataset when the checks before it found it."""
        run_id = spec.run_id or new_run_id()
        lease = Lease(run_id, current_owner(), self.settings.lease_seconds)
        run = replace(self.new_run(run_id, spec, cycle, self.settings.base_url),
                      dataset_id=dataset_id)
        self.store.create_run(run, prompts, lease)
        self.lease = lease
        self.held(run_id, [None])
        return self.store.run(run_id)

    @staticmethod
    def new_run(run_id: str, spec: RunSpec, cycle: str | None = None,
                base_url: str | None = None) -> Run:
        now = utcnow()
        return Run(
            id=run_id, project_id=spec.project_id, model_alias=spec.model_alias,
            judge_model=spec.judge_model, split_percentage=spec.split_percentage,
            prompts_source=spec.prompts_source,
            # Unique to the run, so the job can be found again when its creation answer is lost.
            job_name=f"cftrunner-{run_id}-{secrets.token_hex(4)}",
            state=RunState.CREATED, created_at=now, updated_at=now, state_changed_at=now,
            cycle=cycle, judge_config=spec.judge.to_json(), gate_config=spec.gate.to_json(),
            loop_config=spec.loop.to_json(), base_url=base_url)

    def check_bound(self, run: Run) -> None:
        """Refuse to work on a run against another server than the one it was started on: its
        traces, dataset and job are there. (A run stored before runs kept it is not bound.)"""
        if run.base_url is not None and run.base_url != self.settings.base_url:
            raise InputError(f"run {run.id} was started on {run.base_url}, not on "
                             f"{self.settings.base_url} (base_url, --base-url or "
                             "CFTRUNNER_BASE_URL): nothing was sent")

    def take(self, run_id: str) -> Run:
        """Hold the run's lease: free, expired, or left by an owner provably dead on this host."""
        if self.lease is not None and self.lease.run_id == run_id:
            return self.store.run(run_id)
        me = current_owner()
        lease = Lease(run_id, me, self.settings.lease_seconds)
        run = self.store.acquire_lease(lease, lambda held: provably_dead(held.owner, me))
        self.lease = lease
        self.held(run_id, [None])
        return run

    def held(self, run_id: str, item_ids: Iterable[int | None]) -> None:
        """Note that this process holds these items of the run (None: the run's lease) from now
        on."""
        now = utcnow()
        for item_id in item_ids:
            self._held_since.setdefault((run_id, item_id), now)

    def held_since(self, run_id: str, item: Item | None) -> datetime:
        return self._held_since.get((run_id, item.id if item is not None else None), utcnow())

    def release(self) -> None:
        if self.lease is not None and not self.lease.lost.is_set():
            self.store.release_lease(self.lease)
        self.lease = None

    def tx(self) -> AbstractContextManager[Tx]:
        """A write transaction fenced by this process's lease."""
        return self.store.tx(fence=self.lease)

    @contextmanager
    def item_tx(self, item: Item, durable: bool = True) -> Iterator[Tx]:
        """A write transaction on an item, fenced by this worker's claim on it. (Not by the
        run's lease too: whoever took that over takes the items only once the claims lapse.)
        See `Store.tx` for `durable`."""
        assert self.worker is not None, "items are worked on after join()"
        with self.store.tx(durable=durable) as tx:
            claims.fence(tx, item.id, self.worker)
            yield tx

    def _tx_for(self, item: Item | None, durable: bool = True) -> AbstractContextManager[Tx]:
        return self.item_tx(item, durable) if item is not None else self.tx()

    def join(self, run_id: str) -> None:
        """Become one of the run's workers: registered, renewed by a heartbeat, able to claim."""
        if self.worker is not None:
            return
        worker = Lease(run_id, current_owner(), self.settings.lease_seconds)
        claims.register(self.store, worker)
        self.worker = worker
        self._worker_beat = Heartbeat(functools.partial(claims.renew, self.store), worker)
        self._worker_beat.start()

    def leave(self) -> None:
        """Stop being a worker; items claimed but unfinished go back to the others at once."""
        if self._worker_beat is not None:
            self._worker_beat.stop()
            self._worker_beat = None
        if self.worker is not None and not self.worker.lost.is_set():
            with contextlib.suppress(LeaseLost):
                claims.retire(self.store, self.worker)
        self.worker = None

    def checkpoint(self) -> None:
        """Between two pieces of work: stop here if asked to, or if the run is no longer ours."""
        held = self.lease or self.worker
        if self.stop.requested:
            name = signal.Signals(self.stop.signum or signal.SIGTERM).name
            raise Interrupted(self.stop.signum or signal.SIGTERM,
                              f"stopped by {name}; the run is intact, resume it",
                              run_id=held.run_id if held is not None else None)
        if held is not None:
            now = time.monotonic()
            if now - self._cancel_checked >= self.cancel_check:
                self._cancel_checked = now
                if self.store.cancel_requested(held.run_id):
                    raise _Cancelled()
            # Last, as the client calls this just before a send: no database read stands between
            # the check and the request. After a pause (SIGSTOP, a frozen VM) the lost flag may
            # not be set yet: check the lease against the clock, and against the database once
            # the clock says it lapsed.
            self._ensure_lease()

    def pause(self, seconds: float) -> None:
        self.sleep(seconds)
        self.checkpoint()

    def _ensure_lease(self) -> None:
        """Just before a request: the lease and the claims must be valid now, not only lately."""
        lease, worker = self.lease, self.worker
        if lease is not None and (lease.lost.is_set() or (
                not lease.locally_valid() and not self.store.renew_lease(lease))):
            raise LeaseLost(f"run {lease.run_id} was taken over by another process")
        if worker is not None and (worker.lost.is_set() or (
                not worker.locally_valid() and not claims.renew(self.store, worker))):
            raise claims.taken_over(worker)

    def drive(self, run_id: str) -> Run:
        """Take the run from wherever it stands to a terminal state; raise RunStopped if it cannot
        go on now, with everything obtained so far stored."""
        self.check_bound(self.store.run(run_id))
        run = self.take(run_id)
        assert self.lease is not None
        heartbeat = Heartbeat(self.store.renew_lease, self.lease)
        heartbeat.start()
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.join(run_id)
            while not run.finished:
                self.checkpoint()
                HANDLERS[run.state](self, run)
                run = self.store.run(run_id)
            # The terminal state may have been written by a process that took the run over.
            self._ensure_lease()
        except _Cancelled:
            run = self.store.run(run_id)
            with self.tx() as tx:
                tx.transition_run(run_id, run.state, RunState.CANCELLED,
                                  failure_reason="cancelled on request")
            log.warning("run_cancelled", state=run.state.value)
            run = self.store.run(run_id)
        except (StillTraining, ModelsLoading) as exc:
            # Not an error: the job trains for hours, models load for minutes; the next resume
            # or tick looks again.
            log.info("still_training" if isinstance(exc, StillTraining) else "models_loading",
                     reason=exc.message)
            run = self.store.run(run_id)
        except LeaseLost as exc:
            log.error("lease_lost", reason=exc.message)
            raise
        except RunStopped as exc:
            self._record_error(run_id, exc.message)
            log.warning("run_stopped", state=self.store.run(run_id).state.value, reason=exc.message)
            raise
        except ModelNotFound as exc:
            self._record_error(run_id, exc.message)
            log.error("run_stopped", reason=exc.message, error="model_not_found")
            raise
        except (AuthError, RejectedError, BadResponseError) as exc:
            message = f"{exc.message}; fix the cause, then `cftrunner resume {run_id}`"
            self._record_error(run_id, message)
            log.error("run_stopped", reason=message, error=exc.kind)
            raise (KeyRejected if isinstance(exc, AuthError) else RunStopped)(message) from None
        finally:
            heartbeat.stop()
            self.leave()
            self.release()
            structlog.contextvars.unbind_contextvars("run_id")
        return run

    def work(self, run_id: str) -> Run:
        """Work on the run's items beside any other workers, on this host or others; once none
        is left, take the run through its run-level steps unless another process holds it."""
        run = self.store.run(run_id)
        if run.finished:
            return run
        self.check_bound(run)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.join(run_id)
            if HANDLERS[run.state] is steps.item_stage:  # items may be left to work on
                if run.dataset_id is None:
                    self._find_dataset_if_free(run)
                steps.work_items(self, self.store.run(run_id))
            try:
                return self.drive(run_id)
            except RunBusy as exc:
                log.info("worker_finished", reason=exc.message)
                return self.store.run(run_id)
        except _Cancelled:
            log.warning("worker_cancelled")
            return self.store.run(run_id)
        finally:
            self.leave()
            structlog.contextvars.unbind_contextvars("run_id")

    def _find_dataset_if_free(self, run: Run) -> None:
        """Check the project has a dataset before spending on items, unless another process
        holds the run (it does that check itself)."""
        try:
            self.take(run.id)
        except RunBusy:
            return
        try:
            steps.find_dataset(self, run)
        finally:
            self.release()

    def _record_error(self, run_id: str, message: str) -> None:
        if self.lease is None or not self.lease.lost.is_set():
            with contextlib.suppress(LeaseLost), self.tx() as tx:
                tx.record_error(run_id, message)

    def for_each(self, items: Iterable[T], work: Callable[[T], None],
                 workers: int | None = None) -> None:
        """Do `work` on every item, `workers` (by default `Settings.item_workers`) items at a
        time; `items` may be a generator, drawn from by one thread at a time. The first failure
        stops new work; the items already under way finish their current request; then it is
        raised."""
        workers = workers or self.settings.item_workers
        if isinstance(items, Sized):
            workers = min(workers, len(items))
        if workers <= 1:
            for item in items:
                work(item)
            return
        queue = iter(items)
        taking = threading.Lock()
        failures: list[BaseException] = []

        def worker() -> None:
            while not failures:
                try:
                    with taking:
                        item = next(queue, _DONE)
                    if item is _DONE:
                        return
                    work(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                    failures.append(exc)

        # Each thread runs in its own copy of the context, so log lines keep the run id.
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker,),
                                    name=f"cftrunner-item-{n}", daemon=True)
                   for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def polls(self, cap: float) -> Iterator[float]:
        """The waits between looks at something the platform is doing: soon, then backing off
        to `cap` (see Settings.poll_first)."""
        return Backoff(self.settings.poll_first, self.settings.poll_factor, cap).delays()

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """Call until it succeeds, sleeping per the retry policy between transient failures;
        429s are counted apart from other failures (see RetryPolicy.max_rate_limited)."""
        failures = {True: 0, False: 0}  # by whether the failure was a 429
        while True:
            self._ensure_lease()
            try:
                return call()
            except (TransientError, BadResponseError) as exc:
                limited = rate_limited(exc)
                failures[limited] += 1
                attempt = failures[limited]
                delay = next_delay(self.settings.retry, exc, attempt, self.rand)
                if delay is None:
                    raise RunStopped(f"{what}: {exc.message} (gave up after {attempt} "
                                     f"{'refusals' if limited else 'attempts'}; the run is "
                                     "intact, resume it later)") from None
                log.warning("request_retry", what=what, attempt=sum(failures.values()),
                            error=exc.kind, status_code=exc.status_code, delay=round(delay, 3),
                            maybe_happened=exc.maybe_happened)
                self.pause(delay)

    def effect(self, run: Run, key: str, kind: str, item: Item | None, request: dict[str, Any],
               send: Callable[[dict[str, Any]], Outcome],
               reconcile: Callable[[Effect], Verdict],
               on_done: OnDone, on_rejected: OnRejected, new: bool = False,
               intent: Effect | None = None, then: str | None = None) -> None:
        """Perform one remote effect at most once: intent, request, outcome; and after an
        unknown outcome, reconcile with remote state before sending again.

        `new` says no attempt can have been stored yet: the item entered the stage this effect
        is made from in this process, just now, and such an effect is prepared only from it.
        `intent` is this effect's intent when the transaction that moved the item to that stage
        stored it too: it is sent at once. `then` names the effect whose intent `on_done` stores
        with this one's outcome, for its crash points."""
        first = [new or intent is not None]
        stored = [intent]

        def once() -> None:
            unseen, first[0] = first[0], False
            prepared, stored[0] = stored[0], None
            self._effect_once(run, key, kind, item, request, send, reconcile, on_done,
                              on_rejected, unseen, prepared, then)

        self.retrying(f"{key} of run {run.id}", once)

    def _effect_once(self, run: Run, key: str, kind: str, item: Item | None,
                     request: dict[str, Any], send: Callable[[dict[str, Any]], Outcome],
                     reconcile: Callable[[Effect], Verdict],
                     on_done: OnDone, on_rejected: OnRejected, unseen: bool,
                     prepared: Effect | None, then: str | None) -> None:
        with self._unsent_if_stopped(item, prepared):
            self.checkpoint()
        if prepared is None:
            effect = None if unseen else self.store.effect(run.id, key)
            if effect is not None and effect.status in (EffectStatus.DONE, EffectStatus.FAILED):
                return
            if effect is not None and effect.status in (EffectStatus.PREPARED,
                                                        EffectStatus.UNKNOWN):
                found = self._what_became_of(run, effect, item, reconcile)
                if found is not None:
                    with (crashpoints.storing_intent(then),
                          self._tx_for(item, then is not None) as tx):
                        # Marked found, not done here: when it was written is not known.
                        tx.finish_effect(effect, EffectStatus.DONE, {**found, "found": True},
                                         verdict="settled" if effect.settled else "reconciled")
                        on_done(tx, found)
                    return
            crashpoints.reach(f"{kind}.before_intent")
            with self._tx_for(item) as tx:
                prepared = tx.prepare_effect(run.id, key, kind, item.id if item else None,
                                             request, effect)
            crashpoints.reach(f"{kind}.after_intent")
        self._ensure_lease()
        try:
            with self._unsent_if_stopped(item, prepared):
                outcome = send(request)  # the client's before_send is checkpoint()
        except ApiError as exc:
            if isinstance(exc, RejectedError) and not isinstance(exc, AuthError):
                with self._tx_for(item) as tx:
                    tx.finish_effect(prepared, EffectStatus.FAILED, error=exc.message)
                    on_rejected(tx, exc)
                log.warning("effect_rejected", key=key, error=exc.kind, status_code=exc.status_code)
                return
            with self._tx_for(item) as tx:
                if exc.maybe_happened:
                    # The server may still be working on it: the settle before reconciling
                    # counts from now, when the request was last possibly in flight.
                    tx.note_unknown_outcome(prepared, exc.message)
                else:
                    tx.finish_effect(prepared, EffectStatus.UNSENT, error=exc.message)
            raise
        crashpoints.reach(f"{kind}.after_send")
        # An outcome alone can be lost with the power: the effect is then reconciled.
        with crashpoints.storing_intent(then), self._tx_for(item, then is not None) as tx:
            tx.finish_effect(prepared, EffectStatus.DONE, outcome)
            on_done(tx, outcome)
        crashpoints.reach(f"{kind}.after_outcome")

    def _what_became_of(self, run: Run, effect: Effect, item: Item | None,
                        reconcile: Callable[[Effect], Verdict]) -> Outcome | None:
        """The outcome of a request whose answer was lost, or None when it surely did not happen.

        While the remote view has not caught up past it, look again every poll interval, for
        at most `reconcile_wait` in this invocation (OutcomePending; at once unless `patient`,
        so that other items go on meanwhile), and not past `reconcile_give_up` after it may
        last have been sent (NeedsDecision): then a person decides. Nothing is sent meanwhile."""
        if effect.settled is not None:
            return effect.settled
        if (effect.status is EffectStatus.PREPARED and effect.error is None
                and effect.updated_at < self.held_since(run.id, item)):
            # An intent a process that held the item (or run) before this one stored, and no
            # attempt of it known to have ended: that process may have sent it at any moment
            # until this one took over, which is before now.
            with self._tx_for(item) as tx:
                effect = tx.note_unknown_outcome(effect, "the process that prepared it stopped")
        waited = (utcnow() - effect.updated_at).total_seconds()
        if waited < self.settings.reconcile_settle:
            self.pause(self.settings.reconcile_settle - waited)
        looking_since = self._looking.setdefault((run.id, effect.key), time.monotonic())
        while True:
            # Each look has its own retries: looking again many times must not use up the
            # effect's own.
            verdict = self.retrying(f"reconciling {effect.key} of run {run.id}",
                                    functools.partial(reconcile, effect))
            if not isinstance(verdict, Unknown):
                self._looking.pop((run.id, effect.key), None)
                log.info("reconciled", key=effect.key, attempt=effect.attempts,
                         verdict="happened" if verdict is not None else "did_not_happen")
                return verdict
            log.info("reconcile_unknown", key=effect.key, reason=verdict.reason)
            what = describe_effect(effect, item)
            age = (utcnow() - effect.updated_at).total_seconds()
            if effect.status is EffectStatus.UNKNOWN or age >= self.settings.reconcile_give_up:
                if effect.status is EffectStatus.PREPARED:
                    with self._tx_for(item) as tx:
                        tx.give_up_effect(effect, verdict.reason)
                raise NeedsDecision(
                    f"run {run.id}: whether {what} happened is unknown after "
                    f"{format_seconds(age)} ({verdict.reason}); nothing was sent again; "
                    + settle_command(run.id, effect.key))
            if not self.patient or (
                    time.monotonic() - looking_since >= self.settings.reconcile_wait):
                self._looking.pop((run.id, effect.key), None)
                raise OutcomePending(
                    f"run {run.id}: whether {what} happened is not known yet ({verdict.reason}); "
                    f"nothing was sent again; `cftrunner resume {run.id}` looks again")
            if verdict.unmarked and self.settings.marker_traces:
                markers.mark_after(self, run, effect.updated_at)
            self.pause(self.settings.poll_interval)

    @contextmanager
    def _unsent_if_stopped(self, item: Item | None, prepared: Effect | None) -> Iterator[None]:
        """Around a checkpoint before `prepared` is sent: a stop or cancel raised there means the
        request never went out, so its intent is stored as unsent, for a resume to send it
        without reconciling first. This holds because an effect's `send` makes one request: a
        stop in it is raised by the client's `before_send`, before anything went out."""
        try:
            yield
        except (Interrupted, _Cancelled):
            if prepared is not None:
                with contextlib.suppress(LeaseLost), self._tx_for(item) as tx:
                    tx.finish_effect(prepared, EffectStatus.UNSENT, error="stopped before sending")
            raise


class TokenMeter:
    """The tokens a run has used, counted as completions come in; read again from the store
    every few seconds, so that the tokens of other workers count too."""

    REFRESH_SECONDS = 2.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}
        self._read_at: dict[str, float] = {}

    def used(self, run_id: str) -> int:
        with self._lock:
            if time.monotonic() - self._read_at.get(run_id, -self.REFRESH_SECONDS) \
                    >= self.REFRESH_SECONDS:
                self._used[run_id] = self.store.tokens_used(run_id)
                self._read_at[run_id] = time.monotonic()
            return self._used[run_id]

    def add(self, run_id: str, tokens: int | None) -> None:
        """Count tokens stored just now, until the next read includes them."""
        with self._lock:
            if tokens and run_id in self._used:
                self._used[run_id] += tokens

    def exhausted(self, run: Run) -> int | None:
        """The run's token budget when it is used up; None while tokens are left, or without one."""
        budget = run.gate.token_budget
        return budget if budget is not None and self.used(run.id) >= budget else None


HANDLERS: dict[RunState, Callable[[Runner, Run], None]] = {
    RunState.CREATED: steps.item_stage,
    RunState.GENERATED: steps.item_stage,
    RunState.JUDGED: steps.item_stage,
    RunState.TRACED: steps.item_stage,
    RunState.ADDED: run_steps.snapshot,
    RunState.SNAPSHOT: run_steps.recommendations,
    RunState.RECS_READY: run_steps.launch,
    RunState.LAUNCHED: loop.follow,
    RunState.TRAINED: loop.promote,
}
