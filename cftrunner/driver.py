"""Drives a run through its states: holds it, calls each state's stage, and stops it cleanly.

The driver is what the stages see as their `Context`: it owns the client, the retries and the
pauses between them, the checkpoints where a stop, a cancel or a lost lease is noticed, and the
performer of effects. What each state does is in `stages`; who may drive is in `ownership`."""

from __future__ import annotations

import contextlib
import random
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TypeVar

import structlog

from cftrunner import fanout
from cftrunner.client import PremClient, Timeouts
from cftrunner.clock import utcnow
from cftrunner.config.settings import Settings
from cftrunner.effects import Effect, Performer
from cftrunner.exceptions import (
    AuthError,
    BadResponseError,
    InputError,
    Interrupted,
    KeyRejected,
    LeaseLost,
    ModelNotFound,
    ModelsLoading,
    RejectedError,
    RunBusy,
    RunStopped,
    StillTraining,
    TransientError,
)
from cftrunner.holds import Lease
from cftrunner.limiter import RateLimiter
from cftrunner.ownership import Ownership, current_owner
from cftrunner.polling import Backoff
from cftrunner.prompts import Prompt
from cftrunner.reconcile import Reconciler
from cftrunner.records import Effect as StoredEffect
from cftrunner.records import Item, Run, RunSpec
from cftrunner.retry import next_delay, rate_limited
from cftrunner.run_ids import new_run_id
from cftrunner.shutdown import Cancelled, Stop
from cftrunner.stages import STAGES
from cftrunner.stages.budget import TokenMeter
from cftrunner.stages.context import Memory
from cftrunner.stages.items import find_dataset_if_free, item_stage, work_items
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.writes import Tx

log = structlog.get_logger("cftrunner")
T = TypeVar("T")
R = TypeVar("R")


def new_run(run_id: str, spec: RunSpec, cycle: str | None = None,
            base_url: str | None = None) -> Run:
    """The record of a new run of `spec`, not stored yet."""
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


class Driver:
    """Drives runs for this process; the stages' `Context`."""

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
        self.ownership = Ownership(store, settings.lease_seconds)
        self.stop = stop or Stop()
        self.sleep = sleep or self.stop.wait
        self.rand = rand
        self.tokens = TokenMeter(store)
        self.memory = Memory()
        # Whether an effect waits for an outcome not known yet (see stages.items.work_items).
        self.patient = True
        # A cancel is read from the database at most this often (seconds), not before every request.
        self.cancel_check = 1.0
        self._cancel_checked = 0.0
        self._effects = Performer(self)

    def create(self, spec: RunSpec, prompts: Iterable[str | Prompt], cycle: str | None = None,
               dataset_id: str | None = None) -> Run:
        """Store a new run with its items, holding its lease from the first moment; with the
        project's dataset when the checks before it found it."""
        run_id = spec.run_id or new_run_id()
        lease = Lease(run_id, current_owner(), self.settings.lease_seconds)
        run = replace(new_run(run_id, spec, cycle, self.settings.base_url), dataset_id=dataset_id)
        started = time.monotonic()
        self.store.create_run(run, prompts, lease)
        self.ownership.adopt(lease, started)
        return self.store.run(run_id)

    def check_bound(self, run: Run) -> None:
        """Refuse to work on a run against another server than the one it was started on: its
        traces, dataset and job are there. (A run stored before runs kept it is not bound.)"""
        if run.base_url is not None and run.base_url != self.settings.base_url:
            raise InputError(f"run {run.id} was started on {run.base_url}, not on "
                             f"{self.settings.base_url} (base_url, --base-url or "
                             "CFTRUNNER_BASE_URL): nothing was sent")

    def drive(self, run_id: str) -> Run:
        """Take the run from wherever it stands to a terminal state; raise RunStopped if it cannot
        go on now, with everything obtained so far stored."""
        self.check_bound(self.store.run(run_id))
        run = self.ownership.take(run_id)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            with self.ownership.kept():
                self.ownership.join(run_id)
                while not run.finished:
                    self.checkpoint()
                    STAGES[run.state](self, run)
                    run = self.store.run(run_id)
                # The terminal state may have been written by a process that took the run over.
                self.ownership.ensure()
        except Cancelled:
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
            self.ownership.leave()
            self.ownership.release()
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
            self.ownership.join(run_id)
            if STAGES.get(run.state) is item_stage:  # items may be left to work on
                if run.dataset_id is None:
                    find_dataset_if_free(self, run)
                work_items(self, self.store.run(run_id))
            try:
                return self.drive(run_id)
            except RunBusy as exc:
                log.info("worker_finished", reason=exc.message)
                return self.store.run(run_id)
        except Cancelled:
            log.warning("worker_cancelled")
            return self.store.run(run_id)
        finally:
            self.ownership.leave()
            structlog.contextvars.unbind_contextvars("run_id")

    def _record_error(self, run_id: str, message: str) -> None:
        if not self.ownership.lost():
            with contextlib.suppress(LeaseLost), self.tx() as tx:
                tx.record_error(run_id, message)

    # The stages' Context.

    def tx(self) -> AbstractContextManager[Tx]:
        return self.ownership.tx()

    def item_tx(self, item: Item, durable: bool = True) -> AbstractContextManager[Tx]:
        return self.ownership.item_tx(item, durable)

    def perform(self, effect: Effect[R], *, new: bool = False,
                intent: StoredEffect | None = None) -> R | None:
        return self._effects.perform(effect, new=new, intent=intent)

    def for_each(self, items: Iterable[T], work: Callable[[T], None],
                 workers: int | None = None) -> None:
        fanout.for_each(items, work, workers or self.settings.item_workers)

    def checkpoint(self) -> None:
        """Between two pieces of work: stop here if asked to, or if the run is no longer ours."""
        held = self.ownership.lease or self.ownership.worker
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
                    raise Cancelled()
            # Last, as the client calls this just before a send: no database read stands between
            # the check and the request.
            self.ownership.ensure()

    def pause(self, seconds: float) -> None:
        self.sleep(seconds)
        self.checkpoint()

    def polls(self, cap: float) -> Iterator[float]:
        """The waits between looks at something the platform is doing: soon, then backing off
        to `cap` (see Settings.poll_first)."""
        return Backoff(self.settings.poll_first, self.settings.poll_factor, cap).delays()

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """Call until it succeeds, sleeping per the retry policy between transient failures;
        429s are counted apart from other failures (see RetryPolicy.max_rate_limited)."""
        failures = {True: 0, False: 0}  # by whether the failure was a 429
        while True:
            self.ownership.ensure()
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
