"""One process's session while it drives runs: its client and store, the checkpoints where a stop,
a cancel or a lost hold is noticed, the pauses and retries around every request, and the
performer of effects. The stages see it through `stages.context.Context`."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import structlog

from cftrunner import fanout
from cftrunner.client import PremClient, Timeouts
from cftrunner.config.settings import Settings
from cftrunner.effects import Effect, Performer
from cftrunner.exceptions import BadResponseError, Interrupted, RunStopped, TransientError
from cftrunner.limiter import RateLimiter
from cftrunner.ownership import Ownership
from cftrunner.polling import Backoff, Delays
from cftrunner.reconcile import Reconciler
from cftrunner.records import Effect as StoredEffect
from cftrunner.records import Item, Run
from cftrunner.retry import next_delay, rate_limited
from cftrunner.shutdown import Cancelled, Stop
from cftrunner.store import Store
from cftrunner.store.writes import Tx

log = structlog.get_logger("cftrunner")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Memory:
    """What the stages learn in one process and keep for the items after."""

    # The API refused the judge's response_format: later judgments are asked without it.
    structured_refused: bool = False


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


class Session:
    """What driving runs needs in one process, below the stages (see module docstring)."""

    def __init__(self, store: Store, settings: Settings, client: PremClient | None = None, *,
                 sleep: Callable[[float], object] | None = None,
                 rand: Callable[[], float] = random.random, stop: Stop | None = None) -> None:
        self.store = store
        self.settings = settings
        store.commit_window = settings.commit_window
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
        self._cancel_checked = float("-inf")
        self._cancelled: set[str] = set()  # runs seen cancelled: every later checkpoint stops
        self._effects = Performer(self)

    def tx(self) -> AbstractContextManager[Tx]:
        """A write transaction fenced by the run's lease."""
        return self.ownership.tx()

    def item_tx(self, item: Item, durable: bool = True) -> AbstractContextManager[Tx]:
        """A write transaction on an item, fenced by this worker's claim on it."""
        return self.ownership.item_tx(item, durable)

    def perform(self, effect: Effect[R], *, new: bool = False,
                intent: StoredEffect | None = None) -> R | None:
        """The effect, at most once (effects.Performer.perform)."""
        return self._effects.perform(effect, new=new, intent=intent)

    def for_each(self, items: Iterable[T], work: Callable[[T], None],
                 workers: int | None = None) -> None:
        """`work` on every item, `workers` (by default `Settings.item_workers`) at a time."""
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
            if held.run_id not in self._cancelled and now - self._cancel_checked >= self.cancel_check:
                self._cancel_checked = now
                if self.store.cancel_requested(held.run_id):
                    self._cancelled.add(held.run_id)
            if held.run_id in self._cancelled:
                # Every thread stops at its next checkpoint, not only the one that read it.
                raise Cancelled()
            # Last, as the client calls this just before a send: no database read stands between
            # the check and the request.
            self.ownership.ensure()

    def pause(self, seconds: float) -> None:
        self.sleep(seconds)
        self.checkpoint()

    def look_again(self, delays: Delays, progress: bool = False) -> None:
        """Wait before looking again at something the platform is doing: the next of `delays`
        (as short as the last after a look that saw `progress`), or longer when its last answer
        asked for it (a Retry-After on a successful poll, up to retry.max_retry_after)."""
        advised = self.client.advised_wait() or 0.0
        self.pause(max(delays.after(progress), min(advised, self.settings.retry.max_retry_after)))

    def polls(self, cap: float) -> Delays:
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
