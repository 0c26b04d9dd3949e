"""Work on many things a few at a time, in threads that keep the caller's logging context."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Sized
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def for_each(items: Iterable[T], work: Callable[[T], None], workers: int) -> None:
    """Do `work` on every item, `workers` items at a time; `items` may be a generator, drawn from
    by one thread at a time. The first failure stops new work; the items already under way
    finish their current request; then it is raised."""
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
