"""What the stages need of the process driving a run: the narrow protocol they depend on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeVar

from cftrunner.client import PremClient
from cftrunner.effects import Effect, Host
from cftrunner.polling import Delays
from cftrunner.reconcile import Reconciler
from cftrunner.records import Effect as StoredEffect
from cftrunner.records import Item
from cftrunner.session import Memory, TokenMeter
from cftrunner.store.writes import Tx

T = TypeVar("T")
R = TypeVar("R")


class Stored(NamedTuple):
    """What an item's step stored: the item, and the intent of the next step's effect when the
    same transaction stored it. Nothing happens between the outcome of one step and the intent
    of the next, so one transaction holds both: two write transactions fewer per item."""

    item: Item
    intent: StoredEffect | None = None


class Context(Host, Protocol):
    """What the stages use of the process driving the run (`session.Session` is one); see
    effects.Host for the rest."""

    client: PremClient
    reconcile: Reconciler
    tokens: TokenMeter
    memory: Memory

    def tx(self) -> AbstractContextManager[Tx]:
        """A write transaction fenced by the run's lease."""
        ...

    def item_tx(self, item: Item, durable: bool = True) -> AbstractContextManager[Tx]:
        """A write transaction on an item, fenced by this worker's claim on it."""
        ...

    def perform(self, effect: Effect[R], *, new: bool = False,
                intent: StoredEffect | None = None) -> R | None:
        """The effect, at most once (effects.Performer.perform)."""
        ...

    def look_again(self, delays: Delays, progress: bool = False) -> None:
        """Wait the next of `delays`, or as long as the platform's last answer asked."""
        ...

    def polls(self, cap: float) -> Delays:
        """The waits between looks at something the platform is doing."""
        ...

    def for_each(self, items: Iterable[T], work: Callable[[T], None],
                 workers: int | None = None) -> None:
        """`work` on every item, several at a time (fanout.for_each)."""
        ...
