"""The tick command: for each configured cycle, resume its run, start one when due, or wait."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cftrunner.config.cycle import Cycle, cycle_name
from cftrunner.config.resolution import Resolved
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import InputError, Interrupted
from cftrunner.prompt_source import describe
from cftrunner.records import Run
from cftrunner.service import schedule
from cftrunner.service.looks import plan_lines
from cftrunner.service.runs import MISSING_KEY
from cftrunner.shutdown import Stop
from cftrunner.store import Store, missing_sqlite_file
from cftrunner.views.live import Display, no_display


def tick(resolved: Resolved, on_created: Callable[[str], None], stop: Stop | None = None,
         display: Display = no_display, cycle: Cycle | None = None) -> tuple[schedule.Decision, Run | None]:
    """Resume `cycle`'s unfinished run (by default the only or first cycle), start one when due,
    or decide to wait."""
    if not resolved.settings.api_key:
        raise InputError(MISSING_KEY)
    cycle = cycle or resolved.cycle
    scanned = schedule.source_of(schedule.spec_from(cycle, None, "tick"))  # bad input stores nothing
    store = Store(resolved.settings.db_url)
    try:
        return schedule.tick(Driver(store, resolved.settings, stop=stop), cycle, on_created,
                             display, scanned)
    finally:
        store.close()


def preview_text(settings: Settings, cycle: Cycle) -> str:
    """What `tick` would do for the cycle: one line, then the plan of a run it would start
    (`plan_text`); reads, never writes, and creates no state database where there is none."""
    store = None if missing_sqlite_file(settings.db_url) else Store(settings.db_url)
    try:
        decision = schedule.preview(store, cycle)
    finally:
        if store is not None:
            store.close()
    if decision.action == "start":
        if not settings.api_key:
            raise InputError(MISSING_KEY)
        spec = schedule.spec_from(cycle, None, "tick")
        prompts = decision.prompts or {}
        items = int(prompts.get("new", 0)) + int(prompts.get("reused", 0))
        name = cycle_name(spec.project_id, spec.model_alias, cycle.name)
        return "\n".join([f"would start a run of {describe(decision.prompts)}",
                          *plan_lines(settings, spec, name, items)])
    if decision.action == "skip":
        return f"would skip: {decision.reason}"
    if decision.action == "resume":
        return f"would resume {decision.run_id}: {decision.reason}"
    return f"nothing to do: {decision.reason}"


@dataclass(frozen=True)
class Ticked:
    """What a tick did for one cycle: its decision and run, or the error that ended its turn."""

    cycle: Cycle
    decision: schedule.Decision | None = None
    run: Run | None = None
    error: Exception | None = None


def tick_each(resolved: Resolved, cycles: Iterable[Cycle], stop: Stop | None = None,
              display: Display = no_display) -> Iterator[Ticked]:
    """Tick each cycle in turn, each in isolation: an error ends its own turn, not the others'.
    A stop (SIGTERM, SIGINT) ends them all."""
    if not resolved.settings.api_key:
        raise InputError(MISSING_KEY)
    for cycle in cycles:
        if stop is not None and stop.requested:
            signum = stop.signum or signal.SIGTERM
            raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} before cycle "
                                      f"{cycle.title}")
        try:
            decision, run = tick(resolved, lambda _run_id: None, stop, display, cycle)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as this cycle's outcome, by the caller
            yield Ticked(cycle, error=exc)
        else:
            yield Ticked(cycle, decision, run)
